"""bf16 compute checked against an independent float64 NumPy GPT-2, at tolerances that can fail.

The expectation is a plain NumPy re-implementation of the released architecture (SPEC section
1: pre-LN blocks, fused QKV with biases, tanh GeLU, tied embeddings, learned positions), in
float64, not the model under test. Parameters are the model's own init at GPT-2's std 0.02
with LayerNorm scales and biases perturbed, so every parameter matters. Each tolerance is a few
times the error measured here (CPU, jax 0.10.2; figures in the constants' comments), and each
check has a negative control: the same comparison for logits scaled by 0.75 and for all-zero
parameters must fail it, so the check cannot pass a broken model.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polylm_jax.training import step as ts
from polylm_jax.config import get_config
from polylm_jax.model import PolyLM, init_params

CFG = get_config("polylm_tiny").replace(init_std=0.02)

# Measured on CPU (tests/conftest.py), max |logits - reference|, logits' max |value| 0.89:
# fp32 2.8e-7; bf16 3.1e-3 with the fp32 residual, 3.5e-3 with a bf16 residual. Tolerances 4x.
# Negative controls: logits x 0.75 are off by 0.22, all-zero parameters by 0.89.
TOL_LOGITS_FP32 = 1.2e-6
TOL_LOGITS_BF16 = 1.4e-2
# Measured |loss - reference| / reference (loss 6.2458; ln 512 = 6.2383): fp32 1.6e-7, bf16
# 1.4e-5. Tolerances 4x. Negative controls: logits x 0.75 are off by 7.1e-4, all-zero
# parameters (loss exactly ln V) by 1.2e-3, so they fail the bf16 check 12x over.
RTOL_LOSS_FP32 = 6.5e-7
RTOL_LOSS_BF16 = 6e-5


def _ln(x, scale, bias, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


def _gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def reference_logits(params, tokens: np.ndarray, cfg=CFG) -> np.ndarray:
  """GPT-2 forward in float64 NumPy: [B, T] tokens -> [B, T, V] logits (causal, no segments)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  B, T = tokens.shape
  x = p["wte"][tokens] + p["wpe"][np.arange(T)][None]
  causal = np.tril(np.ones((T, T), bool))
  L = p["layers"]
  for i in range(cfg.num_layers):
    h = _ln(x, L["ln_1"]["scale"][i], L["ln_1"]["bias"][i], cfg.layer_norm_eps)
    qkv = np.einsum("btd,dnhk->btnhk", h, L["attn"]["qkv_kernel"][i]) + L["attn"]["qkv_bias"][i]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, H, K]
    s = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(cfg.head_dim)
    s = np.where(causal, s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum("bhqs,bshk->bqhk", a, v)
    x = x + np.einsum("bthk,hkd->btd", o, L["attn"]["out_kernel"][i]) + L["attn"]["out_bias"][i]
    h = _ln(x, L["ln_2"]["scale"][i], L["ln_2"]["bias"][i], cfg.layer_norm_eps)
    h = _gelu_tanh(h @ L["mlp"]["fc1_kernel"][i] + L["mlp"]["fc1_bias"][i])
    x = x + h @ L["mlp"]["fc2_kernel"][i] + L["mlp"]["fc2_bias"][i]
  h = _ln(x, p["ln_f"]["scale"], p["ln_f"]["bias"], cfg.layer_norm_eps)
  return h @ p["wte"].T


def reference_loss(logits: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> float:
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  nll = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  return float((nll * weights).sum() / weights.sum())


@pytest.fixture(scope="module")
def params():
  p = init_params(CFG, jax.random.key(0))
  rng = np.random.default_rng(0)

  def perturb(path, x):
    name = jax.tree_util.keystr(path)
    if "ln_" in name:  # LayerNorm scales ~ 1 +- 0.1 and biases ~ 0.02 instead of 1 and 0
      base = 1.0 if "scale" in name else 0.0
      return jnp.asarray(base + (0.1 if base else 0.02) * rng.standard_normal(x.shape), x.dtype)
    if "bias" in name:
      return jnp.asarray(0.02 * rng.standard_normal(x.shape), x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(perturb, p)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, CFG.vocab_size, (4, 33))
  return {
    "inputs": jnp.asarray(tokens[:, :-1], jnp.int32),
    "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
    "loss_weights": jnp.asarray((rng.random((4, 32)) > 0.2).astype(np.float32)),
    "positions": jnp.asarray(np.broadcast_to(np.arange(32), (4, 32)), jnp.int32),
    "segment_ids": jnp.ones((4, 32), jnp.int32),
    "langs": jnp.zeros((4, 32), jnp.int32),
  }


@pytest.fixture(scope="module")
def expected(params, batch):
  logits = reference_logits(params, np.asarray(batch["inputs"]))
  loss = reference_loss(logits, np.asarray(batch["targets"]), np.asarray(batch["loss_weights"]))
  return logits, loss


def _logits(params, tokens, **cfg):
  return np.asarray(PolyLM(CFG.replace(**cfg)).apply({"params": params}, tokens), np.float64)


@functools.lru_cache(maxsize=None)
def _grad_fn(dtype: str):
  return jax.jit(functools.partial(ts.compute_gradients, config=CFG.replace(dtype=dtype)))


def _loss(params, batch, dtype="float32"):
  loss, grads, _ = _grad_fn(dtype)(params, batch)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))  # fp32 grads under bf16
  return float(loss)


def _zero(params):
  return jax.tree.map(jnp.zeros_like, params)


def test_reference_is_the_model_in_fp32(params, batch, expected):
  ref_logits, ref_loss = expected
  err = np.abs(_logits(params, batch["inputs"]) - ref_logits).max()
  assert err <= TOL_LOGITS_FP32, err
  assert abs(_loss(params, batch) - ref_loss) <= RTOL_LOSS_FP32 * ref_loss
  assert np.abs(ref_logits).max() > 0.5  # the values are not all near zero


@pytest.mark.parametrize("residual_fp32", [True, False])
def test_bf16_logits_within_a_few_times_the_measured_error(params, batch, expected, residual_fp32):
  ref_logits, _ = expected
  out = _logits(params, batch["inputs"], dtype="bfloat16", residual_fp32=residual_fp32)
  err = np.abs(out - ref_logits).max()
  assert 0 < err <= TOL_LOGITS_BF16, err  # > 0: bf16 really ran
  # negative controls: a perturbed model fails the same check
  fp32 = _logits(params, batch["inputs"])
  assert np.abs(0.75 * fp32 - ref_logits).max() > TOL_LOGITS_BF16
  zero = _logits(_zero(params), batch["inputs"], dtype="bfloat16")
  assert np.abs(zero - ref_logits).max() > TOL_LOGITS_BF16


def test_bf16_loss_within_a_few_times_the_measured_error(params, batch, expected):
  ref_logits, ref_loss = expected
  loss16 = _loss(params, batch, dtype="bfloat16")
  assert 0 < abs(loss16 - ref_loss) <= RTOL_LOSS_BF16 * ref_loss, (loss16, ref_loss)
  # negative controls: all-zero parameters give exactly ln V, logits x 0.75 a loss nearer it
  zero = _loss(_zero(params), batch, dtype="bfloat16")
  assert zero == pytest.approx(np.log(CFG.vocab_size), rel=1e-6)
  assert abs(zero - ref_loss) > RTOL_LOSS_BF16 * ref_loss
  t, w = np.asarray(batch["targets"]), np.asarray(batch["loss_weights"])
  scaled = reference_loss(0.75 * _logits(params, batch["inputs"]), t, w)
  assert abs(scaled - ref_loss) > RTOL_LOSS_BF16 * ref_loss
