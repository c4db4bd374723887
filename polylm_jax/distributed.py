"""Multi-process runs: starting jax.distributed, and the few host-side exchanges the binaries
need (JSON values gathered from every process, a flag or a count agreed by all).

JAX's own cluster detection finds Slurm, Open MPI, Cloud TPU slices and the JAX_* variables
(`python -m polylm_jax.launch` sets those for a local run); nothing here schedules processes.
The exchanges go through `multihost_utils.process_allgather`, the public collective every
backend has (Gloo on CPU, NCCL on GPU, ICI/DCN on TPU). Every process must call them at the
same point, like any collective; with one process they return at once without one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any, Iterator, Mapping

import jax
import numpy as np

from polylm_jax import logs


def maybe_initialize(mode: str = "auto") -> bool:
  """Calls jax.distributed.initialize() for multi-process runs; returns whether it did.

  'auto' initialises when the environment names a multi-process job: $JAX_COORDINATOR_ADDRESS
  (with $JAX_NUM_PROCESSES and $JAX_PROCESS_ID), Slurm (SLURM_NTASKS > 1), Open MPI
  (OMPI_COMM_WORLD_SIZE > 1) or a multi-host Cloud TPU slice (TPU_WORKER_HOSTNAMES with
  several hosts). 'on' always initialises (JAX detects the cluster), 'off' never.
  $POLYLM_JAX_HEARTBEAT_SECONDS sets JAX's heartbeat timeout (heartbeat_seconds). Once
  initialised, an uncaught exception ends the process at once after its traceback, as in
  fail_fast, so its peers fail in their next collective instead of waiting for it.
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
  seconds = heartbeat_seconds(env)
  if seconds is not None:
    kwargs["heartbeat_timeout_seconds"] = seconds
  jax.distributed.initialize(**kwargs)
  previous_hook = sys.excepthook

  def leave_after_traceback(kind, value, tb):  # an uncaught exception: see _leave
    previous_hook(kind, value, tb)
    if jax.distributed.is_initialized():
      _leave(130 if issubclass(kind, KeyboardInterrupt) else 1)

  sys.excepthook = leave_after_traceback
  return True


HEARTBEAT_VAR = "POLYLM_JAX_HEARTBEAT_SECONDS"
# How long a process whose runtime call failed (e.g. a collective whose peer is gone) waits
# before it leaves, so that the peer that failed first is the first to exit: launchers and
# schedulers name the first process that exits, and a peer's own failure (a Python error,
# sys.exit) is not delayed. A failing runtime call on its own ends the job this much later.
RUNTIME_ERROR_PAUSE_SECONDS = 1.0


def heartbeat_seconds(env: Mapping[str, str]) -> int | None:
  """$POLYLM_JAX_HEARTBEAT_SECONDS: after how long without a heartbeat the coordination
  service declares a process dead and stops the others (JAX's default, 100 s, when unset).

  It bounds how long the peers of a process that vanished (SIGKILL, a lost host) wait when no
  launcher stops them; too short a value kills a healthy process whose host is too busy to
  send heartbeats (docs/multihost.md).
  """
  raw = env.get(HEARTBEAT_VAR, "").strip()
  if not raw:
    return None
  try:
    seconds = int(raw)
  except ValueError:
    seconds = 0
  if seconds < 1:
    raise ValueError(f"${HEARTBEAT_VAR} must be a whole number of seconds >= 1, got {raw!r}")
  return seconds


def _leave(code: int) -> None:
  """Ends a failing process now, skipping the exit handlers: JAX's would wait up to
  shutdown_timeout_seconds (300 s) at the shutdown barrier for peers that are themselves
  waiting for this process in a collective. Its exit lets them fail at once."""
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(Exception):
      stream.flush()
  with contextlib.suppress(Exception):
    logs.close()  # the quiet console's stderr pipe holds the message until then
  os._exit(code)


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
  """Around a binary's work: in a multi-process job, a failure (an exception, or
  sys.exit with a non-zero status, e.g. a one-line configuration error) ends this process at
  once, with its message, instead of at the shutdown barrier minutes later (see _leave);
  after RUNTIME_ERROR_PAUSE_SECONDS when the error came from the runtime (a broken collective).
  A single process, a clean exit, or Ctrl-C (KeyboardInterrupt: every process gets it, and
  the binary's own handler runs) leaves as usual."""
  try:
    yield
  except KeyboardInterrupt:
    raise
  except SystemExit as e:
    if jax.distributed.is_initialized() and e.code not in (None, 0):
      if not isinstance(e.code, int):
        print(e.code, file=sys.stderr)
      _leave(e.code if isinstance(e.code, int) else 1)
    raise
  except BaseException as e:
    if jax.distributed.is_initialized():
      import traceback  # pylint: disable=import-outside-toplevel

      traceback.print_exc()
      if isinstance(e, jax.errors.JaxRuntimeError):
        time.sleep(RUNTIME_ERROR_PAUSE_SECONDS)
      _leave(1)
    raise


def define_flag(extra: str = "") -> None:
  """The binaries' --distributed flag (absl), once per process."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  if "distributed" not in flags.FLAGS:
    flags.DEFINE_enum(
      "distributed",
      "auto",
      ["auto", "on", "off"],
      "jax.distributed.initialize(): auto = when the environment names a multi-process job "
      f"(see polylm_jax.distributed.maybe_initialize){extra}.",
    )


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
