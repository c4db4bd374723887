"""Metrics: peak FLOP/s per device kind, MFU, the progress line, eval summaries, writers."""

import glob
import json
import math
import os
import types

import jax
import pytest

from polylm_jax.training import metrics


def _device(kind, platform="gpu"):
  return types.SimpleNamespace(device_kind=kind, platform=platform)


@pytest.mark.parametrize(
  "kind,peak",
  [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("TPU v4", 275e12),
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
  ],
)
def test_peak_flops_per_device_kind(kind, peak, monkeypatch):
  monkeypatch.delenv("POLYLM_PEAK_FLOPS", raising=False)
  value, source = metrics.device_peak_flops(_device(kind, "tpu" if "TPU" in kind else "gpu"))
  assert value == peak and kind in source


def test_peak_flops_cpu_is_nominal_and_shared_by_host_devices(monkeypatch):
  monkeypatch.delenv("POLYLM_PEAK_FLOPS", raising=False)
  value, source = metrics.device_peak_flops(jax.devices()[0])
  n = len(jax.local_devices())
  assert value == pytest.approx(os.cpu_count() * 32 * 3.5e9 / n)
  assert "nominal" in source and f"/ {n} devices" in source


def test_peak_flops_unknown_kind_and_overrides(monkeypatch):
  monkeypatch.delenv("POLYLM_PEAK_FLOPS", raising=False)
  value, source = metrics.device_peak_flops(_device("Mystery Accelerator 9000"))
  assert value is None and "POLYLM_PEAK_FLOPS" in source
  assert metrics.device_peak_flops(_device("Mystery"), override=1e15)[0] == 1e15
  monkeypatch.setenv("POLYLM_PEAK_FLOPS", "2e14")
  assert metrics.device_peak_flops(_device("NVIDIA H100"))[0] == 2e14


def test_mfu():
  # 1000 tokens/s x 1e9 FLOP/token on 2 devices of 1e12 FLOP/s = 50%.
  assert metrics.mfu(1000.0, 1e9, 2, 1e12) == pytest.approx(0.5)
  assert metrics.mfu(1000.0, 1e9, 2, None) is None


def test_progress_line_has_the_fields():
  line = metrics.progress_line(
    120,
    400,
    {
      "loss": 9.0,
      "loss_avg": 5.4321,
      "tokens_per_second": 12345.6,
      "mfu": 0.231,
      "learning_rate": 3e-4,
      "grad_norm": 1.234,
      "stage": 1,
      "skipped_steps": 2,
      "eta_seconds": 133,
    },
  )
  assert line == (
    "step 120/400 | loss 5.4321 | 12,346 tok/s | MFU 23.1% | lr 3.0e-04 | "
    "gnorm 1.23 | stage 1 | skipped 2 | ETA 2m13s"
  )
  assert metrics.progress_line(1, 2, {"loss": 2.0}) == "step 1/2 | loss 2.0000"


def test_format_duration():
  assert metrics.format_duration(5) == "5s"
  assert metrics.format_duration(3725) == "1h02m"
  assert metrics.format_duration(float("nan")) == "?"


def test_throughput_excludes_the_first_interval_and_gives_eta(monkeypatch):
  clock = iter([0.0, 10.0, 12.0])
  monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
  t = metrics.Throughput(tokens_per_step=100, total_steps=10)
  assert t.measure(1) == {}  # starts the clock once step 1 (with compilation) is done
  m = t.measure(6)  # 5 steps in 10 s
  assert m["step_time"] == pytest.approx(2.0)
  assert m["tokens_per_second"] == pytest.approx(50.0)
  assert m["eta_seconds"] == pytest.approx(8.0)
  m = t.measure(8)  # 2 steps in 2 s; ETA from the median step time
  assert m["tokens_per_second"] == pytest.approx(100.0)
  assert m["eta_seconds"] == pytest.approx(1.5 * 2)


def test_eval_summary_overall_and_per_language():
  res = metrics.eval_summary(30.0, 10.0, [20.0, 0.0, 10.0], [4.0, 0.0, 6.0], ["zh", "en", "fr"])
  assert res["loss"] == pytest.approx(3.0)
  assert res["perplexity"] == pytest.approx(math.exp(3.0))
  assert res["loss/zh"] == pytest.approx(5.0) and res["loss/fr"] == pytest.approx(10 / 6)
  assert res["perplexity/zh"] == pytest.approx(math.exp(5.0))
  assert "loss/en" not in res  # no tokens, no number


def test_writer_tensorboard_and_jsonl(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path), print_fn=lambda *a, **k: None)
  w.write("train", 1, {"loss": 2.5, "lang_tokens": [1, 2], "stage": 0})
  w.write("train", 2, {"loss": float("nan")}, tensorboard=False)
  w.write("eval", 2, {"loss": 2.0, "loss/en": 1.5})
  w.close()
  assert glob.glob(str(tmp_path / "train" / "events.out.tfevents.*"))
  assert glob.glob(str(tmp_path / "eval" / "events.out.tfevents.*"))
  train = metrics.read_jsonl(str(tmp_path))
  assert train[1]["loss"] == 2.5 and train[1]["stage"] == 0 and train[1]["lang_tokens"] == [1, 2]
  assert train[2]["loss"] == "nan"
  assert metrics.read_jsonl(str(tmp_path), "eval")[2]["loss/en"] == 1.5


def test_jsonl_survives_a_half_written_line_and_last_record_wins(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path))
  w.write("train", 1, {"loss": 3.0}, tensorboard=False)
  w.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"kind": "train", "step": 2, "lo')  # killed mid-line
  w = metrics.MetricsWriter(str(tmp_path))  # a restart appends after a newline
  w.write("train", 2, {"loss": 2.0}, tensorboard=False)
  w.write("train", 1, {"loss": 1.0}, tensorboard=False)  # step 1 re-run after a restore
  w.close()
  records = metrics.read_jsonl(str(tmp_path))
  assert records[1]["loss"] == 1.0 and records[2]["loss"] == 2.0


def test_non_chief_writes_nothing(tmp_path):
  printed = []
  w = metrics.MetricsWriter(str(tmp_path / "run"), is_chief=False, print_fn=printed.append)
  w.write("train", 1, {"loss": 1.0})
  w.log("hello")
  w.close()
  assert not (tmp_path / "run").exists() and not printed


def test_truncate_after_drops_later_steps_and_half_lines_atomically(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path))
  for step in (1, 2, 3):
    w.write("train", step, {"loss": float(step)}, tensorboard=False)
  w.write("eval", 2, {"loss": 9.0}, tensorboard=False)
  w.write("eval", 3, {"loss": 8.0}, tensorboard=False)
  w.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"kind": "train", "step": 4, "lo')  # killed mid-line
  w = metrics.MetricsWriter(str(tmp_path))
  assert w.truncate_after(2) == 3  # steps 3 (train, eval) and the half line
  w.write("train", 3, {"loss": 30.0}, tensorboard=False)  # the resumed run's step 3
  w.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  keys = [(json.loads(line)["kind"], json.loads(line)["step"]) for line in lines]
  assert keys == [("train", 1), ("train", 2), ("eval", 2), ("train", 3)]
  assert metrics.read_jsonl(str(tmp_path))[3]["loss"] == 30.0
  assert not list(tmp_path.glob(".metrics.jsonl.*"))  # no temp file left
  w = metrics.MetricsWriter(str(tmp_path))
  assert w.truncate_after(-1) == 4  # a fresh start keeps nothing
  w.close()
  assert (tmp_path / "metrics.jsonl").read_text() == ""
