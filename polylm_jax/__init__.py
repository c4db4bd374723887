"""PolyLM in JAX: the public API.

Heavy modules (seqio, TensorFlow, Orbax) are imported lazily so that `import polylm_jax`
stays cheap for model-only users.
"""

from polylm_jax.config import PolyLMConfig, count_params, get_config
from polylm_jax.model import PolyLM, init_params

__all__ = ["PolyLMConfig", "PolyLM", "count_params", "get_config", "init_params"]
