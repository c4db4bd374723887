"""Documents of plain-text tasks read without tf.data, tokenized many at a time.

A seqio pipeline costs 0.3-1 s to open and 40-60 threads, and its per-document tf.data work
keeps the stream far below SentencePiece's own speed. Some tasks provably need none of it:
their documents are `vocab.encode(text) + [eos]` (seqio's `tokenize` then
`append_eos_after_trim`, nothing after but pass-through checks) of text records that a
*provider* can list per input file. Providers live with the sources they understand (tasks/
registers them: `register_provider`), so SeqIO stays where tasks are defined and this library
never imports tasks/. For such a task a unit (readers.SourceReader) is built here with the same
documents in the same order as seqio's pipeline: tf.data's deterministic interleave over the
unit's files, seqio's choice between sharding files and sharding examples, records the
preprocessors drop left out, and one SentencePiece call per batch of records (its records
split over `workers` threads; with workers > 1 each unit's next chunk is tokenized ahead while
the reader packs this one). Any other task goes through seqio as before.

Small files are tokenized whole, once per process (`FILE_TOKENS`), so the shards of one source
that several streams of a process read (one per data shard) share that work.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
import threading
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import seqio

FEATURE = "targets"
Records = list  # list[Optional[bytes]]: one file's records; None = dropped by the task
EAGER_BYTES = 256 << 10  # units of files up to this size are tokenized whole
CHUNK_RECORDS = 1024  # records per SentencePiece call in a larger unit (the first: 1/32)
MIN_RECORDS_PER_THREAD = 16  # fewer per thread: starting a thread costs more than it saves
AHEAD_THREADS = 2  # threads that submit chunks ahead (SentencePiece's own threads do the work)


class RecordError(ValueError):
  """A bad record, as "<file> line <n>: <what>"; the reader adds the task and split."""


@dataclasses.dataclass(frozen=True)
class TextPlan:
  """A provider's account of one task split.

  files: the source's shards in `list_shards` order (file-level sharding takes files[i::n]).
  read: one file's records in source order (split filter applied), each the exact bytes the
    task tokenizes, or None where the task's preprocessors drop the record.
  cycle_length, block_length: the source's tf.data interleave over its files.
  signature: what makes the text besides the files' bytes (part of the cache key).
  """

  files: tuple[str, ...]
  read: Callable[[str], Records]
  cycle_length: int
  block_length: int
  signature: str


Provider = Callable[[seqio.Task, str], Optional[TextPlan]]
_PROVIDERS: list[Provider] = []


def register_provider(provider: Provider) -> None:
  """Add a provider: (task, split) -> TextPlan, or None for a task it does not vouch for."""
  if provider not in _PROVIDERS:
    _PROVIDERS.append(provider)


def is_tokenize_then_eos(preprocessors: Sequence) -> bool:
  """Whether `preprocessors` start with exactly seqio's tokenize (copy_pretokenized=False) and
  append_eos_after_trim, the two steps this module replaces."""
  if len(preprocessors) < 2:
    return False
  tok, eos = preprocessors[0], preprocessors[1]
  return (
    isinstance(tok, functools.partial)
    and tok.func is seqio.preprocessors.tokenize
    and not tok.args
    and tok.keywords == {"copy_pretokenized": False}
    and eos is seqio.preprocessors.append_eos_after_trim
  )


def _plain_sentencepiece(vocab) -> bool:
  """A vocabulary whose Python tokenizer gives exactly what seqio's encode_tf gives."""
  base = seqio.SentencePieceVocabulary
  return (
    isinstance(vocab, base)
    and type(vocab)._encode_tf is base._encode_tf
    and type(vocab).tf_tokenizer is base.tf_tokenizer
    and type(vocab).tokenizer is base.tokenizer
    and not getattr(vocab, "_use_fast_tokenizer", False)
  )


def plan_for(task: seqio.Task, split: str) -> Optional[TextPlan]:
  """The first provider's plan for a task whose vocabulary and eos allow the fast path."""
  feature = task.output_features.get(FEATURE)
  if (
    feature is None
    or not feature.add_eos
    or not _plain_sentencepiece(feature.vocabulary)
    or task.source.supports_arbitrary_sharding
    or set(task.output_features) != {FEATURE}
  ):
    return None
  for provider in _PROVIDERS:
    plan = provider(task, split)
    if plan is not None:
      return plan
  return None


def interleave_order(counts: Sequence[int], cycle: int, block: int) -> tuple[np.ndarray, ...]:
  """(file, record) pairs in the order of tf.data's deterministic `interleave` over files with
  `counts` records, step for step as TensorFlow's InterleaveDataset: a slot whose file ran out
  is only found empty on its next visit, and refilled on the visit after that."""
  files = collections.deque(range(len(counts)))
  slots: list[Optional[list[int]]] = [None] * max(1, cycle)  # [file, next record]
  out_f, out_r = [], []
  i, live = 0, 0
  while files or live:
    slot = slots[i]
    if slot is None:
      if files:
        slots[i] = [files.popleft(), 0]
        live += 1
        continue
    else:
      f, pos = slot
      n = min(block, counts[f] - pos)
      if n > 0:
        out_f.append(np.full(n, f, np.int64))
        out_r.append(np.arange(pos, pos + n, dtype=np.int64))
        slot[1] = pos + n
      if n < block:  # found empty within this visit
        slots[i] = None
        live -= 1
    i = (i + 1) % len(slots)
  if not out_f:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  return np.concatenate(out_f), np.concatenate(out_r)


def encode(sp, texts: Sequence[bytes], eos: int, workers: int = 1) -> tuple[np.ndarray, ...]:
  """(values int32, row splits int64) of `texts` tokenized in one call, eos after each.

  SentencePiece returns each record's ids as a numpy buffer (no Python int per token) and
  holds no GIL while it encodes; the join is whole-array numpy, so a pool thread running
  this takes the GIL for about one small call per record. workers > 1: SentencePiece splits the
  records over that many threads of this call's own (a pool shared between calls would queue a
  small call behind a large one)."""
  n = len(texts)
  splits = np.zeros(n + 1, np.int64)
  if not n:
    return np.zeros(0, np.int32), splits
  threads = max(1, min(workers, n // MIN_RECORDS_PER_THREAD))
  ids = sp.encode(list(texts), num_threads=threads, out_type="numpy")
  np.cumsum(np.fromiter(map(len, ids), np.int64, n) + 1, out=splits[1:])
  vals = np.full(int(splits[-1]), eos, np.int32)
  body = np.ones(len(vals), bool)
  body[splits[1:] - 1] = False
  vals[body] = np.concatenate(ids)
  return vals, splits


def file_sig(path: str) -> str:
  try:
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"
  except OSError:  # not a local file (e.g. a split name standing for a file pair)
    return path


class _FileTokens:
  """Process-wide LRU of whole files' tokens: (values, splits over kept records, kept mask).

  A speed-up only, shared by every reader (and stream) of the process; never resume state.
  """

  def __init__(self, max_tokens: int = 1 << 25):
    self.max_tokens = max_tokens
    self._entries: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
    self._tokens = 0
    self._lock = threading.Lock()

  def get(self, key: tuple):
    with self._lock:
      entry = self._entries.get(key)
      if entry is not None:
        self._entries.move_to_end(key)
      return entry

  def put(self, key: tuple, entry: tuple) -> None:
    size = len(entry[0])
    with self._lock:
      if size > self.max_tokens or key in self._entries:
        return
      while self._entries and self._tokens + size > self.max_tokens:
        self._tokens -= len(self._entries.popitem(last=False)[1][0])
      self._entries[key] = entry
      self._tokens += size

  def clear(self) -> None:
    with self._lock:
      self._entries.clear()
      self._tokens = 0


FILE_TOKENS = _FileTokens()


class TextUnit:
  """One unit's documents: `len(unit)` records, read from `chunks(start)` as (values, splits)."""

  def __init__(
    self,
    plan: TextPlan,
    shard: Optional[seqio.ShardInfo],
    vocab: seqio.SentencePieceVocabulary,
    workers: int = 1,
    chunk: Optional[int] = None,
  ):
    files = list(plan.files)
    example_shard = None
    if shard is not None and shard.num_shards > 1:
      if len(files) >= shard.num_shards:  # seqio shards at the source: its files
        files = files[shard.index :: shard.num_shards]
      else:  # seqio shards the source's examples
        example_shard = shard
    self._sp, self._eos, self._workers = vocab.tokenizer, vocab.eos_id, workers
    self._chunk = chunk or CHUNK_RECORDS
    vsig = file_sig(vocab.sentencepiece_model_file)
    self._keys = [(plan.signature, vsig, file_sig(f)) for f in files]
    cached = [FILE_TOKENS.get(k) for k in self._keys]
    self._records: Optional[list[Records]] = None
    if any(c is None for c in cached):
      self._records = [plan.read(f) for f in files]
      if sum(len(r or b"") for recs in self._records for r in recs) <= EAGER_BYTES:
        for j, c in enumerate(cached):
          if c is None:
            cached[j] = self._tokenize_file(self._records[j])
            FILE_TOKENS.put(self._keys[j], cached[j])
        self._records = None
    kept = (
      [c[2] for c in cached]
      if self._records is None
      else [np.array([r is not None for r in recs], bool) for recs in self._records]
    )
    order_f, order_r = interleave_order(
      [len(k) for k in kept], plan.cycle_length, plan.block_length
    )
    if example_shard is not None:
      order_f = order_f[example_shard.index :: example_shard.num_shards]
      order_r = order_r[example_shard.index :: example_shard.num_shards]
    self._rec_off = np.cumsum([0] + [len(k) for k in kept])
    flat_kept = np.concatenate(kept) if kept else np.zeros(0, bool)
    keep = flat_kept[self._rec_off[order_f] + order_r]
    self._order_f, self._order_r = order_f[keep], order_r[keep]
    self._whole = None if self._records is not None else self._gather(cached)

  def __len__(self) -> int:
    return len(self._order_f)

  def _tokenize_file(self, records: Records) -> tuple[np.ndarray, ...]:
    kept = np.array([r is not None for r in records], bool)
    vals, splits = encode(self._sp, [r for r in records if r is not None], self._eos, self._workers)
    return vals, splits, kept

  def _gather(self, cached: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """The unit's documents from whole files' tokens, in one vectorised gather."""
    tok_off = np.cumsum([0] + [len(c[0]) for c in cached])
    kept_off = np.cumsum([0] + [len(c[1]) - 1 for c in cached])
    starts = np.concatenate([[0]] + [c[1][:-1] + o for c, o in zip(cached, tok_off)])[1:]
    lens = np.concatenate([[0]] + [np.diff(c[1]) for c in cached])[1:]
    rank = np.concatenate([[0]] + [np.cumsum(c[2]) - 1 + o for c, o in zip(cached, kept_off)])
    k = rank[1:][self._rec_off[self._order_f] + self._order_r].astype(np.int64)
    starts, lens = starts[k].astype(np.int64), lens[k].astype(np.int64)
    splits = np.zeros(len(self) + 1, np.int64)
    np.cumsum(lens, out=splits[1:])
    flat = np.concatenate([c[0] for c in cached]) if cached else np.zeros(0, np.int32)
    index = np.repeat(starts - splits[:-1], lens) + np.arange(splits[-1], dtype=np.int64)
    return flat[index].astype(np.int32, copy=False), splits

  def whole(self) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """All the unit's documents, when they were tokenized at opening (small files)."""
    return self._whole

  def chunks(self, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The documents from record `start` on, as (values, splits) batches; records before
    `start` are never tokenized."""
    if self._whole is not None:
      vals, splits = self._whole
      if start < len(self):
        yield vals[splits[start] :], splits[start:] - splits[start]
      return
    slices = self._slices(start)
    if self._workers <= 1:
      for sel in slices:
        yield self._encode(sel)
      return
    # workers > 1: while one chunk is packed the next is tokenized ahead, its records split
    # over `workers` SentencePiece threads (so one busy source uses them all), the call made
    # from one of AHEAD_THREADS threads. One chunk ahead per unit, so a unit read only briefly
    # wastes little; a chunk not started when it is needed is tokenized here instead.
    pool, ahead, sel = _ahead_pool(), None, next(slices, None)
    while sel is not None:
      if ahead is not None and not ahead.cancel():
        current = ahead.result()
      else:
        current = self._encode(sel, self._workers)
      sel = next(slices, None)
      ahead = None if sel is None else pool.submit(self._encode, sel, self._workers)
      yield current

  def _slices(self, start: int) -> Iterator[slice]:
    a, size = start, max(1, self._chunk // 32)  # small first: a fresh stream starts fast
    while a < len(self):
      yield slice(a, a + size)
      a, size = a + size, min(2 * size, self._chunk)

  def _encode(self, sel: slice, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The records in `sel`, listed and tokenized (in a pool thread, or the reader's)."""
    recs, files, rows = self._records, self._order_f[sel].tolist(), self._order_r[sel].tolist()
    return encode(self._sp, [recs[f][r] for f, r in zip(files, rows)], self._eos, workers)


_AHEAD: list[concurrent.futures.ThreadPoolExecutor] = []
_AHEAD_LOCK = threading.Lock()


def _ahead_pool() -> concurrent.futures.ThreadPoolExecutor:
  """The process's threads that tokenize chunks ahead (they wait on SentencePiece's threads,
  which release the GIL), shared by every unit and stream."""
  with _AHEAD_LOCK:
    if not _AHEAD:
      _AHEAD.append(concurrent.futures.ThreadPoolExecutor(AHEAD_THREADS, "polylm-tokenize"))
    return _AHEAD[0]
