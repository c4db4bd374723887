"""Sharded forward passes equal the single-device one; parameters are really split."""

import jax
import numpy as np
import pytest

from polylm_jax import partitioning as pt
from polylm_jax.config import get_config
from polylm_jax.model import PolyLM, init_params

CFG = get_config("polylm_tiny")
L, D, H, K, F, V = (
  CFG.num_layers,
  CFG.d_model,
  CFG.num_heads,
  CFG.head_dim,
  CFG.d_ff,
  CFG.vocab_size,
)

# mesh -> expected per-device shard shape of (wte, qkv_kernel, fc1_kernel)
MESHES = {
  (8, 1, 1): ((V, D), (L, D, 3, H, K), (L, D, F)),
  (2, 4, 1): ((V, D // 4), (L, D // 4, 3, H, K), (L, D // 4, F)),
  (2, 1, 4): ((V // 4, D), (L, D, 3, H // 4, K), (L, D, F // 4)),
}


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.key(0))


def test_eight_host_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize("shape", list(MESHES))
def test_sharded_forward_equals_single_device(params, shape):
  data, fsdp, tensor = shape
  tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, V)
  ref = PolyLM(CFG).apply({"params": params}, tokens)

  mesh = pt.make_mesh(data=data, fsdp=fsdp, tensor=tensor)
  shardings = pt.param_shardings(CFG, mesh)
  sharded = pt.shard_params(params, shardings)
  with pt.use_mesh(mesh):
    forward = jax.jit(
      lambda p, t: PolyLM(CFG).apply({"params": p}, t),
      in_shardings=(shardings, pt.batch_sharding(mesh)),
    )
    out = forward(sharded, jax.device_put(tokens, pt.batch_sharding(mesh)))
  np.testing.assert_allclose(out, ref, atol=1e-5)

  wte, qkv, fc1 = MESHES[shape]
  assert sharded["wte"].addressable_shards[0].data.shape == wte
  assert sharded["layers"]["attn"]["qkv_kernel"].addressable_shards[0].data.shape == qkv
  assert sharded["layers"]["mlp"]["fc1_kernel"].addressable_shards[0].data.shape == fc1
  # LayerNorm params follow embed: split by fsdp only.
  assert sharded["ln_f"]["scale"].addressable_shards[0].data.shape == (D // fsdp,)


def test_mesh_shape_fills_and_validates():
  assert pt.mesh_shape(8, data=-1, fsdp=2) == (4, 2, 1)
  assert pt.mesh_shape(8, data=2, fsdp=-1, tensor=2) == (2, 2, 2)
  with pytest.raises(ValueError, match="does not divide the 8 devices"):
    pt.mesh_shape(8, data=-1, tensor=3)
  with pytest.raises(ValueError, match="uses 4 devices but 8 are available"):
    pt.mesh_shape(8, data=2, fsdp=2, tensor=1)
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    pt.mesh_shape(8, data=-1, fsdp=-1)
  with pytest.raises(ValueError, match="'tensor' must be a positive size"):
    pt.mesh_shape(8, tensor=0)
