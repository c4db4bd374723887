"""The trainer's settings: small frozen dataclasses that check themselves when built.

t5x binds its config objects in gin (`train.checkpoint_cfg = @utils.CheckpointConfig()`);
the training binary does the same with these (`train.optimizer = @OptimizerSpec()`, see
gin/runs/pretrain.gin), while the trainer (`polylm_jax.training.trainer.train`) takes them as plain
typed values. A bad value fails when the object is built, naming the field (and the gin macro
that usually sets it), before any data is read or anything is compiled.

Checkpointing is `checkpoints.CheckpointPolicy` itself (save_every, keep, async_save).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import optax

from polylm_jax import optim, partitioning
from polylm_jax.training.step import LOSS_CHUNK_TOKENS

NONFINITE_ACTIONS = ("rollback", "stop", "continue")


def _tuple(obj: Any, name: str) -> None:
  """Freezes a sequence field given as a list (gin passes lists) into a tuple."""
  value = getattr(obj, name)
  if isinstance(value, str):
    raise ValueError(f"{type(obj).__name__}.{name} must be a list, got the string {value!r}")
  object.__setattr__(obj, name, tuple(value))


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What the trainer reads: the mixture, the packed length and the global batch.

  task_modules are imported (like gin `import` lines) when the data is first needed, so a
  finished run reports without loading TensorFlow and seqio.
  """

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int] = dataclasses.field(
    default_factory=lambda: {"targets": 2048}
  )
  batch_size: int = 512  # global, sequences per step over all hosts
  segment_aware: bool = False
  use_cached_tasks: bool = False
  task_modules: Sequence[str] = ()
  # The global batch is this many data shards (polylm_jax/data_shards.py), whatever the
  # process count; None: the count the run's checkpoint has, or the process count at its start.
  data_shards: int | None = None
  # Tokenizer threads of each pre-training stream's readers (polylm_jax/readers.py); the
  # batches are the same for any value.
  read_workers: int = 1

  def __post_init__(self):
    if not self.mixture_or_task_name:
      raise ValueError("MIXTURE_OR_TASK_NAME (DataSpec.mixture_or_task_name) is empty")
    if self.use_cached_tasks:
      raise ValueError(
        "USE_CACHED_TASKS=True is not supported: the packed stream reads tasks "
        "directly (seqio caches are not read); set USE_CACHED_TASKS = False"
      )
    if set(self.task_feature_lengths) != {"targets"}:
      raise ValueError(
        f"TASK_FEATURE_LENGTHS must be {{'targets': seq_len}} for a decoder-only "
        f"model, got {dict(self.task_feature_lengths)}"
      )
    if self.batch_size <= 0:
      raise ValueError(f"BATCH_SIZE must be > 0, got {self.batch_size}")
    if self.data_shards is not None and (
      self.data_shards <= 0 or self.batch_size % self.data_shards
    ):
      raise ValueError(
        f"DataSpec.data_shards={self.data_shards} must be a positive divisor of "
        f"BATCH_SIZE={self.batch_size}"
      )
    if self.read_workers < 1:
      raise ValueError(f"DataSpec.read_workers must be >= 1, got {self.read_workers}")
    object.__setattr__(self, "task_feature_lengths", dict(self.task_feature_lengths))
    _tuple(self, "task_modules")

  @property
  def seq_len(self) -> int:
    return int(self.task_feature_lengths["targets"])

  def check_model(self, max_len: int) -> None:
    """The packed length must fit the model's learned positions."""
    if self.seq_len <= 0 or self.seq_len > max_len:
      raise ValueError(
        f"TASK_FEATURE_LENGTHS['targets']={self.seq_len} must be in [1, max_len="
        f"{max_len}] of the model (PolyLMConfig.max_len: the learned position table)"
      )


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """The (data, fsdp, tensor) mesh; one axis may be -1 (the remaining devices).
  num_microbatches > 1 accumulates fp32 gradients over slices of the global batch."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  num_microbatches: int = 1

  def __post_init__(self):
    if self.num_microbatches < 1:
      raise ValueError(f"num_microbatches must be >= 1, got {self.num_microbatches}")
    for name in ("data", "fsdp", "tensor"):
      v = getattr(self, name)
      if v == 0 or v < -1:
        raise ValueError(f"MeshSpec.{name} must be >= 1 or -1 (the rest), got {v}")

  def build(self, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    return partitioning.make_mesh(self.data, self.fsdp, self.tensor, devices=devices)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """AdamW with clipping and a warmup + cosine schedule (the released recipe, optim.py).

  warmup_steps / decay_steps None: derived from the run's length, warmup_fraction of
  TRAIN_STEPS (at least one step) then cosine over the rest, so a short run still reaches
  the peak learning rate. Explicit values are used as they are (the released recipes).
  """

  peak_learning_rate: float = 6e-5
  min_learning_rate: float = 6e-6
  warmup_steps: int | None = None
  decay_steps: int | None = None
  warmup_fraction: float = 0.03
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 1e-4
  clip_norm: float | None = 1.0

  def __post_init__(self):
    if not 0.0 <= self.warmup_fraction < 1.0:
      raise ValueError(
        f"OptimizerSpec.warmup_fraction must be in [0, 1), got {self.warmup_fraction}"
      )
    if self.warmup_steps is not None and self.warmup_steps < 0:
      raise ValueError(f"OptimizerSpec.warmup_steps must be >= 0, got {self.warmup_steps}")
    if self.decay_steps is not None and self.decay_steps <= 0:
      raise ValueError(f"OptimizerSpec.decay_steps must be > 0, got {self.decay_steps}")
    if not (0 <= self.min_learning_rate <= self.peak_learning_rate):
      raise ValueError(
        "OptimizerSpec: need 0 <= min_learning_rate <= peak_learning_rate, got "
        f"{self.min_learning_rate} and {self.peak_learning_rate}"
      )
    for name in ("b1", "b2"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"OptimizerSpec.{name} must be in [0, 1), got {getattr(self, name)}")
    if self.weight_decay < 0:
      raise ValueError(f"OptimizerSpec.weight_decay must be >= 0, got {self.weight_decay}")
    if self.clip_norm is not None and self.clip_norm <= 0:
      raise ValueError(f"OptimizerSpec.clip_norm must be > 0 or None, got {self.clip_norm}")

  def schedule_steps(self, train_steps: int) -> tuple[int, int]:
    """(warmup_steps, decay_steps) for a run of `train_steps` steps."""
    warmup = self.warmup_steps
    if warmup is None:
      warmup = max(1, round(self.warmup_fraction * train_steps)) if self.warmup_fraction else 0
      warmup = min(warmup, max(0, train_steps - 1))
    decay = self.decay_steps if self.decay_steps is not None else max(1, train_steps - warmup)
    return warmup, decay

  def build(self, train_steps: int) -> tuple[optim.Schedule, optax.GradientTransformation]:
    """The learning-rate schedule and the optax transformation that uses it."""
    warmup, decay = self.schedule_steps(train_steps)
    schedule = optim.learning_rate_schedule(
      self.peak_learning_rate, self.min_learning_rate, warmup, decay
    )
    tx = optim.make_optimizer(
      schedule, self.b1, self.b2, self.eps, self.weight_decay, self.clip_norm
    )
    return schedule, tx


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """Terms of the objective. dropout_rate is here only to refuse it: PolyLM has no dropout.
  chunk_tokens: the output layer and loss run on about this many tokens per device at a time,
  so the [tokens, vocab] fp32 logits never exist whole (0: all at once; same loss either way).
  """

  z_loss: float = 0.0
  label_smoothing: float = 0.0
  dropout_rate: float = 0.0
  chunk_tokens: int = LOSS_CHUNK_TOKENS

  def __post_init__(self):
    if self.dropout_rate != 0:
      raise ValueError(
        f"DROPOUT_RATE={self.dropout_rate}: PolyLM is trained without dropout and "
        "this model has none; set DROPOUT_RATE = 0.0"
      )
    if self.z_loss < 0:
      raise ValueError(f"Z_LOSS must be >= 0, got {self.z_loss}")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"LABEL_SMOOTHING must be in [0, 1), got {self.label_smoothing}")
    if self.chunk_tokens < 0:
      raise ValueError(
        f"LossSpec.chunk_tokens must be >= 0 (0: unchunked), got {self.chunk_tokens}"
      )


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """Held-out loss per language every `period` steps (0: never) and at the end.

  steps: batches per language (None: all held-out data; on several processes the data
  shards that end first are padded with weight-0 batches). benchmark_tasks:
  benchmark task or mixture names (tasks/benchmark.py), comma-separated, run at every eval
  as well; their data: $POLYLM_EVAL_DATA_DIR or tasks.benchmark.configure(data_dir=...).
  """

  period: int = 1000
  steps: int | None = 10
  before_training: bool = False
  benchmark_tasks: str = ""
  benchmark_max_examples: int | None = 100
  benchmark_batch_size: int = 16

  def __post_init__(self):
    if self.period < 0:
      raise ValueError(f"EvalSpec.period must be >= 0 (0: off), got {self.period}")
    if self.steps is not None and self.steps < 1:
      raise ValueError(f"EvalSpec.steps must be >= 1 or None (all), got {self.steps}")
    if self.benchmark_batch_size < 1:
      raise ValueError(
        f"EvalSpec.benchmark_batch_size must be >= 1, got {self.benchmark_batch_size}"
      )

  def due(self, step: int, train_steps: int) -> bool:
    return bool(self.period) and (step % self.period == 0 or step == train_steps)


@dataclasses.dataclass(frozen=True)
class NonFinitePolicy:
  """Non-finite loss or gradients: the update is skipped and counted; after
  max_consecutive_skips in a row, `action` ('rollback', 'stop', 'continue') decides.
  debug_batches: stream batch indices whose loss weights are set to NaN (tests)."""

  action: str = "rollback"
  max_consecutive_skips: int = 10
  max_rollbacks: int = 5
  debug_batches: Sequence[int] = ()

  def __post_init__(self):
    if self.action not in NONFINITE_ACTIONS:
      raise ValueError(
        f"nonfinite_policy (NonFinitePolicy.action) must be one of {NONFINITE_ACTIONS}, "
        f"got {self.action!r}"
      )
    if self.max_consecutive_skips < 1:
      raise ValueError(f"max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}")
    if self.max_rollbacks < 0:
      raise ValueError(f"max_rollbacks must be >= 0, got {self.max_rollbacks}")
    object.__setattr__(self, "debug_batches", tuple(int(i) for i in self.debug_batches))


@dataclasses.dataclass(frozen=True)
class ReportSpec:
  """Console and metrics: a progress line every log_period steps; greedy continuations of
  sample_prompts at the end. peak_flops_per_device overrides the MFU denominator."""

  log_period: int = 10
  peak_flops_per_device: float | None = None
  sample_prompts: Sequence[str] = ()
  sample_max_new_tokens: int = 24

  def __post_init__(self):
    if self.log_period < 1:
      raise ValueError(f"log_period must be >= 1, got {self.log_period}")
    if self.sample_max_new_tokens < 1:
      raise ValueError(f"sample_max_new_tokens must be >= 1, got {self.sample_max_new_tokens}")
    _tuple(self, "sample_prompts")


SPECS = (DataSpec, MeshSpec, OptimizerSpec, LossSpec, EvalSpec, NonFinitePolicy, ReportSpec)
