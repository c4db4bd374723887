"""Reading the benchmark datasets: TFDS where it has them, else local files in the public
releases' layouts. Every record is normalised to the fields tasks/templates.py names, and
every problem is an error that names the task, the file (or TFDS split) and the field.

Local layout under the benchmark data dir (`benchmark.configure(data_dir=...)`, gin
EVAL_DATA_DIR or $POLYLM_EVAL_DATA_DIR; each family's folder can also be set on its own):

  xcopa/{lang}/test.{lang}.jsonl, val.{lang}.jsonl   the release's data/ folder
        {"premise", "choice1", "choice2", "question": "cause"|"effect", "label": 0|1, "idx"}
  xwinograd/{lang}/test.jsonl (or test.tsv with a header row); Japanese is folder "jp"
        {"sentence" (with one "_"), "option1", "option2", "answer": "1"|"2"}
  mtg/{story,question,title}/{lang}/{train,dev,test}.jsonl   {"src", "tgt"} (ours: the MTG
        release's own layout is not reproduced here; convert to this)
  wmt20/sgm/newstest2020-{s}{t}-src.{s}.sgm and -ref.{t}.sgm   the WMT20 test release
        (plain .txt, one segment per line, also accepted); few-shot demonstrations from
        wmt20/dev/*-{s}{t}-src.{s}.{sgm,txt} (newstest2019 or newsdev2020, with their refs)
  flores200/{dev,devtest}/{code}.{dev,devtest}   the FLORES-200 release (eng_Latn, ...)

TFDS: xnli:1.1.0 (test; demonstrations from validation), paws_x_wiki/{lang}:1.0.0 (test;
validation), tydi_qa/goldp:3.0.0 (validation-{lang}; train examples of the same language).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# Label value in the data -> index of the template choice (the verbaliser's domain).
LABELS: dict[str, dict[Any, int]] = {
  "xnli": {0: 0, 1: 1, 2: 2, "entailment": 0, "neutral": 1, "contradiction": 2},
  "pawsx": {0: 0, 1: 1, "0": 0, "1": 1},
  "xcopa": {0: 0, 1: 1},
  "xwinograd": {"1": 0, "2": 1, 1: 0, 2: 1},
}
TFDS_NAMES = {
  "xnli": "xnli:1.1.0",
  "pawsx": "paws_x_wiki/{lang}:1.0.0",
  "tydiqa": "tydi_qa/goldp:3.0.0",
}
TYDIQA_NAMES = {
  "ar": "arabic",
  "bn": "bengali",
  "en": "english",
  "fi": "finnish",
  "id": "indonesian",
  "ko": "korean",
  "ru": "russian",
  "sw": "swahili",
  "te": "telugu",
}
XWINOGRAD_DIRS = {"ja": "jp"}
FLORES200_CODES = {
  "zh": "zho_Hans",
  "en": "eng_Latn",
  "es": "spa_Latn",
  "fr": "fra_Latn",
  "pt": "por_Latn",
  "ru": "rus_Cyrl",
  "de": "deu_Latn",
  "it": "ita_Latn",
  "ar": "arb_Arab",
  "ja": "jpn_Jpan",
  "ko": "kor_Hang",
  "th": "tha_Thai",
  "vi": "vie_Latn",
  "id": "ind_Latn",
  "nl": "nld_Latn",
  "pl": "pol_Latn",
  "tr": "tur_Latn",
  "he": "heb_Hebr",
}


@dataclasses.dataclass(frozen=True)
class Record:
  """One normalised example: template fields, a label (rank) or references (generation)."""

  id: str
  fields: dict[str, str]
  where: str
  label: int = -1
  references: tuple[str, ...] = ()


class BenchmarkDataError(ValueError):
  """Bad or missing benchmark data; the message names task, file/split and field."""


# -- raw readers --------------------------------------------------------------------------


def _need_file(path: str, task: str, split: str, what: str) -> str:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"task {task}: split {split!r}: {what} file not found: {path}")
  return path


def read_jsonl(path: str, task: str) -> list[tuple[dict[str, Any], str]]:
  out = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path} line {lineno}"
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise BenchmarkDataError(
          f"task {task}: {where}: malformed record: invalid JSON ({e.msg} at column {e.colno})"
        ) from None
      if not isinstance(obj, dict):
        raise BenchmarkDataError(
          f"task {task}: {where}: malformed record: expected a JSON "
          f"object, got {type(obj).__name__}"
        )
      out.append((obj, where))
  return out


def read_tsv(path: str, task: str) -> list[tuple[dict[str, Any], str]]:
  """A TSV file whose first row names the columns."""
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  if not lines:
    raise BenchmarkDataError(f"task {task}: {path}: empty file")
  header = lines[0].split("\t")
  out = []
  for lineno, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    cells = line.split("\t")
    if len(cells) != len(header):
      raise BenchmarkDataError(
        f"task {task}: {path} line {lineno}: malformed record: "
        f"{len(cells)} columns, the header has {len(header)} {header}"
      )
    out.append((dict(zip(header, cells)), f"{path} line {lineno}"))
  return out


_SEG = re.compile(r"<seg[^>]*>(.*)</seg>", re.IGNORECASE)


def read_segments(path: str) -> list[str]:
  """Segments of a WMT .sgm file (as sacrebleu extracts them) or lines of a text file."""
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  if path.endswith(".sgm"):
    return [m.group(1).strip() for m in map(_SEG.search, lines) if m]
  return [line.strip() for line in lines]


def read_parallel(src: str, ref: str, task: str) -> list[tuple[dict[str, Any], str]]:
  a, b = read_segments(src), read_segments(ref)
  if len(a) != len(b):
    raise BenchmarkDataError(
      f"task {task}: parallel files differ in length: {src} has {len(a)} "
      f"segments, {ref} has {len(b)}"
    )
  return [({"src": s, "tgt": t}, f"{src} segment {i + 1}") for i, (s, t) in enumerate(zip(a, b))]


def _to_python(x: Any) -> Any:
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if isinstance(x, dict):
    return {k: _to_python(v) for k, v in x.items()}
  if hasattr(x, "tolist"):
    return _to_python(x.tolist())
  if isinstance(x, (list, tuple)):
    return [_to_python(v) for v in x]
  return x


def read_tfds(
  name: str, split: str, task: str, data_dir: str | None
) -> list[tuple[dict[str, Any], str]]:
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # noqa: BLE001  (tfds raises many kinds; all mean "no such dataset")
    raise BenchmarkDataError(f"task {task}: TFDS dataset {name}: {e}") from e
  known = list(builder.info.splits.keys()) if builder.info.splits else []
  if known and split not in known:
    raise BenchmarkDataError(
      f"task {task}: TFDS dataset {name} has no split {split!r}; splits: {sorted(known)}"
    )
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except Exception as e:  # noqa: BLE001
    raise FileNotFoundError(
      f"task {task}: TFDS dataset {name} split {split!r} is not available in "
      f"{data_dir or '$TFDS_DATA_DIR'} (prepare it with `tfds build` where it can be "
      f"downloaded, then copy it here): {e}"
    ) from e
  return [
    (_to_python(ex), f"TFDS {name} split {split} example {i}")
    for i, ex in enumerate(tfds.as_numpy(ds))
  ]


# -- normalisers: raw record -> Record ------------------------------------------------------


def _text(raw: Mapping[str, Any], key: str, task: str, where: str) -> str:
  value = raw.get(key)
  if not isinstance(value, str):
    got = "missing" if value is None else f"a {type(value).__name__}"
    raise BenchmarkDataError(
      f"task {task}: {where}: malformed record: field {key!r} must be a string, is {got}"
    )
  return value.strip()


def _label(family: str, raw: Mapping[str, Any], key: str, task: str, where: str) -> int:
  if key not in raw:
    raise BenchmarkDataError(f"task {task}: {where}: malformed record: field {key!r} is missing")
  value = raw[key]
  if isinstance(value, str):
    value = value.strip()
  if isinstance(value, bool) or not isinstance(value, (int, str)) or value not in LABELS[family]:
    shown = sorted({repr(k) for k in LABELS[family]})
    raise BenchmarkDataError(
      f"task {task}: {where}: field {key!r} is {value!r}, a label not in "
      f"the {family} verbaliser (known labels: {', '.join(shown)})"
    )
  return LABELS[family][value]


def _clause(text: str) -> str:
  return text[:-1] if text and text[-1] in ".。!?！？" else text


def _lower_first(text: str) -> str:
  return text[:1].lower() + text[1:]


def normalize_xnli(raw, where, task, lang) -> Record:
  premise = raw.get("premise")
  if not isinstance(premise, dict) or not isinstance(premise.get(lang), str):
    raise BenchmarkDataError(
      f"task {task}: {where}: malformed record: field 'premise' has no {lang!r} text"
    )
  hyp = raw.get("hypothesis") or {}
  languages, texts = list(hyp.get("language", [])), list(hyp.get("translation", []))
  if lang not in languages or len(texts) != len(languages):
    raise BenchmarkDataError(
      f"task {task}: {where}: malformed record: field 'hypothesis' has no {lang!r} translation"
    )
  fields = {
    "premise": premise[lang].strip(),
    "hypothesis": str(texts[languages.index(lang)]).strip(),
  }
  return Record(where, fields, where, label=_label("xnli", raw, "label", task, where))


# lm-evaluation-harness paws-x/utils.py: its process_docs runs for these languages only.
PAWSX_DETOKENIZED = ("de", "en", "es", "fr")


def harness_detokenize(text: str) -> str:
  """lm-evaluation-harness's general_detokenize (paws-x/utils.py)."""
  for a, b in ((" n't", "n't"), (" )", ")"), ("( ", "("), ('" ', '"'), (' "', '"')):
    text = text.replace(a, b)
  return re.sub(r" (['.,])", r"\1", text)


def normalize_pawsx(raw, where, task, lang) -> Record | None:
  """None (dropped) for an empty sentence in de en es fr, as the harness's process_docs."""
  fields = {k: _text(raw, k, task, where) for k in ("sentence1", "sentence2")}
  if lang in PAWSX_DETOKENIZED and not (fields["sentence1"] and fields["sentence2"]):
    return None
  first, second = fields["sentence1"], fields["sentence2"]
  if lang in PAWSX_DETOKENIZED:  # as the harness: joined at "Yes, " / "No, "
    first, second = harness_detokenize(first).strip(), harness_detokenize(second).strip()
    first = first[:-1] if first.endswith((".", ",", ";")) else first
    second = _lower_first(second)
  fields.update(sentence1_clause=first, sentence2_lower=second)
  return Record(where, fields, where, label=_label("pawsx", raw, "label", task, where))


def normalize_xcopa(raw, where, task, lang) -> Record:
  fields = {k: _text(raw, k, task, where) for k in ("premise", "choice1", "choice2", "question")}
  fields["premise_clause"] = _clause(fields["premise"])
  fields["premise_cut"] = fields["premise"][:-1]  # the harness drops the last character, always
  for k in ("choice1", "choice2"):
    fields[f"{k}_clause"] = _lower_first(fields[k])
  rid = f"{lang}-{raw.get('idx', where)}"
  return Record(rid, fields, where, label=_label("xcopa", raw, "label", task, where))


def normalize_xwinograd(raw, where, task, lang) -> Record:
  fields = {k: _text(raw, k, task, where) for k in ("sentence", "option1", "option2")}
  if fields["sentence"].count("_") != 1:
    raise BenchmarkDataError(
      f"task {task}: {where}: malformed record: field 'sentence' must "
      f"contain exactly one '_' (the blank), got {fields['sentence']!r}"
    )
  for i in (1, 2):
    fields[f"sentence{i}"] = fields["sentence"].replace("_", fields[f"option{i}"])
  before, after = fields["sentence"].split("_")  # the harness's partial scoring
  fields.update(before_blank=before, after_blank=after.strip())
  return Record(where, fields, where, label=_label("xwinograd", raw, "answer", task, where))


def normalize_tydiqa(raw, where, task, lang) -> Record:
  fields = {k: _text(raw, k, task, where) for k in ("context", "question")}
  fields["title"] = str(raw.get("title") or "")
  answers = (raw.get("answers") or {}).get("text")
  if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
    raise BenchmarkDataError(
      f"task {task}: {where}: malformed record: field 'answers.text' "
      f"must be a non-empty list of strings"
    )
  refs = tuple(a.strip() for a in answers)
  fields["answer"] = refs[0]
  return Record(str(raw.get("id") or where), fields, where, references=refs)


def normalize_pair(raw, where, task, lang) -> Record:
  fields = {k: _text(raw, k, task, where) for k in ("src", "tgt")}
  if not fields["src"] or not fields["tgt"]:
    raise BenchmarkDataError(
      f"task {task}: {where}: malformed record: empty {'src' if not fields['src'] else 'tgt'}"
    )
  return Record(where, fields, where, references=(fields["tgt"],))


NORMALIZERS: dict[str, Callable[..., Record]] = {
  "xnli": normalize_xnli,
  "pawsx": normalize_pawsx,
  "xcopa": normalize_xcopa,
  "xwinograd": normalize_xwinograd,
  "tydiqa": normalize_tydiqa,
  "mtg": normalize_pair,
  "translation": normalize_pair,
}


# -- where each family's split lives ------------------------------------------------------


def _one_of(paths: Sequence[str], task: str, split: str, what: str) -> str:
  for p in paths:
    if os.path.isfile(p):
      return p
  raise FileNotFoundError(
    f"task {task}: split {split!r}: {what} file not found; expected one of: {', '.join(paths)}"
  )


def _pair_files(folder: str, stem: str, s: str, t: str, task: str, split: str) -> list[tuple]:
  srcs = sorted(
    p
    for ext in ("sgm", "txt")
    for p in glob.glob(os.path.join(folder, f"{stem}-{s}{t}-src.{s}.{ext}"))
  )
  if not srcs:
    raise FileNotFoundError(
      f"task {task}: split {split!r}: no source file "
      f"{os.path.join(folder, f'{stem}-{s}{t}-src.{s}.sgm')} (or .txt)"
    )
  pairs = []
  for src in srcs:
    ref = src.replace(f"-src.{s}.", f"-ref.{t}.")
    pairs.append((src, _need_file(ref, task, split, "reference")))
  return pairs


def read_local(
  family: str, folder: str, lang: str, split: str, task: str
) -> list[tuple[dict[str, Any], str]]:
  """Raw records of one local-file family split (see the module docstring for layouts)."""
  if family == "xcopa":
    name = {"test": "test", "validation": "val"}.get(split)
    if name is None:
      raise FileNotFoundError(f"task {task}: XCOPA has no split {split!r} (test, validation)")
    return read_jsonl(
      _need_file(os.path.join(folder, lang, f"{name}.{lang}.jsonl"), task, split, "XCOPA"), task
    )
  if family == "xwinograd":
    base = os.path.join(folder, XWINOGRAD_DIRS.get(lang, lang), split)
    path = _one_of([base + ".jsonl", base + ".tsv"], task, split, "XWinograd")
    return read_jsonl(path, task) if path.endswith(".jsonl") else read_tsv(path, task)
  if family.startswith("mtg_"):
    sub = family[len("mtg_") :]
    return read_jsonl(
      _need_file(os.path.join(folder, sub, lang, f"{split}.jsonl"), task, split, "MTG"), task
    )
  if family == "wmt20":
    s, t = lang.split("-")
    stem, sub = ("newstest2020", "sgm") if split == "test" else ("*", "dev")
    out = []
    for src, ref in _pair_files(os.path.join(folder, sub), stem, s, t, task, split):
      out.extend(read_parallel(src, ref, task))
    return out
  if family == "flores":
    s, t = lang.split("-")
    src, ref = (
      _need_file(
        os.path.join(folder, split, f"{FLORES200_CODES[x]}.{split}"), task, split, "FLORES-200"
      )
      for x in (s, t)
    )
    return read_parallel(src, ref, task)
  raise ValueError(f"task {task}: family {family!r} has no local files")


def tfds_records(
  family: str, lang: str, split: str, task: str, data_dir: str | None
) -> list[tuple[dict[str, Any], str]]:
  name = TFDS_NAMES[family].format(lang=lang)
  if family == "tydiqa":
    if split == "train":  # mixed languages; the ids start with the language's English name
      prefix = TYDIQA_NAMES[lang] + "-"
      return [
        (r, w)
        for r, w in read_tfds(name, "train", task, data_dir)
        if str(r.get("id", "")).startswith(prefix)
      ]
    split = f"validation-{lang}" if split == "validation" else split
  return read_tfds(name, split, task, data_dir)
