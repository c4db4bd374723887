"""PolyLM inside the real t5x binaries (`python -m t5x.train/infer/eval`, gin/t5x/*.gin).

Imported only by gin/t5x/*.gin and its tests: nothing else in the package imports t5x, so the
rest works without it (install: tools/install_t5x.sh). What t5x needs from a foreign module
(SPEC section 10), given here:
  PolyLMT5x        the PolyLM module with t5x's call keywords, a `params_axes` collection
                   built from the logical axes, `scan_layers` (the cache's batch axis is 1)
                   and a clear error for prefix-LM attention;
  PolyLMModel      t5x's DecoderOnlyModel with unboxed initial params and PolyLM's own
                   feature converter (t5x_features.py: the released packing);
  MeshPartitioner  PjitPartitioner over an explicit (data, model) mesh, also on CPU host
                   devices, where t5x's own ignores `num_partitions`.
The parameter tree is the project's own, so checkpoints convert leaf for leaf (t5x_ckpt.py).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
from absl import logging
import jax
import numpy as np
from flax import core as flax_core
from flax import traverse_util
from flax.linen import partitioning as flax_partitioning
from jax.experimental import mesh_utils
from jax.sharding import Mesh
from t5x import models as t5x_models
from t5x import partitioning as t5x_partitioning

from polylm_jax import t5x_features
from polylm_jax.config import PolyLMConfig
from polylm_jax.model import PolyLM

Array = jax.Array

PREFIX_LM_ERROR = (
  "PolyLM has no prefix-LM (bidirectional inputs) attention: it is causal everywhere. "
  "Leave DecoderOnlyModel.inputs_bidirectional_attention False and do not feed "
  "decoder_causal_attention to the module."
)

# Logical axes of PolyLM that t5x's standard rules do not name (never sharded).
EXTRA_AXIS_RULES: tuple[tuple[str, Any], ...] = (("qkv", None), ("position", None))


def params_axes(boxed_params: Any) -> dict[str, Any]:
  """t5x's `params_axes` collection: `{name}_axes` -> AxisMetadata for each parameter."""
  flat = traverse_util.flatten_dict(flax_core.unfreeze(boxed_params))
  out = {}
  for path, leaf in flat.items():
    if not isinstance(leaf, nn.LogicallyPartitioned):
      raise ValueError(f"parameter {'/'.join(path)} has no logical axes")
    out[path[:-1] + (path[-1] + "_axes",)] = flax_partitioning.AxisMetadata(names=leaf.names)
  return traverse_util.unflatten_dict(out)


class PolyLMT5x(PolyLM):
  """PolyLM called as t5x's DecoderOnlyModel calls its module.

  decoder_target_tokens is unused (PolyLM's causal mask needs no targets). Without explicit
  positions, decode steps continue from each row's cache index (model.py).
  """

  scan_layers: bool = True  # tells t5x's decoding that cache leaves are [layers, batch, ...]

  def __call__(  # type: ignore[override]
    self,
    decoder_input_tokens: Array,
    decoder_target_tokens: Array | None = None,
    decoder_segment_ids: Array | None = None,
    decoder_positions: Array | None = None,
    decoder_causal_attention: Array | None = None,
    enable_dropout: bool = True,
    decode: bool = False,
    max_decode_length: int | None = None,
    prefill: bool = False,
    prefill_lengths: Array | None = None,
    **unused: Any,
  ) -> Array:
    del decoder_target_tokens, enable_dropout, max_decode_length  # dropout is 0 (SPEC 1)
    if decoder_causal_attention is not None:
      raise ValueError(PREFIX_LM_ERROR)
    if unused:
      raise TypeError(f"PolyLMT5x: unexpected keyword(s) {sorted(unused)}")
    tokens = decoder_input_tokens.astype(np.int32)
    logits = super().__call__(
      tokens,
      positions=decoder_positions,
      segment_ids=decoder_segment_ids,
      decode=decode or prefill,
      prefill_lengths=prefill_lengths if prefill else None,
    )
    if self.is_initializing() and not decode and not prefill:
      axes = params_axes(self.variables["params"])
      for name, value in axes.items():
        self.put_variable("params_axes", name, value)
    return logits


class PolyLMModel(t5x_models.DecoderOnlyModel):
  """t5x's DecoderOnlyModel for PolyLM: PolyLM's feature converter, unboxed initial params."""

  FEATURE_CONVERTER_CLS = t5x_features.PolyLMFeatureConverter

  def __init__(self, module: nn.Module, *args, inputs_bidirectional_attention: bool = False, **kw):
    if inputs_bidirectional_attention:
      raise ValueError(PREFIX_LM_ERROR)
    super().__init__(module, *args, inputs_bidirectional_attention=False, **kw)

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    variables = super().get_initial_variables(rng, input_shapes, input_types)
    return flax_core.freeze(nn.unbox(flax_core.unfreeze(variables)))


def make_module(config: PolyLMConfig) -> PolyLMT5x:
  return PolyLMT5x(config)


def mesh_dims(num_devices: int, data: int, model: int) -> tuple[int, int]:
  """(data, model) with one -1 resolved; errors name the sizes at fault."""
  if model < 1 or data == 0 or data < -1:
    raise ValueError(f"MeshPartitioner: data={data}, model={model}: use sizes >= 1 (data -1)")
  if data == -1:
    if num_devices % model:
      raise ValueError(f"MeshPartitioner: model={model} does not divide {num_devices} devices")
    data = num_devices // model
  if data * model != num_devices:
    raise ValueError(
      f"MeshPartitioner: data={data} x model={model} = {data * model} devices, "
      f"but {num_devices} are available"
    )
  return data, model


def axis_rules(rules: Sequence[tuple[str, Any]] | None = None) -> tuple[tuple[str, Any], ...]:
  """t5x's standard rules (or `rules`) plus the PolyLM axes they do not name."""
  rules = tuple(rules if rules is not None else t5x_partitioning.standard_logical_axis_rules())
  named = {k for k, _ in rules}
  return rules + tuple(r for r in EXTRA_AXIS_RULES if r[0] not in named)


class MeshPartitioner(t5x_partitioning.PjitPartitioner):
  """t5x's PjitPartitioner on an explicit (data, model) mesh of all devices, any backend."""

  def __init__(
    self,
    data: int = -1,
    model: int = 1,
    logical_axis_rules: Sequence[tuple[str, Any]] | None = None,
    **kwargs: Any,
  ):
    self._dims = (data, model)
    super().__init__(
      num_partitions=model, logical_axis_rules=axis_rules(logical_axis_rules), **kwargs
    )

  @functools.cached_property
  def mesh(self) -> Mesh:
    devices = jax.devices(self._backend) if self._backend else jax.devices()
    shape = mesh_dims(len(devices), *self._dims)
    if devices[0].platform == "cpu":
      grid = np.asarray(devices, dtype=object).reshape(shape)
    else:
      grid = mesh_utils.create_device_mesh(shape, devices=devices)
    logging.info(
      "MeshPartitioner: (data=%d, model=%d) over %s devices", *shape, devices[0].platform
    )
    return Mesh(grid, ("data", "model"))
