"""The trainer's periodic eval also runs benchmark tasks when `benchmark_tasks` is set."""

import json
import os

import jax
import pytest

from polylm_jax.training import trainer
from polylm_jax.checkpoints import CheckpointPolicy
from polylm_jax.config import get_config
from polylm_jax.vocab import get_vocabulary
from polylm_jax.training.settings import DataSpec, EvalSpec, MeshSpec, OptimizerSpec, ReportSpec
from tasks import benchmark, benchmark_demo

TASKS = "polylm_eval_xcopa_it_0shot,polylm_eval_flores_zh_en_0shot"


def _train(tmp_path, **benchmark):
  vocab = get_vocabulary()
  config = get_config("polylm_tiny", vocab_size=vocab.vocab_size, max_len=128)
  return trainer.train(
    model_dir=str(tmp_path / "run"),
    model_config=config,
    train_steps=2,
    data=DataSpec("polylm_pretrain_stage1", {"targets": 32}, batch_size=8),
    mesh=MeshSpec(data=1),
    optimizer=OptimizerSpec(warmup_steps=1, decay_steps=1),
    checkpointing=CheckpointPolicy(save_every=0),
    eval=EvalSpec(period=2, steps=1, **benchmark),
    report=ReportSpec(log_period=1),
    devices=jax.devices()[:1],
    print_fn=lambda *a, **k: None,
  )


@pytest.mark.slow
def test_periodic_eval_runs_benchmark_tasks(tmp_path):
  data = benchmark_demo.write_demo_data(str(tmp_path / "data"), n=3)
  benchmark.configure(data_dir=data)
  res = _train(tmp_path, benchmark_tasks=TASKS, benchmark_max_examples=3, benchmark_batch_size=4)
  assert 0.0 <= res.eval["benchmark/polylm_eval_xcopa_it_0shot/accuracy"] <= 100.0
  assert "benchmark/polylm_eval_flores_zh_en_0shot/bleu" in res.eval
  report = os.path.join(res.model_dir, "benchmark", "2")
  assert os.path.exists(os.path.join(report, "results.md"))
  with open(os.path.join(report, "predictions", "polylm_eval_xcopa_it_0shot.jsonl")) as f:
    assert len([json.loads(line) for line in f]) == 3
  with open(os.path.join(res.model_dir, "metrics.jsonl")) as f:
    assert any("benchmark/polylm_eval_xcopa_it_0shot/accuracy" in line for line in f)
  with open(get_vocabulary().sentencepiece_model_file, "rb") as f:  # the run's tokenizer
    assert open(os.path.join(res.model_dir, "tokenizer.model"), "rb").read() == f.read()


def test_unknown_benchmark_task_fails_before_compute(tmp_path):
  with pytest.raises(ValueError, match="unknown task or mixture 'polylm_eval_nope'"):
    _train(tmp_path, benchmark_tasks="polylm_eval_nope")
  assert not os.path.exists(os.path.join(tmp_path, "run", "checkpoints"))
