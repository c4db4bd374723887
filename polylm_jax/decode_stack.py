"""The model's forward pass as decoding needs it: a prefill and one-token steps over a KV cache.

Two ways to go over the layers (both exactly the model's function, `tests/test_decoding.py`
checks each against the full forward pass):
  "unrolled" (default): the stacked layer weights are split into one array per layer
      (`prepare_params`, once per `generate` call or once for good with `decoding.prepare`),
      and the blocks run one after another, so a step reads each weight once. Costs one
      extra copy of the layer weights while generating.
  "scan": the model's own `nn.scan` (`PolyLM.apply(decode=True)`): no copy, but XLA copies
      each layer's weights out of the stacked arrays at every step (a dynamic slice), which
      on CPU made batch-1 steps about 1.8x slower (benchmarks/decode.py --layer_loop).

The unrolled step runs the model's own LayerNorm and Mlp modules on each layer's weights; only
the attention is written out here (`_attention`), because its cache is laid out for XLA on CPU:
keys [batch * heads, head_dim, slots] and values [batch * heads, slots, head_dim] are the
operands of the two attention dots as they lie (one batch axis, contraction where the CPU dot
wants it), so a step neither transposes nor copies the cache (with [batch, heads, ...] arrays
XLA copied each layer's key and value cache several times per step; with the model's
[batch, slots, heads, head_dim] it transposed all of it). Prompts are right-padded and the
prefill leaves every row's next token at the same slot, the padded prompt width: padding
slots keep segment id 0 and are never attended to, positions come from the caller (each
row's own length onwards), and each step writes the cache with one in-place
dynamic-update-slice at a scalar slot (per-row slots lowered to a scatter, a select and more
copies). The unrolled path also computes logits for the last real token of each row only
during the prefill.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from polylm_jax.config import PolyLMConfig

from polylm_jax.model import (
  BATCH,
  EMBED,
  HEADS,
  KV,
  LENGTH,
  MLP,
  VOCAB,
  Mlp,
  PolyLM,
  init_cache,
  output_logits,
)

LAYER_LOOPS = ("unrolled", "scan")


def check_layer_loop(layer_loop: str) -> str:
  if layer_loop not in LAYER_LOOPS:
    raise ValueError(f"layer_loop must be one of {LAYER_LOOPS}, got {layer_loop!r}")
  return layer_loop


def prepare_params(config: PolyLMConfig, params: Any, layer_loop: str) -> Any:
  """The params as the stack reads them: position table cut to the cache length and, when
  unrolled, the layer weights as a list. Idempotent, so callers split the layers once
  (`decoding.prepare`) and pass the result to every jitted call."""
  layers = params["layers"]
  if layer_loop == "unrolled" and not isinstance(layers, list):
    layers = [jax.tree.map(lambda x, i=i: x[i], layers) for i in range(config.num_layers)]
  if layer_loop == "scan" and isinstance(layers, list):
    raise ValueError(
      "layer_loop='scan' needs the stacked layer weights; these params were prepared for "
      "'unrolled' (decoding.prepare): pass the original params or use layer_loop='unrolled'"
    )
  return {**params, "wpe": params["wpe"][: config.max_len], "layers": layers}


class DecodeStack:
  """Built inside a jitted function. `config.max_len` is the cache length (<= the model's)."""

  def __init__(self, config: PolyLMConfig, params: Any, layer_loop: str = "unrolled"):
    self.config = config
    self.unrolled = check_layer_loop(layer_loop) == "unrolled"
    self.params = prepare_params(config, params, layer_loop)
    self.layers = self.params["layers"]

  # -- cache ------------------------------------------------------------------------------

  def init_cache(self, batch: int) -> Any:
    """Unrolled: per layer keys [batch * heads, head_dim, slots] and values [batch * heads,
    slots, head_dim] (compute dtype), the layouts the attention dots read without a copy; one
    segment id per slot [batch, slots] and one write slot (a scalar) for all rows and layers."""
    if not self.unrolled:
      return init_cache(self.config, batch)
    cfg = self.config
    n, dtype = batch * cfg.num_heads, jnp.dtype(cfg.dtype)
    return dict(
      layers=[
        dict(
          key=jnp.zeros((n, cfg.head_dim, cfg.max_len), dtype),
          value=jnp.zeros((n, cfg.max_len, cfg.head_dim), dtype),
        )
        for _ in range(cfg.num_layers)
      ],
      segment_ids=jnp.zeros((batch, cfg.max_len), jnp.int32),
      index=jnp.zeros((), jnp.int32),
    )

  def _map_rows(self, cache: Any, fn) -> Any:
    """fn over the batch axis of every per-row cache array (the unrolled keys and values
    are [batch * heads, ...]: viewed as [batch, heads, ...] for it)."""
    if not self.unrolled:
      return jax.tree.map(lambda x: x if x.ndim <= 1 else fn(x, 1), cache)
    heads = self.config.num_heads
    by_row = lambda x: fn(x.reshape((-1, heads) + x.shape[1:]), 0).reshape((-1,) + x.shape[1:])
    layers = [jax.tree.map(by_row, kv) for kv in cache["layers"]]
    return dict(cache, layers=layers, segment_ids=fn(cache["segment_ids"], 0))

  def take_rows(self, cache: Any, rows: jax.Array) -> Any:
    """Reorders / selects batch rows of the cache (beam search)."""
    return self._map_rows(cache, lambda x, axis: jnp.take(x, rows, axis=axis))

  def repeat_rows(self, cache: Any, k: int) -> Any:
    return self._map_rows(cache, lambda x, axis: jnp.repeat(x, k, axis=axis))

  # -- forward ----------------------------------------------------------------------------

  def __call__(
    self,
    cache: Any,
    tokens: jax.Array,
    positions: jax.Array,
    segment_ids: jax.Array,
    last_only: bool = True,
    lengths: jax.Array | None = None,
  ) -> tuple[jax.Array, Any]:
    """Logits [B, V] after the last column (or [B, T, V] with last_only=False); new cache.

    lengths [B] (a prefill of right-padded rows): the [B, V] logits are those after each
    row's last real token, column lengths - 1. The callers' next positions are the rows'
    lengths; the next write slot is each row's length ("scan", as model.py) or the padded
    width for every row ("unrolled")."""
    last = None if lengths is None else jnp.maximum(lengths, 1) - 1
    if not self.unrolled:
      logits, variables = PolyLM(self.config).apply(
        {"params": self.params, "cache": cache},
        tokens,
        positions,
        segment_ids,
        decode=True,
        prefill_lengths=lengths,
        mutable=["cache"],
      )
      if last_only:
        logits = logits[:, -1] if last is None else _take_column(logits, last)
      return logits, variables["cache"]
    cfg, p = self.config, self.params
    residual_dtype = jnp.float32 if cfg.residual_fp32 else jnp.dtype(cfg.dtype)
    x = jnp.take(p["wte"], tokens, axis=0) + jnp.take(p["wpe"], positions, axis=0)
    x = nn.with_logical_constraint(x.astype(residual_dtype), (BATCH, LENGTH, EMBED))
    start, t = cache["index"], tokens.shape[1]
    seg_cache = jax.lax.dynamic_update_slice_in_dim(
      cache["segment_ids"], segment_ids.astype(jnp.int32), start, axis=1
    )
    # Query slot q sees the slots <= q of its own segment (as model.py's Attention).
    q_slots = start + jnp.arange(t)
    mask = (jnp.arange(cfg.max_len)[None, None, :] <= q_slots[None, :, None]) & (
      segment_ids[:, :, None] == seg_cache[:, None, :]
    )
    new_layers = []
    for layer, kv in zip(self.layers, cache["layers"]):
      x, kv = _block(cfg, layer, kv, x, start, mask)
      new_layers.append(kv)
    new_cache = dict(layers=new_layers, segment_ids=seg_cache, index=start + t)
    if last_only:
      x = x[:, -1:] if last is None else _take_column(x, last)[:, None]
    h = _layer_norm(cfg, p["ln_f"], x).astype(jnp.dtype(cfg.dtype))
    if "wte_t" in p:  # decoding's prepared params: [d_model, vocab], read along rows
      logits = jnp.einsum(
        "btd,dv->btv", h, p["wte_t"].astype(h.dtype), preferred_element_type=jnp.float32
      )
      logits = nn.with_logical_constraint(logits, (BATCH, LENGTH, VOCAB))
    else:
      logits = output_logits(h, p["wte"], cfg)
    return (logits[:, -1] if last_only else logits), new_cache

  def prefill(
    self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array, lengths: jax.Array
  ) -> tuple[jax.Array, Any]:
    """Fills a new cache with the right-padded prompts (`lengths` [B] real tokens each);
    logits after each row's last token. Each row then decodes from its own length."""
    return self(self.init_cache(tokens.shape[0]), tokens, positions, segment_ids, lengths=lengths)


def _layer_norm(cfg: PolyLMConfig, params: Any, x: jax.Array) -> jax.Array:
  """model.py's LayerNorm (fp32, with bias) on given weights."""
  ln = nn.LayerNorm(
    epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.dtype(cfg.param_dtype)
  )
  return ln.apply({"params": params}, x)


def _block(cfg: PolyLMConfig, p: Any, kv: Any, x: jax.Array, start: jax.Array, mask: jax.Array):
  """model.py's Block on one layer's weights, with this module's cache layout."""
  dtype = jnp.dtype(cfg.dtype)
  h = _layer_norm(cfg, p["ln_1"], x).astype(dtype)
  attn, kv = _attention(cfg, p["attn"], kv, h, start, mask)
  x = x + attn.astype(x.dtype)
  h = _layer_norm(cfg, p["ln_2"], x).astype(dtype)
  x = x + _mlp(cfg, p["mlp"], h).astype(x.dtype)
  return nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED)), kv


def _mlp(cfg: PolyLMConfig, p: Any, h: jax.Array) -> jax.Array:
  """model.py's Mlp. decoding's params prepared for batch 1 store fc2 transposed, [d_model,
  d_ff] (`decoding.prepare`): XLA's CPU matrix-vector product reads it faster that way (one
  row dot product per output instead of d_ff updates of a d_model vector)."""
  if "fc2_kernel_t" not in p:
    return Mlp(cfg).apply({"params": p}, h)
  dtype = jnp.dtype(cfg.dtype)
  h = jnp.einsum("btd,df->btf", h, p["fc1_kernel"].astype(dtype)) + p["fc1_bias"].astype(dtype)
  h = nn.with_logical_constraint(jax.nn.gelu(h, approximate=True), (BATCH, LENGTH, MLP))
  w2 = p["fc2_kernel_t"].astype(dtype)
  return jnp.einsum("btf,df->btd", h, w2) + p["fc2_bias"].astype(dtype)


def _attention(cfg: PolyLMConfig, p: Any, kv: Any, x: jax.Array, start: jax.Array, mask):
  """model.py's Attention in decode mode on this module's cache layout (see the top): writes
  this call's keys/values at slot `start` (a scalar), attends under `mask` [B, T, slots]."""
  dtype = jnp.dtype(cfg.dtype)
  qkv = jnp.einsum("btd,dnhk->btnhk", x, p["qkv_kernel"].astype(dtype))
  qkv = qkv + p["qkv_bias"].astype(dtype)
  b, t, _, h, k = qkv.shape
  q = nn.with_logical_constraint(qkv[:, :, 0], (BATCH, LENGTH, HEADS, KV))
  q = q.transpose(0, 2, 1, 3).reshape(b * h, t, k) * (1.0 / math.sqrt(cfg.head_dim))
  new_keys = qkv[:, :, 1].transpose(0, 2, 3, 1).reshape(b * h, k, t)
  new_values = qkv[:, :, 2].transpose(0, 2, 1, 3).reshape(b * h, t, k)
  keys = jax.lax.dynamic_update_slice_in_dim(kv["key"], new_keys, start, axis=2)
  values = jax.lax.dynamic_update_slice_in_dim(kv["value"], new_values, start, axis=1)
  logits = jnp.einsum("nqk,nks->nqs", q, keys, preferred_element_type=jnp.float32)
  logits = jnp.where(mask[:, None], logits.reshape(b, h, t, -1), jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(dtype).reshape(b * h, t, -1)
  out = jnp.einsum("nqs,nsk->nqk", probs, values).reshape(b, h, t, k).transpose(0, 2, 1, 3)
  out = nn.with_logical_constraint(out, (BATCH, LENGTH, HEADS, KV))
  y = jnp.einsum("bthk,hkd->btd", out, p["out_kernel"].astype(dtype)) + p["out_bias"].astype(dtype)
  return nn.with_logical_constraint(y, (BATCH, LENGTH, EMBED)), dict(key=keys, value=values)


def _take_column(x: jax.Array, column: jax.Array) -> jax.Array:
  """x[b, column[b]] for each row b: [B, T, ...] -> [B, ...]."""
  return jnp.take_along_axis(x, column.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]
