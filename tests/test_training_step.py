"""Loss, microbatching, the non-finite guard and sharded steps of train_step.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polylm_jax import optim
from polylm_jax.training import step as ts
from polylm_jax.config import get_config
from polylm_jax.model import PolyLM, init_params
from polylm_jax.partitioning import batch_sharding, make_mesh, use_mesh

CFG = get_config("polylm_tiny")
SCHEDULE = optim.learning_rate_schedule(1e-2, 1e-3, 1, 100)
OPT = optim.make_optimizer(SCHEDULE)
# For comparing updated params across microbatch counts / meshes: Adam's first steps are
# ~sign(g), so with eps 1e-8 a gradient entry near 0 flips on rounding noise alone. A larger
# eps makes the update a smooth function of the gradient; constant lr so step 0 moves.
SMOOTH_OPT = optim.make_optimizer(1e-2, eps=1e-3)


def make_batch(seed=0, b=8, t=16, zero_weight_frac=0.25):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, CFG.vocab_size, (b, t + 1))
  weights = (rng.random((b, t)) >= zero_weight_frac).astype(np.float32)
  batch = dict(
    inputs=tokens[:, :-1],
    targets=tokens[:, 1:],
    positions=np.broadcast_to(np.arange(t), (b, t)),
    segment_ids=np.ones((b, t)),
    langs=rng.integers(0, ts.NUM_LANGUAGES, (b, t)),
  )
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  batch["loss_weights"] = jnp.asarray(weights)
  return batch


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.key(0))


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_cross_entropy_matches_hand_computation():
  logits = np.array([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4], [-3.0, 5.0, 1.0, 1.0]])
  targets = np.array([0, 3, 2])
  loss, nll, z = ts.cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
  lse = np.log(np.exp(logits).sum(-1))
  expected = lse - logits[np.arange(3), targets]
  np.testing.assert_allclose(np.asarray(nll), expected, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(loss), expected, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(z), 0.0)

  loss, nll, z = ts.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), z_loss=1e-2)
  np.testing.assert_allclose(np.asarray(z), 1e-2 * lse**2, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(loss), expected + 1e-2 * lse**2, rtol=1e-6)

  # Label smoothing = KL(soft target || prediction) with t5x's soft targets.
  s, v = 0.1, logits.shape[-1]
  soft = np.full(logits.shape, s / (v - 1))
  soft[np.arange(3), targets] = 1 - s
  kl = np.sum(soft * (np.log(soft) - _log_softmax(logits)), -1)
  loss, nll, _ = ts.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), label_smoothing=s)
  np.testing.assert_allclose(np.asarray(loss), kl, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(nll), expected, rtol=1e-6)


def test_loss_fn_weighted_mean_and_per_language_sums(params):
  batch = make_batch()
  loss, aux = jax.jit(functools.partial(ts.loss_fn, config=CFG))(params, batch)
  logits = np.asarray(
    PolyLM(CFG).apply(
      {"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"]
    ),
    np.float64,
  )
  logp = _log_softmax(logits)
  tgt = np.asarray(batch["targets"])
  nll = -np.take_along_axis(logp, tgt[..., None], -1)[..., 0]
  w = np.asarray(batch["loss_weights"])
  np.testing.assert_allclose(float(loss), (nll * w).sum() / w.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(aux["weight_sum"]), w.sum())
  langs = np.asarray(batch["langs"])
  np.testing.assert_allclose(
    np.asarray(aux["lang_weight_sum"]),
    np.bincount(langs.ravel(), w.ravel(), ts.NUM_LANGUAGES),
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    np.asarray(aux["lang_nll_sum"]),
    np.bincount(langs.ravel(), (nll * w).ravel(), ts.NUM_LANGUAGES),
    rtol=1e-5,
  )
  np.testing.assert_allclose(float(np.sum(aux["lang_nll_sum"])), float(aux["nll_sum"]), rtol=1e-5)


def test_zero_weight_tokens_contribute_nothing(params):
  """Token id 0 is <unk> in PolyLM: only loss_weights decide, never the token value."""
  batch = make_batch(zero_weight_frac=0.5)
  zero = batch["loss_weights"] == 0
  scrambled = dict(
    batch, targets=jnp.where(zero, (batch["targets"] + 7) % CFG.vocab_size, batch["targets"])
  )
  # Real targets equal to 0 (<unk>) with weight 1 must count.
  unk = dict(batch, targets=jnp.where(zero, batch["targets"], 0))
  grad = jax.jit(jax.value_and_grad(functools.partial(ts.loss_fn, config=CFG), has_aux=True))
  (l0, a0), g0 = grad(params, batch)
  (l1, a1), g1 = grad(params, scrambled)
  (l2, a2), _ = grad(params, unk)
  np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-8), g0, g1)
  assert float(a2["weight_sum"]) == float(a0["weight_sum"]) > 0
  assert abs(float(l2) - float(l0)) > 1e-3


def test_z_loss_adds_expected_amount(params):
  batch = make_batch()
  z = 1e-3
  l0, _ = ts.loss_fn(params, batch, config=CFG)
  lz, aux = ts.loss_fn(params, batch, config=CFG, z_loss=z)
  logits = np.asarray(
    PolyLM(CFG).apply(
      {"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"]
    ),
    np.float64,
  )
  lse = np.log(np.exp(logits).sum(-1))
  w = np.asarray(batch["loss_weights"])
  expected = z * (w * lse**2).sum() / w.sum()
  np.testing.assert_allclose(float(lz) - float(l0), expected, rtol=1e-4)
  np.testing.assert_allclose(float(aux["z_loss_sum"]) / w.sum(), expected, rtol=1e-4)


def _step_fn(k=1, optimizer=OPT, **kw):
  return jax.jit(
    functools.partial(
      ts.train_step, config=CFG, optimizer=optimizer, schedule=SCHEDULE, num_microbatches=k, **kw
    )
  )


def test_microbatching_matches_full_batch(params):
  batch = make_batch(b=8)
  state = ts.init_train_state(params, SMOOTH_OPT)
  results = {k: _step_fn(k, SMOOTH_OPT)(state, batch) for k in (1, 2, 4)}
  s_1, m_1 = results[1]
  assert not np.allclose(np.asarray(s_1.params["wte"]), np.asarray(params["wte"]))
  for k in (2, 4):
    s_k, m_k = results[k]
    np.testing.assert_allclose(float(m_k["loss"]), float(m_1["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(m_k["grad_norm"]), float(m_1["grad_norm"]), rtol=1e-5)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s_k.params, s_1.params
    )
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9),
      s_k.opt_state,
      s_1.opt_state,
    )
    np.testing.assert_allclose(
      np.asarray(m_k["lang_nll_sum"]), np.asarray(m_1["lang_nll_sum"]), rtol=1e-5
    )
    np.testing.assert_allclose(np.asarray(m_k["lang_tokens"]), np.asarray(m_1["lang_tokens"]))
  with pytest.raises(ValueError, match="num_microbatches"):
    ts.compute_gradients(params, batch, config=CFG, num_microbatches=3)


def test_non_finite_guard_skips_and_counts(params):
  good = make_batch()
  bad = dict(good, loss_weights=good["loss_weights"].at[0, 0].set(jnp.nan))
  step = _step_fn()
  state = ts.init_train_state(params, OPT)
  s1, m1 = step(state, good)
  assert int(m1["skipped"]) == 0 and float(m1["learning_rate"]) == 0.0
  s2, m2 = step(s1, bad)
  s3, m3 = step(s2, bad)
  assert not np.isfinite(float(m2["loss"]))
  assert [int(m2["skipped"]), int(m3["skipped"])] == [1, 1]
  assert (int(s3.step), int(s3.skipped_steps), int(s3.consecutive_skips)) == (3, 2, 2)
  # Params and optimizer state untouched by both skipped steps.
  jax.tree.map(np.testing.assert_array_equal, s3.params, s1.params)
  jax.tree.map(np.testing.assert_array_equal, s3.opt_state, s1.opt_state)
  # The schedule follows applied updates: the skipped steps did not advance it.
  np.testing.assert_allclose(float(m3["learning_rate"]), float(SCHEDULE(1)), rtol=1e-6)
  s4, m4 = step(s3, good)
  assert (int(s4.step), int(s4.skipped_steps), int(s4.consecutive_skips)) == (4, 2, 0)
  assert int(m4["skipped"]) == 0 and np.isfinite(float(m4["loss"]))
  assert not np.allclose(np.asarray(s4.params["wte"]), np.asarray(s1.params["wte"]))
  # NaN in the parameters is caught too (the gradient is non-finite).
  nan_params = jax.tree.map(lambda x: x, s1.params)
  nan_params["layers"]["mlp"]["fc1_kernel"] = (
    nan_params["layers"]["mlp"]["fc1_kernel"].at[0, 0, 0].set(jnp.nan)
  )
  s5, m5 = step(s1.replace(params=nan_params), good)
  assert int(m5["skipped"]) == 1 and int(s5.skipped_steps) == 1


def test_eval_step_sums_and_bf16_compute(params):
  batch = make_batch()
  out = jax.jit(functools.partial(ts.eval_step, config=CFG))(params, batch)
  loss, aux = ts.loss_fn(params, batch, config=CFG)
  np.testing.assert_allclose(float(out["nll_sum"] / out["tokens"]), float(loss), rtol=1e-6)
  np.testing.assert_allclose(float(out["lang_tokens"].sum()), float(out["tokens"]))
  # bf16 compute keeps fp32 params and fp32 gradients, and a close loss.
  cfg16 = CFG.replace(dtype="bfloat16")
  loss16, grads16, _ = jax.jit(functools.partial(ts.compute_gradients, config=cfg16))(params, batch)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
  # measured relative error 1.1e-6; rtol about 4x. Negative control: all-zero parameters give
  # ln V, 6.9e-4 away (tests/test_bf16_tolerances.py checks against a float64 reference).
  np.testing.assert_allclose(float(loss16), float(loss), rtol=5e-6)
  zero, _ = ts.loss_fn(jax.tree.map(jnp.zeros_like, params), batch, config=cfg16)
  assert abs(float(zero) - float(loss)) > 5e-6 * float(loss)


def test_bad_batch_errors_name_the_field(params):
  batch = make_batch()
  with pytest.raises(ValueError, match="langs"):
    ts.compute_gradients(params, {k: v for k, v in batch.items() if k != "langs"}, config=CFG)
  with pytest.raises(ValueError, match="targets"):
    ts.compute_gradients(params, dict(batch, targets=batch["targets"][:, :-1]), config=CFG)


MESHES = [dict(data=8), dict(data=2, fsdp=4), dict(data=2, tensor=4)]


def _run_steps(step, state, batches):
  losses = []
  for b in batches:
    state, m = step(state, b)
    losses.append(float(m["loss"]))
  return state, losses


def _sharded_batches():
  # The third batch repeats the first, so a falling loss shows the updates are real.
  return [make_batch(seed=s, b=16) for s in (0, 1, 0)]


@pytest.fixture(scope="module")
def single_device_run(params):
  step = jax.jit(
    functools.partial(ts.train_step, config=CFG, optimizer=SMOOTH_OPT), donate_argnums=0
  )
  state = ts.init_train_state(jax.tree.map(jnp.copy, params), SMOOTH_OPT)  # donated
  return _run_steps(step, state, _sharded_batches())


@pytest.mark.parametrize(
  "mesh_kw", MESHES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items())
)
def test_sharded_steps_match_single_device(params, single_device_run, mesh_kw):
  """3 steps on 8 host devices vs one device. fp32, so losses agree to 1e-5 relative and
  params to 1e-4 (only the order of cross-device sums differs). The fsdp mesh also runs
  2 microbatches, so sharded gradient accumulation is covered."""
  ref_state, ref_losses = single_device_run
  k = 2 if "fsdp" in mesh_kw else 1
  mesh = make_mesh(**mesh_kw)
  shardings = ts.train_state_shardings(CFG, SMOOTH_OPT, mesh)
  bshard = batch_sharding(mesh)
  with use_mesh(mesh):
    step = jax.jit(
      functools.partial(ts.train_step, config=CFG, optimizer=SMOOTH_OPT, num_microbatches=k),
      in_shardings=(shardings, bshard),
      out_shardings=(shardings, None),
      donate_argnums=0,
    )
    state = jax.device_put(
      ts.init_train_state(jax.tree.map(jnp.copy, params), SMOOTH_OPT), shardings
    )
    state, losses = _run_steps(step, state, [jax.device_put(b, bshard) for b in _sharded_batches()])
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert losses[2] < losses[0]
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
    state.params,
    ref_state.params,
  )

  v, d, f, L = CFG.vocab_size, CFG.d_model, CFG.d_ff, CFG.num_layers
  fsdp, tensor = mesh_kw.get("fsdp", 1), mesh_kw.get("tensor", 1)
  adam = state.opt_state[1][0]
  for tree in (state.params, adam.mu, adam.nu):
    assert {s.data.shape for s in tree["wte"].addressable_shards} == {(v // tensor, d // fsdp)}
    fc1 = tree["layers"]["mlp"]["fc1_kernel"]
    assert {s.data.shape for s in fc1.addressable_shards} == {(L, d // fsdp, f // tensor)}
    qkv = tree["layers"]["attn"]["qkv_kernel"]
    assert {s.data.shape for s in qkv.addressable_shards} == {
      (L, d // fsdp, 3, CFG.num_heads // tensor, CFG.head_dim)
    }
  assert adam.count.sharding.is_fully_replicated


def test_abstract_train_state_matches_real_one(params):
  mesh = make_mesh(data=2, fsdp=4)
  shardings = ts.train_state_shardings(CFG, OPT, mesh)
  abstract = ts.abstract_train_state(CFG, OPT, shardings)
  real = ts.init_train_state(params, OPT)
  assert jax.tree.structure(abstract) == jax.tree.structure(real)
  for a, r, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(real), jax.tree.leaves(shardings)):
    assert (a.shape, a.dtype) == (r.shape, r.dtype)
    assert a.sharding == s
  assert abstract.step.sharding.is_fully_replicated
  assert not abstract.opt_state[1][0].mu["wte"].sharding.is_fully_replicated


# The chunked loss (loss_chunk_tokens > 0) against the whole-logits path (0). Batches of 4
# rows, so 20 tokens per chunk is 5 positions: T = 13 is padded to 15, T = 16 takes 4.
CHUNK_CASES = [
  dict(t=13, chunk=20),
  dict(t=16, chunk=20, z_loss=1e-3),
  dict(t=16, chunk=8, label_smoothing=0.1, z_loss=1e-2),
]


def _loss_and_grads(params, batch, chunk, **kw):
  def f(p, w):
    return ts.loss_fn(p, dict(batch, loss_weights=w), config=CFG, loss_chunk_tokens=chunk, **kw)

  return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(params, batch["loss_weights"])


@pytest.mark.parametrize(
  "case", CHUNK_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items())
)
def test_chunked_loss_matches_whole_logits(params, case):
  """Loss, every aux sum (per language included), and the gradients with respect to the
  params and the loss weights, within fp32 tolerance; a quarter of the weights are 0."""
  kw = {k: v for k, v in case.items() if k not in ("t", "chunk")}
  batch = make_batch(b=4, t=case["t"])
  (l0, a0), (g0, gw0) = _loss_and_grads(params, batch, 0, **kw)
  (l1, a1), (g1, gw1) = _loss_and_grads(params, batch, case["chunk"], **kw)
  np.testing.assert_allclose(float(l1), float(l0), rtol=2e-6)
  for k in a0:
    np.testing.assert_allclose(np.asarray(a1[k]), np.asarray(a0[k]), rtol=2e-6, atol=1e-6)
  scale = lambda g: float(jnp.max(jnp.abs(g)))  # noqa: E731
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale(b)), g1, g0
  )
  np.testing.assert_allclose(np.asarray(gw1), np.asarray(gw0), rtol=1e-5, atol=1e-7)
  # Negative control: the gradient moves far more than the tolerance under another batch.
  (_, _), (g_other, _) = _loss_and_grads(params, make_batch(seed=1, b=4, t=case["t"]), 0, **kw)
  assert float(jnp.max(jnp.abs(g_other["wte"] - g0["wte"]))) > 1e-3 * scale(g0["wte"])


def test_chunk_length_and_bad_setting(params):
  assert ts.chunk_length(2048, 1, 512) == 512
  assert ts.chunk_length(2048, 3, 2048) == 512  # 682 -> the divisor 512
  assert ts.chunk_length(13, 4, 20) == 5  # no divisor near 5: padded to 15
  assert ts.chunk_length(16, 4, 4096) == 16
  assert ts.chunk_length(16, 64, 8) == 1
  with pytest.raises(ValueError, match="loss_chunk_tokens"):
    ts.loss_fn(params, make_batch(), config=CFG, loss_chunk_tokens=-1)


def test_chunked_train_and_eval_steps_match_whole_logits(params):
  """Microbatches (2) with chunks vs one whole-logits batch: same metrics and update."""
  batch = make_batch(b=8)
  state = ts.init_train_state(params, SMOOTH_OPT)
  s0, m0 = _step_fn(1, SMOOTH_OPT, loss_chunk_tokens=0, z_loss=1e-3)(state, batch)
  s1, m1 = _step_fn(2, SMOOTH_OPT, loss_chunk_tokens=16, z_loss=1e-3)(state, batch)
  for k in ("loss", "cross_entropy", "z_loss", "grad_norm", "lang_nll_sum", "lang_tokens"):
    np.testing.assert_allclose(np.asarray(m1[k]), np.asarray(m0[k]), rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s1.params, s0.params
  )
  e0 = ts.eval_step(params, batch, CFG, loss_chunk_tokens=0)
  e1 = jax.jit(functools.partial(ts.eval_step, config=CFG, loss_chunk_tokens=24))(params, batch)
  for k in e0:
    np.testing.assert_allclose(np.asarray(e1[k]), np.asarray(e0[k]), rtol=2e-6)


def test_chunked_loss_on_a_mesh_matches_one_device(params):
  """Chunk length follows the rows per device: 16 rows over data=2 x fsdp=2 are 4 per device,
  so 16 tokens is 4 positions (4 chunks), vocabulary split over tensor=2."""
  batch = make_batch(b=16)
  grad = lambda chunk: jax.value_and_grad(  # noqa: E731
    functools.partial(ts.loss_fn, config=CFG, loss_chunk_tokens=chunk), has_aux=True
  )
  (l0, a0), g0 = jax.jit(grad(0))(params, batch)
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  shardings = ts.train_state_shardings(CFG, OPT, mesh).params
  with use_mesh(mesh):
    assert ts._rows_per_device(16) == 4
    sharded = jax.jit(grad(16), in_shardings=(shardings, batch_sharding(mesh)))
    (l1, a1), g1 = sharded(jax.device_put(params, shardings), batch)
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
  np.testing.assert_allclose(
    np.asarray(a1["lang_nll_sum"]), np.asarray(a0["lang_nll_sum"]), rtol=1e-5
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g1, g0)
  assert not g1["wte"].sharding.is_fully_replicated


def test_chunked_loss_shrinks_compiled_temporaries():
  """XLA's buffer assignment of the whole step: with a vocabulary large next to the model,
  the [tokens, vocab] fp32 logits dominate, and chunks of 64 tokens remove most of them."""
  cfg = CFG.replace(vocab_size=16384)
  abstract = ts.abstract_train_state(cfg, OPT)
  batch = {k: jax.ShapeDtypeStruct((8, 64), jnp.int32) for k in ts.BATCH_INT_FIELDS}
  batch["loss_weights"] = jax.ShapeDtypeStruct((8, 64), jnp.float32)

  def temp_bytes(chunk):
    step = functools.partial(ts.train_step, config=cfg, optimizer=OPT, loss_chunk_tokens=chunk)
    mem = jax.jit(step, donate_argnums=0).lower(abstract, batch).compile().memory_analysis()
    return mem.temp_size_in_bytes

  logits_bytes = 8 * 64 * 16384 * 4  # 32 MiB
  whole, chunked = temp_bytes(0), temp_bytes(64)
  assert whole > 2 * logits_bytes  # the logits and their gradient
  assert whole - chunked > 1.5 * logits_bytes, (whole, chunked)
