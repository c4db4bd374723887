"""The model's function: shapes, causality, segments, numerics, decode cache, scan, remat."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polylm_jax.config import count_params, get_config
from polylm_jax.model import (
  PolyLM,
  _attend,
  abstract_params,
  fused_attention,
  init_cache,
  init_params,
  output_logits,
)

CFG = get_config("polylm_tiny")


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.key(0))


def _tokens(shape, seed=1):
  return jax.random.randint(jax.random.key(seed), shape, 0, CFG.vocab_size)


def _apply(params, tokens, cfg=CFG, **kw):
  return PolyLM(cfg).apply({"params": params}, tokens, **kw)


def test_param_tree_shapes_and_count(params):
  L, D, H, K, F = CFG.num_layers, CFG.d_model, CFG.num_heads, CFG.head_dim, CFG.d_ff
  layer = params["layers"]
  assert params["wte"].shape == (CFG.vocab_size, D)
  assert params["wpe"].shape == (CFG.max_len, D)
  assert layer["attn"]["qkv_kernel"].shape == (L, D, 3, H, K)
  assert layer["attn"]["out_kernel"].shape == (L, H, K, D)
  assert layer["mlp"]["fc1_kernel"].shape == (L, D, F)
  assert layer["ln_1"]["scale"].shape == (L, D)
  assert sum(x.size for x in jax.tree.leaves(params)) == count_params(CFG)
  assert "lm_head" not in params  # tied embeddings


def test_every_param_has_logical_axes():
  boxed = abstract_params(CFG)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  assert boxed["layers"]["attn"]["qkv_kernel"].names == ("layers", "embed", "qkv", "heads", "kv")
  assert boxed["wte"].names == ("vocab", "embed")


def test_logits_shape_dtype_and_causality(params):
  tokens = _tokens((2, 12))
  logits = _apply(params, tokens)
  assert logits.shape == (2, 12, CFG.vocab_size) and logits.dtype == jnp.float32
  changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % CFG.vocab_size)
  other = _apply(params, changed)
  np.testing.assert_allclose(logits[:, :7], other[:, :7], atol=1e-6)
  assert not np.allclose(logits[:, 7:], other[:, 7:])


@pytest.mark.parametrize("block", [0, 4])
def test_matches_numpy_reference(params, block):
  """An independent numpy GPT-2 forward (tanh GeLU, pre-LN, tied head); one dense attention
  block, and query blocks of 4 (the last one ragged)."""
  tokens = np.asarray(_tokens((2, 9)))
  p = jax.tree.map(np.asarray, params)

  def ln(x, s, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + CFG.layer_norm_eps) * s + b

  def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

  x = p["wte"][tokens] + p["wpe"][np.arange(9)]
  T = 9
  for i in range(CFG.num_layers):
    lp = jax.tree.map(lambda a: a[i], p["layers"])
    h = ln(x, lp["ln_1"]["scale"], lp["ln_1"]["bias"])
    w = lp["attn"]["qkv_kernel"].reshape(CFG.d_model, -1)
    qkv = h @ w + lp["attn"]["qkv_bias"].reshape(-1)
    q, k, v = np.split(qkv, 3, axis=-1)
    split = lambda a: a.reshape(2, T, CFG.num_heads, CFG.head_dim).transpose(0, 2, 1, 3)
    q, k, v = split(q), split(k), split(v)
    att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(CFG.head_dim)
    att = np.where(np.tril(np.ones((T, T), bool)), att, -np.inf)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    o = (att @ v).transpose(0, 2, 1, 3).reshape(2, T, -1)
    x = x + o @ lp["attn"]["out_kernel"].reshape(-1, CFG.d_model) + lp["attn"]["out_bias"]
    h = ln(x, lp["ln_2"]["scale"], lp["ln_2"]["bias"])
    h = gelu(h @ lp["mlp"]["fc1_kernel"] + lp["mlp"]["fc1_bias"])
    x = x + h @ lp["mlp"]["fc2_kernel"] + lp["mlp"]["fc2_bias"]
  x = ln(x, p["ln_f"]["scale"], p["ln_f"]["bias"])
  ref = x @ p["wte"].T
  got = _apply(params, tokens, cfg=CFG.replace(attention_block=block))
  np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)


def test_fused_attention_arguments_mean_the_dense_mask():
  """attention_impl="cudnn" passes the causal part as is_causal and the segments as a mask;
  through the same jax API (XLA here, no GPU) that is the causal-and-segment mask of _attend."""
  b, t, h, k = 2, 11, 2, 8
  q, key, v = (jax.random.normal(jax.random.key(i), (b, t, h, k)) for i in range(3))
  segments = jnp.array([[1] * 4 + [2] * 7, [1] * 11])
  mask = (jnp.arange(t)[None, None, :] <= jnp.arange(t)[None, :, None]) & (
    segments[:, :, None] == segments[:, None, :]
  )
  got = fused_attention(q, key, v, segments, implementation="xla")
  np.testing.assert_allclose(got, _attend(q, key, v, mask, 0), atol=1e-5)
  np.testing.assert_allclose(got, _attend(q, key, v, mask, 4), atol=1e-5)


def test_attention_blocks_keep_values_and_gradients_of_packed_rows(params):
  """Query blocks skip only keys every row of the block masks: with two packed documents per
  row and a ragged last block, values and gradients equal one dense block's."""
  tokens = _tokens((2, 13))
  segments = jnp.array([[1] * 5 + [2] * 8, [1] * 11 + [2] * 2])
  positions = jnp.array([list(range(5)) + list(range(8)), list(range(11)) + list(range(2))])

  def loss(p, cfg):
    logits = _apply(p, tokens, cfg=cfg, positions=positions, segment_ids=segments)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

  (value, logits), g = jax.value_and_grad(loss, has_aux=True)(
    params, CFG.replace(attention_block=4)
  )
  (value_ref, logits_ref), g_ref = jax.value_and_grad(loss, has_aux=True)(
    params, CFG.replace(attention_block=0)
  )
  np.testing.assert_allclose(logits, logits_ref, atol=1e-5)
  np.testing.assert_allclose(value, value_ref, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g, g_ref)
  with pytest.raises(ValueError, match="attention_block must be an integer >= 0"):
    CFG.replace(attention_block=-1)


def test_segments_isolate_documents(params):
  """Segment-aware packing: a document's logits do not depend on the one before it."""
  a, b = _tokens((1, 5), seed=2), _tokens((1, 6), seed=3)
  packed = jnp.concatenate([a, b], axis=1)
  segments = jnp.array([[1] * 5 + [2] * 6])
  positions = jnp.array([list(range(5)) + list(range(6))])
  got = _apply(params, packed, positions=positions, segment_ids=segments)
  np.testing.assert_allclose(got[:, 5:], _apply(params, b), atol=1e-5)
  np.testing.assert_allclose(got[:, :5], _apply(params, a), atol=1e-5)
  # Default (the released recipe): no reset, the second document sees the first.
  assert not np.allclose(_apply(params, packed)[:, 5:], _apply(params, b), atol=1e-3)


def test_decode_cache_matches_full_forward_with_left_padding(params):
  """Prefill a left-padded batch, then step token by token: logits equal the full forward."""
  lengths, new = [3, 6], 4
  rows = [_tokens((1, n + new), seed=10 + n)[0] for n in lengths]
  width = max(lengths)
  cache = init_cache(CFG, 2)
  prompt = np.zeros((2, width), np.int32)
  seg = np.zeros((2, width), np.int32)
  pos = np.zeros((2, width), np.int32)
  for r, n in enumerate(lengths):
    prompt[r, width - n :] = rows[r][:n]
    seg[r, width - n :] = 1
    pos[r, width - n :] = np.arange(n)
  model = PolyLM(CFG)
  logits, state = model.apply(
    {"params": params, "cache": cache}, prompt, pos, seg, decode=True, mutable=["cache"]
  )
  steps = [logits[r, width - 1] for r in range(2)]
  per_row = [[steps[0]], [steps[1]]]
  for t in range(new - 1):
    tok = np.array([[rows[r][lengths[r] + t]] for r in range(2)], np.int32)
    p = np.array([[lengths[r] + t] for r in range(2)], np.int32)
    step_logits, state = model.apply(
      {"params": params, "cache": state["cache"]},
      tok,
      p,
      np.ones((2, 1), np.int32),
      decode=True,
      mutable=["cache"],
    )
    for r in range(2):
      per_row[r].append(step_logits[r, 0])
  for r, n in enumerate(lengths):
    full = _apply(params, rows[r][None])[0]
    np.testing.assert_allclose(np.stack(per_row[r]), full[n - 1 : n - 1 + new], atol=1e-5)


def test_bf16_compute_and_fp32_residual(params):
  tokens = _tokens((2, 8))
  ref = _apply(params, tokens)
  for residual_fp32 in (True, False):
    cfg = CFG.replace(dtype="bfloat16", residual_fp32=residual_fp32)
    out = _apply(params, tokens, cfg=cfg)
    assert out.dtype == jnp.float32
    # measured max error 5.8e-4 (fp32 residual) / 8.4e-4 (bf16 residual); about 4x of it.
    # Negative control below: logits x 0.75 are off by 0.071.
    assert float(jnp.abs(out - ref).max()) < 3.5e-3
  assert float(jnp.abs(0.75 * ref - ref).max()) > 3.5e-3


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_keeps_values_and_gradients(params, policy):
  tokens = _tokens((2, 8))

  def loss(p, cfg):
    return jnp.mean(jax.nn.log_softmax(_apply(p, tokens, cfg=cfg))[..., 0])

  g_ref = jax.grad(loss)(params, CFG)
  g = jax.grad(loss)(params, CFG.replace(remat_policy=policy))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g, g_ref)


def test_unrolled_layer_scan_keeps_params_values_and_gradients(params):
  """scan_unroll=num_layers runs the same function on the same (stacked) parameters; only
  the loop changes, so checkpoints and sharding rules do not."""
  cfg, scanned = CFG.replace(scan_unroll=CFG.num_layers), CFG.replace(scan_unroll=1)
  assert jax.tree.map(jnp.shape, init_params(cfg, jax.random.key(0))) == jax.tree.map(
    jnp.shape, params
  )
  tokens = _tokens((2, 8))

  def loss(p, c):
    return jnp.mean(jax.nn.log_softmax(_apply(p, tokens, cfg=c))[..., 0])

  np.testing.assert_allclose(loss(params, cfg), loss(params, scanned), rtol=1e-6)
  g, g_ref = jax.grad(loss)(params, cfg), jax.grad(loss)(params, scanned)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g, g_ref)
  with pytest.raises(ValueError, match="scan_unroll must be an integer >= 0"):
    CFG.replace(scan_unroll=-1)


def test_automatic_unroll_unrolls_small_stacks_and_scans_the_released_sizes():
  from polylm_jax.config import AUTO_UNROLL_LAYERS, PRESETS

  assert CFG.scan_unroll == 0 and CFG.layers_per_iteration == CFG.num_layers
  assert PRESETS["polylm_small"].layers_per_iteration == PRESETS["polylm_small"].num_layers
  assert CFG.replace(num_layers=AUTO_UNROLL_LAYERS).layers_per_iteration == AUTO_UNROLL_LAYERS
  assert CFG.replace(num_layers=AUTO_UNROLL_LAYERS + 1).layers_per_iteration == 1
  assert PRESETS["polylm_1_7b"].layers_per_iteration == 1
  assert PRESETS["polylm_13b"].layers_per_iteration == 1
  assert CFG.replace(scan_unroll=1).layers_per_iteration == 1  # an explicit value wins


def test_compile_time_does_not_grow_with_depth():
  """The stack is one scan: the jaxpr of 24 layers has no more equations than 2 layers."""

  def eqns(num_layers):
    cfg = CFG.replace(num_layers=num_layers)
    p = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    jaxpr = jax.make_jaxpr(lambda p, t: PolyLM(cfg).apply({"params": p}, t))(
      p, jax.ShapeDtypeStruct((1, 4), jnp.int32)
    )
    return len(jaxpr.jaxpr.eqns)

  assert eqns(24) == eqns(2)


def test_right_padded_prefill_with_per_row_lengths_then_default_positions(params):
  """t5x's layout: one right-padded prefill, each row's index moves to its own length, and
  steps without explicit positions continue from there; logits equal the full forward."""
  lengths, new = [2, 5], 3
  rows = [_tokens((1, n + new), seed=20 + n)[0] for n in lengths]
  width = max(lengths)
  prompt = np.zeros((2, width), np.int32)
  for r, n in enumerate(lengths):
    prompt[r, :n] = rows[r][:n]
  model = PolyLM(CFG)
  logits, state = model.apply(
    {"params": params, "cache": init_cache(CFG, 2)},
    prompt,
    decode=True,
    prefill_lengths=jnp.array(lengths),
    mutable=["cache"],
  )
  np.testing.assert_array_equal(state["cache"]["layers"]["attn"]["index"][0], lengths)
  per_row = [[logits[r, n - 1]] for r, n in enumerate(lengths)]
  for t in range(new - 1):
    tok = np.array([[rows[r][lengths[r] + t]] for r in range(2)], np.int32)
    step_logits, state = model.apply(
      {"params": params, "cache": state["cache"]}, tok, decode=True, mutable=["cache"]
    )
    for r in range(2):
      per_row[r].append(step_logits[r, 0])
  for r, n in enumerate(lengths):
    full = _apply(params, rows[r][None])[0]
    np.testing.assert_allclose(np.stack(per_row[r]), full[n - 1 : n - 1 + new], atol=1e-5)


def test_return_hidden_then_output_logits_equals_logits(params):
  """The loss and the scorer apply the output layer themselves (to chunks or gathered rows)."""
  tokens = _tokens((2, 8))
  for cfg in (CFG, CFG.replace(dtype="bfloat16")):
    hidden = _apply(params, tokens, cfg=cfg, return_hidden=True)
    assert hidden.shape == (2, 8, CFG.d_model) and hidden.dtype == jnp.dtype(cfg.dtype)
    logits = output_logits(hidden, params["wte"], cfg)
    assert logits.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(_apply(params, tokens, cfg=cfg)))
    rows = output_logits(hidden[:, 3], params["wte"], cfg)  # gathered positions: [B, V]
    np.testing.assert_allclose(np.asarray(rows), np.asarray(logits[:, 3]), rtol=1e-6, atol=1e-6)
