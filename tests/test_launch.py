"""polylm_jax.launch: local multi-process jobs, their output, signals and failures.

The multi-process tests run tests/launch_child.py (a tiny jax.distributed program) as 2
processes x 2 host CPU devices on localhost; each takes a few seconds.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from polylm_jax import launch

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHILD = "tests.launch_child"


@pytest.fixture
def in_root(monkeypatch):
  monkeypatch.chdir(ROOT)


def run(args, processes=2, devices=2, **kw):
  """launch() in this process; returns (status, stdout, stderr, seconds)."""
  out, err = io.StringIO(), io.StringIO()
  start = time.monotonic()
  status = launch.launch(args, processes, devices, module=CHILD, stdout=out, stderr=err, **kw)
  return status, out.getvalue(), err.getvalue(), time.monotonic() - start


def reports(stdout: str) -> dict[int, dict]:
  """Each child's JSON line, by the index in its `[i] ` prefix."""
  found = {}
  for m in re.finditer(r"^\[(\d+)\] (\{.*\})$", stdout, re.M):
    found[int(m.group(1))] = json.loads(m.group(2))
  return found


def pids(stdout: str) -> dict[int, int]:
  """Each child's pid, printed before anything can fail."""
  return {int(i): int(pid) for i, pid in re.findall(r"^\[(\d+)\] started (\d+)$", stdout, re.M)}


def gone(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  return False


# -- pieces ----------------------------------------------------------------------------------


def test_launch_cpu_env_replaces_the_device_count_and_keeps_other_xla_flags():
  base = {"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8", "HOME": "/h"}
  env = launch.child_env(base, 1, 2, 3, 4567, gpus=[])
  assert env["XLA_FLAGS"] == (
    "--xla_foo=1 --xla_cpu_collective_timeout_seconds=600 --xla_force_host_platform_device_count=3"
  )
  assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:4567"
  assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("2", "1")
  assert env["JAX_LOCAL_DEVICE_IDS"] == "0,1,2"
  assert env["HOME"] == "/h" and "CUDA_VISIBLE_DEVICES" not in env
  assert base["XLA_FLAGS"].endswith("=8")  # the parent's environment is left alone


def test_launch_gpu_env_gives_each_process_its_slice():
  gpus = ["0", "1", "2", "3", "4", "5"]
  envs = [launch.child_env({}, i, 3, 2, 1, gpus) for i in range(3)]
  assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0,1", "2,3", "4,5"]
  assert all(e["JAX_LOCAL_DEVICE_IDS"] == "0,1" for e in envs)
  assert all("xla_force_host_platform" not in e.get("XLA_FLAGS", "") for e in envs)


def test_launch_platform_detection(monkeypatch):
  assert launch.visible_gpus({"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "0,1"}) == []
  assert launch.visible_gpus({"JAX_PLATFORMS": "cuda", "CUDA_VISIBLE_DEVICES": "4, 5"}) == [
    "4",
    "5",
  ]
  assert launch.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
  monkeypatch.setattr(launch.shutil, "which", lambda name: None)
  assert launch.visible_gpus({}) == []  # no nvidia-smi: a CPU run
  with pytest.raises(ValueError, match="JAX_PLATFORMS=tpu: .*every worker"):
    launch.visible_gpus({"JAX_PLATFORMS": "tpu"})


def test_launch_exit_status_as_a_shell_reports_it():
  assert [launch.exit_status(rc) for rc in (0, 3, -9, -15)] == [0, 3, 137, 143]


def test_launch_free_port_can_be_bound():
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", launch.free_port()))


@pytest.mark.parametrize(
  "kw,message",
  [
    (dict(processes=0), "--processes must be >= 1, got 0"),
    (dict(devices=0), "--devices_per_process must be >= 1, got 0"),
    (dict(module="polylm_jax/train.py"), "--module: 'polylm_jax/train.py' is not a module"),
    (dict(module="polylm_jax.trian"), "--module: no module named 'polylm_jax.trian'"),
    (dict(module="polylm_jax.train.x"), "--module: 'polylm_jax.train' is not a package"),
    (dict(port=70000), "--port must be in 1..65535"),
    (dict(env={"JAX_PLATFORMS": "cuda", "CUDA_VISIBLE_DEVICES": "0"}), "needs 4 GPUs, 1"),
  ],
)
def test_launch_bad_flags_are_one_line_errors(in_root, kw, message):
  kw = {"processes": 2, "devices": 2, "module": "polylm_jax.train", **kw}
  with pytest.raises(ValueError, match=re.escape(message)):
    launch.launch([], kw.pop("processes"), kw.pop("devices"), **kw)


def test_launch_binary_reports_a_bad_flag_in_one_line(in_root):
  p = subprocess.run(
    [sys.executable, "-m", "polylm_jax.launch", "--processes=0", "--", "--x"],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert p.returncode == 1
  assert p.stderr.strip().splitlines()[-1] == "launch: --processes must be >= 1, got 0"


# -- real jobs -------------------------------------------------------------------------------


def test_launch_two_processes_of_two_devices_are_one_job(in_root):
  status, out, err, _ = run([])
  assert status == 0, out + err
  seen = reports(out)
  assert sorted(seen) == [0, 1]
  for i, r in seen.items():
    assert r["process_index"] == i
    assert (r["process_count"], r["local_devices"], r["global_devices"]) == (2, 2, 4)
    assert r["gathered"] == [0, 10]  # a real collective across both
  # Every line carries its process's prefix, on the stream the child wrote it to.
  assert "[0] stderr line from 0\n" in err and "[1] stderr line from 1\n" in err
  assert "stderr line" not in out
  assert all(re.match(r"\[[01]\] ", line) for line in out.splitlines())
  assert {i: r["pid"] for i, r in seen.items()} == pids(out)


@pytest.mark.parametrize("how,expected", [("--exit=3", 3), ("--kill", 137)])
def test_launch_one_failing_process_stops_the_job_at_once(in_root, how, expected):
  # Process 1 fails; process 0 waits for it in a collective (it would wait for minutes).
  status, out, err, _ = run([how, "--on=1", "--hang"], grace_seconds=3.0)
  log = out + err
  failed_at = float(re.search(r"^\[1\] failing at (\S+)$", out, re.M).group(1))
  assert status == expected, log
  assert time.time() - failed_at < 10, log
  started = pids(out)
  what = "exited with status 3" if how == "--exit=3" else "was killed by SIGKILL"
  # Named, though process 0 fails too (its collective breaks) a few milliseconds later.
  assert [x for x in err.splitlines() if x.startswith("launch:")] == [
    f"launch: process 1 (pid {started[1]}) {what}; stopping the other processes"
  ], log
  assert "collective returned" not in out
  assert sorted(started) == [0, 1] and all(gone(pid) for pid in started.values()), log


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_launch_passes_signals_on_to_every_process(in_root, signum, status):
  name = signal.Signals(signum).name
  p = subprocess.Popen(
    [sys.executable, "-m", "polylm_jax.launch", "--processes=2", "--devices_per_process=1"]
    + [f"--module={CHILD}", "--", "--trap", "--sleep"],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  lines = []
  try:
    while len(reports("".join(lines))) < 2:  # both started and past their collective
      line = p.stdout.readline()
      assert line, "launcher ended early: " + "".join(lines) + p.stderr.read()
      lines.append(line)
    p.send_signal(signum)
    out, err = p.communicate(timeout=30)
  finally:
    p.kill()
  out = "".join(lines) + out
  assert f"[0] got {name}" in out and f"[1] got {name}" in out, out + err
  assert f"launch: {name}: passed on to every process" in err.splitlines()
  assert p.returncode == status
  assert sorted(pids(out)) == [0, 1] and all(gone(pid) for pid in pids(out).values())


def test_gloo_connection_lines_are_dropped():
  out = io.StringIO()
  console = launch._Console(out, io.StringIO())
  src = io.BytesIO(
    b"[Gloo] Rank 0 is connected to 1 peer ranks. Expected : 1\nstep 1\n"
    # two devices' threads of one process, interleaved
    b"[Gloo] Rank [Gloo] Rank 2 is connected to 3 peer ranks. Expected number of connected"
    b" peer ranks is : 3\n3 is connected to 3 peer ranks. Expected number of connected peer"
    b" ranks is : \n3\nstep 2\n1\n"
  )
  launch._pipe_lines(src, out, "[0] ", console)
  assert out.getvalue() == "[0] step 1\n[0] step 2\n[0] 1\n"  # a program's own "1" stays
