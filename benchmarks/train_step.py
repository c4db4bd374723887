"""One training step of PolyLM in JAX vs transformers' GPT2LMHeadModel in PyTorch, on CPU.

Same architecture and work on both sides: GPT-2 blocks (gelu_new, biases, tied embeddings),
fp32, full-vocab cross entropy, clipping at 1.0, AdamW with betas 0.9/0.95 and the same
weight-decay mask. The JAX side is the project's real step (`polylm_jax.training.step`: jitted,
state donated, with the non-finite guard and per-language metrics). Both sides run in one
process, alternating step by step after warm-up (compilation and first steps excluded);
OMP_WAIT_POLICY=PASSIVE keeps PyTorch's OpenMP threads from spinning while JAX runs (SPEC
section 9). Both get the same CPUs: --cpus N pins the process to N of them before JAX and
PyTorch start (XLA sizes its thread pool from the affinity) and gives PyTorch N threads.

--runs N (default 3) repeats the whole comparison in N fresh processes, one after another, and
prints each run's median (min-max) side by side, then the median over runs of each side's
median and of the ratio, with the runs' min-max. --base_tree DIR adds the JAX step of the
polylm_jax package in DIR (e.g. `git worktree add /tmp/base 420f6b0`) as "jax_base", built in
the same process, so the library's before and after alternate with PyTorch step by step.

  python benchmarks/train_step.py                  # 6 layers, d 512, vocab 32000, 4 x 512, 3 runs
  python benchmarks/train_step.py --base_tree /tmp/base --runs 3
  python benchmarks/train_step.py --steps 20 --layers 2 --runs 1
  python benchmarks/train_step.py --ab_config scan_unroll=6   # a config field, A/B
  python benchmarks/train_step.py --ceiling   # + the step's matrix products alone, per run

--ceiling times every matrix product of the step as a bare fp32 product in JAX and PyTorch on
the same CPUs after the steps (benchmarks/gemm_ceiling.py) and prints the fastest a step doing
those products could be, and where each side and "1.2x PyTorch" stand against it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--layers", type=int, default=6)
  p.add_argument("--d_model", type=int, default=512)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--vocab", type=int, default=32000)
  p.add_argument("--seq", type=int, default=512)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument(
    "--dtype",
    default="float32",
    choices=["float32", "bfloat16"],
    help="compute dtype; parameters and Adam state stay fp32 on both sides (bfloat16: the "
    "PolyLM recipe; PyTorch under torch.autocast)",
  )
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--xla_flags", default="", help="extra XLA_FLAGS for the JAX side")
  p.add_argument("--only", choices=["both", "jax", "torch"], default="both")
  p.add_argument(
    "--ab_option",
    action="append",
    default=[],
    help="NAME=VALUE: also time the project step compiled with this XLA option "
    "(e.g. xla_cpu_use_xnnpack=true), alternating in the same process; repeat for more sides",
  )
  p.add_argument(
    "--ab_config",
    action="append",
    default=[],
    help="NAME=VALUE: also time the project step with this PolyLMConfig field changed "
    "(e.g. scan_unroll=6), alternating in the same process; repeat for more sides",
  )
  p.add_argument(
    "--with_lean",
    action="store_true",
    help="also time a minimal JAX step (loss, grad, optax update; no guard, no "
    "metrics) to measure what the project step's extras cost",
  )
  p.add_argument(
    "--ceiling",
    action="store_true",
    help="also time the step's matrix products alone (benchmarks/gemm_ceiling.py): the "
    "fastest any step doing them can be on these CPUs",
  )
  p.add_argument("--runs", type=int, default=3, help="fresh processes, one after another")
  p.add_argument("--cpus", type=int, default=0, help="CPUs for both sides (0: all available)")
  p.add_argument("--base_tree", default="", help="also time the polylm_jax step found in DIR")
  p.add_argument("--json", action="store_true", help="one run, results as a JSON line (internal)")
  a = p.parse_args(argv)
  if a.runs < 1 or a.steps < 1 or a.cpus < 0:
    p.error("--runs and --steps must be >= 1, --cpus >= 0")
  for flag, values in (("--ab_option", a.ab_option), ("--ab_config", a.ab_config)):
    for v in values:
      if not v.partition("=")[0] or "=" not in v:
        p.error(f"{flag} takes NAME=VALUE, got {v!r}")
  if a.base_tree and not os.path.isfile(os.path.join(a.base_tree, "polylm_jax", "__init__.py")):
    p.error(f"--base_tree: {a.base_tree} has no polylm_jax/__init__.py")
  return a


def pin_cpus(n: int) -> int:
  """Pins this process to its first n allowed CPUs (0: all); returns how many it has."""
  cpus = sorted(os.sched_getaffinity(0))
  if n:
    if n > len(cpus):
      raise SystemExit(f"--cpus={n}: only {len(cpus)} CPUs are available to this process")
    os.sched_setaffinity(0, cpus[:n])
  return len(os.sched_getaffinity(0))


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # before JAX and PyTorch start their thread pools
  if ARGS.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + ARGS.xla_flags).strip()
  if ARGS.runs == 1 or ARGS.json:
    pin_cpus(ARGS.cpus)

import contextlib  # pylint: disable=g-import-not-at-top,g-bad-import-order
import functools
import importlib
import json
import subprocess
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax

from polylm_jax import optim
from polylm_jax.training import step as ts
from polylm_jax.config import PolyLMConfig
from polylm_jax.model import PolyLM, init_params

LR, WD, BETAS, EPS, CLIP = 6e-5, 1e-4, (0.9, 0.95), 1e-8, 1.0
CEILING = "_ceiling"


def _field_value(text: str):
  """--ab_config's / --ab_option's VALUE as int, float, bool or string."""
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return {"true": True, "false": False}.get(text.lower(), text)


def _gemm_ceiling():
  """benchmarks/gemm_ceiling.py, next to this file (also when a test loads this one by path)."""
  here = os.path.dirname(os.path.abspath(__file__))
  if here not in sys.path:
    sys.path.append(here)
  return importlib.import_module("gemm_ceiling")


THIS_TREE = types.SimpleNamespace(
  optim=optim, ts=ts, PolyLMConfig=PolyLMConfig, init_params=init_params
)


@contextlib.contextmanager
def polylm_from(tree: str):
  """Imports the polylm_jax package of another checkout for the duration of the block (its
  functions keep working after it); this tree's modules are back afterwards."""
  root = os.path.abspath(tree)
  mine = {k: m for k, m in sys.modules.items() if k.split(".")[0] == "polylm_jax"}
  for k in mine:
    del sys.modules[k]
  sys.path.insert(0, root)
  try:
    pkg = importlib.import_module("polylm_jax")
    if not os.path.abspath(pkg.__file__).startswith(root + os.sep):
      raise SystemExit(f"--base_tree: imported {pkg.__file__}, not the package in {root}")
    config = importlib.import_module("polylm_jax.config")
    yield types.SimpleNamespace(
      optim=importlib.import_module("polylm_jax.optim"),
      ts=importlib.import_module("polylm_jax.training.step"),
      PolyLMConfig=config.PolyLMConfig,
      init_params=importlib.import_module("polylm_jax.model").init_params,
    )
  finally:
    sys.path.remove(root)
    for k in [k for k in sys.modules if k.split(".")[0] == "polylm_jax"]:
      del sys.modules[k]
    sys.modules.update(mine)


def make_config(a, config_cls=PolyLMConfig) -> PolyLMConfig:
  return config_cls(
    vocab_size=a.vocab,
    num_layers=a.layers,
    d_model=a.d_model,
    num_heads=a.heads,
    head_dim=a.d_model // a.heads,
    d_ff=4 * a.d_model,
    max_len=a.seq,
    dtype=a.dtype,
  )


def jax_side(cfg, tokens: np.ndarray, compiler_options: dict | None = None, tree=THIS_TREE):
  """The project's step (of `tree`: this checkout or --base_tree's), compiled ahead."""
  optim, ts = tree.optim, tree.ts  # pylint: disable=redefined-outer-name
  optimizer = optim.make_optimizer(
    LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WD, clip_norm=CLIP
  )
  state = ts.init_train_state(tree.init_params(cfg, jax.random.key(0)), optimizer)
  b, t = tokens.shape[0], tokens.shape[1] - 1
  batch = {
    "inputs": tokens[:, :-1],
    "targets": tokens[:, 1:],
    "positions": np.broadcast_to(np.arange(t), (b, t)),
    "segment_ids": np.ones((b, t)),
    "langs": np.zeros((b, t)),
  }
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  batch["loss_weights"] = jnp.ones((b, t), jnp.float32)
  step = (
    jax.jit(functools.partial(ts.train_step, config=cfg, optimizer=optimizer), donate_argnums=0)
    .lower(state, batch)
    .compile(compiler_options)
  )
  holder = {"state": state}

  def run() -> float:
    holder["state"], metrics = step(holder["state"], batch)
    return float(metrics["loss"])  # blocks until the step is done

  return run


def jax_lean_side(cfg: PolyLMConfig, tokens: np.ndarray):
  """value_and_grad of the mean cross entropy + the same optax update, nothing else."""
  optimizer = optim.make_optimizer(
    LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WD, clip_norm=CLIP
  )
  params = init_params(cfg, jax.random.key(0))
  inputs, targets = jnp.asarray(tokens[:, :-1], jnp.int32), jnp.asarray(tokens[:, 1:], jnp.int32)

  def loss(p):
    logits = PolyLM(cfg).apply({"params": p}, inputs).astype(jnp.float32)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(p, o):
    value, grads = jax.value_and_grad(loss)(p)
    updates, o = optimizer.update(grads, o, p)
    return optax.apply_updates(p, updates), o, value

  holder = {"p": params, "o": optimizer.init(params)}

  def run() -> float:
    holder["p"], holder["o"], value = step(holder["p"], holder["o"])
    return float(value)

  return run


def torch_side(cfg: PolyLMConfig, tokens: np.ndarray):
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import GPT2Config, GPT2LMHeadModel  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  hf = GPT2Config(
    vocab_size=cfg.vocab_size,
    n_positions=cfg.max_len,
    n_embd=cfg.d_model,
    n_layer=cfg.num_layers,
    n_head=cfg.num_heads,
    n_inner=cfg.d_ff,
    activation_function="gelu_new",
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    layer_norm_epsilon=cfg.layer_norm_eps,
    tie_word_embeddings=True,
    initializer_range=cfg.init_std,
    bos_token_id=cfg.eos_id,
    eos_token_id=cfg.eos_id,
  )
  torch.set_num_threads(len(os.sched_getaffinity(0)))  # the CPUs XLA's pool gets
  model = GPT2LMHeadModel(hf).train()
  decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.endswith("bias")]
  no_decay = [
    p for n, p in model.named_parameters() if not (p.ndim >= 2 and not n.endswith("bias"))
  ]
  opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
    lr=LR,
    betas=BETAS,
    eps=EPS,
  )
  inputs = torch.from_numpy(tokens[:, :-1].astype(np.int64))
  targets = torch.from_numpy(tokens[:, 1:].astype(np.int64))

  bf16 = cfg.dtype == "bfloat16"

  def run() -> float:
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
      logits = model(input_ids=inputs).logits
    loss = torch.nn.functional.cross_entropy(
      logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
    )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    return float(loss.detach())

  return (
    run,
    f"torch {torch.__version__}, {torch.get_num_threads()} threads, attn "
    f"{model.config._attn_implementation}" + (", autocast bfloat16" if bf16 else ""),
  )


def summary(times: list[float], tokens_per_step: int) -> dict:
  tps = [tokens_per_step / s for s in times]
  return {
    "median": statistics.median(tps),
    "min": min(tps),
    "max": max(tps),
    "step_s": statistics.median(times),
    "steps": len(times),
  }


def run_once(a, log=print) -> dict:
  """One comparison in this process: {side: tokens/s summary}, plus "info" lines."""
  cfg = make_config(a)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (a.batch, a.seq + 1))
  sides, info = {}, []

  def add(name: str, build) -> None:
    start = time.perf_counter()
    sides[name] = build()
    sides[name]()
    info.append(f"{name}: first step incl. compile {time.perf_counter() - start:.1f} s")

  if a.only in ("both", "jax"):
    add("jax", lambda: jax_side(cfg, tokens))
    if a.base_tree:
      with polylm_from(a.base_tree) as base:
        add("jax_base", lambda: jax_side(make_config(a, base.PolyLMConfig), tokens, tree=base))
    for i, option in enumerate(a.ab_option):
      name, _, value = option.partition("=")
      add(f"jax+opt{i + 1}", lambda: jax_side(cfg, tokens, {name: _field_value(value)}))
      info[-1] += f" ({option})"
    for i, field in enumerate(a.ab_config):
      name, _, value = field.partition("=")
      add(f"jax+cfg{i + 1}", lambda: jax_side(cfg.replace(**{name: _field_value(value)}), tokens))
      info[-1] += f" ({field})"
    if a.with_lean:
      add("jax_lean", lambda: jax_lean_side(cfg, tokens))
  if a.only in ("both", "torch"):
    sides["torch"], desc = torch_side(cfg, tokens)
    info.append(desc)
  cpus = len(os.sched_getaffinity(0))
  info.append(
    f"jax {jax.__version__} on {cpus} CPUs (XLA's pool follows the affinity); "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; config: {cfg.num_layers} layers, "
    f"d_model {cfg.d_model}, {cfg.num_heads} heads, vocab {cfg.vocab_size}, seq {a.seq}, "
    f"batch {a.batch}, compute {a.dtype}, fp32 parameters"
  )
  losses = {k: [run() for _ in range(a.warmup)][-1] for k, run in sides.items()}
  info.append("after warm-up, loss: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
  for line in info:
    log(line)
  times = {k: [] for k in sides}
  for i in range(a.steps):
    order = list(sides) if i % 2 == 0 else list(reversed(sides))
    for k in order:
      t0 = time.perf_counter()
      sides[k]()
      times[k].append(time.perf_counter() - t0)
  out = {k: summary(v, a.batch * a.seq) for k, v in times.items()}
  if a.ceiling:  # after the steps, on the same CPUs, minutes apart at most
    gemm_ceiling = _gemm_ceiling()
    products = gemm_ceiling.step_products(
      a.layers, a.d_model, a.heads, 4 * a.d_model, a.vocab, a.batch, a.seq
    )
    out[CEILING] = gemm_ceiling.measure(products, with_torch="torch" in sides)
  return out


def _cell(r: dict) -> str:
  return f"{r['median']:8.0f} ({r['min']:.0f}-{r['max']:.0f})"


def report(runs: list[dict], log=print, tokens: int = 0) -> dict:
  """Each run's line (median (min-max) tokens/s per side, ratio to torch), then the median
  over runs of each side's median and of each ratio, with the runs' range; with --ceiling,
  each run's ceiling lines."""
  ceilings = [r.pop(CEILING) for r in runs if CEILING in r]
  sides = list(runs[0])
  ratios = [k for k in sides if k != "torch" and "torch" in sides]
  log(
    "run  "
    + "  ".join(f"{k + ' tok/s':>24s}" for k in sides)
    + "".join(f"  {k + '/torch':>14s}" for k in ratios)
  )
  per_run = {k: [r[k]["median"] for r in runs] for k in sides}
  per_ratio = {k: [r[k]["median"] / r["torch"]["median"] for r in runs] for k in ratios}
  for i, r in enumerate(runs):
    log(
      f"{i + 1:<4d} "
      + "  ".join(f"{_cell(r[k]):>24s}" for k in sides)
      + "".join(f"  {per_ratio[k][i]:13.2f}x" for k in ratios)
    )
  out = {}
  for k, v in list(per_run.items()) + [(f"{k}/torch", v) for k, v in per_ratio.items()]:
    out[k] = {"median": statistics.median(v), "min": min(v), "max": max(v)}
  log(
    f"median of {len(runs)} runs: "
    + "; ".join(
      f"{k} {v['median']:.2f}x ({v['min']:.2f}-{v['max']:.2f}x)"
      if "/" in k
      else f"{k} {v['median']:.0f} tok/s ({v['min']:.0f}-{v['max']:.0f})"
      for k, v in out.items()
    )
  )
  gemm_ceiling = _gemm_ceiling() if ceilings else None
  for i, c in enumerate(ceilings):
    log(f"run {i + 1} ceiling (same process, after its steps):")
    if i == 0:
      for line in gemm_ceiling.summarize_rows(c):
        log(line)
    for line in gemm_ceiling.describe(c, tokens, {k: runs[i][k]["median"] for k in sides}):
      log("  " + line)
  if ceilings:
    out["ceiling"] = [tokens / c["best_s"] for c in ceilings]
    if "torch" in out:
      log(gemm_ceiling.verdict(out["ceiling"], out["torch"]["median"]))
  return out


def _child_argv(argv: list[str]) -> list[str]:
  """argv without --runs (either form), for one run per child process."""
  out, skip = [], False
  for arg in argv:
    if skip:
      skip = False
    elif arg == "--runs":
      skip = True
    elif not arg.startswith("--runs="):
      out.append(arg)
  return out + ["--runs=1", "--json"]


def main(a, argv: list[str] | None = None) -> int:
  if a.json or a.runs == 1:
    res = run_once(a, log=(lambda line: print(line, file=sys.stderr)) if a.json else print)
    if a.json:
      print(json.dumps(res))
    else:
      report([res], tokens=a.batch * a.seq)
    return 0
  argv = sys.argv[1:] if argv is None else argv
  runs = []
  for i in range(a.runs):
    cmd = [sys.executable, os.path.abspath(__file__), *_child_argv(argv)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
      raise SystemExit(f"run {i + 1} failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    if i == 0:
      print(out.stderr.strip())
    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"run {i + 1}/{a.runs} done", flush=True)
  report(runs, tokens=a.batch * a.seq)
  return 0


if __name__ == "__main__":
  sys.exit(main(ARGS))
