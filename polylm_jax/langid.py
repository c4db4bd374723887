"""Offline language identification for the PolyLM languages, no model file needed.

Two steps. (1) Script: letters are counted per script, CJK ideographs and kana weighted 3x
and Hangul 2x (one such character carries about a word), so a Japanese sentence quoting an
English phrase is still Japanese. Arabic -> ar, Hebrew -> he, Cyrillic -> ru, Thai -> th,
Hangul -> ko, Han with kana -> ja, Han alone -> zh. (2) Latin script: each candidate language
scores its function words and instruction verbs (a stopword profile) plus letters only it
uses (ñ ¿ for es, ã õ for pt, ß for de, đ ơ ư and stacked tone marks for vi, ...).

Good enough to reject a teacher's reply in the wrong language (its job in self-instruct);
not a general-purpose identifier: very short Latin texts with no profile word are "unknown".
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from typing import NamedTuple

UNKNOWN = "unknown"

_SCRIPT_RANGES = (
  (
    "Arab",
    ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)),
  ),
  ("Hebr", ((0x0590, 0x05FF),)),
  ("Cyrl", ((0x0400, 0x04FF), (0x0500, 0x052F))),
  ("Thai", ((0x0E00, 0x0E7F),)),
  ("Hang", ((0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F))),
  ("Kana", ((0x3040, 0x309F), (0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F))),
  ("Hani", ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF))),
  ("Latn", ((0x0041, 0x005A), (0x0061, 0x007A), (0x00C0, 0x024F), (0x1E00, 0x1EFF))),
)
_WEIGHT = {"Hani": 3.0, "Kana": 3.0, "Hang": 2.0}
_SCRIPT_LANG = {"Arab": "ar", "Hebr": "he", "Cyrl": "ru", "Thai": "th", "Hang": "ko"}

# Latin-script profiles: frequent function words and words of instructions ("write",
# "explain", "the following", ...), lower case.
_WORDS = {
  "en": """the a an of and to in is are was be for on with that this it as by or from
        what which how why who write explain describe give list name following text sentence
        please your you can into about translate summarize create make tell""",
  "es": """el la los las de del y que en es un una por con para se su al lo como más pero
        sus le ya este esta estos sí porque entre cuando muy sin sobre también me hay donde
        qué cuál cuáles cómo escribe explica describe dame haz enumera traduce resume texto
        siguiente oración frase palabras según puedes usted tu son ser""",
  "pt": """o a os as de do da dos das e que em um uma uns umas para com não por se na no
        nas nos ao aos como mais mas foi sua seu ou quando muito já também só pelo pela isso
        este esta qual quais escreva explique descreva dê faça liste traduza resuma texto
        seguinte frase palavras você são ser está diga nesta neste desta deste dessa desse
        numa num pelos pelas às identifique crie forneça sugira escreve sobre quanto quantos
        quanta segundo custa custam cinco três""",
  "fr": """le la les de des du et que qui en un une est pour dans sur au aux par pas ne
        plus avec ce cette ces il elle nous vous ils se son sa ses mais ou où comme tout
        quel quelle quels comment pourquoi écrivez écris expliquez explique décrivez décris
        donnez donne faites traduisez résumez texte suivant suivante phrase mots être l d qu
        j y on je tu ceux celle leur leurs""",
  "de": """der die das den dem des ein eine einen einem einer und ist sind zu in im mit
        von für auf nicht sich es wie was wer warum welche welcher welches auch als an bei
        aus nach oder aber wenn dass du sie ihr schreibe schreiben erkläre erklären beschreibe
        gib nenne übersetze fasse text folgenden folgende satz wörter bitte man unter
        versteht heißt""",
  "it": """il lo la i gli le di del della dei delle e che un una per con non si è sono in
        nel nella al alla come più ma anche questo questa quale quali scrivi spiega descrivi
        elenca traduci riassumi testo seguente frase parole all dell nell sull dall alle
        delle degli nei ci ha hanno sia essere stato""",
  "id": """yang dan di ini itu dengan untuk dari dalam tidak akan pada juga ke ada oleh
        karena adalah saya kamu anda apa apakah bagaimana mengapa siapa tuliskan tulis
        jelaskan sebutkan berikan buatlah buat terjemahkan ringkaslah teks berikut kalimat
        kata sebuah seorang lebih bisa dapat sebagai telah atau mereka kami kita bahwa
        tersebut sudah hanya banyak setelah saat masih""",
  "vi": """của và là có được cho không những một các trong này với người đã để khi thì như
        về từ cũng đến hãy viết câu sau đây gì nào bạn làm sao tại vì giải thích mô tả liệt kê
        dịch tóm tắt đoạn văn bản theo""",
  "nl": """de het een en van in is dat op te zijn met voor niet aan er om ook als bij of
        wat hoe waarom schrijf leg beschrijf geef vertaal tekst volgende zin woorden wordt
        hij zij ze je we dit deze naar heeft hebben zal kan door maar nog uit over tot""",
  "pl": """i w na z się nie do to że jest o jak co po dla czy od przez są być ten ta
        napisz wyjaśnij opisz podaj przetłumacz tekst następujące zdanie słowa""",
  "tr": """ve bir bu da de için ile ne mi çok daha olarak gibi ama sonra en her şu nasıl
        neden yaz açıkla tanımla ver çevir metin aşağıdaki cümle kelimeler olan ben sen
        biz onlar var yok kadar değil""",
}
# Letters (lower case) typical of one language; each occurrence adds this much to its score.
_LETTERS = {
  "es": ("ñ¿¡", 2.0),
  "pt": ("ãõ", 2.0),
  "de": ("ßä", 2.0),
  "fr": ("èùœîûëÿ", 1.0),
  "it": ("ìò", 1.0),
  "pl": ("ąęłńśźżć", 2.0),
  "tr": ("ışğ", 3.0),
  "vi": ("đơưăạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ", 2.0),
}
_SHARED_LETTERS = (("öü", ("de", "tr"), 0.75), ("êç", ("pt", "fr"), 0.5))
_WORD_SETS = {lang: frozenset(words.split()) for lang, words in _WORDS.items()}
_WORD_RE = re.compile(r"[^\W\d_]+")


class Guess(NamedTuple):
  lang: str  # a language code, or UNKNOWN
  confidence: float  # share of the winning script / profile score, 0..1
  scripts: dict[str, float]  # weighted letter counts per script


@functools.lru_cache(maxsize=4096)
def _script_of(ch: str) -> str | None:
  cp = ord(ch)
  for script, ranges in _SCRIPT_RANGES:
    for lo, hi in ranges:
      if lo <= cp <= hi:
        return script
  return None


def script_counts(text: str) -> dict[str, float]:
  """Weighted letter counts per script (see the module docstring)."""
  counts: Counter = Counter()
  for ch in unicodedata.normalize("NFC", text):
    s = _script_of(ch)
    if s is not None and (s != "Latn" or ch.isalpha()):
      counts[s] += _WEIGHT.get(s, 1.0)
  return dict(counts)


def latin_scores(text: str) -> dict[str, float]:
  """Profile score per Latin-script language: profile words + typical letters, per word."""
  text = unicodedata.normalize("NFC", text).lower()
  words = _WORD_RE.findall(text)
  n = max(len(words), 1)
  scores = {lang: sum(w in ws for w in words) / n for lang, ws in _WORD_SETS.items()}
  for lang, (letters, weight) in _LETTERS.items():
    scores[lang] += weight * sum(text.count(c) for c in letters) / n
  for letters, langs, weight in _SHARED_LETTERS:
    for lang in langs:
      scores[lang] += weight * sum(text.count(c) for c in letters) / n
  return scores


def identify(text: str) -> Guess:
  """The most likely PolyLM language of `text` (UNKNOWN when nothing decides)."""
  scripts = script_counts(text)
  total = sum(scripts.values())
  if not total:
    return Guess(UNKNOWN, 0.0, scripts)
  cjk = scripts.get("Hani", 0.0) + scripts.get("Kana", 0.0)
  ranked = dict(scripts)
  if cjk:
    ranked.pop("Hani", None), ranked.pop("Kana", None)
    ranked["CJK"] = cjk
  script, weight = max(ranked.items(), key=lambda kv: kv[1])
  share = weight / total
  if script == "CJK":
    kana = scripts.get("Kana", 0.0)
    return Guess("ja" if kana >= 0.05 * cjk else "zh", share, scripts)
  if script != "Latn":
    return Guess(_SCRIPT_LANG[script], share, scripts)
  scores = latin_scores(text)
  best = max(scores, key=scores.get)
  if scores[best] <= 0:
    return Guess(UNKNOWN, 0.0, scripts)
  confidence = share * scores[best] / (sum(scores.values()) or 1.0)
  return Guess(best, confidence, scripts)


def is_language(text: str, lang: str) -> bool:
  """Whether `text` identifies as `lang`. Latin texts too short to decide (no profile word)
  pass when `lang` is written in Latin script, so short answers are not rejected for that."""
  guess = identify(text)
  if guess.lang == lang:
    return True
  return (
    guess.lang == UNKNOWN
    and bool(guess.scripts)
    and lang in _WORD_SETS
    and max(guess.scripts, key=guess.scripts.get) == "Latn"
  )


def known_languages() -> tuple[str, ...]:
  """The languages `identify` can return."""
  return tuple(sorted({*_SCRIPT_LANG.values(), "ja", "zh", *_WORD_SETS}))
