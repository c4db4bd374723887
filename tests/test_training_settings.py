"""The trainer's settings: each group checks itself, the optimizer builds its schedule, and
gin binds them the t5x way (`train.optimizer = @OptimizerSpec()`)."""

import gin
import pytest

from polylm_jax import gin_utils, train  # noqa: F401  (train registers the gin configurables)
from polylm_jax.training.settings import (
  DataSpec,
  EvalSpec,
  LossSpec,
  MeshSpec,
  NonFinitePolicy,
  OptimizerSpec,
  ReportSpec,
)


def test_a_short_run_derives_its_schedule_and_reaches_the_peak():
  """gin/runs/finetune.gin's schedule (issue 11 defect 11): with TRAIN_STEPS=10 the learning
  rate reaches its peak (the fixed 120 + 3,880 steps never passed 1.5e-6)."""
  spec = OptimizerSpec(peak_learning_rate=2e-5, min_learning_rate=0.0, warmup_fraction=0.03)
  assert spec.schedule_steps(10) == (1, 9)
  assert spec.schedule_steps(4000) == (120, 3880)  # the old fixed numbers, now derived
  schedule, tx = spec.build(10)
  lrs = [float(schedule(s)) for s in range(10)]
  assert max(lrs) == pytest.approx(2e-5)
  assert lrs[1] == pytest.approx(2e-5) and lrs[0] == 0.0
  assert callable(tx.init) and callable(tx.update)
  explicit = OptimizerSpec(warmup_steps=2000, decay_steps=608_000)  # the released recipe
  assert explicit.schedule_steps(10) == (2000, 608_000)
  assert OptimizerSpec(warmup_fraction=0.0).schedule_steps(10) == (0, 10)
  assert OptimizerSpec().schedule_steps(1) == (0, 1)  # one step: no room for a warmup


@pytest.mark.parametrize(
  "make,message",
  [
    (lambda: OptimizerSpec(warmup_fraction=1.5), r"warmup_fraction must be in \[0, 1\)"),
    (lambda: OptimizerSpec(min_learning_rate=1.0, peak_learning_rate=0.1), "min_learning_rate"),
    (lambda: OptimizerSpec(decay_steps=0), "decay_steps must be > 0"),
    (lambda: OptimizerSpec(clip_norm=0.0), "clip_norm"),
    (lambda: OptimizerSpec(b2=1.0), r"b2 must be in \[0, 1\)"),
    (lambda: MeshSpec(num_microbatches=0), "num_microbatches must be >= 1"),
    (lambda: MeshSpec(fsdp=0), "MeshSpec.fsdp"),
    (lambda: LossSpec(dropout_rate=0.1), "DROPOUT_RATE=0.1"),
    (lambda: LossSpec(label_smoothing=1.0), "LABEL_SMOOTHING"),
    (lambda: LossSpec(chunk_tokens=-1), "chunk_tokens"),
    (lambda: DataSpec("m", use_cached_tasks=True), "USE_CACHED_TASKS"),
    (lambda: DataSpec("m", {"inputs": 8, "targets": 8}), "decoder-only"),
    (lambda: DataSpec("", {"targets": 8}), "MIXTURE_OR_TASK_NAME"),
    (lambda: DataSpec("m", batch_size=0), "BATCH_SIZE must be > 0"),
    (lambda: DataSpec("m", task_modules="tasks.mixtures"), "must be a list"),
    (lambda: DataSpec("m", batch_size=8, data_shards=3), "data_shards=3 must be a positive div"),
    (lambda: DataSpec("m", read_workers=0), "read_workers must be >= 1"),
    (lambda: EvalSpec(period=-1), "EvalSpec.period"),
    (lambda: EvalSpec(steps=0), "EvalSpec.steps"),
    (lambda: NonFinitePolicy(action="ignore"), "nonfinite_policy"),
    (lambda: NonFinitePolicy(max_consecutive_skips=0), "max_consecutive_skips"),
    (lambda: ReportSpec(log_period=0), "log_period must be >= 1"),
  ],
)
def test_bad_settings_fail_when_built_naming_the_field(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_specs_are_frozen_and_lists_become_tuples():
  spec = ReportSpec(sample_prompts=["a", "b"])
  assert spec.sample_prompts == ("a", "b")
  with pytest.raises(AttributeError):
    spec.log_period = 3  # frozen
  data = DataSpec("m", {"targets": 64}, task_modules=["tasks.mixtures"])
  assert data.seq_len == 64 and data.task_modules == ("tasks.mixtures",)
  with pytest.raises(ValueError, match=r"\['targets'\]=65 must be in \[1, max_len=64\]"):
    DataSpec("m", {"targets": 65}).check_model(64)
  assert EvalSpec(period=5).due(10, 12) and EvalSpec(period=5).due(12, 12)
  assert not EvalSpec(period=5).due(11, 12) and not EvalSpec(period=0).due(12, 12)


def test_the_run_gins_bind_the_settings_objects():
  """Every run gin builds the trainer's arguments; macros and the README overrides apply."""
  try:
    for gin_file, steps in (("runs/pretrain.gin", 610_000), ("runs/pretrain_13b.gin", 152_500)):
      gin.clear_config()
      gin_utils.parse_gin(
        ["models/polylm_tiny.gin", gin_file],
        ['MODEL_DIR = "/tmp/x"', "MeshSpec.num_microbatches = 8", "BATCH_SIZE = 64"],
      )
      assert gin.query_parameter("TRAIN_STEPS/macro.value") == steps
      opt = gin.get_configurable("OptimizerSpec")()
      mesh = gin.get_configurable("MeshSpec")()
      data = gin.get_configurable("DataSpec")()
      assert isinstance(opt, OptimizerSpec) and opt.warmup_steps in (2000, 2500)
      assert mesh.num_microbatches == 8 and data.batch_size == 64
      assert data.task_modules == ("tasks.mixtures",)
    gin.clear_config()
    gin_utils.parse_gin(
      ["models/polylm_tiny.gin", "runs/finetune.gin"],
      ['MODEL_DIR = "/tmp/x"', 'CHECKPOINT_PATH = "/tmp/y"', "TRAIN_STEPS = 10"],
    )
    opt = gin.get_configurable("OptimizerSpec")()
    assert opt.warmup_steps is None and opt.decay_steps is None
    assert opt.schedule_steps(10) == (1, 9)  # derived from TRAIN_STEPS
    assert gin.get_configurable("DataSpec")().task_modules == ("tasks.instructions",)
    gin.clear_config()
    gin_utils.parse_gin(["demo.gin"])
    assert gin.get_configurable("EvalSpec")().steps is None
    assert len(gin.get_configurable("ReportSpec")().sample_prompts) == 4
  finally:
    gin.clear_config()
