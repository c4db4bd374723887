"""polylm_jax.distributed: when jax.distributed starts, and the host exchanges."""

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
