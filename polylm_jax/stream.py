"""From seqio tasks to packed, resumable, host-sharded training batches.

The pre-training packer; its module functions and PackedStream are the interface of
polylm_jax/batch_stream.py (DataModule, BatchStream), which instruct_stream shares.

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
per row, so attention can be masked across documents. At a stage boundary the unfinished
document is dropped, so every target of the first batch of a stage comes from that stage.

Shares per batch: a stage's components form two lanes, non-English (every language but English,
bitext included; unknown languages too) and English. Each batch of N = batch * seq_len targets
holds one block of each lane; the non-English block has `mixing.lane_quota` tokens, so after
batch k of a stage the lane holds round((k + 1) * N * share) tokens, give or take
`boundary_slack * N`: the block ends at a document end within that slack when there is one
(with the sample corpus, always), else it is cut mid-document at the quota, and the next batch
makes up the difference. The lanes swap order every batch, so each lane's tokens run on across
batch boundaries: the stream is still whole documents joined by eos, each lane's documents in
order, with one lane change per batch (a segment start under segment_aware). Within a lane a
`mixing.TokenScheduler` picks documents by token deficit.

State (`state()`, JSON-serialisable, O(number of sources)): step, stage, per lane the
scheduler's token counts and decision counter, the document being packed as (task, position,
offset) and the lane's tokens so far in the stage; every source's (epoch, unit, record)
position and the one carried boundary token. No example buffers:
restoring re-reads at most one unit's prefix (a file shard, or the host's slice of a one-file
source), never the data already consumed. Mixing randomness is counter-based (Philox keyed by
seed, stage and host), so it needs no saved generator state.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import seqio

from polylm_jax import curriculum as curriculum_lib
from polylm_jax import mixing
from polylm_jax.batch_stream import (
  Batch,
  BatchStream,
  StagePlan,
  check_layout,
  check_rates,
  checked_state,
  exactly,
)
from polylm_jax.readers import (
  DISK_CACHE,  # noqa: F401  (re-exported)
  FEATURE,  # noqa: F401
  UNIT_CACHE,  # noqa: F401
  Position,  # noqa: F401
  SourceReader,
  get_task,
  task_stats,
)

STATE_VERSION = 2


def plan_stage(m: mixing.StageMixture, split: str = "train") -> StagePlan:
  """Token shares per component of a stage mixture (counting tokens when it has no counts)."""
  lang_shares = mixing.stage_language_shares(m, lambda t: task_stats(t, split)[1])
  shares = mixing.component_shares(m, lang_shares)
  keep = [i for i, s in enumerate(shares) if s > 0]
  return StagePlan(
    m.name,
    tuple(m.components[i].task for i in keep),
    tuple(shares[i] for i in keep),
    tuple(mixing.language_index(m.components[i].language) for i in keep),
  )


def _lang_or_unknown(task: str) -> int:
  lang = mixing.language_of_task(task)
  return mixing.language_index(lang) if lang else -1


def resolve(
  name: str, train_steps: Optional[int] = None, split: str = "train"
) -> tuple[list[StagePlan], tuple[int, ...]]:
  """Stages and their first steps for MIXTURE_OR_TASK_NAME.

  Looked up in this order: a curriculum (polylm_jax.curriculum), a stage mixture
  (polylm_jax.mixing), a seqio Mixture (its rates are taken as *token* shares), a seqio Task.
  """
  if name in curriculum_lib.curriculum_names():
    c = curriculum_lib.get_curriculum(name)
    return (
      [plan_stage(mixing.get_stage_mixture(m), split) for m in c.mixtures],
      c.boundaries(train_steps),
    )
  if name in mixing.stage_mixture_names():
    return [plan_stage(mixing.get_stage_mixture(name), split)], (0,)
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ValueError(
      f"MIXTURE_OR_TASK_NAME={name!r} names no curriculum, stage mixture, "
      "seqio Mixture or Task (import tasks first?)"
    ) from e
  if isinstance(provider, seqio.Mixture):
    tasks, rates = check_rates(
      f"seqio mixture {name!r}",
      [t.name for t in provider.tasks],
      [provider.get_rate(t) for t in provider.tasks],
    )
    total = sum(rates)
    return [
      StagePlan(
        name,
        tuple(tasks),
        tuple(r / total for r in rates),
        tuple(_lang_or_unknown(t) for t in tasks),
      )
    ], (0,)
  return [StagePlan(name, (name,), (1.0,), (_lang_or_unknown(name),))], (0,)


class _Lane:
  """Components of a stage that share one block per batch (see the module docstring)."""

  def __init__(self, comps: list[int], sched: mixing.TokenScheduler, sources: list[tuple]):
    self.comps, self.sched = comps, sched
    self.sources = sources  # per component: (task, lang, reader)
    self.doc: Optional[tuple[str, int, np.ndarray, Position]] = None  # task, lang, toks, pos
    self.off = 0
    self.size = 0  # tokens of doc
    self.tokens = 0  # targets emitted in this stage

  def remaining(self) -> int:
    return self.size - self.off

  def set_doc(self, doc: Optional[tuple[str, int, np.ndarray, Position]], off: int = 0) -> None:
    self.doc, self.off, self.size = doc, off, 0 if doc is None else len(doc[2])


class _Pieces:
  """A batch's tokens as pieces of documents: tokens, language, whether the piece ends its
  document (or segment); flat arrays are built once per batch, not per document."""

  def __init__(self):
    self.toks: list[np.ndarray] = []
    self.langs: list[int] = []
    self.ends: list[bool] = []

  def add(self, toks: np.ndarray, lang: int, end: bool) -> None:
    self.toks.append(toks)
    self.langs.append(lang)
    self.ends.append(end)

  def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lens = np.fromiter(map(len, self.toks), np.int64, len(self.toks))
    toks = np.concatenate(self.toks).astype(np.int32, copy=False)
    langs = np.repeat(np.array(self.langs, np.int32), lens)
    ends = np.zeros(len(toks), bool)
    ends[np.cumsum(lens)[np.array(self.ends, bool)] - 1] = True
    return toks, langs, ends


class PackedStream(BatchStream):
  """Packed training batches for one host; see the module docstring for the contract."""

  def __init__(
    self,
    stages: Sequence[StagePlan],
    boundaries: Sequence[int] = (0,),
    *,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
    segment_aware: bool = False,
    split: str = "train",
    name: str = "",
    jitter_tokens: float = 64.0,
    boundary_slack: float = 0.015,
    read_batch: int = 256,
    unit_bytes: int = 64 << 20,
    workers: int = 1,
    threads_per_source: int = 2,
  ):
    check_layout(seq_len, batch_size, shard_index, num_shards)
    if not 0.0 <= boundary_slack <= 0.5:
      raise ValueError(f"boundary_slack must be in [0, 0.5], got {boundary_slack}")
    if not stages or len(stages) != len(boundaries) or boundaries[0] != 0:
      raise ValueError(
        f"stream {name!r}: {len(stages)} stages vs boundaries "
        f"{tuple(boundaries)} (the first must be 0)"
      )
    self.stages, self.boundaries = list(stages), tuple(int(b) for b in boundaries)
    self.seq_len, self.batch_size, self.seed = int(seq_len), int(batch_size), int(seed)
    self.shard_index, self.num_shards = int(shard_index), int(num_shards)
    self.segment_aware, self.split, self.name = bool(segment_aware), split, name
    self._jitter, self._read_batch, self._unit_bytes = jitter_tokens, read_batch, unit_bytes
    self._workers, self._threads = workers, threads_per_source
    self._slack = int(boundary_slack * self.batch_size * self.seq_len)
    self._readers: dict[str, SourceReader] = {}
    self._config_cache: Optional[dict] = None
    self.step = 0
    self._stage = -1
    self._lanes: list[_Lane] = []
    self._lane0_share = 1.0
    self._carry: Optional[tuple[int, int, int]] = None  # token, lang, ends-a-document
    for st in self.stages:  # fail at build time, not mid-run
      for t in st.tasks:
        self._reader(t)

  def _config(self) -> dict:
    if self._config_cache is None:
      self._config_cache = self._make_config()
    return dict(self._config_cache)

  def _make_config(self) -> dict:
    return {
      "name": self.name,
      "seq_len": self.seq_len,
      "batch_size": self.batch_size,
      "seed": self.seed,
      "shard_index": self.shard_index,
      "num_shards": self.num_shards,
      "segment_aware": self.segment_aware,
      "split": self.split,
      "boundary_slack_tokens": self._slack,
      "stages": [f"{s.name}:{mixing.stable_u64(s.fingerprint()):016x}" for s in self.stages],
    }

  def _reader(self, task: str) -> SourceReader:
    if task not in self._readers:
      self._readers[task] = SourceReader(
        task,
        self.split,
        self.shard_index,
        self.num_shards,
        self.seed,
        read_batch=self._read_batch,
        unit_bytes=self._unit_bytes,
        workers=self._workers,
        threads_per_source=self._threads,
      )
    return self._readers[task]

  @property
  def stage(self) -> int:
    return curriculum_lib.stage_at(self.step, self.boundaries)

  def _enter_stage(self, stage: int) -> None:
    plan = self.stages[stage]
    en = mixing.language_index(mixing.ENGLISH)
    groups = (
      [i for i, lang in enumerate(plan.langs) if lang != en],
      [i for i, lang in enumerate(plan.langs) if lang == en],
    )
    self._lanes = []
    for g, comps in enumerate(groups):
      if comps:
        name = mixing.stable_u64("mix", stage, plan.name, g, self.shard_index, self.num_shards)
        sched = mixing.TokenScheduler(
          [plan.shares[i] for i in comps], (self.seed, name), self._jitter
        )
        sources = [(plan.tasks[i], plan.langs[i], self._reader(plan.tasks[i])) for i in comps]
        self._lanes.append(_Lane(comps, sched, sources))
    share = sum(plan.shares[i] for i in self._lanes[0].comps) / sum(plan.shares)
    self._lane0_share = min(1.0, share) if len(self._lanes) > 1 else 1.0
    self._stage = stage

  @staticmethod
  def _doc_left(lane: _Lane) -> int:
    """Tokens left of the lane's document, choosing its next document when it is done."""
    left = lane.remaining()
    if left > 0:
      return left
    j = lane.sched.choose()
    task, lang, reader = lane.sources[j]
    item = reader.next_doc()
    assert item is not None  # training readers repeat
    tokens, pos = item
    lane.sched.add(j, len(tokens))
    lane.set_doc((task, lang, tokens, pos))
    return lane.size

  @staticmethod
  def _piece(lane: _Lane, n: int, out: _Pieces) -> None:
    """Append the lane's next n tokens, all of its current document, to out."""
    a = lane.off
    lane.off = a + n
    out.add(lane.doc[2][a : a + n], lane.doc[1], lane.off == lane.size)

  def _take(self, lane: _Lane, n: int, out: _Pieces) -> None:
    """Append the lane's next n tokens to out, as pieces of documents."""
    while n > 0:
      k = min(n, self._doc_left(lane))
      self._piece(lane, k, out)
      n -= k

  def _take_block(self, lane: _Lane, target: int, out: _Pieces) -> int:
    """About `target` tokens, ending at the document end nearest it within the slack, if any."""
    lo, hi = max(0, target - self._slack), min(self.batch_size * self.seq_len, target + self._slack)
    taken, doc_left, piece = 0, self._doc_left, self._piece
    while taken < target:
      left = doc_left(lane)
      end = taken + left
      if end <= target or (end <= hi and (taken < lo or end - target < target - taken)):
        n = left  # the whole document
      elif taken < lo:
        n = target - taken  # no document end in the slack: cut at the quota
      else:
        break
      piece(lane, n, out)
      taken += n
    return taken

  def next(self) -> Batch:
    stage = self.stage
    if stage != self._stage:
      if self._stage >= 0 and self._carry is not None:
        self._carry = (self._carry[0], self._carry[1], 1)  # the old stage's document is dropped
      self._enter_stage(stage)
    B, T = self.batch_size, self.seq_len
    N = B * T
    k = self.step - self.boundaries[stage]
    order = self._lanes if k % 2 == 0 else self._lanes[::-1]
    out = _Pieces()
    if self._carry is None:
      self._take(order[0], 1, out)  # the stream's first token is an input only
    else:
      out.add(np.array([self._carry[0]], np.int32), self._carry[1], bool(self._carry[2]))
    first = N
    if len(order) == 2:
      quota = mixing.lane_quota(k, N, self._lane0_share, self._lanes[0].tokens)
      first = self._take_block(order[0], quota if order[0] is self._lanes[0] else N - quota, out)
      if 0 < first < N:
        out.ends[-1] = True  # the lane changes: a new segment (already one at a document end)
      self._take(order[1], N - first, out)
      order[1].tokens += N - first
    else:
      self._take(order[0], N, out)
    order[0].tokens += first
    toks, langs, ends = out.arrays()
    self._carry = (int(toks[-1]), int(langs[-1]), int(ends[-1]))
    self.step += 1
    return pack_rows(toks, langs, ends, B, T, self.segment_aware)

  def state(self) -> dict:
    """Small JSON-serialisable resume state (see module docstring)."""
    lanes = []
    for lane in self._lanes:
      doc = None
      if lane.remaining() > 0:
        task, lang, _, pos = lane.doc
        doc = {"task": task, "lang": lang, "position": list(pos), "offset": lane.off}
      lanes.append({"scheduler": lane.sched.state(), "doc": doc, "tokens": lane.tokens})
    return {
      "version": STATE_VERSION,
      "config": self._config(),
      "step": self.step,
      "stage": self._stage,
      "lanes": lanes,
      "sources": {t: list(r.position) for t, r in self._readers.items()},
      "carry": list(self._carry) if self._carry is not None else None,
    }

  def restore(self, state: Mapping) -> None:
    """Continue exactly where `state()` was taken; costs at most one unit prefix per source."""
    state = checked_state(state, "pre-training stream", STATE_VERSION, self._config())
    self.step = int(state["step"])
    self._stage, self._lanes = -1, []
    if state["stage"] >= 0:
      self._enter_stage(int(state["stage"]))
      if len(state["lanes"]) != len(self._lanes):
        raise ValueError(
          f"stream state has {len(state['lanes'])} lanes, stage {state['stage']} has "
          f"{len(self._lanes)}"
        )
      for lane, saved_lane in zip(self._lanes, state["lanes"]):
        lane.sched.restore(saved_lane["scheduler"])
        lane.tokens = int(saved_lane["tokens"])
        if saved_lane["doc"] is not None:
          lane.set_doc(self._reread(saved_lane["doc"]), int(saved_lane["doc"]["offset"]))
    for task, pos in state["sources"].items():
      self._reader(task).seek(pos)
    c = state["carry"]
    self._carry = tuple(int(x) for x in c) if c is not None else None

  def _reread(self, d: Mapping) -> tuple[str, int, np.ndarray, Position]:
    reader = self._reader(d["task"])
    reader.seek(d["position"])
    item = reader.next_doc()
    if item is None or item[1] != tuple(d["position"]):
      raise ValueError(
        f"task {d['task']!r}: document at {d['position']} is gone; "
        "has the data changed since the state was saved?"
      )
    return d["task"], int(d["lang"]), item[0], item[1]


def pack_rows(
  toks: np.ndarray,
  langs: np.ndarray,
  ends: np.ndarray,
  B: int,
  T: int,
  segment_aware: bool,
  weights: Optional[np.ndarray] = None,
) -> dict[str, np.ndarray]:
  """B*T+1 stream tokens -> the batch dict (rows overlap by one token)."""
  inputs = toks[:-1].reshape(B, T).astype(np.int32)
  batch = {
    "inputs": inputs,
    "targets": toks[1:].reshape(B, T).astype(np.int32),
    "loss_weights": (
      np.ones((B, T), np.float32)
      if weights is None
      else weights[1:].reshape(B, T).astype(np.float32)
    ),
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


def build_stream(
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
  workers: int = 1,
  threads_per_source: int = 2,
) -> PackedStream:
  """The trainer's entry point (batch_stream.DataModule): MIXTURE_OR_TASK_NAME -> a per-host
  PackedStream with the default lane settings (build a PackedStream to set those).

  batch_size is the stream's rows (one data shard, see data_shards.py); train_steps places
  the curriculum's stage boundaries (needed only when a stage starts at a fraction of
  training). workers:
  SentencePiece threads of the fast read path (readers.SourceReader); threads_per_source: the
  tf.data pool of a source read through seqio. Neither changes the batches.
  """
  stages, boundaries = resolve(name, train_steps, split)
  return PackedStream(
    stages,
    boundaries,
    seq_len=seq_len,
    batch_size=batch_size,
    seed=seed,
    shard_index=shard_index,
    num_shards=num_shards,
    segment_aware=segment_aware,
    split=split,
    name=name,
    workers=workers,
    threads_per_source=threads_per_source,
  )


def eval_tasks(name: str, split: str = "validation") -> dict[str, tuple[str, ...]]:
  """Held-out tasks per language for MIXTURE_OR_TASK_NAME: its monolingual tasks (all stages).

  The held-out data is each task's `split` ('validation': the documents the task keeps out of
  'train'). Bitext tasks are left out so each language's loss is measured on that language.
  """
  if name in curriculum_lib.curriculum_names():  # every stage, whatever TRAIN_STEPS will be
    mixtures = curriculum_lib.get_curriculum(name).mixtures
    stages = [plan_stage(mixing.get_stage_mixture(m), "train") for m in mixtures]
  else:
    stages, _ = resolve(name, train_steps=1, split="train")
  out: dict[str, list[str]] = {}
  for plan in stages:
    for task, lang in zip(plan.tasks, plan.langs):
      if lang < 0 or mixing.is_bitext_task(task):
        continue
      get_task(task, split)  # clear error if the split is missing
      tasks = out.setdefault(mixing.languages()[lang], [])
      if task not in tasks:
        tasks.append(task)
  return {lang: tuple(out[lang]) for lang in mixing.languages() if lang in out}


def eval_batches(
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
  """Finite, deterministic packed batches: `tasks` read once, in order, packed like training.

  The last batch is padded with token 0 at loss weight 0.0 and langs -1 (which is why the
  weights are explicit). num_batches: exactly that many batches (cut short, or padded with
  all-zero-weight batches) -- pass the same number on every host so that they stay in step.
  """
  check_layout(seq_len, batch_size, shard_index, num_shards)
  no_tokens = (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, bool))
  return exactly(
    _eval_stream(tasks, batch_size, seq_len, split, shard_index, num_shards, segment_aware),
    num_batches,
    lambda: _padded(*no_tokens, batch_size, seq_len, segment_aware),
  )


def _padded(
  toks: np.ndarray, langs: np.ndarray, ends: np.ndarray, B: int, T: int, segment_aware: bool
) -> Batch:
  """pack_rows of at most B*T+1 real tokens and padding after them (token 0, weight 0.0,
  langs -1)."""
  n, pad = len(toks), B * T + 1 - len(toks)
  return pack_rows(
    np.concatenate([toks, np.zeros(pad, np.int32)]),
    np.concatenate([langs, np.full(pad, -1, np.int32)]),
    np.concatenate([ends, np.zeros(pad, bool)]),
    B,
    T,
    segment_aware,
    weights=np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]),
  )


def _eval_stream(
  tasks: Sequence[str],
  B: int,
  T: int,
  split: str,
  shard_index: int,
  num_shards: int,
  segment_aware: bool,
) -> Iterator[Batch]:
  """Every document of `tasks` once, joined like training documents; a batch's last token
  is the next batch's first input, as between training rows."""
  need = B * T + 1
  readers = [SourceReader(t, split, shard_index, num_shards, seed=0, repeat=False) for t in tasks]
  held: tuple[list, list, list] = ([], [], [])  # tokens, langs, ends-a-document
  count = 0
  for reader, task in zip(readers, tasks):
    lang = _lang_or_unknown(task)
    while (item := reader.next_doc()) is not None:
      doc = item[0]
      ends = np.zeros(len(doc), bool)
      ends[-1] = True
      for buf, a in zip(held, (doc, np.full(len(doc), lang, np.int32), ends)):
        buf.append(a)
      count += len(doc)
      while count >= need:
        arrays = [np.concatenate(buf) for buf in held]
        yield _padded(*(a[:need] for a in arrays), B, T, segment_aware)
        for buf, a in zip(held, arrays):
          buf[:] = [a[B * T :]]
        count -= B * T
  if count > 1:
    yield _padded(*(np.concatenate(buf) for buf in held), B, T, segment_aware)
