"""What the binaries print (issue 11, "Quiet, useful output"): the lines each binary writes on
a tiny checkpoint, kept small; `--verbosity=0` brings the library logs back; the stderr filter
drops only the known C++ noise.

Measured before polylm_jax.logs (the same commands): infer 49 lines, eval 52, chat 53,
self_instruct 55, tokenizer demo 1.
"""

import json
import os
import subprocess
import sys

import jax
import pytest

from polylm_jax import checkpoints
from polylm_jax import vocab as vocab_lib
from polylm_jax.config import get_config
from polylm_jax.model import init_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {
  **{k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL")},
  "JAX_PLATFORMS": "cpu",
}


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
  from tasks import benchmark_demo

  root = tmp_path_factory.mktemp("console")
  vocab = vocab_lib.get_vocabulary()
  config = get_config("polylm_tiny", vocab_size=vocab.vocab_size, max_len=128)
  policy = checkpoints.CheckpointPolicy(async_save=False)
  with checkpoints.CheckpointManager(root / "run", config, policy) as manager:
    trainer = {"trainer": {"vocabulary": vocab_lib.fingerprint(vocab)}}
    manager.save(3, init_params(config, jax.random.key(0)), stream_state=trainer, force=True)
  vocab_lib.save_tokenizer(vocab, root / "run")
  benchmark_demo.write_demo_data(str(root / "data"), n=2)
  (root / "prompts.jsonl").write_text(json.dumps({"prompt": "Hello"}) + "\n")
  return root


def _lines(args, stdin=None):
  proc = subprocess.run(
    [sys.executable, "-m", *args],
    input=stdin,
    cwd=REPO,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout.splitlines(), proc.stderr.splitlines()


def _infer(root, *extra):
  return _lines(
    [
      "polylm_jax.infer",
      "--gin_file=runs/infer.gin",
      f'--gin.CHECKPOINT_PATH="{root / "run"}"',
      f'--gin.INFER_OUTPUT_DIR="{root / "infer"}"',
      f'--gin.INFER_INPUT_FILE="{root / "prompts.jsonl"}"',
      "--gin.INFER_MAX_NEW_TOKENS=4",
      *extra,
    ]
  )


def test_each_binary_prints_a_few_lines(fixture):
  root = fixture
  counts = {}
  out, err = _infer(root)
  counts["infer"] = len(out) + len(err)
  assert err == [] and out[-1].startswith("wrote 1 generations to ")
  out, err = _lines(
    [
      "polylm_jax.eval",
      "--gin_file=runs/eval.gin",
      f'--gin.CHECKPOINT_PATH="{root / "run"}"',
      f'--gin.EVAL_OUTPUT_DIR="{root / "eval"}"',
      '--gin.MIXTURE_OR_TASK_NAME="polylm_eval_xcopa_it_1shot"',
      f'--gin.EVAL_DATA_DIR="{root / "data"}"',
      "--gin.BATCH_SIZE=4",
    ]
  )
  counts["eval"] = len(out) + len(err)
  assert err == [] and out[-1].startswith("report: ")
  out, err = _lines(
    ["polylm_jax.chat", f"--checkpoint={root / 'run'}", "--preset=greedy", "--format=plain"],
    stdin="Hello\n/quit\n",
  )
  counts["chat"] = len(out) + len(err)
  assert err == [] and "(the default --max_new_tokens=256 does not fit" in out[1]
  out, err = _lines(
    [
      "polylm_jax.self_instruct",
      "--teacher=model",
      f"--checkpoint={root / 'run'}",
      "--languages=es",
      "--rounds=1",
      "--requests_per_round=1",
      f"--output_dir={root / 'si'}",
    ]
  )
  counts["self_instruct"] = len(out) + len(err)
  assert err == [] and "does not fit the teacher model's 128 positions" in out[0]
  out, err = _lines(
    ["polylm_jax.convert", f"--from_checkpoint={root / 'run'}", f"--to_hf={root / 'hf'}"]
  )
  counts["convert"] = len(out) + len(err)
  assert err == [] and (root / "hf" / "tokenizer.model").exists()
  print("output lines per binary:", counts)
  limits = {"infer": 2, "eval": 3, "chat": 8, "self_instruct": 10, "convert": 2}
  assert all(counts[k] <= limits[k] for k in limits), counts


def test_verbosity_brings_the_library_logs_back(fixture):
  out, err = _infer(fixture, "--verbosity=0")
  assert len(err) > 10 and any("checkpoint" in line.lower() for line in err)


def test_stderr_filter_drops_only_known_noise():
  code = (
    "import os, sys\n"
    "from polylm_jax import logs\n"
    "logs.setup()\n"
    "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are "
    "written to STDERR\\n')\n"
    "os.write(2, b'I0000 00:00:1796025917.272692    9436 port.cc:153] oneDNN custom ops\\n')\n"
    "os.write(2, b'E0000 00:00:1796025918.279827    9436 cuda_platform.cc:52] failed call to "
    "cuInit: INTERNAL\\n')\n"
    "os.write(2, b'normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty.\\n')\n"
    "os.write(2, b'E0000 00:00:1.0  1 other.cc:1] a real error\\n')\n"
    "import logging\n"
    "logging.warning('Given directory is read only=/x')\n"
    "logging.warning('a warning that needs action')\n"
    "print('partial', end='', file=sys.stderr)\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0
  assert proc.stderr.splitlines() == [
    "E0000 00:00:1.0  1 other.cc:1] a real error",
    "WARNING:root:a warning that needs action",
    "partial",
  ], proc.stderr
