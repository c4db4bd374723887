"""Peak memory of HF weight conversion against the checkpoint's size.

  .venv/bin/python benchmarks/convert_memory.py [--layers 12 --d_model 1024 --vocab 64000]

Writes a random fp32 PolyLM-shaped GPT-2 checkpoint (model.safetensors, ~0.9 GB by default)
to a temporary directory, then measures each phase in a fresh process: the peak resident
memory above the process's baseline (Linux VmHWM after resetting it via clear_refs), divided
by the checkpoint's bytes. Phases:
  import   hf.import_hf into numpy (streamed, preallocated stacked arrays)
  convert  import + Orbax save (what `python -m polylm_jax.convert --from_hf` does)
  load     polylm_jax.load of the HF directory onto a device
  export   project checkpoint -> HF safetensors
  naive    safetensors.numpy.load_file + np.stack (for contrast; not used by the project)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
PHASES = ("import", "convert", "load", "export", "naive")


def _status(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS


def _config(args):
  from polylm_jax.config import PolyLMConfig

  return PolyLMConfig(
    vocab_size=args.vocab,
    num_layers=args.layers,
    d_model=args.d_model,
    num_heads=args.d_model // 64,
    head_dim=64,
    d_ff=4 * args.d_model,
    max_len=args.max_len,
  )


def write_checkpoint(args, hf_dir: str) -> None:
  """Random fp32 weights in HF layout, written with the project's streaming exporter."""
  import numpy as np
  from polylm_jax import hf

  config = _config(args)
  rng = np.random.default_rng(0)
  params = hf._allocate(config, np.float32)  # pylint: disable=protected-access
  for path in hf.param_shapes(config):
    leaf = hf._get(params, path)  # pylint: disable=protected-access
    leaf[...] = rng.standard_normal(leaf.shape, np.float32) * 0.006
  hf.export_hf(config, params, hf_dir)


def run_phase(phase: str, args, hf_dir: str, work: str) -> dict:
  """Runs in a fresh process; returns baseline and peak RSS around one phase."""
  import numpy as np
  import jax
  from polylm_jax import checkpoints, convert, hf

  del jax, np
  ckpt_dir = os.path.join(work, "run")
  if phase == "export" and not checkpoints.complete_steps(os.path.join(ckpt_dir, "checkpoints")):
    raise RuntimeError("run the convert phase before export")
  baseline = _status("VmRSS")
  _reset_peak()
  start = time.time()
  if phase == "import":
    _, params = hf.import_hf(hf_dir)
  elif phase == "convert":
    convert.import_hf_to_checkpoint(hf_dir, ckpt_dir)
  elif phase == "load":
    _, params = checkpoints.load(hf_dir)
  elif phase == "export":
    convert.export_checkpoint_to_hf(ckpt_dir, os.path.join(work, "hf_out"))
  elif phase == "naive":
    import numpy as np
    import safetensors.numpy

    tensors = safetensors.numpy.load_file(os.path.join(hf_dir, hf.SAFETENSORS_FILE))
    config = _config(args)
    params = {  # noqa: F841  (held while the peak is read: the naive 2x baseline)
      path: np.stack([tensors[f"transformer.h.{i}.{suffix}"] for i in range(config.num_layers)])
      for suffix, path, _ in hf._LAYER_TENSORS
    }  # pylint: disable=protected-access
  seconds = time.time() - start
  return {"phase": phase, "baseline": baseline, "peak": _status("VmHWM"), "seconds": seconds}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layers", type=int, default=12)
  parser.add_argument("--d_model", type=int, default=1024)
  parser.add_argument("--vocab", type=int, default=64_000)
  parser.add_argument("--max_len", type=int, default=2048)
  parser.add_argument("--phases", default=",".join(PHASES))
  parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--_dirs", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

  if args._child:  # pylint: disable=protected-access
    hf_dir, work = args._dirs.split(",")  # pylint: disable=protected-access
    if args._child == "write":  # pylint: disable=protected-access
      write_checkpoint(args, hf_dir)
    else:
      print(json.dumps(run_phase(args._child, args, hf_dir, work)))  # pylint: disable=protected-access
    return

  from polylm_jax.config import count_params, describe

  config = _config(args)
  print(f"model: {describe(config)}")
  with tempfile.TemporaryDirectory(prefix="convert_memory_") as work:
    hf_dir = os.path.join(work, "hf")
    base = [
      sys.executable,
      os.path.abspath(__file__),
      f"--layers={args.layers}",
      f"--d_model={args.d_model}",
      f"--vocab={args.vocab}",
      f"--max_len={args.max_len}",
      f"--_dirs={hf_dir},{work}",
    ]
    subprocess.run(base + ["--_child=write"], check=True)
    size = sum(
      os.path.getsize(os.path.join(hf_dir, n))
      for n in os.listdir(hf_dir)
      if n.endswith(".safetensors")
    )
    print(
      f"checkpoint: {size / 2**20:,.0f} MiB of safetensors ({count_params(config):,} params, fp32)"
    )
    print(
      f"{'phase':<8} {'baseline MiB':>13} {'peak MiB':>9} {'increase MiB':>13} "
      f"{'increase/ckpt':>14} {'seconds':>8}"
    )
    for phase in args.phases.split(","):
      out = subprocess.run(
        base + [f"--_child={phase}"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
      )
      r = json.loads(out.stdout.strip().splitlines()[-1])
      inc = r["peak"] - r["baseline"]
      print(
        f"{phase:<8} {r['baseline'] / 2**20:>13,.0f} {r['peak'] / 2**20:>9,.0f} "
        f"{inc / 2**20:>13,.0f} {inc / size:>14.2f} {r['seconds']:>8.1f}",
        flush=True,
      )


if __name__ == "__main__":
  main()
