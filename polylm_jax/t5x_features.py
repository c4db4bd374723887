"""seqio feature converters that give t5x PolyLM's rows instead of T5's (no t5x import here).

seqio's DecoderFeatureConverter starts every row with id 0 and, when packing, restarts
positions and segments at each document. PolyLM's released recipe does neither (SPEC 3, 10):
id 0 is `<unk>`, and documents (each ending in `</s>`, the tasks append it) are joined into
one stream cut into rows with no reset, each row predicting the next token of the stream.

  pack=True, targets only   the stream cut every L tokens: input = stream[iL : iL+L],
                            target = stream[iL+1 : iL+L+1]; the last partial row is dropped
                            (as Megatron does). Every position is trained.
  pack=False, targets only  one document per row: input = doc[:-1], target = doc[1:].
  inputs + targets          (instructions, benchmarks, infer) x = inputs + targets,
                            input = x[:-1], target = x[1:], loss on the targets only, and
                            decoder_causal_attention = 1 on the prompt's L positions, which
                            is where t5x's predict reads the prompt from (it then decodes from
                            position L - 1, the prompt's last token).
Loss weights come from lengths, never from `token != 0`.

seqio trims each document to TASK_FEATURE_LENGTHS["targets"] before the converter sees it.
To keep long documents whole, as released, give the converter `row_length` (the model's
rows) and a large targets length (a bound on documents only): gin/t5x/pretrain.gin does.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

Spec = seqio.FeatureConverter.FeatureSpec
_LM_FEATURES = {
  "decoder_target_tokens": Spec(dtype=tf.int32),
  "decoder_input_tokens": Spec(dtype=tf.int32),
  "decoder_loss_weights": Spec(dtype=tf.int32),
}


def _pad(x: tf.Tensor, length: int) -> tf.Tensor:
  x = x[:length]
  return tf.ensure_shape(tf.pad(x, [[0, length - tf.shape(x)[0]]]), [length])


def stream_rows(ds: tf.data.Dataset, length: int) -> tf.data.Dataset:
  """Documents' "targets" joined into one stream, cut into (input, target) rows of `length`
  with no reset: target row i is input row i shifted by one token of the stream."""
  tokens = ds.map(lambda ex: ex["targets"], num_parallel_calls=tf.data.AUTOTUNE).unbatch()
  # One pass over the stream (a sampled mixture need not repeat itself): windows of L + 1
  # tokens that overlap by one.
  windows = tokens.window(length + 1, shift=length, drop_remainder=True)
  rows = windows.flat_map(lambda w: w.batch(length + 1))

  def row(x):
    x = tf.ensure_shape(x, [length + 1])  # windows lose the static length
    return {
      "decoder_input_tokens": x[:-1],
      "decoder_target_tokens": x[1:],
      "decoder_loss_weights": tf.ones([length], tf.int32),
    }

  return rows.map(row, num_parallel_calls=tf.data.AUTOTUNE)


class PolyLMLMFeatureConverter(seqio.FeatureConverter):
  """Targets only (pre-training): the released packing, or one document per row.
  row_length: the rows' length (default: the targets length)."""

  TASK_FEATURES = {"targets": Spec(dtype=tf.int32)}
  MODEL_FEATURES = _LM_FEATURES
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack: bool = True, row_length: int | None = None, **kwargs):
    if row_length is not None and row_length < 1:
      raise ValueError(f"PolyLMFeatureConverter.row_length must be >= 1, got {row_length}")
    self.row_length = row_length
    super().__init__(pack=pack, **kwargs)

  def _convert_features(
    self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
  ) -> tf.data.Dataset:
    length = self.get_model_feature_lengths(task_feature_lengths)["decoder_input_tokens"]
    if self.pack:
      return stream_rows(ds, length)

    def row(ex):
      doc = ex["targets"][: length + 1]
      n = tf.shape(doc)[0] - 1
      return {
        "decoder_input_tokens": _pad(doc[:-1], length),
        "decoder_target_tokens": _pad(doc[1:], length),
        "decoder_loss_weights": _pad(tf.ones([n], tf.int32), length),
      }

    return ds.map(row, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    length = self.row_length or task_feature_lengths["targets"]
    return {k: length for k in self.MODEL_FEATURES}


class PolyLMPrefixFeatureConverter(seqio.FeatureConverter):
  """Inputs + targets: prompt and response in one row, loss on the response only."""

  TASK_FEATURES = {"inputs": Spec(dtype=tf.int32), "targets": Spec(dtype=tf.int32)}
  MODEL_FEATURES = {**_LM_FEATURES, "decoder_causal_attention": Spec(dtype=tf.int32)}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack: bool = False, **kwargs):
    if pack:
      raise ValueError(
        "PolyLMFeatureConverter: pack=True is for targets-only pre-training tasks; "
        "tasks with inputs and targets give one example per row (set pack = False)"
      )
    super().__init__(pack=False, **kwargs)

  def _convert_features(
    self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
  ) -> tf.data.Dataset:
    length = self.get_model_feature_lengths(task_feature_lengths)["decoder_input_tokens"]

    def row(ex):
      inputs, targets = ex["inputs"], ex["targets"]
      x = tf.concat([inputs, targets], 0)[: length + 1]
      n_in, n = tf.shape(inputs)[0], tf.shape(x)[0] - 1
      positions = tf.range(length)
      return {
        "decoder_input_tokens": _pad(x[:-1], length),
        "decoder_target_tokens": _pad(x[1:], length),
        "decoder_loss_weights": tf.cast((positions >= n_in - 1) & (positions < n), tf.int32),
        "decoder_causal_attention": tf.cast(positions < n_in, tf.int32),
      }

    return ds.map(row, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    length = task_feature_lengths["inputs"] + task_feature_lengths["targets"]
    return {k: length for k in self.MODEL_FEATURES}


class PolyLMFeatureConverter(seqio.FeatureConverter):
  """The converter of `t5x_model.PolyLMModel`: targets-only or inputs + targets, by the
  task feature lengths it is given (as seqio's DecoderFeatureConverter chooses)."""

  TASK_FEATURES = {"targets": Spec(dtype=tf.int32)}
  MODEL_FEATURES = PolyLMPrefixFeatureConverter.MODEL_FEATURES
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack: bool = True, row_length: int | None = None, **kwargs):
    super().__init__(pack=pack, **kwargs)
    self.lm = PolyLMLMFeatureConverter(pack=pack, row_length=row_length, **kwargs)
    self.prefix = PolyLMPrefixFeatureConverter(pack=False, **kwargs)

  def _pick(self, task_feature_lengths: Mapping[str, int]) -> seqio.FeatureConverter:
    return self.prefix if "inputs" in task_feature_lengths else self.lm

  def __call__(
    self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
  ) -> tf.data.Dataset:
    return self._pick(task_feature_lengths)(ds, task_feature_lengths)

  def _convert_features(self, ds, task_feature_lengths):
    raise NotImplementedError("PolyLMFeatureConverter delegates in __call__")

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    return self._pick(task_feature_lengths).get_model_feature_lengths(task_feature_lengths)
