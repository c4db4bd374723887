"""The trainer loop's named parts, each on its own: hooks, stop signals, counters, the step
reporter, the non-finite guard and the evaluator. End-to-end runs are in test_train.py."""

import os
import signal
import types

import numpy as np
import pytest

from polylm_jax.training import metrics
from polylm_jax.training import evaluator as evaluator_lib
from polylm_jax.training import trainer
from polylm_jax.training.settings import EvalSpec, NonFinitePolicy
from polylm_jax.training.evaluator import Evaluator
from polylm_jax.training.reporter import StepReporter, final_report, last_eval
from polylm_jax.training.resume import Counters, NonFiniteError, NonFiniteGuard, nan_weights

LANGS = ("zh", "en", "sw")


def test_hooks_run_every_n_steps_and_after_the_last():
  calls = []
  hooks = trainer.Hooks()
  hooks.add_hook(lambda step, state: calls.append(("a", step)), every=3)
  hooks.add_hook(lambda step, state: calls.append(("b", step)), every=4, at_end=False)
  hooks.add_hook(lambda step, state: calls.append(("never", step)), every=0)
  for step in range(1, 8):
    final = step == 7
    assert hooks.due(step, final) == (step in (3, 4, 6, 7))
    hooks.run(step, None, final)
  assert calls == [("a", 3), ("b", 4), ("a", 6), ("a", 7)]
  with pytest.raises(ValueError, match="every must be >= 0"):
    hooks.add_hook(print, every=-1)


def test_stop_signals_record_sigterm_and_sigint_then_restore_handlers():
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with trainer.StopSignals() as signals:
    assert signals.received is None
    os.kill(os.getpid(), signal.SIGTERM)
    assert signals.received == "SIGTERM"
  with trainer.StopSignals() as signals:
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: save and stop, no KeyboardInterrupt
    assert signals.received == "SIGINT"
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C: at once
      os.kill(os.getpid(), signal.SIGINT)
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def _metrics(loss, lang_tokens=(1.0, 2.0, 3.0), skipped=False, consecutive=0, total=0):
  return {
    "loss": np.float32(loss),
    "lang_tokens": np.asarray(lang_tokens, np.float32),
    "skipped": np.bool_(skipped),
    "skipped_steps": np.int32(total),
    "consecutive_skips": np.int32(consecutive),
    "learning_rate": np.float32(1e-3),
  }


def test_counters_observe_save_and_load_added_languages():
  c = Counters("vocab:1", LANGS)
  c.observe(_metrics(1.0, consecutive=2, total=5))
  assert c.tokens_consumed == {"zh": 1.0, "en": 2.0, "sw": 3.0}
  assert (c.skipped_steps, c.consecutive_skips) == (5, 2)
  saved = c.to_json()
  c.observe(_metrics(1.0))
  assert saved["tokens_consumed"]["sw"] == 3.0  # a copy: a background save is not changed
  restored = Counters("vocab:1", (*LANGS, "xx"))  # a language added since the save
  restored.load({k: v for k, v in saved.items() if k != "version"})
  assert restored.tokens_consumed == {"zh": 1.0, "en": 2.0, "sw": 3.0, "xx": 0.0}
  assert restored.skipped_steps == 5


def test_step_reporter_reads_a_step_late_logs_every_period_and_flushes():
  logs = []
  out = metrics.MetricsWriter(None, print_fn=lambda m, **k: logs.append(m))
  reporter = StepReporter(out, 4, 2, metrics.Throughput(100, 4), (6.0, 1, None))
  c = Counters("v", LANGS)
  assert reporter.push(1, _metrics(3.0), {"stage": 0}, c, flush=False) == []
  assert reporter.push(2, _metrics(2.0), {"stage": 0}, c, flush=False) == [(1, 0)]
  assert reporter.pending and reporter.losses == {1: 3.0}
  reported = reporter.push(
    3, _metrics(np.nan, skipped=True, consecutive=1, total=1), {}, c, flush=True
  )
  assert reported == [(2, 0), (3, 1)] and not reporter.pending
  assert [m for m in logs if m.startswith("step 2/4")]  # the progress line at log_period
  assert "step 3: non-finite loss/gradients: update skipped (1 in a row, 1 in all)" in logs
  assert reporter.losses[2] == 2.0 and np.isnan(reporter.losses[3])
  reporter.push(4, _metrics(1.0), {}, c, flush=False)
  reporter.restart(3)  # a rollback drops the queued step
  assert not reporter.pending and 4 not in reporter.losses
  assert c.tokens_consumed["sw"] == 9.0


def test_streak_end_is_the_last_step_at_the_limit():
  assert trainer._streak_end([(5, 2), (6, 3)], 3) == 6
  assert trainer._streak_end([(5, 3), (6, 0)], 3) == 5
  assert trainer._streak_end([(5, 1)], 3) == 0


def _guard(action, latest=None, max_rollbacks=5):
  manager = types.SimpleNamespace(
    latest_step=lambda: latest, wait_until_finished=lambda: None, directory="/run/checkpoints"
  )
  logs = []
  policy = NonFiniteGuard(
    NonFinitePolicy(action=action, max_rollbacks=max_rollbacks),
    types.SimpleNamespace(manager=manager),
    logs.append,
  )
  return policy, logs


def test_nonfinite_guard_continue_stop_and_nothing_to_roll_back_to():
  c = Counters("v", LANGS)
  c.consecutive_skips = 3
  guard, logs = _guard("continue")
  assert guard.act(c, "state", 10, 9) == ("state", 10, False, None)  # go on at step 10
  assert "3 consecutive non-finite steps (steps 7-9)" in logs[0]
  with pytest.raises(NonFiniteError, match="nonfinite_policy='stop'"):
    _guard("stop")[0].act(c, "state", 10, 9)
  with pytest.raises(NonFiniteError, match="no checkpoint to roll back to in /run/checkpoints"):
    _guard("rollback")[0].act(c, "state", 10, 9)
  c.rollbacks = 2
  with pytest.raises(NonFiniteError, match="already rolled back 2 times"):
    _guard("rollback", latest=4, max_rollbacks=2)[0].act(c, "state", 10, 9)


def test_nan_weights_only_for_the_listed_batches():
  batch = {"loss_weights": np.ones((2, 3), np.float32)}
  nan_weights(batch, 1, (2,))
  assert np.all(batch["loss_weights"] == 1)
  nan_weights(batch, 2, (2,))
  assert np.all(np.isnan(batch["loss_weights"]))


def test_evaluator_sums_per_language_and_reads_held_out_data_once(tmp_path, monkeypatch):
  reads = []

  def batches(tasks):
    reads.append(tuple(tasks))
    return [{"lang": np.asarray(tasks[0])}]

  def eval_step(params, batch):  # zh: 2 nats over 4 tokens; sw: 9 over 3
    i = {"zh": 0, "sw": 2}[str(batch["lang"])]
    lang_nll, lang_tokens = np.zeros(3), np.zeros(3)
    lang_nll[i], lang_tokens[i] = (2.0, 4.0) if i == 0 else (9.0, 3.0)
    return {
      "nll_sum": lang_nll.sum(),
      "tokens": lang_tokens.sum(),
      "lang_nll_sum": lang_nll,
      "lang_tokens": lang_tokens,
    }

  logs = []
  out = metrics.MetricsWriter(str(tmp_path), print_fn=lambda m, **k: logs.append(m))
  ev = Evaluator(
    EvalSpec(period=1), {"zh": ("zh",), "sw": ("sw",)}, LANGS, batches, eval_step, {}, out
  )
  monkeypatch.setattr(evaluator_lib, "to_global", lambda b, sh: b)  # numpy, no devices here
  for step in (5, 10):
    res = ev.run(step, params=None)
  out.close()
  assert reads == [("zh",), ("sw",)]  # cached after the first eval
  assert res["loss"] == pytest.approx(11 / 7) and res["loss/sw"] == pytest.approx(3.0)
  assert "loss/en" not in res
  assert logs[-1].startswith("eval step 10: loss 1.5714") and "sw 3.000" in logs[-1]
  assert last_eval(str(tmp_path))["loss/zh"] == pytest.approx(0.5)
  final_report(out, str(tmp_path / "checkpoints"), [10], res, LANGS)
  assert "  sw: loss 3.0000  perplexity 20.1" in logs
