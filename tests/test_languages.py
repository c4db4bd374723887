"""The language table: the 18 PolyLM codes, TFDS code mappings, and unknown-code errors."""

import pytest

from polylm_jax import mixing
from tasks import languages


def test_the_18_polylm_languages():
  # The order is the batch's `langs` index order of the packer (polylm_jax/mixing.py).
  assert languages.LANGUAGE_CODES == mixing.LANGUAGES
  assert len(set(languages.LANGUAGE_CODES)) == 18
  for lang in languages.POLYLM_LANGUAGES:
    assert lang.name and lang.native and lang.script
  assert languages.check_language("zh").native == "中文"
  assert languages.language_name("he") == "Hebrew"


def test_tfds_codes_that_differ_from_iso():
  assert languages.check_language("he").mc4 == "iw"  # mC4 uses the old code
  assert languages.check_language("zh").wiki40b == "zh-cn"
  assert languages.check_language("zh").ted == "zh-cn"
  assert languages.check_language("pt").ted == "pt"


def test_unknown_code_error_names_code_place_and_suggestion():
  with pytest.raises(ValueError) as e:
    languages.check_language("iw", where="--languages flag")
  msg = str(e.value)
  assert "--languages flag" in msg and "'iw'" in msg and "known codes" in msg
  with pytest.raises(ValueError, match="did you mean.*zh"):
    languages.check_language("zhh")


def test_register_language_rejects_conflicts_and_bad_codes():
  with pytest.raises(ValueError, match="already registered"):
    languages.register_language(languages.Language("en", "Other", "Other", "Latn"))
  with pytest.raises(ValueError, match="lower-case"):
    languages.register_language(languages.Language("EN", "x", "x", "Latn"))
  # Registering the identical entry again is a no-op, not an error.
  languages.register_language(languages.check_language("en"))
