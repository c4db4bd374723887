r"""The t5x-style evaluation binary: a checkpoint on benchmark tasks, with a report.

    python -m polylm_jax.eval --gin_file=gin/runs/eval.gin \
        --gin.CHECKPOINT_PATH=\"runs/demo\" --gin.EVAL_OUTPUT_DIR=\"runs/demo/eval\" \
        --gin.MIXTURE_OR_TASK_NAME=\"polylm_eval_understanding_0shot\" \
        --gin.EVAL_DATA_DIR=\"/data/polylm_benchmark\"

It parses the gin flags, gin builds the settings (`evaluate.checkpoint = @CheckpointSpec()`,
`evaluate.benchmark = @BenchmarkSpec()`, `evaluate.generation = @GenerationSpec()`,
`evaluate.mesh = @MeshSpec()`; see gin/runs/eval.gin and polylm_jax/inference_config.py), it
hands BenchmarkSpec's data and prompt settings to the task library (tasks/, which only a
binary imports) and calls one library function, `checkpoint_lib.evaluate_checkpoint`.
MIXTURE_OR_TASK_NAME: benchmark tasks and/or mixtures, comma-separated (tasks/benchmark.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable

from absl import flags

from polylm_jax import distributed, gin_utils, inference_config
from polylm_jax.inference_config import BenchmarkSpec, CheckpointSpec, GenerationSpec
from polylm_jax.training.settings import MeshSpec

if TYPE_CHECKING:
  from polylm_jax import evaluation


def evaluate(
  *,
  checkpoint: CheckpointSpec,
  benchmark: BenchmarkSpec,
  generation: GenerationSpec,
  output_dir: str,
  mesh: MeshSpec = MeshSpec(),
  plot: bool = True,
  print_fn: Callable[..., None] = print,
) -> evaluation.EvalResults:
  """The binary's entry point: configures the task library, then evaluates the checkpoint."""
  # seqio/TensorFlow: only once the binary runs (and its console is set up)
  from polylm_jax.evaluation import checkpoint as checkpoint_lib
  from tasks import benchmark as task_library
  from tasks import templates

  templates.use_prompt_set(benchmark.prompt_set)  # 'lm_eval' (the harness's) or 'english'
  templates.apply_overrides(benchmark.template_overrides)
  task_library.configure(
    data_dir=benchmark.data_dir,
    tfds_data_dir=benchmark.tfds_data_dir,
    shot_seed=benchmark.shot_seed,
    paths=benchmark.paths or None,
  )
  return checkpoint_lib.evaluate_checkpoint(
    checkpoint=checkpoint,
    benchmark=benchmark,
    generation=generation,
    output_dir=output_dir,
    mesh=mesh,
    plot=plot,
    print_fn=print_fn,
  )


def _register_gin():
  """gin at the edge: the library function and its settings stay plain Python."""
  for cls in inference_config.SPECS:
    gin_utils.configurable(cls, cls.__name__)
  return gin_utils.configurable(evaluate, "evaluate")


gin_evaluate = _register_gin()


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"unexpected arguments {argv[1:]} (gin settings go in --gin.KEY=VALUE)")
  distributed.maybe_initialize(flags.FLAGS.distributed)
  with distributed.fail_fast():  # one process's error ends the job now, not at a timeout
    gin_utils.call_configured(gin_evaluate, "evaluate")


def _define_flags() -> None:
  distributed.define_flag("; each process scores its share")


if __name__ == "__main__":
  _define_flags()
  gin_utils.run(main)
