"""The registered stage mixtures and curriculum over the built-in sample corpus."""

import json

import numpy as np
import pytest
import seqio

import tasks
from polylm_jax import curriculum, mixing, readers, stream
from tasks import languages as languages_lib
from stream_fixtures import label_by_document
from tasks import mixtures, registry

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


@pytest.fixture(scope="module")
def corpus():
  """Every train document of every sample task -> its language, and tokens per language,
  read task by task (independent of the mixing code: the expected shares below are computed
  by hand from these counts)."""
  doc_lang: dict[tuple, int] = {}
  tokens = np.zeros(18)
  longest = np.zeros(18)
  for lang in mixing.LANGUAGES:
    names = [f"polylm_{lang}_sample"] + (
      [f"polylm_bitext_{lang}_en_sample"] if lang != "en" else []
    )
    for task in names:
      reader = readers.SourceReader(task, "train", repeat=False)
      while (item := reader.next_doc()) is not None:
        doc, i = tuple(item[0].tolist()), mixing.language_index(lang)
        assert doc_lang.setdefault(doc, i) == i, f"{task}: document also in another language"
        tokens[i] += len(doc)
        longest[i] = max(longest[i], len(doc))
  return doc_lang, tokens, longest


def _hand_shares(tokens: np.ndarray, share: float) -> np.ndarray:
  """T = 1: each non-English language gets share * n_lang / n_non_English; English 1 - share."""
  out = share * tokens / (tokens.sum() - tokens[EN])
  out[EN] = 1 - share
  return out


def test_sample_curriculum_holds_each_stage_share_in_every_batch(corpus):
  """The sample curriculum at 8 x 512 = 4,096 tokens per batch, TRAIN_STEPS = 30 (stage 2 from
  step 24), every document labelled against the corpus:
  - every batch's non-English share is within 3 points (the 1.5% boundary slack at both ends
    of a batch) of its stage's target, from the first batch of each stage;
  - the realised stage totals: stage 1 within the slack of 30%, stage 2 of 60%;
  - per language over every window of 8 stage-1 batches: within (its longest document + 64
    jitter tokens) / window tokens of the hand-computed share;
  - resumed at steps 17 (mid-stage) and 24 (the switch), the batches are the uninterrupted ones.
  """
  doc_lang, tokens, longest = corpus
  kw = dict(seq_len=512, batch_size=8, seed=0, train_steps=30)
  s = stream.build_stream("polylm_pretrain_curriculum", **kw)
  assert s.boundaries == (0, 24)
  batches, saved = [], {}
  for step in range(30):
    if step in (17, 24):
      saved[step] = json.loads(json.dumps(s.state()))
    batches.append(s.next())
  N = 8 * 512
  counts = np.concatenate(
    [
      label_by_document(batches[:24], doc_lang, EN, 18),
      label_by_document(batches[24:], doc_lang, EN, 18, after_switch=True),
    ]
  )
  non_en = np.array([(b["langs"] != EN).mean() for b in batches])
  labelled = 1 - counts[:, EN] / counts.sum(1)
  for a, b in ((0, 22), (24, 28)):  # `langs` is right (a stage's last documents are cut)
    np.testing.assert_allclose(labelled[a:b], non_en[a:b], atol=1e-12)
  target = np.array([0.3] * 24 + [0.6] * 6)
  assert np.abs(non_en - target).max() <= 2 * 0.015 + 1 / N, non_en
  assert abs(non_en[:24].mean() - 0.3) <= 0.015 / 24
  assert abs(non_en[24:].mean() - 0.6) <= 0.015 / 6
  expect = _hand_shares(tokens, 0.3)
  for w in range(0, 24 - 8 + 1):
    win = counts[w : w + 8].sum(0) / (8 * N)
    tol = (longest + 64) / (8 * N)
    bad = np.flatnonzero(np.abs(win - expect) > tol)
    assert not len(bad), (w, [mixing.LANGUAGES[i] for i in bad], win[bad], expect[bad])
  for step, state in saved.items():
    r = stream.build_stream("polylm_pretrain_curriculum", **kw)
    r.restore(state)
    for i in range(step, min(step + 4, 30)):
      got = r.next()
      for k in got:
        np.testing.assert_array_equal(got[k], batches[i][k], err_msg=f"resume {step}, step {i} {k}")


def test_realised_stage2_share_over_the_sample_corpus(corpus):
  """Stage 2 alone over 262k tokens: 60% non-English, and each language's share by hand within
  0.5 points (vocabulary bounds checked on the way)."""
  doc_lang, tokens, _ = corpus
  s = stream.build_stream("polylm_pretrain_stage2", seq_len=512, batch_size=8, seed=3)
  vocab_size = (
    seqio.get_mixture_or_task("polylm_en_sample").output_features["targets"].vocabulary.vocab_size
  )
  batches = []
  for _ in range(64):
    batches.append(s.next())
    assert 0 <= batches[-1]["inputs"].min() and batches[-1]["targets"].max() < vocab_size
  counts = label_by_document(batches, doc_lang, EN, 18).sum(0)
  realised = counts / counts.sum()
  assert abs((1 - realised[EN]) - 0.6) < 0.002
  np.testing.assert_allclose(realised, _hand_shares(tokens, 0.6), atol=0.005)


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
  monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))  # tasks.list_tasks() after
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
