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
