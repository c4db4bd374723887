"""seqio names the t5x binaries need beyond tasks.mixtures (imported by gin/t5x run gins via
MIXTURE_OR_TASK_MODULE; registered only when imported).

  {stage}_eval   one seqio Task over a stage mixture's validation examples (for
                 polylm_pretrain_stage1 / _stage2). t5x's training-time eval evaluates every
                 component task of a Mixture (37 of them here: minutes per eval on CPU); a
                 Task is evaluated once, on the mixture's own proportions.
The curriculum itself (`polylm_pretrain_curriculum`) is not a seqio name: the t5x run gins
read it through polylm_jax.t5x_data.curriculum_dataset, which switches stage mixtures at the
exact step.
"""

from __future__ import annotations

import functools

import seqio

from tasks import mixtures, registry
from tasks.registry import output_features

EVAL_SUFFIX = "_eval"
EVAL_SEED = 0


def _mixture_examples(mixture_name: str, split: str, shuffle_files: bool, seed=None):
  del shuffle_files, seed  # a fixed sample: the same eval examples every time
  mixture = seqio.get_mixture_or_task(mixture_name)
  ds = mixture.get_dataset(
    sequence_length=None, split=split, shuffle=False, seed=EVAL_SEED, num_epochs=1
  )
  return ds.map(lambda ex: {"targets": ex["targets"]})


def register_eval_task(mixture_name: str) -> str:
  """`{mixture_name}_eval`: a Task over the mixture's validation split (already tokenized)."""
  name = mixture_name + EVAL_SUFFIX
  features = output_features()
  registry.add_provider(
    seqio.TaskRegistry,
    name,
    source=seqio.FunctionDataSource(
      functools.partial(_mixture_examples, mixture_name), splits=("validation",)
    ),
    output_features={"targets": seqio.Feature(features["targets"].vocabulary, add_eos=False)},
    preprocessors=[],
  )
  return name


STAGE_EVAL_TASKS = tuple(register_eval_task(m) for m in mixtures.DEFAULT_CURRICULUM.mixtures)
