"""The eval binary on 2 real processes (localhost): one report, with the 1-process scores."""

import json

import jax
import numpy as np
import pytest

from polylm_jax import checkpoints
from polylm_jax import vocab as vocab_lib
from polylm_jax.config import get_config
from polylm_jax.evaluation import report as report_lib
from polylm_jax.model import init_params
from tasks import benchmark, benchmark_demo
from test_infer_multiprocess import finish, of, start

# A rank task (XCOPA) and generation tasks (MTG: ROUGE, FLORES: BLEU), 3 examples each: the
# shares are uneven (process 0 scores examples 0 and 2, process 1 example 1).
TASKS = "polylm_eval_xcopa_it_1shot,polylm_eval_mtg_title_0shot,polylm_eval_flores_zh_en_0shot"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval_mp")
  vocab = vocab_lib.get_vocabulary()
  config = get_config("polylm_tiny", vocab_size=vocab.vocab_size, max_len=128)
  with checkpoints.CheckpointManager(
    root / "run", config, checkpoints.CheckpointPolicy(async_save=False)
  ) as m:
    m.save(3, init_params(config, jax.random.key(0)), force=True)
  return root, benchmark_demo.write_demo_data(str(root / "data"), n=3)


def _args(root, data, out):
  return [
    "--gin_file=gin/runs/eval.gin",
    f'--gin.CHECKPOINT_PATH="{root / "run"}"',
    f'--gin.EVAL_OUTPUT_DIR="{out}"',
    f'--gin.MIXTURE_OR_TASK_NAME="{TASKS}"',
    f'--gin.EVAL_DATA_DIR="{data}"',
    "--gin.BATCH_SIZE=4",
    "--gin.GenerationSpec.max_new_tokens=4",
  ]


def _numbers_close(a, b):
  """Equal JSON values, floats within fp32 rounding (the shares batch differently)."""
  if isinstance(a, float) or isinstance(b, float):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  elif isinstance(a, dict):
    assert a.keys() == b.keys()
    for k in a:
      _numbers_close(a[k], b[k])
  elif isinstance(a, list):
    assert len(a) == len(b)
    for x, y in zip(a, b):
      _numbers_close(x, y)
  else:
    assert a == b


def _untimed(path):
  return [
    {k: v for k, v in task.items() if k != "seconds"} for task in json.loads(path.read_text())
  ]


def test_two_processes_write_one_report_with_the_one_process_scores(setup):
  root, data = setup
  one = start("polylm_jax.eval", _args(root, data, root / "one"))
  two = start("polylm_jax.eval", _args(root, data, root / "two"), processes=2)
  [(rc, out, err)] = finish(one)
  assert rc == 0, err[-3000:]
  [(rc, out2, err2)] = finish(two)
  assert rc == 0, err2[-3000:]

  names = benchmark.resolve_all(TASKS)
  for name in names:
    expected = report_lib.read_predictions(root / "one" / "predictions" / f"{name}.jsonl")
    got = report_lib.read_predictions(root / "two" / "predictions" / f"{name}.jsonl")
    assert len(got) == 3
    _numbers_close(got, expected)  # same examples, same order, same predictions and scores
  for report in ("results.csv", "results.md"):
    assert (root / "two" / report).read_text() == (root / "one" / report).read_text()
  summary, expected = (_untimed(root / run / "results.json") for run in ("two", "one"))
  assert [s["task"] for s in summary] == names and summary == expected  # metrics, notes, ...
  assert (root / "two" / "results.png").exists() and (root / "two" / "config.gin").exists()
  summary_lines = [line for line in out.splitlines() if line.startswith("polylm_eval_")]
  assert len(summary_lines) == len(names)
  assert [line for line in of(0, out2) if line.startswith("polylm_eval_")] == summary_lines
  assert not [line for line in of(1, out2) if "polylm_eval_" in line or "report:" in line]


def test_a_bad_flag_is_one_line_and_no_process_hangs(setup):
  root, data = setup
  bad = '--gin.MIXTURE_OR_TASK_NAME="polylm_eval_nosuch"'
  [(rc, _, err)] = finish(start("polylm_jax.eval", [*_args(root, data, root / "bad"), bad], 2))
  assert rc != 0  # within finish's timeout
  lines = [line for line in of(0, err) if line.startswith("error: ")]
  assert len(lines) == 1 and "polylm_eval_nosuch" in lines[0], err[-2000:]
  assert "launch: process " in err and "Traceback" not in err
