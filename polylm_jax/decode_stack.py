"""The model's forward pass as decoding needs it: a prefill and one-token steps over a KV cache.

Two ways to go over the layers (both exactly the model's function, `tests/test_decoding.py`
checks each against the full forward pass):
  "unrolled" (default): the stacked layer weights are sliced once per generate call and the
      blocks run one after another, so a step reads each weight once. Costs one extra copy of
      the layer weights while generating.
  "scan": the model's own `nn.scan` (`PolyLM.apply(decode=True)`): no copy, but XLA copies
      each layer's weights out of the stacked arrays at every step (a dynamic slice), which
      on CPU made batch-1 steps about 1.8x slower (benchmarks/decode.py --layer_loop).
The unrolled path also computes logits for the last real token of each row only during the
prefill. Prompts are right-padded: the prefill sets each row's cache index to its length
(model.py), the layout t5x's decoding uses too.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from polylm_jax.config import PolyLMConfig
from polylm_jax.model import BATCH, EMBED, LENGTH, VOCAB, Block, PolyLM, init_cache

LAYER_LOOPS = ("unrolled", "scan")


def check_layer_loop(layer_loop: str) -> str:
  if layer_loop not in LAYER_LOOPS:
    raise ValueError(f"layer_loop must be one of {LAYER_LOOPS}, got {layer_loop!r}")
  return layer_loop


def prepare_params(config: PolyLMConfig, params: Any, layer_loop: str) -> Any:
  """The params as the stack reads them: position table cut to the cache length and, when
  unrolled, the layer weights as a list. Idempotent, so streams prepare once (jitted) and
  pass the result to every chunk."""
  layers = params["layers"]
  if layer_loop == "unrolled" and not isinstance(layers, list):
    layers = [jax.tree.map(lambda x, i=i: x[i], layers) for i in range(config.num_layers)]
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
    cache = init_cache(self.config, batch)
    if not self.unrolled:
      return cache
    return [
      jax.tree.map(lambda x, i=i: x[i], cache["layers"]) for i in range(self.config.num_layers)
    ]

  def take_rows(self, cache: Any, rows: jax.Array) -> Any:
    """Reorders / selects batch rows of the cache (beam search)."""
    axis = 0 if self.unrolled else 1
    return jax.tree.map(lambda x: x if x.ndim <= axis else jnp.take(x, rows, axis=axis), cache)

  def repeat_rows(self, cache: Any, k: int) -> Any:
    axis = 0 if self.unrolled else 1
    return jax.tree.map(lambda x: x if x.ndim <= axis else jnp.repeat(x, k, axis=axis), cache)

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

    lengths [B] (a prefill of right-padded rows): each row's index moves to its length and
    the [B, V] logits are those after its last real token, column lengths - 1."""
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
    dtype = jnp.dtype(cfg.dtype)
    residual_dtype = jnp.float32 if cfg.residual_fp32 else dtype
    x = jnp.take(p["wte"], tokens, axis=0) + jnp.take(p["wpe"], positions, axis=0)
    x = nn.with_logical_constraint(x.astype(residual_dtype), (BATCH, LENGTH, EMBED))
    new_cache = []
    for layer, layer_cache in zip(self.layers, cache):
      (x, _), variables = Block(cfg, decode=True).apply(
        {"params": layer, "cache": layer_cache}, x, segment_ids, lengths, mutable=["cache"]
      )
      new_cache.append(variables["cache"])
    if last_only:
      x = x[:, -1:] if last is None else _take_column(x, last)[:, None]
    h = nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.dtype(cfg.param_dtype)
    ).apply({"params": p["ln_f"]}, x)
    logits = jnp.einsum(
      "btd,vd->btv", h.astype(dtype), p["wte"].astype(dtype), preferred_element_type=jnp.float32
    )
    logits = nn.with_logical_constraint(logits, (BATCH, LENGTH, VOCAB))
    return (logits[:, -1] if last_only else logits), new_cache

  def prefill(
    self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array, lengths: jax.Array
  ) -> tuple[jax.Array, Any]:
    """Fills a new cache with the right-padded prompts (`lengths` [B] real tokens each);
    logits after each row's last token. Each row then decodes from its own length."""
    return self(self.init_cache(tokens.shape[0]), tokens, positions, segment_ids, lengths=lengths)


def _take_column(x: jax.Array, column: jax.Array) -> jax.Array:
  """x[b, column[b]] for each row b: [B, T, ...] -> [B, ...]."""
  return jnp.take_along_axis(x, column.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]
