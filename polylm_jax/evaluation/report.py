"""Writing evaluation results: per-example JSONL, tables (Markdown, CSV, JSON) and a plot.

    EVAL_OUTPUT_DIR/
      predictions/<task>.jsonl   one line per example: prompt, choices/prediction, scores, ...
      results.csv                one row per task and metric
      results.md                 per benchmark family: a row per language, a column per metric,
                                 and the conventions (prompt set, shots, scoring, metric)
      results.json               the same as results.csv, plus timings, notes and each task's
                                 conventions, so that two reports can be compared
      results.png                the primary metric (accuracy, F1, ROUGE-L, BLEU) per language,
                                 one panel per family and shot count

Every file is written to a temporary name and renamed, so an interrupted run never leaves
a half-written file in place of a complete one. The plot draws on a bare Agg canvas (no
pyplot), so it does not change the matplotlib backend of a notebook that calls it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from polylm_jax.evaluation import EvalResults, TaskResult
from polylm_jax.files import atomic_write

CSV_FIELDS = (
  "task",
  "family",
  "lang",
  "shots",
  "metric",
  "value",
  "primary",
  "examples",
  "truncated",
)


def predictions_jsonl(task: TaskResult) -> str:
  return "".join(
    json.dumps({"task": task.task, **p}, ensure_ascii=False) + "\n" for p in task.predictions
  )


def results_csv(results: EvalResults) -> str:
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
  writer.writeheader()
  for row in results.rows():
    writer.writerow({**row, "value": f"{row['value']:.4f}"})
  return buf.getvalue()


def _groups(results: EvalResults) -> dict[tuple[str, int], list[TaskResult]]:
  groups: dict[tuple[str, int], list[TaskResult]] = {}
  for t in results.tasks:
    groups.setdefault((t.family, t.shots), []).append(t)
  return groups


def _conventions_line(tasks: list[TaskResult]) -> str:
  """The conventions the tasks share; a value that differs by language is pointed at."""
  keys = list(dict.fromkeys(k for t in tasks for k in t.conventions))
  parts = []
  for key in keys:
    values = {str(t.conventions.get(key)) for t in tasks}
    value = values.pop() if len(values) == 1 else "per language in results.json"
    parts.append(f"{key.replace('_', ' ')}: {value}")
  return "Conventions: " + "; ".join(parts) if parts else ""


def results_markdown(results: EvalResults) -> str:
  """A table per (family, shots): a row per language, the primary metric first."""
  lines = ["# Evaluation results", ""]
  prompt_sets = sorted({str(t.conventions.get("prompt_set", "unknown")) for t in results.tasks})
  lines += [
    f"Prompt set: {', '.join(prompt_sets)}. Shots in each table's heading; each table's "
    "conventions below it (results.json has them per task).",
    "",
  ]
  for (family, shots), tasks in _groups(results).items():
    metrics = [tasks[0].primary_metric] + [
      m for m in tasks[0].metrics if m != tasks[0].primary_metric
    ]
    lines += [
      f"## {family}, {shots}-shot",
      "",
      "| language | " + " | ".join(metrics) + " | examples | truncated |",
      "|---|" + "---:|" * (len(metrics) + 2),
    ]
    for t in tasks:
      cells = [f"{t.metrics[m]:.2f}" for m in metrics]
      lines.append(
        f"| {t.lang} | " + " | ".join(cells) + f" | {t.num_examples} | {t.num_truncated} |"
      )
    if len(tasks) > 1:
      means = [sum(t.metrics[m] for t in tasks) / len(tasks) for m in metrics]
      lines.append(
        "| **mean** | " + " | ".join(f"{v:.2f}" for v in means) + " | "
        f"{sum(t.num_examples for t in tasks)} | "
        f"{sum(t.num_truncated for t in tasks)} |"
      )
    notes = {k: v for t in tasks for k, v in t.notes.items() if k != "score"}
    if any("bleu_tokenizer" in t.notes for t in tasks):
      tokenizers = sorted({f"{t.lang}: {t.notes['bleu_tokenizer']}" for t in tasks})
      lines += ["", "BLEU tokenizer by pair: " + ", ".join(tokenizers)]
      notes.pop("bleu_tokenizer", None)
    if notes:
      lines += ["", "Settings: " + ", ".join(f"{k} {v}" for k, v in sorted(notes.items()))]
    if any(t.conventions for t in tasks):
      lines += ["", _conventions_line(tasks)]
    lines.append("")
  return "\n".join(lines)


def results_json(results: EvalResults) -> str:
  return (
    json.dumps(
      [
        {
          "task": t.task,
          "family": t.family,
          "lang": t.lang,
          "shots": t.shots,
          "metrics": t.metrics,
          "primary_metric": t.primary_metric,
          "examples": t.num_examples,
          "truncated": t.num_truncated,
          "seconds": round(t.seconds, 3),
          "notes": t.notes,
          "prompt_set": t.conventions.get("prompt_set"),
          "conventions": t.conventions,
        }
        for t in results.tasks
      ],
      indent=1,
      ensure_ascii=False,
    )
    + "\n"
  )


def plot_png(results: EvalResults) -> bytes:
  """Bar charts of the primary metric per language, one panel per family and shot count."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  groups = list(_groups(results).items())
  cols = min(2, len(groups))
  rows = math.ceil(len(groups) / cols)
  widest = max(len(tasks) for _, tasks in groups)
  fig = Figure(figsize=(max(5.0, 0.35 * widest) * cols, 3.2 * rows), dpi=100)
  FigureCanvasAgg(fig)
  for i, ((family, shots), tasks) in enumerate(groups):
    ax = fig.add_subplot(rows, cols, i + 1)
    metric = tasks[0].primary_metric
    values = [t.primary for t in tasks]
    bars = ax.bar(range(len(tasks)), values, color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([t.lang for t in tasks], rotation=60 if len(tasks) > 8 else 0, fontsize=8)
    ax.set_ylim(0, max(100.0 if metric == "accuracy" else 0.0, max(values) * 1.15, 1.0))
    ax.set_title(f"{family} ({shots}-shot)", fontsize=10)
    ax.set_ylabel(metric)
    choices = tasks[0].predictions[0].get("choices") if tasks[0].predictions else None
    if choices:  # rank classification: mark chance level
      ax.axhline(100.0 / len(choices), color="gray", linestyle="--", linewidth=0.8)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  return buf.getvalue()


def write_report(
  results: EvalResults, output_dir: str | os.PathLike, *, plot: bool = True
) -> dict[str, Path]:
  """Writes everything listed in the module docstring; returns {name: path}."""
  if not results.tasks:
    raise ValueError("write_report: no task results to write")
  out = Path(output_dir)
  written = {}
  for t in results.tasks:
    written[f"predictions/{t.task}"] = atomic_write(
      out / "predictions" / f"{t.task}.jsonl", predictions_jsonl(t)
    )
  written["csv"] = atomic_write(out / "results.csv", results_csv(results))
  written["markdown"] = atomic_write(out / "results.md", results_markdown(results))
  written["json"] = atomic_write(out / "results.json", results_json(results))
  if plot:
    written["plot"] = atomic_write(out / "results.png", plot_png(results))
  return written


def read_predictions(path: str | os.PathLike) -> list[dict[str, Any]]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
  with open(path, encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f))
