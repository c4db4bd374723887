"""Benchmark metrics: accuracy, SQuAD-style F1/EM, sacreBLEU BLEU/chrF, multilingual ROUGE.

All corpus-level scores are percentages (0-100), as the benchmark tables report them.

Choices (also in docs/evaluation.md):
- BLEU tokenizer by target language: 'zh' for Chinese; 'char' for Japanese and Thai.
  WMT's usual 'ja-mecab' needs mecab-python3 + ipadic, which sacrebleu 2.6 does not ship;
  'flores101'/'flores200' (spm) download their SentencePiece model at first use, which these
  machines cannot do; Thai has no sacrebleu word tokenizer at all. Korean and every other
  language use '13a'. `bleu(..., tokenize=...)` overrides it. chrF needs no tokenizer.
- ROUGE: rouge-score's default tokenizer keeps only [a-z0-9] and so silently drops accented
  letters ("café" -> "caf") and all non-Latin scripts. `MultilingualTokenizer` instead
  lower-cases, keeps runs of Unicode letters/digits/marks as words and splits scripts
  written without spaces (Han, kana, Thai, Lao, Khmer, Myanmar) into single characters.
  No stemming (Porter is English-only).
- TyDiQA-GoldP F1/EM: the official GoldP evaluation is the SQuAD v1.1 script; its
  normalisation (lower-case, drop ASCII punctuation, drop English articles a/an/the, squeeze
  whitespace) is reproduced exactly, and each prediction takes its best score over the
  references.
"""

from __future__ import annotations

import collections
import re
import string
import unicodedata
from collections.abc import Sequence

import numpy as np
import sacrebleu

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# sacreBLEU tokenizer per target language; anything else uses DEFAULT_BLEU_TOKENIZER.
BLEU_TOKENIZERS: dict[str, str] = {"zh": "zh", "ja": "char", "th": "char"}
DEFAULT_BLEU_TOKENIZER = "13a"


def _check_lengths(what: str, predictions: Sequence, references: Sequence) -> None:
  if len(predictions) != len(references):
    raise ValueError(f"{what}: {len(predictions)} predictions but {len(references)} references")


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
  """Percent of predictions equal to their label (0 for no examples)."""
  _check_lengths("accuracy", predictions, labels)
  if not len(labels):
    return 0.0
  return 100.0 * float(np.mean(np.asarray(predictions) == np.asarray(labels)))


# -- SQuAD v1.1 / TyDiQA-GoldP ------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def squad_normalize(text: str) -> str:
  """The official SQuAD v1.1 answer normalisation (used by TyDiQA-GoldP)."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in _PUNCTUATION)
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def qa_exact_match(prediction: str, reference: str) -> float:
  return float(squad_normalize(prediction) == squad_normalize(reference))


def qa_f1(prediction: str, reference: str) -> float:
  """Token-level F1 of the normalised answers (whitespace tokens, as the official script)."""
  pred, ref = squad_normalize(prediction).split(), squad_normalize(reference).split()
  common = collections.Counter(pred) & collections.Counter(ref)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred), same / len(ref)
  return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, references: Sequence[str]) -> dict[str, float]:
  """Per example: best F1 and EM over the references (0-1)."""
  if not references:
    raise ValueError("squad_scores: an example needs at least one reference answer")
  return {
    "f1": max(qa_f1(prediction, r) for r in references),
    "exact_match": max(qa_exact_match(prediction, r) for r in references),
  }


def squad_metrics(
  predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
  """Corpus F1 and exact match in percent."""
  _check_lengths("squad_metrics", predictions, references)
  if not predictions:
    return {"f1": 0.0, "exact_match": 0.0}
  per = [squad_scores(p, r) for p, r in zip(predictions, references)]
  return {k: 100.0 * float(np.mean([s[k] for s in per])) for k in ("f1", "exact_match")}


# -- translation ----------------------------------------------------------------------------


def bleu_tokenizer(lang: str) -> str:
  return BLEU_TOKENIZERS.get(lang, DEFAULT_BLEU_TOKENIZER)


def _reference_streams(references: Sequence[Sequence[str] | str]) -> list[list[str]]:
  """sacrebleu wants one stream per reference position; all examples need the same count."""
  refs = [[r] if isinstance(r, str) else list(r) for r in references]
  counts = {len(r) for r in refs}
  if len(counts) > 1:
    raise ValueError(
      f"translation metrics: every example needs the same number of "
      f"references, got counts {sorted(counts)}"
    )
  n = counts.pop() if counts else 1
  if n == 0:
    raise ValueError("translation metrics: an example has no reference")
  return [[r[i] for r in refs] for i in range(n)]


def bleu(
  predictions: Sequence[str],
  references: Sequence[Sequence[str] | str],
  lang: str,
  tokenize: str | None = None,
) -> float:
  """Corpus sacreBLEU with the target language's tokenizer (see BLEU_TOKENIZERS)."""
  _check_lengths("bleu", predictions, references)
  if not predictions:
    return 0.0
  metric = sacrebleu.BLEU(tokenize=tokenize or bleu_tokenizer(lang))
  return float(metric.corpus_score(list(predictions), _reference_streams(references)).score)


def chrf(predictions: Sequence[str], references: Sequence[Sequence[str] | str]) -> float:
  """Corpus chrF (sacreBLEU defaults: character 6-grams, beta 2)."""
  _check_lengths("chrf", predictions, references)
  if not predictions:
    return 0.0
  return float(
    sacrebleu.CHRF().corpus_score(list(predictions), _reference_streams(references)).score
  )


def sentence_chrf(prediction: str, references: Sequence[str]) -> float:
  return float(sacrebleu.CHRF().sentence_score(prediction, list(references)).score)


def translation_metrics(
  predictions: Sequence[str],
  references: Sequence[Sequence[str] | str],
  lang: str,
  tokenize: str | None = None,
) -> dict[str, float]:
  return {
    "bleu": bleu(predictions, references, lang, tokenize),
    "chrf": chrf(predictions, references),
  }


# -- ROUGE ------------------------------------------------------------------------------------

# Scripts written without spaces between words: each character is one token.
_CHAR_RANGES = (
  (0x0E00, 0x0EFF),  # Thai, Lao
  (0x1000, 0x109F),  # Myanmar
  (0x1780, 0x17FF),  # Khmer
  (0x2E80, 0x2FDF),  # CJK radicals
  (0x3040, 0x30FF),  # Hiragana, Katakana
  (0x3100, 0x31BF),  # Bopomofo
  (0x31F0, 0x31FF),  # Katakana extensions
  (0x3400, 0x4DBF),  # CJK extension A
  (0x4E00, 0x9FFF),  # CJK unified ideographs
  (0xF900, 0xFAFF),  # CJK compatibility ideographs
  (0xFF66, 0xFF9F),  # half-width Katakana
  (0x20000, 0x3134F),  # CJK extensions B-G
)


def _is_char_token(ch: str) -> bool:
  cp = ord(ch)
  return any(lo <= cp <= hi for lo, hi in _CHAR_RANGES)


def _is_word_char(ch: str) -> bool:
  return unicodedata.category(ch)[0] in "LNM"


class MultilingualTokenizer:
  """A rouge-score tokenizer that keeps every script (see the module docstring)."""

  def tokenize(self, text: str) -> list[str]:
    tokens: list[str] = []
    word: list[str] = []
    for ch in unicodedata.normalize("NFKC", text).lower():
      if _is_char_token(ch):
        if word:
          tokens.append("".join(word))
          word = []
        tokens.append(ch)
      elif _is_word_char(ch):
        word.append(ch)
      elif word:
        tokens.append("".join(word))
        word = []
    if word:
      tokens.append("".join(word))
    return tokens


_SCORER = None


def _rouge_scorer():
  """rouge-score imports nltk (about 4 s), so only when ROUGE is first computed."""
  global _SCORER
  if _SCORER is None:
    from rouge_score import rouge_scorer

    _SCORER = rouge_scorer.RougeScorer(
      list(ROUGE_TYPES), use_stemmer=False, tokenizer=MultilingualTokenizer()
    )
  return _SCORER


def rouge_scores(prediction: str, references: Sequence[str]) -> dict[str, float]:
  """Per example: ROUGE-1/2/L F-measure (0-1), best over the references."""
  if not references:
    raise ValueError("rouge_scores: an example needs at least one reference")
  scored = [_rouge_scorer().score(r, prediction) for r in references]
  return {t: max(s[t].fmeasure for s in scored) for t in ROUGE_TYPES}


def rouge_metrics(
  predictions: Sequence[str], references: Sequence[Sequence[str] | str]
) -> dict[str, float]:
  """Mean ROUGE-1/2/L F-measure in percent."""
  _check_lengths("rouge", predictions, references)
  if not predictions:
    return {t: 0.0 for t in ROUGE_TYPES}
  per = [rouge_scores(p, [r] if isinstance(r, str) else r) for p, r in zip(predictions, references)]
  return {t: 100.0 * float(np.mean([s[t] for s in per])) for t in ROUGE_TYPES}
