"""Fine-tuning on tiny data and on a few languages (issue 11, defects 3 and 12): with 10
records per language the 'validation' split (every 100th record) used to be empty and the
final eval died in TensorFlow; each file now holds out its last record, so training, the
final eval and the rerun all work. Only three MultiAlpaca files are present: the selection
'polylm_multialpaca_present' trains those three (the default mixture needs all 11)."""

import json

import gin
import jax
import pytest

from polylm_jax import checkpoints as ckpt_lib
from polylm_jax import gin_utils
from polylm_jax import vocab as vocab_lib
from polylm_jax.config import get_config
from polylm_jax.model import init_params


def _finetuner(tmp_path, monkeypatch, langs, records):
  """A function that fine-tunes polylm_tiny for 2 steps on `records` records per language."""
  from polylm_jax import train as train_lib
  from tasks import instructions

  data = tmp_path / "multialpaca"
  data.mkdir()
  for lang in langs:
    with open(data / f"{lang}.jsonl", "w", encoding="utf-8") as f:
      for i in range(records):
        f.write(json.dumps({"instruction": f"{lang} {i}?", "input": None, "output": "OK."}) + "\n")
  monkeypatch.setenv(instructions.DATA_DIR_ENV, str(data))
  vocab = vocab_lib.get_vocabulary()
  config = get_config("polylm_tiny", vocab_size=vocab.vocab_size)
  init_dir = tmp_path / "pretrained"
  with ckpt_lib.CheckpointManager(init_dir, config) as manager:
    manager.save(0, init_params(config, jax.random.key(0)), force=True)

  def finetune():
    gin.clear_config()
    try:
      gin_utils.parse_gin(
        ["models/polylm_tiny.gin", "runs/finetune.gin"],
        [
          f"MODEL_DIR = '{tmp_path / 'finetuned'}'",
          f"CHECKPOINT_PATH = '{init_dir}'",
          "TRAIN_STEPS = 2",
          "BATCH_SIZE = 8",
          "TASK_FEATURE_LENGTHS = {'targets': 32}",
          "COMPUTE_DTYPE = 'float32'",
          f"polylm.PolyLMConfig.vocab_size = {vocab.vocab_size}",
          "ReportSpec.sample_prompts = []",
          "MIXTURE_OR_TASK_NAME = 'polylm_multialpaca_present'",
        ],
      )
      logs = []
      result = train_lib.gin_train(print_fn=lambda *a, **k: logs.append(" ".join(map(str, a))))
    finally:
      gin.clear_config()
    return result, "\n".join(logs)

  return finetune


@pytest.mark.slow
def test_ten_records_in_three_languages_train_eval_and_rerun(tmp_path, monkeypatch):
  langs = ("es", "ja", "th")
  finetune = _finetuner(tmp_path, monkeypatch, langs, records=10)
  result, _ = finetune()
  assert result.step == 2
  # the final eval ran on the one held-out record of each language present, and no other
  assert {k for k in result.eval if k.startswith("loss/")} == {f"loss/{lang}" for lang in langs}
  result, text = finetune()  # the rerun reports the finished run
  assert result.step == 2 and "nothing to do" in text


@pytest.mark.slow
def test_one_record_per_language_trains_without_eval_and_says_so(tmp_path, monkeypatch):
  finetune = _finetuner(tmp_path, monkeypatch, ("es", "ja"), records=1)
  result, text = finetune()
  assert result.step == 2
  assert "no held-out records in any language: training without eval" in text
  assert not [k for k in result.eval if k.startswith("loss/")]
