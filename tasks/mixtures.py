"""Pre-training stage mixtures and the curriculum, registered on import.

  polylm_pretrain_stage1      30% non-English tokens, over the built-in sample corpus
  polylm_pretrain_stage2      60% non-English tokens, bilingual data up-weighted
  polylm_pretrain_curriculum  stage 1, then stage 2 for the last 20% of TRAIN_STEPS

MIXTURE_OR_TASK_NAME takes any of them (or a seqio Task/Mixture); `polylm_jax.stream.resolve`
looks the name up as a curriculum first, then as a stage mixture, then in seqio. The two stage
names are also seqio Mixtures, with per-example rates that approximate the token shares (share
/ mean document length), for seqio tooling; the stream itself schedules by tokens, exactly.

What is ours (SPEC section 4 leaves it open): per-language rates p_i ∝ n_i^(1/T) with T = 1
over the non-English languages; within a language, components are weighted by source: bitext
0.1 of the monolingual weight in stage 1 and 0.5 in stage 2, and for web corpora (`WEB_STAGE*`,
not registered: give them token counts) Wikipedia-like sources 0.25 in stage 1 and 2.0 in
stage 2 against mC4's 1.0. A bitext task's tokens count toward its non-English language.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Optional, Sequence

import seqio

from polylm_jax import curriculum, mixing
from polylm_jax import stream as stream_lib
from tasks import pretrain, registry  # noqa: F401  (pretrain registers the tasks named here)
from tasks.languages import all_languages
from tasks.registry import bitext_task_name, mono_task_name

PREFIX = "polylm_pretrain"
FINAL_STAGE_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class StageRecipe:
  """One stage: its non-English token share and the weight of each source within a language.

  mono: source name -> weight of `polylm_{lang}_{source}`; bitext: source -> weight of
  `polylm_bitext_{lang}_en_{source}`. Tasks that are not registered are left out.
  """

  non_english_share: float
  mono: Mapping[str, float]
  bitext: Mapping[str, float] = dataclasses.field(default_factory=dict)
  temperature: float = 1.0


SAMPLE_STAGE1 = StageRecipe(0.3, mono={"sample": 1.0}, bitext={"sample": 0.1})
SAMPLE_STAGE2 = StageRecipe(0.6, mono={"sample": 1.0}, bitext={"sample": 0.5})
_WEB_BITEXT = ("ted", "para_crawl", "wmt13", "wmt15", "wmt18", "wmt19", "opus")
WEB_STAGE1 = StageRecipe(
  0.3, mono={"mc4": 1.0, "wiki40b": 0.25}, bitext={s: 0.02 for s in _WEB_BITEXT}
)
WEB_STAGE2 = StageRecipe(
  0.6, mono={"mc4": 1.0, "wiki40b": 2.0}, bitext={s: 0.2 for s in _WEB_BITEXT}
)


def sync_languages() -> tuple[str, ...]:
  """Give every language registered in tasks.languages a `langs` index; returns the codes."""
  codes = tuple(lang.code for lang in all_languages())
  for code in codes:
    mixing.add_language(code)
  return codes


def stage_components(
  recipe: StageRecipe, languages: Sequence[str], where: str = "mixture"
) -> tuple[mixing.Component, ...]:
  registered = set(seqio.TaskRegistry.names())
  comps = []
  for lang in languages:
    mixing.language_index(lang, where=where)
    mine = [
      mixing.Component(mono_task_name(lang, src), w, lang)
      for src, w in recipe.mono.items()
      if mono_task_name(lang, src) in registered
    ]
    if lang != mixing.ENGLISH:
      mine += [
        mixing.Component(bitext_task_name(lang, "en", src), w, lang)
        for src, w in recipe.bitext.items()
        if bitext_task_name(lang, "en", src) in registered
      ]
    if not mine:
      looked = [mono_task_name(lang, src) for src in recipe.mono]
      raise ValueError(
        f"{where}: language {lang!r} has no registered task for sources "
        f"{sorted(recipe.mono)} (looked for {', '.join(looked)})"
      )
    comps += mine
  return tuple(comps)


def register_stage(
  name: str,
  recipe: StageRecipe,
  languages: Sequence[str],
  token_counts: Optional[Mapping[str, float]] = None,
  overwrite: bool = True,
) -> mixing.StageMixture:
  """A stage mixture under `name`, in the stream's registry and (per example) in seqio's."""
  m = mixing.StageMixture(
    name,
    stage_components(recipe, languages, f"mixture {name!r}"),
    non_english_share=recipe.non_english_share,
    temperature=recipe.temperature,
    token_counts=token_counts,
  )
  mixing.register_stage_mixture(m, overwrite=overwrite)
  # mixing.register_stage_mixture above already applied `overwrite`: seqio's copy follows it.
  registry.add_provider(
    seqio.MixtureRegistry,
    name,
    [(c.task, functools.partial(_example_rate, name)) for c in m.components],
  )
  return m


@functools.lru_cache(maxsize=None)
def _token_shares(name: str) -> dict[str, float]:
  plan = stream_lib.plan_stage(mixing.get_stage_mixture(name))
  return dict(zip(plan.tasks, plan.shares))


def _example_rate(mixture_name: str, task: seqio.Task) -> float:
  """seqio's per-example rate that gives the stage's token share on average."""
  share = _token_shares(mixture_name).get(task.name, 0.0)
  if not share:
    return 0.0
  docs, tokens = stream_lib.task_stats(task.name)
  return share * docs / tokens


def register_pretrain_mixtures(
  prefix: str = PREFIX,
  stage1: StageRecipe = SAMPLE_STAGE1,
  stage2: StageRecipe = SAMPLE_STAGE2,
  languages: Optional[Sequence[str]] = None,
  final_stage_fraction: float = FINAL_STAGE_FRACTION,
  token_counts: Optional[Mapping[str, float]] = None,
) -> curriculum.Curriculum:
  """`{prefix}_stage1`, `{prefix}_stage2` and `{prefix}_curriculum` in one call.

  languages: default every registered language. token_counts: tokens per language for the
  temperature rule; leave None only for local corpora (they are then counted on first use).
  """
  codes = sync_languages()
  languages = tuple(languages) if languages is not None else codes
  s1 = register_stage(f"{prefix}_stage1", stage1, languages, token_counts)
  s2 = register_stage(f"{prefix}_stage2", stage2, languages, token_counts)
  return curriculum.register_curriculum(
    curriculum.two_stage_curriculum(f"{prefix}_curriculum", s1.name, s2.name, final_stage_fraction),
    overwrite=True,
  )


DEFAULT_CURRICULUM = register_pretrain_mixtures()
