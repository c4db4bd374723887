"""The training binary: end to end, mesh shapes, exact resume after kills, rollback, errors.

The runs use polylm_tiny on the integer tasks of tests/train_fixtures.py. Binary runs are
subprocesses on one CPU device; in-process runs use the 8 host devices of conftest. A JAX
compilation cache shared by all of them keeps compilation to once per program.

Tolerances: on CPU a restarted run repeats the uninterrupted run's losses exactly (same
program, same data, bit-identical restored state). Different mesh shapes change the order of
floating-point reductions (gradient all-reduce, sharded matmuls), so their losses agree with
the 1-device run to a relative 1e-5 (fp32), not bit for bit.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import gin
import jax
import numpy as np
import pytest

import polylm_jax
import train_fixtures
from polylm_jax import checkpoints, config, gin_utils, mixing
from polylm_jax.training import metrics
from polylm_jax.training import trainer
from polylm_jax import train  # noqa: F401  (registers the gin configurables)

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = config.get_config("polylm_tiny")
STEPS, PERIOD, BOUNDARY = 40, 5, 20  # the curriculum's stage 2 starts at 0.5 * STEPS
QUIET = dict(print_fn=lambda *a, **k: None)

GIN = f"""
include 'models/polylm_tiny.gin'
include 'runs/pretrain.gin'
import train_fixtures

MIXTURE_OR_TASK_NAME = '{train_fixtures.CURRICULUM}'
TASK_FEATURE_LENGTHS = {{'targets': 32}}
TRAIN_STEPS = {STEPS}
BATCH_SIZE = 8
COMPUTE_DTYPE = 'float32'
OptimizerSpec.peak_learning_rate = 3e-3
OptimizerSpec.min_learning_rate = 3e-4
OptimizerSpec.warmup_steps = 4
OptimizerSpec.decay_steps = 36
CheckpointPolicy.save_every = {PERIOD}
CheckpointPolicy.keep = 20
EvalSpec.period = 20
EvalSpec.steps = 1
EvalSpec.before_training = True
ReportSpec.log_period = 1
"""

COMMON = dict(
  model_config=TINY,
  mixture_or_task_name=train_fixtures.CURRICULUM,
  task_feature_lengths={"targets": 32},
  batch_size=8,
  peak_learning_rate=3e-3,
  min_learning_rate=3e-4,
  warmup_steps=4,
  decay_steps=36,
  eval_period=0,
)


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  """A persistent compilation cache for this module (and its subprocesses)."""
  path = tmp_path_factory.mktemp("jax_cache")
  names = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
  )
  old = {n: getattr(jax.config, n) for n in names}
  for n, v in zip(names, (str(path), 0, 0)):
    jax.config.update(n, v)
  yield path
  for n, v in old.items():
    jax.config.update(n, v)


@pytest.fixture(scope="module")
def gin_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("gin")
  (d / "trainer_test.gin").write_text(GIN)
  return d


def _command(gin_dir, model_dir):
  return [
    sys.executable,
    "-m",
    "polylm_jax.train",
    f"--gin_search_paths={gin_dir}",
    "--gin_file=trainer_test.gin",
    f'--gin.MODEL_DIR="{model_dir}"',
  ]


def _env(jax_cache):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO)])
  env["XLA_FLAGS"] = ""  # one CPU device
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_COMPILATION_CACHE_DIR"] = str(jax_cache)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return env


def _start(gin_dir, model_dir, jax_cache):
  return subprocess.Popen(
    _command(gin_dir, model_dir),
    cwd=REPO,
    env=_env(jax_cache),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _finish(proc, timeout=240):
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def _steps_logged(model_dir) -> int:
  try:
    return max(metrics.read_jsonl(str(model_dir)), default=0)
  except FileNotFoundError:
    return 0


def _wait_for(predicate, proc, what, timeout=180.0, poll=0.002):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f"run ended ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
    time.sleep(poll)
  proc.kill()
  raise AssertionError(f"timed out waiting for {what}")


def _tmp_checkpoints(model_dir):
  d = pathlib.Path(model_dir) / "checkpoints"
  return [p.name for p in d.iterdir() if "orbax-checkpoint-tmp" in p.name] if d.exists() else []


def _history(model_dir):
  recs = metrics.read_jsonl(str(model_dir))
  return {s: (r["loss"], r["batch_crc"], r["stage"]) for s, r in recs.items()}


@pytest.fixture(scope="module")
def reference(gin_dir, jax_cache, tmp_path_factory):
  """The uninterrupted binary run: (model_dir, stdout)."""
  model_dir = tmp_path_factory.mktemp("reference") / "run"
  code, out = _finish(_start(gin_dir, model_dir, jax_cache))
  assert code == 0, out
  return model_dir, out


def test_binary_end_to_end(reference):
  model_dir, out = reference
  assert re.search(r"step 10/40 \| loss [0-9.]+ \| .*tok/s .*MFU .*lr .*gnorm .*ETA", out)
  assert all(f"eval step {s}: loss" in out for s in (0, 20, 40))
  assert f"checkpoints: {model_dir}/checkpoints" in out
  hist = _history(model_dir)
  assert sorted(hist) == list(range(1, STEPS + 1))
  first, last = (
    np.mean([hist[s][0] for s in (1, 2, 3)]),
    np.mean([hist[s][0] for s in (38, 39, 40)]),
  )
  assert last < first - 0.5, (first, last)
  assert {hist[s][2] for s in range(1, BOUNDARY + 1)} == {0}  # step s eats batch s-1
  assert {hist[s][2] for s in range(BOUNDARY + 1, STEPS + 1)} == {1}
  assert "BATCH_SIZE = 8" in (model_dir / "operative_config.gin").read_text()
  assert list((model_dir / "train").glob("events.out.tfevents.*"))
  assert list((model_dir / "eval").glob("events.out.tfevents.*"))
  evals = metrics.read_jsonl(str(model_dir), "eval")
  assert {"loss/en", "loss/zh", "loss/fr", "perplexity/en"} <= set(evals[40])
  assert checkpoints.complete_steps(model_dir / "checkpoints") == list(range(5, 45, 5))
  train_rec = metrics.read_jsonl(str(model_dir))[40]
  assert train_rec["tokens_consumed/en"] > 0 and train_rec["tokens_consumed/zh"] > 0


def test_load_returns_the_latest_checkpoint(reference):
  model_dir, _ = reference
  cfg, params = polylm_jax.load(str(model_dir))
  assert cfg == TINY
  with checkpoints.CheckpointManager(model_dir, TINY, read_only=True) as m:
    restored = m.restore(STEPS)
  assert restored.step == STEPS
  assert "BATCH_SIZE = 8" in restored.gin_config
  assert restored.stream_state["stream"]["step"] == STEPS
  assert restored.stream_state["trainer"]["vocabulary"].startswith("PassThroughVocabulary:512")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_half_written_checkpoint_is_never_the_latest(reference, tmp_path):
  model_dir = tmp_path / "run"
  shutil.copytree(reference[0] / "checkpoints", model_dir / "checkpoints")
  # A later step whose write never finished (the process died before Orbax renamed it).
  shutil.copytree(
    model_dir / "checkpoints" / "40", model_dir / "checkpoints" / "45.orbax-checkpoint-tmp-1234"
  )
  shutil.rmtree(model_dir / "checkpoints" / "45.orbax-checkpoint-tmp-1234" / "opt_state")
  assert checkpoints.complete_steps(model_dir / "checkpoints")[-1] == 40
  with checkpoints.CheckpointManager(model_dir, TINY, read_only=True) as m:
    assert m.latest_step() == 40


def test_sigkill_sigterm_and_kill_during_a_checkpoint_resume_exactly(
  reference, gin_dir, jax_cache, tmp_path
):
  """One run, stopped three ways and restarted with the same command each time:
  SIGKILL at an arbitrary step, SIGTERM (saves first), SIGKILL while a checkpoint is being
  written. The stage boundary (step 20) is crossed after a restart. Every step's loss and
  batch must equal the uninterrupted run's."""
  model_dir = tmp_path / "run"

  ckpt_dir = model_dir / "checkpoints"
  proc = _start(gin_dir, model_dir, jax_cache)  # 1: SIGKILL at step >= 8
  _wait_for(
    lambda: _steps_logged(model_dir) >= 8 and checkpoints.complete_steps(ckpt_dir),
    proc,
    "step 8 and a complete checkpoint",
  )
  proc.send_signal(signal.SIGKILL)
  assert _finish(proc)[0] == -signal.SIGKILL
  assert _steps_logged(model_dir) < STEPS
  latest = checkpoints.complete_steps(ckpt_dir)[-1]

  proc = _start(gin_dir, model_dir, jax_cache)  # 2: SIGTERM at step >= 13
  _wait_for(lambda: _steps_logged(model_dir) >= 13, proc, "step 13")
  proc.send_signal(signal.SIGTERM)
  code, out = _finish(proc)
  assert code == 143, out
  assert f"restored step {latest} from" in out, out  # the latest complete at the kill
  saved = int(re.search(r"SIGTERM: saved step (\d+)", out).group(1))
  assert 13 <= saved < BOUNDARY, out
  assert saved in checkpoints.complete_steps(ckpt_dir)

  for _ in range(3):  # 3: SIGKILL mid-write, > 20
    proc = _start(gin_dir, model_dir, jax_cache)
    _wait_for(
      lambda: _steps_logged(model_dir) > BOUNDARY + 1 and _tmp_checkpoints(model_dir),
      proc,
      "a checkpoint being written after the stage boundary",
    )
    proc.send_signal(signal.SIGKILL)
    assert _finish(proc)[0] == -signal.SIGKILL
    half = _tmp_checkpoints(model_dir)
    if half:  # else the write finished between the poll and the kill: try again
      break
  assert half, "the kill should have landed while a checkpoint was being written"
  complete = checkpoints.complete_steps(ckpt_dir)
  assert all(int(name.split(".")[0]) not in complete for name in half)

  code, out = _finish(_start(gin_dir, model_dir, jax_cache))  # 4: to the end
  assert code == 0, out
  resumed_from = int(re.search(r"restored step (\d+) from", out).group(1))
  assert resumed_from == complete[-1]
  assert not _tmp_checkpoints(model_dir)  # cleaned up, never restored

  got, want = _history(model_dir), _history(reference[0])
  assert sorted(got) == sorted(want)
  for s in sorted(want):
    assert got[s] == want[s], f"step {s}: {got[s]} != {want[s]} (uninterrupted)"
  ref_cfg, ref_params = checkpoints.load(str(reference[0]))
  _, params = checkpoints.load(str(model_dir))
  for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# -- in-process runs on the 8 host devices -----------------------------------------------------


def _run(tmp_path, name, steps=4, devices=None, **kw):
  args = train_fixtures.train_args(**{**COMMON, "checkpoint_period": 0, **QUIET, **kw})
  return trainer.train(model_dir=str(tmp_path / name), train_steps=steps, devices=devices, **args)


def _shard_shape(x):
  return x.sharding.shard_shape(x.shape)


@pytest.fixture(scope="module")
def one_device_losses(jax_cache, tmp_path_factory):
  res = _run(tmp_path_factory.mktemp("one"), "run", devices=jax.devices()[:1])
  return [res.losses[s] for s in range(1, 5)]


@pytest.mark.parametrize(
  "mesh",
  [
    dict(mesh_data=8),
    dict(mesh_data=2, mesh_fsdp=4),
    dict(mesh_data=2, mesh_fsdp=2, mesh_tensor=2, num_microbatches=2),
  ],
  ids=["data8", "data2_fsdp4", "data2_fsdp2_tensor2_micro2"],
)
def test_mesh_shapes_match_one_device(mesh, one_device_losses, tmp_path):
  assert len(jax.devices()) == 8
  res = _run(tmp_path, "run", **mesh)
  losses = [res.losses[s] for s in range(1, 5)]
  np.testing.assert_allclose(losses, one_device_losses, rtol=1e-5)
  params, opt = res.state.params, res.state.opt_state
  wte, fc1 = params["wte"], params["layers"]["mlp"]["fc1_kernel"]
  mu_wte = opt[1][0].mu["wte"]
  fsdp, tensor = mesh.get("mesh_fsdp", 1), mesh.get("mesh_tensor", 1)
  assert _shard_shape(wte) == (512 // tensor, 64 // fsdp)
  assert _shard_shape(mu_wte) == _shard_shape(wte)  # Adam moments split alike
  assert _shard_shape(fc1) == (2, 64 // fsdp, 256 // tensor)
  assert wte.sharding.mesh.shape == {"data": 8 // (fsdp * tensor), "fsdp": fsdp, "tensor": tensor}


def test_bf16_compute_with_fp32_params_tracks_fp32(one_device_losses, tmp_path):
  """The 13B recipe's mixed precision: bf16 matmuls, fp32 params, residual, softmax, grads."""
  res = _run(
    tmp_path, "bf16", devices=jax.devices()[:1], model_config=TINY.replace(dtype="bfloat16")
  )
  assert jax.tree.leaves(res.state.params)[0].dtype == np.float32
  assert res.state.opt_state[1][0].mu["wte"].dtype == np.float32
  losses = [res.losses[s] for s in range(1, 5)]
  # measured relative differences over the 4 steps: 1.5e-7 .. 8.5e-7; rtol about 4x.
  np.testing.assert_allclose(losses, one_device_losses, rtol=3.5e-6)
  assert losses != one_device_losses  # bf16 really ran
  # negative control: an all-zero model's loss (ln V) is 1.3e-3 away from step 1's
  assert abs(np.log(TINY.vocab_size) - one_device_losses[0]) > 3.5e-6 * one_device_losses[0]


def test_nonfinite_steps_are_skipped_then_rolled_back(jax_cache, tmp_path):
  logs = []
  res = _run(
    tmp_path,
    "run",
    steps=8,
    devices=jax.devices()[:1],
    checkpoint_period=2,
    debug_nonfinite_batches=[3, 4, 5],
    max_consecutive_skips=3,
    nonfinite_policy="rollback",
    print_fn=lambda *a, **k: logs.append(a[0]),
  )
  text = "\n".join(logs)
  assert "step 4: non-finite loss/gradients: update skipped (1 in a row" in text
  # Skipped steps leave the params alone, so the checkpoint of step 6 is a valid target.
  assert "ROLLBACK 1/5: 3 consecutive non-finite steps (steps 4-6); restored step 6 from" in text
  assert res.rollbacks == 1 and res.step == 8
  assert checkpoints.complete_steps(tmp_path / "run" / "checkpoints") == [4, 6, 8]  # keep 3
  assert all(np.isfinite(res.losses[s]) for s in (7, 8))
  with pytest.raises(trainer.NonFiniteError, match="nonfinite_policy='stop'"):
    _run(
      tmp_path,
      "stop",
      steps=6,
      devices=jax.devices()[:1],
      debug_nonfinite_batches=[1, 2],
      max_consecutive_skips=2,
      nonfinite_policy="stop",
    )
  res = _run(
    tmp_path,
    "go",
    steps=4,
    devices=jax.devices()[:1],
    debug_nonfinite_batches=[1, 2],
    max_consecutive_skips=2,
    nonfinite_policy="continue",
  )
  assert res.step == 4 and int(res.state.skipped_steps) == 2


def test_init_checkpoint_starts_a_fresh_run_from_trained_params(
  reference, one_device_losses, tmp_path
):
  res = _run(
    tmp_path, "continued", steps=2, devices=jax.devices()[:1], init_checkpoint=str(reference[0])
  )
  trained = metrics.read_jsonl(str(reference[0]))[STEPS]["loss"]
  assert res.step == 2
  assert res.losses[1] < one_device_losses[0] - 1.0  # not a random init ...
  assert abs(res.losses[1] - trained) < 1.0  # ... but the trained model


# -- errors before any compute ----------------------------------------------------------------


@pytest.mark.parametrize(
  "kw,message",
  [
    (dict(mesh_data=3), "uses 3 devices but 8 are available"),
    (dict(mesh_data=-1, mesh_tensor=3), "does not divide"),
    (
      dict(batch_size=6, mesh_data=4, mesh_fsdp=2),
      "BATCH_SIZE=6 is not divisible by the data-parallel devices",
    ),
    (dict(batch_size=8, num_microbatches=3, devices="one"), "num_microbatches=3"),
    (
      dict(batch_size=8, mesh_data=8, num_microbatches=2),
      r"microbatches: 8 .* x num_microbatches=2",
    ),
    (dict(task_feature_lengths={"targets": 65}), r"\['targets'\]=65 must be in \[1, max_len=64\]"),
    (dict(task_feature_lengths={"inputs": 8, "targets": 8}), "decoder-only"),
    (dict(dropout_rate=0.1), "DROPOUT_RATE=0.1"),
    (dict(use_cached_tasks=True), "USE_CACHED_TASKS"),
    (dict(mesh_data=1, mesh_tensor=8), r"cannot be split over mesh axes \('tensor',\)"),
    (dict(mixture_or_task_name="no_such_mixture"), "no_such_mixture"),
    (dict(nonfinite_policy="ignore"), "nonfinite_policy"),
  ],
)
def test_bad_input_fails_before_compute(kw, message, tmp_path, monkeypatch):
  compiled = []
  monkeypatch.setattr(trainer.step_lib, "init_train_state", lambda *a, **k: compiled.append(1))
  if kw.pop("devices", None) == "one":
    kw["devices"] = jax.devices()[:1]
  with pytest.raises((ValueError, KeyError), match=message):
    _run(tmp_path, "run", **kw)
  assert not compiled


def test_unwritable_model_dir(tmp_path):
  (tmp_path / "file").write_text("not a directory")
  with pytest.raises(ValueError, match="MODEL_DIR=.*file/run.* is not writable"):
    _run(tmp_path, "file/run")


def test_restore_with_another_model_config_or_vocabulary_names_the_field(reference, tmp_path):
  model_dir = tmp_path / "run"
  shutil.copytree(reference[0] / "checkpoints", model_dir / "checkpoints")
  with pytest.raises(
    checkpoints.ConfigMismatchError, match="d_ff: checkpoint 256 vs requested 128"
  ):
    _run(tmp_path, "run", steps=STEPS, model_config=TINY.replace(d_ff=128))
  with pytest.raises(checkpoints.ConfigMismatchError, match="vocab_size: checkpoint 512"):
    _run(tmp_path, "run", steps=STEPS, model_config=TINY.replace(vocab_size=640))
  train_fixtures.register(vocab_size=500)  # same model, another tokenizer
  try:
    with pytest.raises(
      checkpoints.ConfigMismatchError,
      match="vocabulary mismatch: checkpoint "
      "'PassThroughVocabulary:512.*' vs the tasks' 'PassThroughVocabulary:500",
    ):
      _run(tmp_path, "run", steps=STEPS)
  finally:
    train_fixtures.register()


def test_gin_typos_and_missing_model_dir_fail_at_parse(gin_dir):
  try:
    with pytest.raises(ValueError, match="batch_sizee"):
      gin_utils.parse_gin(["trainer_test.gin"], ["train.batch_sizee = 3"], [str(gin_dir)])
    gin.clear_config()
    with pytest.raises(ValueError, match="MODEL_DIR"):
      gin_utils.parse_gin(["trainer_test.gin"], [], [str(gin_dir)])
    gin.clear_config()
    gin_utils.parse_gin(
      ["trainer_test.gin"], ['MODEL_DIR = "/tmp/x"', "TRAIN_STEPS = 7"], [str(gin_dir)]
    )
    assert gin.query_parameter("TRAIN_STEPS/macro.value") == 7
  finally:
    gin.clear_config()


def test_a_language_added_after_the_18_is_counted_and_evaluated(jax_cache, tmp_path, monkeypatch):
  """The per-language counters and eval follow mixing.languages() (the stream's index), not
  the fixed 18 of mixing.LANGUAGES: an added language shows by itself, not only in totals."""
  monkeypatch.setattr(mixing, "_LANGS", list(mixing._LANGS))
  monkeypatch.setattr(mixing, "_LANG_INDEX", dict(mixing._LANG_INDEX))
  name = train_fixtures.register_extra_language("sw")
  assert mixing.language_index("sw") >= 18
  res = _run(
    tmp_path,
    "run",
    devices=jax.devices()[:1],
    mixture_or_task_name=name,
    eval_period=4,
    eval_steps=1,
    log_period=4,
  )
  assert res.eval["loss/sw"] > 0 and res.eval["loss/en"] > 0
  rec = metrics.read_jsonl(str(tmp_path / "run"))[4]
  assert rec["tokens_consumed/sw"] > 0 and rec["tokens_consumed/en"] > 0


def _no_step_twice(model_dir):
  lines = (pathlib.Path(model_dir) / "metrics.jsonl").read_text().splitlines()
  keys = [(r["kind"], r["step"]) for r in map(json.loads, lines)]
  assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)


def test_sigint_saves_like_sigterm_and_metrics_never_repeat_a_step(
  reference, gin_dir, jax_cache, tmp_path
):
  """Ctrl-C saves the current step and exits 130 with one line, no traceback; after a
  SIGKILL and a resume, metrics.jsonl holds each step once and the run equals the reference."""
  model_dir = tmp_path / "run"
  ckpt_dir = model_dir / "checkpoints"
  proc = _start(gin_dir, model_dir, jax_cache)
  _wait_for(lambda: _steps_logged(model_dir) >= 6, proc, "step 6")
  proc.send_signal(signal.SIGINT)
  code, out = _finish(proc)
  assert code == 130, out
  saved = int(re.search(r"SIGINT: saved step (\d+); stopping", out).group(1))
  assert saved >= 6 and saved in checkpoints.complete_steps(ckpt_dir)
  assert "Traceback" not in out and "KeyboardInterrupt" not in out
  _no_step_twice(model_dir)

  proc = _start(gin_dir, model_dir, jax_cache)  # SIGKILL past the next checkpoint
  _wait_for(
    lambda: _steps_logged(model_dir) > max(checkpoints.complete_steps(ckpt_dir)) + 1,
    proc,
    "steps past the latest checkpoint",
  )
  proc.send_signal(signal.SIGKILL)
  assert _finish(proc)[0] == -signal.SIGKILL
  code, out = _finish(_start(gin_dir, model_dir, jax_cache))
  assert code == 0, out
  _no_step_twice(model_dir)
  assert _history(model_dir) == _history(reference[0])


def test_a_finished_run_only_reports_without_loading_tensorflow(
  reference, gin_dir, jax_cache, tmp_path
):
  """`make demo` a second time: the finished run reports its checkpoints and last eval from
  its files, before any data module (seqio, TensorFlow) is imported."""
  model_dir = tmp_path / "run"
  shutil.copytree(reference[0], model_dir)
  before = (model_dir / "metrics.jsonl").read_text()
  lazy = GIN.replace("import train_fixtures", "DataSpec.task_modules = ['train_fixtures']")
  (gin_dir / "trainer_test_lazy.gin").write_text(lazy)
  command = _command(gin_dir, model_dir)
  command[command.index("--gin_file=trainer_test.gin")] = "--gin_file=trainer_test_lazy.gin"
  proc = subprocess.run(
    [command[0], "-X", "importtime", *command[1:]],
    cwd=REPO,
    env=_env(jax_cache),
    capture_output=True,
    text=True,
    timeout=240,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert f"already trained to step {STEPS} (TRAIN_STEPS={STEPS}); nothing to do" in proc.stdout
  assert f"checkpoints: {model_dir}/checkpoints" in proc.stdout
  assert re.search(r"  zh: loss [0-9.]+  perplexity", proc.stdout)
  imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
  assert "seqio" not in imported and "tensorflow" not in imported
  assert "train_fixtures" not in imported
  assert (model_dir / "metrics.jsonl").read_text() == before  # nothing written


def test_nonfinite_streaks_leave_each_step_once_in_the_metrics(jax_cache, tmp_path):
  """'continue' goes on from the step it is at (no step runs twice); a rollback drops the
  records of the steps it runs again and keeps one 'rollback' record."""
  res = _run(
    tmp_path,
    "go",
    steps=5,
    devices=jax.devices()[:1],
    debug_nonfinite_batches=[1, 2],
    max_consecutive_skips=2,
    nonfinite_policy="continue",
  )
  assert sorted(res.losses) == [1, 2, 3, 4, 5]
  _no_step_twice(tmp_path / "go")
  res = _run(
    tmp_path,
    "back",
    steps=8,
    devices=jax.devices()[:1],
    checkpoint_period=2,
    debug_nonfinite_batches=[3, 4, 5],
    max_consecutive_skips=3,
    nonfinite_policy="rollback",
  )
  assert res.rollbacks == 1 and res.step == 8
  _no_step_twice(tmp_path / "back")
  rollback = metrics.read_jsonl(str(tmp_path / "back"), "rollback")
  assert {s: r["rolled_back_from"] for s, r in rollback.items()} == {6: 7}
  assert sorted(metrics.read_jsonl(str(tmp_path / "back"))) == list(range(1, 9))


def test_resume_skips_a_damaged_checkpoint_naming_it(reference, tmp_path):
  """A damaged latest checkpoint (an emptied metadata file) is named in one line and the run
  resumes from the newest intact one."""
  model_dir = tmp_path / "run"
  shutil.copytree(reference[0] / "checkpoints", model_dir / "checkpoints")
  victim = model_dir / "checkpoints" / str(STEPS) / "params" / "_METADATA"
  victim.write_text("")
  logs = []
  res = _run(
    tmp_path,
    "run",
    steps=STEPS,
    devices=jax.devices()[:1],
    checkpoint_period=PERIOD,
    print_fn=lambda m, **k: logs.append(m),
  )
  text = "\n".join(logs)
  assert f"WARNING: skipped checkpoint step {STEPS} is damaged: {victim}" in text
  assert f"restored step {STEPS - PERIOD} from" in text
  assert res.step == STEPS and sorted(res.losses) == list(range(STEPS - PERIOD + 1, STEPS + 1))
  # set aside (kept for a look), so the run wrote its last step again: a rerun is finished
  assert (model_dir / "checkpoints" / f"{STEPS}.damaged" / "params" / "_METADATA").exists()
  assert STEPS in checkpoints.complete_steps(model_dir / "checkpoints")
  assert _run(tmp_path, "run", steps=STEPS, devices=jax.devices()[:1]).state is None
