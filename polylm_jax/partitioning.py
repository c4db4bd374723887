"""Device mesh, logical axis rules, and shardings for params, optimizer state and batches.

The model names axes logically (batch, length, embed, heads, kv, mlp, vocab, layers, ...);
the rules here map them onto a mesh with axes (data, fsdp, tensor), as t5x does, with the
extra fsdp axis splitting parameters and optimizer state along `embed`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from polylm_jax.config import PolyLMConfig
from polylm_jax.model import abstract_params

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Flax resolves a logical axis to the first rule whose mesh axis is still free in that array,
# so `embed` is split over fsdp in parameters but stays whole in activations, whose batch
# axis already took fsdp.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
  ("batch", BATCH_AXES),
  ("vocab", "tensor"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("embed", "fsdp"),
  ("kv", None),
  ("length", None),
  ("position", None),
  ("qkv", None),
  ("layers", None),
)


def mesh_shape(num_devices: int, data: int = -1, fsdp: int = 1, tensor: int = 1) -> tuple[int, ...]:
  """Resolves one -1 entry to the remaining devices; errors name the offending axis sizes."""
  sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  unknown = [k for k, v in sizes.items() if v == -1]
  if len(unknown) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {sizes}")
  for k, v in sizes.items():
    if v == 0 or v < -1:
      raise ValueError(f"mesh: axis {k!r} must be a positive size or -1, got {v}")
  known = math.prod(v for v in sizes.values() if v != -1)
  if unknown:
    if num_devices % known:
      raise ValueError(
        f"mesh {sizes} does not divide the {num_devices} devices "
        f"({num_devices} is not a multiple of {known})"
      )
    sizes[unknown[0]] = num_devices // known
  elif known != num_devices:
    raise ValueError(f"mesh {sizes} uses {known} devices but {num_devices} are available")
  return tuple(sizes[a] for a in MESH_AXES)


def make_mesh(
  data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types (Explicit breaks embedding lookups)."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(len(devices), data, fsdp, tensor)
  return jax.make_mesh(
    shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices
  )


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Iterator[None]:
  """Activates the mesh and the logical rules for tracing (activation constraints)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_shardings(
  boxed_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
) -> Any:
  """NamedShardings for a tree of nn.LogicallyPartitioned leaves (or plain leaves: replicated)."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def param_shardings(
  config: PolyLMConfig, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
) -> Any:
  """Shardings of the parameter tree, derived without allocating any weight."""
  return logical_shardings(abstract_params(config), mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Batch arrays split over data x fsdp on their leading axis."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def shard_params(params: Any, shardings: Any) -> Any:
  return jax.device_put(params, shardings)
