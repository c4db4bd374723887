"""A checkpoint on the benchmark, with a report: what `python -m polylm_jax.eval` runs.

`evaluate_checkpoint` loads a checkpoint (inference_config.CheckpointSpec), scores it with
`evaluation.evaluate` (the loop the trainer calls too) and writes the per-example predictions,
results.{md,csv,json}, results.png (report_lib.py) and the operative gin config. Task names
resolve through the task library's resolver (tasks/benchmark.py registers it on import, and
the eval binary applies BenchmarkSpec's data and prompt settings to it first).

In a multi-process run every process loads the model onto its own devices and scores the
examples i with i % process_count == its index; the predictions meet in one exchange, every
metric is computed over all of them, and process 0 writes the one report.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, Callable

import jax
import numpy as np

from polylm_jax import evaluation, gin_utils, host_shares, logs
from polylm_jax.evaluation import metrics as metrics_lib
from polylm_jax.evaluation import report as report_lib
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
  split over its data axis. With several processes, each scores its share of the examples
  (see the module docstring); all of them return the same results.
  """
  if not output_dir:
    raise ValueError('EVAL_OUTPUT_DIR is empty: pass --gin.EVAL_OUTPUT_DIR=\\"/path\\"')
  writer = host_shares.is_writer()
  if not writer:
    print_fn = _quiet
  specs = host_shares.agree(lambda: _precheck(benchmark, output_dir, writer))
  config, params, vocab, device_mesh = host_shares.agree(lambda: checkpoint.load(mesh))
  print_fn(f"evaluating {checkpoint.path} on {len(specs)} tasks")
  settings = dict(
    max_examples=benchmark.max_examples,
    batch_size=generation.batch_size,
    max_new_tokens=generation.max_new_tokens,
    decode_settings=generation.overrides(),
    mesh=device_mesh,
    prefix_eos=benchmark.prefix_eos,
    bleu_tokenizers=benchmark.bleu_tokenizers,
  )
  if jax.process_count() == 1:
    results = evaluation.evaluate(config, params, vocab, specs, **settings)
  else:
    results = evaluate_shares(config, params, vocab, specs, settings)
  if writer:
    report_lib.write_report(results, output_dir, plot=plot)
    gin_utils.write_operative_config(output_dir)  # the gin settings of this run, if any
  for t in results.tasks:
    metrics = ", ".join(f"{k} {v:.2f}" for k, v in t.metrics.items())
    print_fn(f"{t.task}: {metrics} ({t.num_examples} examples)")
  print_fn(f"report: {os.path.join(output_dir, 'results.md')}")
  return results


def _precheck(benchmark: BenchmarkSpec, output_dir: str, writer: bool) -> list[evaluation.TaskSpec]:
  specs = evaluation.task_specs(benchmark.tasks)
  if writer:  # only process 0 writes
    logs.check_output_dir(output_dir, "EVAL_OUTPUT_DIR")
  return specs


def _quiet(*args: Any, **kwargs: Any) -> None:
  """print_fn of processes other than 0: one summary per run."""


def evaluate_shares(
  config, params, vocab, specs: Sequence[evaluation.TaskSpec], settings: dict[str, Any]
) -> evaluation.EvalResults:
  """This process's share of every task, evaluated; then all shares gathered and merged.

  `params` must be whole on this process's devices (settings["mesh"] spans them); the
  trainer's periodic benchmarks call this too, with its params gathered to every host."""
  count, me = jax.process_count(), jax.process_index()

  def local() -> dict[str, Any]:
    mine = []
    for spec in specs:
      share = list(spec.load(settings["max_examples"]))[me::count]
      if share:  # a process with no example of a task skips it
        mine.append(dataclasses.replace(spec, load=lambda n, share=share: share))
    done = evaluation.evaluate(config, params, vocab, mine, **settings) if mine else None
    return {
      t.task: {k: getattr(t, k) for k in ("predictions", "num_truncated", "seconds", "notes")}
      for t in (done.tasks if done else [])
    }

  parts = host_shares.gather_shares(host_shares.agree(local))
  return evaluation.EvalResults([_merge(spec, parts, settings) for spec in specs])


def _merge(
  spec: evaluation.TaskSpec, parts: list[dict[str, Any]], settings: dict[str, Any]
) -> evaluation.TaskResult:
  """One task's result from every process's share: example i came from process i % count;
  the metrics are computed over all examples, as `evaluation.evaluate` computes them."""
  shares = [part.get(spec.name) for part in parts]
  have = [s for s in shares if s is not None]
  if not have:
    raise ValueError(f"task {spec.name}: no examples to evaluate")
  streams = [iter(s["predictions"] if s else []) for s in shares]
  n = sum(len(s["predictions"]) for s in have)
  predictions = [next(streams[i % len(shares)]) for i in range(n)]
  notes = dict(have[0]["notes"])
  if spec.kind == "rank":
    predicted = np.array([p["prediction"] for p in predictions])
    labels = np.array([p["label"] for p in predictions])
    metrics = {"accuracy": metrics_lib.accuracy(predicted, labels)}
  else:
    texts = [p["prediction"] for p in predictions]
    refs = [p["references"] for p in predictions]
    metrics, _ = evaluation.generation_metrics(
      spec, texts, refs, settings["bleu_tokenizers"], notes
    )
  return evaluation.TaskResult(
    spec.name,
    spec.family,
    spec.lang,
    spec.shots,
    metrics,
    spec.primary_metric,
    n,
    sum(s["num_truncated"] for s in have),
    max(s["seconds"] for s in have),
    predictions,
    notes,
    evaluation.conventions(
      spec, prefix_eos=settings["prefix_eos"], decode_settings=settings["decode_settings"]
    ),
  )
