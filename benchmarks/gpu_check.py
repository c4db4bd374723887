"""One prepared GPU check (issue 13): polylm_1_7b training MFU, decode speed, peak memory.

  bash benchmarks/gpu_check.sh              # one H100/H200: under 5 minutes
  bash benchmarks/gpu_check.sh --dry_run    # any machine (automatic without a GPU)

On a GPU it prints, for polylm_1_7b with random weights (nothing is downloaded):
- training tokens/s and MFU at seq 2048 in bf16 (fp32 params, Adam moments and gradient
  accumulator), 16 x 2048 tokens per step, with attention_impl xla and cudnn. Each variant
  tries its settings in order (TRAIN_PLAN: the remat policy and the micro-batch, sequences per
  microbatch) and takes the first whose compiled program fits the device's memory
  (`memory_analysis` of the compiled step against the allocator's limit), so an 80 GB H100
  and a 141 GB H200 both run; the line says which ran. Median, min and max of --steps steps
  after --warmup steps, timed with block_until_ready; MFU by `config.flops_per_token` against
  `training.metrics.device_peak_flops`. Peak memory: the allocator's peak_bytes_in_use after
  the steps and the compiled step's own estimate.
- greedy decode tokens/s (`decoding.generate`, prefill included, bf16 weights) at batch 1
  and 8, and at batch 1 the fraction of the HBM-bandwidth bound: every weight read once per
  token plus the filled part of the KV cache, over the datasheet bandwidth of the device kind
  (H200 4.8 TB/s, H100 SXM 3.35 TB/s; --hbm_bandwidth overrides).
Each part runs in its own process (clean peak memory; a failing part does not stop the
others) within --budget_s seconds in all.

Dry run (no GPU, or --dry_run): allocates no model arrays. The training step of each
variant is traced on jax.ShapeDtypeStruct inputs and lowered for CUDA (the cudnn variant
must contain cuDNN's fused attention call; this machine's jaxlib has no cuDNN, so its version
check is answered with DRY_RUN_CUDNN_VERSION while lowering), and the xla variant is also
compiled here with its memory analysis. Decoding runs `decoding.generate` on abstract
params with every jitted function of the decoding modules replaced by an ahead-of-time
lower + compile on the abstract arguments. It prints the plan it would run on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

PARTS = ("train_xla", "train_cudnn", "decode")
# Per attention implementation: (remat policy, sequences per microbatch), tried in order.
# Measured on one H200 (jax 0.11.2, 16 x 2048 tokens per step; docs/benchmarks.md): recomputing
# the attention but keeping the weight matmuls ("dots_no_batch") with the largest micro-batch
# beat no remat with more, smaller microbatches: cudnn 41.5% MFU (x 16) and 41.0% (x 8) vs
# 36.7% (none x 4); xla 30.7% (x 16), 30.3% (x 8) vs 24.6% (none x 2); full remat x 16 39.3%.
# Micro-batches above --batch are cut to it; the first setting that fits the device runs.
TRAIN_PLAN = {
  "xla": (("dots_no_batch", 16), ("dots_no_batch", 8), ("dots_no_batch", 4), ("full", 8)),
  "cudnn": (("dots_no_batch", 16), ("dots_no_batch", 8), ("full", 16), ("full", 8), ("none", 4)),
}
# Datasheet HBM bandwidth (bytes/s) by device kind substring (lower case), checked in order.
HBM_BANDWIDTH = (
  ("h100 pcie", 2.0e12),
  ("h100 nvl", 3.9e12),
  ("gh200", 4.0e12),
  ("h200", 4.8e12),
  ("h100", 3.35e12),
)
DRY_RUN_CUDNN_VERSION = 91000  # what the dry run's lowering assumes (cuDNN 9.10)
FIT_MARGIN = 0.95  # a plan fits when its compiled peak is under this share of the limit
GIB = 2**30
TARGET_MFU = 0.55  # issue 13's goal
PART_RESERVE_S = 60.0  # of --budget_s, kept for each part not yet run
_CHILD_ENV = dict(os.environ)  # the parts' processes get the caller's environment


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dry_run", action="store_true", help="lower and compile only (auto on CPU)")
  p.add_argument("--model", default="polylm_1_7b", help="preset (tests use polylm_tiny)")
  p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
  p.add_argument("--seq", type=int, default=2048)
  p.add_argument("--batch", type=int, default=16, help="sequences per training step")
  p.add_argument("--remat", help="force one remat policy (with --micro_batch) for both variants")
  p.add_argument("--micro_batch", type=int, help="sequences per microbatch (with --remat)")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--decode_batches", default="1,8")
  p.add_argument("--prompt_len", type=int, default=128)
  p.add_argument("--new_tokens", type=int, default=256)
  p.add_argument("--runs", type=int, default=5, help="timed decode runs per batch size")
  p.add_argument("--hbm_bandwidth", type=float, help="bytes/s (default: by device kind)")
  p.add_argument("--budget_s", type=float, default=285.0, help="all parts together (GPU)")
  p.add_argument("--json_out", help="also write the results here as JSON")
  p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # one part, JSON to stdout
  a = p.parse_args(argv)
  unknown = set(a.parts.split(",")) - set(PARTS)
  if unknown:
    p.error(f"--parts: unknown {sorted(unknown)}; choose from {PARTS}")
  if (a.remat is None) != (a.micro_batch is None):
    p.error("--remat and --micro_batch go together")
  return a


# -- pure helpers ---------------------------------------------------------------------------


def hbm_bandwidth(device_kind: str, override: float | None = None) -> float | None:
  if override:
    return float(override)
  kind = device_kind.lower()
  return next((bw for key, bw in HBM_BANDWIDTH if key in kind), None)


def train_plan(a: argparse.Namespace, attention: str) -> list[tuple[str, int]]:
  if a.remat:
    plan = [(a.remat, a.micro_batch)]
  else:  # TRAIN_PLAN's micro-batches cut to --batch, each setting once
    plan = list(dict.fromkeys((r, min(m, a.batch)) for r, m in TRAIN_PLAN[attention]))
  for remat, micro in plan:
    if micro < 1 or a.batch % micro:
      raise SystemExit(f"--batch={a.batch} is not a multiple of the micro-batch {micro}")
  return plan


def decode_bound(config, prompt_len: int, new_tokens: int, bandwidth: float) -> dict:
  """Batch-1 tokens/s if every step only read its bytes at `bandwidth`: all weights once
  (the position table: one row) plus the KV cache filled so far; prefill counts as one
  weight pass. bf16 weights and cache (2 bytes)."""
  from polylm_jax.config import count_params

  weights = 2 * (count_params(config) - (config.max_len - 1) * config.d_model)
  per_position = 2 * 2 * config.num_layers * config.num_heads * config.head_dim  # K and V
  cache = sum(per_position * (prompt_len + i) for i in range(new_tokens))
  total = weights * (new_tokens + 1) + cache
  return {
    "weight_bytes": weights,
    "cache_bytes_per_token": cache / new_tokens,
    "tokens_per_s": new_tokens * bandwidth / total,
  }


def _compiled_peak(compiled) -> int | None:
  m = compiled.memory_analysis()
  if m is None:
    return None
  peak = getattr(m, "peak_memory_in_bytes", 0)
  if peak:
    return int(peak)
  return int(
    m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  )


def _stats(values: list[float]) -> dict:
  return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# -- training -------------------------------------------------------------------------------


def _step_extras() -> dict:
  """Keyword settings of prepare.make_step_functions left at their defaults (e.g. a loss
  chunk size, when the library has one): stated in the output, since they shape the step."""
  from polylm_jax.training import prepare

  sig = inspect.signature(prepare.make_step_functions)
  basic = {"config", "mesh", "optimizer", "schedule", "num_microbatches"}
  return {
    k: p.default
    for k, p in sig.parameters.items()
    if k not in basic and p.default is not inspect.Parameter.empty
  }


@contextlib.contextmanager
def _assumed_cudnn(version: int = DRY_RUN_CUDNN_VERSION) -> Iterator[None]:
  """Lets jax.nn.dot_product_attention(implementation="cudnn") trace without cuDNN (dry run
  only: the program is lowered for CUDA, never run here)."""
  from jax._src.cudnn import fused_attention_stablehlo as fa  # no public hook

  old = fa.check_cudnn_version
  fa.check_cudnn_version = lambda: version
  try:
    yield
  finally:
    fa.check_cudnn_version = old


def _train_setup(a: argparse.Namespace, attention: str, remat: str, micro: int) -> dict:
  import jax

  from polylm_jax import config as config_lib, optim, partitioning
  from polylm_jax.training import prepare, step as step_lib

  cfg = config_lib.get_config(
    a.model, dtype="bfloat16", remat_policy=remat, attention_impl=attention
  )
  if a.seq > cfg.max_len:
    raise SystemExit(f"--seq={a.seq} exceeds {a.model}'s max_len {cfg.max_len}")
  mesh = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
  schedule = optim.learning_rate_schedule(6e-5, 6e-6, 2000, 608_000)
  optimizer = optim.make_optimizer(schedule)
  fns = prepare.make_step_functions(
    cfg, mesh, optimizer, schedule, num_microbatches=a.batch // micro
  )
  state = step_lib.abstract_train_state(cfg, optimizer, fns.state_shardings)
  batch = {
    k: jax.ShapeDtypeStruct(
      (a.batch, a.seq), "float32" if k == "loss_weights" else "int32", sharding=sh
    )
    for k, sh in fns.batch_shardings.items()
  }
  return dict(cfg=cfg, mesh=mesh, fns=fns, state=state, batch=batch, remat=remat, micro=micro)


def _train_dry(attention: str, s: dict) -> dict:
  """Lowers the step for CUDA (both variants) and compiles it here (xla only)."""
  import jax

  from polylm_jax import partitioning

  res: dict[str, Any] = {}
  t0 = time.perf_counter()
  with partitioning.use_mesh(s["mesh"]):
    traced = s["fns"].train_step.trace(s["state"], s["batch"])
    cuda_text = traced.lower(lowering_platforms=("cuda",)).as_text()
    res["lowered_for"] = ["cuda"]
    res["cudnn_fused_attention"] = "cudnn$fmha" in cuda_text
    # cuDNN skips the tiles above the diagonal only under a causal mask type. The lowered
    # backend config escapes its quotes as \22: mask_type\22: \22CAUSAL\22.
    res["cudnn_mask_types"] = sorted(set(re.findall(r'mask_type[\\"\s:2]*([A-Z_]+)', cuda_text)))
    if attention == "cudnn" and not res["cudnn_fused_attention"]:
      raise RuntimeError("attention_impl=cudnn lowered without cuDNN's fused attention call")
    if attention == "xla":
      compiled = traced.lower().compile()
      res["compiled_for"] = jax.default_backend()
      res["compiled_peak_bytes"] = _compiled_peak(compiled)
  res["lower_compile_s"] = time.perf_counter() - t0
  return res


def _random_batch(cfg, a: argparse.Namespace) -> dict:
  import numpy as np

  rng = np.random.default_rng(0)
  shape = (a.batch, a.seq)
  host = {k: rng.integers(3, cfg.vocab_size, shape, dtype=np.int32) for k in ("inputs", "targets")}
  host.update(
    positions=np.broadcast_to(np.arange(a.seq, dtype=np.int32), shape).copy(),
    segment_ids=np.ones(shape, np.int32),
    langs=rng.integers(0, 18, shape, dtype=np.int32),
    loss_weights=np.ones(shape, np.float32),
  )
  return host


def _train_time(a: argparse.Namespace, s: dict, compiled) -> dict:
  import jax

  from polylm_jax import config as config_lib, partitioning
  from polylm_jax.training import metrics, prepare

  device = jax.devices()[0]
  with partitioning.use_mesh(s["mesh"]):
    state = s["fns"].init(jax.random.key(0))
    batch = prepare.to_global(_random_batch(s["cfg"], a), s["fns"].batch_shardings)
    for _ in range(a.warmup):
      state, m = compiled(state, batch)
    jax.block_until_ready(m["loss"])
    times = []
    for _ in range(a.steps):
      t0 = time.perf_counter()
      state, m = compiled(state, batch)
      jax.block_until_ready(m["loss"])
      times.append(time.perf_counter() - t0)
  tokens = a.batch * a.seq
  tps = _stats([tokens / t for t in times])
  peak, source = metrics.device_peak_flops(device)
  fpt = config_lib.flops_per_token(s["cfg"], a.seq)
  mem = device.memory_stats() or {}
  return {
    "tokens_per_s": tps,
    "step_s": statistics.median(times),
    "mfu": {k: metrics.mfu(v, fpt, 1, peak) for k, v in tps.items()},
    "peak_flops_source": source,
    "loss": float(m["loss"]),
    "peak_bytes_in_use": mem.get("peak_bytes_in_use"),
  }


def train_part(a: argparse.Namespace, attention: str, dry: bool) -> dict:
  """Tries TRAIN_PLAN's settings in order; runs (or, dry, lowers) the first that fits."""
  import jax

  from polylm_jax import config as config_lib, partitioning

  res: dict[str, Any] = {"attention": attention, "skipped": []}
  limit = None if dry else (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
  for remat, micro in train_plan(a, attention):
    with _assumed_cudnn() if dry and attention == "cudnn" else contextlib.nullcontext():
      s = _train_setup(a, attention, remat, micro)
      res.update(
        remat=remat,
        micro_batch=micro,
        microbatches=a.batch // micro,
        flops_per_token=config_lib.flops_per_token(s["cfg"], a.seq),
        step_settings=_step_extras(),
      )
      if dry:
        res.update(_train_dry(attention, s))
        return res
    t0 = time.perf_counter()
    with partitioning.use_mesh(s["mesh"]):
      compiled = s["fns"].train_step.lower(s["state"], s["batch"]).compile()
    res["compile_s"] = time.perf_counter() - t0
    res["compiled_peak_bytes"] = need = _compiled_peak(compiled)
    if limit and need and need > FIT_MARGIN * limit:
      res["skipped"].append(f"remat {remat}, micro-batch {micro}: needs {need / GIB:.1f} GiB")
      continue
    try:
      res.update(_train_time(a, s, compiled))
      return res
    except Exception as e:  # an allocation the estimate missed: try the next setting
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      res["skipped"].append(f"remat {remat}, micro-batch {micro}: out of memory when run")
  res["error"] = "no setting fits the device's memory: " + "; ".join(res["skipped"])
  return res


# -- decoding -------------------------------------------------------------------------------


@contextlib.contextmanager
def _compile_only(modules: list, record: list) -> Iterator[None]:
  """Replaces each module-level jitted function of `modules` by: lower + compile on the
  (abstract) arguments, record it, and return zeros of the output (ShapeDtypeStructs for
  outputs over 64 MiB, which only other jitted functions consume)."""
  import jax
  import numpy as np

  def shim(name, fn):
    def call(*args, **kwargs):
      t0 = time.perf_counter()
      compiled = fn.lower(*args, **kwargs).compile()
      record.append(
        {"fn": name, "compile_s": time.perf_counter() - t0, "peak_bytes": _compiled_peak(compiled)}
      )
      out = jax.eval_shape(fn, *args, **kwargs)
      small = lambda x: x.size * x.dtype.itemsize < 2**26
      return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype) if small(x) else x, out)

    return call

  saved = []
  for mod in modules:
    for name, fn in list(vars(mod).items()):
      if callable(fn) and hasattr(fn, "lower") and hasattr(fn, "eval_shape"):
        saved.append((mod, name, fn))
        setattr(mod, name, shim(f"{mod.__name__.split('.')[-1]}.{name}", fn))
  try:
    yield
  finally:
    for mod, name, fn in saved:
      setattr(mod, name, fn)


def decode_part(a: argparse.Namespace, dry: bool) -> dict:
  import flax.linen as nn
  import jax
  import numpy as np

  from polylm_jax import decode_stack, decoding
  from polylm_jax.config import count_params, get_config
  from polylm_jax.model import abstract_params, init_params

  cfg = get_config(a.model, dtype="bfloat16", param_dtype="bfloat16")
  prompt_len = min(a.prompt_len, cfg.max_len - a.new_tokens)
  if prompt_len < 1:
    raise SystemExit(f"--new_tokens={a.new_tokens} leaves no room in max_len {cfg.max_len}")
  device = jax.devices()[0]
  bandwidth = hbm_bandwidth(device.device_kind, a.hbm_bandwidth)
  res: dict[str, Any] = {
    "params": count_params(cfg),
    "prompt_len": prompt_len,
    "new_tokens": a.new_tokens,
    "batches": {},
  }
  if bandwidth:
    res["bound"] = decode_bound(cfg, prompt_len, a.new_tokens, bandwidth)
    res["hbm_bandwidth"] = bandwidth
  if dry:
    params = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nn.unbox(abstract_params(cfg))
    )
  else:
    params = jax.block_until_ready(jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0)))
  rng = np.random.default_rng(0)
  for batch in [int(b) for b in a.decode_batches.split(",")]:
    prompts = rng.integers(3, cfg.vocab_size, (batch, prompt_len)).tolist()
    run = lambda: decoding.generate(cfg, params, prompts, a.new_tokens, eos_id=-1)
    if dry:
      record: list = []
      with _compile_only([decoding, decode_stack], record):
        out = run()
      if not record or len(out) != batch or len(out[0]) != a.new_tokens:
        raise RuntimeError("decoding.generate compiled no jitted function of decoding/decode_stack")
      res["batches"][batch] = {"compiled": record}
      continue
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(a.runs):
      t0 = time.perf_counter()
      run()
      times.append(time.perf_counter() - t0)
    entry = {
      "first_call_s": first,
      "tokens_per_s": _stats([batch * a.new_tokens / t for t in times]),
    }
    if batch == 1 and bandwidth:
      entry["bound_fraction"] = entry["tokens_per_s"]["median"] / res["bound"]["tokens_per_s"]
    res["batches"][batch] = entry
  mem = device.memory_stats() or {}
  res["peak_bytes_in_use"] = mem.get("peak_bytes_in_use")
  return res


# -- driver ---------------------------------------------------------------------------------


def run_part(part: str, a: argparse.Namespace, dry: bool) -> dict:
  t0 = time.perf_counter()
  try:
    res = decode_part(a, dry) if part == "decode" else train_part(a, part.split("_")[1], dry)
  except Exception as e:  # reported in the summary; the other parts still run
    res = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
  res["part_s"] = time.perf_counter() - t0
  return res


def _subprocess_part(part: str, argv: list[str], timeout: float) -> dict:
  env = dict(_CHILD_ENV)
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
  cmd = [sys.executable, os.path.abspath(__file__), *argv, f"--part={part}"]
  try:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s (--budget_s)"}
  lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
  if out.returncode or not lines:
    return {"error": f"exit {out.returncode}: {out.stderr[-1500:]}"}
  return json.loads(lines[-1])


def _gb(x) -> str:
  if not x:
    return "n/a"
  return f"{x / GIB:.1f} GiB" if x >= GIB / 10 else f"{x / 2**20:.1f} MiB"


def _pct(x) -> str:
  return f"{100 * x:.1f}%" if x is not None else "n/a"


def format_train(r: dict, dry: bool, seq: int) -> list[str]:
  name = f"train {r.get('attention', '?')}"
  if "error" in r:
    return [f"{name}: FAILED: {r['error']}"]
  how = (
    f"remat {r['remat']}, micro-batch {r['micro_batch']} x {seq} ({r['microbatches']} microbatches)"
  )
  extras = ", ".join(f"{k}={v}" for k, v in r["step_settings"].items())
  lines = []
  if dry:
    lines.append(
      f"{name}: {how}: lowered for CUDA (cuDNN fused attention: "
      f"{'yes' if r['cudnn_fused_attention'] else 'no'})"
      + (f"; compiled here, peak {_gb(r['compiled_peak_bytes'])}" if "compiled_for" in r else "")
      + f"; {r['lower_compile_s']:.1f} s"
    )
    step_flops = r["flops_per_token"] * seq * r["microbatches"] * r["micro_batch"]
    lines.append(
      f"  {step_flops:.3e} model FLOPs per step: {step_flops / (TARGET_MFU * 989e12):.2f} s at "
      f"{TARGET_MFU:.0%} MFU of an H100/H200 (989 TFLOP/s bf16)"
    )
  else:
    t, m = r["tokens_per_s"], r["mfu"]
    lines.append(
      f"{name}: {t['median']:,.0f} tok/s (min {t['min']:,.0f}, max {t['max']:,.0f}), "
      f"MFU {_pct(m['median'])} (min {_pct(m['min'])}, max {_pct(m['max'])}); {how}; "
      f"step {r['step_s']:.3f} s; compile {r['compile_s']:.0f} s"
    )
    lines.append(
      f"  peak memory: {_gb(r['peak_bytes_in_use'])} in use (allocator), "
      f"{_gb(r['compiled_peak_bytes'])} compiled estimate; loss {r['loss']:.3f}; "
      f"peak FLOP/s: {r['peak_flops_source']}"
    )
  lines.append(f"  step settings: {extras or 'defaults'}")
  lines += [f"  skipped (does not fit): {s}" for s in r.get("skipped", [])]
  return lines


def format_decode(r: dict, dry: bool) -> list[str]:
  if "error" in r:
    return [f"decode: FAILED: {r['error']}"]
  lines = [
    f"decode: {r['params']:,} params bf16, prompt {r['prompt_len']}, {r['new_tokens']} new "
    "tokens, greedy, prefill included"
  ]
  bound = r.get("bound")
  for batch, e in r["batches"].items():
    if dry:
      fns = ", ".join(f"{c['fn']} ({c['compile_s']:.1f} s)" for c in e["compiled"])
      lines.append(f"  batch {batch}: compiled {fns}")
      continue
    t = e["tokens_per_s"]
    line = (
      f"  batch {batch}: {t['median']:,.1f} tok/s (min {t['min']:,.1f}, max {t['max']:,.1f}); "
      f"first call {e['first_call_s']:.1f} s"
    )
    if "bound_fraction" in e:
      line += (
        f"; {_pct(e['bound_fraction'])} of the HBM bound {bound['tokens_per_s']:,.0f} tok/s "
        f"({bound['weight_bytes'] / 1e9:.2f} GB weights + "
        f"{bound['cache_bytes_per_token'] / 1e6:.1f} MB cache per token at "
        f"{r['hbm_bandwidth'] / 1e12:.2f} TB/s)"
      )
    lines.append(line)
  if not dry:
    lines.append(f"  peak memory: {_gb(r.get('peak_bytes_in_use'))}")
  return lines


def _header(a: argparse.Namespace, dry: bool) -> str:
  import jax

  d = jax.devices()[0]
  mode = "DRY RUN (lower and compile only; no model arrays)" if dry else "GPU run"
  bw = hbm_bandwidth(d.device_kind, a.hbm_bandwidth)
  return (
    f"gpu_check: {mode}; jax {jax.__version__}, {jax.default_backend()} "
    f"{d.device_kind}, HBM {'%.2f TB/s' % (bw / 1e12) if bw else 'unknown'}; {a.model}, "
    f"seq {a.seq}, {a.batch} sequences per step, bf16; XLA_FLAGS="
    f"{os.environ.get('XLA_FLAGS', '')!r}"
  )


def main(argv: list[str] | None = None, print_fn: Callable[..., None] = print) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  a = parse_args(argv)
  if a.part:  # child process: one part on the GPU, one JSON line
    print(json.dumps(run_part(a.part, a, dry=False)))
    return {}
  parts = [p for p in PARTS if p in a.parts.split(",")]
  if not a.dry_run:  # this process only looks at the GPU: it must not take its memory
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax

  dry = a.dry_run or jax.default_backend() != "gpu"
  if dry and not a.dry_run:
    seen = "nvidia-smi is present but JAX" if shutil.which("nvidia-smi") else "JAX"
    print_fn(f"gpu_check: {seen} sees no GPU (backend {jax.default_backend()}): dry run")
  print_fn(_header(a, dry))
  if dry:
    for attention in ("xla", "cudnn"):
      tries = ", ".join(f"remat {r} x micro-batch {m}" for r, m in train_plan(a, attention))
      print_fn(f"plan: train {attention}: the first that fits of: {tries}")
  results: dict[str, Any] = {}
  start = time.perf_counter()
  for i, part in enumerate(parts):
    if dry:
      results[part] = run_part(part, a, dry=True)
    else:  # each later part keeps PART_RESERVE_S of the budget
      left = a.budget_s - (time.perf_counter() - start) - PART_RESERVE_S * (len(parts) - i - 1)
      results[part] = (
        _subprocess_part(part, argv, left) if left > 20 else {"error": "no budget left"}
      )
    if part == "decode":
      lines = format_decode(results[part], dry)
    else:
      results[part].setdefault("attention", part.split("_")[1])
      lines = format_train(results[part], dry, a.seq)
    for line in lines:
      print_fn(line, flush=True)
  print_fn(f"gpu_check: done in {time.perf_counter() - start:.0f} s")
  if a.json_out:
    with open(a.json_out, "w") as f:
      json.dump({"dry_run": dry, "results": results}, f, indent=1, default=str)
  return results


if __name__ == "__main__":
  res = main()
  sys.exit(1 if any("error" in r for r in res.values()) else 0)
