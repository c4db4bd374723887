r"""The t5x-style training binary: pre-training, continued training, fine-tuning, the demo.

    python -m polylm_jax.train --gin_file=gin/models/polylm_1_7b.gin \
        --gin_file=gin/runs/pretrain.gin --gin.MODEL_DIR=\"runs/polylm_1_7b\" \
        --gin.TRAIN_STEPS=1000 --gin.MIXTURE_OR_TASK_NAME=\"polylm_pretrain_curriculum\"

It parses the gin flags, gin builds the settings (`train.optimizer = @OptimizerSpec()` and
so on, see gin/runs/pretrain.gin and polylm_jax/settings_lib.py) and it calls one library
function, `polylm_jax.training.trainer.train`. Exit status 143 after SIGTERM and 130 after Ctrl-C
(SIGINT): both save a checkpoint first, and the same command resumes.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

import gin
from absl import flags
from absl import logging as absl_logging

from polylm_jax import checkpoints, distributed, gin_utils
from polylm_jax.training import settings as settings_lib
from polylm_jax.training.trainer import NonFiniteError, TrainResult, train

__all__ = ["NonFiniteError", "TrainResult", "gin_train", "main", "train"]

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "preemption": 143}  # 128 + signal number


def _register_gin():
  """gin at the edge: the trainer and its settings stay plain Python."""
  for cls in (*settings_lib.SPECS, checkpoints.CheckpointPolicy):
    gin_utils.configurable(cls, cls.__name__)
  return gin_utils.configurable(train, "train")


gin_train = _register_gin()


def _load_benchmark_tasks() -> None:
  """Periodic benchmark tasks need the task library, which only a binary imports; lazily,
  as it loads TensorFlow Datasets."""
  try:
    names = gin.query_parameter("EvalSpec.benchmark_tasks")
  except ValueError:  # not bound
    return
  if names:
    import tasks.benchmark  # noqa: F401  (registers the benchmark's names with evaluation)


def _train() -> TrainResult:
  """The configured trainer (gin_utils.call_configured has parsed the gin flags)."""
  _load_benchmark_tasks()
  return gin_train()


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"unexpected arguments {argv[1:]} (gin settings go in --gin.KEY=VALUE)")
  if not flags.FLAGS["verbosity"].present:  # Orbax and TF log every file at INFO
    absl_logging.set_verbosity(absl_logging.WARNING)
  distributed.maybe_initialize(flags.FLAGS.distributed)
  try:
    with distributed.fail_fast():  # one process's error ends the job now, not at a timeout
      result = gin_utils.call_configured(_train, "train", errors=(NonFiniteError,))
  except KeyboardInterrupt:  # before the loop, or a second Ctrl-C: nothing new was saved
    print("interrupted: rerun the same command to resume from the last checkpoint", flush=True)
    sys.exit(130)
  if result.preempted:
    sys.exit(EXIT_CODES.get(result.stop_signal or "", 143))


def _define_flags() -> None:
  distributed.define_flag("")


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow (data only): no INFO lines
  _define_flags()
  gin_utils.run(main)
