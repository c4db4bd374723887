"""The trainer on several processes (`python -m polylm_jax.launch`), localhost, CPU.

One process with 4 devices and two processes with 2 devices each train on the same global
batches (DataSpec.data_shards = 4): same losses, eval and final parameters within fp32
reduction tolerance. Runs are killed (both processes, or one in the middle of a checkpoint
commit) and restarted, and resumed on another process count. Each run is a tiny model for
12 steps; the compilation cache is shared by all runs of the module.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from polylm_jax import checkpoints
from polylm_jax.training import metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS, SAVE_EVERY = 12, 4
GIN = f"""
include 'models/polylm_tiny.gin'
include 'runs/pretrain.gin'
import train_fixtures

MIXTURE_OR_TASK_NAME = 'trainer_test_curriculum'
TASK_FEATURE_LENGTHS = {{'targets': 32}}
TRAIN_STEPS = {STEPS}
BATCH_SIZE = 8
COMPUTE_DTYPE = 'float32'
OptimizerSpec.peak_learning_rate = 3e-3
OptimizerSpec.min_learning_rate = 3e-4
OptimizerSpec.warmup_steps = 4
OptimizerSpec.decay_steps = 8
CheckpointPolicy.save_every = {SAVE_EVERY}
CheckpointPolicy.keep = 20
EvalSpec.period = 6
EvalSpec.steps = None
ReportSpec.log_period = 1
DataSpec.data_shards = 4
DataSpec.read_workers = 2
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  d = tmp_path_factory.mktemp("multiprocess")
  (d / "mp.gin").write_text(GIN)
  env = dict(os.environ)
  env.update(
    PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]),
    JAX_PLATFORMS="cpu",
    JAX_COMPILATION_CACHE_DIR=str(d / "jax_cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  env.pop("XLA_FLAGS", None)  # the launcher gives each process its devices
  return d, env


def _start(setup, processes, devices, model_dir, env_extra=None):
  d, env = setup
  command = [
    sys.executable, "-m", "polylm_jax.launch", f"--processes={processes}",
    f"--devices_per_process={devices}", "--", f"--gin_search_paths={d}", "--gin_file=mp.gin",
    f'--gin.MODEL_DIR="{model_dir}"',
  ]  # fmt: skip
  return subprocess.Popen(
    command,
    cwd=REPO,
    env={**env, **(env_extra or {})},
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def _run(setup, processes, devices, model_dir):
  code, out = _finish(_start(setup, processes, devices, model_dir))
  assert code == 0, out
  return out


def _children(proc) -> dict[int, int]:
  """The launcher's children: JAX process id -> pid."""
  found = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
  out = {}
  for pid in map(int, found.stdout.split()):
    environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    ids = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"JAX_PROCESS_ID=")]
    out[int(ids[0])] = pid
  return out


def _wait_for(predicate, proc, what, timeout=420.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f"run ended ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
    time.sleep(0.01)
  for pid in _children(proc).values():
    os.kill(pid, signal.SIGKILL)
  proc.kill()
  raise AssertionError(f"timed out waiting for {what}:\n{proc.communicate()[0]}")


def _writing(ckpt_dir, step) -> bool:
  """Whether Orbax is writing `step` (its temporary directory exists)."""
  return ckpt_dir.exists() and any(
    p.name.startswith(f"{step}.orbax-checkpoint-tmp") for p in ckpt_dir.iterdir()
  )


def _losses(model_dir, kind="train", key="loss") -> dict[int, float]:
  return {s: r[key] for s, r in metrics.read_jsonl(str(model_dir), kind).items()}


def _params(model_dir):
  return jax.tree.leaves(checkpoints.load(str(model_dir))[1])


def _assert_params_close(a_dir, b_dir, atol):
  for a, b in zip(_params(a_dir), _params(b_dir)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)


def _side_by_side(name_a, a, name_b, b) -> str:
  lines = [f"step  {name_a:>12}  {name_b:>12}  diff"]
  for s in sorted(set(a) | set(b)):
    x, y = a.get(s, float("nan")), b.get(s, float("nan"))
    lines.append(f"{s:4d}  {x:12.7f}  {y:12.7f}  {abs(x - y):.1e}")
  return "\n".join(lines)


@pytest.fixture(scope="module")
def one_by_four(setup):
  model_dir = setup[0] / "1x4"
  _run(setup, 1, 4, model_dir)
  return model_dir


@pytest.fixture(scope="module")
def two_by_two(setup):
  model_dir = setup[0] / "2x2"
  out = _run(setup, 2, 2, model_dir)
  return model_dir, out


def test_two_processes_train_like_one(one_by_four, two_by_two):
  """Same global batches on 1 x 4 and 2 x 2 devices: losses, eval over all held-out data
  (uneven shards padded) and final params agree within fp32 reduction tolerance."""
  a, b = _losses(one_by_four), _losses(two_by_two[0])
  print(_side_by_side("1 x 4", a, "2 x 2", b))  # the per-step losses, side by side
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
  for s in a:
    assert abs(a[s] - b[s]) < 1e-5, _side_by_side("1 x 4", a, "2 x 2", b)
  ea, eb = _losses(one_by_four, "eval"), _losses(two_by_two[0], "eval")
  assert sorted(ea) == sorted(eb) == [6, 12]
  for s in ea:
    assert abs(ea[s] - eb[s]) < 1e-5, (ea, eb)
  _assert_params_close(one_by_four, two_by_two[0], 1e-5)
  out = two_by_two[1]
  assert "[0] step 12: checkpoint" in out and "[1] step" not in out  # process 0 reports
  assert "[Gloo]" not in out


def _keep_only(src, dst, step):
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.tfevents*"))
  for p in (dst / "checkpoints").iterdir():
    if p.name != str(step):
      shutil.rmtree(p)


@pytest.mark.parametrize("direction", ["2 processes -> 1", "1 process -> 2"])
def test_elastic_resume_continues_the_same_data(setup, one_by_four, two_by_two, direction):
  """A checkpoint written by 2 processes resumes on 1 (and the reverse) with the batches
  the uninterrupted run had from the restored step on."""
  src, (n, d) = (two_by_two[0], (1, 4)) if direction.startswith("2") else (one_by_four, (2, 2))
  model_dir = setup[0] / f"elastic_{n}"
  _keep_only(src, model_dir, SAVE_EVERY)
  out = _run(setup, n, d, model_dir)
  assert f"restored step {SAVE_EVERY} from" in out, out
  want, got = _losses(src), _losses(model_dir)
  for s in range(SAVE_EVERY + 1, STEPS + 1):
    assert abs(got[s] - want[s]) < 1e-5, _side_by_side("before", want, "resumed", got)
  _assert_params_close(src, model_dir, 1e-5)


def test_a_process_count_that_does_not_divide_the_data_shards_fails_naming_both(
  setup, two_by_two, tmp_path
):
  model_dir = tmp_path / "run"
  _keep_only(two_by_two[0], model_dir, SAVE_EVERY)
  d, env = setup
  (d / "mp3.gin").write_text(GIN.replace("DataSpec.data_shards = 4", ""))
  proc = subprocess.Popen(
    [
      sys.executable, "-m", "polylm_jax.launch", "--processes=3", "--devices_per_process=1",
      "--", f"--gin_search_paths={d}", "--gin_file=mp3.gin", f'--gin.MODEL_DIR="{model_dir}"',
      "--gin.BATCH_SIZE=12",
    ],
    cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
  )  # fmt: skip
  code, out = _finish(proc)
  assert code != 0
  assert "3 processes but its data has 4 data shards" in out, out
  assert not list((model_dir / "checkpoints").glob("*tmp*"))


def test_sigkill_of_both_processes_then_restart_resumes_exactly(setup, two_by_two):
  model_dir = setup[0] / "killed"
  ckpt_dir = model_dir / "checkpoints"
  hold = setup[0] / "hold_killed"
  hold.touch()  # step 8's commit waits, so the kill lands after checkpoint 4, before 8
  proc = _start(setup, 2, 2, model_dir, {"POLYLM_JAX_TEST_HOLD_COMMIT": f"{hold}@8"})
  _wait_for(lambda: _writing(ckpt_dir, 8), proc, "step 8 being written")
  assert checkpoints.complete_steps(ckpt_dir) == [SAVE_EVERY]
  children = _children(proc)
  assert sorted(children) == [0, 1]
  for pid in children.values():
    os.kill(pid, signal.SIGKILL)
  code, out = _finish(proc, timeout=30)
  assert code != 0 and "SIGKILL" in out, out
  hold.unlink()
  out = _run(setup, 2, 2, model_dir)
  assert f"restored step {SAVE_EVERY} from" in out, out
  assert _losses(model_dir) == _losses(two_by_two[0])
  _assert_params_close(two_by_two[0], model_dir, 0)


def test_one_process_killed_during_a_commit_stops_the_other_and_is_never_restored(
  setup, two_by_two
):
  """SIGKILL of process 1 while step 8 is being committed: the launcher names it and stops
  process 0 within seconds (no collective timeout); step 8 never becomes a checkpoint, and the
  restart resumes from step 4 to the uninterrupted run's end."""
  model_dir = setup[0] / "half"
  ckpt_dir = model_dir / "checkpoints"
  hold = setup[0] / "hold_half"
  hold.touch()
  proc = _start(setup, 2, 2, model_dir, {"POLYLM_JAX_TEST_HOLD_COMMIT": f"{hold}@8"})
  _wait_for(lambda: _writing(ckpt_dir, 8), proc, "step 8 being written")
  child = _children(proc)[1]
  t0 = time.monotonic()
  os.kill(child, signal.SIGKILL)
  code, out = _finish(proc, timeout=60)
  elapsed = time.monotonic() - t0
  assert code != 0
  assert elapsed < 10, f"the launcher took {elapsed:.1f}s to stop process 0:\n{out}"
  assert re.search(r"process 1 \(pid \d+\).*SIGKILL", out), out
  hold.unlink()
  assert checkpoints.complete_steps(ckpt_dir) == [SAVE_EVERY] and _writing(ckpt_dir, 8)
  out = _run(setup, 2, 2, model_dir)
  assert f"restored step {SAVE_EVERY} from" in out, out
  assert 8 in checkpoints.complete_steps(ckpt_dir)
  assert not [p for p in ckpt_dir.iterdir() if "tmp" in p.name]
  assert _losses(model_dir) == _losses(two_by_two[0])
  _assert_params_close(two_by_two[0], model_dir, 0)


def test_the_readme_command_runs_the_demo_on_two_processes(setup, tmp_path):
  """README's multi-process command (a short demo: the sample corpus, eval, checkpoint and
  the greedy samples, which process 0 makes alone with the params gathered)."""
  d, env = setup
  env = {**env, "PYTHONPATH": str(REPO)}
  command = [
    sys.executable, "-m", "polylm_jax.launch", "--processes=2", "--devices_per_process=2",
    "--", "--gin_file=gin/demo.gin", f'--gin.MODEL_DIR="{tmp_path / "demo"}"',
    "--gin.DataSpec.data_shards=4", "--gin.TRAIN_STEPS=2", "--gin.EvalSpec.period=2",
    "--gin.ReportSpec.sample_max_new_tokens=2",
  ]  # fmt: skip
  proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "[0] greedy continuations:" in proc.stdout
  assert "[1] " not in proc.stdout  # process 1 prints nothing
