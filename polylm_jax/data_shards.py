"""The global batch as a fixed number of data shards, so that it does not depend on how many
processes assemble it.

A run's global batch of B rows is V data shards of B/V rows each, shard v being the stream
`build_stream(..., shard_index=v, num_shards=V, batch_size=B/V)` of the run's data module
(polylm_jax.stream or polylm_jax.instruct_stream). V (`DataSpec.data_shards`) is fixed when a
run starts and kept in its checkpoints; the processes split the shards between them, each
making only the shards whose rows its devices hold. So step s's global batch is the same on
1, 2 or 4 processes, and a checkpoint restores on any process count that divides V (elastic
resume): every shard's position is saved, whichever process made it.

Why not one reader per process: a per-process stream (num_shards = process count) mixes and
packs differently for every process count, and its position means nothing to another count.
Why not every process making the whole batch and keeping its rows: that multiplies the
reading and tokenizing by the process count.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from polylm_jax.batch_stream import Batch, BatchStream, DataModule, StagePlan

STATE_KIND = "data_shards"
STATE_VERSION = 1


class TopologyError(ValueError):
  """A run's process count, batch or mesh does not fit its data shards."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """Which data shards this process makes: shards [first, first + count) of `total`."""

  total: int
  first: int
  count: int
  rows_per_shard: int

  @property
  def shards(self) -> range:
    return range(self.first, self.first + self.count)


def resolve_count(
  requested: Optional[int], saved: Optional[int], num_processes: int, where: str = ""
) -> int:
  """The run's data shard count: DataSpec.data_shards when set, else the count its checkpoint
  was written with, else the process count. An explicit count that differs from the
  checkpoint's fails: the data order would change."""
  if requested is not None and saved is not None and requested != saved:
    raise TopologyError(
      f"DataSpec.data_shards={requested} but the checkpoint {where} was written with "
      f"data_shards={saved}: a run keeps its data shards (drop the setting to resume)"
    )
  count = requested or saved or num_processes
  if count % num_processes:
    raise TopologyError(
      f"this run has {num_processes} processes but its data has {count} data shards"
      + (f" (from the checkpoint {where})" if saved and requested is None else "")
      + f": the process count must divide the data shards, so resume on one of "
      f"{divisors(count)} processes, or start a new run with DataSpec.data_shards set to a "
      f"multiple of {num_processes}"
    )
  return count


def divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def process_rows(row_slices: Sequence[slice], batch_size: int) -> tuple[int, int]:
  """[start, stop) of the global batch rows held by one process's devices, which must be
  contiguous (a mesh whose data axes follow the process order)."""
  rows = sorted({(s.start or 0, batch_size if s.stop is None else s.stop) for s in row_slices})
  start, stop = rows[0][0], rows[0][0]
  for a, b in rows:
    if a > stop:
      raise TopologyError(
        f"this process holds global batch rows {rows}, not one contiguous block: build the "
        "mesh with the data axes over processes (MeshSpec defaults do)"
      )
    stop = max(stop, b)
  return start, stop


def layout(total: int, batch_size: int, start: int, stop: int) -> Layout:
  """The shards covering rows [start, stop) of a batch of `batch_size` rows in `total` shards."""
  if batch_size % total:
    raise TopologyError(
      f"BATCH_SIZE={batch_size} is not a multiple of the data shards ({total}; "
      "DataSpec.data_shards, else the checkpoint's or the process count)"
    )
  per = batch_size // total
  if start % per or stop % per:
    raise TopologyError(
      f"this process holds batch rows [{start}, {stop}), which do not fall on data shard "
      f"boundaries ({per} rows each of {total} shards): use a process count that divides "
      f"the data shards ({total})"
    )
  return Layout(total, start // per, (stop - start) // per, per)


def row_layout(total: int, batch_size: int, sharding: Any, process_index: int) -> Layout:
  """`layout` for the rows the batch sharding gives this process's devices."""
  indices = sharding.devices_indices_map((batch_size, 1))
  mine = [idx[0] for d, idx in indices.items() if d.process_index == process_index]
  return layout(total, batch_size, *process_rows(mine, batch_size))


class ShardedStream(BatchStream):
  """This process's rows of the global batch: its data shards' batches, stacked in shard
  order. `state()` holds this process's shards; the trainer merges every process's states
  into the checkpoint (`merge_states`), and `restore` takes a merged state."""

  def __init__(self, streams: Mapping[int, BatchStream], lay: Layout):
    if sorted(streams) != list(lay.shards):
      raise ValueError(f"streams for shards {sorted(streams)}, layout {list(lay.shards)}")
    self.layout = lay
    self.streams = [streams[v] for v in lay.shards]
    first = self.streams[0]
    self.stages: Sequence[StagePlan] = first.stages
    self.boundaries = first.boundaries

  @property
  def step(self) -> int:
    return self.streams[0].step

  @property
  def stage(self) -> int:
    return self.streams[0].stage

  def next(self) -> Batch:
    batches = [s.next() for s in self.streams]
    if len(batches) == 1:
      return batches[0]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  def state(self) -> dict:
    return {
      "kind": STATE_KIND,
      "version": STATE_VERSION,
      "data_shards": self.layout.total,
      "step": self.step,
      "shards": {str(v): s.state() for v, s in zip(self.layout.shards, self.streams)},
    }

  def restore(self, state: Mapping) -> None:
    """Takes this process's shards from a merged state (or, with one data shard, the plain
    state of a stream saved before data shards existed)."""
    if state.get("kind") != STATE_KIND:
      if self.layout.total != 1:
        raise TopologyError(
          f"the checkpoint's data state has no data shards (saved by one process before "
          f"data shards existed); this run has {self.layout.total} data shards: resume it on "
          "one process"
        )
      self.streams[0].restore(state)
      return
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"data shard state version {state.get('version')}, expected {STATE_VERSION}")
    saved = int(state["data_shards"])
    if saved != self.layout.total:
      raise TopologyError(
        f"the checkpoint's data has {saved} data shards (written by "
        f"{state.get('processes', '?')} processes), this run {self.layout.total}"
      )
    missing = [v for v in self.layout.shards if str(v) not in state["shards"]]
    if missing:
      raise ValueError(f"the checkpoint's data state lacks data shards {missing}")
    for v, s in zip(self.layout.shards, self.streams):
      s.restore(state["shards"][str(v)])


def merge_states(states: Sequence[Mapping], processes: int) -> dict:
  """Every process's `ShardedStream.state()` -> one state with every shard (all processes
  hold the same steps: the trainer saves at the same step everywhere)."""
  merged: dict[str, Any] = {}
  for st in states:
    merged.update(st["shards"])
  first = states[0]
  if len(merged) != first["data_shards"]:
    raise ValueError(f"data shard states {sorted(merged)} of {first['data_shards']} shards")
  return {**first, "shards": dict(sorted(merged.items(), key=lambda kv: int(kv[0]))),
          "processes": processes}  # fmt: skip


def saved_count(state: Optional[Mapping]) -> Optional[int]:
  """The data shard count of a checkpoint's data state (1 for a pre-shard state)."""
  if not state:
    return None
  return int(state["data_shards"]) if state.get("kind") == STATE_KIND else 1


def build(
  module: DataModule,
  name: str,
  seq_len: int,
  lay: Layout,
  **kwargs: Any,
) -> ShardedStream:
  """This process's shards of MIXTURE_OR_TASK_NAME (kwargs: build_stream's seed, train_steps,
  segment_aware)."""
  streams = {
    v: module.build_stream(
      name, seq_len, lay.rows_per_shard, shard_index=v, num_shards=lay.total, **kwargs
    )
    for v in lay.shards
  }
  return ShardedStream(streams, lay)


def padding_batch(rows: int, seq_len: int) -> Batch:
  """A batch that counts for nothing (loss weight 0, language -1): what a shard that has run
  out of held-out data adds while others go on."""
  positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (rows, seq_len)).copy()
  zeros = np.zeros((rows, seq_len), np.int32)
  return {
    "inputs": zeros,
    "targets": zeros.copy(),
    "loss_weights": np.zeros((rows, seq_len), np.float32),
    "positions": positions,
    "segment_ids": np.ones((rows, seq_len), np.int32),
    "langs": np.full((rows, seq_len), -1, np.int32),
  }


def eval_batches(
  batches: Callable[..., Iterator[Batch]],
  tasks: Sequence[str],
  lay: Layout,
  seq_len: int,
  num_batches: Optional[int],
  agree_count: Callable[[int], int],
) -> list[Batch]:
  """This process's rows of every held-out batch: each shard's eval batches (`batches(tasks,
  batch_size=, shard_index=, num_shards=, num_batches=)`), stacked in shard order. With
  num_batches=None (all held-out data) the shards end at different batches: the shorter ones,
  on every process, go on with weight-0 padding batches up to the longest shard's count,
  which `agree_count` (the maximum over processes) gives."""
  parts = [
    list(batches(tasks, batch_size=lay.rows_per_shard, shard_index=v, num_shards=lay.total,
                 num_batches=num_batches))
    for v in lay.shards
  ]  # fmt: skip
  count = agree_count(max(len(p) for p in parts)) if num_batches is None else num_batches
  pad = padding_batch(lay.rows_per_shard, seq_len)
  parts = [p + [pad] * (count - len(p)) for p in parts]
  return [{k: np.concatenate([p[i][k] for p in parts]) for k in pad} for i in range(count)]
