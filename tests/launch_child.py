"""A tiny multi-process program for the launcher and host-exchange tests (not a test file).

    python -m polylm_jax.launch --processes=2 --devices_per_process=2 \
        --module=tests.launch_child -- [--exit=3 --on=1] [--hang] [--exchange]

It starts jax.distributed through polylm_jax.distributed.maybe_initialize (as the binaries
do), prints what it sees, does one process_allgather, then optionally misbehaves on process
`--on`: exits with a status, SIGKILLs itself, or every process waits forever in a collective
(the peers of a dead process must not). `--trap` turns SIGTERM and SIGINT into a printed
line and exit 143 or 130, like the trainer's save-and-stop.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from polylm_jax import distributed


def _parse(argv):
  p = argparse.ArgumentParser()
  p.add_argument("--exit", type=int, default=None, help="exit with this status on --on")
  p.add_argument("--kill", action="store_true", help="SIGKILL itself on --on")
  p.add_argument("--on", type=int, default=1, help="which process misbehaves")
  p.add_argument("--hang", action="store_true", help="then wait forever in a collective")
  p.add_argument("--sleep", action="store_true", help="then sleep (not in a collective)")
  p.add_argument("--trap", action="store_true", help="SIGTERM/INT: print, exit 143/130")
  p.add_argument("--exchange", action="store_true", help="print distributed.* results")
  p.add_argument("--no_fail_fast", action="store_true", help="without distributed.fail_fast")
  return p.parse_args(argv)


def _trap(signum, frame):  # noqa: ARG001
  print(f"got {signal.Signals(signum).name}", flush=True)
  sys.exit(128 + signum)


def main(argv) -> None:
  args = _parse(argv)
  print(f"started {os.getpid()}", flush=True)
  distributed.maybe_initialize("auto")
  if args.trap:  # after it: JAX's preemption notifier takes SIGTERM over when it starts
    signal.signal(signal.SIGTERM, _trap)
    signal.signal(signal.SIGINT, _trap)
  if args.no_fail_fast:
    _work(args)
    return
  with distributed.fail_fast():
    _work(args)


def _work(args) -> None:
  i = jax.process_index()
  gathered = multihost_utils.process_allgather(np.array([i * 10], np.int32), tiled=True)
  print(
    json.dumps(
      dict(
        pid=os.getpid(),
        process_index=i,
        process_count=jax.process_count(),
        local_devices=jax.local_device_count(),
        global_devices=jax.device_count(),
        gathered=np.asarray(gathered).tolist(),
      )
    ),
    flush=True,
  )
  print(f"stderr line from {i}", file=sys.stderr, flush=True)
  if args.exchange:
    out = dict(
      json=distributed.allgather_json({"i": i, "s": "é" * (i + 1)}),
      max=distributed.max_over_processes(5 + i),
      any_mine=distributed.any_process(i == 1),
      any_none=distributed.any_process(False),
    )
    print("exchange " + json.dumps(out), flush=True)
  if i == args.on and (args.exit is not None or args.kill):
    print(f"failing at {time.time()}", flush=True)
    if args.kill:
      os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(args.exit)
  if args.hang:  # every process that is still alive waits for the others in a collective
    multihost_utils.process_allgather(np.zeros(1, np.int32))
    print("collective returned", flush=True)
  if args.sleep:
    while True:
      time.sleep(0.1)


if __name__ == "__main__":
  main(sys.argv[1:])
