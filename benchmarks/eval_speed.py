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


def _time(fn, repeats: int) -> list[float]:
  fn()  # warm-up: compiles every shape
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


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
  args = parser.parse_args()

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

    rank_task = "polylm_eval_xnli_en_0shot"
    with benchmark_demo.mock_tfds(args.rank_examples):
      lengths = [len(vocab.encode(ex.prompt)) for ex in benchmark.load_examples(rank_task)]
      times = _time(
        lambda: evaluation.evaluate(config, params, vocab, rank_task, batch_size=args.batch_size),
        args.repeats,
      )
    _report(
      "rank classification (XNLI-shaped, 3 choices)",
      args.rank_examples,
      times,
      f"; prompts {statistics.mean(lengths):.0f} tokens on average",
    )

    gen_task = "polylm_eval_flores_en_de_0shot"
    times = _time(
      lambda: evaluation.evaluate(
        config,
        params,
        vocab,
        gen_task,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
      ),
      args.repeats,
    )
    _report(
      f"generation (translation-shaped, greedy, {args.max_new_tokens} new tokens)",
      args.gen_examples,
      times,
    )


if __name__ == "__main__":
  main()
