"""The trainer's evaluator: held-out loss per language, plus benchmark tasks if asked for.

Held-out batches are read once and kept (the same batches at every eval, so evals compare).
Benchmark tasks go through `evaluation.evaluate` (the eval binary's loop) on one host; the
report lands in MODEL_DIR/benchmark/<step> and the scores in the eval metrics.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from polylm_jax.training import metrics as metrics_lib
from polylm_jax.config import PolyLMConfig
from polylm_jax.training.settings import EvalSpec
from polylm_jax.training.prepare import to_global


def resolve_benchmarks(spec: EvalSpec, num_hosts: int) -> list[Any]:
  """The benchmark tasks of `spec` (unknown names fail here, before any compute). Names need
  the task library (tasks.benchmark, imported by the binary) to have registered them."""
  if not spec.benchmark_tasks:
    return []
  if num_hosts > 1:
    raise ValueError(
      "EvalSpec.benchmark_tasks runs on one host only; evaluate multi-host runs "
      "with python -m polylm_jax.eval"
    )
  # Lazy: evaluation loads seqio and TensorFlow (vocabularies); a finished run reports
  # without them, and runs without benchmark tasks never need it.
  from polylm_jax import evaluation

  return evaluation.task_specs(spec.benchmark_tasks)


class Evaluator:
  """`run(step, params)`: eval loss and perplexity overall and per language (and benchmark
  scores), written to the eval metrics and logged; returns them."""

  def __init__(
    self,
    spec: EvalSpec,
    eval_langs: Mapping[str, Sequence[str]],
    languages: Sequence[str],
    batches: Callable[[Sequence[str]], Any],
    eval_step: Callable[..., dict],
    batch_shardings: Mapping[str, Any],
    out: metrics_lib.MetricsWriter,
    *,
    benchmark_names: Sequence[str] = (),
    model: tuple[PolyLMConfig, Any, Any] | None = None,
    model_dir: str = "",
  ):
    """batches(tasks): the held-out batches of one language's tasks on this host.
    model: (config, vocabulary, mesh) for the benchmark tasks."""
    self.spec, self.eval_langs, self.languages = spec, dict(eval_langs), tuple(languages)
    self._batches, self._eval_step, self._batch_sh = batches, eval_step, batch_shardings
    self.out, self.benchmark_names, self.model, self.model_dir = (
      out,
      list(benchmark_names),
      model,
      model_dir,
    )
    self._cache: dict[str, list[dict[str, np.ndarray]]] = {}

  def run(self, step: int, params: Any) -> dict[str, float]:
    t0 = time.perf_counter()
    n = len(self.languages)
    total = {"nll_sum": 0.0, "tokens": 0.0, "lang_nll_sum": np.zeros(n), "lang_tokens": np.zeros(n)}
    for lang, tasks in self.eval_langs.items():
      if lang not in self._cache:
        self._cache[lang] = list(self._batches(tasks))
      for b in self._cache[lang]:
        r = jax.device_get(self._eval_step(params, to_global(b, self._batch_sh)))
        for k in total:
          total[k] = total[k] + np.asarray(r[k], np.float64)
    res = metrics_lib.eval_summary(
      float(total["nll_sum"]),
      float(total["tokens"]),
      total["lang_nll_sum"],
      total["lang_tokens"],
      self.languages,
    )
    self.out.write("eval", step, res)
    per_lang = " ".join(
      f"{k.split('/')[1]} {v:.3f}" for k, v in res.items() if k.startswith("loss/")
    )
    self.out.log(
      f"eval step {step}: loss {res.get('loss', float('nan')):.4f} ppl "
      f"{res.get('perplexity', float('nan')):.1f} on {res['tokens']:,.0f} tokens "
      f"({time.perf_counter() - t0:.1f}s) | {per_lang}"
    )
    if self.benchmark_names:
      res = {**res, **self.run_benchmarks(step, params)}
    return res

  def run_benchmarks(self, step: int, params: Any) -> dict[str, float]:
    # Lazy, as in resolve_benchmarks: seqio and TensorFlow.
    from polylm_jax.evaluation import report as report_lib
    from polylm_jax import evaluation

    config, vocab, mesh = self.model
    t0 = time.perf_counter()
    r = evaluation.evaluate(
      config,
      params,
      vocab,
      self.benchmark_names,
      max_examples=self.spec.benchmark_max_examples,
      batch_size=self.spec.benchmark_batch_size,
      mesh=mesh,
    )
    scores = r.summary(prefix="benchmark")
    self.out.write("eval", step, scores)
    report = report_lib.write_report(r, os.path.join(self.model_dir, "benchmark", str(step)))
    self.out.log(
      f"benchmark step {step} ({time.perf_counter() - t0:.1f}s): "
      + ", ".join(f"{k.split('/', 1)[1]} {v:.2f}" for k, v in scores.items())
      + f" -> {report['markdown']}"
    )
    return scores
