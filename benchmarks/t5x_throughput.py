"""Training throughput of PolyLM inside the real t5x against the project's own trainer.

  .venv/bin/python benchmarks/t5x_throughput.py                 # polylm_small, 8 x 256, CPU
  .venv/bin/python benchmarks/t5x_throughput.py --config=polylm_mid --batch=8 --seq=128
  .venv/bin/python benchmarks/t5x_throughput.py --dry_run       # polylm_tiny, 1 step each

Same model, same batch, same optimizer (optim.make_optimizer: AdamW, decay mask, clip 1.0),
fp32, all local devices as a data-parallel mesh, in one process. t5x: its Trainer's
partitioned train step (t5x_model.PolyLMModel, MeshPartitioner, loss normalised per real
target token); project: prepare.make_step_functions, the step `polylm_jax.train` runs.
The two steps alternate, one timed step each per round (SPEC 9: a shared machine drifts;
alternating keeps the ratio fair), after --warmup steps each; figures are medians with min
and max, and the ratio t5x / project tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="polylm_small")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--dry_run", action="store_true", help="polylm_tiny, 1 warm-up + 1 timed step")
  p.add_argument("--json", help="also write the result here")
  return p.parse_args(argv)


def _schedule():
  from polylm_jax import optim

  return optim.learning_rate_schedule(6e-5, 6e-6, 2000, 608_000)


def t5x_step(cfg, batch: dict):
  """(step(state) -> state, initial state) of t5x's Trainer for PolyLM."""
  import jax
  from t5x import optimizers, trainer
  from t5x import utils as t5x_utils

  from polylm_jax import optim, t5x_model, vocab

  model = t5x_model.PolyLMModel(
    t5x_model.PolyLMT5x(cfg),
    vocabulary=vocab.get_vocabulary(),
    optimizer_def=optimizers.OptaxWrapper(optim.make_optimizer(_schedule())),
    loss_normalizing_factor="NUM_REAL_TARGET_TOKENS",
  )
  partitioner = t5x_model.MeshPartitioner(data=-1, model=1)
  shapes = {k: v.shape for k, v in batch.items()}
  init = t5x_utils.TrainStateInitializer(
    optimizer_def=model.optimizer_def,
    init_fn=model.get_initial_variables,
    input_shapes=shapes,
    partitioner=partitioner,
  )
  state = init.from_scratch(jax.random.key(0))
  tr = trainer.Trainer(
    model,
    state,
    partitioner,
    eval_names=[],
    summary_dir=None,
    train_state_axes=init.train_state_axes,
    rng=jax.random.key(1),
    learning_rate_fn=_schedule(),
    num_microbatches=None,
  )
  step_fn = tr._partitioned_train_step  # pylint: disable=protected-access

  def step(st):
    st, metrics = step_fn(st, batch)
    jax.block_until_ready(metrics)
    return st

  return step, state


def project_step(cfg, batch: dict):
  """(step(state) -> state, initial state) of the project's trainer."""
  import jax
  import numpy as np

  from polylm_jax import optim, partitioning
  from polylm_jax.training import prepare

  mesh = partitioning.make_mesh(data=-1)
  schedule = _schedule()
  fns = prepare.make_step_functions(cfg, mesh, optim.make_optimizer(schedule), schedule)
  b, s = batch["decoder_input_tokens"].shape
  host = {
    "inputs": batch["decoder_input_tokens"],
    "targets": batch["decoder_target_tokens"],
    "positions": np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy(),
    "segment_ids": np.ones((b, s), np.int32),
    "langs": np.zeros((b, s), np.int32),
    "loss_weights": batch["decoder_loss_weights"].astype(np.float32),
  }
  with partitioning.use_mesh(mesh):
    dev = prepare.to_global(host, fns.batch_shardings)
    state = fns.init(jax.random.key(0))

  def step(st):
    with partitioning.use_mesh(mesh):
      st, m = fns.train_step(st, dev)
      jax.block_until_ready(m["loss"])
    return st

  return step, state


def run(name: str, batch_size: int, seq: int, warmup: int, steps: int) -> dict:
  import jax
  import numpy as np

  from polylm_jax import config as config_lib

  cfg = config_lib.get_config(name)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, cfg.vocab_size, (batch_size, seq + 1), dtype=np.int32)
  batch = {
    "decoder_input_tokens": tokens[:, :-1],
    "decoder_target_tokens": tokens[:, 1:],
    "decoder_loss_weights": np.ones((batch_size, seq), np.int32),
  }
  sides = {"t5x": t5x_step(cfg, batch), "project": project_step(cfg, batch)}
  states = {k: v[1] for k, v in sides.items()}
  compile_s = {}
  for k, (step, _) in sides.items():
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
      states[k] = step(states[k])
    compile_s[k] = time.perf_counter() - t0
  times: dict[str, list[float]] = {k: [] for k in sides}
  for _ in range(steps):  # alternate: one timed step of each per round
    for k, (step, _) in sides.items():
      t0 = time.perf_counter()
      states[k] = step(states[k])
      times[k].append(time.perf_counter() - t0)
  out = {
    "config": name,
    "batch": batch_size,
    "seq": seq,
    "devices": jax.device_count(),
    "device_kind": jax.devices()[0].device_kind,
  }
  for k, ts in times.items():
    tps = [batch_size * seq / t for t in ts]
    out[k] = {
      "tokens_per_s": statistics.median(tps),
      "tokens_per_s_min": min(tps),
      "tokens_per_s_max": max(tps),
      "warmup_s": compile_s[k],
    }
  out["ratio_t5x_over_project"] = out["t5x"]["tokens_per_s"] / out["project"]["tokens_per_s"]
  return out


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.dry_run:
    args.config, args.batch, args.seq, args.warmup, args.steps = "polylm_tiny", 2, 32, 1, 1
  result = run(args.config, args.batch, args.seq, args.warmup, args.steps)
  result["dry_run"] = args.dry_run
  for k in ("t5x", "project"):
    r = result[k]
    print(
      f"{k:8s} {result['config']} {result['batch']}x{result['seq']}: "
      f"{r['tokens_per_s']:.0f} tokens/s (min {r['tokens_per_s_min']:.0f}, "
      f"max {r['tokens_per_s_max']:.0f}), warm-up {r['warmup_s']:.1f} s"
    )
  print(f"t5x / project: {result['ratio_t5x_over_project']:.2f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
