"""The settings of the infer and eval binaries: small frozen dataclasses that check themselves.

As for the trainer (train_config.py), gin builds them at the edge
(`infer.checkpoint = @CheckpointSpec()`, see gin/runs/infer.gin and eval.gin) and the library
functions (`inference.run_inference`, `checkpoint_eval.evaluate_checkpoint`) take them as
plain typed values. A bad value fails when the object is built, naming the field (and the
gin macro that usually sets it), before a checkpoint is read. The mesh is the trainer's
`train_config.MeshSpec`; decoding presets are `decoding.PRESETS`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax

from polylm_jax import checkpoints, decoding
from polylm_jax import prompts as prompts_lib
from polylm_jax.config import PolyLMConfig
from polylm_jax.training.settings import MeshSpec

STEP_FLAG = "--gin.CHECKPOINT_STEP"  # named by the damaged-checkpoint hint


def _positive(obj: Any, name: str, *, optional: bool = False) -> None:
  value = getattr(obj, name)
  if optional and value is None:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    more = " or None" if optional else ""
    raise ValueError(f"{type(obj).__name__}.{name} must be an integer >= 1{more}, got {value!r}")


def _mapping(obj: Any, name: str) -> None:
  """Freezes a dict field (gin passes dicts; None means empty) into a plain dict copy."""
  value = getattr(obj, name)
  if value is None:
    value = {}
  if not isinstance(value, Mapping):
    raise ValueError(f"{type(obj).__name__}.{name} must be a dict, got {value!r}")
  object.__setattr__(obj, name, dict(value))


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
  """The checkpoint to read: a run dir, a checkpoint (step) dir or a Hugging Face model dir.

  step: None reads the latest complete step. vocab_path: None reads the run's
  tokenizer.model, else the default vocabulary; one the model was not trained with is refused.
  """

  path: str
  step: int | None = None
  vocab_path: str | None = None

  def __post_init__(self):
    if not self.path:
      raise ValueError('CHECKPOINT_PATH is empty: pass --gin.CHECKPOINT_PATH=\\"/path\\"')
    if self.step is not None and (not isinstance(self.step, int) or self.step < 0):
      raise ValueError(f"CHECKPOINT_STEP (CheckpointSpec.step) must be >= 0, got {self.step!r}")

  def load(self, mesh: MeshSpec) -> tuple[PolyLMConfig, Any, Any, jax.sharding.Mesh | None]:
    """(config, params, vocabulary, mesh); the mesh is built only with several devices.

    The mesh holds this process's devices only: in a multi-process run every process keeps a
    whole copy of the model and computes its own share (host_shares.py).
    """
    if mesh.num_microbatches != 1:
      raise ValueError(
        f"MeshSpec.num_microbatches={mesh.num_microbatches} is a training setting; "
        "inference runs whole batches (leave it at 1)"
      )
    local = jax.local_devices()
    device_mesh = mesh.build(local) if len(local) > 1 else None
    config, params, vocab = checkpoints.load_for_inference(
      self.path, self.vocab_path, step=self.step, mesh=device_mesh, step_flag=STEP_FLAG
    )
    return config, params, vocab, device_mesh


@dataclasses.dataclass(frozen=True)
class GenerationSpec:
  """How tokens are generated: a preset of decoding.PRESETS ('greedy', 'sampling' = the demo's
  top_p 0.8, temperature 0.7, repetition_penalty 1.02, 'beam' = 4 beams, early stopping) with
  single decode_settings overriding it (decoding.DecodeSettings fields), rows per forward pass
  and the new-token limit: one integer, or for eval {task family: limit} (None: each family's
  default).
  """

  preset: str = "greedy"
  decode_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  max_new_tokens: int | Mapping[str, int] | None = 128
  batch_size: int = 8
  seed: int = 0

  def __post_init__(self):
    _mapping(self, "decode_settings")
    _positive(self, "batch_size")
    limits = self.max_new_tokens
    if isinstance(limits, Mapping):
      for family, limit in limits.items():
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
          raise ValueError(f"GenerationSpec.max_new_tokens[{family!r}] must be >= 1, got {limit!r}")
      object.__setattr__(self, "max_new_tokens", dict(limits))
    else:
      _positive(self, "max_new_tokens", optional=True)
    try:
      self.settings()  # an unknown preset or setting, or a bad value, fails here
    except ValueError as e:
      raise ValueError(f"GenerationSpec: {e}") from None

  def settings(self) -> decoding.DecodeSettings:
    return decoding.make_settings(self.preset, **{"seed": self.seed, **self.decode_settings})

  def overrides(self) -> dict[str, Any]:
    """The settings that differ from greedy, as evaluation.evaluate takes (and reports) them."""
    chosen = {**decoding.PRESETS[self.preset], **self.decode_settings}
    if self.seed:
      chosen.setdefault("seed", self.seed)
    return chosen


@dataclasses.dataclass(frozen=True)
class PromptSpec:
  """Where infer's prompts come from: a JSONL file (INFER_INPUT_FILE) or a SeqIO task or
  mixture (MIXTURE_OR_TASK_NAME, its split; the prompt is `feature`), exactly one.

  style formats JSONL "prompt" fields (prompts.STYLES: plain, multialpaca, chat).
  max_examples: the first N prompts (None: all). truncate_prompts: keep the last
  max_len - max_new_tokens tokens of a long prompt instead of refusing it.
  """

  input_file: str | None = None
  mixture_or_task_name: str | None = None
  split: str = "validation"
  feature: str = "inputs"
  task_feature_lengths: Mapping[str, int] | None = None
  style: str = "plain"
  max_examples: int | None = None
  truncate_prompts: bool = False

  def __post_init__(self):
    if bool(self.input_file) == bool(self.mixture_or_task_name):
      raise ValueError(
        "give exactly one prompt source: INFER_INPUT_FILE (JSONL) or "
        f"MIXTURE_OR_TASK_NAME (got {self.input_file!r} and {self.mixture_or_task_name!r})"
      )
    prompts_lib.check_style(self.style, "PromptSpec.style")
    _positive(self, "max_examples", optional=True)
    if self.task_feature_lengths is not None:
      _mapping(self, "task_feature_lengths")


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
  """What eval scores and how the prompts are built (the task library applies it).

  tasks: benchmark task and mixture names, comma-separated (MIXTURE_OR_TASK_NAME).
  data_dir / paths ({family: folder}) / tfds_data_dir: where the data lives
  (tasks/benchmark_data.py). shot_seed draws the few-shot demonstrations. prompt_set and
  template_overrides: tasks/templates.py. prefix_eos starts every prompt with </s>.
  bleu_tokenizers: {target language: sacreBLEU tokenizer}.
  """

  tasks: str
  data_dir: str | None = None
  tfds_data_dir: str | None = None
  paths: Mapping[str, str] = dataclasses.field(default_factory=dict)
  shot_seed: int = 0
  max_examples: int | None = None
  prompt_set: str = "lm_eval"
  template_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  prefix_eos: bool = True
  bleu_tokenizers: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    names = self.tasks if isinstance(self.tasks, str) else ",".join(self.tasks)
    if not names.strip(" ,"):
      raise ValueError("MIXTURE_OR_TASK_NAME (BenchmarkSpec.tasks) is empty")
    object.__setattr__(self, "tasks", names)
    for name in ("paths", "template_overrides", "bleu_tokenizers"):
      _mapping(self, name)
    _positive(self, "max_examples", optional=True)
    if isinstance(self.shot_seed, bool) or not isinstance(self.shot_seed, int):
      raise ValueError(f"BenchmarkSpec.shot_seed must be an integer, got {self.shot_seed!r}")


SPECS = (CheckpointSpec, GenerationSpec, PromptSpec, BenchmarkSpec, MeshSpec)
