"""The released optimiser recipe: schedule, decay mask, AdamW arithmetic, sharded state."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polylm_jax import optim
from polylm_jax.config import get_config
from polylm_jax.model import abstract_params
from polylm_jax.partitioning import make_mesh, param_shardings

PEAK, MIN, WARMUP, DECAY = 6e-5, 6e-6, 100, 1000


def test_schedule_values():
  lr = optim.learning_rate_schedule(PEAK, MIN, WARMUP, DECAY)
  expected = {
    0: 0.0,
    25: PEAK * 0.25,
    WARMUP: PEAK,
    WARMUP + DECAY // 4: MIN + (PEAK - MIN) * 0.5 * (1 + math.cos(math.pi / 4)),
    WARMUP + DECAY // 2: (PEAK + MIN) / 2,
    WARMUP + DECAY: MIN,
    WARMUP + DECAY + 1: MIN,
    50 * (WARMUP + DECAY): MIN,
  }
  for step, value in expected.items():
    np.testing.assert_allclose(
      float(lr(step)), value, rtol=1e-5, atol=1e-12, err_msg=f"step {step}"
    )
  # Jittable on a traced int32 step, and monotone after the peak.
  values = jax.jit(jax.vmap(lr))(jnp.arange(WARMUP, WARMUP + DECAY + 10, dtype=jnp.int32))
  assert np.all(np.diff(np.asarray(values)) <= 1e-12)


def test_schedule_without_warmup_and_bad_args():
  lr = optim.learning_rate_schedule(1.0, 0.1, 0, 10)
  np.testing.assert_allclose(float(lr(0)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(lr(10)), 0.1, rtol=1e-6)
  with pytest.raises(ValueError, match="decay_steps"):
    optim.learning_rate_schedule(1.0, 0.1, 10, 0)
  with pytest.raises(ValueError, match="min"):
    optim.learning_rate_schedule(1.0, 2.0, 10, 10)


def test_decay_mask_on_model_params():
  params = nn.unbox(abstract_params(get_config("polylm_tiny")))
  mask = optim.decay_mask(params)
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  decayed = sorted(k for k, v in flat.items() if v)
  assert decayed == sorted(
    [
      "['layers']['attn']['out_kernel']",
      "['layers']['attn']['qkv_kernel']",
      "['layers']['mlp']['fc1_kernel']",
      "['layers']['mlp']['fc2_kernel']",
      "['wpe']",
      "['wte']",
    ]
  )
  # Stacked per-layer biases and LayerNorm params are 2-D [L, D] but still excluded.
  assert params["layers"]["ln_1"]["scale"].ndim == 2 and not mask["layers"]["ln_1"]["scale"]
  assert params["layers"]["attn"]["qkv_bias"].ndim == 4 and not mask["layers"]["attn"]["qkv_bias"]


def test_decay_mask_excludes_any_1d_leaf():
  tree = {"w": jnp.zeros((2, 3)), "gain": jnp.zeros((3,)), "scalar": jnp.zeros(())}
  assert optim.decay_mask(tree) == {"w": True, "gain": False, "scalar": False}


def _reference_adamw(params, grads_seq, lrs, b1, b2, eps, wd, clip, mask):
  """NumPy AdamW with global-norm clipping, as PyTorch / Megatron do it."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
    g = {k: np.asarray(x, np.float64) for k, x in grads.items()}
    norm = math.sqrt(sum(float(np.sum(x * x)) for x in g.values()))
    if norm > clip:
      g = {k: x * clip / norm for k, x in g.items()}
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      mhat = m[k] / (1 - b1**t)
      vhat = v[k] / (1 - b2**t)
      p[k] = p[k] - lr * (mhat / (np.sqrt(vhat) + eps) + (wd * p[k] if mask[k] else 0.0))
  return p


@pytest.mark.parametrize("clip", [100.0, 0.5])
def test_optimizer_matches_hand_computed_adamw(clip):
  rng = np.random.default_rng(0)
  params = {
    "w": rng.normal(size=(3, 4)).astype(np.float32),
    "b_bias": rng.normal(size=(4,)).astype(np.float32),
    "emb": rng.normal(size=(5, 3)).astype(np.float32),
  }
  grads_seq = [
    {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(3)
  ]
  schedule = optim.learning_rate_schedule(0.1, 0.01, 2, 10)
  wd = 0.3
  opt = optim.make_optimizer(schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=wd, clip_norm=clip)
  p = jax.tree.map(jnp.asarray, params)
  state = opt.init(p)
  for grads in grads_seq:
    updates, state = opt.update(jax.tree.map(jnp.asarray, grads), state, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)
  lrs = [float(schedule(t)) for t in range(3)]
  assert lrs[0] == 0.0 and lrs[1] > 0
  expected = _reference_adamw(
    params, grads_seq, lrs, 0.9, 0.95, 1e-8, wd, clip, {"w": True, "b_bias": False, "emb": True}
  )
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # The clip actually changed something in the clipped case (the test can fail).
  if clip < 1:
    unclipped = _reference_adamw(
      params, grads_seq, lrs, 0.9, 0.95, 1e-8, wd, 1e9, {"w": True, "b_bias": False, "emb": True}
    )
    assert not np.allclose(unclipped["w"], expected["w"], rtol=1e-4)


def test_opt_state_shardings_split_under_fsdp():
  cfg = get_config("polylm_tiny")
  mesh = make_mesh(data=2, fsdp=4)
  opt = optim.make_optimizer(optim.learning_rate_schedule(1e-3, 1e-4, 10, 100))
  boxed = abstract_params(cfg)
  p_shard = param_shardings(cfg, mesh)
  s_shard = optim.opt_state_shardings(opt, p_shard, boxed)
  abstract = optim.abstract_opt_state(opt, boxed)
  state = jax.jit(
    lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract), out_shardings=s_shard
  )()
  adam = state[1][0]
  d, v = cfg.d_model, cfg.vocab_size
  for moment in (adam.mu, adam.nu):
    wte = moment["wte"]
    assert wte.shape == (v, d)
    assert {s.data.shape for s in wte.addressable_shards} == {(v, d // 4)}
    fc1 = moment["layers"]["mlp"]["fc1_kernel"]
    assert {s.data.shape for s in fc1.addressable_shards} == {(cfg.num_layers, d // 4, cfg.d_ff)}
  assert adam.count.sharding.is_fully_replicated
  # Every moment leaf carries exactly its parameter's sharding.
  for moment in (s_shard[1][0].mu, s_shard[1][0].nu):
    for ms, ps in zip(jax.tree.leaves(moment), jax.tree.leaves(p_shard)):
      assert ms == ps
