"""Registering PolyLM pre-training tasks in a few lines, and looking up what a task holds.

Every task registered here outputs
  targets: int32 token ids of one document (or one rendered sentence pair), ending with eos
           (2). With sequence_length=None nothing is trimmed, so the packer can join whole
           documents with eos as the released recipe does.
  lang:    tf.string, the task's language key: "de" (monolingual) or "de-en" (bitext).
           Task.get_dataset keeps it; a seqio Mixture keeps it only with
           passthrough_features=["lang"]. `task_info(name)` gives the same offline.

    register_text_task("sw", "news", "/data/sw/news-*.txt")               # polylm_sw_news
    register_bitext_files_task("de", "en", "europarl", "/data/de-en.tsv")
"""

from __future__ import annotations

import dataclasses
import functools
import string
from collections.abc import Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from polylm_jax import vocab as vocab_lib
from tasks import sources
from tasks.languages import check_language

PLAIN_TEMPLATE = "{src_text}\n{tgt_text}"
INSTRUCTION_TEMPLATE = (
  "Translate the following {src_name} text into {tgt_name}.\n{src_text}\n{tgt_text}"
)
# Ours (SPEC section 4: the bitext format is not published): the two sides joined by a
# newline, in a direction chosen per pair (direction="both").
DEFAULT_BITEXT_TEMPLATES: tuple[str, ...] = (PLAIN_TEMPLATE,)
TEMPLATE_FIELDS = (
  "src_text",
  "tgt_text",
  "src_name",
  "tgt_name",
  "src_native",
  "tgt_native",
  "src_code",
  "tgt_code",
)
DIRECTIONS = ("forward", "backward", "both")


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  name: str
  kind: str  # "mono" or "bitext"
  languages: tuple[str, ...]  # (lang,) or (src, tgt)
  source: str  # "sample", "mc4", "wmt19", a user's name, ...

  @property
  def lang(self) -> str:
    """The value of the task's 'lang' feature."""
    return "-".join(self.languages)


_TASKS: dict[str, TaskInfo] = {}


def task_info(task_name: str) -> TaskInfo:
  """What a registered PolyLM task holds; ValueError naming the task if unknown."""
  if task_name not in _TASKS:
    raise ValueError(
      f"unknown PolyLM task {task_name!r}; registered: {len(_TASKS)} tasks, "
      f"e.g. {sorted(_TASKS)[:5]}"
    )
  return _TASKS[task_name]


def task_language(task_name: str) -> str:
  """The 'lang' feature value of a task: "de" or "de-en"."""
  return task_info(task_name).lang


def task_languages(task_name: str) -> tuple[str, ...]:
  return task_info(task_name).languages


def list_tasks(
  kind: str | None = None, source: str | None = None, language: str | None = None
) -> list[str]:
  """Names of registered PolyLM tasks, filtered (language matches either bitext side)."""
  return sorted(
    t.name
    for t in _TASKS.values()
    if (kind is None or t.kind == kind)
    and (source is None or t.source == source)
    and (language is None or language in t.languages)
  )


def mono_task_name(lang: str, source: str) -> str:
  return f"polylm_{lang}_{source}"


def bitext_task_name(src: str, tgt: str, source: str) -> str:
  return f"polylm_bitext_{src}_{tgt}_{source}"


# -- preprocessors ------------------------------------------------------------------------


def _to_targets(dataset: tf.data.Dataset, lang: str, text_key: str = "text"):
  """{text_key: str, ...} -> {"targets": str, "lang": str}; drops blank texts."""
  ds = dataset.map(
    lambda ex: {"targets": tf.strings.strip(ex[text_key]), "lang": tf.constant(lang)}
  )
  return ds.filter(lambda ex: tf.strings.length(ex["targets"]) > 0)


def check_template(template: str, where: str = "bitext template") -> list[tuple[str, str | None]]:
  """Parse a template into (literal, field) parts; ValueError for unknown fields."""
  parts = list(string.Formatter().parse(template))
  fields = [f for _, f, _, _ in parts if f is not None]
  unknown = sorted(set(fields) - set(TEMPLATE_FIELDS))
  if unknown:
    raise ValueError(
      f"{where} {template!r}: unknown fields {unknown}; known: {list(TEMPLATE_FIELDS)}"
    )
  if "src_text" not in fields or "tgt_text" not in fields:
    raise ValueError(f"{where} {template!r}: needs both {{src_text}} and {{tgt_text}}")
  if any(spec or conv for _, f, spec, conv in parts if f is not None):
    raise ValueError(f"{where} {template!r}: format specs/conversions are not supported")
  return [(literal, field) for literal, field, _, _ in parts]


def _variant(parts, src_lang: str, tgt_lang: str, backward: bool) -> list:
  """Template parts for one direction: literal strings, and ("src",)/("tgt",) for the
  example's texts. Backward reads the template with the pair reversed: {src_*} is then the
  tgt language and its text."""
  first, second = (tgt_lang, src_lang) if backward else (src_lang, tgt_lang)
  a, b = check_language(first), check_language(second)
  values = {
    "src_name": a.name,
    "tgt_name": b.name,
    "src_native": a.native,
    "tgt_native": b.native,
    "src_code": a.code,
    "tgt_code": b.code,
  }
  texts = {
    "src_text": ("tgt",) if backward else ("src",),
    "tgt_text": ("src",) if backward else ("tgt",),
  }
  out: list = []
  for literal, field in parts:
    if literal:
      out.append(literal)
    if field is not None:
      out.append(values.get(field) or texts[field])
  return out


def render_bitext(
  dataset: tf.data.Dataset,
  src_lang: str,
  tgt_lang: str,
  templates: Sequence[str] = DEFAULT_BITEXT_TEMPLATES,
  direction: str = "both",
) -> tf.data.Dataset:
  """{"src", "tgt"} -> {"targets", "lang"}: one rendering per pair.

  With several templates and/or direction="both", the variant (template x direction) is
  picked by a hash of the pair's text: deterministic, order-independent and so identical
  after a resume, and uniform over the variants across a corpus.
  """
  if direction not in DIRECTIONS:
    raise ValueError(f"bitext direction must be one of {DIRECTIONS}, got {direction!r}")
  if not templates:
    raise ValueError("bitext templates: give at least one template")
  variants = []
  for t in templates:
    parts = check_template(t)
    if direction in ("forward", "both"):
      variants.append(_variant(parts, src_lang, tgt_lang, backward=False))
    if direction in ("backward", "both"):
      variants.append(_variant(parts, src_lang, tgt_lang, backward=True))
  lang = f"{src_lang}-{tgt_lang}"

  def render(ex):
    src, tgt = tf.strings.strip(ex["src"]), tf.strings.strip(ex["tgt"])
    texts = {"src": src, "tgt": tgt}
    rendered = [
      tf.strings.join([texts[p[0]] if isinstance(p, tuple) else p for p in v]) for v in variants
    ]
    if len(rendered) == 1:
      targets = rendered[0]
    else:
      h = tf.strings.to_hash_bucket_fast(tf.strings.join([src, tgt], "\t"), 1 << 30)
      targets = tf.gather(tf.stack(rendered), h % len(rendered))
    return {
      "targets": targets,
      "lang": tf.constant(lang),
      "_ok": tf.logical_and(tf.strings.length(src) > 0, tf.strings.length(tgt) > 0),
    }

  ds = dataset.map(render).filter(lambda ex: ex["_ok"])
  return ds.map(lambda ex: {"targets": ex["targets"], "lang": ex["lang"]})


# -- registration -------------------------------------------------------------------------


def output_features(
  vocabulary: seqio.Vocabulary | None = None, *, inputs: bool = False
) -> dict[str, seqio.Feature]:
  """The features of every task in tasks/: "targets" (int32 ids ending with eos), and with
  `inputs` (instruction tasks) "inputs", the prompt, without eos: the response continues it."""
  vocabulary = vocabulary or vocab_lib.get_vocabulary()
  features = {"targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32)}
  if inputs:
    features = {"inputs": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32), **features}
  return features


def add_provider(registry: type, name: str, *args, replace: bool = True, **kwargs):
  """seqio `registry.add(name, ...)` (TaskRegistry or MixtureRegistry) with the one policy of
  tasks/: a name already registered is replaced (registering again is how a session points a
  task at other files or another vocabulary), or is an error with replace=False."""
  if name in registry.names():
    if not replace:
      kind = "mixture" if registry is seqio.MixtureRegistry else "task"
      raise ValueError(f"{kind} {name!r} is already registered (pass replace=True)")
    registry.remove(name)
  return registry.add(name, *args, **kwargs)


def register_task(
  name: str,
  source: seqio.DataSource,
  info: TaskInfo,
  preprocessors: Sequence[Callable],
  vocabulary: seqio.Vocabulary | None = None,
  replace: bool = True,
) -> str:
  """Register a seqio Task: `preprocessors` must produce {"targets": str, "lang": str};
  tokenizing, eos and the empty-task check are appended here."""
  add_provider(
    seqio.TaskRegistry,
    name,
    replace=replace,
    source=source,
    output_features=output_features(vocabulary),
    preprocessors=[
      *preprocessors,
      functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
      seqio.preprocessors.append_eos_after_trim,
      functools.partial(sources.assert_nonempty, task_name=name),
    ],
  )
  _TASKS[name] = info
  return name


def register_mono_task(
  lang: str,
  source_name: str,
  source: seqio.DataSource,
  preprocessors: Sequence[Callable] = (),
  text_key: str = "text",
  name: str | None = None,
  vocabulary: seqio.Vocabulary | None = None,
  replace: bool = True,
) -> str:
  """A monolingual task from any seqio DataSource; `preprocessors` (optional) map its
  examples to ones holding the document text under `text_key`."""
  check_language(lang, where=f"task {name or mono_task_name(lang, source_name)}")
  name = name or mono_task_name(lang, source_name)
  return register_task(
    name,
    source,
    TaskInfo(name, "mono", (lang,), source_name),
    [*preprocessors, functools.partial(_to_targets, lang=lang, text_key=text_key)],
    vocabulary,
    replace,
  )


def register_bitext_task(
  src_lang: str,
  tgt_lang: str,
  source_name: str,
  source: seqio.DataSource,
  preprocessors: Sequence[Callable] = (),
  templates: Sequence[str] = DEFAULT_BITEXT_TEMPLATES,
  direction: str = "both",
  name: str | None = None,
  vocabulary: seqio.Vocabulary | None = None,
  replace: bool = True,
) -> str:
  """A bilingual task from any seqio DataSource; `preprocessors` map its examples to
  {"src": src_lang text, "tgt": tgt_lang text}."""
  name = name or bitext_task_name(src_lang, tgt_lang, source_name)
  for code in (src_lang, tgt_lang):
    check_language(code, where=f"task {name}")
  if src_lang == tgt_lang:
    raise ValueError(f"task {name}: bitext needs two different languages, got {src_lang!r}")
  for t in templates:
    check_template(t, where=f"task {name}: template")
  if direction not in DIRECTIONS:
    raise ValueError(f"task {name}: direction must be one of {DIRECTIONS}, got {direction!r}")
  if not templates:
    raise ValueError(f"task {name}: give at least one bitext template")
  render = functools.partial(
    render_bitext,
    src_lang=src_lang,
    tgt_lang=tgt_lang,
    templates=tuple(templates),
    direction=direction,
  )
  return register_task(
    name,
    source,
    TaskInfo(name, "bitext", (src_lang, tgt_lang), source_name),
    [*preprocessors, render],
    vocabulary,
    replace,
  )


def register_text_task(
  lang: str,
  source_name: str,
  patterns: str | Sequence[str] | Mapping[str, str | Sequence[str]],
  *,
  fmt: str = "text",
  text_key: str = "text",
  on_error: str = "fail",
  holdout_every: int | None = None,
  name: str | None = None,
  vocabulary: seqio.Vocabulary | None = None,
  replace: bool = True,
) -> str:
  """A monolingual task from local files: glob(s) (split "train", or a split->globs mapping).

  fmt "text": one document per non-blank line; "jsonl"/"tfrecord": the string field
  `text_key` of each record. on_error ("fail"/"skip") is the malformed-JSONL policy.
  """
  split_to_pattern = patterns if isinstance(patterns, Mapping) else {"train": patterns}
  if holdout_every and "validation" not in split_to_pattern:
    split_to_pattern = {**split_to_pattern, "validation": split_to_pattern["train"]}
  fields = None if fmt == "text" else {text_key: "text"}
  name = name or mono_task_name(lang, source_name)
  source = sources.LocalFileSource(
    split_to_pattern,
    fmt=fmt,
    fields=fields,
    on_error=on_error,
    holdout_every=holdout_every,
    name=name,
  )
  return register_mono_task(
    lang, source_name, source, name=name, vocabulary=vocabulary, replace=replace
  )


def register_bitext_files_task(
  src_lang: str,
  tgt_lang: str,
  source_name: str,
  patterns: str | Sequence[str] | Mapping[str, str | Sequence[str]],
  *,
  fmt: str = "tsv",
  fields: Mapping[str | int, str] | None = None,
  on_error: str = "fail",
  holdout_every: int | None = None,
  templates: Sequence[str] = DEFAULT_BITEXT_TEMPLATES,
  direction: str = "both",
  name: str | None = None,
  vocabulary: seqio.Vocabulary | None = None,
  replace: bool = True,
) -> str:
  """A bilingual task from local pair files.

  fmt "tsv": column 0 is src, column 1 tgt; "jsonl"/"tfrecord": the fields named by the
  language codes ({"de": ..., "en": ...}). `fields` overrides: {record key: "src"|"tgt"}.
  """
  if fields is None:
    fields = {0: "src", 1: "tgt"} if fmt == "tsv" else {src_lang: "src", tgt_lang: "tgt"}
  if sorted(fields.values()) != ["src", "tgt"]:
    raise ValueError(f"bitext fields must map one key to 'src' and one to 'tgt', got {fields}")
  if fmt == "text":
    raise ValueError(
      "bitext files: fmt must be tsv, jsonl or tfrecord (for two aligned text "
      "files use sources.AlignedTextSource with register_bitext_task)"
    )
  split_to_pattern = patterns if isinstance(patterns, Mapping) else {"train": patterns}
  if holdout_every and "validation" not in split_to_pattern:
    split_to_pattern = {**split_to_pattern, "validation": split_to_pattern["train"]}
  name = name or bitext_task_name(src_lang, tgt_lang, source_name)
  source = sources.LocalFileSource(
    split_to_pattern,
    fmt=fmt,
    fields=fields,
    on_error=on_error,
    holdout_every=holdout_every,
    name=name,
  )
  return register_bitext_task(
    src_lang,
    tgt_lang,
    source_name,
    source,
    templates=templates,
    direction=direction,
    name=name,
    vocabulary=vocabulary,
    replace=replace,
  )
