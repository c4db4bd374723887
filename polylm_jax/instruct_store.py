"""Files of a self-instruct run: crash-safe JSONL, seed tasks, statistics and their plot.

Appends are one `write` of a whole line, then flush and fsync, so a killed run loses at most
the line being written. `repair_jsonl` cuts such a partial last line on restart (and only the
last line: damage further up is an error naming the line, never silently dropped).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

import numpy as np
from polylm_jax.files import atomic_write


def repair_jsonl(path: str) -> int:
  """Cut a partial or unparseable last line of `path`; returns the bytes removed (0 if none)."""
  if not os.path.exists(path):
    return 0
  with open(path, "rb") as f:
    data = f.read()
  if not data:
    return 0
  body = data if data.endswith(b"\n") else data[: data.rfind(b"\n") + 1]
  if body:
    last_start = body.rfind(b"\n", 0, len(body) - 1) + 1
    try:
      json.loads(body[last_start:].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
      body = body[:last_start]
  if len(body) != len(data):
    with open(path, "r+b") as f:
      f.truncate(len(body))
      f.flush()
      os.fsync(f.fileno())
  return len(data) - len(body)


def read_jsonl(path: str) -> list[dict]:
  """Every record of `path` ([] if missing); ValueError naming file and line otherwise."""
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(
          f"{path} line {lineno}: invalid JSON ({e.msg}); only a partial last "
          "line is repaired automatically"
        ) from None
      if not isinstance(obj, dict):
        raise ValueError(f"{path} line {lineno}: expected a JSON object")
      records.append(obj)
  return records


class JsonlAppender:
  """Appends records durably (write, flush, fsync per record)."""

  def __init__(self, path: str):
    self.path = path
    self._f: TextIO = open(path, "a", encoding="utf-8")

  def append(self, record: Mapping[str, Any]) -> None:
    self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
    self._f.flush()
    os.fsync(self._f.fileno())

  def close(self) -> None:
    self._f.close()


def rewrite_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> None:
  """Replace `path` atomically with `records` (used to drop an unfinished round's log)."""
  atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def load_seed_tasks(path: str) -> list[dict[str, str]]:
  """Seed tasks of one language: JSONL of {"instruction", "input" (str/null/missing),
  "output", optional "type"}. Any bad line is an error naming file, line and field."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"seed file not found: {path}")
  seeds = []
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      if not raw.strip():
        continue
      where = f"seed file {path} line {lineno}"
      try:
        obj = json.loads(raw.decode("utf-8"))
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
      if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
      for key in ("instruction", "output"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
          raise ValueError(f"{where}: field {key!r} must be a non-empty string")
      inp = obj.get("input")
      if inp is not None and not isinstance(inp, str):
        raise ValueError(f"{where}: field 'input' must be a string or null")
      seeds.append(
        {
          "instruction": obj["instruction"],
          "input": inp or "",
          "output": obj["output"],
          "type": str(obj.get("type", "")),
        }
      )
  if not seeds:
    raise ValueError(f"seed file {path} holds no seed tasks")
  return seeds


# -- statistics ---------------------------------------------------------------------------


def compute_stats(
  kept: Mapping[str, Sequence[Mapping]], rejected: Sequence[Mapping], languages: Sequence[str]
) -> dict[str, Any]:
  """Per language: candidates (parsed tasks that were filtered), kept, rejections by reason
  (also failed requests "teacher_error" and replies "unparsed"); ROUGE-L values of kept and
  rejected candidates (the highest against the pool when each was checked)."""
  per: dict[str, Any] = {}
  for lang in languages:
    reasons = Counter(r.get("reason", "?") for r in rejected if r.get("lang") == lang)
    n_kept = len(kept.get(lang, ()))
    per[lang] = {
      "kept": n_kept,
      "rejected": dict(sorted(reasons.items())),
      "candidates": n_kept
      + sum(v for k, v in reasons.items() if k not in ("teacher_error", "unparsed")),
    }
  rouge_kept = [
    float(r["rouge_l"])
    for lang in languages
    for r in kept.get(lang, ())
    if r.get("rouge_l") is not None
  ]
  rouge_rejected = [
    float(r["rouge_l"])
    for r in rejected
    if r.get("lang") in languages and r.get("rouge_l") is not None
  ]
  return {"languages": per, "rouge_l": {"kept": rouge_kept, "rejected": rouge_rejected}}


def _quantiles(values: Sequence[float]) -> str:
  if not values:
    return "none"
  q = np.quantile(np.asarray(values), [0, 0.25, 0.5, 0.75, 0.9, 1.0])
  return "min {:.2f}  p25 {:.2f}  median {:.2f}  p75 {:.2f}  p90 {:.2f}  max {:.2f}".format(*q)


def format_stats(stats: Mapping[str, Any], threshold: float | None = None) -> str:
  """A plain-text table of the statistics."""
  per = stats["languages"]
  reasons = sorted({k for v in per.values() for k in v["rejected"]})
  head = f"{'lang':<6}{'candidates':>11}{'kept':>7}" + "".join(f"{r:>15}" for r in reasons)
  lines = [head]
  for lang, v in per.items():
    lines.append(
      f"{lang:<6}{v['candidates']:>11}{v['kept']:>7}"
      + "".join(f"{v['rejected'].get(r, 0):>15}" for r in reasons)
    )
  total_c = sum(v["candidates"] for v in per.values())
  total_k = sum(v["kept"] for v in per.values())
  lines.append(
    f"{'all':<6}{total_c:>11}{total_k:>7}"
    + "".join(f"{sum(v['rejected'].get(r, 0) for v in per.values()):>15}" for r in reasons)
  )
  rk, rr = stats["rouge_l"]["kept"], stats["rouge_l"]["rejected"]
  lines.append(f"ROUGE-L to the pool, kept ({len(rk)}): {_quantiles(rk)}")
  lines.append(f"ROUGE-L to the pool, rejected ({len(rr)}): {_quantiles(rr)}")
  if threshold is not None:
    both = rk + rr
    lines.append(
      f"  at or above the threshold {threshold:g}: "
      f"{sum(x >= threshold for x in both)} of {len(both)}"
    )
  return "\n".join(lines)


def plot_stats(stats: Mapping[str, Any], path: str, threshold: float | None = None) -> str:
  """Three panels (kept per language, rejections by reason, ROUGE-L histogram) as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  per = stats["languages"]
  langs = list(per)
  reasons = sorted({k for v in per.values() for k in v["rejected"]})
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  x = np.arange(len(langs))
  axes[0].bar(x, [per[lang]["kept"] for lang in langs], color="tab:green")
  axes[0].set_title("kept instructions per language")
  bottom = np.zeros(len(langs))
  for reason in reasons:
    vals = np.array([per[lang]["rejected"].get(reason, 0) for lang in langs], float)
    axes[1].bar(x, vals, bottom=bottom, label=reason)
    bottom += vals
  axes[1].set_title("rejected candidates by reason")
  if reasons:
    axes[1].legend(fontsize=8)
  for ax in axes[:2]:
    ax.set_xticks(x, langs)
  bins = np.linspace(0, 1, 21)
  rk, rr = stats["rouge_l"]["kept"], stats["rouge_l"]["rejected"]
  axes[2].hist(
    [rk, rr], bins=bins, stacked=True, label=["kept", "rejected"], color=["tab:green", "tab:red"]
  )
  if threshold is not None:
    axes[2].axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
  axes[2].set_title("highest ROUGE-L to the pool")
  axes[2].set_xlabel("ROUGE-L F")
  axes[2].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
