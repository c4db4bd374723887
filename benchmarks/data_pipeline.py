"""Data pipeline speed: packed tokens/s vs raw SentencePiece, first batch, threads, resume;
the base commit's stream (--base, a git worktree) beside this tree's, same recipe, one run.

Each side runs in its own process (the tree's `polylm_jax` first on PYTHONPATH), pinned to
--cpus, unit caches off:
  cold     packed tokens/s of the stage-1 recipe (30% non-English, T = 1, no bitext) over
           `polylm_{lang}_bench` tasks, each language's sample text copied --copies times (the
           sample corpus alone is too small to time reading), timed after --warmup batches
           (a run's steady state; its start is `first`); this tree reads in chunks then (no
           file tokenized whole up front), also with each of --workers SentencePiece threads
           (on as many cores). Beside each: tokens per CPU second of the main thread (what
           one Python thread caps) and of all threads (c cores cap c times that).
  first    the first batch of a fresh stream (it opens all 18 sources), and the threads the
           process holds then, per open source.
  shards   --shards streams of one process, shard v of V (the trainer's data shards), each
           over the sample corpus recipe polylm_pretrain_stage1: build + first batch of all.
  warm     polylm_pretrain_stage1 once its units are in memory: scheduling + packing alone.
  resume   restore() + first batch from states after 1x and 10x --resume_steps steps, caches
           emptied as in a new process.
raw SentencePiece encode of exactly the cold lines (+ eos), one thread and --workers threads,
is the limit. Every figure is the median of --repeats runs (min-max shown).

  git worktree add /tmp/base 420f6b0
  python benchmarks/data_pipeline.py --base /tmp/base
  python benchmarks/data_pipeline.py --base /tmp/base --copies 2 --repeats 1 --batches 2 \\
      --warmup 1 --resume_steps 2 --shards 2        # a quick check that it runs
  python benchmarks/data_pipeline.py --parts cold --workers 2,4,8   # scaling, on >= 8 cores
  python benchmarks/data_pipeline.py --parts cold --copies 200 --warmup 200 --batches 300
      # the steady state: units past their chunk ramp (with --copies 10 English, 70% of the
      # tokens, is one unit reopened every ~5 batches, so the 40-batch window measures ramps)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("cold", "first", "shards", "warm", "resume")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--base", default="", help="a worktree of the base commit (the 'before')")
  p.add_argument("--seq_len", type=int, default=2048)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--batches", type=int, default=40, help="batches timed per cold run")
  p.add_argument("--warmup", type=int, default=20, help="batches read before a cold run's timing")
  p.add_argument("--warm_batches", type=int, default=50)
  p.add_argument("--copies", type=int, default=30, help="copies of each sample file")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--resume_steps", type=int, default=20, help="the 1x of the resume test")
  p.add_argument("--shards", type=int, default=8, help="streams of one process (data shards)")
  p.add_argument(
    "--workers", default="2", help="SentencePiece threads (and cores) per cold run, e.g. 2,4"
  )
  p.add_argument("--cpu", type=int, default=0, help="the first core to run on")
  p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
  p.add_argument("--side", default="", help=argparse.SUPPRESS)  # internal: one side, as JSON
  p.add_argument("--corpus", default="", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def summary(xs, unit, scale=1.0):
  if not xs:
    return "-"
  xs = [x * scale for x in xs]
  return f"{statistics.median(xs):,.0f} {unit} ({min(xs):,.0f}-{max(xs):,.0f})"


def write_corpus(directory: str, copies: int) -> list[str]:
  """Each language's sample lines, `copies` times, in directory/{lang}.txt."""
  from polylm_jax.paths import SAMPLE_CORPUS_DIR

  langs = sorted(p.stem for p in (SAMPLE_CORPUS_DIR / "documents").glob("*.txt"))
  lines_all = []
  for code in langs:
    text = []
    for kind in ("parallel", "documents"):
      path = SAMPLE_CORPUS_DIR / kind / f"{code}.txt"
      text += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(os.path.join(directory, f"{code}.txt"), "w", encoding="utf-8") as f:
      f.write("\n".join(text * copies) + "\n")
    lines_all += text * copies
  return lines_all


def worker_counts(args) -> list[int]:
  """The --workers counts above 1, each checked against the cores from --cpu on."""
  try:
    counts = sorted({int(w) for w in args.workers.split(",")})
  except ValueError:
    sys.exit(f"--workers={args.workers!r}: expected comma-separated integers, e.g. 2,4")
  if counts[0] < 1 or args.cpu + counts[-1] > os.cpu_count():
    sys.exit(f"--workers={args.workers}: needs cores {args.cpu}..{args.cpu + counts[-1] - 1}")
  return [w for w in counts if w > 1]


def _threads() -> int:
  return len(os.listdir("/proc/self/task"))


def measure(args) -> dict:
  """One side's figures (runs in the side's own process)."""
  import inspect

  import tasks
  from polylm_jax import readers, stream
  from tasks import mixtures

  langs = sorted(f[:-4] for f in os.listdir(args.corpus))
  for code in langs:
    tasks.register_text_task(code, "bench", os.path.join(args.corpus, f"{code}.txt"))
  mixtures.register_stage("bench_stage1", mixtures.StageRecipe(0.3, mono={"bench": 1.0}), langs)
  plan = stream.plan_stage(mixtures.mixing.get_stage_mixture("bench_stage1"))
  has_workers = "workers" in inspect.signature(stream.PackedStream).parameters
  parts, out = args.parts.split(","), {"fast": has_workers}

  def clear():
    readers.UNIT_CACHE.clear()
    if has_workers:
      from polylm_jax import text_units

      text_units.FILE_TOKENS.clear()

  def packed(seed, workers=1, **kw):
    if has_workers:
      kw["workers"] = workers
    return stream.PackedStream(
      [plan], seq_len=args.seq_len, batch_size=args.batch_size, seed=seed, name="b", **kw
    )

  def cold(workers, key):
    tokens = args.batches * args.batch_size * args.seq_len
    for r in range(args.repeats):
      clear()
      before = _threads()
      s = packed(r, workers)
      t0 = time.perf_counter()
      s.next()
      out.setdefault(key.replace("cold", "first"), []).append(time.perf_counter() - t0)
      if workers == 1:  # the pool's threads are not the sources'
        out.setdefault("threads", []).append((_threads() - before) / len(plan.tasks))
      for _ in range(args.warmup):
        s.next()
      t1, main, cpu = time.perf_counter(), time.thread_time(), time.process_time()
      for _ in range(args.batches):
        s.next()
      out.setdefault(key, []).append(tokens / (time.perf_counter() - t1))
      out.setdefault(f"{key}_main", []).append(tokens / (time.thread_time() - main))
      out.setdefault(f"{key}_cpu", []).append(tokens / (time.process_time() - cpu))
      del s

  readers.UNIT_CACHE.max_tokens = 0  # cold: no unit served from memory
  if has_workers:  # nor a file tokenized whole at opening: only what is read, in chunks
    from polylm_jax import text_units

    eager, text_units.EAGER_BYTES = text_units.EAGER_BYTES, 0
  if "cold" in parts or "first" in parts:
    cold(1, "cold")
    for w in worker_counts(args) if has_workers else ():
      os.sched_setaffinity(0, set(range(args.cpu, args.cpu + w)))
      cold(w, f"cold_w{w}")
      os.sched_setaffinity(0, {args.cpu})
  readers.UNIT_CACHE.max_tokens = 1 << 24
  if has_workers:
    text_units.EAGER_BYTES = eager
  if "shards" in parts:
    times = []
    for _ in range(args.repeats):
      clear()
      t0 = time.perf_counter()
      for v in range(args.shards):
        stream.build_stream("polylm_pretrain_stage1", args.seq_len, args.batch_size,
                            shard_index=v, num_shards=args.shards).next()  # fmt: skip
      times.append(time.perf_counter() - t0)
    out["shards"] = times
  if "warm" in parts:
    s = stream.build_stream("polylm_pretrain_stage1", args.seq_len, args.batch_size, seed=1)
    for _ in range(20):  # every sample unit read once, then served from memory
      s.next()
    out["warm"] = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      for _ in range(args.warm_batches):
        s.next()
      out["warm"].append(
        args.warm_batches * args.batch_size * args.seq_len / (time.perf_counter() - t0)
      )
  if "resume" in parts:
    out.update(resume(args, packed, clear))
  return out


def resume(args, packed, clear) -> dict:
  from polylm_jax import readers

  states = {}
  for mult in (1, 10):
    readers.UNIT_CACHE.max_tokens = 1 << 24  # consume fast, from memory
    s = packed(100)
    for _ in range(args.resume_steps * mult):
      s.next()
    states[mult] = s.state()
  out = {"resume_1": [], "resume_10": []}
  for _ in range(args.repeats):  # interleaved, so load changes hit both alike
    for mult in (1, 10):
      clear()
      readers.UNIT_CACHE.max_tokens = 0
      fresh = packed(100)
      t0 = time.perf_counter()
      fresh.restore(states[mult])
      fresh.next()
      out[f"resume_{mult}"].append(time.perf_counter() - t0)
  return out


def run_side(args, tree: str, corpus: str) -> dict:
  env = dict(os.environ, PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL="3")
  env["POLYLM_JAX_UNIT_DISK_CACHE"] = "0"  # measure the pipeline, not the cache
  keep = ("seq_len", "batch_size", "batches", "warmup", "warm_batches", "repeats",
          "resume_steps", "shards", "workers", "cpu", "parts")  # fmt: skip
  argv = [f"--{k}={getattr(args, k)}" for k in keep]
  cmd = [sys.executable, os.path.abspath(__file__), *argv, "--side", tree, "--corpus", corpus]
  done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
  if done.returncode:
    sys.exit(f"{tree}: the benchmark side failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def raw_sentencepiece(args, lines) -> dict:
  import sentencepiece as spm

  from polylm_jax import vocab as vocab_lib

  sp = spm.SentencePieceProcessor(model_file=vocab_lib.get_vocabulary().sentencepiece_model_file)
  out = {}
  for workers in [1, *worker_counts(args)]:
    os.sched_setaffinity(0, set(range(args.cpu, args.cpu + workers)))
    out[workers] = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      ids = sp.encode(lines, num_threads=workers)
      out[workers].append(sum(len(x) + 1 for x in ids) / (time.perf_counter() - t0))
  os.sched_setaffinity(0, {args.cpu})
  return out


def main(argv=None):
  args = parse_args(argv)
  worker_counts(args)
  os.sched_setaffinity(0, {args.cpu})  # before TensorFlow sizes its pools
  if args.side:
    print(json.dumps(measure(args)))
    return 0
  sys.stdout.reconfigure(line_buffering=True)
  corpus = tempfile.mkdtemp(prefix="polylm_bench_")
  lines = write_corpus(corpus, args.copies)
  sides = [("before", args.base)] if args.base else []
  sides.append(("after", REPO))
  got = {name: run_side(args, tree, corpus) for name, tree in sides}
  raw = raw_sentencepiece(args, lines)
  print(
    f"# core {args.cpu} (+ cores for workers {args.workers}); 18 languages x {args.copies} "
    f"copies of the sample text, {len(lines):,} lines; rows {args.batch_size} x {args.seq_len}; "
    f"{args.batches} batches timed after {args.warmup}; median (min-max) of {args.repeats}"
  )
  rows = [("packed stage-1 tokens/s, one core", "cold", "tok/s", 1.0)]
  for w in worker_counts(args):
    rows.append((f"packed stage-1 tokens/s, workers {w} on {w} cores", f"cold_w{w}", "tok/s", 1.0))
  for w in [1, *worker_counts(args)]:
    key = "cold" if w == 1 else f"cold_w{w}"
    rows.append((f"  workers {w}: tokens per main-thread CPU s", f"{key}_main", "tok", 1.0))
    rows.append((f"  workers {w}: tokens per CPU s, all threads", f"{key}_cpu", "tok", 1.0))
  rows += [
    ("first batch of a fresh stream (18 sources)", "first", "ms", 1e3),
    *[(f"first batch, workers {w}", f"first_w{w}", "ms", 1e3) for w in worker_counts(args)],
    ("threads per open source", "threads", "", 1.0),
    (f"{args.shards} shard streams of one process: build + first batch", "shards", "ms", 1e3),
    ("warm stage-1 tokens/s (scheduling + packing)", "warm", "tok/s", 1.0),
    (f"restore + first batch after {args.resume_steps} steps", "resume_1", "ms", 1e3),
    (f"restore + first batch after {10 * args.resume_steps} steps", "resume_10", "ms", 1e3),
  ]
  width = max(len(r[0]) for r in rows) + 2
  print(f"{'':{width}}" + "".join(f"{name:>40}" for name, _ in sides))
  for label, key, unit, scale in rows:
    cells = [summary(got[name].get(key, []), unit, scale) for name, _ in sides]
    if any(c != "-" for c in cells):
      print(f"{label:{width}}" + "".join(f"{c:>40}" for c in cells))
  for workers, rates in raw.items():
    print(
      f"{f'raw SentencePiece encode tokens/s, {workers} thread(s)':{width}}{summary(rates, 'tok/s'):>40}"
    )
  one = statistics.median(raw[1])
  for name, _ in sides:
    if got[name].get("cold"):
      print(f"{name}: packed / raw on one core = {statistics.median(got[name]['cold']) / one:.0%}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
