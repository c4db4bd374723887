r"""The t5x-style evaluation binary: a checkpoint on benchmark tasks, with a report.

    python -m polylm_jax.eval --gin_file=gin/runs/eval.gin \
        --gin.CHECKPOINT_PATH=\"runs/demo\" --gin.EVAL_OUTPUT_DIR=\"runs/demo/eval\" \
        --gin.MIXTURE_OR_TASK_NAME=\"polylm_eval_understanding_0shot\" \
        --gin.EVAL_DATA_DIR=\"/data/polylm_benchmark\"

CHECKPOINT_PATH: a run dir, a checkpoint (step) dir or a Hugging Face model dir
(`polylm_jax.checkpoints.load`). MIXTURE_OR_TASK_NAME: benchmark tasks and/or mixtures,
comma-separated (tasks/benchmark.py lists the names). Writes the per-example predictions,
results.{md,csv,json}, results.png (polylm_jax/eval_report.py) and the operative gin config
to EVAL_OUTPUT_DIR.

`evaluate_checkpoint()` is a plain function; gin binds it as `evaluate` at this edge. The
evaluation itself is `polylm_jax.evaluation.evaluate`, which the trainer calls too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable

import jax

from polylm_jax import checkpoints, gin_utils, logs, partitioning

if TYPE_CHECKING:
  from polylm_jax import evaluation


def evaluate_checkpoint(
  *,
  checkpoint_path: str,
  output_dir: str,
  mixture_or_task_name: str | Sequence[str],
  vocab_path: str | None = None,
  data_dir: str | None = None,
  tfds_data_dir: str | None = None,
  paths: Mapping[str, str] | None = None,
  step: int | None = None,
  shot_seed: int = 0,
  max_examples: int | None = None,
  batch_size: int = 32,
  max_new_tokens: int | Mapping[str, int] | None = None,
  decode_settings: Mapping[str, Any] | None = None,
  prompt_set: str = "lm_eval",
  template_overrides: Mapping[str, Mapping[str, Any]] | None = None,
  bleu_tokenizers: Mapping[str, str] | None = None,
  prefix_eos: bool = True,
  mesh_data: int = -1,
  mesh_fsdp: int = 1,
  mesh_tensor: int = 1,
  plot: bool = True,
  print_fn: Callable[..., None] = print,
) -> evaluation.EvalResults:
  """Loads a checkpoint, evaluates it, writes the report; returns the results.

  vocab_path: the SentencePiece model (default: tokenizer.model beside the checkpoint, else
  the project's default vocabulary). data_dir / paths / tfds_data_dir: where the benchmark
  data lives (tasks/benchmark_data.py). prompt_set: one of tasks/templates.PROMPT_SETS. With
  one device no mesh is built; with several the params are sharded over a (data, fsdp,
  tensor) mesh and batches split over data.
  """
  # seqio/TensorFlow: only once the binary runs (and its console is set up)
  from polylm_jax import eval_report, evaluation
  from tasks import benchmark, templates

  if not checkpoint_path:
    raise ValueError("CHECKPOINT_PATH is empty: pass --gin.CHECKPOINT_PATH=\\\"/path\\\"")
  if not output_dir:
    raise ValueError("EVAL_OUTPUT_DIR is empty: pass --gin.EVAL_OUTPUT_DIR=\\\"/path\\\"")
  templates.use_prompt_set(prompt_set)  # 'lm_eval' (the harness's) or 'english'
  templates.apply_overrides(template_overrides or {})
  benchmark.configure(
    data_dir=data_dir,
    tfds_data_dir=tfds_data_dir,
    shot_seed=shot_seed,
    paths=dict(paths) if paths else None,
  )
  task_names = benchmark.resolve_all(mixture_or_task_name)  # unknown names fail before loading
  logs.check_output_dir(output_dir, "EVAL_OUTPUT_DIR")
  mesh = None
  if len(jax.devices()) > 1:
    mesh = partitioning.make_mesh(mesh_data, mesh_fsdp, mesh_tensor)
  config, params, vocab = checkpoints.load_for_inference(
    checkpoint_path, vocab_path, step=step, mesh=mesh, step_flag="--gin.evaluate.step"
  )
  print_fn(f"evaluating {checkpoint_path} on {len(task_names)} tasks")
  results = evaluation.evaluate(
    config,
    params,
    vocab,
    task_names,
    max_examples=max_examples,
    batch_size=batch_size,
    max_new_tokens=max_new_tokens,
    decode_settings=decode_settings,
    mesh=mesh,
    prefix_eos=prefix_eos,
    bleu_tokenizers=bleu_tokenizers,
  )
  eval_report.write_report(results, output_dir, plot=plot)
  gin_utils.write_operative_config(output_dir)  # the gin settings of this run, if any
  for t in results.tasks:
    print_fn(
      f"{t.task}: "
      + ", ".join(f"{k} {v:.2f}" for k, v in t.metrics.items())
      + f" ({t.num_examples} examples)"
    )
  print_fn(f"report: {os.path.join(output_dir, 'results.md')}")
  return results


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"unexpected arguments {argv[1:]} (gin settings go in --gin.KEY=VALUE)")
  gin_utils.call_configured(gin_evaluate, "evaluate")


gin_evaluate = gin_utils.configurable(evaluate_checkpoint, "evaluate")

if __name__ == "__main__":
  gin_utils.run(main)
