"""The PolyLM curriculum inside one `python -m t5x.train` run (gin/t5x/pretrain*.gin).

t5x reads one seqio Mixture per run. `curriculum_dataset` is a `get_dataset_fn` for
`t5x.train.train`: when MIXTURE_OR_TASK_NAME names a curriculum (polylm_jax.curriculum, e.g.
`polylm_pretrain_curriculum`), batch i comes from the stage whose steps contain i, so stage 2
starts at exactly `Curriculum.boundaries(TRAIN_STEPS)[1]`. t5x restarts the data pipeline
when it resumes (save_dataset = False), so the start step is read from the run's newest
`checkpoint_N`: a run killed after the switch resumes in stage 2. Any other name is
t5x's own `utils.get_dataset`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from typing import Any, Callable

import tensorflow as tf
from t5x import utils as t5x_utils

from polylm_jax import curriculum

_CHECKPOINT = re.compile(r"^checkpoint_(\d+)$")


def latest_step(model_dir: str | None) -> int:
  """The step of the newest `checkpoint_N` folder in model_dir (0 if none)."""
  if not model_dir or not tf.io.gfile.isdir(model_dir):
    return 0
  steps = [int(m.group(1)) for m in map(_CHECKPOINT.match, tf.io.gfile.listdir(model_dir)) if m]
  steps = [s for s in steps if tf.io.gfile.exists(os.path.join(model_dir, f"checkpoint_{s}"))]
  return max(steps, default=0)


def stage_plan(name: str, total_steps: int, start_step: int) -> list[tuple[str, int | None]]:
  """(mixture, number of batches or None for the rest) of each stage from `start_step` on."""
  cur = curriculum.get_curriculum(name)
  bounds = list(cur.boundaries(total_steps)) + [None]
  plan = []
  for stage, lo, hi in zip(cur.stages, bounds[:-1], bounds[1:]):
    if hi is not None and hi <= start_step:
      continue
    plan.append((stage.mixture, None if hi is None else hi - max(lo, start_step)))
  return [(m, n) for m, n in plan if n != 0]


def _stage_configs(cfg: t5x_utils.DatasetConfig) -> list[t5x_utils.DatasetConfig]:
  name = cfg.mixture_or_task_name
  if not isinstance(name, str) or name not in curriculum.curriculum_names():
    return [cfg]
  mixtures = curriculum.get_curriculum(name).mixtures
  return [dataclasses.replace(cfg, mixture_or_task_name=m) for m in mixtures]


def verify_matching_vocabs(cfg: t5x_utils.DatasetConfig, model: Any) -> None:
  """t5x's vocabulary check, on every stage mixture of a curriculum."""
  if cfg.module:
    importlib.import_module(cfg.module)
  for stage_cfg in _stage_configs(cfg):
    t5x_utils.verify_matching_vocabs(stage_cfg, model)


def curriculum_dataset(
  cfg: t5x_utils.DatasetConfig,
  shard_id: int,
  num_shards: int,
  feature_converter_cls: Callable[..., Any],
  num_epochs: int | None = None,
  continue_from_last_checkpoint: bool = False,
  *,
  total_steps: int | None = None,
  model_dir: str | None = None,
  get_dataset_fn: Callable[..., Any] = t5x_utils.get_dataset,
):
  """t5x's get_dataset_fn, with curricula (see the module docstring)."""
  if cfg.module:
    importlib.import_module(cfg.module)
  name = cfg.mixture_or_task_name
  if not isinstance(name, str) or name not in curriculum.curriculum_names():
    return get_dataset_fn(
      cfg, shard_id, num_shards, feature_converter_cls, num_epochs, continue_from_last_checkpoint
    )
  if not total_steps:
    raise ValueError(
      f"curriculum {name!r} needs TRAIN_STEPS: bind curriculum_dataset.total_steps = %TRAIN_STEPS"
    )
  datasets = []
  for mixture, batches in stage_plan(name, total_steps, latest_step(model_dir)):
    stage_cfg = dataclasses.replace(cfg, mixture_or_task_name=mixture)
    ds = get_dataset_fn(stage_cfg, shard_id, num_shards, feature_converter_cls, num_epochs)
    datasets.append(ds if batches is None else ds.take(batches))
  out = datasets[0]
  for ds in datasets[1:]:
    out = out.concatenate(ds)
  return out
