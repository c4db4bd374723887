"""Instruction-tuning tasks: MultiAlpaca-format JSONL -> (prompt, response) token pairs.

Records (SPEC section 5): {"instruction": str, "input": str | null | missing, "output": str};
other keys (e.g. "lang", "round", "teacher" written by self_instruct) are ignored. Each task
outputs
  inputs   int32 ids of the prompt, polylm_jax.prompts.format_prompt(instruction, input, style)
           -- no eos: the response continues it.
  targets  int32 ids of the response, ending with eos (2).
Prompt and response are tokenized separately (as a chat front end sees them: it encodes the
prompt and the model continues). `polylm_jax.instruct_stream` packs them with loss on the
response only.

Built-in: `polylm_multialpaca_{lang}` for the 11 MultiAlpaca languages and the mixture
`polylm_multialpaca` (rates proportional to each language's training records, i.e. the
concatenation of the released data). Files: `{data_dir}/{lang}.jsonl`, where data_dir is
`set_data_dir(...)`, else $POLYLM_JAX_MULTIALPACA_DIR; resolved when a task is first read,
so importing registers without touching files. Every `HOLDOUT_EVERY`-th record of a file is
the "validation" split, the rest "train" (MultiAlpaca has no validation split); a file with
fewer records (but at least 2) holds out its last, so tiny data still has an eval.

A subset of languages (MIXTURE_OR_TASK_NAME, see `select`): "es,ja", a list of task or
mixture names, "polylm_multialpaca_chat:es,ja", or "polylm_multialpaca_present" (the
languages whose files exist).

Other data (e.g. self-instruct output):
    register_instruction_task("sw", "/data/si/sw*.jsonl", source_name="selfinstruct")
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from polylm_jax import instruct_stream, prompts
from tasks import registry, sources
from tasks.languages import check_language

# SPEC section 5: MultiAlpaca has these 11 languages (no en/zh split).
MULTIALPACA_LANGUAGES: tuple[str, ...] = (
  "ar",
  "de",
  "es",
  "fr",
  "id",
  "ja",
  "ko",
  "pt",
  "ru",
  "th",
  "vi",
)
DATA_DIR_ENV = "POLYLM_JAX_MULTIALPACA_DIR"
DEFAULT_FILE_PATTERN = "{lang}.jsonl"
HOLDOUT_EVERY = 100
MIXTURE_NAME = "polylm_multialpaca"
CHAT_MIXTURE_NAME = "polylm_multialpaca_chat"
PRESENT_SUFFIX = "_present"  # "polylm_multialpaca_present": the languages whose files exist
ON_ERROR = sources.ON_ERROR
_MAX_LOGGED_SKIPS = 10

_data_dir: str | None = None
_file_pattern: str = DEFAULT_FILE_PATTERN
_INFO: dict[str, dict] = {}
_MIXTURES: dict[str, tuple[str, ...]] = {}


def set_data_dir(path: str | None, file_pattern: str = DEFAULT_FILE_PATTERN) -> None:
  """Where the built-in MultiAlpaca tasks read: `{path}/{file_pattern}` with {lang} filled in
  (a glob is fine, e.g. "{lang}-*.jsonl"). Overrides $POLYLM_JAX_MULTIALPACA_DIR."""
  global _data_dir, _file_pattern
  if "{lang}" not in file_pattern:
    raise ValueError(f"MultiAlpaca file_pattern {file_pattern!r} must contain {{lang}}")
  _data_dir, _file_pattern = (os.fspath(path) if path is not None else None), file_pattern


def data_dir() -> str:
  """The MultiAlpaca directory in use; a clear error when none is configured."""
  path = _data_dir or os.environ.get(DATA_DIR_ENV)
  if not path:
    raise FileNotFoundError(
      f"MultiAlpaca data directory not configured: set ${DATA_DIR_ENV} or call "
      f"tasks.instructions.set_data_dir(path); it must "
      f"hold {DEFAULT_FILE_PATTERN.format(lang='<lang>')} files for "
      f"{', '.join(MULTIALPACA_LANGUAGES)}"
    )
  return path


def multialpaca_files(lang: str) -> str:
  return os.path.join(data_dir(), _file_pattern.format(lang=lang))


def task_name(lang: str, source_name: str = "multialpaca", style: str = "multialpaca") -> str:
  suffix = "" if style == "multialpaca" else f"_{style}"
  return f"polylm_{source_name}_{lang}{suffix}"


def instruction_task_info(name: str) -> dict:
  """{"lang", "source", "style"} of a registered instruction task."""
  if name not in _INFO:
    raise ValueError(
      f"{name!r} is not a registered instruction task; registered: "
      f"{sorted(_INFO)[:8]}{' ...' if len(_INFO) > 8 else ''}"
    )
  return dict(_INFO[name])


def is_instruction_task(name: str) -> bool:
  return name in _INFO


def list_instruction_tasks(style: str | None = None) -> list[str]:
  return sorted(n for n, i in _INFO.items() if style is None or i["style"] == style)


# -- reading ------------------------------------------------------------------------------


def parse_record(line: str, where: str) -> dict[str, str]:
  """{"instruction", "input" ("" for null/missing), "output"} of one JSONL line.

  Raises sources.MalformedLine naming `where` (file and line) and the field at fault.
  """
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise sources.MalformedLine(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(obj, dict):
    raise sources.MalformedLine(f"{where}: expected a JSON object, got {type(obj).__name__}")
  out = {}
  for key, nullable in (("instruction", False), ("input", True), ("output", False)):
    value = obj.get(key)
    if value is None and nullable:
      value = ""
    if not isinstance(value, str):
      got = "missing" if value is None else f"a {type(value).__name__}"
      raise sources.MalformedLine(
        f"{where}: field {key!r} must be a string{' or null' if nullable else ''}, is {got}"
      )
    out[key] = sources.check_text(value, where, key)
  return out


def is_blank(record: dict[str, str]) -> bool:
  """A well-formed record with nothing to learn: blank instruction or output (the released
  ja.jsonl has one). Such records are dropped and counted, whatever on_error says."""
  return not record["instruction"].strip() or not record["output"].strip()


class InstructionSource(seqio.DataSource):
  """MultiAlpaca-format JSONL files (one per shard) -> {"instruction", "input", "output"}.

  `patterns` is a glob / list of globs, or a zero-argument callable returning them (resolved
  on first use). on_error "fail" raises on a malformed line naming file and line; "skip"
  drops it and counts it in `skipped` ({file: count}). Records with a blank instruction or
  output are dropped either way and counted in `blank`. Every `holdout_every`-th record of a
  file (counting well-formed records; see `held_out`) is "validation", the rest "train".
  """

  FIELDS = ("instruction", "input", "output")

  def __init__(
    self,
    patterns: str | Sequence[str] | Callable[[], str | Sequence[str]],
    *,
    holdout_every: int | None = HOLDOUT_EVERY,
    on_error: str = "fail",
    name: str = "",
  ):
    if on_error not in ON_ERROR:
      raise ValueError(
        f"{name or 'instruction source'}: on_error must be one of {ON_ERROR}, got {on_error!r}"
      )
    if holdout_every is not None and holdout_every < 2:
      raise ValueError(
        f"{name or 'instruction source'}: holdout_every must be >= 2, got {holdout_every}"
      )
    self._patterns = patterns
    self._holdout_every = holdout_every
    self._on_error = on_error
    self._name = name
    self.skipped: dict[str, int] = {}
    self.blank: dict[str, int] = {}
    super().__init__(splits=("train", "validation") if holdout_every else ("train",))

  def __repr__(self):
    return f"InstructionSource({self._name!r})"

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  @property
  def output_keys(self) -> tuple[str, ...]:
    return self.FIELDS

  def _where(self, split: str) -> str:
    return f"instruction task {self._name or '?'} split {split!r}"

  def list_shards(self, split: str) -> Sequence[str]:
    if split not in self.splits:
      raise ValueError(f"{self._where(split)}: no such split; splits: {list(self.splits)}")
    patterns = self._patterns() if callable(self._patterns) else self._patterns
    return sources.resolve_files(patterns, self._where(split))

  def _file_records(self, path: str) -> list[dict[str, str]]:
    """The well-formed, non-blank records of one file, in file order."""
    kept = []
    with tf.io.gfile.GFile(path, "rb") as f:
      for lineno, raw in enumerate(f, start=1):
        if not raw.strip():
          continue
        where = f"{path} line {lineno}"
        try:
          record = parse_record(sources.decode_line(raw, where, first=lineno == 1), where)
        except sources.MalformedLine as e:
          if self._on_error == "fail":
            raise
          n = self.skipped[path] = self.skipped.get(path, 0) + 1
          if n <= _MAX_LOGGED_SKIPS:
            logging.warning("skipping malformed instruction record (%d in this file): %s", n, e)
          continue
        if is_blank(record):
          n = self.blank[path] = self.blank.get(path, 0) + 1
          if n <= _MAX_LOGGED_SKIPS:
            logging.warning(
              "dropping an instruction record with a blank instruction or output: %s line %d",
              path,
              lineno,
            )
          continue
        kept.append(record)
    return kept

  def held_out(self, index: int, count: int) -> bool:
    """Whether record `index` (1-based) of a file of `count` records is "validation": every
    holdout_every-th record; a file with 2 to holdout_every - 1 records holds out its last,
    so small data still has an eval split."""
    k = self._holdout_every
    return k is not None and (index % k == 0 or (2 <= count < k and index == count))

  def records(self, path: str, split: str = "train") -> Iterable[dict[str, str]]:
    """The split's records of one file, in file order (Python; also used for counting)."""
    kept = self._file_records(path)
    for index, record in enumerate(kept, start=1):
      if self._holdout_every is None or split not in ("train", "validation"):
        yield record
      elif self.held_out(index, len(kept)) == (split == "validation"):
        yield record

  def num_records(self, split: str = "train") -> int:
    return sum(1 for f in self.list_shards(split) for _ in self.records(f, split))

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
    files = list(self.list_shards(split))
    if shard_info:
      if len(files) < shard_info.num_shards:
        raise ValueError(
          f"{self._where(split)}: {len(files)} files cannot be split across "
          f"{shard_info.num_shards} shards"
        )
      files = files[shard_info.index :: shard_info.num_shards]
    if shuffle:
      files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]

    def generate(path):
      path = path.decode() if isinstance(path, bytes) else str(path)
      for r in self.records(path, split):
        yield {k: r[k].encode("utf-8") for k in self.FIELDS}

    signature = {k: tf.TensorSpec([], tf.string) for k in self.FIELDS}
    files_ds = tf.data.Dataset.from_tensor_slices(np.array(files, dtype=str))
    return files_ds.interleave(
      lambda p: tf.data.Dataset.from_generator(generate, args=(p,), output_signature=signature),
      cycle_length=1,
    )


# -- preprocessing ------------------------------------------------------------------------


def format_instructions(dataset: tf.data.Dataset, style: str = "multialpaca") -> tf.data.Dataset:
  """{"instruction", "input", "output"} -> {"inputs": prompt, "targets": response}.

  The TF twin of prompts.format_prompt (tests check they agree byte for byte).
  """
  prompts.check_style(style)

  def fmt(ex):
    instruction = tf.strings.strip(ex["instruction"])
    inp = tf.strings.strip(ex["input"])
    message = tf.cond(
      tf.strings.length(inp) > 0,
      lambda: tf.strings.join([inp, instruction], "\n"),
      lambda: instruction,
    )
    if style == "multialpaca":
      prompt = tf.strings.join([message, "\n\n"])
    elif style == "chat":
      prompt = tf.strings.join([prompts.CHAT_USER, message, "\n", prompts.CHAT_ASSISTANT])
    else:
      prompt = message
    return {"inputs": prompt, "targets": ex["output"]}

  return dataset.map(fmt, num_parallel_calls=tf.data.AUTOTUNE)


def register_instruction_task(
  lang: str,
  patterns: str | Sequence[str] | Callable[[], str | Sequence[str]],
  *,
  source_name: str = "instructions",
  style: str = "multialpaca",
  holdout_every: int | None = HOLDOUT_EVERY,
  on_error: str = "fail",
  name: str | None = None,
  vocabulary: seqio.Vocabulary | None = None,
  replace: bool = True,
) -> str:
  """Register `polylm_{source_name}_{lang}[_{style}]` reading MultiAlpaca-format JSONL."""
  name = name or task_name(lang, source_name, style)
  check_language(lang, where=f"instruction task {name}")
  prompts.check_style(style, where=f"instruction task {name}")
  source = InstructionSource(patterns, holdout_every=holdout_every, on_error=on_error, name=name)
  registry.add_provider(
    seqio.TaskRegistry,
    name,
    replace=replace,
    source=source,
    output_features=registry.output_features(vocabulary, inputs=True),
    preprocessors=[
      functools.partial(format_instructions, style=style),
      seqio.preprocessors.tokenize,
      seqio.preprocessors.append_eos_after_trim,
      functools.partial(sources.assert_nonempty, task_name=name),
    ],
  )
  _INFO[name] = {"lang": lang, "source": source_name, "style": style}
  instruct_stream.declare_task(name, lang)
  return name


@functools.lru_cache(maxsize=None)
def _train_records(name: str, fingerprint: tuple) -> int:
  task = seqio.get_mixture_or_task(name)
  return task.source.num_records("train")


def num_train_records(task: seqio.Task | str) -> int:
  """Training records of an instruction task (counted once per set of files)."""
  task = seqio.get_mixture_or_task(task) if isinstance(task, str) else task
  try:
    files = task.source.list_shards("train")
  except FileNotFoundError as e:
    if _INFO.get(task.name, {}).get("source") != "multialpaca" or not (_data_dir or _env_dir()):
      raise
    present = [lang for lang in MULTIALPACA_LANGUAGES if _has_files(task_name(lang))]
    raise FileNotFoundError(
      f"{e}; MultiAlpaca files are present for {', '.join(present) or 'no language'}: train "
      f"those with MIXTURE_OR_TASK_NAME='{MIXTURE_NAME}{PRESENT_SUFFIX}' or list languages, "
      "e.g. 'es,ja'"
    ) from None
  stamp = tuple((f, tf.io.gfile.stat(f).length) for f in files)
  return _train_records(task.name, stamp)


def register_instruction_mixture(
  name: str,
  task_names: Sequence[str],
  rates: Mapping[str, float] | None = None,
  replace: bool = True,
) -> str:
  """A seqio Mixture of instruction tasks; default rate: each task's training records."""
  for t in task_names:
    if not is_instruction_task(t):
      raise ValueError(f"mixture {name}: {t!r} is not an instruction task")
  entries = [(t, rates[t] if rates is not None else num_train_records) for t in task_names]
  registry.add_provider(seqio.MixtureRegistry, name, entries, replace=replace)
  _MIXTURES[name] = tuple(task_names)
  return name


# -- selections: MIXTURE_OR_TASK_NAME values no registry holds ------------------------------


def _env_dir() -> str | None:
  return os.environ.get(DATA_DIR_ENV)


def _has_files(name: str) -> bool:
  try:
    return bool(seqio.get_mixture_or_task(name).source.list_shards("train"))
  except FileNotFoundError:
    return False


def _selection_item(item: str) -> tuple[str, ...] | None:
  """The tasks one list item names: an instruction task, an instruction mixture or a
  MultiAlpaca language code; None if it is none of them."""
  if is_instruction_task(item):
    return (item,)
  if item in _MIXTURES:
    return _MIXTURES[item]
  if item in MULTIALPACA_LANGUAGES:
    return (task_name(item),)
  return None


def _unknown(name: str, item: str) -> ValueError:
  known = [*_INFO, *_MIXTURES, *MULTIALPACA_LANGUAGES]
  close = difflib.get_close_matches(item, known, n=3, cutoff=0.5)
  return ValueError(
    f"MIXTURE_OR_TASK_NAME={name!r}: {item!r} is no instruction task, instruction mixture or "
    f"MultiAlpaca language ({', '.join(MULTIALPACA_LANGUAGES)})"
    + (f"; did you mean {', '.join(close)}?" if close else "")
  )


def _selected_tasks(name: str) -> list[str] | None:
  """The tasks of a selection (see `select`), None when `name` is not one."""
  base = name[: -len(PRESENT_SUFFIX)] if name.endswith(PRESENT_SUFFIX) else None
  if base in _MIXTURES:
    data_dir()  # a clear error when no directory is configured
    tasks = [t for t in _MIXTURES[base] if _has_files(t)]
    if not tasks:
      raise FileNotFoundError(
        f"MIXTURE_OR_TASK_NAME={name!r}: no file of {base}'s tasks is present (MultiAlpaca: "
        f"{os.path.join(data_dir(), _file_pattern)})"
      )
    return tasks
  if ":" in name:
    base, _, langs = name.partition(":")
    if base not in _MIXTURES:
      return None
    by_lang = {_INFO[t]["lang"]: t for t in _MIXTURES[base]}
    wanted = [lang.strip() for lang in langs.split(",") if lang.strip()]
    missing = [lang for lang in wanted if lang not in by_lang]
    if missing or not wanted:
      raise ValueError(
        f"MIXTURE_OR_TASK_NAME={name!r}: mixture {base} has no task in {missing or 'no language'}"
        f"; its languages: {', '.join(by_lang)}"
      )
    return [by_lang[lang] for lang in wanted]
  items = [item.strip() for item in name.split(",")]
  found = [_selection_item(item) for item in items]
  if all(f is None for f in found) or ("," not in name and name not in MULTIALPACA_LANGUAGES):
    return None
  for item, f in zip(items, found):
    if f is None:
      raise _unknown(name, item)
  return [t for f in found for t in f]


def select(name: str) -> tuple[list[str], list[float]] | None:
  """(tasks, rates) of a selection of instruction data, a MIXTURE_OR_TASK_NAME that no seqio
  registry holds; None for any other name. Rates: each task's training records, as in the
  built-in mixtures. Selections:
    "polylm_multialpaca_es,polylm_multialpaca_ja"  instruction tasks and mixtures
    "es,ja" (or "es")                              MultiAlpaca languages, MultiAlpaca format
    "polylm_multialpaca_chat:es,ja"                a mixture's tasks in these languages
    "polylm_multialpaca_present"                   a mixture's tasks whose files exist
  """
  tasks = _selected_tasks(name.strip())
  if tasks is None:
    return None
  tasks = list(dict.fromkeys(tasks))  # each task once, in order
  return tasks, [float(num_train_records(t)) for t in tasks]


def register_multialpaca(vocabulary: seqio.Vocabulary | None = None) -> list[str]:
  """The built-in MultiAlpaca tasks (both styles) and their two mixtures."""
  names = {}
  for style, mixture in (("multialpaca", MIXTURE_NAME), ("chat", CHAT_MIXTURE_NAME)):
    names[style] = [
      register_instruction_task(
        lang,
        functools.partial(multialpaca_files, lang),
        source_name="multialpaca",
        style=style,
        vocabulary=vocabulary,
      )
      for lang in MULTIALPACA_LANGUAGES
    ]
    register_instruction_mixture(mixture, names[style])
  return names["multialpaca"] + names["chat"]


BUILTIN_INSTRUCTION_TASKS: tuple[str, ...] = tuple(register_multialpaca())
instruct_stream.add_selector(select)
