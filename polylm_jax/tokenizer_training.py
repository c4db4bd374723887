"""Train PolyLM's SentencePiece tokenizer (SPEC section 2) and the cached demo tokenizer.

Recipe (the published facts plus our documented choices): BPE, byte fallback, split digits,
character_coverage 0.9999, pieces <unk>=0, <s>=1, </s>=2 and no pad piece (the released
PolyLM layout), identity normalisation with whitespace kept, so that decode(encode(text))
== text for any text. Training text is a language-balanced sample: every language gets the
same character budget (or its own, via per_language_chars={"en": ..., "zh": ...}), drawn from
its documents in a seeded order. Same input + same settings -> byte-identical model (one
thread and a fixed seed; tests check it).

The language of a file is its name up to the first dot (`en.txt`, `zh.part-0.txt`) or, with
language_from="dir", the name of the folder holding it (`en/part-000.txt`).

This module imports only sentencepiece (no TensorFlow/seqio), so it is cheap to import. The
command line is the binary `polylm_jax.tokenizer`.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import sentencepiece as spm

from polylm_jax.files import atomic_write
from polylm_jax.paths import SAMPLE_CORPUS_DIR, cache_root

# Bump when the recipe changes, so cached demo tokenizers are retrained.
RECIPE_VERSION = 1
DEMO_VOCAB_SIZE = 4096
DEMO_PER_LANGUAGE_CHARS = 1_000_000
DEFAULT_PER_LANGUAGE_CHARS = 2_000_000
# SentencePiece skips training sentences longer than max_sentence_length bytes: long
# documents are cut into pieces of at most this many bytes at whitespace instead.
MAX_CHUNK_BYTES = 8192


def expand_globs(patterns: Iterable[str], flag: str = "--corpus_glob") -> list[str]:
  """Sorted unique files matching the patterns; a pattern matching nothing is an error."""
  files: set[str] = set()
  for pattern in patterns:
    matched = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    if not matched:
      raise FileNotFoundError(f"{flag}: no file matches {pattern!r}")
    files.update(matched)
  return sorted(files)


def language_of(path: str, language_from: str = "stem") -> str:
  """The language key of a corpus file: its name up to the first dot, or its folder."""
  if language_from == "stem":
    return os.path.basename(path).split(".", 1)[0]
  if language_from == "dir":
    return os.path.basename(os.path.dirname(os.path.abspath(path)))
  raise ValueError(f"--language_from must be 'stem' or 'dir', got {language_from!r}")


def group_by_language(files: Sequence[str], language_from: str = "stem") -> dict[str, list[str]]:
  groups: dict[str, list[str]] = {}
  for f in files:
    groups.setdefault(language_of(f, language_from), []).append(f)
  return {k: sorted(v) for k, v in sorted(groups.items())}


def parse_per_language_chars(value: str | int | Mapping[str, int]) -> int | dict[str, int]:
  """'2000000' -> 2000000 for every language; 'en=5000000,zh=8000000,*=1000000' -> a mapping.

  '*' sets the budget of languages not named; without it an unnamed language is an error.
  """
  if isinstance(value, int):
    budgets: int | dict[str, int] = value
  elif isinstance(value, Mapping):
    budgets = dict(value)
  else:
    text = str(value).strip()
    try:
      if "=" not in text:
        budgets = int(text)
      else:
        budgets = {}
        for item in text.split(","):
          key, _, num = item.partition("=")
          budgets[key.strip()] = int(num)
    except ValueError:
      raise ValueError(
        f"--per_language_chars: expected N or lang=N,lang=N,...; got {value!r}"
      ) from None
  values = [budgets] if isinstance(budgets, int) else list(budgets.values())
  if any(v <= 0 for v in values):
    raise ValueError(f"--per_language_chars: budgets must be positive, got {value!r}")
  return budgets


def _budget(budgets: int | Mapping[str, int], lang: str) -> int:
  if isinstance(budgets, int):
    return budgets
  if lang in budgets:
    return budgets[lang]
  if "*" in budgets:
    return budgets["*"]
  raise ValueError(
    f"--per_language_chars names no budget for language {lang!r} (found in the corpus); "
    f"add {lang}=N or *=N"
  )


def _chunks(text: str, max_bytes: int = MAX_CHUNK_BYTES) -> Iterable[str]:
  """Cut a long document at whitespace into pieces of at most max_bytes UTF-8 bytes."""
  while len(text.encode("utf-8")) > max_bytes:
    cut = len(text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore"))
    space = text.rfind(" ", 0, cut)
    cut = space if space > 0 else cut
    yield text[:cut]
    text = text[cut:].lstrip(" ")
  if text:
    yield text


def read_documents(path: str) -> list[str]:
  """Non-blank lines of a UTF-8 file: one document (or sentence) per line."""
  try:
    with open(path, encoding="utf-8") as f:
      return [line.rstrip("\n") for line in f if line.strip()]
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not valid UTF-8 ({e})") from None


def sample_balanced(
  groups: Mapping[str, Sequence[str]],
  per_language_chars,
  seed: int = 0,
) -> tuple[list[str], dict[str, int]]:
  """Language-balanced training text: each language's documents in a seeded order until its
  character budget is reached. Returns the text chunks and the characters taken per language.
  """
  budgets = parse_per_language_chars(per_language_chars)
  if isinstance(budgets, dict):
    unknown = sorted(set(budgets) - set(groups) - {"*"})
    if unknown:
      raise ValueError(
        f"--per_language_chars names languages not in the corpus: {unknown}; "
        f"corpus languages: {sorted(groups)}"
      )
  sample: list[str] = []
  taken: dict[str, int] = {}
  for lang, files in sorted(groups.items()):
    budget = _budget(budgets, lang)
    docs = [d for f in files for d in read_documents(f)]
    if not docs:
      raise ValueError(f"language {lang!r}: files hold no text: {list(files)}")
    # One Random per language, seeded by (seed, lang): adding a language leaves the others'
    # samples unchanged.
    random.Random(f"{seed}:{lang}").shuffle(docs)
    n = 0
    for doc in docs:
      if n >= budget:
        break
      doc = doc[: budget - n]
      sample.extend(_chunks(doc))
      n += len(doc)
    taken[lang] = n
  return sample, taken


def trainer_kwargs(vocab_size: int, num_threads: int = 1, model_type: str = "bpe") -> dict:
  """The SentencePiece flags of the recipe (besides the input)."""
  return dict(
    model_type=model_type,
    vocab_size=vocab_size,
    character_coverage=0.9999,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    allow_whitespace_only_pieces=True,
    split_by_unicode_script=True,
    max_sentence_length=2 * MAX_CHUNK_BYTES,
    input_sentence_size=0,  # use the whole (already balanced) sample
    shuffle_input_sentence=False,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    unk_piece="<unk>",
    bos_piece="<s>",
    eos_piece="</s>",
    num_threads=num_threads,
    minloglevel=2,
  )


def train_tokenizer(
  corpus_glob: Sequence[str] | str,
  output: str,
  vocab_size: int,
  per_language_chars=DEFAULT_PER_LANGUAGE_CHARS,
  seed: int = 0,
  num_threads: int = 1,
  language_from: str = "stem",
  model_type: str = "bpe",
) -> str:
  """Train a tokenizer on a balanced sample of the files; write it atomically to `output`."""
  patterns = [corpus_glob] if isinstance(corpus_glob, str) else list(corpus_glob)
  if not patterns:
    raise ValueError("--corpus_glob: give at least one pattern")
  if vocab_size < 260:
    raise ValueError(f"--vocab_size={vocab_size}: must exceed 259 (3 specials + 256 bytes)")
  groups = group_by_language(expand_globs(patterns), language_from)
  sample, taken = sample_balanced(groups, per_language_chars, seed)
  logging.info("tokenizer sample, characters per language: %s", taken)
  if hasattr(spm, "set_random_generator_seed"):
    spm.set_random_generator_seed(seed)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sample),
      model_writer=model,
      **trainer_kwargs(vocab_size, num_threads, model_type),
    )
  except RuntimeError as e:
    raise RuntimeError(
      f"SentencePiece training failed (--vocab_size={vocab_size}, "
      f"{sum(taken.values())} characters in {len(taken)} languages): {e}"
    ) from None
  atomic_write(output, model.getvalue())  # a reader never sees half a model
  return output


def sample_corpus_files(corpus_dir: Path | str = SAMPLE_CORPUS_DIR) -> list[str]:
  """The built-in corpus files: parallel/{lang}.txt and documents/{lang}.txt."""
  corpus_dir = Path(corpus_dir)
  files = sorted(
    str(p) for sub in ("parallel", "documents") for p in (corpus_dir / sub).glob("*.txt")
  )
  if not files:
    raise FileNotFoundError(
      f"sample corpus: no parallel/*.txt or documents/*.txt under {corpus_dir}"
    )
  return files


def _demo_key(files: Sequence[str], corpus_dir: Path, settings: dict) -> str:
  h = hashlib.sha256()
  h.update(
    json.dumps(
      {"recipe": RECIPE_VERSION, "spm": spm.__version__, **settings}, sort_keys=True
    ).encode()
  )
  for f in files:
    h.update(os.path.relpath(f, corpus_dir).encode() + b"\0")
    h.update(Path(f).read_bytes() + b"\0")
  return h.hexdigest()[:16]


def train_demo_tokenizer(
  cache_dir: str | os.PathLike | None = None,
  corpus_dir: str | os.PathLike = SAMPLE_CORPUS_DIR,
  vocab_size: int = DEMO_VOCAB_SIZE,
) -> str:
  """Path of the demo tokenizer trained from the sample corpus, trained on first use.

  Cached as <cache>/tokenizers/demo-<key>.model where key hashes the corpus files, the
  settings and the SentencePiece version, so an edited corpus gets a fresh tokenizer.
  """
  corpus_dir = Path(corpus_dir)
  files = sample_corpus_files(corpus_dir)
  settings = {"vocab_size": vocab_size, "per_language_chars": DEMO_PER_LANGUAGE_CHARS, "seed": 0}
  cache = Path(cache_dir) if cache_dir is not None else cache_root()
  path = cache / "tokenizers" / f"demo-{_demo_key(files, corpus_dir, settings)}.model"
  if not path.exists():
    train_tokenizer(
      files,
      str(path),
      vocab_size=vocab_size,
      per_language_chars=DEMO_PER_LANGUAGE_CHARS,
      seed=0,
      num_threads=1,
    )
  return str(path)
