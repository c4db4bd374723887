"""Hugging Face GPT-2 layout <-> project parameter tree, streamed tensor by tensor.

The released PolyLM weights are a `GPT2LMHeadModel` checkpoint (SPEC section 1). Every HF
tensor maps onto one layer slot of a stacked project array by a pure reshape: Conv1D weights
are (in, out), the Q|K|V blocks of `c_attn` are heads x head_dim each, so `[d, 3d]` is
`[d, 3, heads, head_dim]` byte for byte. Import therefore preallocates each stacked array
once and reads every tensor's bytes straight into its slot (a cast goes through one
tensor-sized buffer), so peak memory stays near one model, not two. Export writes
safetensors the same way, one tensor at a time.

Only numpy here (torch is imported lazily for `.bin` files); no JAX, no Orbax.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from polylm_jax.config import PolyLMConfig
from polylm_jax.files import atomic_write

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"  # the SentencePiece model, as the released weights ship it
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

# GeLU with the tanh approximation under its HF names (PolyLM's config says gelu_fast).
TANH_GELUS = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")
ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model", "PolyLMHeadModel")
# Fields compared between a checkpoint and the config a caller expects.
ARCH_FIELDS = (
  "vocab_size",
  "num_layers",
  "d_model",
  "num_heads",
  "head_dim",
  "d_ff",
  "max_len",
  "layer_norm_eps",
)
_HF_NAME_OF = {
  "vocab_size": "vocab_size",
  "num_layers": "n_layer",
  "d_model": "n_embd",
  "num_heads": "n_head",
  "head_dim": "n_embd / n_head",
  "d_ff": "n_inner",
  "max_len": "n_positions",
  "layer_norm_eps": "layer_norm_epsilon",
}

# (HF name after "h.{i}.", project path under "layers", HF shape as a function of config).
_LAYER_TENSORS: tuple[tuple[str, tuple[str, ...], Any], ...] = (
  ("ln_1.weight", ("ln_1", "scale"), lambda c: (c.d_model,)),
  ("ln_1.bias", ("ln_1", "bias"), lambda c: (c.d_model,)),
  ("attn.c_attn.weight", ("attn", "qkv_kernel"), lambda c: (c.d_model, 3 * c.d_model)),
  ("attn.c_attn.bias", ("attn", "qkv_bias"), lambda c: (3 * c.d_model,)),
  ("attn.c_proj.weight", ("attn", "out_kernel"), lambda c: (c.d_model, c.d_model)),
  ("attn.c_proj.bias", ("attn", "out_bias"), lambda c: (c.d_model,)),
  ("ln_2.weight", ("ln_2", "scale"), lambda c: (c.d_model,)),
  ("ln_2.bias", ("ln_2", "bias"), lambda c: (c.d_model,)),
  ("mlp.c_fc.weight", ("mlp", "fc1_kernel"), lambda c: (c.d_model, c.d_ff)),
  ("mlp.c_fc.bias", ("mlp", "fc1_bias"), lambda c: (c.d_ff,)),
  ("mlp.c_proj.weight", ("mlp", "fc2_kernel"), lambda c: (c.d_ff, c.d_model)),
  ("mlp.c_proj.bias", ("mlp", "fc2_bias"), lambda c: (c.d_model,)),
)
_GLOBAL_TENSORS: tuple[tuple[str, tuple[str, ...], Any], ...] = (
  ("wte.weight", ("wte",), lambda c: (c.vocab_size, c.d_model)),
  ("wpe.weight", ("wpe",), lambda c: (c.max_len, c.d_model)),
  ("ln_f.weight", ("ln_f", "scale"), lambda c: (c.d_model,)),
  ("ln_f.bias", ("ln_f", "bias"), lambda c: (c.d_model,)),
)
# Buffers older GPT-2 checkpoints carry (causal mask, -1e4 constant); the tied head.
_IGNORED = re.compile(r"^(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)$|^lm_head\.weight$")

_ST_DTYPES = {
  "F64": "float64",
  "F32": "float32",
  "F16": "float16",
  "BF16": "bfloat16",
  "I64": "int64",
  "I32": "int32",
  "I16": "int16",
  "I8": "int8",
  "U8": "uint8",
  "BOOL": "bool",
}


class HFFormatError(ValueError):
  """A Hugging Face checkpoint that is not PolyLM's architecture or is incomplete."""


def np_dtype(name: str) -> np.dtype:
  """numpy dtype by name; bfloat16 comes from ml_dtypes (installed with JAX)."""
  if name == "bfloat16":
    import ml_dtypes  # pylint: disable=import-outside-toplevel

    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


# --------------------------------------------------------------------------------------------
# config.json


def config_from_hf(
  config_json: Mapping[str, Any], where: str = CONFIG_FILE, expected: PolyLMConfig | None = None
) -> PolyLMConfig:
  """The PolyLMConfig of an HF GPT-2 config, refusing anything that is not PolyLM's design.

  `where` names the file in errors. With `expected`, every architecture field must match it,
  and its numerics fields (dtype, remat, ...) are kept.
  """
  c = dict(config_json)

  def fail(field: str, why: str) -> HFFormatError:
    return HFFormatError(f"{where}: field {field!r} = {c.get(field)!r}: {why}")

  _check_design(c, fail)
  _check_sizes(c, fail)
  d, h, n_inner = c["n_embd"], c["n_head"], c.get("n_inner")
  eos = c.get("eos_token_id")
  if eos is not None and eos != PolyLMConfig.eos_id:
    logging.warning(
      "%s: eos_token_id %r ignored: PolyLM's eos is </s> = %d (older released "
      "configs say 255999, which is wrong)",
      where,
      eos,
      PolyLMConfig.eos_id,
    )
  arch = dict(
    vocab_size=c["vocab_size"],
    num_layers=c["n_layer"],
    d_model=d,
    num_heads=h,
    head_dim=d // h,
    d_ff=4 * d if n_inner is None else n_inner,
    max_len=c["n_positions"],
    layer_norm_eps=float(c.get("layer_norm_epsilon", 1e-5)),
  )
  if expected is None:
    return PolyLMConfig().replace(**arch)
  for field in ARCH_FIELDS:
    if arch[field] != getattr(expected, field):
      raise HFFormatError(
        f"{where}: {_HF_NAME_OF[field]} gives {field} = {arch[field]!r} but the expected "
        f"config has {field} = {getattr(expected, field)!r}"
      )
  return expected


def _check_design(c: Mapping[str, Any], fail: Callable[[str, str], HFFormatError]) -> None:
  """Refuses every GPT-2-family option PolyLM does not use, naming the field."""
  if c.get("model_type") != "gpt2":
    raise fail("model_type", "PolyLM checkpoints are model_type 'gpt2'")
  for arch in c.get("architectures") or ():
    if arch not in ARCHITECTURES:
      raise fail("architectures", f"expected one of {ARCHITECTURES}")
  if c.get("tie_word_embeddings", True) is not True:
    raise fail("tie_word_embeddings", "PolyLM ties the input and output embeddings")
  if c.get("activation_function", "gelu_new") not in TANH_GELUS:
    raise fail("activation_function", f"PolyLM uses GeLU with tanh, one of {TANH_GELUS}")
  if c.get("scale_attn_weights", True) is not True:
    raise fail("scale_attn_weights", "PolyLM scales attention logits by 1/sqrt(head_dim)")
  if c.get("scale_attn_by_inverse_layer_idx", False):
    raise fail("scale_attn_by_inverse_layer_idx", "PolyLM does not scale attention by layer")
  if c.get("add_cross_attention", False):
    raise fail("add_cross_attention", "PolyLM is a decoder without cross-attention")
  for flag in ("bias", "use_bias", "attention_bias", "mlp_bias", "add_bias_linear"):
    if flag in c and not c[flag]:
      raise fail(flag, "PolyLM has a bias on every linear layer")
  for flag in (
    "rotary_dim",
    "rotary_pct",
    "rotary_emb_base",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "alibi",
    "use_alibi",
    "use_rotary_position_embeddings",
  ):
    if c.get(flag) not in (None, False):
      raise fail(flag, "PolyLM uses learned absolute positions, not rotary/ALiBi")
  if c.get("position_embedding_type", "absolute") != "absolute":
    raise fail("position_embedding_type", "PolyLM uses learned absolute positions")
  for flag in ("parallel_residual", "use_parallel_residual", "multi_query"):
    if c.get(flag):
      raise fail(flag, "PolyLM uses sequential pre-LayerNorm blocks with multi-head attention")
  if c.get("num_key_value_heads") not in (None, c.get("n_head")):
    raise fail("num_key_value_heads", "PolyLM uses multi-head attention (no grouped KV)")


def _check_sizes(c: Mapping[str, Any], fail: Callable[[str, str], HFFormatError]) -> None:
  """Sizes are positive integers, n_head divides n_embd, epsilon is a positive number."""
  for field in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
    value = c.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise fail(field, "must be a positive integer")
  d, h = c["n_embd"], c["n_head"]
  if d % h:
    raise fail("n_head", f"must divide n_embd = {d}")
  n_inner = c.get("n_inner")
  if n_inner is not None and (not isinstance(n_inner, int) or n_inner <= 0):
    raise fail("n_inner", "must be null (4 * n_embd) or a positive integer")
  eps = c.get("layer_norm_epsilon", 1e-5)
  if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
    raise fail("layer_norm_epsilon", "must be a positive number")


def config_to_hf(config: PolyLMConfig, dtype: str = "float32") -> dict[str, Any]:
  """The config.json that makes transformers build this model as a GPT2LMHeadModel."""
  return {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "activation_function": "gelu_new",
    "vocab_size": config.vocab_size,
    "n_positions": config.max_len,
    "n_embd": config.d_model,
    "n_layer": config.num_layers,
    "n_head": config.num_heads,
    "n_inner": config.d_ff,
    "layer_norm_epsilon": config.layer_norm_eps,
    "initializer_range": config.init_std,
    "attn_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "resid_pdrop": 0.0,
    "summary_first_dropout": 0.0,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": config.eos_id,
    "pad_token_id": None,
    "use_cache": True,
    "dtype": dtype,
  }


def read_config_json(model_dir: str | os.PathLike) -> dict[str, Any]:
  path = os.path.join(model_dir, CONFIG_FILE)
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise HFFormatError(f"{model_dir}: no {CONFIG_FILE}: not a Hugging Face model directory")
  except json.JSONDecodeError as e:
    raise HFFormatError(f"{path}: not valid JSON: {e}") from e


def is_hf_dir(path: str | os.PathLike) -> bool:
  """A directory with config.json and weights in one of the layouts import_hf reads."""
  return os.path.isfile(os.path.join(path, CONFIG_FILE)) and any(
    os.path.isfile(os.path.join(path, n))
    for n in (SAFETENSORS_FILE, SAFETENSORS_INDEX, BIN_FILE, BIN_INDEX)
  )


# --------------------------------------------------------------------------------------------
# Reading tensors


class _Safetensors:
  """One .safetensors file: header parsed here, bytes read straight into the caller's array."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      n = int.from_bytes(f.read(8), "little")
      header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    self._base = 8 + n
    self.entries: dict[str, tuple[tuple[int, ...], np.dtype, int, int]] = {}
    for name, e in header.items():
      if e["dtype"] not in _ST_DTYPES:
        raise HFFormatError(f"{path}: tensor {name!r} has unsupported dtype {e['dtype']}")
      begin, end = e["data_offsets"]
      self.entries[name] = (tuple(e["shape"]), np_dtype(_ST_DTYPES[e["dtype"]]), begin, end)

  def read_into(self, name: str, out: np.ndarray) -> None:
    shape, dtype, begin, end = self.entries[name]
    with open(self.path, "rb", buffering=0) as f:
      f.seek(self._base + begin)
      if out.dtype == dtype and out.flags.c_contiguous:
        target = out
      else:
        target = np.empty(shape, dtype)
      view = memoryview(target.reshape(-1).view(np.uint8))
      got = 0
      while got < end - begin:
        n = f.readinto(view[got:])
        if not n:
          raise HFFormatError(f"{self.path}: file ends inside tensor {name!r}")
        got += n
    if target is not out:
      out[...] = target.reshape(out.shape)

  def rows(self, name: str, start: int, stop: int) -> np.ndarray:
    shape, dtype, begin, _ = self.entries[name]
    row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
    out = np.empty((stop - start,) + shape[1:], dtype)
    with open(self.path, "rb") as f:
      f.seek(self._base + begin + start * row_bytes)
      f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
    return out


class _TorchBin:
  """One PyTorch pickle, memory-mapped, loaded with weights_only=True."""

  def __init__(self, path: str):
    import torch  # pylint: disable=import-outside-toplevel

    try:
      state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:  # legacy (pre-zipfile) format cannot be memory-mapped
      logging.warning("%s: cannot memory-map (%s); loading it whole", path, e)
      state = torch.load(path, map_location="cpu", weights_only=True)
    self.path = path
    self.state = state
    self.entries = {}
    for name, t in state.items():
      dtype = str(t.dtype).removeprefix("torch.")
      self.entries[name] = (tuple(t.shape), np_dtype(dtype), 0, 0)

  def _numpy(self, t) -> np.ndarray:
    import torch  # pylint: disable=import-outside-toplevel

    if t.dtype == torch.bfloat16:
      return t.view(torch.int16).numpy().view(np_dtype("bfloat16"))
    return t.numpy()

  def read_into(self, name: str, out: np.ndarray) -> None:
    out[...] = self._numpy(self.state[name]).reshape(out.shape)

  def rows(self, name: str, start: int, stop: int) -> np.ndarray:
    return self._numpy(self.state[name][start:stop])


def _open_sources(model_dir: str) -> list[Any]:
  """The weight files of an HF directory: single or sharded, safetensors preferred."""
  for single, index, cls in (
    (SAFETENSORS_FILE, SAFETENSORS_INDEX, _Safetensors),
    (BIN_FILE, BIN_INDEX, _TorchBin),
  ):
    if os.path.isfile(os.path.join(model_dir, single)):
      return [cls(os.path.join(model_dir, single))]
    index_path = os.path.join(model_dir, index)
    if os.path.isfile(index_path):
      with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise HFFormatError(f"{index_path}: no 'weight_map' object")
      files = sorted(set(weight_map.values()))
      missing = [n for n in files if not os.path.isfile(os.path.join(model_dir, n))]
      if missing:
        raise HFFormatError(f"{index_path}: shard files missing: {missing}")
      return [cls(os.path.join(model_dir, n)) for n in files]
  raise HFFormatError(
    f"{model_dir}: no weights: expected one of {SAFETENSORS_FILE}, "
    f"{SAFETENSORS_INDEX}, {BIN_FILE}, {BIN_INDEX}"
  )


def _names_list(names: list[str], limit: int = 20) -> str:
  shown = ", ".join(sorted(names)[:limit])
  return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def hf_tensor_names(config: PolyLMConfig, prefix: str = "transformer.") -> dict[str, tuple]:
  """HF tensor name -> (project path, HF shape, layer index or None), in file order."""
  out: dict[str, tuple] = {}
  for name, path, shape in _GLOBAL_TENSORS[:2]:
    out[prefix + name] = (path, shape(config), None)
  for i in range(config.num_layers):
    for name, path, shape in _LAYER_TENSORS:
      out[f"{prefix}h.{i}.{name}"] = (("layers",) + path, shape(config), i)
  for name, path, shape in _GLOBAL_TENSORS[2:]:
    out[prefix + name] = (path, shape(config), None)
  return out


def param_shapes(config: PolyLMConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Project param path -> shape, as model.py declares them (layers stacked first)."""
  d, f, h, k, n = config.d_model, config.d_ff, config.num_heads, config.head_dim, config.num_layers
  return {
    ("wte",): (config.vocab_size, d),
    ("wpe",): (config.max_len, d),
    ("ln_f", "scale"): (d,),
    ("ln_f", "bias"): (d,),
    ("layers", "ln_1", "scale"): (n, d),
    ("layers", "ln_1", "bias"): (n, d),
    ("layers", "ln_2", "scale"): (n, d),
    ("layers", "ln_2", "bias"): (n, d),
    ("layers", "attn", "qkv_kernel"): (n, d, 3, h, k),
    ("layers", "attn", "qkv_bias"): (n, 3, h, k),
    ("layers", "attn", "out_kernel"): (n, h, k, d),
    ("layers", "attn", "out_bias"): (n, d),
    ("layers", "mlp", "fc1_kernel"): (n, d, f),
    ("layers", "mlp", "fc1_bias"): (n, f),
    ("layers", "mlp", "fc2_kernel"): (n, f, d),
    ("layers", "mlp", "fc2_bias"): (n, d),
  }


def _allocate(config: PolyLMConfig, dtype: np.dtype) -> dict[str, Any]:
  """An uninitialised project param tree of numpy arrays."""
  tree: dict[str, Any] = {}
  for path, shape in param_shapes(config).items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.empty(shape, dtype)
  return tree


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def import_hf(
  model_dir: str | os.PathLike, expected: PolyLMConfig | None = None, param_dtype: str | None = None
) -> tuple[PolyLMConfig, dict[str, Any]]:
  """Reads an HF GPT-2-layout PolyLM directory into (config, numpy param tree).

  Arrays come out in `param_dtype` (default: `expected.param_dtype`, else float32). Raises
  HFFormatError naming the field, or listing missing/unexpected tensors, before reading
  any weight.
  """
  model_dir = os.fspath(model_dir)
  config_path = os.path.join(model_dir, CONFIG_FILE)
  config = config_from_hf(read_config_json(model_dir), config_path, expected)
  if param_dtype is not None:
    config = config.replace(param_dtype=param_dtype)
  sources = _open_sources(model_dir)

  where: dict[str, Any] = {}
  for src in sources:
    for name in src.entries:
      if name in where:
        raise HFFormatError(
          f"{model_dir}: tensor {name!r} is in both {where[name].path} and {src.path}"
        )
      where[name] = src
  prefix = "" if "wte.weight" in where and "transformer.wte.weight" not in where else "transformer."
  wanted = hf_tensor_names(config, prefix)
  missing = [n for n in wanted if n not in where]
  unexpected = [n for n in where if n not in wanted and not _IGNORED.match(n)]
  if missing or unexpected:
    raise HFFormatError(
      f"{model_dir}: tensors do not match a PolyLM of this config.json "
      f"({config.num_layers} layers)."
      + (f"\n  missing: {_names_list(missing)}" if missing else "")
      + (f"\n  unexpected: {_names_list(unexpected)}" if unexpected else "")
    )
  for name, (_, shape, _) in wanted.items():
    got = where[name].entries[name][0]
    if got != shape:
      raise HFFormatError(
        f"{where[name].path}: tensor {name!r} has shape {list(got)} but "
        f"{config_path} implies {list(shape)}"
      )

  params = _allocate(config, np_dtype(config.param_dtype))
  for name, (path, _, layer) in wanted.items():
    target = _get(params, path)
    if layer is not None:
      target = target[layer]
    where[name].read_into(name, target)
  head = "lm_head.weight"
  if head in where:
    _check_tied(where[head], head, params["wte"], model_dir)
  return config, params


def _check_tied(
  src: Any, name: str, wte: np.ndarray, model_dir: str, chunk_bytes: int = 64 << 20
) -> None:
  """lm_head must equal wte (tied); compared in row chunks so no second copy is made."""
  shape = src.entries[name][0]
  if shape != wte.shape:
    raise HFFormatError(
      f"{model_dir}: {name} has shape {list(shape)}, wte {list(wte.shape)}: "
      "the output embedding is not tied"
    )
  step = max(1, chunk_bytes // max(1, wte[0].nbytes))
  for start in range(0, shape[0], step):
    stop = min(shape[0], start + step)
    rows = src.rows(name, start, stop).astype(wte.dtype)
    if not np.array_equal(rows, wte[start:stop]):
      raise HFFormatError(
        f"{model_dir}: {name} differs from the token embedding (rows "
        f"{start}-{stop}): PolyLM ties them; this checkpoint is untied"
      )


# --------------------------------------------------------------------------------------------
# Export


def _export_order(config: PolyLMConfig) -> list[tuple[str, tuple[str, ...], tuple, int | None]]:
  """(HF name, project path, HF shape, layer) grouped by project leaf.

  Safetensors does not care about order, and grouping lets a lazy param source hold one
  stacked leaf in memory at a time.
  """
  by_leaf: dict[tuple[str, ...], list] = {}
  for name, (path, shape, layer) in hf_tensor_names(config).items():
    by_leaf.setdefault(path, []).append((name, path, shape, layer))
  return [t for path in param_shapes(config) for t in by_leaf[path]]


def export_hf(
  config: PolyLMConfig,
  params: Mapping[str, Any] | Callable[[tuple[str, ...]], Any],
  out_dir: str | os.PathLike,
  dtype: str = "float32",
  max_shard_bytes: int | None = None,
  tokenizer_file: str | os.PathLike | None = None,
) -> list[str]:
  """Writes config.json and safetensors that transformers.GPT2LMHeadModel loads.

  `params` is the project tree (numpy or jax arrays), or a function path -> stacked leaf,
  called once per leaf in turn (see CheckpointManager.host_param_reader), so only one leaf
  need be in memory. Tensors are written one at a time; above `max_shard_bytes` the weights
  are split into model-0000i-of-0000N.safetensors plus an index, as `save_pretrained` does.
  `tokenizer_file` (a SentencePiece model) is copied in as tokenizer.model, so the export
  carries its tokenizer. Returns the files written.
  """
  out_dir = os.fspath(out_dir)
  st_dtype = {v: k for k, v in _ST_DTYPES.items()}.get(dtype)
  if st_dtype is None or dtype not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"export dtype must be float32, bfloat16 or float16, got {dtype!r}")
  np_dt = np_dtype(dtype)
  if callable(params):
    get = params
  else:
    _check_tree(config, params)
    get = lambda path: _get(params, path)
  os.makedirs(out_dir, exist_ok=True)
  order = _export_order(config)
  sizes = [int(np.prod(shape)) * np_dt.itemsize for _, _, shape, _ in order]
  shards = _plan_shards(sizes, max_shard_bytes)
  if len(shards) == 1:
    names = [SAFETENSORS_FILE]
  else:
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  tensor = _tensor_source(get, param_shapes(config), np_dt)
  written = []
  weight_map = {}
  for file_name, members in zip(names, shards):
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for i in members:
      name, _, shape, _ = order[i]
      header[name] = {
        "dtype": st_dtype,
        "shape": list(shape),
        "data_offsets": [offset, offset + sizes[i]],
      }
      offset += sizes[i]
      weight_map[name] = file_name
    chunks = (tensor(order[i][1], order[i][3], order[i][2]) for i in members)
    written.append(_write_safetensors(os.path.join(out_dir, file_name), header, chunks))
  tensor.cache_clear()
  if len(shards) > 1:
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    written.append(str(atomic_write(os.path.join(out_dir, SAFETENSORS_INDEX), _json(index))))
  config_json = _json(config_to_hf(config, dtype))
  written.append(str(atomic_write(os.path.join(out_dir, CONFIG_FILE), config_json)))
  if tokenizer_file is not None:
    with open(tokenizer_file, "rb") as f:
      written.append(str(atomic_write(os.path.join(out_dir, TOKENIZER_FILE), f.read())))
  return written


def _json(obj: Any) -> str:
  return json.dumps(obj, indent=2)


def _plan_shards(sizes: Sequence[int], max_shard_bytes: int | None) -> list[list[int]]:
  """Tensor indices per file, in order, each file at most max_shard_bytes (or one file)."""
  shards: list[list[int]] = [[]]
  total = 0
  for i, size in enumerate(sizes):
    if max_shard_bytes and shards[-1] and total + size > max_shard_bytes:
      shards.append([])
      total = 0
    shards[-1].append(i)
    total += size
  return shards


def _tensor_source(
  get: Callable[[tuple[str, ...]], Any], expected: Mapping[tuple[str, ...], Any], np_dt: Any
) -> Any:
  """(leaf path, layer, HF shape) -> one HF tensor; holds only the current leaf in memory
  (`cache_clear()` drops it)."""
  held: dict[tuple[str, ...], Any] = {}

  def tensor(path: tuple[str, ...], layer: int | None, shape: tuple[int, ...]) -> np.ndarray:
    if path not in held:
      held.clear()  # drop the previous leaf before fetching the next
      leaf = get(path)
      if tuple(leaf.shape) != expected[path]:
        raise ValueError(
          f"params: {'/'.join(path)} has shape {tuple(leaf.shape)} but the "
          f"config implies {expected[path]}"
        )
      held[path] = leaf
    value = np.asarray(held[path] if layer is None else held[path][layer])
    return np.ascontiguousarray(value.reshape(shape), dtype=np_dt)

  tensor.cache_clear = held.clear  # type: ignore[attr-defined]
  return tensor


def _write_safetensors(path: str, header: dict[str, Any], tensors: Iterable[np.ndarray]) -> str:
  """Streams one safetensors file to a temp file, then renames it: a reader never sees half
  a file. (files.atomic_write takes the whole file at once; a shard is streamed tensor by
  tensor so that only one is in memory.)"""
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-(8 + len(blob)) % 8)  # data starts 8-byte aligned
  try:
    with open(path + ".tmp", "wb") as f:
      f.write(len(blob).to_bytes(8, "little"))
      f.write(blob)
      for t in tensors:
        f.write(memoryview(t.reshape(-1).view(np.uint8)))
  except BaseException:
    os.remove(path + ".tmp")
    raise
  os.replace(path + ".tmp", path)
  return path


def _check_tree(config: PolyLMConfig, params: Mapping[str, Any]) -> None:
  """Every project param exists with the shape the config implies (before writing anything)."""
  for path, shape in param_shapes(config).items():
    try:
      leaf = _get(params, path)
    except (KeyError, TypeError):
      raise ValueError(f"params: missing {'/'.join(path)}") from None
    if tuple(leaf.shape) != shape:
      raise ValueError(
        f"params: {'/'.join(path)} has shape {tuple(leaf.shape)} but the config implies {shape}"
      )
