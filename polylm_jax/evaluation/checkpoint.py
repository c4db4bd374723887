"""A checkpoint on the benchmark, with a report: what `python -m polylm_jax.eval` runs.

`evaluate_checkpoint` loads a checkpoint (inference_config.CheckpointSpec), scores it with
`evaluation.evaluate` (the loop the trainer calls too) and writes the per-example predictions,
results.{md,csv,json}, results.png (report_lib.py) and the operative gin config. Task names
resolve through the task library's resolver (tasks/benchmark.py registers it on import, and
the eval binary applies BenchmarkSpec's data and prompt settings to it first).
"""

from __future__ import annotations

import os
from typing import Callable

from polylm_jax import gin_utils, logs
from polylm_jax.evaluation import report as report_lib
from polylm_jax import evaluation
from polylm_jax.inference_config import BenchmarkSpec, CheckpointSpec, GenerationSpec
from polylm_jax.training.settings import MeshSpec


def evaluate_checkpoint(
  *,
  checkpoint: CheckpointSpec,
  benchmark: BenchmarkSpec,
  generation: GenerationSpec,
  output_dir: str,
  mesh: MeshSpec = MeshSpec(),
  plot: bool = True,
  print_fn: Callable[..., None] = print,
) -> evaluation.EvalResults:
  """Loads the checkpoint, evaluates it, writes the report; returns the results.

  Unknown task names and an unwritable output folder fail before the model is loaded. With
  one device no mesh is built; with several the params are sharded over `mesh` and batches
  split over its data axis.
  """
  if not output_dir:
    raise ValueError('EVAL_OUTPUT_DIR is empty: pass --gin.EVAL_OUTPUT_DIR=\\"/path\\"')
  specs = evaluation.task_specs(benchmark.tasks)
  logs.check_output_dir(output_dir, "EVAL_OUTPUT_DIR")
  config, params, vocab, device_mesh = checkpoint.load(mesh)
  print_fn(f"evaluating {checkpoint.path} on {len(specs)} tasks")
  results = evaluation.evaluate(
    config,
    params,
    vocab,
    specs,
    max_examples=benchmark.max_examples,
    batch_size=generation.batch_size,
    max_new_tokens=generation.max_new_tokens,
    decode_settings=generation.overrides(),
    mesh=device_mesh,
    prefix_eos=benchmark.prefix_eos,
    bleu_tokenizers=benchmark.bleu_tokenizers,
  )
  report_lib.write_report(results, output_dir, plot=plot)
  gin_utils.write_operative_config(output_dir)  # the gin settings of this run, if any
  for t in results.tasks:
    metrics = ", ".join(f"{k} {v:.2f}" for k, v in t.metrics.items())
    print_fn(f"{t.task}: {metrics} ({t.num_examples} examples)")
  print_fn(f"report: {os.path.join(output_dir, 'results.md')}")
  return results
