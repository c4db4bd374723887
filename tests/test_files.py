import os

import pytest

from polylm_jax.files import atomic_write


def test_atomic_write_text_and_bytes(tmp_path):
  path = atomic_write(tmp_path / "a" / "b.txt", "héllo\n")
  assert path.read_text(encoding="utf-8") == "héllo\n"
  atomic_write(path, b"\x00\x01")
  assert path.read_bytes() == b"\x00\x01"
  assert os.listdir(path.parent) == ["b.txt"]  # no temp file left behind


def test_failed_write_keeps_the_old_file(tmp_path):
  path = atomic_write(tmp_path / "keep.txt", "old")
  with pytest.raises(TypeError):
    atomic_write(path, 12345)  # not str or bytes: fails while writing
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["keep.txt"]
