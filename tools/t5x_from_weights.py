"""Writes PolyLM weights (a Hugging Face directory such as the released PolyLM-1.7B, a
project run or checkpoint, or another t5x run) as a t5x `checkpoint_N` with parameters only,
so that `python -m t5x.train` starts from them (gin/t5x/from_weights.gin):

  python tools/t5x_from_weights.py --from=/path/polylm-1.7b --to=/tmp/polylm_init
  python -m t5x.train --gin_file=gin/t5x/polylm_1_7b.gin --gin_file=gin/t5x/finetune.gin \\
    --gin_file=gin/t5x/from_weights.gin --gin.INIT_CHECKPOINT=\\"/tmp/polylm_init/checkpoint_0\\" \\
    --gin.MODEL_DIR=\\"/tmp/polylm_sft\\"
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a host-side job: never touch accelerators

import polylm_jax  # noqa: E402
from polylm_jax import t5x_ckpt  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--from", dest="source", required=True, help="HF dir, run or checkpoint")
  parser.add_argument("--to", required=True, help="folder for checkpoint_<step>")
  parser.add_argument("--step", type=int, default=0)
  args = parser.parse_args()
  config, params = polylm_jax.load(args.source, on_host=True)
  out = t5x_ckpt.write(params, args.to, args.step)
  print(f"{args.source} -> {out}: {config.num_layers} layers, d_model {config.d_model}")


if __name__ == "__main__":
  main()
