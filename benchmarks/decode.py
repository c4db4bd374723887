"""Generated tokens/s: the project's KV-cache `generate` vs transformers' `generate`.

CPU (default): the same random weights on both sides (project params exported with
`polylm_jax.hf.export_hf`, loaded by `GPT2LMHeadModel.from_pretrained`), fp32, greedy, a
fixed number of new tokens (no eos), batch 1 and batch 8, in one process alternating run by
run after warm-up (OMP_WAIT_POLICY=PASSIVE keeps PyTorch's OpenMP threads from spinning
while JAX runs, SPEC section 9). Prints median / min / max tokens/s and the ratios, and
checks that both sides produced the same tokens.

  python benchmarks/decode.py                   # polylm_mid shape, prompt 32, 64 new tokens
  python benchmarks/decode.py --runs 5 --new_tokens 32 --beams 4
  python benchmarks/decode.py --base /tmp/base  # also the code of another checkout: before/after

With --base (a checkout of an earlier commit, e.g. `git worktree add /tmp/base 420f6b0`) its
`decoding.generate` runs in the same process too, alternating with the other two, so the
before and after figures come from the same minutes of the same machine. A checkout that has
`decoding.prepare` gets its params prepared as ours are (once per batch size), one without it
gets the stacked params at every call.

GPU (--gpu): polylm_1_7b-shaped random weights in bf16 on one GPU, the project only:
tokens/s at batch 1 and 8, and at batch 1 the fraction of the memory-bandwidth bound
(weights read once per token / HBM bandwidth of the device kind). One short command:

  python benchmarks/decode.py --gpu
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported

# HBM bandwidth per device kind (bytes/s), for the bandwidth bound at batch 1.
HBM_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="polylm_mid", help="preset shape (CPU mode)")
  p.add_argument("--prompt_len", type=int, default=32)
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--batches", default="1,8")
  p.add_argument("--runs", type=int, default=7, help="timed runs per side and batch")
  p.add_argument("--beams", type=int, default=1, help="num_beams (1: greedy)")
  p.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
  p.add_argument(
    "--layer_loop",
    default="unrolled",
    choices=["unrolled", "scan"],
    help="how decoding goes over the layers (polylm_jax/decode_stack.py)",
  )
  p.add_argument("--base", default=None, help="checkout of an earlier commit: before vs after")
  p.add_argument(
    "--prepare",
    type=int,
    default=1,
    help="1: split the layer weights once (decoding.prepare, as a server holds the model, "
    "like the loaded torch model); 0: pass the stacked params to every generate call",
  )
  p.add_argument("--gpu", action="store_true", help="polylm_1_7b bf16 on one GPU, project only")
  p.add_argument("--gpu_config", default="polylm_1_7b", help="preset shape in --gpu mode")
  p.add_argument(
    "--dry_run",
    action="store_true",
    help="run the --gpu code path on any device (e.g. --gpu_config=polylm_tiny)",
  )
  return p.parse_args(argv)


def _stats(times, tokens):
  rates = sorted(tokens / t for t in times)
  return statistics.median(rates), rates[0], rates[-1]


def _fmt(name, stats):
  med, lo, hi = stats
  return f"{name:<12} {med:10.1f} tok/s   (min {lo:.1f}, max {hi:.1f})"


def run_cpu(a) -> None:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import numpy as np
  import torch
  import transformers

  from polylm_jax import decoding, hf
  from polylm_jax.config import describe, get_config
  from polylm_jax.model import init_params

  base = None
  if a.base:
    import base_tree

    base = base_tree.load(a.base, "polylm_jax.decoding")
  torch.set_num_threads(a.threads)
  config = get_config(a.config)
  print(
    f"model: {a.config}: {describe(config)}; prompt {a.prompt_len}, {a.new_tokens} new "
    f"tokens, {'greedy' if a.beams == 1 else f'{a.beams} beams'}, fp32, {a.layer_loop} layers, "
    f"{os.cpu_count()} CPUs, jax {jax.__version__}, torch {torch.__version__}"
  )
  params = init_params(config, jax.random.key(0))
  with tempfile.TemporaryDirectory() as d:
    hf.export_hf(config, jax.device_get(params), d)
    model = transformers.GPT2LMHeadModel.from_pretrained(d).eval()
  prepared = a.prepare and a.layer_loop == "unrolled"
  if prepared:
    print("polylm_jax: layer weights split once per batch size (decoding.prepare)")
  base_prepares = base is not None and prepared and hasattr(base, "prepare")
  if base is not None:
    how = "its decoding.prepare once per batch size" if base_prepares else "stacked params"
    print(f"before: {a.base} (its polylm_jax.decoding, {how})")
  rng = np.random.RandomState(0)
  settings = dict(eos_id=-1) if a.beams == 1 else dict(eos_id=-1, num_beams=a.beams)

  for batch in [int(b) for b in a.batches.split(",")]:
    prompts = rng.randint(3, config.vocab_size, (batch, a.prompt_len))
    ours_params = params
    if prepared:  # as a server that decodes at this batch size holds the model
      ours_params = decoding.prepare(config, params, batch_size=batch * a.beams)
      ours_params = jax.block_until_ready(ours_params)
    base_params = params
    if base_prepares:  # a checkout that has decoding.prepare (with batch_size or not)
      rows = {"batch_size": batch * a.beams}
      rows = rows if "batch_size" in inspect.signature(base.prepare).parameters else {}
      base_params = jax.block_until_ready(base.prepare(config, params, **rows))
    ids = torch.tensor(prompts)
    mask = torch.ones_like(ids)
    sides = {
      "polylm_jax": lambda: decoding.generate(
        config, ours_params, prompts.tolist(), a.new_tokens, layer_loop=a.layer_loop, **settings
      )
    }
    if base is not None:
      sides["before"] = lambda: base.generate(
        config, base_params, prompts.tolist(), a.new_tokens, layer_loop=a.layer_loop, **settings
      )

    def theirs():
      with torch.no_grad():
        out = model.generate(
          ids,
          attention_mask=mask,
          max_new_tokens=a.new_tokens,
          min_new_tokens=a.new_tokens,
          do_sample=False,
          num_beams=a.beams,
          pad_token_id=0,
          eos_token_id=None,
        )
      return out[:, a.prompt_len :].tolist()

    sides["transformers"] = theirs
    ref = theirs()  # warm-up (compiles) and a correctness check
    same = {name: fn() == ref for name, fn in sides.items() if name != "transformers"}
    times = {name: [] for name in sides}
    for _ in range(a.runs):
      for name, fn in sides.items():
        t0 = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t0)
    tokens = batch * a.new_tokens
    stats = {name: _stats(ts, tokens) for name, ts in times.items()}
    print(f"\nbatch {batch}: {a.runs} runs each, same tokens as transformers: {same}")
    for name in sides:
      print(_fmt(name, stats[name]))
    for name in [n for n in sides if n != "transformers"]:
      ratios = sorted(t / o for o, t in zip(times[name], times["transformers"]))
      print(
        f"{name + ' / hf':<16} {stats[name][0] / stats['transformers'][0]:6.2f}x  (median of "
        f"medians; per-run pairs {ratios[0]:.2f}-{ratios[-1]:.2f}x)"
      )
    if base is not None:
      print(f"after / before   {stats['polylm_jax'][0] / stats['before'][0]:6.2f}x")


def run_gpu(a) -> None:
  import jax
  import numpy as np

  from polylm_jax import decoding
  from polylm_jax.config import count_params, get_config
  from polylm_jax.model import init_params

  device = jax.devices()[0]
  if device.platform != "gpu" and not a.dry_run:
    raise SystemExit(f"--gpu needs a GPU; JAX sees {device.platform} (--dry_run runs anyway)")
  kind = device.device_kind
  bandwidth = next((bw for k, bw in HBM_BANDWIDTH.items() if k in kind), None)
  config = get_config(a.gpu_config, dtype="bfloat16", param_dtype="bfloat16")
  params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(0))
  jax.block_until_ready(params)
  n = count_params(config)
  # Per token every weight is read once, except the position table (one row).
  weight_bytes = (n - config.max_len * config.d_model) * 2
  print(
    f"device: {kind}; {a.gpu_config} bf16, {n:,} params; prompt {a.prompt_len}, "
    f"{a.new_tokens} new tokens, greedy, {a.layer_loop} layers"
  )
  rng = np.random.RandomState(0)
  for batch in [int(b) for b in a.batches.split(",")]:
    prompts = rng.randint(3, config.vocab_size, (batch, a.prompt_len)).tolist()
    run = lambda: decoding.generate(
      config, params, prompts, a.new_tokens, eos_id=-1, layer_loop=a.layer_loop
    )
    t0 = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(a.runs):
      t0 = time.perf_counter()
      run()
      times.append(time.perf_counter() - t0)
    med, lo, hi = _stats(times, batch * a.new_tokens)
    line = (
      f"batch {batch}: {med:.1f} tok/s (min {lo:.1f}, max {hi:.1f}; first call "
      f"{compile_s:.1f} s incl. compile; prefill included)"
    )
    if batch == 1 and bandwidth:
      bound = bandwidth / weight_bytes
      line += (
        f"; bandwidth bound {bound:.0f} tok/s ({weight_bytes / 1e9:.2f} GB of weights / "
        f"{bandwidth / 1e12:.2f} TB/s): {med / bound:.0%} of it"
      )
    print(line)


def main(argv=None) -> None:
  a = parse_args(argv)
  if a.gpu:
    if a.runs == parse_args([]).runs:
      a.runs = 5
    if a.new_tokens == parse_args([]).new_tokens:
      a.new_tokens = 256
    if a.prompt_len == parse_args([]).prompt_len:
      a.prompt_len = 128
    if a.dry_run:
      a.new_tokens, a.prompt_len, a.runs = min(a.new_tokens, 16), min(a.prompt_len, 16), 2
    run_gpu(a)
  else:
    run_cpu(a)


if __name__ == "__main__":
  main()
