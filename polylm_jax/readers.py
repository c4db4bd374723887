"""Reading one seqio task as documents, addressed by a small resumable position.

A position is (epoch, unit, record): units are pieces of a task that seqio opens directly
(groups of input files for this host, or this host's example-level shard), so a resume opens
one unit and skips at most that unit's prefix -- never the data already consumed.

A task whose documents are plain tokenized text (a provider in polylm_jax.text_units vouches
for it: e.g. tasks/ text files and sample bitext) is read without tf.data, tokenized in batches;
other tasks go through their seqio pipeline, which costs ~0.3-1 s to open (tracing its
preprocessors) and is held to `threads_per_source` threads. Fully read small units are kept in
a process-wide LRU (`UNIT_CACHE`) and, for seqio-read units, on disk (`DISK_CACHE`, see
`_DiskUnitCache`). All are speed-ups only, never resume state.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import inspect
import io
import os
import re
from typing import Iterator, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from polylm_jax import files as files_lib
from polylm_jax import mixing, text_units
from polylm_jax.paths import cache_root

FEATURE = "targets"
Position = tuple[int, int, int]  # (epoch, unit, record)


def get_task(name: str, split: str) -> seqio.Task:
  try:
    task = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ValueError(f"task {name!r} is not registered with seqio (import tasks first?)") from e
  if not isinstance(task, seqio.Task):
    raise ValueError(f"{name!r} is a seqio Mixture; a stream source must be a Task")
  if split not in task.splits:
    raise ValueError(f"task {name!r} has no split {split!r}; it has {list(task.splits)}")
  if FEATURE not in task.output_features:
    raise ValueError(f"task {name!r} has no output feature {FEATURE!r}")
  return task


class DataError(ValueError):
  """Bad input found while reading a task; the message names the task and split, and the file
  and line when the source knows them."""


# A data problem inside a tf.data pipeline surfaces as a TensorFlow error of 20-70 lines: a
# Python reader's exception (tasks/sources.py MalformedLine) or a failed tf.debugging.Assert.
_DATA_MESSAGES = (
  re.compile(r"MalformedLine: ([^\n]+)"),
  re.compile(r"assertion failed: \[(.*)\]"),
)


def data_error(error: Exception, where: str) -> Exception:
  """A one-line DataError (`where`: the message) for a TensorFlow error carrying a data
  problem; `error` itself otherwise."""
  for pattern in _DATA_MESSAGES:
    match = pattern.search(str(error))
    if match:
      return DataError(f"{where}: {match.group(1)}")
  return error


@tf.autograph.experimental.do_not_convert
def _targets(ex):
  return ex[FEATURE]


class _UnitCache:
  """Process-wide LRU of small, fully read units as (values, row_splits).

  A speed-up only (a seqio pipeline costs ~0.2 s to open, a sample-corpus unit is read in
  milliseconds); never part of the resume state.
  """

  def __init__(self, max_tokens: int = 1 << 24):
    self.max_tokens = max_tokens
    self._entries: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
    self._tokens = 0

  def get(self, key: tuple, task: seqio.Task):
    entry = self._entries.get(key)
    if entry is None or entry[0] is not task:  # re-registered task: stale
      return None
    self._entries.move_to_end(key)
    return entry[1], entry[2]

  def put(self, key: tuple, task: seqio.Task, vals: np.ndarray, splits: np.ndarray) -> None:
    if len(vals) > self.max_tokens:
      return
    if key in self._entries:
      self._tokens -= len(self._entries.pop(key)[1])
    while self._entries and self._tokens + len(vals) > self.max_tokens:
      self._tokens -= len(self._entries.popitem(last=False)[1][1])
    self._entries[key] = (task, vals, splits)
    self._tokens += len(vals)

  def clear(self) -> None:
    self._entries.clear()
    self._tokens = 0


UNIT_CACHE = _UnitCache()

_QUOTED_PATH = re.compile(r"""['"](/[^'"]+)['"]""")
DISK_FORMAT = 1


def _file_sig(path: str) -> str:
  st = os.stat(path)
  return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


def _callable_sig(fn) -> str:
  """Name, bound arguments and defining file (size, mtime) of a preprocessor."""
  parts = []
  while isinstance(fn, functools.partial):
    parts.append(repr(fn.args) + repr(sorted(fn.keywords.items(), key=str)))
    fn = fn.func
  name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
  try:
    code = _file_sig(inspect.getsourcefile(fn) or "")
  except (TypeError, OSError):
    code = ""
  return "|".join([name, code, *parts])


class _DiskUnitCache:
  """Small fully read units of *file-backed* tasks as .npz under $POLYLM_JAX_CACHE/units.

  The key covers what makes the tokens: task, split, shard, the files the source reads
  (path, size, mtime), the source's repr, every preprocessor (name, arguments, defining
  file's size and mtime), the vocabulary file and the seqio version. Function and TFDS
  sources are never cached (their data is not a set of local files).
  POLYLM_JAX_UNIT_DISK_CACHE=0 turns it off.
  """

  max_tokens = 1 << 20

  def enabled(self) -> bool:
    return os.environ.get("POLYLM_JAX_UNIT_DISK_CACHE", "1") != "0"

  def directory(self) -> str:
    return os.path.join(str(cache_root()), "units")

  def key(self, task: seqio.Task, split: str, shard: seqio.ShardInfo) -> Optional[str]:
    if not self.enabled():
      return None
    source = task.source
    if isinstance(source, (seqio.FunctionDataSource, seqio.TfdsDataSource)):
      return None
    try:
      shards = list(source.list_shards(split))
      paths = [f for f in shards if os.path.isfile(f)]
      paths += [f for f in _QUOTED_PATH.findall(repr(source)) if os.path.isfile(f)]
      if not paths:
        return None
      vocab = task.output_features[FEATURE].vocabulary
      vfile = getattr(vocab, "sentencepiece_model_file", None)
      vsig = (
        _file_sig(vfile)
        if vfile
        else f"{type(vocab).__name__}:{vocab.vocab_size}:{getattr(vocab, 'eos_id', None)}"
      )
      parts = [
        f"format={DISK_FORMAT}",
        f"seqio={seqio.__version__}",
        task.name,
        split,
        f"{shard.index}/{shard.num_shards}",
        repr(source),
        vsig,
        *sorted(_file_sig(f) for f in set(paths)),
        *(_callable_sig(p) for p in task.preprocessors),
      ]
    except (OSError, ValueError, TypeError, AttributeError):
      return None
    if any(" at 0x" in p for p in parts):  # an object repr with an address: unstable
      return None
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

  def _path(self, key: str) -> str:
    return os.path.join(self.directory(), f"{key}.npz")

  def get(self, key: Optional[str]):
    if key is None:
      return None
    path = self._path(key)
    if not os.path.exists(path):
      return None
    try:
      with np.load(path) as z:
        vals, splits = z["values"].astype(np.int32), z["splits"].astype(np.int64)
    except (OSError, ValueError, KeyError):
      return None
    if len(splits) < 1 or splits[-1] != len(vals):
      return None
    return vals, splits

  def put(self, key: Optional[str], vals: np.ndarray, splits: np.ndarray) -> None:
    if key is None or len(vals) > self.max_tokens:
      return
    buffer = io.BytesIO()
    np.savez(buffer, values=vals, splits=splits)
    try:
      files_lib.atomic_write(self._path(key), buffer.getvalue())  # readers never see half a file
    except OSError:  # a read-only or full cache: reading goes on without it
      pass


DISK_CACHE = _DiskUnitCache()


def _plan_units(
  task: seqio.Task, split: str, host: int, hosts: int, unit_bytes: int
) -> list[seqio.ShardInfo]:
  """This host's units: K of them, unit k = ShardInfo(host + k * hosts, K * hosts).

  With n files, K * hosts <= n makes seqio shard at the files, so unit k holds the files
  i = host + k * hosts (mod K * hosts): together the units of all hosts cover every file
  once. K grows with the host's bytes (one unit for a small local corpus, so it opens one
  seqio pipeline per task; about one file per unit for a web-scale corpus). With fewer files
  than hosts, the single unit is ShardInfo(host, hosts): seqio shards the examples.
  """
  try:
    files = list(task.source.list_shards(split))
  except Exception:  # e.g. TFDS metadata not available (mock data): let seqio decide
    return [seqio.ShardInfo(host, hosts)]
  n = len(files)
  if n < hosts or task.source.supports_arbitrary_sharding:
    return [seqio.ShardInfo(host, hosts)]
  try:
    size = sum(tf.io.gfile.stat(f).length for f in files[host::hosts])
    k = max(1, -(-size // max(1, unit_bytes)))
  except (tf.errors.OpError, OSError, ValueError):  # not paths (e.g. a function source)
    k = n // hosts
  k = min(k, n // hosts)
  return [seqio.ShardInfo(host + j * hosts, k * hosts) for j in range(k)]


class SourceReader:
  """One task's documents for one host, addressed by (epoch, unit, record).

  Units are what seqio can open directly (see `_plan_units`): groups of the host's input files,
  about `unit_bytes` each, or this host's example-level shard of a source with fewer files
  than hosts. A resume skips inside one unit at most. Unit order is re-permuted every epoch
  from a counter RNG; records within a unit keep the source order. Preprocessors run with a
  fixed seed per unit, so every epoch sees the same documents.

  workers: threads that tokenize a batch of records (fast path). threads_per_source: the
  tf.data thread pool of a seqio-read unit. fast=False (or POLYLM_JAX_FAST_READ=0) reads every
  task through seqio.
  """

  def __init__(
    self,
    task_name: str,
    split: str = "train",
    shard_index: int = 0,
    num_shards: int = 1,
    seed: int = 0,
    *,
    repeat: bool = True,
    read_batch: int = 256,
    unit_bytes: int = 64 << 20,
    workers: int = 1,
    threads_per_source: int = 2,
    fast: bool = True,
  ):
    if workers < 1 or threads_per_source < 1:
      raise ValueError(
        f"task {task_name!r}: workers ({workers}) and threads_per_source "
        f"({threads_per_source}) must be >= 1"
      )
    self.name, self.split, self.repeat = task_name, split, repeat
    self.shard_index, self.num_shards = shard_index, num_shards
    self.task = get_task(task_name, split)
    vocab = self.task.output_features[FEATURE].vocabulary
    self.eos_id = getattr(vocab, "eos_id", None)
    self.units = _plan_units(self.task, split, shard_index, num_shards, unit_bytes)
    self._seed = seed
    self._key = (seed, mixing.stable_u64("units", task_name, split, shard_index, num_shards))
    self._read_batch = read_batch
    self._workers, self._threads = workers, threads_per_source
    fast = fast and os.environ.get("POLYLM_JAX_FAST_READ", "1") != "0"
    self.plan = text_units.plan_for(self.task, split) if fast else None
    self.position: Position = (0, 0, 0)
    self._it = None
    self._vals = np.empty(0, np.int32)
    self._splits = np.zeros(1, np.int64)
    self._row = 0
    self._empty_units = 0
    self._docs_since_open = 0
    self._opened_at = 0
    self._exhausted = False
    self._recording: Optional[list] = None
    self._cache_key: tuple = ()
    self._disk_key: Optional[str] = None

  def _unit_order(self, epoch: int) -> np.ndarray:
    bits = np.random.Philox(
      key=np.array(self._key, np.uint64), counter=np.array([epoch, 0, 0, 0], np.uint64)
    )
    return np.random.Generator(bits).permutation(len(self.units))

  def seek(self, position: Sequence[int]) -> None:
    position = tuple(int(x) for x in position)
    if len(position) != 3 or min(position) < 0 or position[1] >= len(self.units):
      raise ValueError(
        f"task {self.name!r}: bad position {position} (epoch, unit < {len(self.units)}, record)"
      )
    if position != self.position or self._it is None:
      self.position, self._it, self._exhausted = position, None, False

  def _open(self) -> None:
    epoch, unit, record = self.position
    shard = self.units[self._unit_order(epoch)[unit]]
    self._docs_since_open, self._opened_at = 0, record
    self._cache_key = (self.name, self.split, shard.index, shard.num_shards)
    cached = UNIT_CACHE.get(self._cache_key, self.task)
    self._disk_key = None
    if cached is None and self.plan is not None:
      self._open_text(shard, record)
      if self._it is not None:
        return
      cached = self._vals, self._splits
    if cached is None:
      self._disk_key = DISK_CACHE.key(self.task, self.split, shard)
      cached = DISK_CACHE.get(self._disk_key)
      if cached is not None:
        UNIT_CACHE.put(self._cache_key, self.task, *cached)
    if cached is not None:
      self._vals, self._splits = cached
      self._row, self._it, self._recording = record, iter(()), None
      return
    ds = self.task.get_dataset(
      sequence_length=None,
      split=self.split,
      use_cached=False,
      shuffle=False,
      seed=int(mixing.stable_u64(self._seed, self.name, shard.index) % 2**31),
      shard_info=shard if shard.num_shards > 1 else None,
      num_epochs=1,
      trim_output_features=False,
      try_in_mem_cache=False,
    )
    ds = ds.map(_targets)
    if record:
      ds = ds.skip(record)
    options = tf.data.Options()
    options.threading.private_threadpool_size = self._threads
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False  # no model thread, no pools grown past the bound
    ds = ds.ragged_batch(self._read_batch).prefetch(2).with_options(options)
    self._it = _as_numpy(iter(ds))
    self._vals, self._splits, self._row = np.empty(0, np.int32), np.zeros(1, np.int64), 0
    self._recording = [] if record == 0 else None

  def _open_text(self, shard: seqio.ShardInfo, record: int) -> None:
    """Open a unit on the fast path; a small one is read whole (then `_it` stays None)."""
    vocab = self.task.output_features[FEATURE].vocabulary
    try:
      unit = text_units.TextUnit(self.plan, shard, vocab, self._workers)
    except text_units.RecordError as e:
      raise DataError(f"task {self.name!r} split {self.split!r}: {e}") from None
    whole = unit.whole()
    if whole is not None:
      UNIT_CACHE.put(self._cache_key, self.task, *whole)
      self._vals, self._splits, self._it = whole[0], whole[1], None
      return
    self._it = unit.chunks(record)
    self._vals, self._splits, self._row = np.empty(0, np.int32), np.zeros(1, np.int64), 0
    self._recording = [] if record == 0 else None

  def _fetch(self) -> bool:
    """Next ragged batch of the open unit; False at its end."""
    try:
      vals, splits = next(self._it)
    except (StopIteration, tf.errors.InvalidArgumentError) as e:
      # a task's own "yielded no examples" check fires on an empty unit (e.g. a file
      # whose lines all went to another split); emptiness of the whole task is ours
      if isinstance(e, tf.errors.InvalidArgumentError) and (
        "yielded no examples" not in str(e) or self._docs_since_open or self._opened_at
      ):
        raise data_error(e, f"task {self.name!r} split {self.split!r}") from None
      rec = self._recording
      if rec is not None:
        vals = np.concatenate([v for v, _ in rec]) if rec else np.empty(0, np.int32)
        offsets = np.cumsum([0] + [len(v) for v, _ in rec])
        splits = np.concatenate([[0]] + [sp[1:] + o for (_, sp), o in zip(rec, offsets)]).astype(
          np.int64
        )
        UNIT_CACHE.put(self._cache_key, self.task, vals, splits)
        DISK_CACHE.put(self._disk_key, vals, splits)
        self._recording = None
      return False
    self._vals = vals.astype(np.int32, copy=False)
    self._splits, self._row = splits, 0
    if self._recording is not None:
      self._recording.append((self._vals, self._splits))
      if sum(len(v) for v, _ in self._recording) > UNIT_CACHE.max_tokens:
        self._recording = None
    return True

  def next_doc(self) -> Optional[tuple[np.ndarray, Position]]:
    """(tokens, position of this document), or None at the end of a non-repeating source."""
    while True:
      if self._exhausted:
        return None
      if self._it is None:
        self._open()
      if self._row + 1 >= len(self._splits):
        if not self._fetch() and not self._next_unit():
          return None
        continue
      pos = self.position
      a, b = self._splits[self._row], self._splits[self._row + 1]
      self._row += 1
      self.position = (pos[0], pos[1], pos[2] + 1)
      if b == a:
        continue
      self._empty_units = 0
      self._docs_since_open += 1
      doc = self._vals[a:b]
      if self.eos_id is not None and doc[-1] != self.eos_id:
        doc = np.append(doc, np.int32(self.eos_id))
      return doc, pos

  def _next_unit(self) -> bool:
    epoch, unit, _ = self.position
    if self._docs_since_open == 0 and self._opened_at == 0:
      self._empty_units += 1
    if self.repeat and self._empty_units >= len(self.units):
      raise ValueError(
        f"task {self.name!r} split {self.split!r} yielded no examples for host shard "
        f"{self.shard_index} of {self.num_shards}"
      )
    unit += 1
    if unit == len(self.units):
      if not self.repeat:
        self._exhausted = True
        return False
      epoch, unit = epoch + 1, 0
    self.position, self._it = (epoch, unit, 0), None
    return True


def _as_numpy(batches) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(values, row splits) of a seqio unit's ragged batches."""
  for rb in batches:
    yield rb.values.numpy(), rb.row_splits.numpy()


@functools.lru_cache(maxsize=None)
def task_stats(task_name: str, split: str = "train") -> tuple[int, int]:
  """(documents, tokens) of a whole split; reads all of it, so local corpora only."""
  reader = SourceReader(task_name, split, repeat=False)
  docs = tokens = 0
  while (item := reader.next_doc()) is not None:
    docs, tokens = docs + 1, tokens + len(item[0])
  if docs == 0:
    raise ValueError(f"task {task_name!r} split {split!r} yielded no examples")
  return docs, tokens
