"""How long the rest of a 2-process CPU job lives after one process fails.

  .venv/bin/python benchmarks/multihost_failure.py [--cases all] [--heartbeat 10]

Runs tests/launch_child.py (jax.distributed through polylm_jax.distributed, one all-gather)
as 2 processes x 1 host CPU device, makes one process fail, and prints the seconds from the
failure (the victim prints the time just before it) until the survivor exits (started by
hand, no launcher) or until `python -m polylm_jax.launch` returns. Cases:
  coll     the victim is SIGKILLed while the survivor waits for it in a collective
  exit     the victim exits with status 3 (inside distributed.fail_fast, as the binaries do)
  exit-nff the same without fail_fast: the victim waits at JAX's shutdown barrier (300 s)
  busy     the victim is SIGKILLed while the survivor computes outside collectives: only the
           coordination service's heartbeat timeout (JAX default 100 s, or --heartbeat via
           $POLYLM_JAX_HEARTBEAT_SECONDS) or the launcher notices
Victim 0 also hosts the coordination service. Figures are timeouts and reaction times, not
throughput; a busy machine moves them by a second or so.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
  "coll": ["--kill", "--hang"],
  "exit": ["--exit=3", "--hang"],
  "exit-nff": ["--exit=3", "--hang", "--no_fail_fast"],
  "busy": ["--kill", "--sleep"],
}


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  return env


def _failed_at(text: str) -> float:
  return float(re.search(r"failing at (\S+)", text).group(1))


def without_launcher(args: list[str], victim: int, heartbeat: int | None, limit: float) -> str:
  port = _port()
  extra = {"POLYLM_JAX_HEARTBEAT_SECONDS": str(heartbeat)} if heartbeat else {}
  procs = [
    subprocess.Popen(
      [sys.executable, "-m", "tests.launch_child", *args, f"--on={victim}"],
      cwd=REPO,
      env=_env(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(i),
        **extra,
      ),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  victim_out = ""
  for line in procs[victim].stdout:
    victim_out += line
    if "failing at" in line:
      break
  survivor = procs[1 - victim]
  try:
    survivor.wait(timeout=limit)
    result = f"exit {survivor.returncode} after {time.time() - _failed_at(victim_out):.1f} s"
  except subprocess.TimeoutExpired:
    result = f"still running after {limit:.0f} s"
  for p in procs:
    p.kill()
    p.wait()
  return result


def with_launcher(args: list[str], victim: int, limit: float) -> str:
  p = subprocess.run(
    [sys.executable, "-m", "polylm_jax.launch", "--processes=2", "--devices_per_process=1"]
    + ["--module=tests.launch_child", "--", *args, f"--on={victim}"],
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=limit + 60,
  )
  return f"exit {p.returncode} after {time.time() - _failed_at(p.stdout):.1f} s"


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--cases", default="all", help=f"comma list of {','.join(CASES)} or all")
  ap.add_argument("--victims", default="1,0", help="which process fails")
  ap.add_argument("--heartbeat", type=int, default=10, help="a short heartbeat to compare")
  ap.add_argument("--limit", type=float, default=400.0, help="seconds to wait at most")
  a = ap.parse_args()
  cases = list(CASES) if a.cases == "all" else a.cases.split(",")
  print(
    f"{'case':<9} {'victim':>6}  {'no launcher':<26} {'heartbeat ' + str(a.heartbeat):<26} launcher"
  )
  for case in cases:
    for victim in (int(v) for v in a.victims.split(",")):
      args = CASES[case]
      bare = without_launcher(args, victim, None, a.limit)
      short = without_launcher(args, victim, a.heartbeat, a.limit)
      launched = with_launcher(args, victim, a.limit) if case != "exit-nff" else "-"
      print(f"{case:<9} {victim:>6}  {bare:<26} {short:<26} {launched}", flush=True)


if __name__ == "__main__":
  main()
