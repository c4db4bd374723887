"""Training metrics: throughput and MFU, the console progress line, TensorBoard and JSONL.

MFU = model FLOPs per second / peak FLOP/s of the devices, with model FLOPs per token from
`config.flops_per_token` (6N + 12 * layers * d_model * seq_len, SPEC section 9): the useful
work of the step, not what rematerialisation recomputes.

Peak FLOP/s per device kind (dense, no sparsity), stated here rather than looked up:
  NVIDIA H100 SXM  989e12 (bf16)     NVIDIA H100 PCIe 756e12     NVIDIA H200 989e12
  NVIDIA A100      312e12            TPU v4 275e12   TPU v5p 459e12   TPU v5e 197e12
  CPU: nominal: 32 fp32 FLOP/cycle per core (two 256-bit FMA pipes, AVX2) x 3.5 GHz (Zen3
       EPYC boost clock) = 112e9 per logical CPU of the host, shared evenly by the host's CPU
       devices (so 8 forced host devices on 2 vCPUs get 28e9 each). The base clock (2.45 GHz,
       SPEC section 9's 157 GFLOP/s for 2 vCPUs) is too low: a jitted 2048x256x1024 fp32
       matmul measured 190 GFLOP/s on those machines, and the demo step 159 GFLOP/s.
Accelerator MFU is against the bf16 peak whatever the compute dtype (the usual convention).
Override with `peak_flops_per_device` (gin) or $POLYLM_PEAK_FLOPS.

Writers: TensorBoard event files via clu.metric_writers under MODEL_DIR/train and
MODEL_DIR/eval, and one JSON line per record in MODEL_DIR/metrics.jsonl. A resumed or
rolled-back run first drops the records of the steps it will run again (`truncate_after`), so
a step never appears twice. Only process 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from polylm_jax.files import atomic_write

# Substring of `device.device_kind` (lower case) -> peak dense bf16 FLOP/s. Checked in order.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
  ("h100 pcie", 756e12),
  ("h100", 989e12),
  ("h200", 989e12),
  ("gh200", 989e12),
  ("a100", 312e12),
  ("tpu v4", 275e12),
  ("tpu v5p", 459e12),
  ("tpu v5 lite", 197e12),
  ("tpu v5e", 197e12),
)
CPU_FLOPS_PER_CYCLE = 32
CPU_NOMINAL_HZ = 3.5e9


def device_peak_flops(
  device: jax.Device | None = None, override: float | None = None
) -> tuple[float | None, str]:
  """(peak FLOP/s per device, where the number comes from); None when the kind is unknown."""
  env = os.environ.get("POLYLM_PEAK_FLOPS")
  if override:
    return float(override), "given"
  if env:
    return float(env), "$POLYLM_PEAK_FLOPS"
  device = device or jax.local_devices()[0]
  kind = device.device_kind.lower()
  if device.platform == "cpu":
    n_cpu_devices = max(1, len([d for d in jax.local_devices() if d.platform == "cpu"]))
    total = (os.cpu_count() or 1) * CPU_FLOPS_PER_CYCLE * CPU_NOMINAL_HZ
    return total / n_cpu_devices, (
      f"CPU nominal: {os.cpu_count()} logical CPUs x "
      f"{CPU_FLOPS_PER_CYCLE} FLOP/cycle x "
      f"{CPU_NOMINAL_HZ / 1e9:.2f} GHz / {n_cpu_devices} devices"
    )
  for key, peak in PEAK_FLOPS:
    if key in kind:
      return peak, f"{device.device_kind} bf16 dense peak"
  return None, f"unknown device kind {device.device_kind!r} (set $POLYLM_PEAK_FLOPS)"


def mfu(
  tokens_per_second: float, flops_per_token: float, num_devices: int, peak_per_device: float | None
) -> float | None:
  """Model FLOPs utilisation in [0, 1] (None when the peak is unknown)."""
  if not peak_per_device or num_devices <= 0:
    return None
  return tokens_per_second * flops_per_token / (peak_per_device * num_devices)


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def progress_line(step: int, total_steps: int, values: Mapping[str, Any]) -> str:
  """`step 120/400 | loss 5.432 | 12,345 tok/s | MFU 23.1% | lr 3.0e-04 | gnorm 1.23 | ...`."""
  parts = [f"step {step}/{total_steps}"]
  if "loss_avg" in values:  # the mean since the last line: single steps are noisy
    parts.append(f"loss {float(values['loss_avg']):.4f}")
  elif "loss" in values:
    parts.append(f"loss {float(values['loss']):.4f}")
  if values.get("tokens_per_second") is not None:
    parts.append(f"{float(values['tokens_per_second']):,.0f} tok/s")
  if values.get("mfu") is not None:
    parts.append(f"MFU {100 * float(values['mfu']):.1f}%")
  if "learning_rate" in values:
    parts.append(f"lr {float(values['learning_rate']):.1e}")
  if "grad_norm" in values:
    parts.append(f"gnorm {float(values['grad_norm']):.3g}")
  if "stage" in values:
    parts.append(f"stage {int(values['stage'])}")
  if int(values.get("skipped_steps", 0)):
    parts.append(f"skipped {int(values['skipped_steps'])}")
  if "eta_seconds" in values:
    parts.append(f"ETA {format_duration(float(values['eta_seconds']))}")
  return " | ".join(parts)


class Throughput:
  """Step time and tokens/s over the steps since the last `measure()`.

  The first measured interval starts after the first step has finished, so compilation is
  not counted. Steps are dispatched asynchronously; a measure point is where the host has
  waited for a step's metrics, so the interval is the real device time of those steps.
  """

  def __init__(self, tokens_per_step: int, total_steps: int):
    self.tokens_per_step, self.total_steps = tokens_per_step, total_steps
    self._t0: float | None = None
    self._step0 = 0
    self._recent: list[float] = []

  def start(self, step: int) -> None:
    self._t0, self._step0 = time.perf_counter(), step

  def measure(self, step: int) -> dict[str, float]:
    if self._t0 is None:
      self.start(step)
      return {}
    now = time.perf_counter()
    steps = step - self._step0
    if steps <= 0:
      return {}
    dt = (now - self._t0) / steps
    self._t0, self._step0 = now, step
    self._recent = (self._recent + [dt])[-20:]
    step_time = float(np.median(self._recent))
    return {
      "step_time": dt,
      "tokens_per_second": self.tokens_per_step / dt,
      "eta_seconds": step_time * max(0, self.total_steps - step),
    }


def eval_summary(
  nll_sum: float,
  tokens: float,
  lang_nll_sum: Sequence[float],
  lang_tokens: Sequence[float],
  languages: Sequence[str],
) -> dict[str, float]:
  """Loss (mean nll per token) and perplexity, overall and for each language with tokens."""
  out: dict[str, float] = {}
  if tokens > 0:
    out["loss"] = nll_sum / tokens
    out["perplexity"] = float(np.exp(min(out["loss"], 700.0)))
  out["tokens"] = float(tokens)
  for lang, s, n in zip(languages, lang_nll_sum, lang_tokens):
    if n > 0:
      out[f"loss/{lang}"] = float(s) / float(n)
      out[f"perplexity/{lang}"] = float(np.exp(min(out[f"loss/{lang}"], 700.0)))
  return out


def _scalar(v: Any) -> float | int | None:
  a = np.asarray(v)
  if a.size != 1:
    return None
  x = a.reshape(()).item()
  return x if isinstance(x, (int, float, bool)) else float(x)


class MetricsWriter:
  """TensorBoard (clu) + JSONL + console. Non-chief processes only print nothing and write
  nothing, so a multi-host run has one set of files."""

  def __init__(self, model_dir: str | None, *, is_chief: bool = True, print_fn=print):
    self.model_dir, self.is_chief, self._print = model_dir, is_chief, print_fn
    self._writers: dict[str, Any] = {}
    self._jsonl = None
    if is_chief and model_dir:
      os.makedirs(model_dir, exist_ok=True)
      path = os.path.join(model_dir, "metrics.jsonl")
      self._jsonl = open(path, "a", encoding="utf-8")
      if self._jsonl.tell() > 0:  # a killed run may have left half a line: end it
        with open(path, "rb") as f:
          f.seek(-1, os.SEEK_END)
          if f.read(1) != b"\n":
            self._jsonl.write("\n")

  @property
  def jsonl_path(self) -> str | None:
    return os.path.join(self.model_dir, "metrics.jsonl") if self._jsonl is not None else None

  def truncate_after(self, step: int) -> int:
    """Drops the JSONL records of steps after `step` (and a killed run's half line), in one
    atomic rewrite: a resumed run re-runs them. Returns how many lines went."""
    path = self.jsonl_path
    if path is None:
      return 0
    self._jsonl.close()
    keep, dropped = [], 0
    with open(path, encoding="utf-8") as f:
      for line in f:
        if not line.strip():
          continue
        try:
          rec_step = int(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
          rec_step = None
        if rec_step is None or rec_step > step:
          dropped += 1
        else:
          keep.append(line if line.endswith("\n") else line + "\n")
    if dropped:
      atomic_write(path, "".join(keep))
    self._jsonl = open(path, "a", encoding="utf-8")
    return dropped

  def _writer(self, kind: str):
    if kind not in self._writers:
      try:
        from clu import metric_writers  # TensorFlow's summary ops: imported only when writing
      except ImportError as e:  # clu's TensorBoard writer needs the `tensorboard` package
        self._writers[kind] = None
        self.log(f"WARNING: no TensorBoard event files ({e}); metrics.jsonl is still written")
        return None
      self._writers[kind] = metric_writers.AsyncWriter(
        metric_writers.SummaryWriter(os.path.join(self.model_dir, kind))
      )
    return self._writers[kind]

  def log(self, message: str) -> None:
    if self.is_chief:
      self._print(message, flush=True)

  def write(
    self, kind: str, step: int, values: Mapping[str, Any], *, tensorboard: bool = True
  ) -> None:
    """Scalars to TensorBoard (`kind` = 'train' or 'eval') and one JSON line."""
    if not self.is_chief:
      return
    scalars = {k: s for k, v in values.items() if (s := _scalar(v)) is not None}
    if self._jsonl is not None:
      record = {
        "kind": kind,
        "step": int(step),
        **{
          k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
          for k, v in scalars.items()
        },
      }
      for k, v in values.items():
        if k not in scalars and isinstance(v, (str, list, tuple)):
          record[k] = v
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()
    writer = self._writer(kind) if tensorboard and self.model_dir else None
    if writer is not None:
      writer.write_scalars(int(step), {k: float(v) for k, v in scalars.items()})

  def flush(self) -> None:
    for w in self._writers.values():
      if w is not None:
        w.flush()

  def close(self) -> None:
    for w in self._writers.values():
      if w is not None:
        w.close()
    self._writers.clear()
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None


def read_jsonl(model_dir: str, kind: str | None = "train") -> dict[int, dict[str, Any]]:
  """The last record of each step in MODEL_DIR/metrics.jsonl (a restart re-runs steps)."""
  out: dict[int, dict[str, Any]] = {}
  path = os.path.join(model_dir, "metrics.jsonl")
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:  # the half line of a killed run
        continue
      if kind is None or rec.get("kind") == kind:
        out[rec["step"]] = rec
  return out
