"""Curriculum: step -> stage, the exact switch, and exact resume around the boundary."""

import json
import warnings

import numpy as np
import pytest

from polylm_jax import curriculum, mixing, stream
from stream_fixtures import make_docs, register_int_task


def test_default_two_stage_boundary():
  c = curriculum.two_stage_curriculum()
  assert c.mixtures == ("polylm_pretrain_stage1", "polylm_pretrain_stage2")
  assert c.boundaries(1000) == (0, 800)
  assert c.boundaries(152_500) == (0, 122_000)
  b = c.boundaries(10)
  assert [curriculum.stage_at(s, b) for s in range(10)] == [0] * 8 + [1] * 2
  assert curriculum.two_stage_curriculum(final_stage_fraction=0.5).boundaries(10) == (0, 5)
  with pytest.warns(curriculum.EmptyStageWarning):  # a final stage of 0% gets no steps
    assert curriculum.two_stage_curriculum(final_stage_fraction=0.0).boundaries(10) == (0, 10)


def test_absolute_steps_and_errors():
  c = curriculum.Curriculum(
    "c",
    (
      curriculum.Stage("a"),
      curriculum.Stage("b", start_step=3),
      curriculum.Stage("c", start_step=7),
    ),
  )
  assert c.boundaries(None) == (0, 3, 7)
  assert [curriculum.stage_at(s, (0, 3, 7)) for s in (0, 2, 3, 6, 7, 100)] == [0, 0, 1, 1, 2, 2]
  with pytest.raises(ValueError, match="TRAIN_STEPS must be a positive int"):
    curriculum.two_stage_curriculum().boundaries(None)
  with pytest.raises(ValueError, match="first stage must start at step 0"):
    curriculum.Curriculum("c", (curriculum.Stage("a", 0.5),))
  with pytest.raises(ValueError, match="stage starts decrease"):
    curriculum.Curriculum(
      "c", (curriculum.Stage("a"), curriculum.Stage("b", 0.8), curriculum.Stage("c", 0.5))
    ).boundaries(10)
  with pytest.raises(ValueError, match="final_stage_fraction"):
    curriculum.two_stage_curriculum(final_stage_fraction=1.5)
  with pytest.raises(ValueError, match="step must be >= 0"):
    curriculum.stage_at(-1, (0,))
  with pytest.raises(KeyError, match="no curriculum named"):
    curriculum.get_curriculum("nope")


@pytest.fixture(scope="module")
def two_stage():
  """Stage 1: en + de at 30% non-English; stage 2: de + zh only (so the switch shows)."""
  t = {
    lang: register_int_task(
      f"polylm_{lang}_curtest", {"train": make_docs(1000 * (i + 1), 50, max_len=60)}
    )
    for i, lang in enumerate(("en", "de", "zh"))
  }
  s1 = mixing.register_stage_mixture(
    mixing.StageMixture(
      "curtest_stage1",
      (mixing.Component(t["en"]), mixing.Component(t["de"])),
      non_english_share=0.3,
    ),
    overwrite=True,
  )
  s2 = mixing.register_stage_mixture(
    mixing.StageMixture(
      "curtest_stage2",
      (mixing.Component(t["de"]), mixing.Component(t["zh"])),
      non_english_share=1.0,
    ),
    overwrite=True,
  )
  curriculum.register_curriculum(
    curriculum.two_stage_curriculum("curtest", s1.name, s2.name, final_stage_fraction=0.25),
    overwrite=True,
  )
  return t


TRAIN_STEPS = 24  # boundary at step 18


def _build(**kw):
  return stream.build_stream(
    "curtest", seq_len=32, batch_size=2, seed=11, train_steps=TRAIN_STEPS, **kw
  )


def test_stream_switches_at_the_exact_step(two_stage):
  s = _build()
  assert s.boundaries == (0, 18)
  en, de, zh = (mixing.language_index(l) for l in ("en", "de", "zh"))
  for step in range(TRAIN_STEPS):
    langs = set(np.unique(s.next()["langs"]).tolist())
    if step < 18:
      assert zh not in langs and s.stage == (0 if step + 1 < 18 else 1)
    else:
      assert langs <= {de, zh} and en not in langs, step


@pytest.mark.parametrize("cut", [9, 17, 18, 19])
def test_resume_around_the_boundary_is_exact(two_stage, cut):
  ref = _build()
  expected = [ref.next() for _ in range(TRAIN_STEPS)]
  s = _build()
  for _ in range(cut):
    s.next()
  saved = json.loads(json.dumps(s.state()))
  r = _build()
  r.restore(saved)
  for i in range(cut, TRAIN_STEPS):
    got = r.next()
    for k in got:
      np.testing.assert_array_equal(got[k], expected[i][k], err_msg=f"step {i} {k}")


def test_a_stage_left_without_steps_is_reported_at_start_up(two_stage):
  c = curriculum.two_stage_curriculum()  # stage 2 for the last 20%
  for steps in (1, 2):
    with pytest.warns(curriculum.EmptyStageWarning) as rec:
      assert c.boundaries(steps) == (0, steps)
    msg = str(rec[0].message)
    assert f"TRAIN_STEPS={steps}" in msg and "['polylm_pretrain_stage2']" in msg
    assert "polylm_pretrain_stage2 at fraction 0.8" in msg
  half = curriculum.Curriculum("h", (curriculum.Stage("a"), curriculum.Stage("b", 0.4)))
  with pytest.warns(curriculum.EmptyStageWarning, match=r"\['a'\] get no training steps"):
    half.boundaries(1)  # round(0.4) = 0: the first stage is the empty one
  with pytest.warns(curriculum.EmptyStageWarning, match="TRAIN_STEPS=1"):
    _ = stream.build_stream("curtest", seq_len=8, batch_size=1, train_steps=1)
  with warnings.catch_warnings():
    warnings.simplefilter("error", curriculum.EmptyStageWarning)
    assert c.boundaries(3) == (0, 2)  # one step each: no warning
    assert c.boundaries(10) == (0, 8)
    _ = stream.build_stream("curtest", seq_len=8, batch_size=1, train_steps=4)


def test_every_batch_holds_the_stage_share_across_the_switch_and_a_resume(two_stage):
  """Batches of 8 x 64 (documents of up to 60 tokens): each batch's non-English share is within
  the boundary slack (1.5% of the batch, 7 tokens, on each of the two cumulative ends) of the
  stage target from the first batch of each stage, and the stage totals are exact to a token."""
  steps = 20
  kw = dict(seq_len=64, batch_size=8, seed=2, train_steps=steps)
  s = stream.build_stream("curtest", **kw)
  assert s.boundaries == (0, 15)
  en = mixing.language_index("en")
  shares = []
  for step in range(steps):
    if step == 7:
      saved = json.loads(json.dumps(s.state()))
    shares.append(float((s.next()["langs"] != en).mean()))
  shares = np.array(shares)
  slack = 2 * int(0.015 * 512) + 1
  assert np.abs(shares[:15] - 0.3).max() <= slack / 512, shares[:15]
  np.testing.assert_array_equal(shares[15:], 1.0)  # stage 2 is all non-English
  # totals: round(k * N * share) after k batches of the stage, give or take the slack
  assert abs(shares[:15].sum() * 512 - round(15 * 512 * 0.3)) <= slack // 2
  r = stream.build_stream("curtest", **kw)
  r.restore(saved)
  resumed = [float((r.next()["langs"] != en).mean()) for _ in range(7, steps)]
  np.testing.assert_array_equal(resumed, shares[7:])
