"""The registered stage mixtures and curriculum over the built-in sample corpus."""

import numpy as np
import pytest
import seqio

import tasks
from polylm_jax import curriculum, mixing, readers, stream
from tasks import languages as languages_lib
from tasks import mixtures

EN = mixing.language_index("en")


@pytest.fixture(scope="module")
def plans():
  return [
    stream.plan_stage(mixing.get_stage_mixture(n))
    for n in ("polylm_pretrain_stage1", "polylm_pretrain_stage2")
  ]


def test_registered_names():
  c = curriculum.get_curriculum("polylm_pretrain_curriculum")
  assert c.mixtures == ("polylm_pretrain_stage1", "polylm_pretrain_stage2")
  assert c.boundaries(1000) == (0, 800)
  for name, share in (("polylm_pretrain_stage1", 0.3), ("polylm_pretrain_stage2", 0.6)):
    m = mixing.get_stage_mixture(name)
    assert m.non_english_share == share
    assert len(m.components) == 18 + 17
    assert isinstance(seqio.get_mixture_or_task(name), seqio.Mixture)
  w1 = {c.task: c.weight for c in mixing.get_stage_mixture("polylm_pretrain_stage1").components}
  w2 = {c.task: c.weight for c in mixing.get_stage_mixture("polylm_pretrain_stage2").components}
  assert w2["polylm_bitext_de_en_sample"] > w1["polylm_bitext_de_en_sample"]  # up-weighted
  assert w1["polylm_de_sample"] == w2["polylm_de_sample"]


def test_stage_shares_are_exact(plans):
  for plan, share in zip(plans, (0.3, 0.6)):
    en = sum(s for s, l in zip(plan.shares, plan.langs) if l == EN)
    assert en == pytest.approx(1 - share, abs=1e-12)
    assert sum(plan.shares) == pytest.approx(1.0)
    assert set(plan.langs) == set(range(18))
  # per-example seqio rates reproduce the token shares on average
  mix = seqio.get_mixture_or_task("polylm_pretrain_stage1")
  by_task = dict(zip(plans[0].tasks, plans[0].shares))
  for task in mix.tasks[:5]:
    docs, tokens = stream.task_stats(task.name)
    assert mix.get_rate(task) * tokens / docs == pytest.approx(by_task[task.name])


def test_sample_stream_realises_the_stage1_token_shares(plans):
  """Tolerance: 1 percentage point overall and 0.5 per language over 262k tokens."""
  s = stream.build_stream("polylm_pretrain_stage1", seq_len=512, batch_size=8, seed=3)
  vocab_size = (
    seqio.get_mixture_or_task("polylm_en_sample").output_features["targets"].vocabulary.vocab_size
  )
  counts = np.zeros(18)
  for _ in range(64):
    b = s.next()
    counts += np.bincount(b["langs"].reshape(-1), minlength=18)
    assert 0 <= b["inputs"].min() and b["targets"].max() < vocab_size
  realised = counts / counts.sum()
  assert abs((1 - realised[EN]) - 0.3) < 0.01
  target = np.zeros(18)
  for share, lang in zip(plans[0].shares, plans[0].langs):
    target[lang] += share
  np.testing.assert_allclose(realised, target, atol=0.005)


def test_curriculum_stream_and_eval_split():
  s = stream.build_stream("polylm_pretrain_curriculum", seq_len=64, batch_size=2, train_steps=10)
  assert s.boundaries == (0, 8) and [p.name for p in s.stages] == [
    "polylm_pretrain_stage1",
    "polylm_pretrain_stage2",
  ]
  evals = stream.eval_tasks("polylm_pretrain_curriculum")
  assert list(evals) == list(mixing.LANGUAGES)
  assert evals["fr"] == ("polylm_fr_sample",)
  batches = list(stream.eval_batches(evals["fr"], seq_len=64, batch_size=2))
  assert batches and all(
    b["langs"][b["loss_weights"] > 0].tolist()
    == [mixing.language_index("fr")] * int(b["loss_weights"].sum())
    for b in batches
  )
  # host 1 of 2 holds only the documents file, whose lines all fall in 'train'
  host1 = list(stream.eval_batches(evals["fr"], 64, 2, shard_index=1, num_shards=2, num_batches=1))
  assert len(host1) == 1


def test_unknown_language_in_a_recipe_is_an_error():
  with pytest.raises(ValueError, match="unknown language code 'xx' in mixture 'bad_stage1'"):
    mixtures.register_pretrain_mixtures("bad", languages=("en", "xx"))
  with pytest.raises(
    ValueError,
    match="mixture 'bad_stage1': language 'en' has no "
    "registered task for sources \\['news'\\] "
    "\\(looked for polylm_en_news\\)",
  ):
    mixtures.register_pretrain_mixtures(
      "bad", stage1=mixtures.StageRecipe(0.3, mono={"news": 1.0}), languages=("en", "de")
    )


def test_readme_snippet_new_language_and_mixture(tmp_path, monkeypatch):
  """The README example: a new language from local files and a mixture that uses it."""
  monkeypatch.setattr(languages_lib, "_LANGUAGES", dict(languages_lib._LANGUAGES))
  monkeypatch.setattr(mixing, "_LANGS", list(mixing._LANGS))
  monkeypatch.setattr(mixing, "_LANG_INDEX", dict(mixing._LANG_INDEX))
  monkeypatch.setenv("POLYLM_JAX_UNIT_DISK_CACHE", "0")
  news = tmp_path / "sw-news-00000.txt"
  news.write_text("".join(f"Habari ya leo nambari {i} ni njema sana.\n" for i in range(60)))

  # --- README snippet ---
  tasks.register_language(tasks.Language("sw", "Swahili", "Kiswahili", "Latn"))
  tasks.register_text_task("sw", "news", str(news), holdout_every=10)  # polylm_sw_news
  mixtures.register_pretrain_mixtures(
    "my_pretrain",
    stage1=mixtures.StageRecipe(0.3, mono={"sample": 1.0, "news": 1.0}, bitext={"sample": 0.1}),
    stage2=mixtures.StageRecipe(0.6, mono={"sample": 1.0, "news": 1.0}, bitext={"sample": 0.5}),
  )
  # train with --gin.MIXTURE_OR_TASK_NAME="'my_pretrain_curriculum'"
  # ---
  try:
    sw = mixing.language_index("sw")
    s = stream.build_stream("my_pretrain_curriculum", seq_len=256, batch_size=4, train_steps=100)
    assert "polylm_sw_news" in s.stages[0].tasks
    langs = np.concatenate([s.next()["langs"].reshape(-1) for _ in range(40)])
    assert (langs == sw).any()
    assert stream.eval_tasks("my_pretrain_curriculum")["sw"] == ("polylm_sw_news",)
  finally:
    for name in ("my_pretrain_stage1", "my_pretrain_stage2"):
      seqio.MixtureRegistry.remove(name)
      mixing._STAGE_MIXTURES.pop(name, None)
    curriculum._CURRICULA.pop("my_pretrain_curriculum", None)
    seqio.TaskRegistry.remove("polylm_sw_news")
    readers.UNIT_CACHE.clear()
