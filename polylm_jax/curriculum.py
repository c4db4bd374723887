"""Step -> stage: which stage mixture feeds each training step.

PolyLM raises the non-English token share from 30% to 60% in its final stage (SPEC section 4);
when the last stage starts is not published. Ours: the last stage covers the last 20% of
`train_steps`. A curriculum is a named, ordered list of stage mixtures with the fraction of
training at which each starts; plain dataclasses here, gin binds them in the binaries, e.g.
`gin.external_configurable(curriculum.two_stage_curriculum)`.

Naming: `MIXTURE_OR_TASK_NAME` may name a curriculum (looked up here first), a stage mixture
(polylm_jax.mixing), a seqio Mixture or a seqio Task; see `stream.build_stream`.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import warnings
from typing import Iterable, Optional, Sequence


class EmptyStageWarning(UserWarning):
  """A curriculum stage gets no training steps (TRAIN_STEPS too small for its fractions)."""


@dataclasses.dataclass(frozen=True)
class Stage:
  """A stage mixture and where it starts: a fraction of train_steps or an absolute step."""

  mixture: str
  start_fraction: float = 0.0
  start_step: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Curriculum:
  name: str
  stages: tuple[Stage, ...]

  def __post_init__(self):
    object.__setattr__(self, "stages", tuple(self.stages))
    if not self.stages:
      raise ValueError(f"curriculum {self.name!r}: no stages")
    first = self.stages[0]
    if first.start_fraction != 0.0 or first.start_step not in (None, 0):
      raise ValueError(f"curriculum {self.name!r}: the first stage must start at step 0")
    for s in self.stages:
      if not 0.0 <= s.start_fraction <= 1.0:
        raise ValueError(
          f"curriculum {self.name!r}, stage {s.mixture!r}: "
          f"start_fraction must be in [0, 1], got {s.start_fraction}"
        )
      if s.start_step is not None and s.start_step < 0:
        raise ValueError(
          f"curriculum {self.name!r}, stage {s.mixture!r}: "
          f"start_step must be >= 0, got {s.start_step}"
        )

  @property
  def mixtures(self) -> tuple[str, ...]:
    return tuple(s.mixture for s in self.stages)

  def boundaries(self, train_steps: Optional[int]) -> tuple[int, ...]:
    """First step of every stage (non-decreasing; a stage may be empty)."""
    out = []
    for s in self.stages:
      if s.start_step is not None:
        out.append(int(s.start_step))
      elif s.start_fraction == 0.0:
        out.append(0)
      else:
        if train_steps is None or train_steps <= 0:
          raise ValueError(
            f"curriculum {self.name!r}: stage {s.mixture!r} starts at a fraction of "
            f"training, so TRAIN_STEPS must be a positive int (got {train_steps})"
          )
        out.append(int(round(s.start_fraction * train_steps)))
    if any(b > a for a, b in zip(out[1:], out[:-1])):
      raise ValueError(f"curriculum {self.name!r}: stage starts decrease: {out}")
    if train_steps is not None:
      self.check_steps(train_steps, tuple(out))
    return tuple(out)

  def check_steps(self, train_steps: int, boundaries: Sequence[int]) -> None:
    """Warn (EmptyStageWarning, and the log) about every stage that gets no step.

    Rounding `start_fraction * TRAIN_STEPS` can leave a stage empty (TRAIN_STEPS=1 or 2 drop
    the default final stage); the stream calls this when it is built, i.e. at start-up.
    Turn it into an error with `warnings.simplefilter("error", EmptyStageWarning)`.
    """
    ends = list(boundaries[1:]) + [int(train_steps)]
    empty = [s for s, a, b in zip(self.stages, boundaries, ends) if b <= a]
    if empty:
      starts = ", ".join(
        f"{s.mixture} at step {s.start_step}"
        if s.start_step is not None
        else f"{s.mixture} at fraction {s.start_fraction:g}"
        for s in self.stages
      )
      msg = (
        f"curriculum {self.name!r}: stage(s) {[s.mixture for s in empty]} get no training "
        f"steps with TRAIN_STEPS={train_steps} (stage starts: {starts} -> steps "
        f"{list(boundaries)}); raise TRAIN_STEPS or change the stage fractions"
      )
      logging.warning(msg)
      warnings.warn(msg, EmptyStageWarning, stacklevel=3)


def stage_at(step: int, boundaries: Sequence[int]) -> int:
  """Index of the stage that feeds `step` (0-based): the last stage started at or before it."""
  if step < 0:
    raise ValueError(f"step must be >= 0, got {step}")
  return bisect.bisect_right(list(boundaries), step) - 1


def two_stage_curriculum(
  name: str = "polylm_pretrain_curriculum",
  stage1: str = "polylm_pretrain_stage1",
  stage2: str = "polylm_pretrain_stage2",
  final_stage_fraction: float = 0.2,
) -> Curriculum:
  """The default: stage 2 covers the last `final_stage_fraction` of the training steps."""
  if not 0.0 <= final_stage_fraction <= 1.0:
    raise ValueError(f"final_stage_fraction must be in [0, 1], got {final_stage_fraction}")
  return Curriculum(name, (Stage(stage1), Stage(stage2, 1.0 - final_stage_fraction)))


_CURRICULA: dict[str, Curriculum] = {}


def register_curriculum(c: Curriculum, *, overwrite: bool = False) -> Curriculum:
  if c.name in _CURRICULA and not overwrite and _CURRICULA[c.name] != c:
    raise ValueError(f"curriculum {c.name!r} is already registered")
  _CURRICULA[c.name] = c
  return c


def get_curriculum(name: str) -> Curriculum:
  if name not in _CURRICULA:
    raise KeyError(f"no curriculum named {name!r}; registered: {sorted(_CURRICULA) or 'none'}")
  return _CURRICULA[name]


def curriculum_names() -> Iterable[str]:
  return tuple(_CURRICULA)
