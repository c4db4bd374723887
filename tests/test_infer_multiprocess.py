"""The infer binary on 2 real processes (localhost): the same outputs as 1 process, and an
error on one process stops both at once."""

import json
import os
import socket
import subprocess
import sys

import jax
import pytest

from polylm_jax import checkpoints
from polylm_jax import vocab as vocab_lib
from polylm_jax.config import get_config
from polylm_jax.model import init_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300


def start(module, args, processes=1, launcher=True):
  """`python -m module args` (or `python module args` for a .py file) as `processes`
  processes of one JAX job, 1 CPU device each: through `polylm_jax.launch` (one Popen, its
  children's lines prefixed `[i] `), or started here with the JAX_* variables (one Popen each)
  as a cluster without the launcher would start them."""
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
  }
  command = [sys.executable, *([module] if module.endswith(".py") else ["-m", module]), *args]
  if processes > 1 and launcher:
    command = [
      sys.executable,
      "-m",
      "polylm_jax.launch",
      f"--processes={processes}",
      "--devices_per_process=1",
      f"--module={module}",
      "--",
      *args,
    ]
  elif processes > 1:
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes))
  return [
    subprocess.Popen(
      command,
      cwd=REPO,
      env={**env, "JAX_PROCESS_ID": str(i)} if processes > 1 and not launcher else env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(1 if launcher else processes)
  ]


def finish(procs):
  """[(returncode, stdout, stderr)] of each Popen."""
  outs = [p.communicate(timeout=TIMEOUT) for p in procs]
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def of(process, text):
  """The lines process `process` wrote, from the launcher's prefixed output."""
  prefix = f"[{process}] "
  return [line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  vocab = vocab_lib.get_vocabulary()
  config = get_config("polylm_tiny", vocab_size=vocab.vocab_size)
  path = tmp_path_factory.mktemp("run")
  with checkpoints.CheckpointManager(
    path, config, checkpoints.CheckpointPolicy(async_save=False)
  ) as manager:
    manager.save(3, init_params(config, jax.random.key(0)), force=True)
  return path


def _args(run_dir, prompts, out):
  return [
    "--gin_file=runs/infer.gin",
    f'--gin.CHECKPOINT_PATH="{run_dir}"',
    f'--gin.INFER_OUTPUT_DIR="{out}"',
    f'--gin.INFER_INPUT_FILE="{prompts}"',
    "--gin.INFER_MAX_NEW_TOKENS=5",
    "--gin.BATCH_SIZE=2",
  ]


def test_two_processes_write_what_one_writes(run_dir, tmp_path):
  # 7 prompts of different lengths, batches of 2: process 0 generates batches 0 and 2,
  # process 1 batches 1 and 3 (the last, of one prompt); the file keeps the input order.
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text(
    "".join(
      json.dumps({"id": f"p{i}", "prompt": "Hello " * (i % 4 + 1) + f"number {i}"}) + "\n"
      for i in range(7)
    )
  )
  one = start("polylm_jax.infer", _args(run_dir, prompts, tmp_path / "one"))
  two = start("polylm_jax.infer", _args(run_dir, prompts, tmp_path / "two"), processes=2)
  [(rc, out, err)] = finish(one)
  assert rc == 0, err[-3000:]
  [(rc, out2, err2)] = finish(two)
  assert rc == 0, err2[-3000:]
  expected = (tmp_path / "one" / "outputs.jsonl").read_text()
  assert (tmp_path / "two" / "outputs.jsonl").read_text() == expected
  rows = [json.loads(line) for line in expected.splitlines()]
  assert [r["id"] for r in rows] == [f"p{i}" for i in range(7)]
  assert len({r["output"] for r in rows}) > 1  # outputs differ by prompt: order is checked
  # "generating for 7 prompts ...", "wrote 7 generations to ...", from process 0 only
  assert _printed(of(0, out2)) == _printed(out.replace("/one/", "/two/").splitlines())
  assert _printed(of(1, out2)) == []


def _printed(lines):
  return [line for line in lines if not line.startswith("[Gloo]")]  # Gloo's connection note


def test_an_error_on_one_process_stops_both(run_dir, tmp_path):
  # Only process 0 writes, so only it checks the output folder (here under a file): it fails
  # with the folder's error, process 1 names process 0, and neither waits for the other,
  # without a launcher to stop them (as under Slurm or on a TPU slice).
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "Hello"}\n')
  (tmp_path / "file").write_text("")
  out = tmp_path / "file" / "out"
  procs = start("polylm_jax.infer", _args(run_dir, prompts, out), 2, launcher=False)
  (rc0, _, err0), (rc1, _, err1) = finish(procs)
  assert rc0 != 0 and rc1 != 0
  assert "error: INFER_OUTPUT_DIR: " in err0 and "is not writable" in err0, (
    err0[-2000:],
    err1[-2000:],
  )
  assert "error: process 0 of 2 failed: INFER_OUTPUT_DIR: " in err1, err1[-2000:]
  assert "Traceback" not in err0 + err1
