"""Checkpoints of `python -m t5x.train` runs, read without t5x (orbax only).

A t5x checkpoint is `MODEL_DIR/checkpoint_N/` holding `state/` (an orbax PyTree: `target` =
the parameters, `state` = optimizer state and step) and a `_CHECKPOINT_METADATA` naming t5x's
handlers. PolyLM's t5x module (t5x_model.py) keeps the project's parameter tree, so the
`target` tree is the project's params leaf for leaf. The config comes from the shapes
(layer_norm_eps, init_std and eos_id are PolyLM's: t5x does not store them), with numerics
from an optional `config`.

Used by `polylm_jax.load` (checkpoints.load dispatches here) and by the HF export in
`polylm_jax.convert` (--from_checkpoint=<t5x run or checkpoint_N> --to_hf=...).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from polylm_jax.config import PolyLMConfig

_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
STATE_DIR = "state"
METADATA_FILE = "_CHECKPOINT_METADATA"


def _is_step_dir(path: str) -> bool:
  meta = os.path.join(path, METADATA_FILE)
  if not (os.path.isdir(os.path.join(path, STATE_DIR)) and os.path.isfile(meta)):
    return False
  try:
    with open(meta) as f:
      handlers = json.load(f).get("item_handlers", {})
  except (OSError, ValueError):
    return False
  return any("t5x" in str(h) for h in handlers.values())


def steps(run_dir: str) -> list[int]:
  """Complete t5x checkpoint steps in a run dir (oldest first)."""
  if not os.path.isdir(run_dir):
    return []
  found = [(int(m.group(1)), n) for n in os.listdir(run_dir) if (m := _STEP_DIR.match(n))]
  return sorted(s for s, n in found if _is_step_dir(os.path.join(run_dir, n)))


def is_t5x_checkpoint(path: str | os.PathLike) -> bool:
  """True for a t5x `checkpoint_N` dir or a run dir that holds one."""
  path = os.fspath(path)
  return _is_step_dir(path) or bool(steps(path))


def resolve(path: str | os.PathLike, step: int | None = None) -> str:
  """The `checkpoint_N` dir: `path` itself, or the run dir's latest (or `step`)."""
  path = os.fspath(path)
  if _is_step_dir(path):
    own = int(_STEP_DIR.match(os.path.basename(os.path.normpath(path))).group(1))
    if step is not None and step != own:
      raise ValueError(f"{path} is the t5x checkpoint of step {own}, not step {step}")
    return path
  available = steps(path)
  if not available:
    raise FileNotFoundError(f"{path}: no t5x checkpoint_N folder with a {STATE_DIR}/ inside")
  if step is None:
    step = available[-1]
  if step not in available:
    raise FileNotFoundError(f"{path}: no t5x checkpoint for step {step}; steps: {available}")
  return os.path.join(path, f"checkpoint_{step}")


def config_from_params(params: Any, base: PolyLMConfig | None = None) -> PolyLMConfig:
  """The architecture implied by the parameter shapes (numerics from `base`)."""
  vocab, d = params["wte"].shape
  max_len = params["wpe"].shape[0]
  layers, _, _, heads, head_dim = params["layers"]["attn"]["qkv_kernel"].shape
  d_ff = params["layers"]["mlp"]["fc1_kernel"].shape[-1]
  base = base or PolyLMConfig()
  return base.replace(
    vocab_size=int(vocab),
    num_layers=int(layers),
    d_model=int(d),
    num_heads=int(heads),
    head_dim=int(head_dim),
    d_ff=int(d_ff),
    max_len=int(max_len),
  )


def read_params(path: str | os.PathLike, step: int | None = None, dtype: str = "float32") -> Any:
  """The parameter tree of a t5x checkpoint as host numpy arrays in `dtype`."""
  state_dir = os.path.join(resolve(path, step), STATE_DIR)
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(state_dir).item_metadata
  tree = meta.tree if hasattr(meta, "tree") else meta
  np_dtype = np.dtype(dtype)
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray, dtype=np_dtype), tree)
  restored = checkpointer.restore(state_dir, restore_args=args)
  return restored["target"]


def load(
  path: str | os.PathLike, config: PolyLMConfig | None = None, step: int | None = None
) -> tuple[PolyLMConfig, Any]:
  """(config, host numpy params) of a t5x checkpoint or run dir. With `config`, the
  architecture must match (ConfigMismatchError from checkpoints.check_config)."""
  from polylm_jax import checkpoints  # pylint: disable=import-outside-toplevel

  dtype = config.param_dtype if config is not None else "float32"
  params = read_params(path, step, dtype)
  saved = config_from_params(params, config)
  if config is not None:
    checkpoints.check_config(saved, config, f"{os.fspath(path)} (t5x checkpoint)")
  return saved, params


def write(params: Any, checkpoint_dir: str | os.PathLike, step: int = 0) -> str:
  """Writes `params` (the project tree: from polylm_jax.load of a project run or an HF dir)
  as a t5x `checkpoint_{step}` folder holding parameters only. A t5x run starts from it with
  utils.RestoreCheckpointConfig(path=<that folder>, mode='specific', strict=False,
  fallback_to_scratch=True): fresh optimizer state (gin/t5x/from_weights.gin)."""
  out = os.fspath(checkpoint_dir)
  if not _STEP_DIR.match(os.path.basename(os.path.normpath(out))):
    out = os.path.join(out, f"checkpoint_{step}")
  if os.path.exists(out):
    raise FileExistsError(f"{out}: already exists")
  host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
  state = {"target": host, "state": {"step": np.asarray(step, np.int32)}}
  ocp.PyTreeCheckpointer().save(os.path.join(out, STATE_DIR), state)
  with open(os.path.join(out, METADATA_FILE), "w") as f:
    json.dump({"item_handlers": {STATE_DIR: "t5x.checkpoints (parameters only, polylm_jax)"}}, f)
  return out
