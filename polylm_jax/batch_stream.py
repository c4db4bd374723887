"""What the trainer sees of a data stream, whichever packer made it.

Two packers share this interface and keep their own packing rules:
  - polylm_jax.stream: pre-training; documents packed back to back, lanes with per-batch
    token quotas, curriculum stages;
  - polylm_jax.instruct_stream: instruction tuning; whole examples per segment, loss on the
    responses only.
`instruct_stream.data_module(name)` picks one of the two modules; the trainer then uses only
what `DataModule` (the module's functions) and `BatchStream` (the stream object) name here, so
either module can stand in for the other. The helpers below (argument checks, the restore
check with its diff message, the weight-0 padding tail of eval batches, the per-host batch
size) are the pieces both packers need, written once.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Optional, Protocol, runtime_checkable

import numpy as np

Batch = dict[str, np.ndarray]
BATCH_FIELDS = ("inputs", "targets", "loss_weights", "positions", "segment_ids", "langs")


@dataclasses.dataclass(frozen=True)
class StagePlan:
  """A resolved stage: tasks with their token shares and language indices (-1 unknown)."""

  name: str
  tasks: tuple[str, ...]
  shares: tuple[float, ...]
  langs: tuple[int, ...]

  def fingerprint(self) -> str:
    return f"{self.name}:" + ",".join(f"{t}={s:.9f}" for t, s in zip(self.tasks, self.shares))


@runtime_checkable
class BatchStream(Protocol):
  """An endless, resumable stream of [batch, seq_len] batches (keys BATCH_FIELDS) for one host.

  `stages` / `boundaries`: what it mixes and the step each stage starts at (one stage at step
  0 for a stream without a curriculum). `step`: batches produced so far. `state()` is small
  JSON; `restore(state)` continues exactly where it was taken, and refuses a state saved by
  another kind of stream or another configuration. Subclasses get iteration for free."""

  stages: Sequence[StagePlan]
  boundaries: tuple[int, ...]
  step: int

  @property
  def stage(self) -> int:
    """The stage of the next batch."""
    raise NotImplementedError

  def next(self) -> Batch:
    raise NotImplementedError

  def state(self) -> dict:
    raise NotImplementedError

  def restore(self, state: Mapping) -> None:
    raise NotImplementedError

  def __next__(self) -> Batch:
    return self.next()

  def __iter__(self) -> Iterator[Batch]:
    return self


@runtime_checkable
class DataModule(Protocol):
  """The functions a data module (polylm_jax.stream, polylm_jax.instruct_stream) offers the
  trainer. A module may add keyword-only parameters with defaults (instruct_stream's `pack`);
  tests/test_batch_stream.py compares the signatures."""

  def build_stream(
    self,
    name: str,
    seq_len: int,
    batch_size: int,
    *,
    seed: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
    train_steps: Optional[int] = None,
    segment_aware: bool = False,
    split: str = "train",
  ) -> BatchStream:
    """MIXTURE_OR_TASK_NAME -> one data shard's stream (polylm_jax/data_shards.py makes a
    process's rows from its shards); batch_size is the shard's rows."""
    raise NotImplementedError

  def eval_tasks(self, name: str, split: str = "validation") -> dict[str, tuple[str, ...]]:
    """Held-out tasks per language code."""
    raise NotImplementedError

  def eval_batches(
    self,
    tasks: Sequence[str],
    seq_len: int,
    batch_size: int,
    *,
    split: str = "validation",
    shard_index: int = 0,
    num_shards: int = 1,
    segment_aware: bool = False,
    num_batches: Optional[int] = None,
  ) -> Iterator[Batch]:
    """Finite batches of `tasks` read once; padding at loss weight 0."""
    raise NotImplementedError


def check_layout(seq_len: int, batch_size: int, shard_index: int = 0, num_shards: int = 1) -> None:
  """One-line errors for a batch shape or host shard no stream can make."""
  for flag, v in (("seq_len", seq_len), ("batch_size", batch_size), ("num_shards", num_shards)):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
      raise ValueError(f"{flag} must be a positive int, got {v!r}")
  if not isinstance(shard_index, (int, np.integer)) or not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index!r}")


def check_rates(what: str, tasks: Sequence[str], rates: Sequence[float]) -> tuple[list, list]:
  """(tasks, rates) without the zero rates; an error naming `what` when a rate is negative or
  not finite, or all are zero."""
  rates = [float(r) for r in rates]
  if not tasks or any(not np.isfinite(r) or r < 0 for r in rates) or sum(rates) <= 0:
    raise ValueError(f"{what}: rates must be >= 0 and not all zero, got {dict(zip(tasks, rates))}")
  keep = [i for i, r in enumerate(rates) if r > 0]
  return [tasks[i] for i in keep], [rates[i] for i in keep]


def checked_state(
  state: Mapping, what: str, version: int, config: Mapping, kind: Optional[str] = None
) -> dict:
  """`state` as plain JSON (as it comes back from a checkpoint), after checking that a stream
  of this kind and this configuration saved it: the error lists every setting that differs."""
  state = json.loads(json.dumps(state))
  if (state.get("version"), state.get("kind")) != (version, kind):
    raise ValueError(
      f"{what}: the state has version {state.get('version')!r}, kind {state.get('kind')!r}; "
      f"expected version {version}, kind {kind!r} (saved by another kind of stream?)"
    )
  saved = state.get("config") or {}
  diff = [k for k in config if config[k] != saved.get(k)]
  if diff:
    raise ValueError(
      f"{what} state does not match this stream: "
      + "; ".join(f"{k}: saved {saved.get(k)!r}, now {config[k]!r}" for k in diff)
    )
  return state


def exactly(
  batches: Iterator[Batch], num_batches: Optional[int], padding: Callable[[], Batch]
) -> Iterator[Batch]:
  """`batches`, all of them when num_batches is None, else exactly num_batches: cut short, or
  followed by `padding()` batches (loss weight 0 throughout), so that every host runs the
  same number of eval steps."""
  if num_batches is None:
    return batches
  if not isinstance(num_batches, (int, np.integer)) or num_batches < 0:
    raise ValueError(f"num_batches must be None or an int >= 0, got {num_batches!r}")
  cut = itertools.islice(batches, num_batches)
  return itertools.islice(itertools.chain(cut, iter(padding, None)), num_batches)
