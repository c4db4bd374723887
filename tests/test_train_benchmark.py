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
  assert [bench._field_value(v) for v in ("6", "0.5", "True", "dots")] == [6, 0.5, True, "dots"]
  for bad in (["--runs=0"], ["--base_tree=/nonexistent"]):
    with pytest.raises(SystemExit):
      bench.parse_args(bad)


def test_train_step_ab_sides_repeat_and_each_is_timed():
  bench = _train_step_module()
  a = bench.parse_args(
    TINY_STEP.split()
    + ["--only=jax", "--ab_config", "scan_unroll=2", "--ab_config=remat_policy=full"]
    + ["--ab_option=xla_cpu_use_xnnpack=true"]
  )
  lines = []
  res = bench.run_once(a, log=lines.append)
  assert set(res) == {"jax", "jax+opt1", "jax+cfg1", "jax+cfg2"}
  assert all(r["steps"] == 2 for r in res.values())
  assert any(line.startswith("jax+cfg2:") and "(remat_policy=full)" in line for line in lines)
  with pytest.raises(SystemExit):
    bench.parse_args(["--ab_config=scan_unroll"])


def _gemm_ceiling_module():
  bench = _train_step_module()
  return bench._gemm_ceiling()


def test_gemm_ceiling_products_are_the_steps_training_flops():
  """The products listed for a step add up to the model's training FLOPs (6 N + attention),
  so the ceiling leaves none of the step's matrix work out."""
  from polylm_jax.config import PolyLMConfig, flops_per_token

  gc = _gemm_ceiling_module()
  cfg = PolyLMConfig(
    vocab_size=1000, num_layers=3, d_model=64, num_heads=4, head_dim=16, d_ff=256, max_len=32
  )
  products = gc.step_products(3, 64, 4, 256, 1000, 2, 32)
  flops = sum(count * 2 * m * k * n * (b[0] if b else 1) for _, count, b, m, k, n in products)
  # flops_per_token also counts biases and LayerNorm parameters (6 flops each per token).
  import flax.linen as nn
  from polylm_jax.model import abstract_params

  vectors = jax.tree_util.tree_leaves_with_path(nn.unbox(abstract_params(cfg)))
  not_products = sum(
    x.size for path, x in vectors if "bias" in str(path[-1]) or "scale" in str(path[-1])
  )
  assert flops == (flops_per_token(cfg, 32) - 6 * not_products) * 2 * 32


def test_gemm_ceiling_measures_and_describes_a_tiny_step():
  gc = _gemm_ceiling_module()
  products = gc.step_products(1, 32, 2, 128, 64, 2, 16)
  res = gc.measure(products, reps=1, with_torch=False)
  assert res["best_s"] == res["jax_s"] > 0 and res["torch_s"] == float("inf")
  assert len(gc.summarize_rows(res)) == len(products)
  lines = gc.describe(res, 32, {"jax": 0.5 * 32 / res["best_s"]})
  assert lines[-1].endswith("= 50% of the ceiling")
  assert gc.verdict([100.0, 300.0, 200.0], 150.0) == (
    "median ceiling 200 tok/s; 1.2x torch is 180 tok/s = 90% of the ceiling"
  )
  assert gc.verdict([100.0], 150.0).endswith("(out of reach: above what the products alone allow)")


def test_train_step_report_prints_each_runs_ceiling_and_the_verdict():
  bench = _train_step_module()
  gc = _gemm_ceiling_module()
  res = gc.measure(gc.step_products(1, 32, 2, 128, 64, 2, 16), reps=1, with_torch=False)
  run = {
    "jax": {"median": 90, "min": 89, "max": 91},
    "torch": {"median": 100, "min": 99, "max": 101},
    bench.CEILING: {**res, "best_s": 32 / 400},
  }
  lines = []
  out = bench.report([run], log=lines.append, tokens=32)
  assert out["ceiling"] == [400.0]
  assert any("ceiling: 400 tok/s" in line for line in lines)
  assert lines[-1] == "median ceiling 400 tok/s; 1.2x torch is 120 tok/s = 30% of the ceiling"
