"""PolyLM's seqio feature converters for t5x: the released packing, prefix rows (no t5x)."""

import numpy as np
import pytest
import tensorflow as tf

from polylm_jax import t5x_features

DOCS = [[5, 6, 7, 2], [8, 9, 2], [10, 11, 12, 13, 2], [14, 2]]


def _docs(docs=DOCS):
  return tf.data.Dataset.from_generator(
    lambda: ({"targets": np.array(d, np.int32)} for d in docs),
    output_signature={"targets": tf.TensorSpec([None], tf.int32)},
  )


def _rows(ds):
  return list(ds.as_numpy_iterator())


def test_packing_as_released_joins_documents_with_no_reset_and_no_id0_start():
  conv = t5x_features.PolyLMFeatureConverter(pack=True, row_length=4)
  rows = _rows(conv(_docs(), {"targets": 8}))
  stream = [t for d in DOCS for t in d]
  assert len(rows) == (len(stream) - 1) // 4  # the partial last row is dropped
  for i, r in enumerate(rows):
    np.testing.assert_array_equal(r["decoder_input_tokens"], stream[4 * i : 4 * i + 4])
    np.testing.assert_array_equal(r["decoder_target_tokens"], stream[4 * i + 1 : 4 * i + 5])
    np.testing.assert_array_equal(r["decoder_loss_weights"], [1, 1, 1, 1])
    assert set(r) == {"decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"}
  assert rows[0]["decoder_input_tokens"][0] == 5  # no id-0 start token
  assert conv.get_model_feature_lengths({"targets": 8})["decoder_input_tokens"] == 4


def test_loss_weights_do_not_come_from_token_ids():
  """id 0 is <unk>: a real 0 in the stream is still trained on."""
  docs = [[0, 6, 0, 2], [0, 0, 2]]
  rows = _rows(
    t5x_features.PolyLMFeatureConverter(pack=True, row_length=3)(_docs(docs), {"targets": 4})
  )
  assert all(r["decoder_loss_weights"].tolist() == [1, 1, 1] for r in rows)
  rows = _rows(t5x_features.PolyLMFeatureConverter(pack=False)(_docs(docs), {"targets": 5}))
  assert rows[0]["decoder_loss_weights"].tolist() == [1, 1, 1, 0, 0]


def test_unpacked_rows_are_one_document_each():
  rows = _rows(t5x_features.PolyLMFeatureConverter(pack=False)(_docs(), {"targets": 5}))
  assert rows[1]["decoder_input_tokens"].tolist() == [8, 9, 0, 0, 0]
  assert rows[1]["decoder_target_tokens"].tolist() == [9, 2, 0, 0, 0]
  assert rows[1]["decoder_loss_weights"].tolist() == [1, 1, 0, 0, 0]


def test_prefix_rows_train_on_the_response_and_mark_the_prompt():
  ds = tf.data.Dataset.from_tensors(
    {"inputs": tf.constant([3, 4, 5], tf.int32), "targets": tf.constant([6, 7, 2], tf.int32)}
  )
  conv = t5x_features.PolyLMFeatureConverter(pack=False)
  (row,) = _rows(conv(ds, {"inputs": 4, "targets": 4}))
  assert row["decoder_input_tokens"].tolist() == [3, 4, 5, 6, 7, 0, 0, 0]
  assert row["decoder_target_tokens"].tolist() == [4, 5, 6, 7, 2, 0, 0, 0]
  # Loss on the response only: the targets 6, 7, 2 are predicted at positions 2, 3, 4.
  assert row["decoder_loss_weights"].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
  # The prompt's positions, where t5x's predict reads it from.
  assert row["decoder_causal_attention"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_bad_row_length_and_packed_prefix_are_errors():
  with pytest.raises(ValueError, match="row_length"):
    t5x_features.PolyLMFeatureConverter(row_length=0)
  with pytest.raises(ValueError, match="pack=True"):
    t5x_features.PolyLMPrefixFeatureConverter(pack=True)
