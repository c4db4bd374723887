"""Instruction data at realistic scale: MultiAlpaca es/ja/pt from ../shared/data (skips if absent).

.venv/bin/python benchmarks/instructions.py [--data_dir ../shared/data/multialpaca]
    [--seq_len 2048] [--batch 8] [--batches 20] [--filter_records 3000]

1. tasks: records per language, prompt/response tokens (the tokenizer in use: the demo one
   unless $POLYLM_JAX_VOCAB), reading + tokenizing time.
2. packing: InstructionStream over the three languages: row fill (non-padding slots),
   loss-weighted share, examples per row, truncations; batches/s after warm-up (median of
   --batches, min and max).
3. filters: the self-instruct filters run over the real instructions in file order as if
   they were candidates: language-ID agreement, rejections by reason (what MultiAlpaca
   itself would lose to our dedup and ROUGE-L), and the cost of one check against the pool
   as it grows (median microseconds per check per 1,000 pool entries).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
DEFAULT_DIR = os.path.join(os.path.dirname(REPO), "shared", "data", "multialpaca")
LANGS = ("es", "ja", "pt")


def _fmt(xs):
  return f"median {statistics.median(xs):.3g} (min {min(xs):.3g}, max {max(xs):.3g})"


def bench_tasks(data_dir):
  import seqio

  from tasks import instructions

  names = {}
  for lang in LANGS:
    names[lang] = instructions.register_instruction_task(
      lang, os.path.join(data_dir, f"{lang}.jsonl"), source_name="bench"
    )
  for lang, name in names.items():
    t0 = time.perf_counter()
    ds = seqio.get_mixture_or_task(name).get_dataset(
      sequence_length=None,
      split="train",
      shuffle=False,
      use_cached=False,
      trim_output_features=False,
      try_in_mem_cache=False,
    )
    p, r = [], []
    for ex in ds.as_numpy_iterator():
      p.append(len(ex["inputs"]))
      r.append(len(ex["targets"]))
    dt = time.perf_counter() - t0
    print(
      f"  {lang}: {len(p)} train records; prompt tokens mean {statistics.mean(p):.1f} "
      f"(p95 {sorted(p)[int(0.95 * len(p))]}), response tokens mean {statistics.mean(r):.1f} "
      f"(p95 {sorted(r)[int(0.95 * len(r))]}); read+tokenize {dt:.1f}s "
      f"({len(p) / dt:.0f} records/s)"
    )
  return instructions.register_instruction_mixture("bench_multialpaca", list(names.values()))


def bench_packing(mixture, seq_len, batch, n):
  from polylm_jax import instruct_stream

  t0 = time.perf_counter()
  stream = instruct_stream.build_instruction_stream(mixture, seq_len, batch)
  first = stream.next()
  print(f"  load + first batch: {time.perf_counter() - t0:.1f}s")
  fill, weighted, per_row, times = [], [], [], []
  for _ in range(n):
    t = time.perf_counter()
    b = stream.next()
    times.append(time.perf_counter() - t)
    fill.append(float((b["segment_ids"] > 0).mean()))
    weighted.append(float(b["loss_weights"].mean()))
    per_row.append(float(b["segment_ids"].max(axis=1).mean()))
  del first
  print(
    f"  seq_len {seq_len} x batch {batch}: row fill {statistics.mean(fill):.1%}, loss-weighted "
    f"slots {statistics.mean(weighted):.1%}, examples/row {statistics.mean(per_row):.1f}, "
    f"truncated {stream.stats['truncated']}, dropped {stream.stats['dropped_overlong']}"
  )
  print(
    f"  batch time: {_fmt([x * 1e3 for x in times])} ms -> "
    f"{batch * seq_len / statistics.median(times):,.0f} tokens/s"
  )


def bench_filters(data_dir, limit):
  from polylm_jax import instruct_filters as F
  from polylm_jax import langid

  for lang in LANGS:
    with open(os.path.join(data_dir, f"{lang}.jsonl"), encoding="utf-8") as f:
      records = [json.loads(line) for _, line in zip(range(limit), f)]
    agree = sum(langid.identify(r["instruction"]).lang == lang for r in records)
    pool = F.InstructionPool(lang)
    reasons, cost = Counter(), []
    for i, r in enumerate(records):
      inp = r.get("input") or ""
      t = time.perf_counter()
      v = pool.check(r["instruction"], inp, r["output"])
      dt = time.perf_counter() - t
      if len(pool) >= 200:
        cost.append(dt * 1e6 / (len(pool) / 1000))
      reasons[v.reason or "kept"] += 1
      if v.kept:
        pool.add(r["instruction"], inp)
    print(
      f"  {lang}: first {len(records)} records; language ID agrees on {agree / len(records):.1%}; "
      + ", ".join(f"{k} {v}" for k, v in reasons.most_common())
      + f"; check cost {_fmt(cost)} us per 1k pool entries (pool {len(pool)})"
    )


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--data_dir", default=DEFAULT_DIR)
  ap.add_argument("--seq_len", type=int, default=2048)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--batches", type=int, default=20)
  ap.add_argument("--filter_records", type=int, default=3000)
  args = ap.parse_args()
  missing = [
    lang for lang in LANGS if not os.path.isfile(os.path.join(args.data_dir, f"{lang}.jsonl"))
  ]
  if missing:
    print(
      f"SKIPPED: MultiAlpaca files for {missing} not found in {args.data_dir} (the shared "
      "reference data is not part of the project)"
    )
    return 0
  print("1. tasks"), sys.stdout.flush()
  mixture = bench_tasks(args.data_dir)
  print("2. packing")
  bench_packing(mixture, args.seq_len, args.batch, args.batches)
  print("3. filters")
  bench_filters(args.data_dir, args.filter_records)
  return 0


if __name__ == "__main__":
  sys.exit(main())
