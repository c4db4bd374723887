"""polylm_jax.distributed: when jax.distributed starts, and the host exchanges."""

import io
import json
import os
import pathlib
import re
import sys

import jax
import pytest

from polylm_jax import distributed

CLUSTER_VARS = (
  "JAX_COORDINATOR_ADDRESS",
  "JAX_NUM_PROCESSES",
  "JAX_PROCESS_ID",
  "SLURM_NTASKS",
  "OMPI_COMM_WORLD_SIZE",
  "TPU_WORKER_HOSTNAMES",
)


@pytest.fixture
def calls(monkeypatch):
  for v in CLUSTER_VARS:
    monkeypatch.delenv(v, raising=False)
  monkeypatch.delenv(distributed.HEARTBEAT_VAR, raising=False)
  monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # maybe_initialize wraps it
  seen = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: seen.append(kw))
  return seen


def test_distributed_single_host_is_left_alone(calls):
  assert distributed.maybe_initialize("auto") is False
  assert distributed.maybe_initialize("off") is False
  assert calls == []


def test_distributed_from_the_coordinator_environment(calls, monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "2")
  assert distributed.maybe_initialize("auto") is True
  assert calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2)]


@pytest.mark.parametrize(
  "var,value",
  [("SLURM_NTASKS", "8"), ("OMPI_COMM_WORLD_SIZE", "2"), ("TPU_WORKER_HOSTNAMES", "h0,h1")],
)
def test_distributed_cluster_detection_is_left_to_jax(calls, monkeypatch, var, value):
  monkeypatch.setenv(var, value)
  assert distributed.maybe_initialize("auto") is True
  assert calls == [{}]


def test_distributed_bad_mode(calls):
  with pytest.raises(ValueError, match="auto, on or off"):
    distributed.maybe_initialize("yes")


def test_exchanges_with_one_process_need_no_collective():
  assert distributed.allgather_json({"a": [1, "é"]}) == [{"a": [1, "é"]}]
  assert distributed.max_over_processes(7) == 7
  assert distributed.any_process(False) is False
  assert distributed.any_process(True) is True


def test_distributed_heartbeat_from_the_environment(calls, monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv(distributed.HEARTBEAT_VAR, "20")
  assert distributed.maybe_initialize("auto") is True
  assert calls == [dict(coordinator_address="10.0.0.1:1234", heartbeat_timeout_seconds=20)]


@pytest.mark.parametrize("value", ["0", "ten", "-5"])
def test_distributed_bad_heartbeat_names_the_variable(calls, monkeypatch, value):
  monkeypatch.setenv("SLURM_NTASKS", "2")
  monkeypatch.setenv(distributed.HEARTBEAT_VAR, value)
  with pytest.raises(ValueError, match=f"POLYLM_JAX_HEARTBEAT_SECONDS must be .* got '{value}'"):
    distributed.maybe_initialize("auto")
  assert calls == []


def test_fail_fast_in_a_single_process_exits_as_usual():
  with pytest.raises(SystemExit, match="error: bad"):
    with distributed.fail_fast():
      sys.exit("error: bad")
  with pytest.raises(KeyError):
    with distributed.fail_fast():
      raise KeyError("x")


@pytest.mark.parametrize(
  "error,paused",
  [
    (jax.errors.JaxRuntimeError("Gloo AllGather failed: closed by peer"), True),
    (KeyError("x"), False),
  ],
)
def test_fail_fast_pauses_only_after_a_runtime_error(monkeypatch, error, paused):
  """A collective broken by a peer that is gone leaves a moment later, so the launcher sees
  (and names) the peer that failed first; the peer's own error leaves at once."""
  events = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  monkeypatch.setattr(distributed.time, "sleep", lambda s: events.append(("sleep", s)))
  monkeypatch.setattr(distributed, "_leave", lambda code: events.append(("leave", code)))
  with pytest.raises(type(error)):
    with distributed.fail_fast():
      raise error
  pause = [("sleep", distributed.RUNTIME_ERROR_PAUSE_SECONDS)] if paused else []
  assert events == [*pause, ("leave", 1)]


def test_exchanges_across_two_real_processes(monkeypatch):
  """allgather_json, max_over_processes and any_process in a real 2-process job
  (tests/launch_child.py through the launcher)."""
  from polylm_jax import launch

  monkeypatch.chdir(pathlib.Path(__file__).resolve().parents[1])
  out, err = io.StringIO(), io.StringIO()
  status = launch.launch(["--exchange"], 2, 1, module="tests.launch_child", stdout=out, stderr=err)
  assert status == 0, out.getvalue() + err.getvalue()
  found = dict(re.findall(r"^\[(\d)\] exchange (.*)$", out.getvalue(), re.M))
  assert sorted(found) == ["0", "1"]
  expected = {
    "json": [{"i": 0, "s": "é"}, {"i": 1, "s": "éé"}],
    "max": 6,
    "any_mine": True,
    "any_none": False,
  }
  assert all(json.loads(v) == expected for v in found.values())


def test_a_failing_process_and_its_peer_leave_at_once_without_a_launcher():
  """Process 1 exits 3 inside fail_fast while process 0 waits for it in a collective: both
  are gone in seconds (JAX alone would keep process 1 at its shutdown barrier for 300 s)."""
  import socket
  import subprocess
  import time

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  root = pathlib.Path(__file__).resolve().parents[1]
  procs = []
  for i in range(2):
    env = dict(
      os.environ,
      JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
      JAX_NUM_PROCESSES="2",
      JAX_PROCESS_ID=str(i),
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
    )
    cmd = [sys.executable, "-m", "tests.launch_child", "--exit=3", "--on=1", "--hang"]
    procs.append(
      subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
      )
    )
  try:
    logs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  failed_at = float(re.search(r"failing at (\S+)", logs[1]).group(1))
  assert [p.returncode for p in procs] == [1, 3], logs[0]
  assert time.time() - failed_at < 10
