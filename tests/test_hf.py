"""HF GPT-2 interop: logit parity with transformers, lossless round trips, clear errors."""

import json
import os
import shutil

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (SPEC 9); conftest sets it too

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from polylm_jax import hf
from polylm_jax.config import get_config
from polylm_jax.model import PolyLM

VOCAB, POSITIONS, D, LAYERS, HEADS = 1000, 64, 64, 3, 4


def make_hf_model(seed: int = 0, **overrides) -> transformers.GPT2LMHeadModel:
  """A random PolyLM-shaped GPT2LMHeadModel; every tensor (biases, LN too) perturbed."""
  torch.manual_seed(seed)
  kw = dict(
    vocab_size=VOCAB,
    n_positions=POSITIONS,
    n_embd=D,
    n_layer=LAYERS,
    n_head=HEADS,
    activation_function="gelu_new",
    attn_pdrop=0.0,
    embd_pdrop=0.0,
    resid_pdrop=0.0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=True,
  )
  kw.update(overrides)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.float().numpy()


def our_logits(config, params, tokens: np.ndarray) -> np.ndarray:
  return np.asarray(PolyLM(config).apply({"params": params}, jnp.asarray(tokens)))


def batches() -> list[np.ndarray]:
  rng = np.random.RandomState(1)
  return [rng.randint(0, VOCAB, size) for size in ((2, 7), (3, 33), (1, POSITIONS))]


def assert_trees_equal(a, b) -> None:
  flat_a = jax_flatten(a)
  flat_b = jax_flatten(b)
  assert flat_a.keys() == flat_b.keys()
  for k in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]), err_msg=k)


def jax_flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(jax_flatten(v, f"{prefix}{k}/"))
    else:
      out[prefix + k] = v
  return out


@pytest.fixture(scope="module")
def hf_model():
  return make_hf_model()


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
  path = tmp_path_factory.mktemp("hf_safetensors")
  hf_model.save_pretrained(path)
  assert (path / hf.SAFETENSORS_FILE).exists()
  return path


@pytest.fixture(scope="module")
def imported(hf_dir):
  return hf.import_hf(hf_dir)


def test_config_is_read(imported):
  config, _ = imported
  assert (
    config.vocab_size,
    config.num_layers,
    config.d_model,
    config.num_heads,
    config.head_dim,
    config.d_ff,
    config.max_len,
  ) == (VOCAB, LAYERS, D, HEADS, D // HEADS, 4 * D, POSITIONS)


def test_logit_parity_safetensors(hf_model, imported):
  config, params = imported
  for tokens in batches():
    ref = hf_logits(hf_model, tokens)
    out = our_logits(config, params, tokens)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-4, np.abs(out - ref).max()


def test_logit_parity_pytorch_bin(hf_model, imported, tmp_path):
  # As the released 1.7B: a pickle with the tied head and the old attention buffers.
  state = dict(hf_model.state_dict())
  for i in range(LAYERS):
    state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(POSITIONS, POSITIONS))[None, None]
    state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
  assert "lm_head.weight" in state
  torch.save(state, tmp_path / hf.BIN_FILE)
  (tmp_path / hf.CONFIG_FILE).write_text(hf_model.config.to_json_string())
  config, params = hf.import_hf(tmp_path)
  assert_trees_equal(params, imported[1])
  tokens = batches()[1]
  assert np.abs(our_logits(config, params, tokens) - hf_logits(hf_model, tokens)).max() <= 1e-4


def test_export_reloads_in_transformers_with_same_logits(hf_model, imported, tmp_path):
  config, params = imported
  written = hf.export_hf(config, params, tmp_path)
  assert {os.path.basename(p) for p in written} == {hf.SAFETENSORS_FILE, hf.CONFIG_FILE}
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
  for tokens in batches():
    np.testing.assert_array_equal(hf_logits(reloaded, tokens), hf_logits(hf_model, tokens))
  # And back again: the round trip is exact.
  config2, params2 = hf.import_hf(tmp_path)
  assert config2 == config
  assert_trees_equal(params2, params)


def test_sharded_export_and_import(hf_model, imported, tmp_path):
  config, params = imported
  written = hf.export_hf(config, params, tmp_path, max_shard_bytes=200_000)
  shards = [p for p in written if p.endswith(".safetensors")]
  assert len(shards) > 2 and (tmp_path / hf.SAFETENSORS_INDEX).exists()
  for p in shards:  # each file is valid safetensors
    assert safetensors.numpy.load_file(p)
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
  tokens = batches()[0]
  np.testing.assert_array_equal(hf_logits(reloaded, tokens), hf_logits(hf_model, tokens))
  assert_trees_equal(hf.import_hf(tmp_path)[1], params)


def test_bfloat16_checkpoint_is_cast_exactly(hf_model, tmp_path):
  model16 = make_hf_model().to(torch.bfloat16)
  model16.save_pretrained(tmp_path)
  config, params = hf.import_hf(tmp_path)
  assert params["wte"].dtype == np.float32
  expected = model16.transformer.h[1].mlp.c_fc.weight.detach().float().numpy()
  np.testing.assert_array_equal(params["layers"]["mlp"]["fc1_kernel"][1], expected)
  _, params16 = hf.import_hf(tmp_path, param_dtype="bfloat16")
  assert params16["wte"].dtype == hf.np_dtype("bfloat16")
  np.testing.assert_array_equal(params16["wte"].astype(np.float32), params["wte"])


def test_export_in_bfloat16(imported, tmp_path):
  config, params = imported
  hf.export_hf(config, params, tmp_path, dtype="bfloat16")
  back = hf.import_hf(tmp_path)[1]
  np.testing.assert_array_equal(
    back["wpe"], params["wpe"].astype(hf.np_dtype("bfloat16")).astype(np.float32)
  )


def test_checkpoint_without_transformer_prefix(imported, hf_dir, tmp_path):
  tensors = safetensors.numpy.load_file(hf_dir / hf.SAFETENSORS_FILE)
  safetensors.numpy.save_file(
    {k.removeprefix("transformer."): v for k, v in tensors.items()},
    tmp_path / hf.SAFETENSORS_FILE,
    metadata={"format": "pt"},
  )
  shutil.copy(hf_dir / hf.CONFIG_FILE, tmp_path)
  assert_trees_equal(hf.import_hf(tmp_path)[1], imported[1])


def test_qkv_layout_matches_hf_split(hf_model, imported):
  """c_attn's output is Q|K|V, each heads x head_dim: the project's [d, 3, heads, kv]."""
  _, params = imported
  w = hf_model.transformer.h[2].attn.c_attn.weight.detach().numpy()
  dh = D // HEADS
  np.testing.assert_array_equal(
    params["layers"]["attn"]["qkv_kernel"][2, :, 1, 3], w[:, D + 3 * dh : D + 4 * dh]
  )


# ----------------------------------------------------------------------------------------------
# Errors


def base_config() -> dict:
  return json.loads(make_hf_model().config.to_json_string())


@pytest.mark.parametrize(
  "field, value",
  [
    ("model_type", "llama"),
    ("architectures", ["LlamaForCausalLM"]),
    ("tie_word_embeddings", False),
    ("activation_function", "gelu"),
    ("activation_function", "relu"),
    ("scale_attn_weights", False),
    ("scale_attn_by_inverse_layer_idx", True),
    ("add_cross_attention", True),
    ("bias", False),
    ("mlp_bias", False),
    ("rotary_dim", 16),
    ("rope_theta", 10000.0),
    ("position_embedding_type", "rotary"),
    ("alibi", True),
    ("parallel_residual", True),
    ("multi_query", True),
    ("num_key_value_heads", 1),
    ("n_head", 5),
    ("n_inner", -1),
    ("n_layer", 0),
    ("vocab_size", None),
    ("layer_norm_epsilon", 0),
  ],
)
def test_non_polylm_config_names_the_field(field, value):
  config = base_config()
  config[field] = value
  with pytest.raises(hf.HFFormatError, match=f"/x/config.json: field '{field}'"):
    hf.config_from_hf(config, "/x/config.json")


def test_numerically_equivalent_flags_are_accepted():
  # reorder_and_upcast_attn only computes the same attention in fp32, as this model does.
  config = base_config()
  config.update(
    reorder_and_upcast_attn=True,
    n_inner=4 * D,
    activation_function="gelu_fast",
    rope_scaling=None,
    position_embedding_type="absolute",
    eos_token_id=255999,
  )
  assert hf.config_from_hf(config).d_ff == 4 * D


def test_n_inner_is_read_and_checked_against_the_expected_config():
  config = base_config()
  config["n_inner"] = 3 * D
  assert hf.config_from_hf(config).d_ff == 3 * D
  expected = get_config("polylm_tiny", vocab_size=VOCAB, num_layers=LAYERS, max_len=POSITIONS)
  with pytest.raises(hf.HFFormatError, match=r"n_inner gives d_ff = 192 .* d_ff = 256"):
    hf.config_from_hf(config, expected=expected)
  config["n_inner"] = None
  got = hf.config_from_hf(config, expected=expected.replace(dtype="bfloat16"))
  assert got.dtype == "bfloat16"  # numerics come from the expected config


def test_polylm_1_7b_config_json_maps_to_the_preset():
  released = {  # the fields of the released polylm-1.7b config.json
    "activation_function": "gelu_fast",
    "architectures": ["GPT2LMHeadModel"],
    "attn_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "resid_pdrop": 0.0,
    "eos_token_id": 2,
    "bos_token_id": 255999,
    "layer_norm_epsilon": 1e-05,
    "model_type": "gpt2",
    "n_embd": 2048,
    "n_head": 16,
    "n_inner": 8192,
    "n_layer": 24,
    "n_positions": 2048,
    "scale_attn_weights": True,
    "tie_word_embeddings": True,
    "vocab_size": 256000,
  }
  assert hf.config_from_hf(released) == get_config("polylm_1_7b")
  assert hf.config_from_hf(hf.config_to_hf(get_config("polylm_13b"))) == get_config("polylm_13b")


def test_missing_and_unexpected_tensors_are_listed(hf_dir, tmp_path):
  tensors = safetensors.numpy.load_file(hf_dir / hf.SAFETENSORS_FILE)
  del tensors["transformer.h.1.mlp.c_fc.bias"]
  del tensors["transformer.ln_f.weight"]
  tensors["transformer.h.0.attn.q_proj.weight"] = np.zeros((2, 2), np.float32)
  tensors["transformer.h.0.attn.bias"] = np.zeros((1,), np.float32)  # an ignored buffer
  safetensors.numpy.save_file(tensors, tmp_path / hf.SAFETENSORS_FILE, metadata={"format": "pt"})
  shutil.copy(hf_dir / hf.CONFIG_FILE, tmp_path)
  with pytest.raises(hf.HFFormatError) as e:
    hf.import_hf(tmp_path)
  msg = str(e.value)
  assert "missing: transformer.h.1.mlp.c_fc.bias, transformer.ln_f.weight" in msg
  assert "unexpected: transformer.h.0.attn.q_proj.weight" in msg
  assert "attn.bias" not in msg.replace("c_fc.bias", "")


def test_extra_layer_is_unexpected(hf_dir, tmp_path):
  shutil.copy(hf_dir / hf.SAFETENSORS_FILE, tmp_path)
  config = json.loads((hf_dir / hf.CONFIG_FILE).read_text())
  config["n_layer"] = LAYERS - 1
  (tmp_path / hf.CONFIG_FILE).write_text(json.dumps(config))
  with pytest.raises(hf.HFFormatError, match=r"unexpected: transformer\.h\.2\.attn"):
    hf.import_hf(tmp_path)


def test_tensor_shape_disagreeing_with_config(hf_dir, tmp_path):
  shutil.copy(hf_dir / hf.SAFETENSORS_FILE, tmp_path)
  config = json.loads((hf_dir / hf.CONFIG_FILE).read_text())
  config["n_inner"] = 2 * D
  (tmp_path / hf.CONFIG_FILE).write_text(json.dumps(config))
  with pytest.raises(
    hf.HFFormatError,
    match=r"'transformer.h.0.mlp.c_fc.weight' has shape "
    r"\[64, 256\] but .*config.json implies \[64, 128\]",
  ):
    hf.import_hf(tmp_path)


def test_untied_head_is_refused(hf_model, tmp_path):
  state = dict(hf_model.state_dict())
  state["lm_head.weight"] = state["lm_head.weight"].clone()
  state["lm_head.weight"][5, 3] += 1.0
  torch.save(state, tmp_path / hf.BIN_FILE)
  (tmp_path / hf.CONFIG_FILE).write_text(hf_model.config.to_json_string())
  with pytest.raises(hf.HFFormatError, match="lm_head.weight differs from the token embedding"):
    hf.import_hf(tmp_path)


def test_directory_without_weights_or_config(hf_dir, tmp_path):
  with pytest.raises(hf.HFFormatError, match="no config.json"):
    hf.import_hf(tmp_path)
  shutil.copy(hf_dir / hf.CONFIG_FILE, tmp_path)
  with pytest.raises(hf.HFFormatError, match="no weights"):
    hf.import_hf(tmp_path)
  assert not hf.is_hf_dir(tmp_path) and hf.is_hf_dir(hf_dir)


def test_export_from_a_leaf_function_fetches_each_leaf_once(imported, tmp_path):
  config, params = imported
  calls = []

  def read(path):
    calls.append(path)
    return hf._get(params, path)  # pylint: disable=protected-access

  hf.export_hf(config, read, tmp_path / "ok")
  assert sorted(calls) == sorted(hf.param_shapes(config)) and len(set(calls)) == len(calls)
  assert_trees_equal(hf.import_hf(tmp_path / "ok")[1], params)

  def bad(path):
    leaf = hf._get(params, path)  # pylint: disable=protected-access
    return leaf[:, :-1] if path[-1] == "fc2_kernel" else leaf

  with pytest.raises(ValueError, match=r"layers/mlp/fc2_kernel has shape \(3, 255, 64\)"):
    hf.export_hf(config, bad, tmp_path / "bad")
  assert not os.listdir(tmp_path / "bad")  # no half-written file left behind


def test_export_refuses_params_of_another_config(imported, tmp_path):
  config, params = imported
  with pytest.raises(ValueError, match="layers/mlp/fc1_kernel has shape"):
    hf.export_hf(config.replace(d_ff=128), params, tmp_path)
  assert not os.listdir(tmp_path)
