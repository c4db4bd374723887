"""Training throughput (tokens/s) and MFU of the trainer's jitted step.

  .venv/bin/python benchmarks/train_throughput.py          # CPU: 2 configs x {1, 8} devices
  .venv/bin/python benchmarks/train_throughput.py --config polylm_mid --batch 8 --seq 128

The step is the one `polylm_jax.train` runs (`prepare.make_step_functions`: jax.jit with
shardings, state donated, fp32 gradient accumulation over microbatches, non-finite guard),
fed random token batches already on the devices, so data loading is not timed. Figures are
the median, min and max of --steps steps after --warmup steps (compilation excluded); MFU
uses `config.flops_per_token` against the peak stated in `polylm_jax/training/metrics.py` (CPU: a
nominal peak, see there).

CPU: polylm_small (the demo model) at 8 x 256 tokens and polylm_mid at 8 x 128, each on 1
device and on 8 host devices (a data=8 mesh over the same 2 cores: it shows the partitioning
overhead, not a speed-up). Each setting runs in its own process (XLA_FLAGS must be set before
JAX starts).

GPU: polylm_1_7b at seq 2048 in bf16 is `bash benchmarks/gpu_check.sh` (training MFU with
xla and cudnn attention, decode speed, peak memory; a dry run without a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CPU_CASES = (("polylm_small", 8, 256), ("polylm_mid", 8, 128))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", help="one case: a preset name (with --batch, --seq, --devices)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--devices", type=int, default=1)
  p.add_argument("--num_microbatches", type=int, default=1)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--remat", default="none")
  p.add_argument("--attention", default="xla")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--json", action="store_true", help="print one JSON line (used internally)")
  return p.parse_args(argv)


def run_case(
  name: str,
  batch: int,
  seq: int,
  num_microbatches: int = 1,
  dtype: str = "float32",
  remat: str = "none",
  attention: str = "xla",
  warmup: int = 2,
  steps: int = 10,
) -> dict:
  """Times the trainer's step on all local devices (a data-parallel mesh)."""
  import jax
  import numpy as np
  from polylm_jax import config as config_lib, optim, partitioning
  from polylm_jax.training import metrics
  from polylm_jax.training import prepare

  cfg = config_lib.get_config(name, dtype=dtype, remat_policy=remat, attention_impl=attention)
  mesh = partitioning.make_mesh(data=-1)
  prepare.check_batch_layout(batch, mesh, num_microbatches, jax.process_count())
  schedule = optim.learning_rate_schedule(6e-5, 6e-6, 2000, 608_000)
  fns = prepare.make_step_functions(
    cfg, mesh, optim.make_optimizer(schedule), schedule, num_microbatches=num_microbatches
  )
  rng = np.random.default_rng(0)
  host = {
    k: rng.integers(3, cfg.vocab_size, (batch, seq), dtype=np.int32) for k in ("inputs", "targets")
  }
  host.update(
    positions=np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
    segment_ids=np.ones((batch, seq), np.int32),
    langs=np.zeros((batch, seq), np.int32),
    loss_weights=np.ones((batch, seq), np.float32),
  )
  with partitioning.use_mesh(mesh):
    batch_dev = prepare.to_global(host, fns.batch_shardings)
    state = fns.init(jax.random.key(0))
    t0 = time.perf_counter()
    state, m = fns.train_step(state, batch_dev)
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
      state, m = fns.train_step(state, batch_dev)
    jax.block_until_ready(m["loss"])
    times = []
    for _ in range(steps):
      t0 = time.perf_counter()
      state, m = fns.train_step(state, batch_dev)
      jax.block_until_ready(m["loss"])
      times.append(time.perf_counter() - t0)
  tokens = batch * seq
  peak, source = metrics.device_peak_flops(jax.devices()[0])
  fpt = config_lib.flops_per_token(cfg, seq)
  tps = [tokens / t for t in times]
  med = statistics.median(tps)
  return {
    "config": name,
    "batch": batch,
    "seq": seq,
    "devices": mesh.size,
    "device_kind": jax.devices()[0].device_kind,
    "dtype": dtype,
    "remat": remat,
    "microbatches": num_microbatches,
    "compile_s": compile_s,
    "tokens_per_s": med,
    "tokens_per_s_min": min(tps),
    "tokens_per_s_max": max(tps),
    "tokens_per_s_per_device": med / mesh.size,
    "step_s": statistics.median(times),
    "mfu": metrics.mfu(med, fpt, mesh.size, peak),
    "peak_source": source,
    "loss": float(m["loss"]),
  }


def _line(r: dict) -> str:
  mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
  return (
    f"{r['config']:<13} {r['devices']} x {r['device_kind']:<18} {r['batch']:>3} x "
    f"{r['seq']:<5} {r['dtype']:<9} {r['tokens_per_s']:>10,.0f} tok/s "
    f"(min {r['tokens_per_s_min']:,.0f}, max {r['tokens_per_s_max']:,.0f}) "
    f"{r['tokens_per_s_per_device']:>9,.0f} tok/s/device  MFU {mfu:>6}  "
    f"step {r['step_s'] * 1e3:,.0f} ms  compile {r['compile_s']:.1f}s"
  )


def _subprocess_case(name: str, batch: int, seq: int, devices: int, args) -> dict:
  env = dict(
    os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"
  )
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    "--json",
    f"--config={name}",
    f"--batch={batch}",
    f"--seq={seq}",
    f"--devices={devices}",
    f"--warmup={args.warmup}",
    f"--steps={args.steps}",
  ]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.json:
    r = run_case(
      args.config,
      args.batch,
      args.seq,
      args.num_microbatches,
      args.dtype,
      args.remat,
      args.attention,
      args.warmup,
      args.steps,
    )
    print(json.dumps(r))
    return
  if args.config:
    print(_line(_subprocess_case(args.config, args.batch, args.seq, args.devices, args)))
    return
  print(
    f"CPU, {os.cpu_count()} logical CPUs; median of {args.steps} steps after "
    f"{args.warmup} warm-up steps; MFU against a nominal CPU peak (polylm_jax/training/metrics.py)"
  )
  for name, batch, seq in CPU_CASES:
    for devices in (1, 8):
      print(_line(_subprocess_case(name, batch, seq, devices, args)), flush=True)


if __name__ == "__main__":
  main()
