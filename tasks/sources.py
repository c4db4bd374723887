"""SeqIO data sources for local files (text, JSONL, TSV, TFRecord; globs, sharded) and the
checks that make bad input fail loudly.

Every source yields dicts of tf.string features. Errors name what is at fault:
- a pattern matching no file, or an empty (0-byte) file: the pattern/file and the source;
- a malformed JSONL/TSV line: file and 1-based line number. With on_error="skip" the line is
  skipped, counted in `source.skipped` ({file: count}) and logged instead;
- two parallel files of different lengths: both files and their line counts;
- a task that yields nothing: the task and split (`assert_nonempty`, a task preprocessor).

`holdout_every=k` gives a deterministic validation split: the k-th, 2k-th, ... example of
every file (counted after blank lines are dropped) goes to "validation", the rest to
"train". Parallel files count aligned lines, so line i is held out in every language.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

FORMATS = ("text", "jsonl", "tsv", "tfrecord")
ON_ERROR = ("fail", "skip")
INVALID_UTF8 = ": not valid UTF-8"
_MAX_LOGGED_SKIPS = 10


def _as_list(patterns: str | Iterable[str]) -> list[str]:
  return [patterns] if isinstance(patterns, str) else list(patterns)


def resolve_files(patterns: str | Iterable[str], where: str) -> list[str]:
  """Sorted unique files matching the glob patterns.

  FileNotFoundError if a pattern matches nothing; ValueError if a file is empty.
  """
  files: set[str] = set()
  for pattern in _as_list(patterns):
    matched = [f for f in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(f)]
    if not matched:
      raise FileNotFoundError(f"{where}: no file matches {pattern!r}")
    files.update(matched)
  for f in sorted(files):
    if tf.io.gfile.stat(f).length == 0:
      raise ValueError(f"{where}: file is empty: {f}")
  return sorted(files)


class MalformedLine(ValueError):
  pass


def decode_line(raw: bytes, where: str, first: bool = False) -> str:
  """One line of a file as text. Invalid UTF-8 is a MalformedLine naming `where` (file and
  line); a UTF-8 byte order mark opening the file (`first`) is dropped."""
  try:
    return raw.decode("utf-8-sig" if first else "utf-8")
  except UnicodeDecodeError as e:
    raise MalformedLine(
      f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}: {e.reason})"
    ) from None


def check_text(value: str, where: str, field: str | int) -> str:
  """`value`, if it can be written as UTF-8: a lone surrogate (a JSON escape such as
  "\\ud800" without its pair) is a MalformedLine naming `where` and the field."""
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    raise MalformedLine(
      f"{where}: field {field!r} holds a lone surrogate {value[e.start]!r} at character "
      f"{e.start + 1}: not encodable as UTF-8"
    ) from None
  return value


def _split_filter(ds: tf.data.Dataset, split: str, holdout_every: int | None) -> tf.data.Dataset:
  """Keep the examples of `split` from an enumerated dataset of (index, example)."""

  def drop_index(i, ex):
    return ex

  if holdout_every is None:
    return ds.map(drop_index)
  k = tf.constant(holdout_every, tf.int64)
  validation = split == "validation"

  def keep(i, ex):
    held = tf.equal(i % k, k - 1)
    return held if validation else tf.logical_not(held)

  return ds.filter(keep).map(drop_index)


_BOM = "\ufeff".encode()


def _text_line(path: tf.Tensor, lineno: tf.Tensor, line: tf.Tensor) -> tf.Tensor:
  """A text file's line, checked in the graph: a BOM opening the file is dropped; a line that
  is not UTF-8 fails with "<file> line <n>: not valid UTF-8" (readers.py shows it alone)."""
  bom = tf.logical_and(tf.equal(lineno, 1), tf.equal(tf.strings.substr(line, 0, 3), _BOM))
  line = tf.strings.substr(line, tf.where(bom, 3, 0), -1)
  clean = tf.strings.unicode_transcode(line, "UTF-8", "UTF-8", errors="replace")
  message = tf.strings.join([path, " line ", tf.strings.as_string(lineno), INVALID_UTF8])
  with tf.control_dependencies([tf.debugging.Assert(tf.equal(clean, line), [message])]):
    return tf.identity(line)


class LocalFileSource(seqio.DataSource):
  """Records from local (or gfile) files matched by globs, one file per shard.

  fields maps record keys to output features: JSONL object keys, TSV column indices, or
  TFRecord tf.train.Example string features. Text files (fmt="text") yield each non-blank
  line as the feature `text_key` ("text").

  Files are interleaved `cycle_length` at a time, `block_length` records each; the order is
  the same whether they are read one after another (parallel_files None: a handful of
  threads per open source) or in parallel (parallel_files: threads, or tf.data.AUTOTUNE;
  for remote storage, at the cost of a thread per file of the cycle).
  """

  def __init__(
    self,
    split_to_pattern: Mapping[str, str | Sequence[str]],
    fmt: str = "text",
    fields: Mapping[str | int, str] | None = None,
    text_key: str = "text",
    on_error: str = "fail",
    holdout_every: int | None = None,
    name: str = "",
    cycle_length: int = 16,
    block_length: int = 16,
    parallel_files: int | None = None,
  ):
    if fmt not in FORMATS:
      raise ValueError(f"{name or 'source'}: format must be one of {FORMATS}, got {fmt!r}")
    if on_error not in ON_ERROR:
      raise ValueError(f"{name or 'source'}: on_error must be one of {ON_ERROR}, got {on_error!r}")
    if fmt != "text" and not fields:
      raise ValueError(f"{name or 'source'}: format {fmt!r} needs `fields`")
    if holdout_every is not None and holdout_every < 2:
      raise ValueError(f"{name or 'source'}: holdout_every must be >= 2, got {holdout_every}")
    self._split_to_pattern = {k: _as_list(v) for k, v in split_to_pattern.items()}
    self._fmt = fmt
    self._fields = dict(fields) if fields else {0: text_key}
    self._on_error = on_error
    self._holdout_every = holdout_every
    self._name = name
    self._cycle_length = cycle_length
    self._block_length = block_length
    self._parallel_files = parallel_files
    self.skipped: dict[str, int] = {}
    super().__init__(splits=self._split_to_pattern.keys())

  def __repr__(self):
    return (
      f"LocalFileSource({self._name!r}, {self._fmt}, {self._split_to_pattern}, "
      f"on_error={self._on_error})"
    )

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  @property
  def output_keys(self) -> tuple[str, ...]:
    return tuple(self._fields.values())

  def _where(self, split: str) -> str:
    return f"source {self._name or repr(self)} split {split!r}"

  def _check_split(self, split: str) -> None:
    if split not in self._split_to_pattern:
      raise ValueError(
        f"{self._where(split)}: no such split; splits: {sorted(self._split_to_pattern)}"
      )

  def list_shards(self, split: str) -> Sequence[str]:
    self._check_split(split)
    return resolve_files(self._split_to_pattern[split], self._where(split))

  # -- readers: each maps one file name to a dataset of (index, record) --------------------

  def _read_text(self, path):
    key = self._fields[0]
    ds = tf.data.TextLineDataset(path).enumerate(start=1).map(functools.partial(_text_line, path))
    ds = ds.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
    return ds.enumerate().map(lambda i, line: (i, {key: line}))

  def _python_records(self, path: bytes):
    """Parse JSONL/TSV lines in Python, so errors can name file and line."""
    path = path.decode() if isinstance(path, bytes) else str(path)
    index = 0
    with tf.io.gfile.GFile(path, "rb") as f:
      for lineno, raw in enumerate(f, start=1):
        if not raw.strip():
          continue
        try:
          record = self._parse_line(raw, path, lineno)
        except MalformedLine as e:
          if self._on_error == "fail":
            raise
          n = self.skipped.get(path, 0) + 1
          self.skipped[path] = n
          if n <= _MAX_LOGGED_SKIPS:
            logging.warning("skipping malformed line (%d so far in this file): %s", n, e)
          continue
        yield np.int64(index), record
        index += 1

  def _parse_line(self, raw: bytes, path: str, lineno: int) -> dict[str, bytes]:
    where = f"{path} line {lineno}"
    line = decode_line(raw, where, first=lineno == 1).rstrip("\r\n")
    if self._fmt == "jsonl":
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise MalformedLine(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(obj, dict):
        raise MalformedLine(f"{where}: expected a JSON object, got {type(obj).__name__}")
      out = {}
      for key, feature in self._fields.items():
        value = obj.get(key)
        if not isinstance(value, str):
          got = "missing" if value is None else f"a {type(value).__name__}"
          raise MalformedLine(f"{where}: field {key!r} must be a string, is {got}")
        out[feature] = check_text(value, where, key).encode("utf-8")
      return out
    columns = line.split("\t")
    need = max(int(c) for c in self._fields) + 1
    if len(columns) < need:
      raise MalformedLine(
        f"{where}: expected at least {need} tab-separated columns, got {len(columns)}"
      )
    return {feature: columns[int(col)].encode("utf-8") for col, feature in self._fields.items()}

  def _read_python(self, path):
    signature = (
      tf.TensorSpec([], tf.int64),
      {k: tf.TensorSpec([], tf.string) for k in self._fields.values()},
    )
    return tf.data.Dataset.from_generator(
      self._python_records, args=(path,), output_signature=signature
    )

  def _read_tfrecord(self, path):
    description = {str(k): tf.io.FixedLenFeature([], tf.string) for k in self._fields}
    rename = {str(k): v for k, v in self._fields.items()}

    def parse(record):
      ex = tf.io.parse_single_example(record, description)
      return {rename[k]: v for k, v in ex.items()}

    return tf.data.TFRecordDataset(path).map(parse).enumerate()

  def get_dataset(
    self,
    split: str = "train",
    shuffle: bool = True,
    seed: int | None = None,
    shard_info: seqio.ShardInfo | None = None,
    *,
    sequence_length=None,
    use_cached: bool = False,
    num_epochs: int | None = 1,
  ) -> tf.data.Dataset:
    files = self.list_shards(split)
    files_ds = tf.data.Dataset.from_tensor_slices(np.array(files, dtype=str))
    if shard_info:
      if len(files) < shard_info.num_shards:
        raise ValueError(
          f"{self._where(split)}: {len(files)} files cannot be split across "
          f"{shard_info.num_shards} shards"
        )
      files_ds = files_ds.shard(shard_info.num_shards, shard_info.index)
    if shuffle:
      files_ds = files_ds.shuffle(len(files), seed=seed)
    reader = {
      "text": self._read_text,
      "jsonl": self._read_python,
      "tsv": self._read_python,
      "tfrecord": self._read_tfrecord,
    }[self._fmt]
    holdout = self._holdout_every if split in ("train", "validation") else None
    return files_ds.interleave(
      lambda path: _split_filter(reader(path), split, holdout),
      cycle_length=self._cycle_length,
      block_length=self._block_length,
      num_parallel_calls=self._parallel_files,
      deterministic=None if self._parallel_files is None else True,
    )


def _count_lines(path: str) -> int:
  with tf.io.gfile.GFile(path, "rb") as f:
    return sum(1 for _ in f)


class AlignedTextSource(seqio.DataSource):
  """Line-aligned parallel text files (line i of src_file translates line i of tgt_file),
  yielding {"src", "tgt"}; pairs where either side is blank are dropped. Read whole, so it
  suits small corpora such as the built-in sample; for big bitext use TSV/JSONL pairs.
  """

  def __init__(
    self, src_file: str, tgt_file: str, holdout_every: int | None = None, name: str = ""
  ):
    self._src_file, self._tgt_file = src_file, tgt_file
    self._holdout_every = holdout_every
    self._name = name
    splits = ("train", "validation") if holdout_every else ("train",)
    super().__init__(splits=splits)

  def __repr__(self):
    return f"AlignedTextSource({self._src_file!r}, {self._tgt_file!r})"

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def get_dataset(
    self,
    split: str = "train",
    shuffle: bool = True,
    seed: int | None = None,
    shard_info: seqio.ShardInfo | None = None,
    *,
    sequence_length=None,
    use_cached: bool = False,
    num_epochs: int | None = 1,
  ) -> tf.data.Dataset:
    where = f"source {self._name or repr(self)} split {split!r}"
    if split not in self.splits:
      raise ValueError(f"{where}: no such split; splits: {list(self.splits)}")
    src, tgt = (resolve_files(f, where)[0] for f in (self._src_file, self._tgt_file))
    n_src, n_tgt = _count_lines(src), _count_lines(tgt)
    if n_src != n_tgt:
      raise ValueError(
        f"{where}: parallel files differ in length: {src} has {n_src} lines, "
        f"{tgt} has {n_tgt} lines"
      )
    ds = tf.data.Dataset.zip(tf.data.TextLineDataset(src), tf.data.TextLineDataset(tgt))

    def checked(n, pair):  # n: 1-based line number
      return {"src": _text_line(src, n, pair[0]), "tgt": _text_line(tgt, n, pair[1])}

    ds = ds.enumerate(start=1).map(checked).enumerate()
    ds = _split_filter(ds, split, self._holdout_every)
    nonblank = lambda s: tf.strings.length(tf.strings.strip(s)) > 0  # noqa: E731
    ds = ds.filter(lambda ex: tf.logical_and(nonblank(ex["src"]), nonblank(ex["tgt"])))
    if shard_info:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds


def assert_nonempty(dataset: tf.data.Dataset, task_name: str, split: str = "") -> tf.data.Dataset:
  """Pass `dataset` through unchanged; raise when it ends having yielded nothing.

  Streaming (no extra pass over the data): a sentinel appended after the last element
  carries the count. The error is a tf.errors.InvalidArgumentError whose message names the
  task (and split, if given).
  """
  spec = dataset.element_spec

  def empty_like(s: tf.TensorSpec):
    shape = [0 if d is None else d for d in s.shape.as_list()]
    return tf.zeros(shape, s.dtype) if s.dtype != tf.string else tf.fill(shape, "")

  sentinel = tf.data.Dataset.from_tensors((tf.nest.map_structure(empty_like, spec), True))
  flagged = dataset.map(lambda ex: (ex, False)).concatenate(sentinel)

  def count(n, item):
    ex, last = item
    return n + tf.cast(tf.logical_not(last), tf.int64), (ex, last, n)

  # No quotes: TF escapes them in the error text.
  message = (
    f"Task {task_name}"
    + (f" split {split}" if split else "")
    + " yielded no examples: its source is empty or its preprocessors drop all"
  )

  def check(ex, last, n):
    ok = tf.logical_or(tf.logical_not(last), n > 0)
    with tf.control_dependencies([tf.debugging.Assert(ok, [message])]):
      return ex, tf.identity(last)

  def not_sentinel(ex, last):
    return tf.logical_not(last)

  def drop_flag(ex, last):
    return ex

  out = flagged.scan(tf.constant(0, tf.int64), count).map(check)
  return out.filter(not_sentinel).map(drop_flag)
