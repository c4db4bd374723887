"""Checks the built-in sample corpus (polylm_jax/data/sample_corpus).

The per-file tests cover whichever language files exist. Each language is
added in its own commit, so a missing language does not break them.
`test_all_18_languages_present` is the one test that insists the corpus is
complete.
"""

import importlib.resources
import re
import unicodedata

import pytest

LANGUAGES = ("zh en es fr pt ru de it ar ja ko th vi id nl pl tr he").split()
MIN_PARALLEL_LINES = 150
MIN_DOCUMENTS = 3
MIN_DOCUMENT_CHARS = 200
# Share of letters that must be in the language's own script. The rest
# leaves room for names, units and abbreviations such as "km" or "SNS".
MIN_SCRIPT_SHARE = 0.85

CORPUS = importlib.resources.files("polylm_jax") / "data" / "sample_corpus"


def _languages_with(kind: str) -> list[str]:
  folder = CORPUS / kind
  if not folder.is_dir():
    return []
  return [lang for lang in LANGUAGES if (folder / f"{lang}.txt").is_file()]


def _read(kind: str, lang: str) -> str:
  return (CORPUS / kind / f"{lang}.txt").read_text(encoding="utf-8")


def _lines(lang: str) -> list[str]:
  text = _read("parallel", lang)
  assert text.endswith("\n"), f"parallel/{lang}.txt: missing final newline"
  return text[:-1].split("\n")


def _documents(lang: str) -> list[str]:
  return _read("documents", lang).strip("\n").split("\n\n")


def _script(ch: str) -> str:
  cp = ord(ch)
  if 0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF or 0xFF66 <= cp <= 0xFF9F:
    return "kana"
  if 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF:
    return "han"
  if 0xAC00 <= cp <= 0xD7AF or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F:
    return "hangul"
  if 0x0400 <= cp <= 0x052F:
    return "cyrillic"
  if 0x0590 <= cp <= 0x05FF or 0xFB1D <= cp <= 0xFB4F:
    return "hebrew"
  if (
    0x0600 <= cp <= 0x06FF
    or 0x0750 <= cp <= 0x077F
    or 0xFB50 <= cp <= 0xFDFF
    or 0xFE70 <= cp <= 0xFEFF
  ):
    return "arabic"
  if 0x0E00 <= cp <= 0x0E7F:
    return "thai"
  if cp <= 0x024F or 0x1E00 <= cp <= 0x1EFF:
    return "latin"
  return "other"


EXPECTED_SCRIPTS = {
  "zh": {"han"},
  "ja": {"han", "kana"},
  "ko": {"hangul"},
  "ru": {"cyrillic"},
  "ar": {"arabic"},
  "he": {"hebrew"},
  "th": {"thai"},
}


def _script_shares(text: str) -> dict[str, float]:
  counts: dict[str, int] = {}
  for ch in text:
    if ch.isalpha():
      name = _script(ch)
      counts[name] = counts.get(name, 0) + 1
  total = sum(counts.values())
  assert total, "no letters at all"
  return {name: n / total for name, n in counts.items()}


def _check_script(lang: str, text: str, where: str) -> None:
  shares = _script_shares(text)
  expected = EXPECTED_SCRIPTS.get(lang, {"latin"})
  share = sum(shares.get(s, 0.0) for s in expected)
  assert share >= MIN_SCRIPT_SHARE, (
    f"{where}: only {share:.0%} of letters are {sorted(expected)}; shares: {shares}"
  )
  if lang == "ja":
    assert shares.get("kana", 0.0) >= 0.2, f"{where}: too little kana for Japanese"
  if lang == "zh":
    assert shares.get("kana", 0.0) < 0.01, f"{where}: kana in Chinese text"


# Thai text may give years in the Buddhist era, 543 years ahead.
BUDDHIST_ERA_OFFSET = 543


def _years(line: str, lang: str = "en") -> list[int]:
  # Fold every decimal digit (Arabic-Indic, Thai, full-width) to ASCII first.
  folded = "".join(
    str(unicodedata.decimal(ch)) if unicodedata.decimal(ch, None) is not None else ch for ch in line
  )
  years = [int(y) for y in re.findall(r"(?<!\d)([12]\d{3})(?!\d)", folded)]
  if lang == "th":
    years = [y - BUDDHIST_ERA_OFFSET if y >= 2400 else y for y in years]
  return sorted(y for y in years if 1000 <= y <= 2099)


PARALLEL = _languages_with("parallel")
DOCUMENTS = _languages_with("documents")


def test_english_pivot_exists():
  assert "en" in PARALLEL, "parallel/en.txt is the pivot every file aligns to"
  assert len(_lines("en")) >= MIN_PARALLEL_LINES


@pytest.mark.parametrize("lang", PARALLEL)
def test_parallel_file_is_well_formed(lang):
  lines = _lines(lang)
  where = f"parallel/{lang}.txt"
  assert len(lines) == len(_lines("en")), (
    f"{where}: {len(lines)} lines, en.txt has {len(_lines('en'))}"
  )
  assert len(lines) >= MIN_PARALLEL_LINES
  for number, line in enumerate(lines, start=1):
    assert line, f"{where}:{number}: empty line"
    assert line == line.strip(), f"{where}:{number}: leading/trailing whitespace"
    assert "\r" not in line and "\t" not in line, f"{where}:{number}: CR or tab"
  seen: dict[str, int] = {}
  for number, line in enumerate(lines, start=1):
    assert line not in seen, f"{where}:{number}: duplicate of line {seen[line]}"
    seen[line] = number


@pytest.mark.parametrize("lang", PARALLEL)
def test_parallel_file_is_in_expected_script(lang):
  _check_script(lang, _read("parallel", lang), f"parallel/{lang}.txt")


@pytest.mark.parametrize("lang", [l for l in PARALLEL if l != "en"])
def test_parallel_years_stay_on_their_line(lang):
  """A cheap alignment check: a shifted or merged line moves its years."""
  english, other = _lines("en"), _lines(lang)
  with_years = [i for i, line in enumerate(english) if _years(line)]
  assert with_years, "en.txt should contain some years"
  for i in with_years:
    if i < len(other):
      assert _years(english[i]) == _years(other[i], lang), (
        f"parallel/{lang}.txt:{i + 1}: years {_years(other[i], lang)} "
        f"!= en {_years(english[i])}: is the line misaligned?"
      )


@pytest.mark.parametrize("lang", DOCUMENTS)
def test_documents_file_is_well_formed(lang):
  text = _read("documents", lang)
  where = f"documents/{lang}.txt"
  assert "\n\n\n" not in text, f"{where}: documents separated by more than one blank line"
  documents = _documents(lang)
  assert len(documents) >= MIN_DOCUMENTS, f"{where}: {len(documents)} documents"
  for number, document in enumerate(documents, start=1):
    assert "\n" not in document, f"{where}: document {number} spans several lines"
    assert document == document.strip(), f"{where}: document {number} has stray whitespace"
    assert len(document) >= MIN_DOCUMENT_CHARS, (
      f"{where}: document {number} has only {len(document)} characters"
    )
  assert len(set(documents)) == len(documents), f"{where}: duplicate documents"


@pytest.mark.parametrize("lang", DOCUMENTS)
def test_documents_are_in_expected_script(lang):
  for number, document in enumerate(_documents(lang), start=1):
    _check_script(lang, document, f"documents/{lang}.txt document {number}")


def test_no_stray_files():
  allowed = {f"{lang}.txt" for lang in LANGUAGES}
  for kind in ("parallel", "documents"):
    folder = CORPUS / kind
    if folder.is_dir():
      stray = sorted(p.name for p in folder.iterdir() if p.name not in allowed)
      assert not stray, f"sample_corpus/{kind}: unexpected files {stray}"


def test_all_18_languages_present():
  """Fails until every PolyLM language has both its files."""
  assert len(LANGUAGES) == 18
  missing = [
    f"{kind}/{lang}.txt"
    for kind, present in (("parallel", PARALLEL), ("documents", DOCUMENTS))
    for lang in LANGUAGES
    if lang not in present
  ]
  assert not missing, f"sample corpus incomplete, missing: {missing}"
