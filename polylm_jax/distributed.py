"""Multi-process runs: starting jax.distributed, and the few host-side exchanges the binaries
need (JSON values gathered from every process, a flag or a count agreed by all).

JAX's own cluster detection finds Slurm, Open MPI, Cloud TPU slices and the JAX_* variables
(`python -m polylm_jax.launch` sets those for a local run); nothing here schedules processes.
The exchanges go through `multihost_utils.process_allgather`, the public collective every
backend has (Gloo on CPU, NCCL on GPU, ICI/DCN on TPU). Every process must call them at the
same point, like any collective; with one process they return at once without one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np


def maybe_initialize(mode: str = "auto") -> bool:
  """Calls jax.distributed.initialize() for multi-process runs; returns whether it did.

  'auto' initialises when the environment names a multi-process job: $JAX_COORDINATOR_ADDRESS
  (with $JAX_NUM_PROCESSES and $JAX_PROCESS_ID), Slurm (SLURM_NTASKS > 1), Open MPI
  (OMPI_COMM_WORLD_SIZE > 1) or a multi-host Cloud TPU slice (TPU_WORKER_HOSTNAMES with
  several hosts). 'on' always initialises (JAX detects the cluster), 'off' never.
  """
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"--distributed must be auto, on or off, got {mode!r}")
  env = os.environ
  multi = (
    bool(env.get("JAX_COORDINATOR_ADDRESS"))
    or int(env.get("JAX_NUM_PROCESSES", "1")) > 1
    or int(env.get("SLURM_NTASKS", "1")) > 1
    or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    or len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
  )
  if mode == "off" or (mode == "auto" and not multi):
    return False
  kwargs: dict[str, Any] = {}
  if env.get("JAX_COORDINATOR_ADDRESS"):
    kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
    if "JAX_NUM_PROCESSES" in env:
      kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if "JAX_PROCESS_ID" in env:
      kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
  jax.distributed.initialize(**kwargs)
  return True


def _gather(array: np.ndarray) -> np.ndarray:
  """[process_count, *array.shape]: every process's `array`, in process order."""
  if jax.process_count() == 1:
    return array[None]
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  return np.asarray(multihost_utils.process_allgather(array, tiled=False))


def allgather_json(value: Any) -> list[Any]:
  """Every process's JSON-serialisable `value`, in process order (a list of process_count)."""
  data = np.frombuffer(json.dumps(value).encode(), np.uint8)
  sizes = _gather(np.array([len(data)], np.int64))[:, 0]
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[: len(data)] = data
  gathered = _gather(padded)
  return [json.loads(bytes(row[:n]).decode()) for row, n in zip(gathered, sizes)]


def max_over_processes(n: int) -> int:
  """The largest `n` any process passed (e.g. a batch count, so all run as many steps)."""
  return int(_gather(np.array([int(n)], np.int64)).max())


def any_process(flag: bool) -> bool:
  """True on every process when it is True on any (e.g. a stop signal one host received)."""
  return bool(_gather(np.array([bool(flag)], np.int32)).max())
