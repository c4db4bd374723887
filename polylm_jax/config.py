"""PolyLM hyperparameters and named presets.

The sizes are the released ones (SPEC section 1: the Megatron scripts and the HF configs).
This module imports nothing from the project so that every other module can depend on it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

# Names accepted by `PolyLMConfig.dtype` / `param_dtype`.
_DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("xla", "cudnn")
# The deepest stack scan_unroll=0 unrolls whole (PolyLMConfig.layers_per_iteration).
AUTO_UNROLL_LAYERS = 8


@dataclasses.dataclass(frozen=True)
class PolyLMConfig:
  """The architecture and numerics of one PolyLM model.

  Architecture fields are fixed by the released checkpoints; `dtype`, `residual_fp32`,
  `remat_policy`, `attention_impl`, `attention_block` and `scan_unroll` only change how the same
  function is computed.
  """

  vocab_size: int = 256_000
  num_layers: int = 24
  d_model: int = 2048
  num_heads: int = 16
  head_dim: int = 128
  d_ff: int = 8192
  max_len: int = 2048
  layer_norm_eps: float = 1e-5
  init_std: float = 0.006
  eos_id: int = 2
  # Numerics: parameters stay in `param_dtype`; matmuls run in `dtype`.
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Keep the residual stream in fp32 even when computing in bf16 (the 13B recipe).
  residual_fp32: bool = True
  # Rematerialisation of each layer in the backward pass.
  remat_policy: str = "none"
  # "xla": explicit einsum attention with fp32 softmax (any backend); "cudnn": fused kernel.
  attention_impl: str = "xla"
  # Query positions per block of the "xla" attention outside decoding: block i attends only to
  # the keys up to its last position, so the causally masked rest is never computed (at 128 a
  # 512-token row does 10/16 of the dense work, a 2048-token row 17/32). 0: one dense block.
  attention_block: int = 128
  # Layers per iteration of the layer scan (nn.scan's unroll); num_layers unrolls the stack.
  # 0: the whole stack up to AUTO_UNROLL_LAYERS layers, else 1 (see layers_per_iteration).
  scan_unroll: int = 0

  def __post_init__(self):
    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "head_dim", "d_ff", "max_len"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"PolyLMConfig.{name} must be a positive integer, got {value!r}")
    if not isinstance(self.scan_unroll, (int, np.integer)) or self.scan_unroll < 0:
      raise ValueError(
        f"PolyLMConfig.scan_unroll must be an integer >= 0 (0: automatic), got {self.scan_unroll!r}"
      )
    if not isinstance(self.attention_block, (int, np.integer)) or self.attention_block < 0:
      raise ValueError(
        "PolyLMConfig.attention_block must be an integer >= 0 (0: one block), got "
        f"{self.attention_block!r}"
      )
    if self.num_heads * self.head_dim != self.d_model:
      raise ValueError(
        f"PolyLMConfig: num_heads * head_dim ({self.num_heads} * {self.head_dim}) must equal "
        f"d_model ({self.d_model})"
      )
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(
          f"PolyLMConfig.{name} must be one of {_DTYPES}, got {getattr(self, name)!r}"
        )
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
        f"PolyLMConfig.remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}"
      )
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(
        f"PolyLMConfig.attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}"
      )

  @property
  def layers_per_iteration(self) -> int:
    """The layer scan's unroll. Automatic (scan_unroll=0): a stack of at most
    AUTO_UNROLL_LAYERS layers is unrolled whole, since the scan's stacked residuals and
    per-layer slices cost a small model's step 6-15% on CPU (benchmarks/train_step.py) while
    its compile time grows little; deeper stacks (the released sizes) stay one layer per
    iteration, so their compile time does not grow with depth."""
    if self.scan_unroll:
      return self.scan_unroll
    return self.num_layers if self.num_layers <= AUTO_UNROLL_LAYERS else 1

  def replace(self, **changes: Any) -> "PolyLMConfig":
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"PolyLMConfig has no field(s) {sorted(unknown)}")
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "PolyLMConfig":
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"PolyLMConfig has no field(s) {sorted(unknown)}")
    return cls(**d)


PRESETS: dict[str, PolyLMConfig] = {
  "polylm_1_7b": PolyLMConfig(),
  "polylm_13b": PolyLMConfig(num_layers=40, d_model=5120, num_heads=40, d_ff=20480),
  # A mid-size model for init statistics, conversion memory and CPU benchmarks.
  "polylm_mid": PolyLMConfig(
    vocab_size=32_000, num_layers=6, d_model=512, num_heads=8, head_dim=64, d_ff=2048, max_len=512
  ),
  # The demo model trained by `gin/demo.gin` on the built-in corpus, on CPU in minutes.
  "polylm_small": PolyLMConfig(
    vocab_size=4096, num_layers=4, d_model=256, num_heads=4, head_dim=64, d_ff=1024, max_len=256
  ),
  # Unit tests.
  "polylm_tiny": PolyLMConfig(
    vocab_size=512, num_layers=2, d_model=64, num_heads=4, head_dim=16, d_ff=256, max_len=64
  ),
}


def get_config(name: str, **overrides: Any) -> PolyLMConfig:
  """Returns a preset by name, optionally with fields replaced."""
  if name not in PRESETS:
    raise ValueError(f"unknown PolyLM config {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def count_params(config: PolyLMConfig) -> int:
  """Exact parameter count (embeddings tied, position embeddings included), without weights."""
  d, f, n = config.d_model, config.d_ff, config.num_layers
  per_layer = (
    2 * 2 * d  # ln_1, ln_2 scale + bias
    + d * 3 * d
    + 3 * d  # fused qkv
    + d * d
    + d  # attention out
    + d * f
    + f  # fc1
    + f * d
    + d
  )  # fc2
  return config.vocab_size * d + config.max_len * d + n * per_layer + 2 * d


def flops_per_token(config: PolyLMConfig, seq_len: int) -> float:
  """Training FLOPs per token (forward + backward) for MFU, as in SPEC section 9."""
  n_no_pos = count_params(config) - config.max_len * config.d_model
  return 6.0 * n_no_pos + 12.0 * config.num_layers * config.d_model * seq_len


def describe(config: PolyLMConfig) -> str:
  n = count_params(config)
  return (
    f"{config.num_layers} layers, d_model {config.d_model}, {config.num_heads} heads, "
    f"d_ff {config.d_ff}, vocab {config.vocab_size}: {n:,} params "
    f"({n / 1e9:.2f}B; {math.ceil(n * 4 / 2**20):,} MiB in fp32)"
  )
