"""Where the project keeps the data it ships and the files it caches."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SAMPLE_CORPUS_DIR = PACKAGE_DIR / "data" / "sample_corpus"


def cache_root() -> Path:
  """$POLYLM_JAX_CACHE, else ~/.cache/polylm_jax."""
  env = os.environ.get("POLYLM_JAX_CACHE")
  return Path(env) if env else Path.home() / ".cache" / "polylm_jax"
