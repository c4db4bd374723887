"""The trainer's set-up pieces: early checks, global batches, step functions."""

import numpy as np
import pytest

from polylm_jax import config, optim, partitioning
from polylm_jax.training import prepare
from polylm_jax.training import step as step_lib

TINY = config.get_config("polylm_tiny")


def test_check_batch_layout_names_the_numbers():
  mesh = partitioning.make_mesh(data=2, fsdp=4)
  prepare.check_batch_layout(16, mesh, 2, 1)
  with pytest.raises(
    ValueError,
    match=r"microbatches: 8 \(mesh data=2 x fsdp=4\) x "
    r"num_microbatches=3 = 24",
  ):
    prepare.check_batch_layout(16, mesh, 3, 1)
  with pytest.raises(ValueError, match="multiple of the number of hosts"):
    prepare.check_batch_layout(16, mesh, 1, 3)


def test_check_shardable_names_the_parameter():
  prepare.check_shardable(TINY, partitioning.make_mesh(data=2, fsdp=2, tensor=2))
  with pytest.raises(
    ValueError,
    match=r"parameter wte of shape \(510, 64\) cannot be split over "
    r"mesh axes \('tensor',\) of size 4",
  ):
    prepare.check_shardable(TINY.replace(vocab_size=510), partitioning.make_mesh(data=2, tensor=4))


def test_check_model_dir(tmp_path):
  assert prepare.check_model_dir(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
  with pytest.raises(ValueError, match="MODEL_DIR is empty"):
    prepare.check_model_dir("")


def test_vocabulary_fingerprint_hashes_sentencepiece_models(tmp_path):
  """The trainer stores vocab.fingerprint in every checkpoint (one function for all)."""
  from polylm_jax import vocab  # seqio and TensorFlow: only this test needs them

  class FakeSp:
    vocab_size = 3

    def __init__(self, path):
      self.sentencepiece_model_file = path

  a, b = tmp_path / "a.model", tmp_path / "b.model"
  a.write_bytes(b"model one")
  b.write_bytes(b"model two")
  fa, fb = (
    vocab.fingerprint(FakeSp(str(a))),
    vocab.fingerprint(FakeSp(str(b))),
  )
  assert fa.startswith("sentencepiece:") and fa.endswith(":3") and fa != fb


def test_to_global_splits_the_batch_over_the_data_axes():
  mesh = partitioning.make_mesh(data=4, fsdp=2)
  fns = prepare.make_step_functions(TINY, mesh, optim.make_optimizer(1e-3), None)
  batch = {
    k: np.arange(16 * 8, dtype=np.int32).reshape(16, 8) % 500 for k in step_lib.BATCH_INT_FIELDS
  }
  batch["loss_weights"] = np.ones((16, 8), np.float32)
  g = prepare.to_global(batch, fns.batch_shardings)
  assert g["inputs"].shape == (16, 8)
  assert g["inputs"].sharding.shard_shape((16, 8)) == (2, 8)
  np.testing.assert_array_equal(np.asarray(g["inputs"]), batch["inputs"])
  assert prepare.fingerprint(batch) == prepare.fingerprint(dict(batch))
  other = dict(batch, inputs=batch["inputs"][::-1].copy())
  assert prepare.fingerprint(other) != prepare.fingerprint(batch)
