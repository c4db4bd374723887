"""What the trainer tells the user: the per-step metrics (JSONL, TensorBoard, progress line),
the closing report (checkpoints, eval per language) and greedy continuations.

Steps are dispatched asynchronously: the reporter reads step s-1's metrics while step s runs,
so the host never stalls the device, except where it must wait anyway (the last step, evals).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from polylm_jax import decoding
from polylm_jax.training import metrics as metrics_lib
from polylm_jax.training.resume import Counters


class StepReporter:
  """Per-step metrics: every step goes to metrics.jsonl; every log_period steps (and the
  last) also to TensorBoard and the progress line, with throughput, MFU and the tokens seen
  per language. `losses` keeps every reported step's loss."""

  def __init__(
    self,
    out: metrics_lib.MetricsWriter,
    train_steps: int,
    log_period: int,
    throughput: metrics_lib.Throughput,
    mfu_args: tuple[float, int, float | None],
  ):
    """mfu_args: (model FLOPs per token, number of devices, peak FLOP/s per device)."""
    self.out, self.train_steps, self.log_period = out, train_steps, log_period
    self.throughput, self.mfu_args = throughput, mfu_args
    self.losses: dict[int, float] = {}
    self._pending: tuple[int, Any, dict] | None = None
    self._period_losses: list[float] = []
    self._timing = False

  def push(
    self, step: int, dev_metrics: Any, info: dict, counters: Counters, *, flush: bool
  ) -> list[tuple[int, int]]:
    """Queues `step` and reports the step before it (and this one too with flush).
    Returns (step, consecutive skips) of each step reported."""
    done = [self._report(*self._pending, counters)] if self._pending is not None else []
    self._pending = (step, dev_metrics, info)
    if flush:
      done.append(self.flush(counters))
    return done

  def flush(self, counters: Counters) -> tuple[int, int]:
    pending, self._pending = self._pending, None
    return self._report(*pending, counters)

  def restart(self, step: int) -> None:
    """After a rollback: the queued step is dropped and the throughput interval restarts."""
    self._pending = None
    self._period_losses.clear()
    self.throughput.start(step)

  @property
  def pending(self) -> bool:
    return self._pending is not None

  def _report(self, step: int, dev_metrics: Any, info: dict, counters: Counters) -> tuple[int, int]:
    m = jax.device_get(dev_metrics)
    self.losses[step] = float(m["loss"])
    counters.observe(m)
    record = {k: v for k, v in m.items() if np.ndim(v) == 0}
    record.update(info)
    self._period_losses.append(self.losses[step])
    if m["skipped"]:
      self.out.log(
        f"step {step}: non-finite loss/gradients: update skipped "
        f"({int(m['consecutive_skips'])} in a row, {int(m['skipped_steps'])} in all)"
      )
    if step % self.log_period == 0 or step == self.train_steps:
      record.update(self._period_summary(step, counters))
      self.out.write("train", step, record)
      self.out.log(metrics_lib.progress_line(step, self.train_steps, record))
    else:
      self.out.write("train", step, record, tensorboard=False)
    if not self._timing:  # time from the first finished step: compilation excluded
      self.throughput.start(step)
      self._timing = True
    return step, counters.consecutive_skips

  def _period_summary(self, step: int, counters: Counters) -> dict[str, Any]:
    summary: dict[str, Any] = dict(self.throughput.measure(step))
    finite = [x for x in self._period_losses if np.isfinite(x)]
    summary["loss_avg"] = float(np.mean(finite)) if finite else float("nan")
    self._period_losses.clear()
    tps = summary.get("tokens_per_second")
    mfu = metrics_lib.mfu(tps, *self.mfu_args) if tps else None
    if mfu is not None:
      summary["mfu"] = mfu
    summary.update({f"tokens_consumed/{k}": v for k, v in counters.tokens_consumed.items() if v})
    return summary


def final_report(
  out: metrics_lib.MetricsWriter,
  checkpoint_dir: str,
  steps: Sequence[int],
  last_eval: Mapping[str, float],
  languages: Sequence[str],
) -> None:
  """Where the checkpoints are and the last eval, overall and per language."""
  out.log(
    f"checkpoints: {checkpoint_dir} (steps {list(steps)}); load with "
    f"polylm_jax.load({os.path.dirname(checkpoint_dir)!r})"
  )
  if not last_eval:
    return
  out.log(
    f"eval loss {last_eval.get('loss', float('nan')):.4f} "
    f"(perplexity {last_eval.get('perplexity', float('nan')):.1f}); per language:"
  )
  for lang in languages:
    if f"loss/{lang}" in last_eval:
      out.log(
        f"  {lang}: loss {last_eval[f'loss/{lang}']:.4f}  "
        f"perplexity {last_eval[f'perplexity/{lang}']:.1f}"
      )


def last_eval(model_dir: str) -> dict[str, float]:
  """The last eval record in MODEL_DIR/metrics.jsonl ({} when there is none)."""
  try:
    evals = metrics_lib.read_jsonl(model_dir, "eval")
  except FileNotFoundError:
    return {}
  if not evals:
    return {}
  rec = dict(evals[max(evals)])
  for k in ("kind", "step"):
    rec.pop(k, None)
  return rec


def print_samples(out, config, params, vocab, prompts, max_new_tokens, mesh) -> None:
  """Greedy continuations of `prompts`, cut to fit the model's positions."""
  ids = [list(vocab.encode(p)) for p in prompts]
  max_new = min(max_new_tokens, config.max_len - max(map(len, ids)))
  if max_new < 1:
    out.log(f"no greedy continuations: the prompts fill the model's {config.max_len} positions")
    return
  new = decoding.generate(config, params, ids, max_new, mesh=mesh)
  out.log("greedy continuations:")
  for p, n in zip(prompts, new):
    out.log(f"  {p!r} -> {vocab.decode(n)!r}")
