"""One training step of PolyLM in JAX vs transformers' GPT2LMHeadModel in PyTorch, on CPU.

Same architecture and work on both sides: GPT-2 blocks (gelu_new, biases, tied embeddings),
fp32, full-vocab cross entropy, clipping at 1.0, AdamW with betas 0.9/0.95 and the same
weight-decay mask. The JAX side is the project's real step (`polylm_jax.training.step`: jitted,
state donated, with the non-finite guard and per-language metrics). Both run in this one
process, alternating step by step, after warm-up; OMP_WAIT_POLICY=PASSIVE keeps PyTorch's
OpenMP threads from spinning while JAX runs (SPEC section 9).

  python benchmarks/train_step.py                  # 6 layers, d 512, vocab 32000, 4 x 512
  python benchmarks/train_step.py --steps 20 --layers 2
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
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--xla_flags", default="", help="extra XLA_FLAGS for the JAX side")
  p.add_argument("--only", choices=["both", "jax", "torch"], default="both")
  p.add_argument(
    "--ab_option",
    default="",
    help="NAME=VALUE: also time the project step compiled with this XLA option "
    "(e.g. xla_cpu_use_xnnpack=true), alternating in the same process",
  )
  p.add_argument(
    "--with_lean",
    action="store_true",
    help="also time a minimal JAX step (loss, grad, optax update; no guard, no "
    "metrics) to measure what the project step's extras cost",
  )
  return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.xla_flags:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + ARGS.xla_flags).strip()

import functools  # pylint: disable=g-import-not-at-top,g-bad-import-order

import jax
import jax.numpy as jnp
import numpy as np
import optax

from polylm_jax import optim
from polylm_jax.training import step as ts
from polylm_jax.config import PolyLMConfig
from polylm_jax.model import PolyLM, init_params

LR, WD, BETAS, EPS, CLIP = 6e-5, 1e-4, (0.9, 0.95), 1e-8, 1.0


def make_config(a) -> PolyLMConfig:
  return PolyLMConfig(
    vocab_size=a.vocab,
    num_layers=a.layers,
    d_model=a.d_model,
    num_heads=a.heads,
    head_dim=a.d_model // a.heads,
    d_ff=4 * a.d_model,
    max_len=a.seq,
    dtype="float32",
  )


def jax_side(cfg: PolyLMConfig, tokens: np.ndarray, compiler_options: dict | None = None):
  optimizer = optim.make_optimizer(
    LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WD, clip_norm=CLIP
  )
  state = ts.init_train_state(init_params(cfg, jax.random.key(0)), optimizer)
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
    logits = PolyLM(cfg).apply({"params": p}, inputs)
    return jnp.mean(ts.cross_entropy(logits, targets)[0])

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

  def run() -> float:
    opt.zero_grad(set_to_none=True)
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
    f"torch {torch.__version__}, {torch.get_num_threads()} threads, attn {model.config._attn_implementation}",
  )


def summary(name: str, times: list[float], tokens_per_step: int) -> dict:
  tps = [tokens_per_step / s for s in times]
  out = {
    "median": statistics.median(tps),
    "min": min(tps),
    "max": max(tps),
    "step_s": statistics.median(times),
  }
  print(
    f"{name:8s} tokens/s median {out['median']:8.0f}  min {out['min']:8.0f}  "
    f"max {out['max']:8.0f}   (median step {out['step_s']:.3f} s, {len(times)} steps)"
  )
  return out


def main(a) -> int:
  cfg = make_config(a)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (a.batch, a.seq + 1))
  tokens_per_step = a.batch * a.seq
  sides = {}
  if a.only in ("both", "jax"):
    start = time.perf_counter()
    sides["jax"] = jax_side(cfg, tokens)
    sides["jax"]()
    print(
      f"jax {jax.__version__}: first step incl. compile {time.perf_counter() - start:.1f} s; "
      f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
  if a.ab_option and a.only in ("both", "jax"):
    name, _, value = a.ab_option.partition("=")
    value = {"true": True, "false": False}.get(value.lower(), value)
    start = time.perf_counter()
    sides["jax+opt"] = jax_side(cfg, tokens, {name: value})
    sides["jax+opt"]()
    print(f"jax+opt ({name}={value}): first step incl. compile {time.perf_counter() - start:.1f} s")
  if a.with_lean and a.only in ("both", "jax"):
    start = time.perf_counter()
    sides["jax_lean"] = jax_lean_side(cfg, tokens)
    sides["jax_lean"]()
    print(f"jax_lean: first step incl. compile {time.perf_counter() - start:.1f} s")
  if a.only in ("both", "torch"):
    sides["torch"], desc = torch_side(cfg, tokens)
    print(desc)
  print(
    f"config: {cfg.num_layers} layers, d_model {cfg.d_model}, {cfg.num_heads} heads, "
    f"vocab {cfg.vocab_size}, seq {a.seq}, batch {a.batch}, fp32"
  )
  losses = {k: [run() for _ in range(a.warmup)][-1] for k, run in sides.items()}
  print("after warm-up, loss: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
  times = {k: [] for k in sides}
  for i in range(a.steps):
    order = list(sides) if i % 2 == 0 else list(reversed(sides))
    for k in order:
      t0 = time.perf_counter()
      sides[k]()
      times[k].append(time.perf_counter() - t0)
  res = {k: summary(k, v, tokens_per_step) for k, v in times.items()}
  if "torch" in res:
    for k in res:
      if k != "torch":
        print(
          f"ratio {k}/torch (median tokens/s): {res[k]['median'] / res['torch']['median']:.2f}x"
        )
  return 0


if __name__ == "__main__":
  sys.exit(main(ARGS))
