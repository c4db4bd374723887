"""The PolyLM decoder as a Flax module: GPT-2 blocks exactly as released (SPEC section 1).

Pre-LayerNorm blocks, learned absolute positions, fused QKV with biases, GeLU (tanh), tied
input/output embeddings, Megatron initialisation, softmax in fp32. Every parameter and
activation carries logical axis names; `partitioning.py` maps them onto a mesh. The layer
stack is one `nn.scan`, so compile time does not grow with depth.

The same module serves decoding: with `decode=True` each layer keeps a key/value cache, the
segment id of every cached slot and a write index per row. Prompts are right-padded: a prefill
writes the whole padded block and `prefill_lengths` [B] then sets each row's index to its own
length, so every row decodes from its own position (t5x's convention: its sampling, num_decodes
> 1 and beam search expand every cache leaf per row, index included). A query at slot q sees
the slots <= q of its own segment; padding slots past a row's length are overwritten before
any query reaches them.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from polylm_jax.config import PolyLMConfig

Array = jax.Array

# Logical axis names used below (see partitioning.DEFAULT_RULES).
BATCH, LENGTH, EMBED, HEADS, KV, MLP, VOCAB = (
  "batch",
  "length",
  "embed",
  "heads",
  "kv",
  "mlp",
  "vocab",
)
LAYERS, QKV, POSITION = "layers", "qkv", "position"

_REMAT_POLICIES = {
  "full": None,
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _param(
  module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...], std: float | None
) -> Array:
  """A parameter with logical axes; std=None means zeros (biases)."""
  init = nn.initializers.zeros if std is None else nn.initializers.normal(std)
  return module.param(
    name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(module.config.param_dtype)
  )


def _layer_norm(config: PolyLMConfig, name: str) -> nn.LayerNorm:
  """LayerNorm with bias, computed in fp32."""
  return nn.LayerNorm(
    epsilon=config.layer_norm_eps,
    dtype=jnp.float32,
    param_dtype=jnp.dtype(config.param_dtype),
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, (EMBED,)),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (EMBED,)),
    name=name,
  )


def _constrain(x: Array, axes: tuple[str, ...]) -> Array:
  return nn.with_logical_constraint(x, axes)


class Attention(nn.Module):
  """Causal multi-head self-attention with a fused QKV projection."""

  config: PolyLMConfig

  @nn.compact
  def __call__(
    self, x: Array, segment_ids: Array, decode: bool, prefill_lengths: Array | None = None
  ) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    d, h, dh = cfg.d_model, cfg.num_heads, cfg.head_dim
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)

    # The HF c_attn output dim is Q|K|V, each heads x head_dim: hence (embed, 3, heads, kv).
    w_qkv = _param(self, "qkv_kernel", (d, 3, h, dh), (EMBED, QKV, HEADS, KV), cfg.init_std)
    b_qkv = _param(self, "qkv_bias", (3, h, dh), (QKV, HEADS, KV), None)
    # Batch-major output: "nbthk" would make XLA transpose the whole kernel at every decode step.
    qkv = jnp.einsum("btd,dnhk->btnhk", x, w_qkv.astype(dtype)) + b_qkv.astype(dtype)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q = _constrain(q, (BATCH, LENGTH, HEADS, KV))
    k = _constrain(k, (BATCH, LENGTH, HEADS, KV))
    v = _constrain(v, (BATCH, LENGTH, HEADS, KV))

    q_slots = jnp.arange(x.shape[1])[None, :]
    k_segments = segment_ids
    if decode:
      k, v, k_segments, q_slots = self._update_cache(k, v, segment_ids, prefill_lengths)
    mask = (jnp.arange(k.shape[1])[None, None, :] <= q_slots[:, :, None]) & (
      segment_ids[:, :, None] == k_segments[:, None, :]
    )

    if cfg.attention_impl == "cudnn" and not decode:
      out = fused_attention(q, k, v, segment_ids)
    else:
      out = _attend(q, k, v, mask, 0 if decode else cfg.attention_block)
    out = _constrain(out, (BATCH, LENGTH, HEADS, KV))

    w_out = _param(self, "out_kernel", (h, dh, d), (HEADS, KV, EMBED), out_std)
    b_out = _param(self, "out_bias", (d,), (EMBED,), None)
    y = jnp.einsum("bthk,hkd->btd", out, w_out.astype(dtype)) + b_out.astype(dtype)
    return _constrain(y, (BATCH, LENGTH, EMBED))

  def _update_cache(self, k: Array, v: Array, segment_ids: Array, prefill_lengths: Array | None):
    """Writes this call's keys/values at each row's index; returns the whole cache and the
    query slots [B, T]. With `prefill_lengths` the index then moves to those lengths."""
    cfg = self.config
    b, t = k.shape[:2]
    shape = (b, cfg.max_len, cfg.num_heads, cfg.head_dim)
    initialised = self.has_variable("cache", "key")
    cached_k = self.variable("cache", "key", jnp.zeros, shape, k.dtype)
    cached_v = self.variable("cache", "value", jnp.zeros, shape, v.dtype)
    cached_seg = self.variable("cache", "segment_ids", jnp.zeros, (b, cfg.max_len), jnp.int32)
    index = self.variable("cache", "index", jnp.zeros, (b,), jnp.int32)
    start = index.value
    if initialised:
      write = jax.vmap(lambda c, x, i: jax.lax.dynamic_update_slice_in_dim(c, x, i, axis=0))
      cached_k.value = write(cached_k.value, k, start)
      cached_v.value = write(cached_v.value, v, start)
      cached_seg.value = write(cached_seg.value, segment_ids.astype(jnp.int32), start)
      end = start + t if prefill_lengths is None else prefill_lengths.astype(jnp.int32)
      index.value = jnp.broadcast_to(end, (b,))
    return cached_k.value, cached_v.value, cached_seg.value, start[:, None] + jnp.arange(t)


def _attend(q: Array, k: Array, v: Array, mask: Array, block: int) -> Array:
  """Softmax attention of q [B, Q, H, K] over k, v [B, S, H, K] where mask [B, Q, S].

  block > 0 (causal self-attention, Q = S): queries go in blocks of `block`, each over the
  keys up to its last query only, since the keys after it are masked for every row of the
  block. The keys are laid out [B, H, K, S] (what the score product reads) once for all
  blocks. block = 0, or a decode step: one block over all keys.
  """
  q = q * (1.0 / math.sqrt(q.shape[-1]))
  n = q.shape[1]
  if not block or block >= n:
    logits = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32)
    out = _weighted_values(logits, mask, v, "bhqs,bshk->bhqk")
  else:
    q, k_t, v = jnp.swapaxes(q, 1, 2), jnp.transpose(k, (0, 2, 3, 1)), jnp.swapaxes(v, 1, 2)
    parts = []
    for start in range(0, n, block):
      end = min(start + block, n)
      logits = jnp.einsum(
        "bhqk,bhks->bhqs", q[:, :, start:end], k_t[..., :end], preferred_element_type=jnp.float32
      )
      parts.append(
        _weighted_values(logits, mask[:, start:end, :end], v[:, :, :end], "bhqs,bhsk->bhqk")
      )
    out = jnp.concatenate(parts, axis=2)
  return jnp.swapaxes(out, 1, 2).astype(q.dtype)  # [B, Q, H, K]


def fused_attention(
  q: Array, k: Array, v: Array, segment_ids: Array, implementation: str = "cudnn"
) -> Array:
  """Causal self-attention of [B, T, H, K] through jax.nn.dot_product_attention. The causal
  part goes in as is_causal (cuDNN's mask type CAUSAL, so the kernel skips the tiles above
  the diagonal), only the segments as a mask."""
  same_segment = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
  return jax.nn.dot_product_attention(
    q, k, v, mask=same_segment, is_causal=True, implementation=implementation
  )


def _weighted_values(logits: Array, mask: Array, v: Array, equation: str) -> Array:
  """softmax(logits where mask) @ v, [B, H, Q, K] fp32. The softmax is normalised after the
  value product, on [.., Q, K] rather than [.., Q, S]: one fewer pass over the scores each
  way, which on CPU costs more than their products. The row maximum only keeps exp in range,
  so it carries no gradient."""
  logits = jnp.where(mask[:, None], logits, jnp.finfo(jnp.float32).min)
  unnormalised = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, -1, keepdims=True)))
  total = jnp.sum(unnormalised, axis=-1, keepdims=True)
  values = jnp.einsum(equation, unnormalised.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return values / total


class Mlp(nn.Module):
  """fc1 -> GeLU (tanh approximation, HF `gelu_fast`) -> fc2."""

  config: PolyLMConfig

  @nn.compact
  def __call__(self, h: Array) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    w1 = _param(self, "fc1_kernel", (cfg.d_model, cfg.d_ff), (EMBED, MLP), cfg.init_std)
    b1 = _param(self, "fc1_bias", (cfg.d_ff,), (MLP,), None)
    w2 = _param(self, "fc2_kernel", (cfg.d_ff, cfg.d_model), (MLP, EMBED), out_std)
    b2 = _param(self, "fc2_bias", (cfg.d_model,), (EMBED,), None)
    h = jnp.einsum("btd,df->btf", h, w1.astype(dtype)) + b1.astype(dtype)
    h = _constrain(jax.nn.gelu(h, approximate=True), (BATCH, LENGTH, MLP))
    return jnp.einsum("btf,fd->btd", h, w2.astype(dtype)) + b2.astype(dtype)


class Block(nn.Module):
  """One pre-LayerNorm transformer block; scanned, so it returns (carry, None)."""

  config: PolyLMConfig
  decode: bool = False

  @nn.compact
  def __call__(
    self, x: Array, segment_ids: Array, prefill_lengths: Array | None = None
  ) -> tuple[Array, None]:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    residual_dtype = x.dtype

    h = _layer_norm(cfg, "ln_1")(x).astype(dtype)
    attn = Attention(cfg, name="attn")(h, segment_ids, self.decode, prefill_lengths)
    x = x + attn.astype(residual_dtype)

    h = _layer_norm(cfg, "ln_2")(x).astype(dtype)
    h = Mlp(cfg, name="mlp")(h)
    x = x + h.astype(residual_dtype)
    return _constrain(x, (BATCH, LENGTH, EMBED)), None


class PolyLM(nn.Module):
  """PolyLM decoder: token ids -> fp32 logits [batch, length, vocab].

  positions: [batch, length] ids into the learned position table (default 0..length-1).
  segment_ids: [batch, length]; tokens attend only to earlier tokens of the same segment.
    Default: one segment per row (the released recipe: no reset at document boundaries).
    In decode mode, segment id 0 marks padding.
  prefill_lengths: [batch], decode mode only: after writing this (right-padded) block, each
    row's cache index moves to its length, where its next token goes.
  In decode mode positions default to each row's cache index onwards.
  return_hidden: return the final layer-normed hidden states [batch, length, d_model] (compute
    dtype) instead of the logits; `output_logits(hidden, params["wte"], config)` finishes them.
  """

  config: PolyLMConfig

  @nn.compact
  def __call__(
    self,
    tokens: Array,
    positions: Array | None = None,
    segment_ids: Array | None = None,
    decode: bool = False,
    prefill_lengths: Array | None = None,
    return_hidden: bool = False,
  ) -> Array:
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
      if decode and self.has_variable("cache", "layers"):
        index = self.get_variable("cache", "layers")["attn"]["index"][0]
        positions = jnp.minimum(index[:, None] + positions, cfg.max_len - 1)
    if segment_ids is None:
      segment_ids = jnp.ones(tokens.shape, jnp.int32)

    wte = _param(self, "wte", (cfg.vocab_size, cfg.d_model), (VOCAB, EMBED), cfg.init_std)
    wpe = _param(self, "wpe", (cfg.max_len, cfg.d_model), (POSITION, EMBED), cfg.init_std)
    residual_dtype = jnp.float32 if cfg.residual_fp32 else dtype
    x = (jnp.take(wte, tokens, axis=0) + jnp.take(wpe, positions, axis=0)).astype(residual_dtype)
    x = _constrain(x, (BATCH, LENGTH, EMBED))

    block = Block
    if cfg.remat_policy != "none":
      block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
    stack = nn.scan(
      block,
      variable_axes={"params": 0, "cache": 0},
      split_rngs={"params": True},
      in_axes=(nn.broadcast, nn.broadcast),
      length=cfg.num_layers,
      unroll=cfg.layers_per_iteration,
      metadata_params={nn.PARTITION_NAME: LAYERS},
    )
    x, _ = stack(cfg, decode, name="layers")(x, segment_ids, prefill_lengths)

    h = _layer_norm(cfg, "ln_f")(x).astype(dtype)
    if return_hidden:  # the caller applies the output layer to the positions it needs
      return _constrain(h, (BATCH, LENGTH, EMBED))
    return output_logits(h, wte, cfg)


def output_logits(hidden: Array, wte: Array, cfg: PolyLMConfig) -> Array:
  """fp32 logits of final hidden states [..., d_model] through the tied embedding [vocab,
  d_model]. With `PolyLM(..., return_hidden=True)` a caller computes them for a chunk or a
  few gathered positions only (a 256k vocabulary makes the whole [tokens, vocab] the largest
  temporary of a step)."""
  dtype = jnp.dtype(cfg.dtype)
  logits = jnp.einsum(
    "...d,vd->...v", hidden.astype(dtype), wte.astype(dtype), preferred_element_type=jnp.float32
  )
  if logits.ndim == 3:
    logits = _constrain(logits, (BATCH, LENGTH, VOCAB))
  return logits


def init_params(config: PolyLMConfig, rng: Array) -> dict[str, Any]:
  """Randomly initialised parameters (unboxed), as Megatron initialises them."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  return nn.unbox(PolyLM(config).init(rng, tokens)["params"])


def abstract_params(config: PolyLMConfig) -> Any:
  """Parameter shapes and logical axes (boxed ShapeDtypeStructs), allocating nothing."""
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  return jax.eval_shape(lambda t: PolyLM(config).init(jax.random.key(0), t), tokens)["params"]


def init_cache(config: PolyLMConfig, batch_size: int) -> dict[str, Any]:
  """An empty decode cache for `batch_size` rows of up to `config.max_len` tokens."""
  tokens = jax.ShapeDtypeStruct((batch_size, 1), jnp.int32)
  shapes = jax.eval_shape(lambda t: PolyLM(config).init(jax.random.key(0), t, decode=True), tokens)[
    "cache"
  ]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), nn.unbox(shapes))
