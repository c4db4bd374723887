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
    if (
      name.strip() not in ("data", "fsdp", "tensor", "devices")
      or not value.strip().lstrip("-").isdigit()
    ):
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
  loss_chunk_tokens: int = ts.LOSS_CHUNK_TOKENS,
) -> dict:
  """Compiles one step; mesh_kw may name `devices` (a count: the first n host devices)."""
  cfg = get_config(config_name, dtype=dtype, remat_policy=remat, residual_fp32=True)
  if seq_len > cfg.max_len:
    raise SystemExit(f"--seq_len {seq_len} exceeds {config_name}'s max_len {cfg.max_len}")
  mesh_kw = dict(mesh_kw)
  devices = jax.devices()[: mesh_kw.pop("devices", 8)]
  mesh = make_mesh(**mesh_kw, devices=devices)
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
    ts.train_step,
    config=cfg,
    optimizer=optimizer,
    num_microbatches=num_microbatches,
    loss_chunk_tokens=loss_chunk_tokens,
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
    loss_chunk_tokens=loss_chunk_tokens,
    batch_per_device=batch_per_device,
    global_batch=global_batch,
    params=params,
    opt=opt,
    temp=mem.temp_size_in_bytes,
    args=args,
    total=total,
    compile_s=seconds,
    n=count_params(cfg),
  )


def _chunk_name(chunk_tokens: int) -> str:
  return "whole logits" if chunk_tokens == 0 else f"chunks of {chunk_tokens} tokens"


def to_markdown(rows: list[dict], args) -> str:
  """One line per (config, mesh, remat): temporaries and totals for each loss setting."""
  chunks = _ints(args.loss_chunk_tokens)
  head = (
    f"Per-device memory of one training step (forward, backward, AdamW update), "
    f"seq len {args.seq_len}, {args.batch_per_device} sequence(s) per data-parallel "
    f"shard, {args.num_microbatches} microbatch(es), compute {args.dtype}, fp32 params, "
    f"fp32 Adam moments, fp32 residual stream, state donated. Compiled for 8 host CPU "
    f"devices (`python benchmarks/memory_plan.py`); params/opt state exact from the "
    f"shardings, temporaries from XLA's CPU buffer assignment (an estimate for GPU/TPU). "
    f"GiB = 2^30 bytes; 'fits' compares each total against {HBM_GB} GB per device. Loss: "
    + ", then ".join(_chunk_name(c) for c in chunks)
    + " (loss_chunk_tokens "
    + " / ".join(str(c) for c in chunks)
    + ").\n\n"
  )
  lines = [
    "| config | mesh (data,fsdp,tensor) | remat | global batch | params | opt state "
    "| temporaries | total | fits 80 GB | compile s |",
    "|---|---|---|---:|---:|---:|---:|---:|:-:|---:|",
  ]
  groups: dict[tuple, dict[int, dict]] = {}
  for r in rows:
    groups.setdefault((r["config"], r["mesh"], r["remat"]), {})[r["loss_chunk_tokens"]] = r
  for (config, mesh, remat), by_chunk in groups.items():
    rs = [by_chunk[c] for c in chunks if c in by_chunk]
    first = rs[0]
    temps = " / ".join(f"{r['temp'] / GiB:.2f}" for r in rs)
    totals = " / ".join(f"{r['total'] / GiB:.2f}" for r in rs)
    fits = " / ".join(_fits(r["total"]) for r in rs)
    compile_s = " / ".join(f"{r['compile_s']:.0f}" for r in rs)
    lines.append(
      f"| {config} | {mesh} | {remat} | {first['global_batch']} "
      f"| {first['params'] / GiB:.2f} | {first['opt'] / GiB:.2f} "
      f"| {temps} | {totals} | {fits} | {compile_s} |"
    )
  return head + "\n".join(lines) + "\n"


def _fits(total: float) -> str:
  return "yes" if total <= HBM_GB * 1e9 else "no"


def _ints(text: str) -> list[int]:
  try:
    return [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise SystemExit(f"--loss_chunk_tokens: expected integers like '0,2048', got {text!r}")


# The micro-batch searches the issue asks for: config@mesh -- 1.7B alone on one device, 13B
# over 8 devices with its parameters and Adam moments sharded.
MAX_BATCH_SEARCHES = "polylm_1_7b@devices=1,data=1;polylm_13b@fsdp=8"


def largest_batch(total_at, limit: float, cap: int = 512) -> tuple[int, dict[int, float]]:
  """Largest b in [1, cap] with total_at(b) <= limit (0 if even 1 does not fit), assuming the
  total grows with b. One compile per probe: until the edge is bracketed, a straight line
  through the last two fitting sizes picks the next (at most 4x the last); then a line
  through the bracket, its neighbour above, and bisection when that does not close it."""
  seen: dict[int, float] = {}

  def fits(b: int) -> bool:
    if b not in seen:
      seen[b] = total_at(b)
    return seen[b] <= limit

  def line_guess(a: int, b: int) -> int:
    slope = (seen[b] - seen[a]) / (b - a)
    return b + int((limit - seen[b]) // slope) if slope > 0 else 2 * b

  if not fits(1):
    return 0, seen
  lo, hi, prev = 1, cap + 1, None
  while hi - lo > 1:
    if hi > cap:  # not bracketed yet
      b = 2 * lo if prev is None else line_guess(prev, lo)
      b = min(max(b, lo + 1), 4 * lo, cap)
    else:
      b = min(max(line_guess(lo, hi), lo + 1), hi - 1)
      if b in seen or (b + 1 < hi and b + 1 in seen):
        b = (lo + hi) // 2
    if fits(b):
      prev, lo = lo, b
      if hi <= cap and lo + 1 < hi and not fits(lo + 1):
        hi = lo + 1
    else:
      hi = b
  return lo, seen


def max_batch_rows(args) -> list[dict]:
  rows = []
  searches = [x.split("@", 1) for x in args.max_batch_searches.split(";") if x.strip()]
  if any(len(x) != 2 for x in searches):
    raise SystemExit(
      f"--max_batch_searches: use 'config@mesh;...', got {args.max_batch_searches!r}"
    )
  for config, mesh_text in searches:
    for remat in args.max_batch_remat.split(","):
      for chunk in _ints(args.loss_chunk_tokens):
        plan = functools.partial(
          plan_one,
          config,
          parse_mesh(mesh_text),
          remat.strip(),
          args.dtype,
          seq_len=args.seq_len,
          num_microbatches=1,
          loss_chunk_tokens=chunk,
        )
        start = time.perf_counter()
        best, seen = largest_batch(lambda b: plan(b)["total"], HBM_GB * 1e9, args.max_batch_cap)
        rows.append(
          dict(
            config=config,
            mesh=mesh_text,
            remat=remat.strip(),
            loss_chunk_tokens=chunk,
            best=best,
            total=seen.get(best, float("nan")),
            above=seen.get(best + 1, float("nan")),
            probes=len(seen),
            seconds=time.perf_counter() - start,
          )
        )
        r = rows[-1]
        print(
          f"max batch {config:12s} {mesh_text:18s} remat={r['remat']:5s} "
          f"{_chunk_name(chunk):24s} -> {best:4d} per device "
          f"(total {r['total'] / GiB:.2f} GiB; {best + 1}: {r['above'] / GiB:.2f} GiB; "
          f"{r['probes']} compiles, {r['seconds']:.0f} s)",
          flush=True,
        )
  return rows


def max_batch_markdown(rows: list[dict], args) -> str:
  head = (
    f"Largest micro-batch (sequences of {args.seq_len} per device, one microbatch) whose "
    f"step fits {HBM_GB} GB per device, same method and settings as the table above.\n\n"
  )
  lines = [
    "| config | devices, mesh | remat | loss | largest micro-batch | its total GiB "
    "| one more: total GiB |",
    "|---|---|---|---|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
      f"| {r['config']} | {r['mesh']} | {r['remat']} | {_chunk_name(r['loss_chunk_tokens'])} "
      f"| {r['best']} | {r['total'] / GiB:.2f} | {r['above'] / GiB:.2f} |"
    )
  return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--configs", default="polylm_1_7b,polylm_13b")
  p.add_argument(
    "--meshes",
    default=DEFAULT_MESHES,
    help="';'-separated meshes, each 'axis=size,...' over data, fsdp, tensor (and devices=n: "
    "the first n host devices, default 8)",
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
  p.add_argument(
    "--loss_chunk_tokens",
    default=f"0,{ts.LOSS_CHUNK_TOKENS}",
    help="comma list: the loss over the whole logits (0, before) and in chunks of this many "
    "tokens per device (after); each table cell shows them in this order",
  )
  p.add_argument(
    "--sections",
    default="table,max_batch",
    help="table (per mesh) and/or max_batch (largest micro-batch: 1.7B on 1 device, 13B fsdp=8)",
  )
  p.add_argument("--max_batch_searches", default=MAX_BATCH_SEARCHES, help="config@mesh;...")
  p.add_argument("--max_batch_remat", default="full", help="remat policies for max_batch")
  p.add_argument("--max_batch_cap", type=int, default=512)
  p.add_argument("--out", default="", help="also write the markdown table(s) here")
  args = p.parse_args(argv)
  if len(jax.devices()) != 8:
    raise SystemExit(
      f"need 8 host devices, got {len(jax.devices())}: set XLA_FLAGS before jax "
      "is imported (this script does so unless XLA_FLAGS already names a count)"
    )
  sections = {x.strip() for x in args.sections.split(",") if x.strip()}
  if not sections or sections - {"table", "max_batch"}:
    raise SystemExit(f"--sections: use table and/or max_batch, got {args.sections!r}")
  chunks = _ints(args.loss_chunk_tokens)
  text = ""
  if "table" in sections:
    meshes = [parse_mesh(m) for m in args.meshes.split(";") if m.strip()]
    rows = []
    for name in args.configs.split(","):
      for remat in args.remat.split(","):
        for mesh_kw in meshes:
          for chunk in chunks:
            r = plan_one(
              name.strip(),
              mesh_kw,
              remat.strip(),
              args.dtype,
              args.batch_per_device,
              args.seq_len,
              args.num_microbatches,
              chunk,
            )
            rows.append(r)
            print(
              f"{r['config']:12s} {r['mesh']:8s} remat={r['remat']:5s} "
              f"batch={r['global_batch']:3d} {_chunk_name(chunk):24s} "
              f"params {r['params'] / GiB:6.2f} GiB  opt {r['opt'] / GiB:6.2f} GiB  "
              f"temp {r['temp'] / GiB:7.2f} GiB  total {r['total'] / GiB:7.2f} GiB  "
              f"(compile {r['compile_s']:.0f} s)",
              flush=True,
            )
    text += to_markdown(rows, args)
  if "max_batch" in sections:
    text += "\n" + max_batch_markdown(max_batch_rows(args), args)
  print("\n" + text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
