"""Data pipeline speed on one CPU core: packed tokens/s vs raw SentencePiece, and resume cost.

  1. cold: packed tokens/s of the stage-1 recipe read through seqio (files -> tokenize ->
     eos -> token-share scheduling -> packing), unit caches off. The sample corpus is too
     small for that (opening a seqio pipeline costs more than reading a sample file), so
     each language's sample text is copied --copies times into `polylm_{lang}_bench` tasks
     and mixed with the stage-1 recipe (30% non-English, T = 1; no bitext).
  2. raw: SentencePiece `encode` (C++, one thread) on exactly the same lines: the limit.
  3. warm: the registered `polylm_pretrain_stage1` over the sample corpus once its units are
     in memory: the cost of scheduling and packing alone.
  4. resume: restore() + the first batch, from states saved after 1x and 10x --resume_steps
     steps (consumed from memory, fast), with the unit caches emptied and off, as in a new
     process: the restore re-opens the seqio pipelines and skips inside one unit. Beside it,
     a fresh stream's first batch under the same conditions; the three are interleaved.
Every figure is the median of --repeats runs (min and max shown).

  python benchmarks/data_pipeline.py
  python benchmarks/data_pipeline.py --copies 10 --repeats 3 --resume_steps 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["POLYLM_JAX_UNIT_DISK_CACHE"] = "0"  # measure the pipeline, not the cache


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seq_len", type=int, default=2048)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--batches", type=int, default=12, help="batches timed per cold run")
  p.add_argument("--warm_batches", type=int, default=50)
  p.add_argument("--copies", type=int, default=30, help="copies of each sample file")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--resume_steps", type=int, default=20, help="the 1x of the resume test")
  p.add_argument("--cpu", type=int, default=0, help="the one core to run on")
  p.add_argument(
    "--parts", default="cold,raw,warm,resume", help="comma-separated subset of cold,raw,warm,resume"
  )
  return p.parse_args(argv)


def summary(xs, unit, scale=1.0):
  xs = [x * scale for x in xs]
  return (
    f"median {statistics.median(xs):,.0f} {unit} "
    f"(min {min(xs):,.0f}, max {max(xs):,.0f}, n={len(xs)})"
  )


def main(argv=None):
  args = parse_args(argv)
  sys.stdout.reconfigure(line_buffering=True)
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {args.cpu})
  import sentencepiece as spm  # TF sizes its thread pools from the affinity mask

  import tasks
  from polylm_jax import readers, stream, tokenizer
  from polylm_jax import vocab as vocab_lib
  from tasks import mixtures

  tmp = tempfile.mkdtemp(prefix="polylm_bench_")
  lines_all: list[str] = []
  for code in mixtures.sync_languages()[:18]:
    text = []
    for kind in ("parallel", "documents"):
      path = tokenizer.SAMPLE_CORPUS_DIR / kind / f"{code}.txt"
      text += [l for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    lines = text * args.copies
    out = os.path.join(tmp, f"{code}.txt")
    with open(out, "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")
    lines_all += lines
    tasks.register_text_task(code, "bench", out)
  recipe = mixtures.StageRecipe(0.3, mono={"bench": 1.0})
  mixtures.register_stage("bench_stage1", recipe, mixtures.sync_languages()[:18])
  print(
    f"# one core (cpu {args.cpu}); corpus: 18 languages x {args.copies} copies of the "
    f"sample text, {len(lines_all):,} lines; rows {args.batch_size} x {args.seq_len}"
  )

  readers.UNIT_CACHE.max_tokens = 0  # cold: every unit read through seqio
  plan = stream.plan_stage(mixtures.mixing.get_stage_mixture("bench_stage1"))
  packed, first = [], []
  for r in range(args.repeats if "cold" in args.parts else 0):
    s = stream.PackedStream(
      [plan], seq_len=args.seq_len, batch_size=args.batch_size, seed=r, name="bench_stage1"
    )
    t0 = time.perf_counter()
    s.next()  # opens the seqio pipelines of all 18 tasks
    t1 = time.perf_counter()
    for _ in range(args.batches):
      s.next()
    t2 = time.perf_counter()
    first.append(t1 - t0)
    packed.append(args.batches * args.batch_size * args.seq_len / (t2 - t1))
    del s
  if packed:
    print(f"packed stage-1 tokens/s (seqio read + tokenize + pack): {summary(packed, 'tok/s')}")
    print(f"  first batch of a fresh stream (opens 18 pipelines): {summary(first, 'ms', 1e3)}")

  if "raw" in args.parts:
    vocab = vocab_lib.get_vocabulary()  # the one the tasks use
    sp = spm.SentencePieceProcessor(model_file=vocab.sentencepiece_model_file)
    raw = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      ids = sp.encode(lines_all, num_threads=1)
      raw.append(sum(len(x) + 1 for x in ids) / (time.perf_counter() - t0))
    print(
      f"raw SentencePiece encode tokens/s, same lines (+eos): {summary(raw, 'tok/s')}"
      f"  [vocab {vocab.vocab_size}]"
    )

  if "warm" in args.parts:
    readers.UNIT_CACHE.max_tokens = 1 << 24
    warm = []
    s = stream.build_stream("polylm_pretrain_stage1", args.seq_len, args.batch_size, seed=1)
    for _ in range(20):  # every sample unit read once, then served from memory
      s.next()
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      for _ in range(args.warm_batches):
        s.next()
      warm.append(args.warm_batches * args.batch_size * args.seq_len / (time.perf_counter() - t0))
    del s
    print(f"warm polylm_pretrain_stage1 tokens/s (scheduling + packing): {summary(warm, 'tok/s')}")

  if "resume" in args.parts:

    def cold_first_batch(state=None, seed=0):
      readers.UNIT_CACHE.clear()  # resume cold, as a new process would
      readers.UNIT_CACHE.max_tokens = 0
      fresh = stream.PackedStream(
        [plan], seq_len=args.seq_len, batch_size=args.batch_size, seed=seed, name="bench_stage1"
      )
      t0 = time.perf_counter()
      if state is not None:
        fresh.restore(state)
      fresh.next()
      return time.perf_counter() - t0

    results = {0: []}
    states = {}
    for mult in (1, 10):
      results[mult], states[mult] = [], []
      for r in range(args.repeats):
        readers.UNIT_CACHE.max_tokens = 1 << 24  # consume fast, from memory
        s = stream.PackedStream(
          [plan],
          seq_len=args.seq_len,
          batch_size=args.batch_size,
          seed=100 + r,
          name="bench_stage1",
        )
        for _ in range(args.resume_steps * mult):
          s.next()
        states[mult].append(s.state())
        del s  # close its seqio iterators
    for r in range(args.repeats):  # interleaved, so load changes hit all three alike
      results[0].append(cold_first_batch(seed=100 + r))
      for mult in (1, 10):
        results[mult].append(cold_first_batch(states[mult][r], seed=100 + r))
    print(f"first batch of a fresh stream, caches off: {summary(results[0], 'ms', 1e3)}")
    for mult in (1, 10):
      steps = args.resume_steps * mult
      epochs = max(p[0] for p in states[mult][-1]["sources"].values())
      print(
        f"resume after {steps} steps ({mult}x, {steps * args.batch_size * args.seq_len:,}"
        f" tokens, sources up to epoch {epochs}): restore + first batch "
        f"{summary(results[mult], 'ms', 1e3)}"
      )
    ratio = statistics.median(results[10]) / statistics.median(results[1])
    print(f"resume cost 10x / 1x: {ratio:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
