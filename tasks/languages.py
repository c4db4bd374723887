"""The 18 PolyLM languages (SPEC section 4) and where each lives in the TFDS corpora.

Adding a language is one `register_language(Language(...))` call before registering its tasks
(see tasks/pretrain.py `register_language_tasks`). This module imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import difflib


@dataclasses.dataclass(frozen=True)
class Language:
  """One language and its codes in the TFDS corpora (None: the corpus lacks it)."""

  code: str  # ISO 639-1, as PolyLM names it
  name: str  # English name, used in instruction templates
  native: str  # endonym
  script: str  # ISO 15924 script(s)
  mc4: str | None = None  # split of c4/multilingual ("iw" for Hebrew)
  wiki40b: str | None = None  # wiki40b config ("zh-cn" for Chinese)
  wikipedia: str | None = None  # wikipedia/<date>.<this> config
  ted: str | None = None  # language label in ted_multi_translate

  @property
  def is_english(self) -> bool:
    return self.code == "en"


def _lang(code, name, native, script, *, mc4=None, wiki40b=None, wikipedia=None, ted=None):
  return Language(
    code,
    name,
    native,
    script,
    mc4=mc4 or code,
    wiki40b=wiki40b or code,
    wikipedia=wikipedia or code,
    ted=ted or code,
  )


_LANGUAGES: dict[str, Language] = {}

POLYLM_LANGUAGES: tuple[Language, ...] = (
  _lang("zh", "Chinese", "中文", "Hans", wiki40b="zh-cn", ted="zh-cn"),
  _lang("en", "English", "English", "Latn"),
  _lang("es", "Spanish", "Español", "Latn"),
  _lang("fr", "French", "Français", "Latn"),
  _lang("pt", "Portuguese", "Português", "Latn"),
  _lang("ru", "Russian", "Русский", "Cyrl"),
  _lang("de", "German", "Deutsch", "Latn"),
  _lang("it", "Italian", "Italiano", "Latn"),
  _lang("ar", "Arabic", "العربية", "Arab"),
  _lang("ja", "Japanese", "日本語", "Jpan"),
  _lang("ko", "Korean", "한국어", "Kore"),
  _lang("th", "Thai", "ไทย", "Thai"),
  _lang("vi", "Vietnamese", "Tiếng Việt", "Latn"),
  _lang("id", "Indonesian", "Bahasa Indonesia", "Latn"),
  _lang("nl", "Dutch", "Nederlands", "Latn"),
  _lang("pl", "Polish", "Polski", "Latn"),
  _lang("tr", "Turkish", "Türkçe", "Latn"),
  _lang("he", "Hebrew", "עברית", "Hebr", mc4="iw"),
)

# The 18 codes in the paper's order.
LANGUAGE_CODES: tuple[str, ...] = tuple(lang.code for lang in POLYLM_LANGUAGES)


def register_language(language: Language, replace: bool = False) -> Language:
  """Add a language; registering a code twice is an error unless replace=True."""
  if (
    not language.code
    or not language.code.replace("_", "").isalnum()
    or language.code != language.code.lower()
  ):
    raise ValueError(f"language code must be lower-case letters/digits, got {language.code!r}")
  if language.code in _LANGUAGES and not replace and _LANGUAGES[language.code] != language:
    raise ValueError(f"language {language.code!r} is already registered; pass replace=True")
  _LANGUAGES[language.code] = language
  return language


for _l in POLYLM_LANGUAGES:
  register_language(_l)


def all_languages() -> tuple[Language, ...]:
  """Every registered language (the 18 first, then any added)."""
  return tuple(_LANGUAGES.values())


def check_language(code: str, where: str = "language code") -> Language:
  """The Language for `code`; ValueError naming `where` and close matches if unknown."""
  if code in _LANGUAGES:
    return _LANGUAGES[code]
  close = difflib.get_close_matches(str(code), list(_LANGUAGES), n=3, cutoff=0.5)
  hint = f" (did you mean {', '.join(close)}?)" if close else ""
  raise ValueError(
    f"{where}: unknown language code {code!r}{hint}; known codes: {', '.join(_LANGUAGES)}"
  )


def get_language(code: str) -> Language:
  return check_language(code)


def language_name(code: str) -> str:
  return check_language(code).name
