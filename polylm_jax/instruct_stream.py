"""Instruction tuning batches: (prompt, response) pairs packed with loss on the response only.

Same batch contract as polylm_jax.stream (inputs, targets, loss_weights, positions,
segment_ids, langs; [batch, seq_len]), different packing:
  - an example x = prompt + response (response ends with eos) takes len(x) - 1 slots of a row:
    inputs x[:-1], targets x[1:];
  - loss_weights is 1.0 where the *target* is a response token (its eos included) and 0.0 where
    it is a prompt token: the model is never trained to write the prompt;
  - examples never span rows; each is its own segment (ids 1, 2, ... per row) with positions
    restarting at 0, so attention does not cross examples; the rest of a row is padding
    (token 0, weight 0, segment 0, langs -1);
  - an example longer than seq_len + 1 tokens is cut at the end (counted in `stats`); one
    whose prompt alone fills the row is dropped (counted), as it has nothing to learn from.
pack=False puts one example per row. The module and InstructionStream are the interface of
polylm_jax/batch_stream.py, as polylm_jax.stream's are, so the trainer takes either.

Sources are seqio tasks with 'inputs' and 'targets' features (tasks/instructions.py), read
whole into memory per host (instruction sets are small: all of MultiAlpaca is ~30M tokens)
and reshuffled every epoch by a counter-based permutation. A seqio Mixture is mixed by its
rates as *example* shares (seqio's meaning), with mixing.TokenScheduler counting examples.
State (`state()`) is each task's (epoch, index), the scheduler counters and the example
drawn but not yet placed: JSON, O(number of tasks).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Optional

import numpy as np
import seqio
import tensorflow as tf

from polylm_jax import mixing, readers
from polylm_jax import stream as stream_lib
from polylm_jax.batch_stream import (
  Batch,
  BatchStream,
  DataModule,
  StagePlan,
  check_layout,
  check_rates,
  checked_state,
  exactly,
)

STATE_VERSION = 1


def _get_task(name: str, split: str) -> seqio.Task:
  try:
    task = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ValueError(
      f"instruction task {name!r} is not registered with seqio (import tasks.instructions first?)"
    ) from e
  if not isinstance(task, seqio.Task):
    raise ValueError(f"{name!r} is a seqio Mixture; a reader needs a Task")
  missing = [k for k in ("inputs", "targets") if k not in task.output_features]
  if missing:
    raise ValueError(
      f"task {name!r} has no output feature(s) {missing}: instruction tuning "
      "needs 'inputs' (prompt) and 'targets' (response)"
    )
  if split not in task.splits:
    raise ValueError(f"task {name!r} has no split {split!r}; it has {list(task.splits)}")
  return task


# What a task library tells this module (tasks/instructions.py does on import; library code
# never imports tasks/): the language of each instruction task, and selectors that resolve
# names no seqio registry holds (lists of tasks or languages): name -> (tasks, rates) | None.
_TASK_LANGS: dict[str, str] = {}
Selector = Callable[[str], Optional[tuple[list[str], list[float]]]]
_SELECTORS: list[Selector] = []


def declare_task(name: str, lang: str) -> None:
  """Mark `name` as an instruction task (prompt 'inputs', response 'targets') in `lang`."""
  _TASK_LANGS[name] = lang


def add_selector(selector: Selector) -> None:
  if selector not in _SELECTORS:
    _SELECTORS.append(selector)


def is_instruction_task(name: str) -> bool:
  return name in _TASK_LANGS


def _select(name: str) -> Optional[tuple[list[str], list[float]]]:
  if name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names():
    return None
  for selector in _SELECTORS:
    selected = selector(name)
    if selected is not None:
      return selected
  return None


def task_lang_index(name: str) -> int:
  """Language index (mixing.languages()) of an instruction task, -1 if unknown."""
  lang = _TASK_LANGS.get(name) or mixing.language_of_task(name)
  return mixing.languages().index(lang) if lang in mixing.languages() else -1


class EmptySplitError(ValueError):
  """A task's split (for this host) holds no example."""


class ExampleReader:
  """One task's (prompt, response) pairs for one host, in memory; `get(epoch, i)` is the i-th
  example of that epoch's permutation (identity with shuffle=False)."""

  def __init__(
    self,
    task_name: str,
    split: str = "train",
    shard_index: int = 0,
    num_shards: int = 1,
    seed: int = 0,
    shuffle: bool = True,
  ):
    self.name, self.split, self.shuffle = task_name, split, shuffle
    self.task = _get_task(task_name, split)
    self.shard_index, self.num_shards = shard_index, num_shards
    self._key = (seed, mixing.stable_u64("instruct", task_name, split, shard_index, num_shards))
    self._tokens: Optional[np.ndarray] = None
    self._offsets = self._prompt_lens = None
    self._order_epoch, self._order = -1, None

  def _load(self) -> None:
    shard = seqio.ShardInfo(self.shard_index, self.num_shards) if self.num_shards > 1 else None
    ds = self.task.get_dataset(
      sequence_length=None,
      split=self.split,
      use_cached=False,
      shuffle=False,
      shard_info=shard,
      num_epochs=1,
      trim_output_features=False,
      try_in_mem_cache=False,
    )
    chunks, offsets, prompt_lens = [], [0], []
    try:
      for ex in ds.as_numpy_iterator():
        prompt = np.asarray(ex["inputs"], np.int32)
        response = np.asarray(ex["targets"], np.int32)
        if not len(response):
          continue
        chunks += [prompt, response]
        offsets.append(offsets[-1] + len(prompt) + len(response))
        prompt_lens.append(len(prompt))
    except tf.errors.OpError as e:
      if "yielded no examples" not in str(e):
        raise readers.data_error(e, f"task {self.name!r} split {self.split!r}") from None
    if not prompt_lens:
      raise EmptySplitError(
        f"task {self.name!r} split {self.split!r} yielded no examples for host "
        f"shard {self.shard_index} of {self.num_shards}"
      )
    self._tokens = np.concatenate(chunks).astype(np.int32)
    self._offsets, self._prompt_lens = np.array(offsets), np.array(prompt_lens)

  def __len__(self) -> int:
    if self._tokens is None:
      self._load()
    return len(self._prompt_lens)

  def _index(self, epoch: int, i: int) -> int:
    if not self.shuffle:
      return i
    if epoch != self._order_epoch:
      bits = np.random.Philox(
        key=np.array(self._key, np.uint64), counter=np.array([epoch, 0, 0, 0], np.uint64)
      )
      self._order, self._order_epoch = np.random.Generator(bits).permutation(len(self)), epoch
    return int(self._order[i])

  def get(self, epoch: int, i: int) -> tuple[np.ndarray, int]:
    """(prompt + response tokens, prompt length) of example i of `epoch`."""
    if not 0 <= i < len(self):
      raise IndexError(f"task {self.name!r}: example {i} of {len(self)}")
    j = self._index(epoch, i)
    return self._tokens[self._offsets[j] : self._offsets[j + 1]], int(self._prompt_lens[j])


def example_slots(
  tokens: np.ndarray, prompt_len: int, seq_len: int
) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray, bool]]:
  """(inputs, targets, loss weights, truncated) of one example cut to seq_len slots, or None
  when no response token is left to predict."""
  truncated = len(tokens) - 1 > seq_len
  x = tokens[: seq_len + 1]
  if prompt_len >= len(x) or len(x) < 2:
    return None
  weights = (np.arange(1, len(x)) >= prompt_len).astype(np.float32)
  return x[:-1], x[1:], weights, truncated


class RowPacker:
  """Fills [B, T] arrays example by example (see the module docstring for the layout)."""

  def __init__(self, batch_size: int, seq_len: int, pack: bool = True):
    self.B, self.T, self.pack = batch_size, seq_len, pack
    self.arrays = {
      "inputs": np.zeros((batch_size, seq_len), np.int32),
      "targets": np.zeros((batch_size, seq_len), np.int32),
      "loss_weights": np.zeros((batch_size, seq_len), np.float32),
      "positions": np.zeros((batch_size, seq_len), np.int32),
      "segment_ids": np.zeros((batch_size, seq_len), np.int32),
      "langs": np.full((batch_size, seq_len), -1, np.int32),
    }
    self.row, self.used, self.segments = 0, 0, 0

  @property
  def full(self) -> bool:
    return self.row >= self.B

  def fits(self, slots: int) -> bool:
    """Whether an example of `slots` slots goes into the current row (else a new row opens)."""
    return self.used == 0 or (self.pack and self.used + slots <= self.T)

  def add(self, inputs: np.ndarray, targets: np.ndarray, weights: np.ndarray, lang: int) -> None:
    n = len(inputs)
    if not self.fits(n):
      self.row, self.used, self.segments = self.row + 1, 0, 0
    if self.full:
      raise RuntimeError("RowPacker.add on a full batch")
    a, r, lo = self.arrays, self.row, self.used
    self.segments += 1
    a["inputs"][r, lo : lo + n] = inputs
    a["targets"][r, lo : lo + n] = targets
    a["loss_weights"][r, lo : lo + n] = weights
    a["positions"][r, lo : lo + n] = np.arange(n)
    a["segment_ids"][r, lo : lo + n] = self.segments
    a["langs"][r, lo : lo + n] = lang
    self.used += n

  def accepts(self, slots: int) -> bool:
    """Whether adding an example of `slots` slots keeps it inside this batch."""
    return not self.full and (self.fits(slots) or self.row + 1 < self.B)


class InstructionStream(BatchStream):
  """Endless packed instruction batches for one host (see the module docstring)."""

  def __init__(
    self,
    tasks: Sequence[str],
    rates: Sequence[float],
    *,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
    split: str = "train",
    pack: bool = True,
    name: str = "",
  ):
    check_layout(seq_len, batch_size, shard_index, num_shards)
    if not tasks or len(tasks) != len(rates):
      raise ValueError(f"instruction stream {name!r}: {len(tasks)} tasks vs {len(rates)} rates")
    self.tasks, self.rates = list(tasks), [float(r) for r in rates]
    self.seq_len, self.batch_size, self.seed = int(seq_len), int(batch_size), int(seed)
    self.shard_index, self.num_shards = int(shard_index), int(num_shards)
    self.split, self.pack, self.name = split, bool(pack), name
    self.readers = [ExampleReader(t, split, shard_index, num_shards, seed) for t in tasks]
    self.langs = [task_lang_index(t) for t in tasks]
    total = sum(self.rates)
    # One stage, starting at step 0 (batch_stream.BatchStream).
    self.stages = [
      StagePlan(
        name or tasks[0], tuple(tasks), tuple(r / total for r in self.rates), tuple(self.langs)
      )
    ]
    self.boundaries = (0,)
    key = (self.seed, mixing.stable_u64("instruct-mix", name, *tasks, shard_index, num_shards))
    self._sched = mixing.TokenScheduler(self.rates, key, jitter=1.0)
    self.positions = [[0, 0] for _ in tasks]  # (epoch, index) of each task's next example
    self._pending: Optional[list[int]] = None  # [task, epoch, index] drawn, not yet placed
    self.step = 0
    self.stats = {
      "examples": 0,
      "truncated": 0,
      "dropped_overlong": 0,
      "prompt_tokens": 0,
      "response_tokens": 0,
    }

  @property
  def stage(self) -> int:
    return 0

  def _draw(self) -> list[int]:
    i = self._sched.choose()
    self._sched.add(i, 1)
    epoch, idx = self.positions[i]
    n = len(self.readers[i])
    self.positions[i] = [epoch, idx + 1] if idx + 1 < n else [epoch + 1, 0]
    return [i, epoch, idx]

  def _slots(self, item: Sequence[int]):
    i, epoch, idx = item
    tokens, prompt_len = self.readers[i].get(epoch, idx)
    return example_slots(tokens, prompt_len, self.seq_len)

  def next(self) -> Batch:
    packer = RowPacker(self.batch_size, self.seq_len, self.pack)
    while True:
      item = self._pending or self._draw()
      self._pending = None
      ex = self._slots(item)
      if ex is None:
        self.stats["dropped_overlong"] += 1
        continue
      inputs, targets, weights, truncated = ex
      if not packer.accepts(len(inputs)):
        self._pending = item
        break
      packer.add(inputs, targets, weights, self.langs[item[0]])
      self.stats["examples"] += 1
      self.stats["truncated"] += int(truncated)
      self.stats["response_tokens"] += int(weights.sum())
      self.stats["prompt_tokens"] += int(len(weights) - weights.sum())
    self.step += 1
    return packer.arrays

  def _config(self) -> dict:
    return {
      "name": self.name,
      "tasks": self.tasks,
      "rates": [round(r, 9) for r in self.rates],
      "seq_len": self.seq_len,
      "batch_size": self.batch_size,
      "seed": self.seed,
      "shard_index": self.shard_index,
      "num_shards": self.num_shards,
      "split": self.split,
      "pack": self.pack,
    }

  def state(self) -> dict:
    return {
      "version": STATE_VERSION,
      "kind": "instruction",
      "config": self._config(),
      "step": self.step,
      "scheduler": self._sched.state(),
      "positions": [list(p) for p in self.positions],
      "pending": list(self._pending) if self._pending else None,
      "stats": dict(self.stats),
    }

  def restore(self, state: Mapping) -> None:
    state = checked_state(
      state, "instruction stream", STATE_VERSION, self._config(), kind="instruction"
    )
    self.step = int(state["step"])
    self._sched.restore(state["scheduler"])
    self.positions = [[int(e), int(i)] for e, i in state["positions"]]
    self._pending = [int(x) for x in state["pending"]] if state["pending"] else None
    self.stats = {k: int(v) for k, v in state["stats"].items()}


def resolve(name: str) -> tuple[list[str], list[float]]:
  """(tasks, rates) of an instruction task, a seqio Mixture of them, or a selection a task
  library resolves (e.g. "polylm_multialpaca_es,polylm_multialpaca_ja", see
  tasks/instructions.py `select`)."""
  selected = _select(name)
  if selected is not None:
    tasks, rates = list(selected[0]), list(selected[1])
  else:
    try:
      provider = seqio.get_mixture_or_task(name)
    except ValueError as e:
      raise ValueError(
        f"MIXTURE_OR_TASK_NAME={name!r} is no registered seqio task or mixture, nor a "
        "comma-separated list of instruction tasks or languages (import tasks.instructions "
        "first?)"
      ) from e
    if not isinstance(provider, seqio.Mixture):
      return [name], [1.0]
    tasks = [t.name for t in provider.tasks]
    rates = [provider.get_rate(t) for t in provider.tasks]
  return check_rates(f"mixture {name!r}", tasks, rates)


def is_instruction_data(name: str) -> bool:
  """Whether `name` is an instruction task, a mixture made only of them or a selection of
  them: the trainer's test for building an InstructionStream instead of a PackedStream."""
  if is_instruction_task(name):
    return True
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError:
    return _select(name) is not None
  return isinstance(provider, seqio.Mixture) and all(
    is_instruction_task(t.name) for t in provider.tasks
  )


def build_instruction_stream(
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
  pack: bool = True,
) -> InstructionStream:
  """The trainer's entry point (batch_stream.DataModule, as stream.build_stream).

  Two of its settings do not apply to instruction data and are accepted for the trainer's
  sake: train_steps (there is one stage, nothing to place) and segment_aware (each example is
  always its own segment, positions from 0, whatever it says). pack=False: one example a row.
  """
  tasks, rates = resolve(name)
  return InstructionStream(
    tasks,
    rates,
    seq_len=seq_len,
    batch_size=batch_size,
    seed=seed,
    shard_index=shard_index,
    num_shards=num_shards,
    split=split,
    pack=pack,
    name=name,
  )


# polylm_jax.stream's names, so a trainer can use this module in its place.
build_stream = build_instruction_stream


def data_module(mixture_or_task_name: str) -> DataModule:
  """The module whose build_stream / eval_tasks / eval_batches serve
  `mixture_or_task_name`: this one for instruction data, polylm_jax.stream otherwise."""
  return sys.modules[__name__] if is_instruction_data(mixture_or_task_name) else stream_lib


def has_examples(name: str, split: str) -> bool:
  """Whether a task's split holds an example: counted by the source when it can (instruction
  sources count records in Python), else by reading the split."""
  task = _get_task(name, split)
  count = getattr(task.source, "num_records", None)
  if callable(count):
    return count(split) > 0
  try:
    return len(ExampleReader(name, split, shuffle=False)) > 0
  except EmptySplitError:
    return False


def eval_tasks(name: str, split: str = "validation") -> dict[str, tuple[str, ...]]:
  """Held-out instruction tasks per language code (like stream.eval_tasks)."""
  tasks, _ = resolve(name)
  out: dict[str, list[str]] = {}
  for t in tasks:
    if not has_examples(t, split):
      logging.warning("no eval on %s: its %r split is empty (too few records)", t, split)
      continue
    lang = task_lang_index(t)
    out.setdefault(mixing.languages()[lang] if lang >= 0 else t, []).append(t)
  return {k: tuple(v) for k, v in out.items()}


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
  pack: bool = True,
) -> Iterator[Batch]:
  """Finite, deterministic batches of `tasks` read once in order, packed as in training; the
  last batch is padded (weight 0). num_batches: exactly that many (cut, or padded with empty
  batches), the same on every host. segment_aware does not apply (see build_stream)."""
  check_layout(seq_len, batch_size, shard_index, num_shards)
  return exactly(
    _eval_examples(tasks, seq_len, batch_size, split, shard_index, num_shards, pack),
    num_batches,
    lambda: RowPacker(batch_size, seq_len, pack).arrays,
  )


def _eval_examples(
  tasks: Sequence[str],
  seq_len: int,
  batch_size: int,
  split: str,
  shard_index: int,
  num_shards: int,
  pack: bool,
) -> Iterator[Batch]:
  packer = RowPacker(batch_size, seq_len, pack)
  for t in tasks:
    reader = ExampleReader(t, split, shard_index, num_shards, shuffle=False)
    lang = task_lang_index(t)
    for i in range(len(reader)):
      ex = example_slots(*reader.get(0, i), seq_len)
      if ex is None:
        continue
      if not packer.accepts(len(ex[0])):
        yield packer.arrays
        packer = RowPacker(batch_size, seq_len, pack)
      packer.add(ex[0], ex[1], ex[2], lang)
  if packer.row or packer.used:
    yield packer.arrays
