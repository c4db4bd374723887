r"""The t5x-style inference binary: prompts in, JSONL generations out.

    python -m polylm_jax.infer --gin_file=gin/runs/infer.gin \
        --gin.CHECKPOINT_PATH=\"runs/demo\" --gin.INFER_OUTPUT_DIR=\"runs/demo/infer\" \
        --gin.INFER_INPUT_FILE=\"prompts.jsonl\"

It parses the gin flags, gin builds the settings (`infer.checkpoint = @CheckpointSpec()`,
`infer.prompts = @PromptSpec()`, `infer.generation = @GenerationSpec()`, `infer.mesh =
@MeshSpec()`; see gin/runs/infer.gin and polylm_jax/inference_config.py) and it calls one
library function, `polylm_jax.inference.run_inference`. With MIXTURE_OR_TASK_NAME it first
imports the project's task library (which registers the SeqIO tasks).
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import flags

from polylm_jax import distributed, gin_utils, inference, inference_config
from polylm_jax.inference import OUTPUT_FILE, run_inference
from polylm_jax.inference_config import CheckpointSpec, GenerationSpec, PromptSpec
from polylm_jax.training.settings import MeshSpec

__all__ = ["OUTPUT_FILE", "infer", "main", "run_inference"]


def infer(
  *,
  checkpoint: CheckpointSpec,
  prompts: PromptSpec,
  generation: GenerationSpec,
  output_dir: str,
  mesh: MeshSpec = MeshSpec(),
) -> str:
  """The binary's entry point: registers the tasks a SeqIO prompt source needs, then runs."""
  if prompts.mixture_or_task_name:
    import tasks  # noqa: F401  (registers the project's SeqIO tasks and mixtures)
  return inference.run_inference(
    checkpoint=checkpoint, prompts=prompts, generation=generation, output_dir=output_dir, mesh=mesh
  )


def _register_gin():
  """gin at the edge: the library function and its settings stay plain Python."""
  for cls in inference_config.SPECS:
    gin_utils.configurable(cls, cls.__name__)
  return gin_utils.configurable(infer, "infer")


gin_infer = _register_gin()


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"unexpected arguments {argv[1:]} (gin settings go in --gin.KEY=VALUE)")
  distributed.maybe_initialize(flags.FLAGS.distributed)
  with distributed.fail_fast():  # one process's error ends the job now, not at a timeout
    gin_utils.call_configured(gin_infer, "infer")


def _define_flags() -> None:
  distributed.define_flag("; each process scores its share")


if __name__ == "__main__":
  _define_flags()
  gin_utils.run(main)
