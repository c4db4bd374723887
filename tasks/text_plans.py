"""Fast-path plans (polylm_jax.text_units) for the tasks tasks/ registers over local text.

Two shapes qualify, checked object by object, and are reproduced exactly:
- mono: a `sources.LocalFileSource` of format text, JSONL or TSV -> `registry._to_targets` ->
  tokenize -> append_eos_after_trim -> `sources.assert_nonempty` (`register_text_task`, the
  sample corpus);
- bitext: a `sources.AlignedTextSource` (`register_sample_bitext`), or a JSONL/TSV
  `LocalFileSource` of src/tgt (`register_bitext_files_task`) -> `registry.render_bitext` ->
  the same tail.
The records are what those sources and preprocessors yield, computed in Python: tf.data's
TextLineDataset lines (split at "\\n", every "\\r" dropped), a byte order mark opening a file
dropped, invalid UTF-8 an error naming file and line, blank lines dropped; JSONL/TSV through the
source's own parser and on_error policy; the holdout split, the strip, the bitext rendering
with TensorFlow's own hash. Any other task (TFRecord, TFDS, other preprocessors or source
classes) keeps the seqio pipeline. tests/test_sources.py checks both paths give the same
documents on awkward files.
"""

from __future__ import annotations

import functools
from typing import Optional

import seqio
import tensorflow as tf

from polylm_jax import text_units
from tasks import registry, sources

_BOM = b"\xef\xbb\xbf"


def _lines(path: str) -> list[bytes]:
  """A file's lines as tf.data.TextLineDataset reads them, checked like sources._text_line."""
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read().replace(b"\r", b"")
  lines = data.split(b"\n")
  if lines[-1] == b"":
    lines.pop()
  if lines and lines[0].startswith(_BOM):
    lines[0] = lines[0][len(_BOM) :]
  try:
    b"\n".join(lines).decode("utf-8")
  except UnicodeDecodeError:
    for n, line in enumerate(lines, start=1):
      try:
        line.decode("utf-8")
      except UnicodeDecodeError:
        raise text_units.RecordError(f"{path} line {n}{sources.INVALID_UTF8}") from None
  return lines


def _held(n: int, split: str, holdout: Optional[int]) -> list[bool]:
  """Which of n enumerated examples `split` keeps (sources._split_filter)."""
  if holdout is None:
    return [True] * n
  validation = split == "validation"
  return [(i % holdout == holdout - 1) == validation for i in range(n)]


def _is_check(p) -> bool:
  return (
    isinstance(p, functools.partial)
    and p.func is sources.assert_nonempty
    and not p.args
    and set(p.keywords) <= {"task_name", "split"}
  )


def _head(task: seqio.Task) -> Optional[functools.partial]:
  """The task's one text preprocessor, if the rest is tokenize, eos and the empty check."""
  pre = list(task.preprocessors)
  if len(pre) != 4 or not text_units.is_tokenize_then_eos(pre[1:3]) or not _is_check(pre[3]):
    return None
  head = pre[0]
  return head if isinstance(head, functools.partial) and not head.args else None


def _holdout(source, split: str) -> Optional[int]:
  return source._holdout_every if split in ("train", "validation") else None


def _python_records(source, path: str, split: str, holdout: Optional[int]) -> list[dict]:
  """A JSONL/TSV file's records as the source yields them (its own parser, its on_error)."""
  try:
    records = [record for _, record in source._python_records(path)]
  except sources.MalformedLine as e:
    raise text_units.RecordError(str(e)) from None
  return [r for r, keep in zip(records, _held(len(records), split, holdout)) if keep]


_PYTHON_FORMATS = ("jsonl", "tsv")


def mono_plan(task: seqio.Task, split: str) -> Optional[text_units.TextPlan]:
  head, source = _head(task), task.source
  if (
    head is None
    or head.func is not registry._to_targets
    or type(source) is not sources.LocalFileSource
    or source._fmt not in ("text", *_PYTHON_FORMATS)
    or set(head.keywords) - {"lang", "text_key"}
    or head.keywords.get("text_key", "text") not in source.output_keys
  ):
    return None
  holdout, key = _holdout(source, split), head.keywords.get("text_key", "text")

  def read(path: str) -> list[Optional[bytes]]:
    if source._fmt in _PYTHON_FORMATS:  # _to_targets: strip, drop the empty
      return [r[key].strip() or None for r in _python_records(source, path, split, holdout)]
    lines = [line.strip() for line in _lines(path)]
    lines = [line for line in lines if line]
    return [line for line, keep in zip(lines, _held(len(lines), split, holdout)) if keep]

  return text_units.TextPlan(
    tuple(source.list_shards(split)),
    read,
    source._cycle_length,
    source._block_length,
    f"mono|{source!r}|{split}|{holdout}|{head!r}",
  )


def _variants(render: functools.partial) -> list[list]:
  """render_bitext's variants (template x direction), in its order."""
  kw = render.keywords
  templates = kw.get("templates", registry.DEFAULT_BITEXT_TEMPLATES)
  direction = kw.get("direction", "both")
  out = []
  for t in templates:
    parts = registry.check_template(t)
    if direction in ("forward", "both"):
      out.append(registry._variant(parts, kw["src_lang"], kw["tgt_lang"], backward=False))
    if direction in ("backward", "both"):
      out.append(registry._variant(parts, kw["src_lang"], kw["tgt_lang"], backward=True))
  return out


def _render(variants: list[list], pairs: list) -> list[Optional[bytes]]:
  """render_bitext of stripped (src, tgt) pairs; None for a pair with an empty side."""
  pairs = [p if p[0] and p[1] else None for p in pairs]
  live = [p for p in pairs if p is not None]
  if len(variants) == 1 or not live:
    picks = iter([0] * len(live))
  else:
    joined = tf.constant([s + b"\t" + t for s, t in live], tf.string)
    picks = iter((tf.strings.to_hash_bucket_fast(joined, 1 << 30).numpy() % len(variants)).tolist())
  out = []
  for pair in pairs:
    if pair is None:
      out.append(None)
      continue
    v = variants[next(picks)]
    out.append(b"".join(x.encode() if isinstance(x, str) else pair[x[0] == "tgt"] for x in v))
  return out


def bitext_plan(task: seqio.Task, split: str) -> Optional[text_units.TextPlan]:
  head, source = _head(task), task.source
  aligned = type(source) is sources.AlignedTextSource
  files = type(source) is sources.LocalFileSource and source._fmt in _PYTHON_FORMATS
  if (
    head is None
    or head.func is not registry.render_bitext
    or not (aligned or files)
    or set(head.keywords) - {"src_lang", "tgt_lang", "templates", "direction"}
    or split not in source.splits
    or (files and sorted(source.output_keys) != ["src", "tgt"])
  ):
    return None
  variants = _variants(head)
  if files:
    holdout = _holdout(source, split)

    def read_files(path: str) -> list[Optional[bytes]]:
      records = _python_records(source, path, split, holdout)
      return _render(variants, [(r["src"].strip(), r["tgt"].strip()) for r in records])

    return text_units.TextPlan(
      tuple(source.list_shards(split)),
      read_files,
      source._cycle_length,
      source._block_length,
      f"bitext|{source!r}|{split}|{holdout}|{head!r}",
    )
  holdout = source._holdout_every

  def read(_: str) -> list[Optional[bytes]]:
    where = f"source {source._name or repr(source)} split {split!r}"
    src, tgt = (sources.resolve_files(f, where)[0] for f in (source._src_file, source._tgt_file))
    n_src, n_tgt = sources._count_lines(src), sources._count_lines(tgt)
    if n_src != n_tgt:
      raise ValueError(
        f"{where}: parallel files differ in length: {src} has {n_src} lines, "
        f"{tgt} has {n_tgt} lines"
      )
    pairs = zip(_lines(src), _lines(tgt))
    held = _held(n_src, split, holdout)
    pairs = [(s.strip(), t.strip()) for (s, t), keep in zip(pairs, held) if keep]
    return [r for r in _render(variants, pairs) if r is not None]  # the source drops blanks

  sig = "|".join(text_units.file_sig(f) for f in (source._src_file, source._tgt_file))
  return text_units.TextPlan(
    tuple(source.list_shards(split)), read, 1, 1, f"bitext|{source!r}|{sig}|{split}|{head!r}"
  )


text_units.register_provider(mono_plan)
text_units.register_provider(bitext_plan)
