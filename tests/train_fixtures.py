"""Tiny integer tasks, stage mixtures and a two-stage curriculum for the trainer tests.

Importing registers them (the test gin files say `import train_fixtures`, with tests/ on
PYTHONPATH). Documents are learnable (each language counts up by its own stride), so the
loss falls within a few steps; ids stay below the polylm_tiny vocabulary (512).
"""

from __future__ import annotations

import numpy as np
import seqio
import tensorflow as tf

from polylm_jax import curriculum, mixing

EOS = 2
LANGS = {"en": 3, "zh": 5, "fr": 7}  # language -> stride
CURRICULUM = "trainer_test_curriculum"
STAGE1, STAGE2 = "trainer_test_stage1", "trainer_test_stage2"


def task_name(lang: str) -> str:
  return f"polylm_{lang}_trainertest"


def _docs(lang: str, n: int, seed: int) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  stride = LANGS[lang]
  base = 100 * (list(LANGS).index(lang) + 1)
  docs = []
  for _ in range(n):
    length = int(rng.integers(8, 40))
    start = int(rng.integers(0, 90))
    docs.append([base + 3 + (start + stride * i) % 90 for i in range(length)])
  return docs


@tf.autograph.experimental.do_not_convert
def _as_example(x):
  return {"targets": x}


def _dataset(docs):
  flat = np.array([t for d in docs for t in d], np.int32)
  lens = np.array([len(d) for d in docs], np.int64)
  rt = tf.RaggedTensor.from_row_lengths(flat, lens)
  return tf.data.Dataset.from_tensor_slices(rt).map(_as_example)


def register(vocab_size: int = 512) -> None:
  """(Re-)registers the tasks with a PassThroughVocabulary of `vocab_size`."""
  vocab = seqio.PassThroughVocabulary(size=vocab_size, eos_id=EOS)
  features = {"targets": seqio.Feature(vocab, add_eos=True, dtype=tf.int32)}
  for i, lang in enumerate(LANGS):
    splits = {"train": _docs(lang, 150, i), "validation": _docs(lang, 12, 100 + i)}

    def dataset_fn(split, shuffle_files, seed=None, splits=splits):
      del shuffle_files, seed
      return _dataset(splits[split])

    seqio.TaskRegistry.remove(task_name(lang))
    seqio.TaskRegistry.add(
      task_name(lang),
      source=seqio.FunctionDataSource(dataset_fn, splits=list(splits)),
      preprocessors=[seqio.preprocessors.append_eos],
      output_features=features,
    )
  comps = tuple(mixing.Component(task_name(lang)) for lang in LANGS)
  mixing.register_stage_mixture(
    mixing.StageMixture(STAGE1, comps, non_english_share=0.3), overwrite=True
  )
  mixing.register_stage_mixture(
    mixing.StageMixture(STAGE2, comps, non_english_share=0.6), overwrite=True
  )
  curriculum.register_curriculum(
    curriculum.two_stage_curriculum(CURRICULUM, STAGE1, STAGE2, final_stage_fraction=0.5),
    overwrite=True,
  )


register()

EXTRA_MIXTURE = "trainer_test_extra_language"


def register_extra_language(lang: str = "sw", stride: int = 11) -> str:
  """A language beyond the 18 (`mixing.add_language`, as tasks.register_language's tasks do)
  in a stage mixture with English; returns the mixture's name. Undo with the caller's
  monkeypatch of mixing's language tables."""
  mixing.add_language(lang)
  vocab = seqio.PassThroughVocabulary(size=512, eos_id=EOS)
  features = {"targets": seqio.Feature(vocab, add_eos=True, dtype=tf.int32)}
  docs = {
    split: [[403 + (start + stride * i) % 90 for i in range(20)] for start in range(n)]
    for split, n in (("train", 150), ("validation", 12))
  }

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    return _dataset(docs[split])

  seqio.TaskRegistry.remove(task_name(lang))
  seqio.TaskRegistry.add(
    task_name(lang),
    source=seqio.FunctionDataSource(dataset_fn, splits=list(docs)),
    preprocessors=[seqio.preprocessors.append_eos],
    output_features=features,
  )
  comps = (mixing.Component(task_name("en")), mixing.Component(task_name(lang)))
  mixing.register_stage_mixture(
    mixing.StageMixture(EXTRA_MIXTURE, comps, non_english_share=0.5), overwrite=True
  )
  return EXTRA_MIXTURE


# -- train() arguments from the flat names the tests use -------------------------------------------

# flat name -> (train() argument, field of its settings object)
_SPEC_FIELDS = {
  **{k: ("data", k) for k in ("mixture_or_task_name", "task_feature_lengths", "batch_size")},
  **{k: ("data", k) for k in ("segment_aware", "use_cached_tasks")},
  "mesh_data": ("mesh", "data"),
  "mesh_fsdp": ("mesh", "fsdp"),
  "mesh_tensor": ("mesh", "tensor"),
  "num_microbatches": ("mesh", "num_microbatches"),
  **{
    k: ("optimizer", k)
    for k in ("peak_learning_rate", "min_learning_rate", "warmup_steps", "decay_steps")
  },
  **{k: ("optimizer", k) for k in ("weight_decay", "clip_norm")},
  **{k: ("loss", k) for k in ("z_loss", "label_smoothing", "dropout_rate")},
  "checkpoint_period": ("checkpointing", "save_every"),
  "keep_checkpoints": ("checkpointing", "keep"),
  "eval_period": ("eval", "period"),
  "eval_steps": ("eval", "steps"),
  "eval_before_training": ("eval", "before_training"),
  **{k: ("eval", k) for k in ("benchmark_tasks", "benchmark_max_examples")},
  "benchmark_batch_size": ("eval", "benchmark_batch_size"),
  "nonfinite_policy": ("nonfinite", "action"),
  **{k: ("nonfinite", k) for k in ("max_consecutive_skips", "max_rollbacks")},
  "debug_nonfinite_batches": ("nonfinite", "debug_batches"),
  **{k: ("report", k) for k in ("log_period", "sample_prompts", "sample_max_new_tokens")},
}


def train_args(**flat):
  """trainer.train() keyword arguments from flat names (`mesh_data=8`, `eval_period=0`, ...):
  each goes to its settings object, built here so that a bad value raises in the caller."""
  from polylm_jax import checkpoints
  from polylm_jax.training import settings as settings_lib

  classes = {
    "data": settings_lib.DataSpec,
    "mesh": settings_lib.MeshSpec,
    "optimizer": settings_lib.OptimizerSpec,
    "loss": settings_lib.LossSpec,
    "checkpointing": checkpoints.CheckpointPolicy,
    "eval": settings_lib.EvalSpec,
    "nonfinite": settings_lib.NonFinitePolicy,
    "report": settings_lib.ReportSpec,
  }
  grouped: dict[str, dict] = {name: {} for name in classes}
  args = {}
  for k, v in flat.items():
    if k in _SPEC_FIELDS:
      group, field = _SPEC_FIELDS[k]
      grouped[group][field] = v
    else:
      args[k] = v
  for group, fields in grouped.items():
    if fields or group == "data":
      args[group] = classes[group](**fields)
  return args
