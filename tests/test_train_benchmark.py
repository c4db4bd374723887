"""Benchmarks and training: the trainer's periodic eval also runs benchmark tasks when
`benchmark_tasks` is set; benchmarks/train_step.py (the JAX step vs PyTorch) runs and reports."""

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


# -- benchmarks/train_step.py (JAX step vs PyTorch) ------------------------------------------

_TRAIN_STEP = os.path.join(
  os.path.dirname(os.path.dirname(__file__)), "benchmarks", "train_step.py"
)
TINY_STEP = "--layers=1 --d_model=32 --heads=2 --vocab=128 --seq=16 --batch=2 --steps=2 --warmup=1"


def _train_step_module():
  import importlib.util

  spec = importlib.util.spec_from_file_location("train_step_benchmark", _TRAIN_STEP)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_train_step_benchmark_times_this_tree_and_a_base_tree_against_torch():
  bench = _train_step_module()
  repo = os.path.dirname(os.path.dirname(__file__))
  lines = []
  a = bench.parse_args(TINY_STEP.split() + ["--runs=1", f"--base_tree={repo}"])
  res = bench.run_once(a, log=lines.append)
  assert set(res) == {"jax", "jax_base", "torch"}
  assert all(r["steps"] == 2 and r["min"] <= r["median"] <= r["max"] for r in res.values())
  loss = next(line for line in lines if line.startswith("after warm-up, loss"))
  assert loss.count("jax ") == 1 and "jax_base " in loss and "torch " in loss
  assert any("threads" in line and line.startswith("torch ") for line in lines)
  from polylm_jax.training import step  # this tree's modules are back in place

  assert step is bench.ts and os.path.dirname(step.__file__).startswith(repo)


def test_train_step_report_puts_runs_side_by_side_with_the_median_over_runs():
  bench = _train_step_module()
  run = lambda j, t: {
    "jax": {"median": j, "min": j - 1, "max": j + 1},
    "torch": {"median": t, "min": t - 1, "max": t + 1},
  }
  lines = []
  out = bench.report([run(120, 100), run(90, 100), run(150, 100)], log=lines.append)
  assert out["jax/torch"] == {"median": 1.2, "min": 0.9, "max": 1.5}
  assert out["torch"]["median"] == 100
  assert len(lines) == 5 and lines[1].startswith("1 ") and lines[1].rstrip().endswith("1.20x")
  assert lines[-1].startswith("median of 3 runs: jax 120 tok/s (90-150); torch 100 tok/s")
  assert "jax/torch 1.20x (0.90-1.50x)" in lines[-1]


def test_train_step_child_runs_drop_runs_and_bad_flags_fail():
  bench = _train_step_module()
  assert bench._child_argv(["--runs", "3", "--steps=4", "--runs=2"]) == [
    "--steps=4",
    "--runs=1",
    "--json",
  ]
  for bad in (["--runs=0"], ["--base_tree=/nonexistent"]):
    with pytest.raises(SystemExit):
      bench.parse_args(bad)
