"""The infer binary: JSONL and SeqIO prompts, project and HF checkpoints, clear errors."""

import json
import os
import subprocess
import sys

import gin
import jax
import pytest

from polylm_jax import checkpoints, decoding, gin_utils, hf, infer, inference
from polylm_jax.inference_config import CheckpointSpec, GenerationSpec, PromptSpec
from polylm_jax.config import get_config
from polylm_jax.model import init_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="module")
def vocab():
  from polylm_jax import vocab as vocab_lib

  return vocab_lib.get_vocabulary()


@pytest.fixture(scope="module")
def model(vocab):
  config = get_config("polylm_tiny", vocab_size=vocab.vocab_size)
  return config, init_params(config, jax.random.key(0))


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory):
  config, params = model
  path = tmp_path_factory.mktemp("run")
  with checkpoints.CheckpointManager(path, config) as manager:
    manager.save(3, params, force=True)
  return path


def _write_prompts(path, lines):
  path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
  return path


def test_binary_end_to_end_jsonl(run_dir, model, vocab, tmp_path):
  prompts = _write_prompts(
    tmp_path / "prompts.jsonl",
    [
      {"id": "a", "prompt": "Hello world"},
      {"prompt": "Bonjour"},
      "",
      {"id": 7, "instruction": "Translate to German", "input": "good morning"},
    ],
  )
  out = tmp_path / "out"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device: no mesh
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "polylm_jax.infer",
      "--gin_file=runs/infer.gin",
      f'--gin.CHECKPOINT_PATH="{run_dir}"',
      f'--gin.INFER_OUTPUT_DIR="{out}"',
      f'--gin.INFER_INPUT_FILE="{prompts}"',
      "--gin.INFER_MAX_NEW_TOKENS=5",
      "--gin.BATCH_SIZE=2",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in (out / infer.OUTPUT_FILE).read_text().splitlines()]
  assert [r["id"] for r in rows] == ["a", 1, 7]
  assert rows[2]["prompt"] == "good morning\nTranslate to German\n\n"  # MultiAlpaca format
  config, params = model
  expected = decoding.generate_text(config, params, vocab, [r["prompt"] for r in rows], 5)
  assert [r["output"] for r in rows] == expected
  assert all(r["num_tokens"] <= 5 for r in rows)
  assert "INFER_MAX_NEW_TOKENS = 5" in (out / "config.gin").read_text()


def test_hf_dir_and_seqio_task_with_beam_search(model, vocab, tmp_path):
  import seqio
  import tensorflow as tf

  config, params = model
  hf_dir = tmp_path / "hf"
  hf.export_hf(config, params, hf_dir)
  texts = ["The cat", "Ein Hund läuft", "x"]
  name = "test_infer_prompts"
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(
      lambda split, shuffle_files: tf.data.Dataset.from_tensor_slices(
        {"inputs": texts, "targets": ["t0", "t1", "t2"]}
      ),
      splits=["validation"],
    ),
    preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
    output_features={
      "inputs": seqio.Feature(vocab, add_eos=True),
      "targets": seqio.Feature(vocab, add_eos=True),
    },
  )
  path = inference.run_inference(
    checkpoint=CheckpointSpec(str(hf_dir)),
    prompts=PromptSpec(mixture_or_task_name=name),
    generation=GenerationSpec(preset="beam", max_new_tokens=4, batch_size=2),
    output_dir=str(tmp_path / "out"),
    print_fn=lambda *a: None,
  )
  rows = [json.loads(l) for l in open(path)]
  assert [r["prompt"] for r in rows] == texts and [r["target"] for r in rows] == ["t0", "t1", "t2"]
  expected = decoding.generate_text(config, params, vocab, texts, 4, **decoding.DEMO_BEAM)
  assert [r["output"] for r in rows] == expected


def test_gin_typos_and_missing_values_are_named(tmp_path):
  with pytest.raises(ValueError, match="max_new_tokns"):
    gin_utils.parse_gin(["runs/infer.gin"], ["GenerationSpec.max_new_tokns = 3"])
  gin.clear_config()
  with pytest.raises(ValueError, match="CHECKPOINT_PATH.*not subsequently overridden"):
    gin_utils.parse_gin(["runs/infer.gin"], [f"INFER_OUTPUT_DIR = '{tmp_path}'"])


def test_bad_inputs(tmp_path, model):
  bad = _write_prompts(tmp_path / "bad.jsonl", [{"prompt": "ok"}, "{not json"])
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
    inference.read_jsonl_prompts(str(bad))
  nokey = _write_prompts(tmp_path / "nokey.jsonl", [{"text": "hi"}])
  with pytest.raises(ValueError, match=r"nokey.jsonl:1: needs a string field 'prompt'"):
    inference.read_jsonl_prompts(str(nokey))
  with pytest.raises(FileNotFoundError, match="INFER_INPUT_FILE"):
    inference.read_jsonl_prompts(str(tmp_path / "missing.jsonl"))
  with pytest.raises(ValueError, match="exactly one prompt source"):
    PromptSpec()
  config, _ = model
  records = [{"id": "long", "ids": list(range(3, 3 + 62))}]
  with pytest.raises(ValueError, match="record 'long'.*62 tokens.*truncate_prompts"):
    inference.fit_prompts(config, records, 8, truncate=False)
  assert inference.fit_prompts(config, records, 8, truncate=True) == 1
  assert records[0]["ids"] == list(range(3 + 62 - 56, 3 + 62))  # the last 56 tokens kept
