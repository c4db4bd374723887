"""Atomic file writes: a reader (or a crash) never sees half a file.

Every output the project writes whole (tokenizer models, reports, inference outputs, gin
configs, self-instruct statistics) goes through here, so "bad input never corrupts data
already written" holds in one place.
"""

from __future__ import annotations

import os
import pathlib
import tempfile


def atomic_write(path: str | os.PathLike, data: str | bytes) -> pathlib.Path:
  """Writes `data` to a temp file beside `path`, fsyncs it, then renames it over `path`."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data.encode("utf-8") if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path
