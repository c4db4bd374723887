"""What the trainer builds before its loop, as plain functions: the
checks that must fail before any compute, the jitted step functions with their shardings,
and host batches -> global arrays. `trainer.py` and the benchmarks use them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zlib
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from polylm_jax import partitioning
from polylm_jax.training import step as step_lib
from polylm_jax.config import PolyLMConfig
from polylm_jax.model import abstract_params, init_params


# -- checks that run before any compute --------------------------------------------------------


def check_model_dir(model_dir: str) -> str:
  """Creates MODEL_DIR and proves it writable (a probe file), or fails naming it."""
  if not model_dir:
    raise ValueError("MODEL_DIR is empty: pass --gin.MODEL_DIR=\\\"/path/to/run\\\"")
  model_dir = os.path.abspath(os.path.expanduser(model_dir))
  try:
    os.makedirs(model_dir, exist_ok=True)
    probe = os.path.join(model_dir, f".write_probe.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"MODEL_DIR={model_dir!r} is not writable: {e}") from e
  return model_dir


def check_shardable(config: PolyLMConfig, mesh: jax.sharding.Mesh) -> None:
  """Every sharded parameter dimension must divide by its mesh axes (names the parameter)."""
  structs = jax.tree_util.tree_flatten_with_path(nn.unbox(abstract_params(config)))[0]
  shardings = jax.tree.leaves(
    partitioning.param_shardings(config, mesh), is_leaf=lambda x: isinstance(x, NamedSharding)
  )
  for (path, struct), sharding in zip(structs, shardings):
    for dim, axes in zip(struct.shape, sharding.spec):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else tuple(axes)
      n = int(np.prod([mesh.shape[a] for a in axes]))
      if dim % n:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        raise ValueError(
          f"parameter {name} of shape {tuple(struct.shape)} cannot be split over "
          f"mesh axes {axes} of size {n} ({dim} is not a multiple of {n}): "
          "change train.mesh_fsdp / train.mesh_tensor"
        )


def check_batch_layout(
  batch_size: int, mesh: jax.sharding.Mesh, num_microbatches: int, num_hosts: int
) -> None:
  dp = partitioning.data_parallel_size(mesh)
  if num_microbatches < 1:
    raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
  if batch_size <= 0 or batch_size % num_hosts:
    raise ValueError(
      f"BATCH_SIZE={batch_size} must be a positive multiple of the number of hosts ({num_hosts})"
    )
  if batch_size % (dp * num_microbatches):
    raise ValueError(
      f"BATCH_SIZE={batch_size} is not divisible by the data-parallel devices times the "
      f"microbatches: {dp} (mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}) x "
      f"num_microbatches={num_microbatches} = {dp * num_microbatches}"
    )


# -- batches -------------------------------------------------------------------------------------


def fingerprint(batch: Mapping[str, np.ndarray]) -> int:
  """crc32 of a host batch's inputs: tests compare which batches a run consumed."""
  return zlib.crc32(np.ascontiguousarray(batch["inputs"]).tobytes())


def to_global(batch: Mapping[str, np.ndarray], shardings: Mapping[str, NamedSharding]) -> dict:
  """This host's rows -> global arrays split over the data axes (no host holds the rest)."""
  return {
    k: jax.make_array_from_process_local_data(shardings[k], np.asarray(batch[k]))
    for k in step_lib.BATCH_FIELDS
  }


def whole_on_this_process(params: Any) -> tuple[Any, jax.sharding.Mesh]:
  """(params, mesh) for work one process does alone (greedy samples, benchmark shares): in a
  multi-process run the sharded params gathered whole to host memory (a collective: every
  process calls it; one leaf at a time passes whole through each device) and an fsdp mesh of
  this process's devices, so that the copy placed there is sharded, not one per device;
  with one process, the params as they are on all devices."""
  if jax.process_count() == 1:
    return params, partitioning.make_mesh(-1, 1, 1)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  whole = multihost_utils.process_allgather(params, tiled=True)
  return whole, partitioning.make_mesh(1, -1, 1, devices=jax.local_devices())


# -- the jitted functions -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepFunctions:
  """The trainer's jitted functions with their shardings (benchmarks use them too).
  Call them under `partitioning.use_mesh(mesh)` so activation constraints resolve."""

  state_shardings: step_lib.TrainState
  batch_shardings: dict[str, NamedSharding]
  replicated: NamedSharding
  init: Callable[[jax.Array], step_lib.TrainState]  # rng -> fresh state
  from_params: Callable[[Any], step_lib.TrainState]  # params -> fresh state
  train_step: Callable[..., tuple[step_lib.TrainState, dict]]  # (state, batch), state donated
  eval_step: Callable[..., dict]  # (params, batch)


def make_step_functions(
  config: PolyLMConfig,
  mesh: jax.sharding.Mesh,
  optimizer,
  schedule,
  *,
  num_microbatches: int = 1,
  z_loss: float = 0.0,
  label_smoothing: float = 0.0,
  num_languages: int = step_lib.NUM_LANGUAGES,
  loss_chunk_tokens: int = step_lib.LOSS_CHUNK_TOKENS,
) -> StepFunctions:
  """jax.jit with in/out shardings (pjit's successor) and the state donated to the step."""
  state_sh = step_lib.train_state_shardings(config, optimizer, mesh)
  batch_sh = {k: partitioning.batch_sharding(mesh) for k in step_lib.BATCH_FIELDS}
  replicated = NamedSharding(mesh, P())
  init = jax.jit(
    lambda r: step_lib.init_train_state(init_params(config, r), optimizer), out_shardings=state_sh
  )
  from_params = jax.jit(
    lambda p: step_lib.init_train_state(p, optimizer),
    in_shardings=(state_sh.params,),
    out_shardings=state_sh,
  )
  train_step = jax.jit(
    functools.partial(
      step_lib.train_step,
      config=config,
      optimizer=optimizer,
      schedule=schedule,
      num_microbatches=num_microbatches,
      z_loss=z_loss,
      label_smoothing=label_smoothing,
      num_languages=num_languages,
      loss_chunk_tokens=loss_chunk_tokens,
    ),
    in_shardings=(state_sh, batch_sh),
    out_shardings=(state_sh, replicated),
    donate_argnums=(0,),
  )
  eval_step = jax.jit(
    functools.partial(
      step_lib.eval_step,
      config=config,
      num_languages=num_languages,
      loss_chunk_tokens=loss_chunk_tokens,
    ),
    in_shardings=(state_sh.params, batch_sh),
    out_shardings=replicated,
  )
  return StepFunctions(state_sh, batch_sh, replicated, init, from_params, train_step, eval_step)
