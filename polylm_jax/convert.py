"""Convert released Hugging Face PolyLM weights to a project checkpoint and back.

  python -m polylm_jax.convert --from_hf=/path/polylm-1.7b --to=runs/polylm_1_7b
  python -m polylm_jax.convert --from_checkpoint=runs/polylm_1_7b --to_hf=/tmp/polylm_hf

The import writes MODEL_DIR/checkpoints/<step> (params and model config, no optimiser
state), so `polylm_jax.load(MODEL_DIR)` and the trainer both pick it up. Both directions
stream tensor by tensor (see hf.py); this binary runs on the host CPU. The tokenizer travels
with the weights: the HF directory's tokenizer.model is copied into MODEL_DIR, and the run's
(or --vocab) into the export. Output folders are checked before anything is read.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import sys
import time

from absl import app, flags

from polylm_jax import checkpoints, hf, logs
from polylm_jax.config import count_params, get_config
from polylm_jax.files import atomic_write

_FROM_HF = flags.DEFINE_string("from_hf", None, "HF model directory (config.json + weights).")
_TO = flags.DEFINE_string("to", None, "Run directory to write the Orbax checkpoint into.")
_FROM_CKPT = flags.DEFINE_string(
  "from_checkpoint", None, "Run, checkpoints or step directory to export."
)
_TO_HF = flags.DEFINE_string("to_hf", None, "Directory to write the HF model into.")
_STEP = flags.DEFINE_integer(
  "step",
  None,
  "Import: the step to save as (default 0). Export: the step to read "
  "(default the latest complete one).",
)
_CONFIG = flags.DEFINE_string(
  "config", None, "Optional preset name (e.g. polylm_1_7b) the checkpoint must match."
)
_PARAM_DTYPE = flags.DEFINE_enum(
  "param_dtype", "float32", ["float32", "bfloat16", "float16"], "Imported param dtype."
)
_HF_DTYPE = flags.DEFINE_enum(
  "hf_dtype", "float32", ["float32", "bfloat16", "float16"], "Exported tensor dtype."
)
_VOCAB = flags.DEFINE_string(
  "vocab",
  None,
  "Export: the SentencePiece model to ship as tokenizer.model (default: the run's own).",
)
_MAX_SHARD = flags.DEFINE_integer(
  "max_shard_bytes", None, "Split the exported safetensors into files of at most this size."
)


@dataclasses.dataclass
class ConvertReport:
  direction: str
  source: str
  destination: str
  num_params: int
  dtype: str
  seconds: float
  peak_rss_bytes: int

  def __str__(self) -> str:
    return (
      f"{self.direction}: {self.source} -> {self.destination}\n"
      f"  {self.num_params:,} parameters, {self.dtype}, {self.seconds:.1f} s, "
      f"peak RSS {self.peak_rss_bytes / 2**30:.2f} GiB"
    )


def peak_rss_bytes() -> int:
  """This process's peak resident set size (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def import_hf_to_checkpoint(
  hf_dir: str,
  model_dir: str,
  *,
  step: int = 0,
  expected: str | None = None,
  param_dtype: str = "float32",
) -> ConvertReport:
  """HF directory -> MODEL_DIR/checkpoints/<step>; refuses to overwrite an existing step."""
  start = time.time()
  existing = checkpoints.complete_steps(os.path.join(model_dir, checkpoints.CHECKPOINTS_SUBDIR))
  if step in existing:
    raise FileExistsError(f"{model_dir}: already holds a checkpoint for step {step}")
  logs.check_output_dir(model_dir, "--to")
  config, params = hf.import_hf(
    hf_dir, expected=get_config(expected) if expected else None, param_dtype=param_dtype
  )
  policy = checkpoints.CheckpointPolicy(save_every=0, keep=None, async_save=False)
  with checkpoints.CheckpointManager(model_dir, config, policy, copy_host_arrays=False) as manager:
    if not manager.save(step, params, force=True):
      raise RuntimeError(f"{model_dir}: step {step} was not saved")
  tokenizer = os.path.join(hf_dir, hf.TOKENIZER_FILE)
  if os.path.isfile(tokenizer):
    with open(tokenizer, "rb") as f:
      atomic_write(os.path.join(model_dir, hf.TOKENIZER_FILE), f.read())
  return ConvertReport(
    "import",
    hf_dir,
    os.path.join(manager.directory, str(step)),
    count_params(config),
    param_dtype,
    time.time() - start,
    peak_rss_bytes(),
  )


def export_checkpoint_to_hf(
  source: str,
  hf_dir: str,
  *,
  step: int | None = None,
  expected: str | None = None,
  dtype: str = "float32",
  max_shard_bytes: int | None = None,
  tokenizer: str | None = None,
) -> ConvertReport:
  """A project checkpoint (latest complete step, or `step`) -> an HF GPT2LMHeadModel dir.

  `tokenizer` (default: the run's tokenizer.model) is shipped in the export; without one
  a warning says so.
  """
  start = time.time()
  if os.path.exists(os.path.join(hf_dir, hf.CONFIG_FILE)):
    raise FileExistsError(f"{hf_dir}: already holds a model ({hf.CONFIG_FILE})")
  if tokenizer and not os.path.isfile(tokenizer):
    raise FileNotFoundError(f"--vocab={tokenizer}: no such file")
  from polylm_jax import t5x_ckpt  # pylint: disable=import-outside-toplevel

  if t5x_ckpt.is_t5x_checkpoint(source):  # a `python -m t5x.train` run dir or checkpoint_N
    logs.check_output_dir(hf_dir, "--to_hf")
    config, params = t5x_ckpt.load(source, get_config(expected) if expected else None, step)
    hf.export_hf(config, params, hf_dir, dtype, max_shard_bytes, tokenizer_file=tokenizer)
    seconds = time.time() - start
    return ConvertReport(
      "export", source, hf_dir, count_params(config), dtype, seconds, peak_rss_bytes()
    )
  tokenizer = tokenizer or checkpoints.tokenizer_beside(source)
  logs.check_output_dir(hf_dir, "--to_hf")
  root, step = checkpoints.resolve_checkpoint(source, step)
  if tokenizer is None:
    print(
      f"warning: no {hf.TOKENIZER_FILE} beside {source}: the export has no tokenizer "
      "(pass --vocab=/path/tokenizer.model)",
      file=sys.stderr,
    )
  with checkpoints.CheckpointManager(
    root, get_config(expected) if expected else None, read_only=True, subdir=""
  ) as manager:
    config = manager.config or manager.saved_config(step)
    hf.export_hf(
      config,
      manager.host_param_reader(step),
      hf_dir,
      dtype=dtype,
      max_shard_bytes=max_shard_bytes,
      tokenizer_file=tokenizer,
    )
  return ConvertReport(
    "export", source, hf_dir, count_params(config), dtype, time.time() - start, peak_rss_bytes()
  )


def convert(
  *,
  from_hf: str | None = None,
  to: str | None = None,
  from_checkpoint: str | None = None,
  to_hf: str | None = None,
  step: int | None = None,
  expected: str | None = None,
  param_dtype: str = "float32",
  hf_dtype: str = "float32",
  max_shard_bytes: int | None = None,
  tokenizer: str | None = None,
) -> ConvertReport:
  """Exactly one direction: (from_hf, to) or (from_checkpoint, to_hf)."""
  if from_hf and to and not (from_checkpoint or to_hf):
    return import_hf_to_checkpoint(
      from_hf, to, step=step or 0, expected=expected, param_dtype=param_dtype
    )
  if from_checkpoint and to_hf and not (from_hf or to):
    return export_checkpoint_to_hf(
      from_checkpoint,
      to_hf,
      step=step,
      expected=expected,
      dtype=hf_dtype,
      max_shard_bytes=max_shard_bytes,
      tokenizer=tokenizer,
    )
  raise ValueError("convert: give either --from_hf and --to, or --from_checkpoint and --to_hf")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=import-outside-toplevel

  jax.config.update("jax_platforms", "cpu")  # a host-side job: never touch accelerators
  try:
    report = convert(
      from_hf=_FROM_HF.value,
      to=_TO.value,
      from_checkpoint=_FROM_CKPT.value,
      to_hf=_TO_HF.value,
      step=_STEP.value,
      expected=_CONFIG.value,
      param_dtype=_PARAM_DTYPE.value,
      hf_dtype=_HF_DTYPE.value,
      max_shard_bytes=_MAX_SHARD.value,
      tokenizer=_VOCAB.value,
    )
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"convert: error: {e}", file=sys.stderr)
    sys.exit(1)
  print(report)


if __name__ == "__main__":
  logs.run(main)  # quiet console; --verbosity=0 shows Orbax's INFO lines
