"""The eval binary end to end: a saved tiny checkpoint (run dir and HF dir) on benchmark
tasks, the files it writes, and its errors."""

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from polylm_jax import checkpoints, hf
from polylm_jax.evaluation import report as report_lib
from polylm_jax import evaluation
from polylm_jax import eval as eval_bin
from polylm_jax import vocab as vocab_lib
from polylm_jax.inference_config import BenchmarkSpec, CheckpointSpec, GenerationSpec
from polylm_jax.config import get_config
from polylm_jax.model import init_params
from tasks import benchmark, benchmark_demo, templates

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_TASKS = (
  "polylm_eval_xcopa_it_1shot,polylm_eval_mtg_title_0shot,polylm_eval_flores_zh_en_0shot"
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  vocab = vocab_lib.get_vocabulary()
  config = get_config("polylm_tiny", vocab_size=vocab.vocab_size, max_len=128)
  params = init_params(config, jax.random.key(0))
  with checkpoints.CheckpointManager(
    root / "run", config, checkpoints.CheckpointPolicy(async_save=False)
  ) as m:
    m.save(3, params, force=True)
  hf.export_hf(config, jax.device_get(params), root / "hf")
  data = benchmark_demo.write_demo_data(str(root / "data"), n=3)
  return root, data


def _run(args, env=None):
  return subprocess.Popen(
    [sys.executable, "-m", "polylm_jax.eval", *args],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
  )


def test_binary_end_to_end(setup):
  root, data = setup
  out = root / "out"
  ok = _run(
    [
      "--gin_file=gin/runs/eval.gin",
      f'--gin.CHECKPOINT_PATH="{root / "run"}"',
      f'--gin.EVAL_OUTPUT_DIR="{out}"',
      f'--gin.MIXTURE_OR_TASK_NAME="{LOCAL_TASKS}"',
      f'--gin.EVAL_DATA_DIR="{data}"',
      "--gin.BATCH_SIZE=4",
      "--gin.GenerationSpec.max_new_tokens=4",
    ]
  )
  missing = _run(["--gin_file=gin/runs/eval.gin", f'--gin.EVAL_OUTPUT_DIR="{root / "x"}"'])
  stdout, stderr = ok.communicate(timeout=600)
  assert ok.returncode == 0, stderr[-3000:]
  err = missing.communicate(timeout=600)[1]
  assert missing.returncode != 0
  assert "CHECKPOINT_PATH" in err or "checkpoint_path" in err, err[-2000:]
  assert "Traceback" not in err

  names = benchmark.resolve_all(LOCAL_TASKS)
  assert len(names) == 6
  for name in names:
    assert f"{name}: " in stdout
    lines = report_lib.read_predictions(out / "predictions" / f"{name}.jsonl")
    assert len(lines) == 3 and all(line["task"] == name for line in lines)
  rows = report_lib.read_csv(out / "results.csv")
  assert {r["task"] for r in rows} == set(names)
  assert {(r["task"], r["metric"]) for r in rows if r["primary"] == "True"} == {
    (n, {"xcopa": "accuracy", "flores": "bleu"}.get(n.split("_")[2], "rougeL")) for n in names
  }
  md = (out / "results.md").read_text()
  for heading in ("## xcopa, 1-shot", "## mtg_title, 0-shot", "## flores, 0-shot"):
    assert heading in md
  assert "| **mean** |" in md and "BLEU tokenizer by pair: zh-en: 13a" in md
  png = (out / "results.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
  summary = json.loads((out / "results.json").read_text())
  assert [s["task"] for s in summary] == names
  config_gin = (out / "config.gin").read_text()
  assert "CheckpointSpec.path = %CHECKPOINT_PATH" in config_gin
  assert not list(out.rglob("*.tmp"))


def test_evaluate_checkpoint_on_an_hf_dir_with_tfds_tasks(setup, tmp_path):
  root, data = setup
  shutil.copy(vocab_lib.default_vocabulary_path(), root / "hf" / "tokenizer.model")
  with benchmark_demo.mock_tfds(3):
    results = eval_bin.evaluate(
      checkpoint=CheckpointSpec(str(root / "hf")),
      benchmark=BenchmarkSpec(
        "polylm_eval_xnli_fr_0shot,polylm_eval_tydiqa_en_0shot",
        data_dir=data,
        max_examples=2,
        template_overrides={"xnli": {"choices": (" yes", " maybe", " no")}},
      ),
      generation=GenerationSpec(batch_size=2, max_new_tokens=3),
      output_dir=str(tmp_path / "out"),
      print_fn=lambda *a: None,
    )
  assert templates.get_template("xnli").choices == (" yes", " maybe", " no")
  templates.reset_templates()
  xnli = results["polylm_eval_xnli_fr_0shot"]
  assert xnli.predictions[0]["choices"] == [" yes", " maybe", " no"]
  assert set(results["polylm_eval_tydiqa_en_0shot"].metrics) == {"f1", "exact_match"}
  assert (tmp_path / "out" / "results.png").exists()


def test_run_dir_and_hf_dir_give_the_same_scores(setup, tmp_path):
  root, data = setup
  common = dict(
    benchmark=BenchmarkSpec("polylm_eval_xcopa_vi_0shot", data_dir=data),
    generation=GenerationSpec(batch_size=4),
    print_fn=lambda *a: None,
    plot=False,
  )
  a = eval_bin.evaluate(
    checkpoint=CheckpointSpec(str(root / "run")), output_dir=str(tmp_path / "a"), **common
  )
  b = eval_bin.evaluate(
    checkpoint=CheckpointSpec(str(root / "hf")), output_dir=str(tmp_path / "b"), **common
  )
  sa = [p["scores"] for p in a.tasks[0].predictions]
  sb = [p["scores"] for p in b.tasks[0].predictions]
  np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-5)
  assert not (tmp_path / "a" / "results.png").exists()


def _evaluate(checkpoint, output_dir, tasks, vocab_path=None, **benchmark):
  return eval_bin.evaluate(
    checkpoint=CheckpointSpec(checkpoint, vocab_path=vocab_path),
    benchmark=BenchmarkSpec(tasks, **benchmark),
    generation=GenerationSpec(),
    output_dir=output_dir,
  )


def test_errors_before_any_work(setup, tmp_path):
  root, data = setup
  with pytest.raises(ValueError, match="unknown task or mixture 'polylm_eval_nope'"):
    _evaluate(str(tmp_path / "nothing"), str(tmp_path), "polylm_eval_nope")
  with pytest.raises(FileNotFoundError, match="no such directory"):
    _evaluate(str(tmp_path / "nothing"), str(tmp_path), "polylm_eval_xcopa_it_0shot")
  with pytest.raises(FileNotFoundError, match="VOCAB_PATH="):
    _evaluate(
      str(root / "run"),
      str(tmp_path),
      "polylm_eval_xcopa_it_0shot",
      data_dir=data,
      vocab_path=str(tmp_path / "none.model"),
    )
  with pytest.raises(ValueError, match="unknown template family"):
    _evaluate(
      str(root / "run"),
      str(tmp_path),
      "polylm_eval_xcopa_it_0shot",
      template_overrides={"nope": {"prompt": ""}},
    )
  with pytest.raises(ValueError, match="EVAL_OUTPUT_DIR is empty"):
    _evaluate(str(root / "run"), "", "polylm_eval_xcopa_it_0shot")


def test_report_files_are_replaced_whole(tmp_path):
  """A second report over the same dir replaces files; no temporary files stay behind."""
  task = evaluation.TaskResult(
    "polylm_eval_xcopa_it_0shot",
    "xcopa",
    "it",
    0,
    {"accuracy": 50.0},
    "accuracy",
    2,
    0,
    0.1,
    [{"id": "a", "choices": [" x", " y"]}, {"id": "b"}],
  )
  results = evaluation.EvalResults([task])
  report_lib.write_report(results, tmp_path)
  task.metrics["accuracy"] = 100.0
  report_lib.write_report(results, tmp_path)
  (row,) = list(csv.DictReader(open(tmp_path / "results.csv")))
  assert row["value"] == "100.0000"
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    "predictions",
    "results.csv",
    "results.json",
    "results.md",
    "results.png",
  ]
  with pytest.raises(ValueError, match="no task results"):
    report_lib.write_report(evaluation.EvalResults([]), tmp_path)


def test_prompt_set_is_chosen_in_the_binary_and_stated_in_the_report(setup, tmp_path):
  root, data = setup
  task = "polylm_eval_xcopa_zh_0shot"
  common = dict(
    checkpoint=CheckpointSpec(str(root / "run")),
    generation=GenerationSpec(batch_size=2),
    print_fn=lambda *a: None,
    plot=False,
  )
  try:
    english = eval_bin.evaluate(
      output_dir=str(tmp_path / "en"),
      benchmark=BenchmarkSpec(task, data_dir=data, max_examples=2, prompt_set="english"),
      **common,
    )
    default = eval_bin.evaluate(
      output_dir=str(tmp_path / "lm"),
      benchmark=BenchmarkSpec(task, data_dir=data, max_examples=2),
      **common,
    )
  finally:
    templates.reset_templates()
  en_prompt = english.tasks[0].predictions[0]["prompt"]
  lm_prompt = default.tasks[0].predictions[0]["prompt"]
  assert en_prompt != lm_prompt
  assert "因为" in lm_prompt or "所以" in lm_prompt
  for folder, name in (("en", "english"), ("lm", "lm_eval")):
    assert name in (tmp_path / folder / "results.md").read_text(encoding="utf-8")
  with pytest.raises(ValueError, match="unknown prompt set"):
    eval_bin.evaluate(
      output_dir=str(tmp_path / "x"), benchmark=BenchmarkSpec(task, prompt_set="engl"), **common
    )
