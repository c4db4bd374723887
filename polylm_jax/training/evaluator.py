"""The trainer's evaluator: held-out loss per language, plus benchmark tasks if asked for.

Held-out batches are read once and kept (the same batches at every eval, so evals compare).
Benchmark tasks go through `evaluation.evaluate` (the eval binary's loop; on several
processes each scores a share of the examples, as the eval binary does); the report lands in
MODEL_DIR/benchmark/<step> and the scores in the eval metrics.
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
from polylm_jax.training.prepare import to_global, whole_on_this_process


def resolve_benchmarks(spec: EvalSpec) -> list[Any]:
  """The benchmark tasks of `spec` (unknown names fail here, before any compute). Names need
  the task library (tasks.benchmark, imported by the binary) to have registered them."""
  if not spec.benchmark_tasks:
    return []
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
    settings = dict(
      max_examples=self.spec.benchmark_max_examples,
      batch_size=self.spec.benchmark_batch_size,
      max_new_tokens=None,
      decode_settings=None,
      mesh=mesh,
      prefix_eos=True,
      bleu_tokenizers=None,
    )
    if jax.process_count() == 1:
      r = evaluation.evaluate(config, params, vocab, self.benchmark_names, **settings)
    else:  # every process scores its share of the examples with the whole model, as eval does
      r = _evaluate_on_every_process(config, params, vocab, self.benchmark_names, settings)
    scores = r.summary(prefix="benchmark")
    self.out.write("eval", step, scores)
    where = os.path.join(self.model_dir, "benchmark", str(step))
    if jax.process_index() == 0:
      where = report_lib.write_report(r, where)["markdown"]
    self.out.log(
      f"benchmark step {step} ({time.perf_counter() - t0:.1f}s): "
      + ", ".join(f"{k.split('/', 1)[1]} {v:.2f}" for k, v in scores.items())
      + f" -> {where}"
    )
    return scores


def _evaluate_on_every_process(config, params, vocab, specs, settings):
  """Benchmarks of a multi-process run: the params gathered whole to every process, each
  scoring its share of the examples on its own devices (evaluation.checkpoint.evaluate_shares,
  the eval binary's way); all processes get the same results. The gather costs one copy of
  the params in host memory per process and one sharded over its devices, once per eval
  (prepare.whole_on_this_process)."""
  from polylm_jax.evaluation import checkpoint as eval_checkpoint

  whole, local = whole_on_this_process(params)
  return eval_checkpoint.evaluate_shares(config, whole, vocab, specs, {**settings, "mesh": local})
