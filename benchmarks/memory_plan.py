"""Per-device memory of one PolyLM training step on a mesh, without allocating any weight.

Compiles the real step (forward, backward, AdamW update, non-finite guard; state donated)
from `polylm_jax.training.step` on abstract inputs (ShapeDtypeStructs with shardings) for 8
host CPU devices, and reads the compiled step's memory analysis. Parameter and optimizer
bytes per device come from the shardings (exact); temporaries (activations, gradients,
logits, workspace) come from XLA's buffer assignment for the CPU backend, which is an
estimate of what a GPU/TPU compile needs (fusion and bf16 handling differ per backend).

  python benchmarks/memory_plan.py                      # the default table, a few minutes
  python benchmarks/memory_plan.py --configs polylm_1_7b --meshes "fsdp=8" --remat none,full
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp

from polylm_jax import optim
from polylm_jax.training import step as ts
from polylm_jax.config import count_params, get_config
from polylm_jax.partitioning import batch_sharding, data_parallel_size, make_mesh, use_mesh

GiB = 2**30
DEFAULT_MESHES = "data=8;fsdp=8;data=2,fsdp=4;fsdp=4,tensor=2;tensor=8"
HBM_GB = 80  # an H100 / A100-80GB; the plan's yardstick


def parse_mesh(text: str) -> dict[str, int]:
  sizes = {}
  for part in text.split(","):
    name, _, value = part.partition("=")
    if name.strip() not in ("data", "fsdp", "tensor") or not value.strip().lstrip("-").isdigit():
      raise SystemExit(f"--meshes: bad entry {part!r} in {text!r}; use e.g. 'data=2,fsdp=4'")
    sizes[name.strip()] = int(value)
  sizes.setdefault("data", 1)
  return sizes


def shard_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def plan_one(
  config_name: str,
  mesh_kw: dict[str, int],
  remat: str,
  dtype: str,
  batch_per_device: int,
  seq_len: int,
  num_microbatches: int,
) -> dict:
  cfg = get_config(config_name, dtype=dtype, remat_policy=remat, residual_fp32=True)
  if seq_len > cfg.max_len:
    raise SystemExit(f"--seq_len {seq_len} exceeds {config_name}'s max_len {cfg.max_len}")
  mesh = make_mesh(**mesh_kw)
  optimizer = optim.make_optimizer(optim.learning_rate_schedule(6e-5, 6e-6, 2000, 608000))
  shardings = ts.train_state_shardings(cfg, optimizer, mesh)
  state = ts.abstract_train_state(cfg, optimizer, shardings)
  global_batch = batch_per_device * data_parallel_size(mesh)
  bshard = batch_sharding(mesh)
  batch = {
    k: jax.ShapeDtypeStruct((global_batch, seq_len), jnp.int32, sharding=bshard)
    for k in ts.BATCH_INT_FIELDS
  }
  batch["loss_weights"] = jax.ShapeDtypeStruct(
    (global_batch, seq_len), jnp.float32, sharding=bshard
  )
  step = functools.partial(
    ts.train_step, config=cfg, optimizer=optimizer, num_microbatches=num_microbatches
  )
  start = time.perf_counter()
  with use_mesh(mesh):
    compiled = (
      jax.jit(
        step, in_shardings=(shardings, bshard), out_shardings=(shardings, None), donate_argnums=0
      )
      .lower(state, batch)
      .compile()
    )
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  params = shard_bytes(state.params)
  opt = shard_bytes(state.opt_state)
  args = mem.argument_size_in_bytes
  # Outputs that do not reuse a donated input buffer are extra live memory at the end.
  extra_out = max(0, mem.output_size_in_bytes - mem.alias_size_in_bytes)
  total = args + mem.temp_size_in_bytes + extra_out
  return dict(
    config=config_name,
    mesh=",".join(str(mesh.shape[a]) for a in mesh.axis_names),
    remat=remat,
    global_batch=global_batch,
    params=params,
    opt=opt,
    temp=mem.temp_size_in_bytes,
    args=args,
    total=total,
    compile_s=seconds,
    n=count_params(cfg),
  )


def to_markdown(rows: list[dict], args) -> str:
  head = (
    f"Per-device memory of one training step (forward, backward, AdamW update), "
    f"seq len {args.seq_len}, {args.batch_per_device} sequence(s) per data-parallel "
    f"shard, {args.num_microbatches} microbatch(es), compute {args.dtype}, fp32 params, "
    f"fp32 Adam moments, fp32 residual stream, state donated. Compiled for 8 host CPU "
    f"devices (`python benchmarks/memory_plan.py`); params/opt state exact from the "
    f"shardings, temporaries from XLA's CPU buffer assignment (an estimate for GPU/TPU). "
    f"GiB = 2^30 bytes. 'fits' compares the total against {HBM_GB} GB per device.\n\n"
  )
  lines = [
    "| config | mesh (data,fsdp,tensor) | remat | global batch | params | opt state "
    "| temporaries | total | fits 80 GB | compile s |",
    "|---|---|---|---:|---:|---:|---:|---:|:-:|---:|",
  ]
  for r in rows:
    fits = "yes" if r["total"] <= HBM_GB * 1e9 else "no"
    lines.append(
      f"| {r['config']} | {r['mesh']} | {r['remat']} | {r['global_batch']} "
      f"| {r['params'] / GiB:.2f} | {r['opt'] / GiB:.2f} | {r['temp'] / GiB:.2f} "
      f"| {r['total'] / GiB:.2f} | {fits} | {r['compile_s']:.0f} |"
    )
  return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--configs", default="polylm_1_7b,polylm_13b")
  p.add_argument(
    "--meshes",
    default=DEFAULT_MESHES,
    help="';'-separated meshes, each 'axis=size,...' over data, fsdp, tensor",
  )
  p.add_argument("--remat", default="full", help="comma list of none,full,dots,dots_no_batch")
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  p.add_argument(
    "--batch_per_device",
    type=int,
    default=1,
    help="sequences per data-parallel shard (data x fsdp) per step",
  )
  p.add_argument("--num_microbatches", type=int, default=1)
  p.add_argument("--seq_len", type=int, default=2048)
  p.add_argument("--out", default="", help="also write the markdown table here")
  args = p.parse_args(argv)
  if len(jax.devices()) != 8:
    raise SystemExit(
      f"need 8 host devices, got {len(jax.devices())}: set XLA_FLAGS before jax "
      "is imported (this script does so unless XLA_FLAGS already names a count)"
    )
  meshes = [parse_mesh(m) for m in args.meshes.split(";") if m.strip()]
  rows = []
  for name in args.configs.split(","):
    for remat in args.remat.split(","):
      for mesh_kw in meshes:
        r = plan_one(
          name.strip(),
          mesh_kw,
          remat.strip(),
          args.dtype,
          args.batch_per_device,
          args.seq_len,
          args.num_microbatches,
        )
        rows.append(r)
        print(
          f"{r['config']:12s} {r['mesh']:22s} remat={r['remat']:5s} batch={r['global_batch']:3d} "
          f"params {r['params'] / GiB:6.2f} GiB  opt {r['opt'] / GiB:6.2f} GiB  "
          f"temp {r['temp'] / GiB:7.2f} GiB  total {r['total'] / GiB:7.2f} GiB  "
          f"(compile {r['compile_s']:.0f} s)",
          flush=True,
        )
  table = to_markdown(rows, args)
  print("\n" + table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(table)
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
