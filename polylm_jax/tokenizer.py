"""Train a SentencePiece tokenizer for PolyLM, or the cached demo one (the command line).

    python -m polylm_jax.tokenizer train --corpus_glob='data/*/*.txt' --vocab_size=256000 \\
        --output=/tmp/polylm.model --per_language_chars=20000000
    python -m polylm_jax.tokenizer demo      # prints the demo tokenizer's path

The recipe lives in polylm_jax.tokenizer_training. Unlike the other binaries (absl flags, gin
for train/infer/eval) this command line is argparse: it has subcommands (`train`, `demo`),
imports neither JAX nor TensorFlow, and `main(argv)` returns an exit code for scripts and
tests.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from polylm_jax import logs
from polylm_jax.tokenizer_training import (
  DEFAULT_PER_LANGUAGE_CHARS,
  train_demo_tokenizer,
  train_tokenizer,
)


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m polylm_jax.tokenizer", description=__doc__.split("\n\n", maxsplit=1)[0]
  )
  sub = parser.add_subparsers(dest="command", required=True)
  train = sub.add_parser("train", help="train a SentencePiece model on a balanced sample")
  train.add_argument(
    "--corpus_glob",
    action="append",
    required=True,
    help="glob of UTF-8 text files, one document per line; repeatable",
  )
  train.add_argument(
    "--vocab_size", type=int, required=True, help="number of pieces (256000 for the real model)"
  )
  train.add_argument("--output", required=True, help="path of the .model file to write")
  train.add_argument(
    "--per_language_chars",
    default=str(DEFAULT_PER_LANGUAGE_CHARS),
    help="characters sampled per language: N, or lang=N,...,*=N",
  )
  train.add_argument(
    "--language_from",
    choices=("stem", "dir"),
    default="stem",
    help="language of a file: its name before the first dot, or its folder",
  )
  train.add_argument("--seed", type=int, default=0)
  train.add_argument(
    "--num_threads",
    type=int,
    default=1,
    help="SentencePiece threads; fixed (not the CPU count) for reproducibility",
  )
  train.add_argument("--model_type", choices=("bpe", "unigram"), default="bpe")
  train.add_argument("--verbosity", type=int, default=None, help="0: library INFO logs too")
  demo = sub.add_parser("demo", help="train (or find cached) the demo tokenizer; print its path")
  demo.add_argument("--cache_dir", default=None)
  demo.add_argument("--verbosity", type=int, default=None, help="0: library INFO logs too")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """The command line (argv None: sys.argv, with the quiet console of polylm_jax.logs)."""
  args = _build_parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  if argv is None:
    logs.setup(args.verbosity)
    logging.getLogger().setLevel(logging.INFO)  # our progress line; libraries stay quiet
  try:
    if args.command == "train":
      logs.check_output_dir(
        os.path.dirname(os.path.abspath(args.output)), f"--output={args.output}"
      )
      path = train_tokenizer(
        args.corpus_glob,
        args.output,
        args.vocab_size,
        args.per_language_chars,
        args.seed,
        args.num_threads,
        args.language_from,
        args.model_type,
      )
    else:
      path = train_demo_tokenizer(args.cache_dir)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
