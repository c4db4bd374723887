"""The released (Megatron) initialisation: per-tensor statistics on a mid-size config.

SPEC section 1: Normal(0, 0.006) for every weight including both embeddings;
Normal(0, 0.006 / sqrt(2 * num_layers)) for the attention output and fc2; biases 0; LN scale 1.
"""

import math

import jax
import numpy as np
import pytest

from polylm_jax.config import get_config
from polylm_jax.model import init_params

CFG = get_config("polylm_mid")
STD = 0.006
OUT_STD = STD / math.sqrt(2 * CFG.num_layers)
WEIGHTS = {
  ("wte",): STD,
  ("wpe",): STD,
  ("layers", "attn", "qkv_kernel"): STD,
  ("layers", "attn", "out_kernel"): OUT_STD,
  ("layers", "mlp", "fc1_kernel"): STD,
  ("layers", "mlp", "fc2_kernel"): OUT_STD,
}


@pytest.fixture(scope="module")
def params():
  return jax.tree.map(np.asarray, init_params(CFG, jax.random.key(0)))


def leaves_with_paths(params):
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {tuple(k.key for k in path): leaf for path, leaf in flat}


def test_every_tensor_is_covered(params):
  names = set(leaves_with_paths(params))
  weights = set(WEIGHTS)
  rest = names - weights
  assert all(n[-1].endswith("bias") or n[-1] == "scale" for n in rest), rest


@pytest.mark.parametrize("path", list(WEIGHTS), ids=lambda p: "/".join(p))
def test_weight_std_within_5_percent(params, path):
  w = leaves_with_paths(params)[path]
  target = WEIGHTS[path]
  assert abs(w.std() / target - 1) < 0.05, (w.std(), target)
  assert abs(w.mean()) < 0.05 * target
  if path[0] == "layers":  # every layer on its own, and layers drawn independently
    for layer in w:
      assert abs(layer.std() / target - 1) < 0.05
    assert not np.array_equal(w[0], w[1])


def test_biases_zero_and_layernorm_scales_one(params):
  for path, leaf in leaves_with_paths(params).items():
    if path[-1].endswith("bias"):
      assert not leaf.any(), path
    elif path[-1] == "scale":
      assert (leaf == 1).all(), path
