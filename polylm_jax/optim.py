"""The released PolyLM optimisation recipe (SPEC section 3) on optax.

Adam with decoupled weight decay (betas 0.9/0.95, eps 1e-8, decay 1e-4), global-norm clipping
at 1.0, linear warmup from 0 then cosine to the minimum learning rate, then constant.

Weight decay follows Megatron's `_get_params_for_weight_decay_optimization`: every parameter
is decayed except biases and LayerNorm parameters. The token and position embeddings are
ordinary 2-D weights there, so they ARE decayed here too. Because the layer stack is scanned,
a per-layer bias of shape [D] is stored as [L, D]; the mask therefore goes by parameter name
(`*bias`, `scale`) and treats any array of rank <= 1 as 1-D, rather than by rank alone.

Optimizer state is sharded like the parameters: the Adam moments take each parameter's
sharding (so an fsdp axis splits them too), counters and other scalars are replicated.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]

# Leaf names never decayed: biases (any name ending in "bias") and LayerNorm scales.
_NO_DECAY_NAMES = ("scale",)


def learning_rate_schedule(
  peak: float,
  min: float,
  warmup_steps: int,  # pylint: disable=redefined-builtin
  decay_steps: int,
) -> Schedule:
  """Linear warmup 0 -> peak over `warmup_steps`, cosine peak -> min over the next
  `decay_steps`, then constant at `min`.

  Step t counts applied updates. The cosine ends at step warmup_steps + decay_steps
  (13B: 2,500 + 150,000 = 152,500, the released total). Megatron's `--lr-decay-iters N`
  counts from step 0 instead; it corresponds to decay_steps = N - warmup_steps.
  """
  if warmup_steps < 0:
    raise ValueError(f"learning_rate_schedule: warmup_steps must be >= 0, got {warmup_steps}")
  if decay_steps <= 0:
    raise ValueError(f"learning_rate_schedule: decay_steps must be > 0, got {decay_steps}")
  if peak < 0 or min < 0 or min > peak:
    raise ValueError(f"learning_rate_schedule: need 0 <= min <= peak, got min={min}, peak={peak}")
  alpha = min / peak if peak > 0 else 0.0
  cosine = optax.cosine_decay_schedule(peak, decay_steps, alpha=alpha)
  if warmup_steps == 0:
    return cosine
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, cosine], [warmup_steps])


def _leaf_name(path: tuple[Any, ...]) -> str:
  if not path:
    return ""
  key = path[-1]
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def decay_mask(params: Any) -> Any:
  """True where weight decay applies: not biases, not LayerNorm params, not rank <= 1 arrays."""

  def decays(path, leaf) -> bool:
    name = _leaf_name(path)
    return not (name.endswith("bias") or name in _NO_DECAY_NAMES or len(leaf.shape) <= 1)

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(
  schedule: Schedule | float,
  b1: float = 0.9,
  b2: float = 0.95,
  eps: float = 1e-8,
  weight_decay: float = 1e-4,
  clip_norm: float | None = 1.0,
) -> optax.GradientTransformation:
  """clip_by_global_norm(clip_norm) then AdamW with the decay mask (clip_norm None: no clip).

  The decayed update is lr * (adam_direction + weight_decay * param), the same as PyTorch's
  AdamW / apex FusedAdam(adam_w_mode=True) that Megatron uses.
  """
  if clip_norm is not None and clip_norm <= 0:
    raise ValueError(f"make_optimizer: clip_norm must be > 0 or None, got {clip_norm}")
  if weight_decay < 0:
    raise ValueError(f"make_optimizer: weight_decay must be >= 0, got {weight_decay}")
  adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
  if clip_norm is None:
    return adamw
  return optax.chain(optax.clip_by_global_norm(clip_norm), adamw)


def _as_shape_structs(tree: Any) -> Any:
  tree = nn.unbox(tree)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def opt_state_shardings(
  optimizer: optax.GradientTransformation, param_shardings: Any, abstract_params: Any
) -> Any:
  """Shardings for `optimizer.init(params)`, derived without allocating anything.

  Any state leaf found under a path that ends with a parameter's path and has that
  parameter's shape (Adam's mu and nu) takes the parameter's sharding; everything else
  (step counts, empty states) is replicated. `abstract_params` may be boxed (flax
  LogicallyPartitioned) or plain arrays / ShapeDtypeStructs.
  """
  structs = _as_shape_structs(abstract_params)
  param_leaves = jax.tree_util.tree_flatten_with_path(structs)[0]
  sharding_leaves = jax.tree.leaves(param_shardings)
  if len(param_leaves) != len(sharding_leaves):
    raise ValueError(
      f"opt_state_shardings: {len(sharding_leaves)} param shardings for "
      f"{len(param_leaves)} params; the trees must match"
    )
  by_path = {
    tuple(path): (leaf.shape, sharding)
    for (path, leaf), sharding in zip(param_leaves, sharding_leaves)
  }
  mesh = sharding_leaves[0].mesh
  replicated = NamedSharding(mesh, P())
  max_depth = max(len(p) for p in by_path)

  state = jax.eval_shape(optimizer.init, structs)

  def pick(path, leaf):
    path = tuple(path)
    for start in range(max(0, len(path) - max_depth), len(path)):
      hit = by_path.get(path[start:])
      if hit is not None and hit[0] == leaf.shape:
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, state)


def abstract_opt_state(
  optimizer: optax.GradientTransformation, abstract_params: Any, shardings: Any | None = None
) -> Any:
  """ShapeDtypeStructs of the optimizer state (with `shardings` attached if given)."""
  state = jax.eval_shape(optimizer.init, _as_shape_structs(abstract_params))
  if shardings is None:
    return state
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state, shardings
  )
