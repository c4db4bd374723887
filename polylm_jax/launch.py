r"""Local multi-process runs: N copies of a binary on this machine, as one JAX job.

    python -m polylm_jax.launch --processes=2 --devices_per_process=2 -- \
        --gin_file=gin/demo.gin --gin.MODEL_DIR=\"runs/mp\"

Everything after `--` goes to the binary (`--module`, default polylm_jax.train) unchanged.
Each child gets JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT (a free port unless --port),
JAX_NUM_PROCESSES, JAX_PROCESS_ID and JAX_LOCAL_DEVICE_IDS (so JAX's cluster detection, e.g.
a Slurm allocation around the launcher, cannot override them) and its devices: on CPU
`--xla_force_host_platform_device_count` (replacing any count in the parent's XLA_FLAGS), on
GPU a CUDA_VISIBLE_DEVICES slice. Every output line of child i is printed as `[i] line`, on
the stream it was written to. SIGINT and SIGTERM are passed on to every child (each runs in
its own process group, so a terminal's Ctrl-C reaches a child once, through here, and the
trainer's save-then-stop is not turned into a second Ctrl-C). When a child fails, one line
names it and the others are stopped at once (SIGTERM, then SIGKILL after --grace_seconds),
instead of waiting in a collective for a peer that is gone. The exit status is the first
failing child's (128 + signal number when a signal killed it), else 0.

Clusters (Slurm, Cloud TPU slices, multi-node GPU) need no launcher: the binaries start
jax.distributed from the environment (polylm_jax.distributed); see docs/multihost.md.
absl flags, as in the other binaries: absl stops at `--` and hands the rest over untouched.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Mapping, Sequence

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S*")
POLL_SECONDS = 0.05
CPU_COLLECTIVE_TIMEOUT_SECONDS = 600
# Gloo (CPU collectives) prints a line per device each time it connects a group, on stdout,
# from one thread per device: the lines of one process interleave, into fragments such as
# "[Gloo] Rank [Gloo] Rank 2 is connected ..." and a lone "3 is connected to 3 peer ranks...",
# and the count that ends a line may land alone on the next one.
_NOISE = re.compile(rb"\[Gloo\] Rank |\d+ is connected to \d+ peer ranks")


def check_module(module: str, env: Mapping[str, str]) -> None:
  """One-line ValueError unless `module` names a module `python -m` finds from here (the
  working directory, $PYTHONPATH, then this interpreter's path, as a child sees them); looks
  it up without importing it or its packages (polylm_jax would pull in JAX)."""
  if not _MODULE_NAME.fullmatch(module):
    raise ValueError(f"--module: {module!r} is not a module name (e.g. polylm_jax.train)")
  extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
  path: list[str] | None = [os.getcwd(), *extra, *sys.path]
  parts = module.split(".")
  for depth, part in enumerate(parts):
    spec = importlib.machinery.PathFinder.find_spec(part, path)
    if spec is None:
      raise ValueError(f"--module: no module named {'.'.join(parts[: depth + 1])!r}")
    path = spec.submodule_search_locations
    if path is None and depth < len(parts) - 1:
      raise ValueError(f"--module: {'.'.join(parts[: depth + 1])!r} is not a package")


def visible_gpus(env: Mapping[str, str]) -> list[str]:
  """The GPU ids the children may share out: [] for a CPU run (JAX_PLATFORMS=cpu, or no GPU
  listed by CUDA_VISIBLE_DEVICES / nvidia-smi)."""
  platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").lower().split(",") if p.strip()]
  if platforms and platforms[0] == "cpu":
    return []
  if platforms and platforms[0] not in ("cuda", "gpu"):
    raise ValueError(
      f"JAX_PLATFORMS={env['JAX_PLATFORMS']}: the launcher runs processes on CPU or GPU; on a "
      "TPU slice run the binary on every worker (docs/multihost.md)"
    )
  if env.get("CUDA_VISIBLE_DEVICES") is not None:
    return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
  if shutil.which("nvidia-smi") is None:
    return []
  try:
    listing = subprocess.run(
      ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
      capture_output=True,
      text=True,
      timeout=30,
      check=True,
    ).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [line.strip() for line in listing.splitlines() if line.strip()]


def free_port() -> int:
  """A localhost port nobody listens on now (the coordinator binds it moments later)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(
  base: Mapping[str, str], index: int, processes: int, devices: int, port: int, gpus: list[str]
) -> dict[str, str]:
  """Process `index`'s environment: the parent's, plus the JAX job and its devices."""
  env = dict(base)
  env.update(
    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
    JAX_NUM_PROCESSES=str(processes),
    JAX_PROCESS_ID=str(index),
    JAX_LOCAL_DEVICE_IDS=",".join(str(d) for d in range(devices)),
    PYTHONUNBUFFERED="1",  # lines reach the prefixer as they are printed, and survive a kill
  )
  if gpus:
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[index * devices : (index + 1) * devices])
  else:
    flags = _DEVICE_COUNT_FLAG.sub("", base.get("XLA_FLAGS", "")).split()
    if not any(f.startswith("--xla_cpu_collective_timeout_seconds") for f in flags):
      # Gloo gives up on a collective after 30 s: a peer that is only slow (a busy machine,
      # process 0 writing a report) is not a dead one, and this launcher stops the job when
      # a process really dies.
      flags.append(f"--xla_cpu_collective_timeout_seconds={CPU_COLLECTIVE_TIMEOUT_SECONDS}")
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
  return env


@dataclasses.dataclass
class _Console:
  """The launcher's stdout and stderr; one lock, so lines never mix inside a line."""

  out: IO[str]
  err: IO[str]
  lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

  def write(self, dst: IO[str], line: str) -> None:
    with self.lock:
      dst.write(line if line.endswith("\n") else line + "\n")
      dst.flush()

  def say(self, message: str) -> None:
    self.write(self.err, f"launch: {message}")


def _pipe_lines(src: IO[bytes], dst: IO[str], prefix: str, console: _Console) -> None:
  """Copies a child's `src` to `dst` line by line, each line whole and prefixed."""
  after_noise = False
  for raw in iter(src.readline, b""):
    noise = bool(_NOISE.search(raw)) or (after_noise and raw.strip().isdigit())
    after_noise = noise
    if not noise:
      console.write(dst, prefix + raw.decode("utf-8", errors="replace"))
  src.close()


@dataclasses.dataclass
class _Child:
  index: int
  proc: subprocess.Popen
  threads: list[threading.Thread]

  def signal(self, signum: int) -> None:
    """`signum` to the child's process group (its own helpers too), if it still runs."""
    if self.proc.poll() is None:
      try:
        os.killpg(self.proc.pid, signum)
      except (ProcessLookupError, PermissionError):
        pass


def exit_status(returncode: int) -> int:
  """A Popen returncode as a shell reports it: -9 (killed by SIGKILL) -> 137."""
  return 128 - returncode if returncode < 0 else returncode


def describe(child: _Child) -> str:
  rc = child.proc.returncode
  how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
  return f"process {child.index} (pid {child.proc.pid}) {how}"


def _start(
  args: Sequence[str], module: str, envs: list[dict[str, str]], console: _Console
) -> list[_Child]:
  children = []
  for i, env in enumerate(envs):
    proc = subprocess.Popen(
      [sys.executable, "-m", module, *args],
      env=env,
      stdin=subprocess.DEVNULL,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      start_new_session=True,  # no preexec_fn: forking a threaded (JAX) parent can deadlock
    )
    children.append(_Child(i, proc, []))
  for c in children:
    for src, dst in ((c.proc.stdout, console.out), (c.proc.stderr, console.err)):
      t = threading.Thread(target=_pipe_lines, args=(src, dst, f"[{c.index}] ", console))
      t.daemon = True
      t.start()
      c.threads.append(t)
  return children


def _stop(children: list[_Child], grace_seconds: float) -> None:
  """SIGTERM to every child still running, then SIGKILL to those alive after the grace."""
  for c in children:
    c.signal(signal.SIGTERM)
  deadline = time.monotonic() + grace_seconds
  while time.monotonic() < deadline and any(c.proc.poll() is None for c in children):
    time.sleep(POLL_SECONDS)
  for c in children:
    c.signal(signal.SIGKILL)
  for c in children:
    c.proc.wait()


def _wait_in_order(children: list[_Child]) -> queue.Queue:
  """A queue that receives each child as it exits, in the order they exit: a thread per
  child waits for it, so the process that failed first is told from the peers it took down
  a few milliseconds later (one poll of all would see both)."""
  done: queue.Queue = queue.Queue()

  def wait(c: _Child) -> None:
    c.proc.wait()
    done.put(c)

  for c in children:
    threading.Thread(target=wait, args=(c,), daemon=True).start()
  return done


def _supervise(children: list[_Child], grace_seconds: float, console: _Console) -> int:
  """Waits for every child; stops the rest when one fails; returns the exit status."""
  forwarded: list[int] = []  # signals passed on; the loop reports them (no lock in a handler)
  told = 0

  def forward(signum, frame):  # noqa: ARG001
    forwarded.append(signum)
    for c in children:
      c.signal(signum)

  previous = {}
  if threading.current_thread() is threading.main_thread():
    for signum in (signal.SIGINT, signal.SIGTERM):
      previous[signum] = signal.signal(signum, forward)
  done, ended, first = _wait_in_order(children), [], None
  try:
    while len(ended) < len(children):
      for signum in forwarded[told:]:
        console.say(f"{signal.Signals(signum).name}: passed on to every process")
        told += 1
      try:
        ended.append(done.get(timeout=POLL_SECONDS))
      except queue.Empty:
        continue
      if first is None and ended[-1].proc.returncode != 0:
        first = ended[-1]
      running = [c for c in children if c not in ended]
      if first is not None and (not forwarded or not running):
        tail = "; stopping the other processes" if running else ""
        console.say(f"{describe(first)}{tail}")
        _stop(running, grace_seconds)
        return exit_status(first.proc.returncode)
    return 0
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    _stop(children, 0.0)  # nothing outlives the launcher, even on an exception here


def launch(
  args: Sequence[str],
  processes: int,
  devices_per_process: int,
  module: str = "polylm_jax.train",
  port: int | None = None,
  grace_seconds: float = 5.0,
  env: Mapping[str, str] | None = None,
  stdout: IO[str] | None = None,
  stderr: IO[str] | None = None,
) -> int:
  """Runs `python -m module *args` as `processes` processes of one JAX job; returns the exit
  status (0 when all succeed, else the first failing child's)."""
  if processes < 1:
    raise ValueError(f"--processes must be >= 1, got {processes}")
  if devices_per_process < 1:
    raise ValueError(f"--devices_per_process must be >= 1, got {devices_per_process}")
  if port is not None and not 0 < port < 65536:
    raise ValueError(f"--port must be in 1..65535, got {port}")
  if grace_seconds < 0:
    raise ValueError(f"--grace_seconds must be >= 0, got {grace_seconds}")
  base = dict(os.environ if env is None else env)
  check_module(module, base)
  gpus = visible_gpus(base)
  if gpus and len(gpus) < processes * devices_per_process:
    raise ValueError(
      f"--processes={processes} x --devices_per_process={devices_per_process} needs "
      f"{processes * devices_per_process} GPUs, {len(gpus)} visible ({','.join(gpus)})"
    )
  port = port or free_port()
  envs = [child_env(base, i, processes, devices_per_process, port, gpus) for i in range(processes)]
  console = _Console(stdout or sys.stdout, stderr or sys.stderr)
  children = _start(args, module, envs, console)
  try:
    return _supervise(children, grace_seconds, console)
  finally:
    for c in children:
      for t in c.threads:
        t.join(timeout=2.0)  # a grandchild holding the pipe must not hold the launcher


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  f = flags.FLAGS
  try:
    status = launch(
      argv[1:],
      f.processes,
      f.devices_per_process,
      module=f.module,
      port=f.port,
      grace_seconds=f.grace_seconds,
    )
  except ValueError as e:
    sys.exit(f"launch: {e}")
  sys.exit(status)


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_integer("processes", 2, "How many processes (one JAX job).")
  flags.DEFINE_integer("devices_per_process", 1, "Devices each process sees (CPU or GPU).")
  flags.DEFINE_string("module", "polylm_jax.train", "The binary each process runs (-m).")
  flags.DEFINE_integer("port", None, "Coordinator port on 127.0.0.1 (default: a free one).")
  flags.DEFINE_float("grace_seconds", 5.0, "After a failure: SIGTERM, then SIGKILL after this.")


if __name__ == "__main__":
  from absl import app

  _define_flags()
  app.run(main)
