"""Resume and rollback: the trainer's counters, its checkpointer, and where a run starts.

A run restores the newest intact checkpoint in MODEL_DIR/checkpoints by itself (a damaged
newer one is named and set aside): params, optimizer state, step, RNG, the data stream's
position (which fixes the curriculum stage) and the counters, so the same command after a
crash or SIGTERM continues with the very batches and losses of an uninterrupted run. A
rollback (non-finite streak) restores params and optimizer state only: the stream goes on
past the bad batches, as PaLM does for loss spikes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from polylm_jax import checkpoints as ckpt_lib
from polylm_jax import data_shards, distributed
from polylm_jax.training import step as step_lib
from polylm_jax.training.settings import NonFinitePolicy

COUNTERS_VERSION = 1
# How checkpoints.CorruptCheckpointError names the step (restore_intact's `skipped` lines).
_DAMAGED_STEP = re.compile(r"checkpoint step (\d+) is damaged")


class NonFiniteError(RuntimeError):
  """Training stopped on non-finite losses or gradients."""


@dataclasses.dataclass
class Counters:
  """What the trainer counts besides the step; saved in every checkpoint (JSON)."""

  vocabulary: str
  languages: tuple[str, ...]
  skipped_steps: int = 0
  consecutive_skips: int = 0
  rollbacks: int = 0
  tokens_consumed: dict[str, float] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.languages = tuple(self.languages)
    for lang in self.languages:
      self.tokens_consumed.setdefault(lang, 0.0)

  def observe(self, metrics: Mapping[str, Any]) -> None:
    """Takes one finished step's metrics (host values) into the counters."""
    for i, lang in enumerate(self.languages):
      self.tokens_consumed[lang] += float(metrics["lang_tokens"][i])
    self.skipped_steps = int(metrics["skipped_steps"])
    self.consecutive_skips = int(metrics["consecutive_skips"])

  def to_json(self) -> dict[str, Any]:
    """A copy (checkpoints are written in the background while the counters move on)."""
    return {
      "version": COUNTERS_VERSION,
      "vocabulary": self.vocabulary,
      "skipped_steps": self.skipped_steps,
      "consecutive_skips": self.consecutive_skips,
      "rollbacks": self.rollbacks,
      "tokens_consumed": dict(self.tokens_consumed),
    }

  def load(self, saved: Mapping[str, Any]) -> None:
    """Takes a checkpoint's counters; languages added since then start at 0."""
    for k in ("skipped_steps", "consecutive_skips", "rollbacks"):
      setattr(self, k, int(saved.get(k, 0)))
    self.tokens_consumed.update({k: float(v) for k, v in saved.get("tokens_consumed", {}).items()})


def check_vocabulary(saved: Mapping[str, Any], vocabulary: str, directory: str, step: int) -> None:
  """The tasks' vocabulary must be the one the checkpoint was trained with."""
  if saved.get("vocabulary", vocabulary) != vocabulary:
    raise ckpt_lib.ConfigMismatchError(
      f"{directory}/{step}: vocabulary mismatch: checkpoint "
      f"{saved['vocabulary']!r} vs the tasks' {vocabulary!r}"
    )


@dataclasses.dataclass
class Restored:
  state: step_lib.TrainState
  rng: jax.Array | None
  trainer: dict[str, Any]  # the saved counters (JSON)
  stream: dict[str, Any] | None  # the saved stream position
  step: int
  skipped: tuple[str, ...] = ()  # damaged newer steps passed over, one line each


class Checkpointer:
  """The run's CheckpointManager with what every save adds: RNG, stream position, counters
  and the run's gin config; restores check the vocabulary and that the step can train."""

  def __init__(
    self,
    manager: ckpt_lib.CheckpointManager,
    abstract_state: step_lib.TrainState,
    replicated: jax.sharding.NamedSharding,
    vocabulary: str,
    gin_text: str | None,
  ):
    self.manager, self.abstract_state, self.replicated = manager, abstract_state, replicated
    self.vocabulary, self.gin_text = vocabulary, gin_text

  @property
  def directory(self) -> str:
    return self.manager.directory

  def set_aside(self, skipped: Sequence[str], log: Callable[[str], None]) -> None:
    """Renames the damaged steps a resume passed over to `<step>.damaged` (kept for a look,
    no longer a step), so the run can write those steps again; reopens the manager, whose
    step list Orbax caches. Single host only: hosts would have to agree on the rename."""
    steps = [int(m.group(1)) for m in map(_DAMAGED_STEP.search, skipped) if m]
    if not steps:
      return
    if jax.process_count() > 1:
      log(f"WARNING: damaged steps {steps} stay in {self.directory}; delete them")
      return
    old = self.manager
    old.close()
    for step in steps:
      path = os.path.join(old.directory, str(step))
      aside = f"{path}.damaged"
      while os.path.exists(aside):
        aside += "_"
      os.rename(path, aside)
      log(f"damaged step {step} set aside as {aside}")
    self.manager = ckpt_lib.CheckpointManager(
      os.path.dirname(old.directory), old.config, old.policy
    )

  def save(
    self,
    step: int,
    state: step_lib.TrainState,
    rng: jax.Array,
    stream_state: dict,
    counters: Counters,
    force: bool,
  ) -> bool:
    if not force and not self.manager.should_save(step):
      return False
    if stream_state.get("kind") == data_shards.STATE_KIND:  # every process's shards
      gathered = distributed.allgather_json(stream_state)
      stream_state = data_shards.merge_states(gathered, jax.process_count())
    # A copy: the JSON is written in the background while the counters move on.
    payload = json.loads(json.dumps({"stream": stream_state, "trainer": counters.to_json()}))
    return self.manager.save(
      step,
      state.params,
      opt_state=state.opt_state,
      rng=rng,
      stream_state=payload,
      gin_config=self.gin_text,
      force=force,
    )

  def restore(self, step: int | None, counters: Mapping[str, Any] | None = None) -> Restored:
    """`step`'s state (None: the newest step that reads back whole, see `skipped`); its skip
    counters are the saved ones, or `counters` (a rollback keeps counting from where it is)."""
    targets = dict(
      params_target=self.abstract_state.params, opt_state_target=self.abstract_state.opt_state
    )
    if step is None:
      r = self.manager.restore_intact(**targets)
    else:
      r = self.manager.restore(step, **targets)
    saved = (r.stream_state or {}).get("trainer", {})
    check_vocabulary(saved, self.vocabulary, self.directory, r.step)
    if r.opt_state is None:
      raise ValueError(
        f"{self.directory}/{r.step} holds no optimizer state: not a "
        "training checkpoint (use it as CHECKPOINT_PATH / init_checkpoint instead)"
      )
    scalar = lambda v: jax.device_put(jnp.asarray(int(v), jnp.int32), self.replicated)
    now = saved if counters is None else counters
    state = step_lib.TrainState(
      step=scalar(r.step),
      params=r.params,
      opt_state=r.opt_state,
      skipped_steps=scalar(now.get("skipped_steps", 0)),
      consecutive_skips=scalar(now.get("consecutive_skips", 0)),
    )
    return Restored(state, r.rng, saved, (r.stream_state or {}).get("stream"), r.step, r.skipped)


@dataclasses.dataclass
class Start:
  """Where a run starts: its state, RNG, the restored step (None: a fresh run), and how."""

  state: step_lib.TrainState
  rng: jax.Array
  restored_step: int | None
  origin: str
  skipped: tuple[str, ...] = ()  # damaged checkpoints passed over


def resume(
  checkpointer: Checkpointer,
  counters: Counters,
  stream: Any,
  *,
  init: Callable[[jax.Array], step_lib.TrainState],
  init_from_params: Callable[[], step_lib.TrainState] | None,
  init_checkpoint: str | None,
  random_seed: int,
) -> Start:
  """The latest complete checkpoint (with the stream and counters), else the params of
  `init_checkpoint` with a fresh optimizer, else a random init."""
  init_rng, train_rng = jax.random.split(jax.random.key(random_seed))
  if checkpointer.manager.latest_step() is not None:
    r = checkpointer.restore(None)  # the newest intact step; damaged ones are named
    counters.load(r.trainer)
    if r.stream is not None:
      stream.restore(r.stream)
    rng = r.rng if r.rng is not None else train_rng
    origin = f"restored step {r.step} from {checkpointer.directory}"
    return Start(r.state, rng, r.step, origin, r.skipped)
  if init_checkpoint and init_from_params is not None:
    origin = f"params from {init_checkpoint} (fresh optimizer, step 0)"
    return Start(init_from_params(), train_rng, None, origin)
  return Start(init(init_rng), train_rng, None, f"random init (seed {random_seed})")


class Action(NamedTuple):
  """The guard's answer: go on from `state` at `step`; rolled_back with the checkpoint's RNG
  (None: keep the current one)."""

  state: step_lib.TrainState
  step: int
  rolled_back: bool
  rng: jax.Array | None


class NonFiniteGuard:
  """Acts on a streak of skipped steps: roll back to the last checkpoint, stop, or go on."""

  def __init__(self, policy: NonFinitePolicy, checkpointer: Checkpointer, log: Callable):
    self.policy, self.checkpointer, self.log = policy, checkpointer, log

  def streak_ended_at(self, counters: Counters, step: int) -> int:
    """`step` when the skip streak calls for action, else 0."""
    return step if counters.consecutive_skips >= self.policy.max_consecutive_skips else 0

  def act(self, counters: Counters, state: step_lib.TrainState, step: int, last_bad: int) -> Action:
    """What to go on with after a streak ending at `last_bad`, seen at `step`."""
    n = counters.consecutive_skips
    what = f"{n} consecutive non-finite steps (steps {last_bad - n + 1}-{last_bad})"
    if self.policy.action == "continue":
      self.log(f"WARNING: {what}; nonfinite_policy='continue': going on")
      return Action(state, step, False, None)
    if self.policy.action == "stop":
      raise NonFiniteError(f"{what}; nonfinite_policy='stop'")
    manager = self.checkpointer.manager
    manager.wait_until_finished()
    target = manager.latest_step()
    if target is None:
      raise NonFiniteError(f"{what}; no checkpoint to roll back to in {manager.directory}")
    if counters.rollbacks >= self.policy.max_rollbacks:
      raise NonFiniteError(
        f"{what}; already rolled back {counters.rollbacks} times (max_rollbacks)"
      )
    r = self.checkpointer.restore(target, counters=counters.to_json())
    counters.rollbacks += 1
    counters.consecutive_skips = 0
    self.log(
      f"ROLLBACK {counters.rollbacks}/{self.policy.max_rollbacks}: {what}; restored step "
      f"{target} from {manager.directory}/{target}; the data stream goes on (batches since "
      "are skipped)"
    )
    return Action(r.state, target, True, r.rng)


def nan_weights(batch: dict[str, np.ndarray], index: int, debug_batches: Sequence[int]) -> None:
  """Sets the loss weights of the listed stream batches to NaN (exercises the guard)."""
  if index in debug_batches:
    batch["loss_weights"] = np.full_like(batch["loss_weights"], np.nan)
