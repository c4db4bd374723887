"""The convert binary: HF -> Orbax checkpoint -> HF, lossless, refusing to overwrite."""

import os
import subprocess
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (SPEC 9)

import jax
import numpy as np
import pytest
import torch
import transformers

from polylm_jax import checkpoints, convert, hf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory):
  torch.manual_seed(3)
  config = transformers.GPT2Config(
    vocab_size=300,
    n_positions=32,
    n_embd=32,
    n_layer=2,
    n_head=2,
    activation_function="gelu_fast",
    bos_token_id=1,
    eos_token_id=2,
  )
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("hf")
  model.save_pretrained(path)
  return path, model


def test_import_then_export_is_lossless(hf_model_dir, tmp_path):
  src, model = hf_model_dir
  report = convert.convert(from_hf=str(src), to=str(tmp_path / "run"))
  assert report.num_params == sum(p.numel() for p in model.transformer.parameters())
  assert report.peak_rss_bytes > 0 and "parameters" in str(report)
  assert checkpoints.complete_steps(tmp_path / "run" / "checkpoints") == [0]

  config, params = checkpoints.load(tmp_path / "run")
  _, imported = hf.import_hf(src)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(imported)):
    np.testing.assert_array_equal(np.asarray(a), b)

  convert.convert(from_checkpoint=str(tmp_path / "run"), to_hf=str(tmp_path / "back"))
  reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
  tokens = torch.randint(0, 300, (2, 20))
  with torch.no_grad():
    # The source says gelu_fast, the export gelu_new: the same tanh GeLU, written differently.
    np.testing.assert_allclose(
      reloaded(tokens).logits.numpy(), model(tokens).logits.numpy(), atol=1e-5
    )
  exported = hf.import_hf(tmp_path / "back")[1]
  for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(imported)):
    np.testing.assert_array_equal(a, b)


def test_refuses_to_overwrite_and_needs_one_direction(hf_model_dir, tmp_path):
  src, _ = hf_model_dir
  convert.convert(from_hf=str(src), to=str(tmp_path / "run"), step=5)
  with pytest.raises(FileExistsError, match="already holds a checkpoint for step 5"):
    convert.convert(from_hf=str(src), to=str(tmp_path / "run"), step=5)
  with pytest.raises(FileExistsError, match="already holds a model"):
    convert.convert(from_checkpoint=str(tmp_path / "run"), to_hf=str(src))
  with pytest.raises(ValueError, match="either --from_hf and --to"):
    convert.convert(from_hf=str(src), to_hf=str(tmp_path / "x"))
  with pytest.raises(
    hf.HFFormatError,
    match="vocab_size gives vocab_size = 300 but the expected config has vocab_size = 512",
  ):
    convert.convert(from_hf=str(src), to=str(tmp_path / "run2"), expected="polylm_tiny")


def test_binary(hf_model_dir, tmp_path):
  src, _ = hf_model_dir
  cmd = [
    sys.executable,
    "-m",
    "polylm_jax.convert",
    f"--from_hf={src}",
    f"--to={tmp_path / 'run'}",
    "--param_dtype=bfloat16",
  ]
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert "import:" in done.stdout and "parameters, bfloat16" in done.stdout
  config, params = checkpoints.load(tmp_path / "run")
  assert config.param_dtype == "bfloat16" and params["wte"].dtype == jax.numpy.bfloat16

  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1
  assert "convert: error:" in done.stderr and "already holds a checkpoint" in done.stderr
