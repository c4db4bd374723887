"""benchmarks/gpu_check.py without a GPU: the dry run compiles every part and prints the
plan; the GPU code path (timing, MFU, the HBM bound, the summary lines) runs on CPU."""

import importlib.util
import json
import os

import pytest

from polylm_jax import decoding
from polylm_jax.config import count_params, get_config

_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "gpu_check.py")
_spec = importlib.util.spec_from_file_location("gpu_check", _PATH)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)

TINY = ["--model=polylm_tiny", "--seq=64", "--batch=4", "--prompt_len=8", "--new_tokens=8"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("gpu_check") / "dry.json"
  lines = []
  results = gpu_check.main(
    [*TINY, "--dry_run", f"--json_out={out}"], print_fn=lambda *a, **k: lines.append(a[0])
  )
  return results, lines, json.loads(out.read_text())


@pytest.mark.slow
def test_dry_run_compiles_every_part_and_prints_the_plan(dry_run):
  results, lines, saved = dry_run
  assert set(results) == set(gpu_check.PARTS) and saved["dry_run"] is True
  assert not [p for p, r in results.items() if "error" in r], results
  text = "\n".join(lines)
  assert "DRY RUN" in text and "polylm_tiny" in text
  for attention in ("xla", "cudnn"):
    assert f"plan: train {attention}: the first that fits of: remat " in text
  xla, cudnn = results["train_xla"], results["train_cudnn"]
  # Both variants are lowered for CUDA; only cudnn's carries cuDNN's fused attention.
  assert xla["lowered_for"] == cudnn["lowered_for"] == ["cuda"]
  assert cudnn["cudnn_fused_attention"] and not xla["cudnn_fused_attention"]
  assert cudnn["cudnn_mask_types"] == ["CAUSAL"]  # forward and backward skip the upper half
  assert xla["compiled_for"] == "cpu" and xla["compiled_peak_bytes"] > 0
  assert (xla["remat"], xla["micro_batch"]) == ("dots_no_batch", 4)  # TRAIN_PLAN cut to --batch
  assert (
    "train cudnn: remat dots_no_batch, micro-batch 4 x 64 (1 microbatches): lowered for CUDA"
    in text
  )
  for batch in ("1", "8"):  # JSON keys; which jitted functions generate calls is decoding's
    compiled = saved["results"]["decode"]["batches"][batch]["compiled"]
    assert compiled and all(c["fn"].startswith(("decoding.", "decode_stack.")) for c in compiled)
    assert max(c["peak_bytes"] for c in compiled) > 0
  assert "  batch 8: compiled decoding." in text


@pytest.mark.slow
def test_dry_run_leaves_decoding_and_cudnn_check_as_they_were(dry_run):
  from jax._src.cudnn import fused_attention_stablehlo as fa

  assert hasattr(decoding._generate_sample, "lower")  # the jitted function is back
  with pytest.raises(RuntimeError, match="cuDNN"):
    fa.check_cudnn_version()


@pytest.mark.slow
def test_gpu_code_path_runs_on_cpu():
  """The parts' real path (init, warm-up, timed steps, MFU, decode timing, bound)."""
  # A bandwidth far above any CPU's, so the tiny model's decode (in cache) stays under its
  # bound on a fast, quiet machine too (at 1e11 it reached 1.02 of it).
  a = gpu_check.parse_args(
    [*TINY, "--steps=2", "--warmup=1", "--decode_batches=1", "--runs=2", "--hbm_bandwidth=1e13"]
  )
  train = gpu_check.run_part("train_xla", a, dry=False)
  assert "error" not in train, train
  assert train["tokens_per_s"]["min"] <= train["tokens_per_s"]["median"] > 0
  assert 0 < train["mfu"]["median"] < 1 and train["skipped"] == []
  line = gpu_check.format_train(train, dry=False, seq=64)[0]
  assert line.startswith("train xla: ") and "remat dots_no_batch, micro-batch 4 x 64" in line
  decode = json.loads(json.dumps(gpu_check.run_part("decode", a, dry=False)))  # as from a child
  assert "error" not in decode, decode
  assert 0 < decode["batches"]["1"]["bound_fraction"] < 1
  lines = gpu_check.format_decode(decode, dry=False)
  assert lines[1].startswith("  batch 1: ") and "of the HBM bound" in lines[1]


def test_decode_bound_counts_weights_once_per_token_plus_the_filled_cache():
  cfg = get_config("polylm_tiny", dtype="bfloat16")
  b = gpu_check.decode_bound(cfg, prompt_len=8, new_tokens=4, bandwidth=1e9)
  weights = 2 * (count_params(cfg) - (cfg.max_len - 1) * cfg.d_model)
  per_pos = 2 * 2 * cfg.num_layers * cfg.num_heads * cfg.head_dim
  cache = per_pos * (8 + 9 + 10 + 11)
  assert b["weight_bytes"] == weights
  assert b["tokens_per_s"] == pytest.approx(4 * 1e9 / (5 * weights + cache))
  big = gpu_check.decode_bound(get_config("polylm_1_7b"), 128, 256, 4.8e12)
  assert 1300 < big["tokens_per_s"] < 1400  # 3.4 GB per token at 4.8 TB/s


def test_hbm_bandwidth_by_device_kind():
  assert gpu_check.hbm_bandwidth("NVIDIA H200") == 4.8e12
  assert gpu_check.hbm_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
  assert gpu_check.hbm_bandwidth("NVIDIA H100 PCIe") == 2.0e12
  assert gpu_check.hbm_bandwidth("NVIDIA GH200 480GB") == 4.0e12
  assert gpu_check.hbm_bandwidth("cpu") is None
  assert gpu_check.hbm_bandwidth("cpu", 1e12) == 1e12


def test_train_plan_and_bad_flags():
  a = gpu_check.parse_args([])
  assert gpu_check.train_plan(a, "cudnn") == list(gpu_check.TRAIN_PLAN["cudnn"])
  assert gpu_check.train_plan(gpu_check.parse_args(["--batch=8"]), "xla") == [
    ("dots_no_batch", 8),
    ("dots_no_batch", 4),
    ("full", 8),
  ]
  forced = gpu_check.parse_args(["--remat=full", "--micro_batch=8"])
  assert gpu_check.train_plan(forced, "xla") == [("full", 8)]
  with pytest.raises(SystemExit, match="--batch=16 is not a multiple of the micro-batch 3"):
    gpu_check.train_plan(gpu_check.parse_args(["--remat=full", "--micro_batch=3"]), "xla")
  for bad in (["--remat=full"], ["--parts=train_xla,nope"]):
    with pytest.raises(SystemExit):
      gpu_check.parse_args(bad)


def test_failed_part_is_one_line():
  lines = gpu_check.format_train({"attention": "cudnn", "error": "boom"}, dry=False, seq=2048)
  assert lines == ["train cudnn: FAILED: boom"]
  assert gpu_check.format_decode({"error": "x"}, dry=True) == ["decode: FAILED: x"]


@pytest.mark.slow
def test_a_part_runs_in_its_own_process_and_answers_one_json_line():
  argv = [*TINY, "--decode_batches=1", "--runs=1", "--new_tokens=4", "--hbm_bandwidth=1e13"]
  res = gpu_check._subprocess_part("decode", argv, timeout=600)
  assert "error" not in res, res
  assert res["batches"]["1"]["tokens_per_s"]["median"] > 0 and res["part_s"] > 0
  assert gpu_check._subprocess_part("decode", argv, timeout=0.01) == {
    "error": "timed out after 0 s (--budget_s)"
  }
