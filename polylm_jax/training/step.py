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
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from polylm_jax import optim
from polylm_jax.batch_stream import BATCH_FIELDS
from polylm_jax.config import PolyLMConfig
from polylm_jax.model import PolyLM, abstract_params
from polylm_jax.partitioning import DEFAULT_RULES, param_shardings

Array = jax.Array
Batch = Mapping[str, Array]

NUM_LANGUAGES = 18  # SPEC section 4
# The streams' batch layout (batch_stream.BATCH_FIELDS): every field but loss_weights is int32.
BATCH_INT_FIELDS = tuple(k for k in BATCH_FIELDS if k != "loss_weights")


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


def loss_fn(
  params: Any,
  batch: Batch,
  *,
  config: PolyLMConfig,
  z_loss: float = 0.0,
  label_smoothing: float = 0.0,
  num_languages: int = NUM_LANGUAGES,
  normalizer: Array | float | None = None,
) -> tuple[Array, dict[str, Array]]:
  """Weighted loss sum / normalizer (default: the batch's weight sum) and summed aux metrics.

  aux: loss_sum (the objective), nll_sum (plain cross entropy), z_loss_sum, weight_sum,
  lang_nll_sum [num_languages], lang_weight_sum [num_languages]. Tokens whose `langs` is
  outside 0..num_languages-1 count in the totals only.
  """
  logits = PolyLM(config).apply(
    {"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"]
  )
  weights = batch["loss_weights"].astype(jnp.float32)
  loss, nll, z_term = cross_entropy(logits, batch["targets"], z_loss, label_smoothing)
  weight_sum = jnp.sum(weights)
  loss_sum = jnp.sum(loss * weights)
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
  params: Any, batch: Batch, config: PolyLMConfig, *, num_languages: int = NUM_LANGUAGES
) -> dict[str, Array]:
  """Summed cross entropy and token counts, overall and per language (sum across batches,
  then divide: mean loss = nll_sum / tokens, perplexity = exp of it)."""
  check_batch(batch)
  _, aux = loss_fn(params, batch, config=config, num_languages=num_languages)
  return {
    "nll_sum": aux["nll_sum"],
    "tokens": aux["weight_sum"],
    "lang_nll_sum": aux["lang_nll_sum"],
    "lang_tokens": aux["lang_weight_sum"],
  }
