"""PolyLM in JAX: the public API.

`load`, `generate`, `score` and `evaluate` are imported lazily: they pull in Orbax and the decoding
code, which model-only users (and `import polylm_jax`) should not pay for.
"""

import importlib
from typing import Any

from polylm_jax.config import PolyLMConfig, count_params, get_config
from polylm_jax.model import PolyLM, init_params

_LAZY = {
  "load": "polylm_jax.checkpoints",
  "generate": "polylm_jax.decoding",
  "score": "polylm_jax.decoding",
  "evaluate": "polylm_jax.evaluation",
}

__all__ = ["PolyLMConfig", "PolyLM", "count_params", "get_config", "init_params", *_LAZY]


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'polylm_jax' has no attribute {name!r}")
