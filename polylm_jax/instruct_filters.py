"""Filters for self-instruct candidates: format, length, language, unservable, duplicates, ROUGE-L.

`InstructionPool` holds one language's accepted instructions and answers, for a candidate,
the first rejection reason (REASONS order) or None, and the candidate's highest ROUGE-L
against the pool (recorded for the statistics).

ROUGE-L uses rouge-score with a multilingual tokenizer: its default tokenizer keeps only
[a-z0-9] and so sees nothing in Thai, Japanese, Arabic or Russian. Ours lower-cases (NFKC)
and makes one token per Han, kana, Hangul or Thai character and one per word elsewhere.
The maximum over the pool is exact but cheap: an inverted index gives each pool instruction's
token-multiset overlap with the candidate (vectorised), 2 * overlap / (m + n) bounds its
ROUGE-L F-measure (LCS <= overlap), and exact scores are computed in bound order until the
bound falls below the best so far. Near duplicates use the same index over character 3-grams.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

import numpy as np
from rouge_score import rouge_scorer

from polylm_jax import langid

REASONS = (
  "format",
  "too_short",
  "too_long",
  "language",
  "unservable",
  "duplicate",
  "near_duplicate",
  "rouge",
)

_CHAR_TOKEN = (
  r"\u0e00-\u0e7f\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
  r"\uf900-\ufaff\uac00-\ud7af\u1100-\u11ff\u3130-\u318f"
)
_TOKEN_RE = re.compile(rf"[{_CHAR_TOKEN}]|[^\W_{_CHAR_TOKEN}]+")
_WIDE_RE = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_THAI_RE = re.compile(r"[\u0e00-\u0e7f]+")
_URL_RE = re.compile(
  r"(https?://|www\.)\S+|\b[\w-]+\.(com|org|net|io|html?|pdf|docx?|xlsx?|"
  r"csv|png|jpe?g|gif|mp[34]|wav)\b",
  re.IGNORECASE,
)
_TEMPLATE_RE = re.compile(
  r"(^|\n)\s*(\d+\s*[.)]\s*)?(\*\*)?(instruction|input|output)(\*\*)?\s*:"
  r"|<\s*no\s*input\s*>|###",
  re.IGNORECASE,
)


def tokenize(text: str) -> list[str]:
  """Multilingual ROUGE tokens (see the module docstring)."""
  return _TOKEN_RE.findall(unicodedata.normalize("NFKC", text).lower())


class MultilingualTokenizer:
  """rouge-score tokenizer object (it needs a `tokenize` method); caches recent texts."""

  @functools.lru_cache(maxsize=65536)
  def _tokens(self, text: str) -> tuple[str, ...]:
    return tuple(tokenize(text))

  def tokenize(self, text: str) -> list[str]:
    return list(self._tokens(text))


_SCORER = rouge_scorer.RougeScorer(["rougeL"], tokenizer=MultilingualTokenizer())


def rouge_l(reference: str, candidate: str) -> float:
  """ROUGE-L F-measure with the multilingual tokenizer."""
  return float(_SCORER.score(reference, candidate)["rougeL"].fmeasure)


def length_units(text: str) -> float:
  """Length in about-words: whitespace words, with runs of Han/kana counted one unit per 2
  characters and Thai (no spaces between words) one per 4 characters."""
  text = text.strip()
  units = len(_WIDE_RE.sub(" ", _THAI_RE.sub(" ", text)).split())
  units += sum(len(m) for m in _WIDE_RE.findall(text)) / 2
  units += sum(len(m) for m in _THAI_RE.findall(text)) / 4
  return units


def normalize(text: str) -> str:
  """Key for exact duplicates: NFKC, case-folded, without punctuation and whitespace."""
  text = unicodedata.normalize("NFKC", text).casefold()
  return "".join(ch for ch in text if ch.isalnum())


def _squash(text: str) -> str:
  return " ".join(unicodedata.normalize("NFKC", text).split())


def shingles(text: str, n: int = 3) -> frozenset[str]:
  key = normalize(text)
  if len(key) <= n:
    return frozenset([key]) if key else frozenset()
  return frozenset(key[i : i + n] for i in range(len(key) - n + 1))


# Words for things a text-only model cannot see, hear, open or produce (the self-instruct
# blacklist idea), per language. Latin/Cyrillic entries are whole words (regex, lower case);
# the others are matched as substrings (no spaces, or clitics attached).
UNSERVABLE: dict[str, str] = {
  "en": r"images?|pictures?|photos?|photographs?|drawings?|draw|graphs?|charts?|diagrams?|"
  r"maps?|videos?|audio|recordings?|attached|attachments?|files?|spreadsheets?|links?|"
  r"url|websites?|web ?page|screenshots?|go to|click",
  "es": r"imagen|imágenes|fotos?|fotografías?|dibujos?|dibuja|gráficos?|gráficas?|"
  r"diagramas?|mapas?|vídeos?|videos?|audios?|grabación|grabaciones|archivos?|"
  r"ficheros?|adjuntos?|adjunta|enlaces?|links?|url|sitio web|página web|"
  r"captura de pantalla",
  "pt": r"imagem|imagens|fotos?|fotografias?|desenhos?|desenhe|gráficos?|diagramas?|mapas?|"
  r"vídeos?|áudios?|gravação|gravações|arquivos?|ficheiros?|anexos?|anexad[oa]|links?|"
  r"url|site|página web|captura de tela",
  "fr": r"images?|photos?|photographies?|dessins?|dessine[zr]?|graphiques?|diagrammes?|"
  r"schémas?|cartes?|vidéos?|audios?|enregistrements?|fichiers?|pièces? jointes?|"
  r"liens?|url|sites? web|pages? web|captures? d'écran",
  "de": r"bild|bilder|bildes|fotos?|fotografien?|zeichnung(en)?|zeichne|grafik(en)?|"
  r"diagramms?|diagramme|karten?|landkarten?|videos?|audios?|aufnahmen?|dateien|datei|"
  r"anhang|anhänge|angehängt(e|en)?|links?|url|webseiten?|website|screenshots?",
  "id": r"gambar|foto|fotografi|lukisan|grafik|diagram|bagan|peta|video|audio|rekaman|"
  r"berkas|file|lampiran|terlampir|tautan|link|url|situs|halaman web|tangkapan layar",
  "vi": r"hình ảnh|bức ảnh|ảnh chụp|hình vẽ|vẽ|biểu đồ|sơ đồ|bản đồ|video|âm thanh|ghi âm|"
  r"tệp|tập tin|file|đính kèm|liên kết|đường dẫn|url|trang web",
  "ru": r"изображени\w*|картинк\w*|фото\w*|рисун\w*|нарисуй\w*|график\w*|диаграмм\w*|"
  r"схем\w*|карт[аеуы]|видео\w*|аудио\w*|файл\w*|вложени\w*|прикреп\w*|ссылк\w*|"
  r"url|сайт\w*|веб-страниц\w*|скриншот\w*",
  "ar": r"(?:[وفبلك]?(?:ال)?)(?:صورة|صور|رسمة|ارسم|مخطط|خريطة|فيديو|ملف|ملفات|مرفق|رابط|"
  r"روابط)|رسم بياني|تسجيل صوتي|موقع ويب|الموقع الإلكتروني|لقطة شاشة",
  "ja": "画像|写真|イラスト|描いて|描け|図表|(?<!パラ)グラフ|チャート|地図|動画|ビデオ|音声|録音|"
  "ファイル|添付|リンク|URL|ウェブサイト|サイト|スクリーンショット",
  "ko": "이미지|사진|그림|그려|그래프|차트|도표|다이어그램|동영상|비디오|영상|오디오|음성|"
  "녹음|파일|첨부|링크|URL|웹사이트|사이트|스크린샷",
  "th": "รูปภาพ|รูปถ่าย|ภาพถ่าย|วาดภาพ|วาดรูป|กราฟ|แผนภูมิ|แผนภาพ|แผนที่|วิดีโอ|"
  "ไฟล์เสียง|บันทึกเสียง|ไฟล์|แนบ|ลิงก์|ลิงค์|URL|เว็บไซต์",
  "zh": "图片|圖片|图像|照片|画图|绘图|绘制|图表|圖表|地图|视频|影片|音频|录音|文件|附件|"
  "链接|鏈接|网址|网站|截图",
}
_WORD_BOUNDARY = {"en", "es", "pt", "fr", "de", "id", "vi", "ru", "ar"}


@functools.lru_cache(maxsize=None)
def _unservable_re(lang: str) -> re.Pattern:
  words = UNSERVABLE[lang]
  if lang in _WORD_BOUNDARY:
    return re.compile(rf"(?<!\w)({words})(?!\w)", re.IGNORECASE)
  return re.compile(f"({words})", re.IGNORECASE)


def unservable_match(text: str, lang: str) -> str | None:
  """The word (or URL) that makes a task unservable for a text model, else None. English
  words count in every language (teachers mix them in)."""
  m = _URL_RE.search(text)
  if m:
    return m.group(0)
  for code in dict.fromkeys((lang, "en")):
    if code in UNSERVABLE:
      m = _unservable_re(code).search(text)
      if m:
        return m.group(0)
  return None


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  """Thresholds; lengths in length_units (about-words)."""

  rouge_threshold: float = 0.7  # reject when ROUGE-L to any pool instruction >= this
  near_duplicate_threshold: float = 0.6  # Jaccard of character 3-grams of instruction+input
  min_instruction_units: float = 2.0
  max_instruction_units: float = 150.0
  max_input_units: float = 400.0
  max_output_units: float = 600.0
  check_language: bool = True
  check_unservable: bool = True

  def __post_init__(self):
    for name in ("rouge_threshold", "near_duplicate_threshold"):
      v = getattr(self, name)
      if not 0.0 < v <= 1.0:
        raise ValueError(f"FilterConfig.{name} must be in (0, 1], got {v}")
    if self.min_instruction_units > self.max_instruction_units:
      raise ValueError("FilterConfig: min_instruction_units > max_instruction_units")


@dataclasses.dataclass(frozen=True)
class Verdict:
  reason: str | None  # None: keep
  detail: str = ""
  rouge: float | None = None  # highest ROUGE-L against the pool (None if not reached)

  @property
  def kept(self) -> bool:
    return self.reason is None


def check_format(instruction: str, input_text: str, output: str) -> str | None:
  """Why a parsed task is malformed, or None."""
  if not instruction.strip():
    return "empty instruction"
  if not output.strip():
    return "empty output"
  if not any(ch.isalnum() for ch in output):
    return "output has no letters or digits"
  for field, text in (("instruction", instruction), ("input", input_text), ("output", output)):
    if _TEMPLATE_RE.search(text):
      return f"template marker left in {field}"
  first = instruction.strip()[0]
  if unicodedata.category(first)[0] in "PS" and first not in "¿¡\"'«「『“(":
    return f"instruction starts with {first!r}"
  # Copies are compared with case and punctuation kept: "add a comma", "write it in capitals"
  # and "split into words" are real tasks whose answers differ from the input only so.
  out = _squash(output)
  if out == _squash(instruction) or (input_text.strip() and out == _squash(input_text)):
    return "output copies the instruction or input"
  return None


class _Growable:
  """An append-only int32 array with amortised O(1) appends and free slicing."""

  def __init__(self):
    self.data, self.n = np.zeros(4, np.int32), 0

  def append(self, x: int) -> None:
    if self.n == len(self.data):
      self.data = np.concatenate([self.data, np.zeros_like(self.data)])
    self.data[self.n] = x
    self.n += 1

  @property
  def values(self) -> np.ndarray:
    return self.data[: self.n]


class _Index:
  """Inverted index term -> (entry ids, counts), vectorised overlap with a query."""

  def __init__(self):
    self._ids: dict[str, _Growable] = defaultdict(_Growable)
    self._counts: dict[str, _Growable] = defaultdict(_Growable)
    self.sizes = _Growable()  # number of terms (with multiplicity) of each entry

  def add(self, terms: Counter) -> None:
    i = self.sizes.n
    for term, c in terms.items():
      self._ids[term].append(i)
      self._counts[term].append(c)
    self.sizes.append(sum(terms.values()))

  def overlap(self, terms: Counter) -> np.ndarray:
    """Multiset intersection size of `terms` with every entry."""
    out = np.zeros(self.sizes.n, np.int32)
    for term, c in terms.items():
      if term in self._ids:
        ids = self._ids[term].values
        out[ids] += np.minimum(self._counts[term].values, c)
    return out


class InstructionPool:
  """One language's instructions so far, with the indexes the duplicate filters need."""

  def __init__(self, lang: str, config: FilterConfig = FilterConfig()):
    self.lang, self.config = lang, config
    self.instructions: list[str] = []
    self._keys: set[str] = set()
    self._tokens = _Index()  # ROUGE tokens of each instruction
    self._shingles = _Index()  # character 3-grams of each instruction + input

  def __len__(self) -> int:
    return len(self.instructions)

  @staticmethod
  def key(instruction: str, input_text: str) -> str:
    """The exact-duplicate key of a task."""
    return normalize(instruction) + "\x00" + normalize(input_text)

  def add(self, instruction: str, input_text: str = "") -> None:
    self.instructions.append(instruction)
    self._tokens.add(Counter(tokenize(instruction)))
    self._keys.add(self.key(instruction, input_text))
    self._shingles.add(Counter(shingles(instruction + "\n" + input_text)))

  def extend(self, items: Iterable[tuple[str, str]]) -> None:
    for instruction, input_text in items:
      self.add(instruction, input_text)

  def max_rouge(self, instruction: str) -> tuple[float, int]:
    """(highest ROUGE-L F of `instruction` against the pool, index of that instruction; -1)."""
    toks = tokenize(instruction)
    if not toks or not self.instructions:
      return 0.0, -1
    overlap = self._tokens.overlap(Counter(toks))
    bounds = 2.0 * overlap / (len(toks) + self._tokens.sizes.values)
    order = np.argsort(-bounds, kind="stable")
    best, best_i = 0.0, -1
    for i in order:
      if bounds[i] <= best:
        break
      score = rouge_l(self.instructions[i], instruction)
      if score > best:
        best, best_i = score, int(i)
    return best, best_i

  def max_jaccard(self, instruction: str, input_text: str) -> tuple[float, int]:
    """(highest Jaccard of character 3-grams of instruction + input, index; -1)."""
    sh = shingles(instruction + "\n" + input_text)
    if not sh or not self.instructions:
      return 0.0, -1
    common = self._shingles.overlap(Counter(sh))
    jaccard = common / (len(sh) + self._shingles.sizes.values - common)
    i = int(np.argmax(jaccard))
    return (float(jaccard[i]), i) if jaccard[i] > 0 else (0.0, -1)

  def check(self, instruction: str, input_text: str, output: str) -> Verdict:
    """The first failed filter (in REASONS order), or a keep; does not add to the pool."""
    cfg = self.config
    bad = check_format(instruction, input_text, output)
    if bad:
      return Verdict("format", bad)
    n = length_units(instruction)
    if n < cfg.min_instruction_units:
      return Verdict("too_short", f"instruction has {n:g} units < {cfg.min_instruction_units:g}")
    for field, text, limit in (
      ("instruction", instruction, cfg.max_instruction_units),
      ("input", input_text, cfg.max_input_units),
      ("output", output, cfg.max_output_units),
    ):
      n = length_units(text)
      if n > limit:
        return Verdict("too_long", f"{field} has {n:g} units > {limit:g}")
    if cfg.check_language and not langid.is_language(instruction, self.lang):
      return Verdict(
        "language", f"instruction reads as {langid.identify(instruction).lang!r}, not {self.lang!r}"
      )
    if cfg.check_unservable:
      # Words in the instruction only (an input text may well tell of a photo); links anywhere.
      link = _URL_RE.search(input_text)
      hit = unservable_match(instruction, self.lang) or (link.group(0) if link else None)
      if hit:
        return Verdict("unservable", f"mentions {hit!r}")
    if self.key(instruction, input_text) in self._keys:
      return Verdict("duplicate", "same instruction and input already in the pool")
    jac, j = self.max_jaccard(instruction, input_text)
    if jac >= cfg.near_duplicate_threshold:
      return Verdict(
        "near_duplicate", f"3-gram Jaccard {jac:.2f} with {self.instructions[j][:60]!r}"
      )
    score, i = self.max_rouge(instruction)
    if score >= cfg.rouge_threshold:
      return Verdict("rouge", f"ROUGE-L {score:.2f} with {self.instructions[i][:60]!r}", score)
    return Verdict(None, "", score)


def reason_counts(verdicts: Iterable[Verdict]) -> Mapping[str, int]:
  counts = Counter(v.reason or "kept" for v in verdicts)
  return {k: counts.get(k, 0) for k in ("kept", *REASONS)}
