"""Evaluation throughput on CPU: examples/s for rank classification and for generation.

    .venv/bin/python benchmarks/eval_speed.py [--config polylm_small] [--repeats 5]

Rank classification is XNLI-shaped (three verbalised labels per example, scored by
`decoding.score`; the XNLI task through tfds mock data with sample-corpus sentences).
Generation is translation-shaped (FLORES-200 layout files written from the sample corpus,
English -> German, greedy, `--max_new_tokens` new tokens; a randomly initialised model
rarely emits eos, so every row runs the full length). Both go through
`polylm_jax.evaluation.evaluate`, the code the eval binary and the trainer run: data
reading, prompt rendering, tokenization, batching and metrics are included in the time.

One warm-up run (compiles) is not timed; then the median, min and max over `--repeats`.

    .venv/bin/python benchmarks/eval_speed.py --base /tmp/base    # before / after, alternating
    .venv/bin/python benchmarks/eval_speed.py --memory --base /tmp/base

--base: a checkout of an earlier commit (`git worktree add /tmp/base 420f6b0`); its
`decoding` module serves the same `evaluate` calls, run by run alternating with ours.
--memory: no timing; the temporaries XLA allocates for one batch of `decoding.score` with a
256k-vocabulary model (`--memory_config`, abstract weights: nothing is allocated), XNLI-like
few-shot rows of `--memory_context` tokens and a 3-token continuation, per batch size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from polylm_jax import evaluation
from polylm_jax import vocab as vocab_lib  # noqa: E402
from polylm_jax.config import describe, get_config  # noqa: E402
from polylm_jax.model import init_params  # noqa: E402
from tasks import benchmark, benchmark_data, benchmark_demo  # noqa: E402


def _write_flores(root: str, n: int) -> None:
  for lang in ("en", "de"):
    path = os.path.join(
      root, "flores200", "devtest", f"{benchmark_data.FLORES200_CODES[lang]}.devtest"
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = benchmark_demo.sample_lines(lang)
    with open(path, "w", encoding="utf-8") as f:
      f.write("".join(lines[i % len(lines)] + "\n" for i in range(n)))


def _time_sides(fns: dict, repeats: int) -> dict[str, list[float]]:
  """Each side once to warm up (compiles), then `repeats` rounds alternating the sides."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return times


def score_temporaries(decoding_mod, config, batch: int, context: int) -> int:
  """Bytes of temporaries of the compiled scorer of `decoding_mod` for one batch: its jitted
  `_score_batch` is lowered and compiled on abstract weights, not run."""
  import flax.linen as nn

  from polylm_jax.model import abstract_params

  params = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.unbox(abstract_params(config))
  )
  real, record = decoding_mod._score_batch, []

  def compile_only(*args, **kwargs):
    compiled = real.lower(*args, **kwargs).compile()
    record.append(compiled.memory_analysis().temp_size_in_bytes)
    out = jax.eval_shape(real, *args, **kwargs)
    return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), out)

  decoding_mod._score_batch = compile_only
  try:
    rng = np.random.RandomState(0)
    contexts = rng.randint(3, config.vocab_size, (batch, context)).tolist()
    decoding_mod.score(config, params, contexts, [[5, 6, 7]] * batch, batch_size=batch)
  finally:
    decoding_mod._score_batch = real
  return max(record)


def memory_table(args, base) -> None:
  from polylm_jax import decoding

  config = get_config(args.memory_config)
  print(
    f"decoding.score temporaries, {args.memory_config} ({describe(config)}), rows of "
    f"{args.memory_context} context + 3 continuation tokens (XLA's compiled memory analysis)"
  )
  sides = {"after": decoding} if base is None else {"before": base, "after": decoding}
  for batch in [int(b) for b in args.memory_batches.split(",")]:
    cells = [
      f"{name} {score_temporaries(mod, config, batch, args.memory_context) / 2**30:8.2f} GiB"
      for name, mod in sides.items()
    ]
    print(f"batch {batch:3d}: " + "   ".join(cells))


def _report(what: str, n: int, times: list[float], extra: str = "") -> None:
  rates = sorted(n / t for t in times)
  print(
    f"{what}: {statistics.median(rates):.1f} examples/s (median of {len(rates)}; "
    f"min {rates[0]:.1f}, max {rates[-1]:.1f}; {n} examples per run){extra}"
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="polylm_small")
  parser.add_argument("--rank_examples", type=int, default=96)
  parser.add_argument("--gen_examples", type=int, default=64)
  parser.add_argument("--max_new_tokens", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--base", default=None, help="checkout of an earlier commit: before/after")
  parser.add_argument("--memory", action="store_true", help="scorer temporaries, no timing")
  parser.add_argument("--memory_config", default="polylm_1_7b")
  parser.add_argument("--memory_context", type=int, default=1024)
  parser.add_argument("--memory_batches", default="8,32")
  args = parser.parse_args()
  base = None
  if args.base:
    import base_tree

    base = base_tree.load(args.base, "polylm_jax.decoding")
  if args.memory:
    memory_table(args, base)
    return

  vocab = vocab_lib.get_vocabulary()
  config = get_config(
    args.config, vocab_size=max(vocab.vocab_size, get_config(args.config).vocab_size)
  )
  params = init_params(config, jax.random.key(0))
  print(
    f"model {args.config}: {describe(config)}; {jax.devices()[0].device_kind}, "
    f"{os.cpu_count()} CPUs; batch {args.batch_size}"
  )
  with tempfile.TemporaryDirectory() as root:
    _write_flores(root, args.gen_examples)
    benchmark.configure(data_dir=root)

    def sides(fn):
      """{"after": fn} and, with --base, "before": fn with the base checkout's decoding."""
      if base is None:
        return {"after": fn}

      def before():
        ours, evaluation.decoding = evaluation.decoding, base
        try:
          fn()
        finally:
          evaluation.decoding = ours

      return {"before": before, "after": fn}

    rank_task = "polylm_eval_xnli_en_0shot"
    with benchmark_demo.mock_tfds(args.rank_examples):
      lengths = [len(vocab.encode(ex.prompt)) for ex in benchmark.load_examples(rank_task)]
      times = _time_sides(
        sides(
          lambda: evaluation.evaluate(config, params, vocab, rank_task, batch_size=args.batch_size)
        ),
        args.repeats,
      )
    for name, ts in times.items():
      _report(
        f"{name}: rank classification (XNLI-shaped, 3 choices)",
        args.rank_examples,
        ts,
        f"; prompts {statistics.mean(lengths):.0f} tokens on average",
      )

    gen_task = "polylm_eval_flores_en_de_0shot"
    times = _time_sides(
      sides(
        lambda: evaluation.evaluate(
          config,
          params,
          vocab,
          gen_task,
          batch_size=args.batch_size,
          max_new_tokens=args.max_new_tokens,
        )
      ),
      args.repeats,
    )
    for name, ts in times.items():
      _report(
        f"{name}: generation (translation-shaped, greedy, {args.max_new_tokens} new tokens)",
        args.gen_examples,
        ts,
      )


if __name__ == "__main__":
  main()
