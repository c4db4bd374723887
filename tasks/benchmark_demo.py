"""Small benchmark data in each public format, for tests, the notebook and the speed benchmark.

`write_demo_data(root)` writes every local-file family in the layout tasks/benchmark_data.py
reads (XCOPA and XWinograd JSONL, an XWinograd TSV, MTG JSONL, WMT20 .sgm, FLORES-200
text). `mock_tfds()` serves XNLI, PAWS-X and TyDiQA-GoldP records with the real feature
structure through `tfds.testing.mock_data`. Translation and MTG texts are real sentences of
the built-in sample corpus: its held-out lines (every 10th, as in tasks/pretrain.py) are the
test sets, other lines the demonstrations; the rank-classification items are written here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator, Sequence

from polylm_jax.paths import SAMPLE_CORPUS_DIR
from tasks import benchmark_data as data

_COPA = [
  (
    "The man turned on the faucet.",
    "The toilet filled with water.",
    "Water flowed from the spout.",
    "effect",
    1,
  ),
  (
    "The girl found a bug in her cereal.",
    "She poured milk in the bowl.",
    "She lost her appetite.",
    "effect",
    1,
  ),
  ("The woman retired.", "She received her pension.", "She paid off her mortgage.", "effect", 0),
  (
    "I wanted to conserve energy.",
    "I swept the floor in the unoccupied room.",
    "I shut off the light in the unoccupied room.",
    "cause",
    1,
  ),
  ("The hamburger meat browned.", "The cook froze it.", "The cook grilled it.", "cause", 1),
  (
    "My body cast a shadow over the grass.",
    "The sun was rising.",
    "The grass was cut.",
    "cause",
    0,
  ),
]
_WINO = [
  (
    "The trophy doesn't fit into the brown suitcase because _ is too large.",
    "the trophy",
    "the suitcase",
    "1",
  ),
  (
    "The trophy doesn't fit into the brown suitcase because _ is too small.",
    "the trophy",
    "the suitcase",
    "2",
  ),
  (
    "The city councilmen refused the demonstrators a permit because _ feared violence.",
    "the city councilmen",
    "the demonstrators",
    "1",
  ),
  (
    "The city councilmen refused the demonstrators a permit because _ advocated violence.",
    "the city councilmen",
    "the demonstrators",
    "2",
  ),
  ("Joan made sure to thank Susan for all the help _ had received.", "Joan", "Susan", "1"),
  ("Joan made sure to thank Susan for all the help _ had given.", "Joan", "Susan", "2"),
]
HOLDOUT_EVERY = 10


@functools.lru_cache(maxsize=None)
def _read_sample(lang: str) -> tuple[str, ...]:
  with open(SAMPLE_CORPUS_DIR / "parallel" / f"{lang}.txt", encoding="utf-8") as f:
    return tuple(line.strip() for line in f.read().splitlines())


def sample_lines(lang: str) -> list[str]:
  """The aligned sentences of the sample corpus in one language (160 lines)."""
  return list(_read_sample(lang))


def _split_lines(lines: list[str], n: int) -> tuple[list[str], list[str]]:
  """(held-out lines, other lines), n of each."""
  held = [x for i, x in enumerate(lines) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
  rest = [x for i, x in enumerate(lines) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
  return held[:n], rest[:n]


def _write(path: str, lines: Sequence[str]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))


def _jsonl(path: str, records: Sequence[dict]) -> None:
  _write(path, [json.dumps(r, ensure_ascii=False) for r in records])


def _sgm(path: str, lang: str, segments: Sequence[str]) -> None:
  body = [f'<seg id="{i + 1}">{s}</seg>' for i, s in enumerate(segments)]
  _write(
    path,
    [
      f'<refset setid="demo" srclang="any" trglang="{lang}">',
      f'<doc sysid="ref" docid="demo-{lang}" origlang="en">',
      "<p>",
      *body,
      "</p>",
      "</doc>",
      "</refset>",
    ],
  )


def write_demo_data(root: str, n: int = 8) -> str:
  """Writes n examples per split of every local family under root; returns root."""
  for lang in ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh"):
    for split in ("test", "val"):
      items = _COPA if split == "test" else _COPA[::-1]
      _jsonl(
        os.path.join(root, "xcopa", lang, f"{split}.{lang}.jsonl"),
        [
          {"premise": p, "choice1": a, "choice2": b, "question": q, "label": y, "idx": i}
          for i, (p, a, b, q, y) in enumerate((items * n)[:n])
        ],
      )
  for lang in ("en", "fr", "ja", "pt", "ru"):
    _jsonl(
      os.path.join(root, "xwinograd", data.XWINOGRAD_DIRS.get(lang, lang), "test.jsonl"),
      [{"sentence": s, "option1": a, "option2": b, "answer": y} for s, a, b, y in _WINO],
    )
  _write(
    os.path.join(root, "xwinograd", "zh", "test.tsv"),
    ["sentence\toption1\toption2\tanswer"] + ["\t".join(w) for w in _WINO],
  )
  for lang in ("en", "de", "fr", "es"):
    held, rest = _split_lines(sample_lines(lang), n + 1)
    for split, lines in (("test", held), ("dev", rest)):
      pairs = list(zip(lines[:-1], lines[1:]))
      base = os.path.join(root, "mtg", "{sub}", lang, f"{split}.jsonl")
      _jsonl(base.format(sub="story"), [{"src": a, "tgt": b} for a, b in pairs])
      _jsonl(
        base.format(sub="question"), [{"src": a, "tgt": b.rstrip(".") + "?"} for a, b in pairs]
      )
      _jsonl(
        base.format(sub="title"), [{"src": a, "tgt": " ".join(a.split()[:4])} for a, _ in pairs]
      )
  english = _split_lines(sample_lines("en"), n)
  for other in ("de", "ja", "pl", "ru", "zh"):
    theirs = _split_lines(sample_lines(other), n)
    for s, t in ((other, "en"), ("en", other)):
      for k, (sub, stem) in enumerate((("sgm", "newstest2020"), ("dev", "newstest2019"))):
        texts = {"en": english[k], other: theirs[k]}
        prefix = os.path.join(root, "wmt20", sub, f"{stem}-{s}{t}")
        _sgm(f"{prefix}-src.{s}.sgm", s, texts[s])
        _sgm(f"{prefix}-ref.{t}.sgm", t, texts[t])
  for lang, code in data.FLORES200_CODES.items():
    held, rest = _split_lines(sample_lines(lang), n)
    _write(os.path.join(root, "flores200", "devtest", f"{code}.devtest"), held)
    _write(os.path.join(root, "flores200", "dev", f"{code}.dev"), rest)
  return root


# -- TFDS --------------------------------------------------------------------------------

_XNLI_LANGS = (
  "ar",
  "bg",
  "de",
  "el",
  "en",
  "es",
  "fr",
  "hi",
  "ru",
  "sw",
  "th",
  "tr",
  "ur",
  "vi",
  "zh",
)


def _line(lang: str, i: int) -> str:
  try:
    return sample_lines(lang)[i % 160]
  except FileNotFoundError:  # a language the sample corpus lacks: its English line, tagged
    return f"[{lang}] " + sample_lines("en")[i % 160]


def tfds_examples(name: str, split: str, n: int) -> list[dict]:
  """n records of a TFDS benchmark dataset, in its feature structure."""
  offset = 0 if split.startswith("test") else 80
  if name == "xnli":
    return [
      {
        "premise": {lang: _line(lang, offset + i) for lang in _XNLI_LANGS},
        "hypothesis": {
          "language": list(_XNLI_LANGS),
          "translation": [_line(lang, offset + i + 1 + (i % 3)) for lang in _XNLI_LANGS],
        },
        "label": i % 3,
      }
      for i in range(n)
    ]
  if name.startswith("paws_x_wiki"):
    lang = name.split("/")[1]
    return [
      {
        "sentence1": _line(lang, offset + i),
        "sentence2": _line(lang, offset + i + i % 2),
        "label": 1 - i % 2,
      }
      for i in range(n)
    ]
  if name.startswith("tydi_qa"):
    langs = data.TYDIQA_NAMES if split == "train" else {split.split("-")[-1]: None}
    out = []
    for code in langs:
      for i in range(n):
        context = " ".join(_line(code, offset + i + j) for j in range(3))
        answer = " ".join(context.split()[1:3]) or context[:8]
        out.append(
          {
            "id": f"{data.TYDIQA_NAMES[code]}-{offset + i}",
            "title": f"Title {i}",
            "context": context,
            "question": f"What follows {context.split()[0]}?",
            "answers": {"text": [answer, answer.lower()], "answer_start": [0, 0]},
          }
        )
    return out
  raise ValueError(f"no demo records for TFDS dataset {name!r}")


@contextlib.contextmanager
def mock_tfds(n: int = 8) -> Iterator[None]:
  """tfds.testing.mock_data serving `tfds_examples` for xnli, paws_x_wiki and tydi_qa."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  def as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
    name = builder.name + (
      f"/{builder.builder_config.name}"
      if builder.builder_config and builder.name == "paws_x_wiki"
      else ""
    )
    records = tfds_examples(name, str(split), n)

    def spec(x):
      if isinstance(x, dict):
        return {k: spec(v) for k, v in x.items()}
      if isinstance(x, list):
        return tf.TensorSpec([None], tf.int32 if isinstance(x[0], int) else tf.string)
      return tf.TensorSpec([], tf.int64 if isinstance(x, int) else tf.string)

    return tf.data.Dataset.from_generator(lambda: iter(records), output_signature=spec(records[0]))

  with tfds.testing.mock_data(as_dataset_fn=as_dataset, policy=tfds.testing.MockPolicy.USE_CODE):
    yield
