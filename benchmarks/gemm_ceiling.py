"""The fastest a training step can be on this CPU: its matrix products alone, at the best rate
JAX or PyTorch reaches on each shape.

A step of the GPT-2 blocks does, per layer, the forward product of each weight (QKV, attention
output, fc1, fc2) and two in the backward (input gradient, weight gradient), the attention's
two batched products forward and four backward, and the output layer's three. Timing each as a
bare fp32 product (no bias, activation, softmax, norm or optimizer) gives a time no step doing
the same work can beat: `ceiling tokens/s = tokens / sum over products of the best time`.
`train_step.py --ceiling` prints it beside the steps, so a goal such as "1.2x PyTorch" can be
checked against it. Why not XLA's cost analysis: it counts a scanned layer once, and FLOPs alone
would not say what rate a shape reaches on this machine.
"""

from __future__ import annotations

import time
from typing import Callable


def step_products(layers: int, d: int, heads: int, d_ff: int, vocab: int, batch: int, seq: int):
  """[(name, count, (batch dims), m, k, n)] of one training step (forward + backward)."""
  n, dh = batch * seq, d // heads
  out = []
  for name, k, w in (("qkv", d, 3 * d), ("attn_out", d, d), ("fc1", d, d_ff), ("fc2", d_ff, d)):
    out += [
      (f"{name} fwd", layers, (), n, k, w),
      (f"{name} d_input", layers, (), n, w, k),
      (f"{name} d_weight", layers, (), k, n, w),
    ]
  bh = (batch * heads,)
  out += [
    ("scores fwd (q k^T)", layers, bh, seq, dh, seq),
    ("context fwd (p v)", layers, bh, seq, seq, dh),
    ("attention bwd (p^T g, g_s k, g_s^T q)", 3 * layers, bh, seq, seq, dh),
    ("attention bwd (g v^T)", layers, bh, seq, dh, seq),
    ("logits fwd", 1, (), n, d, vocab),
    ("logits d_hidden", 1, (), n, vocab, d),
    ("logits d_embedding", 1, (), vocab, n, d),
  ]
  return out


def _best_time(fn: Callable[[], object], reps: int) -> float:
  fn()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return min(times)


def measure(products, reps: int = 5, with_torch: bool = True) -> dict:
  """Per product: best seconds in JAX and in PyTorch; totals and the step's FLOPs."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  torch = None
  if with_torch:
    import torch  # pylint: disable=g-import-not-at-top
  rows, rng = [], np.random.default_rng(0)
  matmul = jax.jit(jnp.matmul)
  for name, count, bdims, m, k, n in products:
    a = rng.standard_normal((*bdims, m, k), dtype=np.float32)
    b = rng.standard_normal((*bdims, k, n), dtype=np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    t_jax = _best_time(lambda: matmul(ja, jb).block_until_ready(), reps)
    t_torch = float("inf")
    if torch is not None:
      ta, tb = torch.from_numpy(a), torch.from_numpy(b)
      t_torch = _best_time(lambda: torch.matmul(ta, tb), reps)
    flops = 2.0 * m * k * n * (bdims[0] if bdims else 1)
    rows.append(dict(name=name, count=count, flops=flops, jax_s=t_jax, torch_s=t_torch))
  total = lambda key: sum(r["count"] * r[key] for r in rows)
  best = sum(r["count"] * min(r["jax_s"], r["torch_s"]) for r in rows)
  return dict(
    rows=rows,
    flops=sum(r["count"] * r["flops"] for r in rows),
    jax_s=total("jax_s"),
    torch_s=total("torch_s"),
    best_s=best,
  )


def describe(result: dict, tokens: int, sides: dict[str, float]) -> list[str]:
  """Lines: the products' time per library, the ceiling, and each side's share of it.
  sides: {name: median tokens/s of that side's step}."""
  best, flops = result["best_s"], result["flops"]
  lines = [
    f"matrix products of one step: {flops / 1e9:.1f} GFLOP; bare fp32 products take "
    f"jax {result['jax_s']:.2f} s, torch {result['torch_s']:.2f} s, best of the two per "
    f"shape {best:.2f} s ({flops / best / 1e9:.0f} GFLOP/s)",
    f"ceiling: {tokens / best:.0f} tok/s (products only, nothing else of the step)",
  ]
  for name, rate in sides.items():
    lines.append(f"  {name}: {rate:.0f} tok/s = {rate * best / tokens:.0%} of the ceiling")
  if "torch" in sides:
    lines.append(
      f"  the ceiling is {tokens / best / sides['torch']:.2f}x the torch step "
      "(no step with the same products can be faster than that)"
    )
  return lines


def verdict(ceilings_tok_s: list[float], torch_tok_s: float, goal: float = 1.2) -> str:
  """One line: whether `goal` x the torch step fits under the median ceiling of the runs."""
  ceiling = sorted(ceilings_tok_s)[len(ceilings_tok_s) // 2]
  need = goal * torch_tok_s
  return (
    f"median ceiling {ceiling:.0f} tok/s; {goal:g}x torch is {need:.0f} tok/s = "
    f"{need / ceiling:.0%} of the ceiling"
    + (" (out of reach: above what the products alone allow)" if need > ceiling else "")
  )


def summarize_rows(result: dict) -> list[str]:
  out = []
  for r in result["rows"]:
    rates = [r["flops"] / r[k] / 1e9 for k in ("jax_s", "torch_s") if r[k] != float("inf")]
    out.append(
      f"  {r['name']:<38s} x{r['count']:<3d} " + " / ".join(f"{x:6.1f}" for x in rates) + " GFLOP/s"
    )
  return out
