"""Loss, gradients, microbatching, the update and the non-finite guard: pure functions.

`train.py` jits these with shardings (and donates the state). Nothing here syncs with the
host: a non-finite loss or gradient skips the update inside the step and bumps counters.

Batch contract (from the data stream): int32 [B, T] `inputs`, `targets`, `positions`,
`segment_ids`, `langs` (language index 0..num_languages-1) and float32 [B, T] `loss_weights`.
Loss weights are always explicit: PolyLM's id 0 is <unk>, so `token != 0` is no padding test.

Precision (the 13B recipe): params fp32, matmuls in config.dtype, residual stream per
config.residual_fp32, fp32 logits and softmax, gradients with respect to the fp32 params
(so the cross-device reduction is fp32) accumulated over microbatches in fp32.

Normalisation: the loss is the loss_weights-weighted mean over ALL tokens of the global batch.
Each microbatch's summed loss is divided by the global weight sum before differentiation, so
k microbatches give the full batch's gradient exactly (up to float summation order).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from polylm_jax import optim
from polylm_jax.batch_stream import BATCH_FIELDS
from polylm_jax.config import PolyLMConfig
from polylm_jax.model import PolyLM, abstract_params, output_logits
from polylm_jax.partitioning import DEFAULT_RULES, param_shardings

Array = jax.Array
Batch = Mapping[str, Array]

NUM_LANGUAGES = 18  # SPEC section 4
# The streams' batch layout (batch_stream.BATCH_FIELDS): every field but loss_weights is int32.
BATCH_INT_FIELDS = tuple(k for k in BATCH_FIELDS if k != "loss_weights")
# Tokens per device in one chunk of the output layer + loss (0: all at once). A chunk's fp32
# logits, their softmax and gradient take about 10 bytes x vocab per token: 2.5 GiB at 256k.
LOSS_CHUNK_TOKENS = 1024


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. `step` counts attempted steps (batches consumed);
  `step - skipped_steps` is the number of applied updates, which drives the lr schedule."""

  step: Array
  params: Any
  opt_state: Any
  skipped_steps: Array
  consecutive_skips: Array


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
  # Three distinct buffers: a donated state must not alias one array in several fields.
  zero = lambda: jnp.zeros((), jnp.int32)
  return TrainState(
    step=zero(),
    params=params,
    opt_state=optimizer.init(params),
    skipped_steps=zero(),
    consecutive_skips=zero(),
  )


def train_state_shardings(
  config: PolyLMConfig, optimizer: optax.GradientTransformation, mesh: Mesh, rules=DEFAULT_RULES
) -> TrainState:
  """NamedShardings for every TrainState leaf: params and Adam moments per the logical rules,
  counters replicated."""
  boxed = abstract_params(config)
  p_shard = param_shardings(config, mesh, rules)
  replicated = NamedSharding(mesh, P())
  return TrainState(
    step=replicated,
    params=p_shard,
    opt_state=optim.opt_state_shardings(optimizer, p_shard, boxed),
    skipped_steps=replicated,
    consecutive_skips=replicated,
  )


def abstract_train_state(
  config: PolyLMConfig, optimizer: optax.GradientTransformation, shardings: TrainState | None = None
) -> TrainState:
  """ShapeDtypeStructs of a TrainState (with shardings attached if given); allocates nothing."""
  params = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.unbox(abstract_params(config))
  )
  state = jax.eval_shape(lambda p: init_train_state(p, optimizer), params)
  if shardings is None:
    return state
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, shardings
  )


def check_batch(batch: Batch, num_microbatches: int = 1) -> None:
  """Static checks at trace time; errors name the field."""
  missing = [k for k in BATCH_FIELDS if k not in batch]
  if missing:
    raise ValueError(f"batch is missing field(s) {missing}; has {sorted(batch)}")
  shape = tuple(batch["inputs"].shape)
  if len(shape) != 2:
    raise ValueError(f"batch['inputs'] must be [batch, length], got shape {shape}")
  for k in BATCH_FIELDS:
    if tuple(batch[k].shape) != shape:
      raise ValueError(f"batch[{k!r}] has shape {tuple(batch[k].shape)}, expected {shape}")
  for k in BATCH_INT_FIELDS:
    if not jnp.issubdtype(batch[k].dtype, jnp.integer):
      raise ValueError(f"batch[{k!r}] must be an integer array, got {batch[k].dtype}")
  if num_microbatches < 1 or shape[0] % num_microbatches:
    raise ValueError(
      f"batch size {shape[0]} is not divisible by num_microbatches={num_microbatches}"
    )


def cross_entropy(
  logits: Array, targets: Array, z_loss: float = 0.0, label_smoothing: float = 0.0
) -> tuple[Array, Array, Array]:
  """Per-token (loss, nll, z_term) in fp32 from logits [..., V] and int targets [...].

  nll = logsumexp(logits) - logits[target]. With label smoothing (t5x's convention) the
  target distribution puts 1 - s on the target and s / (V - 1) elsewhere, and its entropy
  is subtracted so a perfect prediction scores 0. z_term = z_loss * logsumexp(logits)^2.
  No one-hot [.., V] is materialised.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  lse = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  nll = lse - target_logit
  loss = nll
  if label_smoothing:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    sum_logp = jnp.sum(logits, axis=-1) - vocab * lse
    target_logp = -nll
    loss = -(confidence * target_logp + low * (sum_logp - target_logp))
    loss = loss + (confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low))
  z_term = z_loss * jnp.square(lse) if z_loss else jnp.zeros_like(lse)
  return loss + z_term, nll, z_term


def _per_token_losses(
  logits: Array, targets: Array, z_loss: float, label_smoothing: float
) -> tuple[Array, tuple[Array, Array]]:
  loss, nll, z_term = cross_entropy(logits, targets, z_loss, label_smoothing)
  return loss, (nll, z_term)


def _rows_per_device(rows: int) -> int:
  """Batch rows one device holds under the active mesh and logical rules (all without one)."""
  mesh = jax.sharding.get_abstract_mesh()
  axes = nn.logical_to_mesh_axes(("batch",))[0]
  if mesh.empty or axes is None:
    return rows
  axes = (axes,) if isinstance(axes, str) else axes
  shards = math.prod(mesh.shape[a] for a in axes)
  return max(1, rows // shards)


def chunk_length(length: int, rows_per_device: int, chunk_tokens: int) -> int:
  """Sequence positions per chunk: about chunk_tokens per device. A divisor of `length` when
  one is at least half that (2048 -> powers of two), else the rest is padded."""
  target = max(1, min(length, chunk_tokens // rows_per_device))
  divisor = max(d for d in range(1, target + 1) if length % d == 0)
  return divisor if 2 * divisor >= target else target


def _chunk_positions(hidden: Array, c: int, *fields: Array) -> tuple[Array, ...]:
  """[B, T, ...] -> [n, B, c, ...]; the tail is zero-padded (a padded position has weight
  0). Chunks run along the sequence, so every data shard keeps its own rows."""
  t = hidden.shape[1]
  pad = -t % c
  out = []
  for x in (hidden,) + fields:
    if pad:
      x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((x.shape[0], (t + pad) // c, c) + x.shape[2:]).swapaxes(0, 1)
    out.append(nn.with_logical_constraint(x, (None, "batch", "length") + ("embed",) * (x.ndim - 3)))
  return tuple(out)


def _unchunk(x: Array, t: int) -> Array:
  """[n, B, c, ...] -> [B, T, ...] (drops the padding)."""
  x = x.swapaxes(0, 1)
  return x.reshape((x.shape[0], -1) + x.shape[3:])[:, :t]


def chunked_loss_sum(
  hidden: Array,
  wte: Array,
  targets: Array,
  weights: Array,
  *,
  config: PolyLMConfig,
  chunk_tokens: int,
  z_loss: float = 0.0,
  label_smoothing: float = 0.0,
) -> tuple[Array, Array, Array]:
  """(sum_t w_t loss_t, per-token nll [B, T], per-token z_term [B, T]) from the final hidden
  states [B, T, D] and the tied embedding, about `chunk_tokens` tokens per device at a time
  (`chunk_length` positions of every row).

  The [B, c, V] fp32 logits of one chunk are the largest temporary: the whole [B, T, V]
  never exists. Under differentiation the forward pass also forms, chunk by chunk, the
  gradient of the weighted sum with respect to the hidden states and `wte` (the fused
  linear cross entropy of Liger / Apple's cut-cross-entropy, without its kernel): the
  backward pass then only scales them, so the output layer costs three matmuls, as unchunked,
  instead of four (rematerialising the logits). The per-token nll and z_term are metrics:
  they carry no gradient.
  """
  dtype = jnp.dtype(config.dtype)
  t = hidden.shape[1]
  chunk = chunk_length(t, _rows_per_device(hidden.shape[0]), chunk_tokens)
  terms = functools.partial(_per_token_losses, z_loss=z_loss, label_smoothing=label_smoothing)

  def forward(h, wte, targets, weights):
    w_compute = wte.astype(dtype)  # cast (and gathered, under fsdp) once, not per chunk

    def body(_, xs):
      h_c, tgt_c, w_c = xs
      loss, (nll, z_term) = terms(output_logits(h_c, w_compute, config), tgt_c)
      return None, (jnp.sum(loss * w_c), nll, z_term)

    _, (sums, nll, z_term) = jax.lax.scan(body, None, _chunk_positions(h, chunk, targets, weights))
    return jnp.sum(sums), _unchunk(nll, t), _unchunk(z_term, t)

  def forward_with_grads(h, wte, targets, weights):
    def body(d_wte, xs):
      h_c, tgt_c, w_c = xs
      # Tied to the chunk, so XLA casts (and under fsdp gathers) the embedding per chunk rather
      # than hoisting it out of the loop, where it would stay live beside this chunk's `part`.
      w_compute, h_c = jax.lax.optimization_barrier((wte.astype(dtype), h_c))
      logits = output_logits(h_c, w_compute, config)
      loss, vjp, (nll, z_term) = jax.vjp(lambda lg: terms(lg, tgt_c), logits, has_aux=True)
      (d_logits,) = vjp(w_c.astype(jnp.float32))
      d_logits = nn.with_logical_constraint(d_logits.astype(dtype), ("batch", "length", "vocab"))
      d_h = jnp.einsum("bcv,vd->bcd", d_logits, w_compute, preferred_element_type=jnp.float32)
      # This chunk's share in the compute dtype (as the unchunked backward forms it), reduced
      # over the batch shards to wte's sharding first: an fp32 [vocab, embed] partial sum per
      # device would cost 4 bytes x the whole tied embedding under fsdp. Sums over chunks: fp32.
      part = jnp.einsum("bcv,bcd->vd", d_logits, h_c.astype(dtype), preferred_element_type=dtype)
      part = nn.with_logical_constraint(part, ("vocab", "embed"))
      d_wte = nn.with_logical_constraint(d_wte + part.astype(jnp.float32), ("vocab", "embed"))
      return d_wte, (jnp.sum(loss * w_c), nll, z_term, d_h.astype(h_c.dtype), loss)

    xs = _chunk_positions(h, chunk, targets, weights)
    d_wte0 = nn.with_logical_constraint(jnp.zeros(wte.shape, jnp.float32), ("vocab", "embed"))
    d_wte, (sums, nll, z_term, d_h, loss) = jax.lax.scan(body, d_wte0, xs)
    out = (jnp.sum(sums), _unchunk(nll, t), _unchunk(z_term, t))
    return out, (_unchunk(d_h, t), d_wte.astype(wte.dtype), _unchunk(loss, t), targets)

  def backward(res, cotangents):
    d_h, d_wte, loss, targets = res
    ct = cotangents[0]  # the metrics' cotangents are dropped (stop_gradient below)
    d_targets = np.zeros(targets.shape, jax.dtypes.float0)
    return (ct * d_h).astype(d_h.dtype), ct * d_wte, d_targets, ct * loss

  fused = jax.custom_vjp(forward)
  fused.defvjp(forward_with_grads, backward)
  loss_sum, nll, z_term = fused(hidden, wte, targets, weights.astype(jnp.float32))
  return loss_sum, jax.lax.stop_gradient(nll), jax.lax.stop_gradient(z_term)


def loss_fn(
  params: Any,
  batch: Batch,
  *,
  config: PolyLMConfig,
  z_loss: float = 0.0,
  label_smoothing: float = 0.0,
  num_languages: int = NUM_LANGUAGES,
  normalizer: Array | float | None = None,
  loss_chunk_tokens: int = LOSS_CHUNK_TOKENS,
) -> tuple[Array, dict[str, Array]]:
  """Weighted loss sum / normalizer (default: the batch's weight sum) and summed aux metrics.

  aux: loss_sum (the objective), nll_sum (plain cross entropy), z_loss_sum, weight_sum,
  lang_nll_sum [num_languages], lang_weight_sum [num_languages]. Tokens whose `langs` is
  outside 0..num_languages-1 count in the totals only.

  loss_chunk_tokens > 0: the output layer and the loss run about that many tokens per device at
  a time (`chunked_loss_sum`); 0: over the whole [B, T, vocab] logits at once (the reference).
  """
  if loss_chunk_tokens < 0:
    raise ValueError(f"loss_chunk_tokens must be >= 0 (0: unchunked), got {loss_chunk_tokens}")
  hidden = PolyLM(config).apply(
    {"params": params},
    batch["inputs"],
    batch["positions"],
    batch["segment_ids"],
    return_hidden=True,
  )
  weights = batch["loss_weights"].astype(jnp.float32)
  if loss_chunk_tokens:
    loss_sum, nll, z_term = chunked_loss_sum(
      hidden,
      params["wte"],
      batch["targets"],
      weights,
      config=config,
      chunk_tokens=loss_chunk_tokens,
      z_loss=z_loss,
      label_smoothing=label_smoothing,
    )
  else:
    logits = output_logits(hidden, params["wte"], config)
    loss, nll, z_term = cross_entropy(logits, batch["targets"], z_loss, label_smoothing)
    loss_sum = jnp.sum(loss * weights)
  weight_sum = jnp.sum(weights)
  lang_onehot = jax.nn.one_hot(batch["langs"], num_languages, dtype=jnp.float32)
  aux = {
    "loss_sum": loss_sum,
    "nll_sum": jnp.sum(nll * weights),
    "z_loss_sum": jnp.sum(z_term * weights),
    "weight_sum": weight_sum,
    "lang_nll_sum": jnp.einsum("bt,btl->l", nll * weights, lang_onehot),
    "lang_weight_sum": jnp.einsum("bt,btl->l", weights, lang_onehot),
  }
  if normalizer is None:
    normalizer = weight_sum
  return loss_sum / _safe(normalizer), aux


def _safe(denominator: Array | float) -> Array:
  denominator = jnp.asarray(denominator, jnp.float32)
  return jnp.where(denominator > 0, denominator, 1.0)


def _split_microbatches(x: Array, k: int) -> Array:
  """[B, ...] -> [k, B/k, ...], microbatch i = rows i, i+k, i+2k, ... so that every
  data shard holds an equal slice of every microbatch (no resharding between them)."""
  b = x.shape[0]
  x = x.reshape((b // k, k) + x.shape[1:]).swapaxes(0, 1)
  return nn.with_logical_constraint(x, (None, "batch") + ("length",) * (x.ndim - 2))


def _constrain_like_params(tree: Any, config: PolyLMConfig) -> Any:
  """Keeps gradient accumulators on the params' logical sharding (no-op without rules)."""
  specs = nn.get_partition_spec(abstract_params(config))
  return jax.tree.map(
    lambda x, s: nn.with_logical_constraint(x, s), tree, specs, is_leaf=lambda x: isinstance(x, P)
  )


def compute_gradients(
  params: Any,
  batch: Batch,
  *,
  config: PolyLMConfig,
  num_microbatches: int = 1,
  z_loss: float = 0.0,
  label_smoothing: float = 0.0,
  num_languages: int = NUM_LANGUAGES,
  loss_chunk_tokens: int = LOSS_CHUNK_TOKENS,
) -> tuple[Array, Any, dict[str, Array]]:
  """(mean loss, fp32 grads of it, summed aux) over the whole batch, in microbatches."""
  check_batch(batch, num_microbatches)
  normalizer = jnp.sum(batch["loss_weights"].astype(jnp.float32))
  grad_fn = jax.value_and_grad(
    functools.partial(
      loss_fn,
      config=config,
      z_loss=z_loss,
      label_smoothing=label_smoothing,
      num_languages=num_languages,
      normalizer=normalizer,
      loss_chunk_tokens=loss_chunk_tokens,
    ),
    has_aux=True,
  )
  to_f32 = lambda t: jax.tree.map(lambda g: g.astype(jnp.float32), t)
  if num_microbatches == 1:
    (loss, aux), grads = grad_fn(params, batch)
    return loss, to_f32(grads), aux

  micro = {k: _split_microbatches(batch[k], num_microbatches) for k in BATCH_FIELDS}

  def body(carry, mb):
    loss_acc, grad_acc, aux_acc = carry
    (loss, aux), grads = grad_fn(params, mb)
    grad_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_acc, grads)
    grad_acc = _constrain_like_params(grad_acc, config)
    aux_acc = jax.tree.map(jnp.add, aux_acc, aux)
    return (loss_acc + loss, grad_acc, aux_acc), None

  zeros_grads = _constrain_like_params(
    jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params), config
  )
  zeros_aux = {
    k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "nll_sum", "z_loss_sum", "weight_sum")
  }
  zeros_aux.update(
    {k: jnp.zeros((num_languages,), jnp.float32) for k in ("lang_nll_sum", "lang_weight_sum")}
  )
  (loss, grads, aux), _ = jax.lax.scan(
    body, (jnp.zeros((), jnp.float32), zeros_grads, zeros_aux), micro
  )
  return loss, grads, aux


def train_step(
  state: TrainState,
  batch: Batch,
  *,
  config: PolyLMConfig,
  optimizer: optax.GradientTransformation,
  schedule: optim.Schedule | None = None,
  num_microbatches: int = 1,
  z_loss: float = 0.0,
  label_smoothing: float = 0.0,
  num_languages: int = NUM_LANGUAGES,
  loss_chunk_tokens: int = LOSS_CHUNK_TOKENS,
) -> tuple[TrainState, dict[str, Array]]:
  """One update (or a skipped one if loss or gradients are non-finite).

  Metrics (all device arrays, nothing synced): loss (objective, mean), cross_entropy (mean),
  z_loss (mean), tokens (weight sum), grad_norm (before clipping), param_norm (after),
  learning_rate (if `schedule` is given), skipped (0/1 this step), skipped_steps,
  consecutive_skips, lang_nll_sum / lang_tokens [num_languages].
  """
  loss, grads, aux = compute_gradients(
    state.params,
    batch,
    config=config,
    num_microbatches=num_microbatches,
    z_loss=z_loss,
    label_smoothing=label_smoothing,
    num_languages=num_languages,
    loss_chunk_tokens=loss_chunk_tokens,
  )
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  params = keep(new_params, state.params)
  opt_state = keep(new_opt_state, state.opt_state)

  skipped = (~finite).astype(jnp.int32)
  new_state = TrainState(
    step=state.step + 1,
    params=params,
    opt_state=opt_state,
    skipped_steps=state.skipped_steps + skipped,
    consecutive_skips=jnp.where(finite, 0, state.consecutive_skips + 1).astype(jnp.int32),
  )

  tokens = aux["weight_sum"]
  metrics = {
    "loss": loss,
    "cross_entropy": aux["nll_sum"] / _safe(tokens),
    "z_loss": aux["z_loss_sum"] / _safe(tokens),
    "tokens": tokens,
    "grad_norm": grad_norm,
    "param_norm": optax.tree.norm(params),
    "skipped": skipped,
    "skipped_steps": new_state.skipped_steps,
    "consecutive_skips": new_state.consecutive_skips,
    "lang_nll_sum": aux["lang_nll_sum"],
    "lang_tokens": aux["lang_weight_sum"],
  }
  if schedule is not None:
    metrics["learning_rate"] = jnp.asarray(schedule(state.step - state.skipped_steps), jnp.float32)
  return new_state, metrics


def eval_step(
  params: Any,
  batch: Batch,
  config: PolyLMConfig,
  *,
  num_languages: int = NUM_LANGUAGES,
  loss_chunk_tokens: int = LOSS_CHUNK_TOKENS,
) -> dict[str, Array]:
  """Summed cross entropy and token counts, overall and per language (sum across batches,
  then divide: mean loss = nll_sum / tokens, perplexity = exp of it)."""
  check_batch(batch)
  _, aux = loss_fn(
    params, batch, config=config, num_languages=num_languages, loss_chunk_tokens=loss_chunk_tokens
  )
  return {
    "nll_sum": aux["nll_sum"],
    "tokens": aux["weight_sum"],
    "lang_nll_sum": aux["lang_nll_sum"],
    "lang_tokens": aux["lang_weight_sum"],
  }
