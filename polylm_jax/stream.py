"""From seqio tasks to packed, resumable, host-sharded training batches.

Batch contract (`PackedStream.next()`; every array is [batch, seq_len]):
  inputs, targets   int32: a row holds seq_len + 1 consecutive stream tokens; inputs = row[:-1],
                    targets = row[1:]. Row r of the stream covers tokens [r*T, r*T + T], so the
                    last token of a row is the first of the next (Megatron's layout) and every
                    token after the first is a target exactly once.
  loss_weights      float32, explicit. NEVER derive it from `token != 0`: PolyLM's id 0 is <unk>,
                    a real token. Training rows are all 1.0 (loss on every token); only eval
                    padding gets 0.0 (its token id is 0 too, but the weight is what counts).
  positions         int32.  segment_ids int32.
  langs             int32 index into mixing.languages() of the *target* token's document
                    (bitext counts toward its non-English side); -1 = padding or unknown.
Documents are the tasks' 'targets' (ending in eos, id 2 for PolyLM; appended if missing) joined
back to back. Released recipe (segment_aware=False): no reset at boundaries, segment_ids all 1,
positions 0..T-1. segment_aware=True: each eos *input* token starts the next document's segment
(it plays bos), as does every row start; positions restart at 0 and segment ids count 1, 2, ...
per row, so attention can be masked across documents.

State (`state()`, JSON-serialisable, O(number of sources)): step, stage, the scheduler's token
counts and decision counter, every source's (epoch, unit, record) position, the document being
packed as (task, position, offset) and the one carried boundary token. No example buffers:
restoring re-reads at most one unit's prefix (a file shard, or the host's slice of a one-file
source), never the data already consumed. Mixing randomness is counter-based (Philox keyed by
seed, stage and host), so it needs no saved generator state.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from polylm_jax import curriculum as curriculum_lib
from polylm_jax import mixing

STATE_VERSION = 1
FEATURE = "targets"
Position = tuple[int, int, int]  # (epoch, unit, record)


def _get_task(name: str, split: str) -> seqio.Task:
    try:
        task = seqio.get_mixture_or_task(name)
    except ValueError as e:
        raise ValueError(f"task {name!r} is not registered with seqio "
                         "(import tasks first?)") from e
    if not isinstance(task, seqio.Task):
        raise ValueError(f"{name!r} is a seqio Mixture; a stream source must be a Task")
    if split not in task.splits:
        raise ValueError(f"task {name!r} has no split {split!r}; it has {list(task.splits)}")
    if FEATURE not in task.output_features:
        raise ValueError(f"task {name!r} has no output feature {FEATURE!r}")
    return task


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


def _plan_units(task: seqio.Task, split: str, host: int, hosts: int,
                unit_bytes: int) -> list[seqio.ShardInfo]:
    """This host's units: K of them, unit k = ShardInfo(host + k * hosts, K * hosts).

    With n files, K * hosts <= n makes seqio shard at the files, so unit k holds the files
    i = host + k * hosts (mod K * hosts): together the units of all hosts cover every file
    once. K grows with the host's bytes (one unit for a small local corpus, so it opens one
    seqio pipeline per task; about one file per unit for a web-scale corpus). With fewer files
    than hosts, the single unit is ShardInfo(host, hosts): seqio shards the examples.
    """
    files = list(task.source.list_shards(split))
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
    """

    def __init__(self, task_name: str, split: str = "train", shard_index: int = 0,
                 num_shards: int = 1, seed: int = 0, *, repeat: bool = True,
                 read_batch: int = 256, unit_bytes: int = 64 << 20):
        self.name, self.split, self.repeat = task_name, split, repeat
        self.shard_index, self.num_shards = shard_index, num_shards
        self.task = _get_task(task_name, split)
        vocab = self.task.output_features[FEATURE].vocabulary
        self.eos_id = getattr(vocab, "eos_id", None)
        self.units = _plan_units(self.task, split, shard_index, num_shards, unit_bytes)
        self._seed = seed
        self._key = (seed, mixing.stable_u64("units", task_name, split, shard_index, num_shards))
        self._read_batch = read_batch
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

    def _unit_order(self, epoch: int) -> np.ndarray:
        bits = np.random.Philox(key=np.array(self._key, np.uint64),
                                counter=np.array([epoch, 0, 0, 0], np.uint64))
        return np.random.Generator(bits).permutation(len(self.units))

    def seek(self, position: Sequence[int]) -> None:
        position = tuple(int(x) for x in position)
        if len(position) != 3 or min(position) < 0 or position[1] >= len(self.units):
            raise ValueError(f"task {self.name!r}: bad position {position} "
                             f"(epoch, unit < {len(self.units)}, record)")
        if position != self.position or self._it is None:
            self.position, self._it, self._exhausted = position, None, False

    def _open(self) -> None:
        epoch, unit, record = self.position
        shard = self.units[self._unit_order(epoch)[unit]]
        self._docs_since_open, self._opened_at = 0, record
        self._cache_key = (self.name, self.split, shard.index, shard.num_shards)
        cached = UNIT_CACHE.get(self._cache_key, self.task)
        if cached is not None:
            self._vals, self._splits = cached
            self._row, self._it, self._recording = record, iter(()), None
            return
        ds = self.task.get_dataset(
            sequence_length=None, split=self.split, use_cached=False, shuffle=False,
            seed=int(mixing.stable_u64(self._seed, self.name, shard.index) % 2**31),
            shard_info=shard, num_epochs=1, trim_output_features=False, try_in_mem_cache=False)
        ds = ds.map(_targets)
        if record:
            ds = ds.skip(record)
        self._it = iter(ds.ragged_batch(self._read_batch).prefetch(2))
        self._vals, self._splits, self._row = np.empty(0, np.int32), np.zeros(1, np.int64), 0
        self._recording = [] if record == 0 else None

    def _fetch(self) -> bool:
        """Next ragged batch of the open unit; False at its end."""
        try:
            rb = next(self._it)
        except (StopIteration, tf.errors.InvalidArgumentError) as e:
            # a task's own "yielded no examples" check fires on an empty unit (e.g. a file
            # whose lines all went to another split); emptiness of the whole task is ours
            if isinstance(e, tf.errors.InvalidArgumentError) and (
                    "yielded no examples" not in str(e) or self._docs_since_open
                    or self._opened_at):
                raise
            rec = self._recording
            if rec is not None:
                vals = np.concatenate([v for v, _ in rec]) if rec else np.empty(0, np.int32)
                offsets = np.cumsum([0] + [len(v) for v, _ in rec])
                splits = np.concatenate([[0]] + [sp[1:] + o for (_, sp), o in
                                                 zip(rec, offsets)]).astype(np.int64)
                UNIT_CACHE.put(self._cache_key, self.task, vals, splits)
                self._recording = None
            return False
        self._vals = rb.values.numpy().astype(np.int32, copy=False)
        self._splits, self._row = rb.row_splits.numpy(), 0
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
                f"{self.shard_index} of {self.num_shards}")
        unit += 1
        if unit == len(self.units):
            if not self.repeat:
                self._exhausted = True
                return False
            epoch, unit = epoch + 1, 0
        self.position, self._it = (epoch, unit, 0), None
        return True


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


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """A resolved stage: tasks with their token shares and language indices (-1 unknown)."""
    name: str
    tasks: tuple[str, ...]
    shares: tuple[float, ...]
    langs: tuple[int, ...]

    def fingerprint(self) -> str:
        return f"{self.name}:" + ",".join(
            f"{t}={s:.9f}" for t, s in zip(self.tasks, self.shares))


def plan_stage(m: mixing.StageMixture, split: str = "train") -> StagePlan:
    """Token shares per component of a stage mixture (counting tokens when it has no counts)."""
    lang_shares = mixing.stage_language_shares(m, lambda t: task_stats(t, split)[1])
    shares = mixing.component_shares(m, lang_shares)
    keep = [i for i, s in enumerate(shares) if s > 0]
    return StagePlan(m.name, tuple(m.components[i].task for i in keep),
                     tuple(shares[i] for i in keep),
                     tuple(mixing.language_index(m.components[i].language) for i in keep))


def _lang_or_unknown(task: str) -> int:
    lang = mixing.language_of_task(task)
    return mixing.language_index(lang) if lang else -1


def resolve(name: str, train_steps: Optional[int] = None,
            split: str = "train") -> tuple[list[StagePlan], tuple[int, ...]]:
    """Stages and their first steps for MIXTURE_OR_TASK_NAME.

    Looked up in this order: a curriculum (polylm_jax.curriculum), a stage mixture
    (polylm_jax.mixing), a seqio Mixture (its rates are taken as *token* shares), a seqio Task.
    """
    if name in curriculum_lib.curriculum_names():
        c = curriculum_lib.get_curriculum(name)
        return ([plan_stage(mixing.get_stage_mixture(m), split) for m in c.mixtures],
                c.boundaries(train_steps))
    if name in mixing.stage_mixture_names():
        return [plan_stage(mixing.get_stage_mixture(name), split)], (0,)
    try:
        provider = seqio.get_mixture_or_task(name)
    except ValueError as e:
        raise ValueError(f"MIXTURE_OR_TASK_NAME={name!r} names no curriculum, stage mixture, "
                         "seqio Mixture or Task (import tasks first?)") from e
    if isinstance(provider, seqio.Mixture):
        tasks = [t.name for t in provider.tasks]
        rates = [float(provider.get_rate(t)) for t in provider.tasks]
        if any(not np.isfinite(r) or r < 0 for r in rates) or sum(rates) <= 0:
            raise ValueError(f"seqio mixture {name!r}: rates must be >= 0 and not all zero, "
                             f"got {dict(zip(tasks, rates))}")
        total = sum(rates)
        keep = [i for i, r in enumerate(rates) if r > 0]
        return [StagePlan(name, tuple(tasks[i] for i in keep),
                          tuple(rates[i] / total for i in keep),
                          tuple(_lang_or_unknown(tasks[i]) for i in keep))], (0,)
    return [StagePlan(name, (name,), (1.0,), (_lang_or_unknown(name),))], (0,)


class PackedStream:
    """Packed training batches for one host; see the module docstring for the contract."""

    def __init__(self, stages: Sequence[StagePlan], boundaries: Sequence[int] = (0,), *,
                 seq_len: int, batch_size: int, seed: int = 0, shard_index: int = 0,
                 num_shards: int = 1, segment_aware: bool = False, split: str = "train",
                 name: str = "", jitter_tokens: float = 64.0, read_batch: int = 256,
                 unit_bytes: int = 64 << 20):
        for flag, v in (("seq_len", seq_len), ("batch_size", batch_size),
                        ("num_shards", num_shards)):
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{flag} must be a positive int, got {v!r}")
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
        if not stages or len(stages) != len(boundaries) or boundaries[0] != 0:
            raise ValueError(f"stream {name!r}: {len(stages)} stages vs boundaries "
                             f"{tuple(boundaries)} (the first must be 0)")
        self.stages, self.boundaries = list(stages), tuple(int(b) for b in boundaries)
        self.seq_len, self.batch_size, self.seed = int(seq_len), int(batch_size), int(seed)
        self.shard_index, self.num_shards = int(shard_index), int(num_shards)
        self.segment_aware, self.split, self.name = bool(segment_aware), split, name
        self._jitter, self._read_batch, self._unit_bytes = jitter_tokens, read_batch, unit_bytes
        self._readers: dict[str, SourceReader] = {}
        self.step = 0
        self._stage = -1
        self._sched: Optional[mixing.TokenScheduler] = None
        self._doc: Optional[tuple[str, int, np.ndarray, Position]] = None  # task, lang, toks, pos
        self._doc_off = 0
        self._carry: Optional[tuple[int, int, int]] = None  # token, lang, ends-a-document
        for st in self.stages:  # fail at build time, not mid-run
            for t in st.tasks:
                self._reader(t)

    def _config(self) -> dict:
        return {"name": self.name, "seq_len": self.seq_len, "batch_size": self.batch_size,
                "seed": self.seed, "shard_index": self.shard_index,
                "num_shards": self.num_shards, "segment_aware": self.segment_aware,
                "split": self.split,
                "stages": [s.fingerprint() for s in self.stages]}

    def _reader(self, task: str) -> SourceReader:
        if task not in self._readers:
            self._readers[task] = SourceReader(task, self.split, self.shard_index,
                                               self.num_shards, self.seed,
                                               read_batch=self._read_batch,
                                               unit_bytes=self._unit_bytes)
        return self._readers[task]

    @property
    def stage(self) -> int:
        return curriculum_lib.stage_at(self.step, self.boundaries)

    def _enter_stage(self, stage: int) -> None:
        plan = self.stages[stage]
        key = (self.seed, mixing.stable_u64("mix", stage, plan.name, self.shard_index,
                                            self.num_shards))
        self._sched = mixing.TokenScheduler(plan.shares, key, self._jitter)
        self._stage = stage

    def _next_doc(self) -> None:
        plan = self.stages[self._stage]
        i = self._sched.choose()
        item = self._reader(plan.tasks[i]).next_doc()
        assert item is not None  # training readers repeat
        tokens, pos = item
        self._sched.add(i, len(tokens))
        self._doc, self._doc_off = (plan.tasks[i], plan.langs[i], tokens, pos), 0

    def _take(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next n stream tokens, their languages, and whether each ends a document."""
        toks, langs, ends = [], [], []
        while n > 0:
            if self._doc is None or self._doc_off >= len(self._doc[2]):
                self._next_doc()
            _, lang, doc, _ = self._doc
            k = min(n, len(doc) - self._doc_off)
            toks.append(doc[self._doc_off:self._doc_off + k])
            langs.append(np.full(k, lang, np.int32))
            e = np.zeros(k, bool)
            self._doc_off += k
            e[-1] = self._doc_off == len(doc)
            ends.append(e)
            n -= k
        return np.concatenate(toks), np.concatenate(langs), np.concatenate(ends)

    def next(self) -> dict[str, np.ndarray]:
        stage = self.stage
        if stage != self._stage:
            if self._stage >= 0:
                self._doc = None  # every target of a new stage comes from its own sources
            self._enter_stage(stage)
        B, T = self.batch_size, self.seq_len
        if self._carry is None:
            toks, langs, ends = self._take(B * T + 1)
        else:
            t, l, e = self._take(B * T)
            toks = np.concatenate([[self._carry[0]], t]).astype(np.int32)
            langs = np.concatenate([[self._carry[1]], l]).astype(np.int32)
            ends = np.concatenate([[bool(self._carry[2])], e])
        self._carry = (int(toks[-1]), int(langs[-1]), int(ends[-1]))
        self.step += 1
        return pack_rows(toks, langs, ends, B, T, self.segment_aware)

    __next__ = next

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def state(self) -> dict:
        """Small JSON-serialisable resume state (see module docstring)."""
        doc = None
        if self._doc is not None and self._doc_off < len(self._doc[2]):
            task, lang, _, pos = self._doc
            doc = {"task": task, "lang": lang, "position": list(pos), "offset": self._doc_off}
        return {
            "version": STATE_VERSION,
            "config": self._config(),
            "step": self.step,
            "stage": self._stage,
            "scheduler": self._sched.state() if self._sched is not None else None,
            "sources": {t: list(r.position) for t, r in self._readers.items()},
            "doc": doc,
            "carry": list(self._carry) if self._carry is not None else None,
        }

    def restore(self, state: Mapping) -> None:
        """Continue exactly where `state()` was taken; costs at most one unit prefix per source."""
        state = json.loads(json.dumps(state))  # accept what came back from a checkpoint
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"stream state version {state.get('version')!r}, "
                             f"expected {STATE_VERSION}")
        mine, saved = self._config(), state["config"]
        diff = [k for k in mine if mine[k] != saved.get(k)]
        if diff:
            raise ValueError("stream state does not match this stream: " + "; ".join(
                f"{k}: saved {saved.get(k)!r}, now {mine[k]!r}" for k in diff))
        self.step = int(state["step"])
        self._stage, self._sched = -1, None
        if state["stage"] >= 0:
            self._enter_stage(int(state["stage"]))
            self._sched.restore(state["scheduler"])
        self._doc, self._doc_off = None, 0
        if state["doc"] is not None:
            d = state["doc"]
            reader = self._reader(d["task"])
            reader.seek(d["position"])
            item = reader.next_doc()
            if item is None or item[1] != tuple(d["position"]):
                raise ValueError(f"task {d['task']!r}: document at {d['position']} is gone; "
                                 "has the data changed since the state was saved?")
            self._doc, self._doc_off = (d["task"], int(d["lang"]), item[0], item[1]), d["offset"]
        for task, pos in state["sources"].items():
            self._reader(task).seek(pos)
        c = state["carry"]
        self._carry = tuple(int(x) for x in c) if c is not None else None


def pack_rows(toks: np.ndarray, langs: np.ndarray, ends: np.ndarray, B: int, T: int,
              segment_aware: bool, weights: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """B*T+1 stream tokens -> the batch dict (rows overlap by one token)."""
    inputs = toks[:-1].reshape(B, T).astype(np.int32)
    batch = {
        "inputs": inputs,
        "targets": toks[1:].reshape(B, T).astype(np.int32),
        "loss_weights": (np.ones((B, T), np.float32) if weights is None
                         else weights[1:].reshape(B, T).astype(np.float32)),
        "langs": langs[1:].reshape(B, T).astype(np.int32),
    }
    if segment_aware:
        starts = ends[:-1].reshape(B, T).copy()
        starts[:, 0] = True
        idx = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))
        last = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
        batch["positions"] = (idx - last).astype(np.int32)
        batch["segment_ids"] = np.cumsum(starts, axis=1, dtype=np.int32)
    else:
        batch["positions"] = np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy()
        batch["segment_ids"] = np.ones((B, T), np.int32)
    return batch


def per_host_batch_size(global_batch_size: int, num_hosts: int) -> int:
    """BATCH_SIZE split over hosts; a clear error when it does not divide."""
    if global_batch_size <= 0 or num_hosts <= 0 or global_batch_size % num_hosts:
        raise ValueError(f"BATCH_SIZE={global_batch_size} must be a positive multiple of the "
                         f"host count {num_hosts}")
    return global_batch_size // num_hosts


def build_stream(name: str, seq_len: int, batch_size: int, *, seed: int = 0,
                 shard_index: int = 0, num_shards: int = 1,
                 train_steps: Optional[int] = None, segment_aware: bool = False,
                 split: str = "train", **kwargs) -> PackedStream:
    """The trainer's entry point: MIXTURE_OR_TASK_NAME -> a per-host PackedStream.

    batch_size is per host (see per_host_batch_size); train_steps places the curriculum's
    stage boundaries (needed only when a stage starts at a fraction of training).
    """
    stages, boundaries = resolve(name, train_steps, split)
    return PackedStream(stages, boundaries, seq_len=seq_len, batch_size=batch_size, seed=seed,
                        shard_index=shard_index, num_shards=num_shards,
                        segment_aware=segment_aware, split=split, name=name, **kwargs)


def eval_tasks(name: str, split: str = "validation") -> dict[str, tuple[str, ...]]:
    """Held-out tasks per language for MIXTURE_OR_TASK_NAME: its monolingual tasks (all stages).

    The held-out data is each task's `split` ('validation': the documents the task keeps out of
    'train'). Bitext tasks are left out so each language's loss is measured on that language.
    """
    stages, _ = resolve(name, train_steps=1, split="train")
    out: dict[str, list[str]] = {}
    for plan in stages:
        for task, lang in zip(plan.tasks, plan.langs):
            if lang < 0 or mixing.is_bitext_task(task):
                continue
            _get_task(task, split)  # clear error if the split is missing
            tasks = out.setdefault(mixing.languages()[lang], [])
            if task not in tasks:
                tasks.append(task)
    return {lang: tuple(out[lang]) for lang in mixing.languages() if lang in out}


def eval_batches(tasks: Sequence[str], seq_len: int, batch_size: int, *,
                 split: str = "validation", shard_index: int = 0, num_shards: int = 1,
                 segment_aware: bool = False,
                 num_batches: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
    """Finite, deterministic packed batches: `tasks` read once, in order, packed like training.

    The last batch is padded with token 0 at loss weight 0.0 and langs -1 (which is why the
    weights are explicit). num_batches: exactly that many batches (cut short, or padded with
    all-zero-weight batches) -- pass the same number on every host so that they stay in step.
    """
    if seq_len <= 0 or batch_size <= 0:
        raise ValueError(f"seq_len and batch_size must be > 0, got {seq_len}, {batch_size}")
    B, T = batch_size, seq_len
    need = B * T + 1
    readers = [SourceReader(t, split, shard_index, num_shards, seed=0, repeat=False)
               for t in tasks]
    langs_of = [_lang_or_unknown(t) for t in tasks]
    buf_t: list[np.ndarray] = []
    buf_l: list[np.ndarray] = []
    buf_e: list[np.ndarray] = []
    held = produced = 0

    def emit(n_real: int) -> dict[str, np.ndarray]:
        toks = np.concatenate(buf_t) if buf_t else np.zeros(0, np.int32)
        lg = np.concatenate(buf_l) if buf_l else np.zeros(0, np.int32)
        en = np.concatenate(buf_e) if buf_e else np.zeros(0, bool)
        pad = need - n_real
        w = np.concatenate([np.ones(n_real, np.float32), np.zeros(pad, np.float32)])
        t = np.concatenate([toks[:n_real], np.zeros(pad, np.int32)])
        l = np.concatenate([lg[:n_real], np.full(pad, -1, np.int32)])
        e = np.concatenate([en[:n_real], np.zeros(pad, bool)])
        batch = pack_rows(t, l, e, B, T, segment_aware, weights=w)
        # keep the last real token as the first input of the next batch
        buf_t[:] = [toks[B * T:]] if len(toks) > B * T else []
        buf_l[:] = [lg[B * T:]] if len(lg) > B * T else []
        buf_e[:] = [en[B * T:]] if len(en) > B * T else []
        return batch

    for reader, lang in zip(readers, langs_of):
        while (item := reader.next_doc()) is not None:
            doc = item[0]
            buf_t.append(doc)
            buf_l.append(np.full(len(doc), lang, np.int32))
            e = np.zeros(len(doc), bool)
            e[-1] = True
            buf_e.append(e)
            held += len(doc)
            while held >= need:
                if num_batches is not None and produced >= num_batches:
                    return
                yield emit(need)
                held -= B * T
                produced += 1
    if held > 1 and (num_batches is None or produced < num_batches):
        yield emit(held)
        produced += 1
    while num_batches is not None and produced < num_batches:
        buf_t.clear(), buf_l.clear(), buf_e.clear()
        yield emit(0)
        produced += 1
