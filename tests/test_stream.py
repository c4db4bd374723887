"""Packed stream: batch contract, exact resume, host sharding, eval batches, bad input."""

import json

import numpy as np
import pytest
import seqio

from polylm_jax import mixing, stream
from stream_fixtures import (
  EOS,
  make_docs,
  register_file_task,
  register_int_task,
  split_docs,
  stream_tokens,
)


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):  # these tasks live in temp dirs: keep them out of the cache
  monkeypatch.setenv("POLYLM_JAX_UNIT_DISK_CACHE", "0")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
  d = tmp_path_factory.mktemp("stream_tasks")
  docs = {
    "en": make_docs(1000, 60),
    "zh": make_docs(2000, 50, max_len=90),
    "de": make_docs(3000, 40, max_len=12),
  }
  names = {
    "en": register_int_task(
      "polylm_en_streamtest", {"train": docs["en"], "validation": make_docs(9000, 7)}
    ),
    "zh": register_file_task("polylm_zh_streamtest", str(d), docs["zh"], num_files=4),
    "de": register_int_task("polylm_de_streamtest", {"train": docs["de"]}),
  }
  return names, docs


def _plan(names, shares=(0.5, 0.3, 0.2)):
  return stream.StagePlan(
    "test",
    (names["en"], names["zh"], names["de"]),
    shares,
    (mixing.language_index("en"), mixing.language_index("zh"), mixing.language_index("de")),
  )


def _stream(names, **kw):
  kw.setdefault("unit_bytes", 1)  # one unit per file: exercises seeking across units
  kw.setdefault("seq_len", 16)
  kw.setdefault("batch_size", 3)
  return stream.PackedStream([_plan(names)], (0,), name="t", **kw)


def test_batch_contract_released_recipe(tasks):
  names, docs = tasks
  s = _stream(names)
  batches = [s.next() for _ in range(6)]
  for b in batches:
    assert set(b) == {"inputs", "targets", "loss_weights", "positions", "segment_ids", "langs"}
    for k, v in b.items():
      assert v.shape == (3, 16), k
      assert v.dtype == (np.float32 if k == "loss_weights" else np.int32), k
    # loss on every token, including PolyLM's id 0 (<unk>) which occurs in the data
    np.testing.assert_array_equal(b["loss_weights"], 1.0)
    np.testing.assert_array_equal(b["positions"], np.tile(np.arange(16), (3, 1)))
    np.testing.assert_array_equal(b["segment_ids"], 1)
    # rows hold seq_len + 1 tokens: targets are inputs shifted by one, rows overlap by one
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    np.testing.assert_array_equal(b["inputs"][1:, 0], b["targets"][:-1, -1])
  assert any((b["targets"] == 0).any() for b in batches)
  for a, b in zip(batches, batches[1:]):
    assert b["inputs"][0, 0] == a["targets"][-1, -1]
  # each lane (non-English, English) is whole documents joined by eos, each tagged with its
  # language (langs tags the target token: flat token i >= 1 has langs_flat[i]); the first
  # token of the stream is an input of the non-English lane
  flat = stream_tokens(batches)
  en = mixing.language_index("en")
  langs_flat = np.concatenate([[-1]] + [b["langs"].reshape(-1) for b in batches])
  all_docs = {tuple(d + [EOS]): lang for lang, ds in docs.items() for d in ds}
  for lane in (langs_flat != en, langs_flat == en):  # langs_flat[0] = -1: lane 0
    pieces = split_docs(flat[lane])
    assert len(pieces) > 3
    pos = 0
    for piece in pieces[:-1]:
      assert piece in all_docs
      lang = mixing.language_index(all_docs[piece])
      got = langs_flat[lane][pos : pos + len(piece)]
      np.testing.assert_array_equal(got[1:] if pos == 0 else got, lang)
      pos += len(piece)


def test_lane_changes_land_on_document_ends_so_documents_stay_whole(tasks):
  """With a slack wider than the longest document (90 tokens), every batch's lane change falls
  on a document end: the flat stream is whole documents, and each batch still holds its quota
  of non-English tokens within the slack (0.5 * 512 = 256 from the plan, +- 51)."""
  names, docs = tasks
  s = _stream(names, seq_len=64, batch_size=8, boundary_slack=0.1)
  batches = [s.next() for _ in range(20)]
  all_docs = {tuple(d + [EOS]) for ds in docs.values() for d in ds}
  pieces = split_docs(stream_tokens(batches))
  assert len(pieces) > 100 and all(p in all_docs for p in pieces[:-1])
  en = mixing.language_index("en")
  non_en = np.array([(b["langs"] != en).sum() for b in batches])
  assert np.abs(non_en - 256).max() <= 2 * 51 + 1
  assert abs(non_en.sum() - 20 * 256) <= 51
  with pytest.raises(ValueError, match="boundary_slack must be in"):
    _stream(names, boundary_slack=0.7)


def test_segment_aware_resets_at_each_document(tasks):
  names, _ = tasks
  plain = _stream(names, seed=3)
  seg = _stream(names, seed=3, segment_aware=True)
  for _ in range(4):
    a, b = plain.next(), seg.next()
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["langs"], b["langs"])
    for r in range(3):
      # a segment starts after each eos and where the lane (English or not) changes
      lane = b["langs"][r] == mixing.language_index("en")
      starts = np.flatnonzero((b["inputs"][r] == EOS) | np.r_[False, lane[1:] != lane[:-1]])
      expect_seg = np.ones(16, np.int32)
      expect_pos = np.arange(16)
      for s in starts:
        if s == 0:
          continue
        expect_seg[s:] += 1
        expect_pos[s:] = np.arange(16 - s)
      np.testing.assert_array_equal(b["segment_ids"][r], expect_seg)
      np.testing.assert_array_equal(b["positions"][r], expect_pos)


@pytest.mark.parametrize("cut,cache", [(0, True), (1, True), (7, True), (23, True), (23, False)])
def test_resume_yields_exactly_the_uninterrupted_batches(tasks, cut, cache, monkeypatch):
  names, _ = tasks
  stream.UNIT_CACHE.clear()
  if not cache:  # every unit re-read through seqio, resumes skip inside the unit
    monkeypatch.setattr(stream.UNIT_CACHE, "max_tokens", 0)
  total = 30
  ref = _stream(names, seed=5)
  expected = [ref.next() for _ in range(total)]
  s = _stream(names, seed=5)
  for _ in range(cut):
    s.next()
  saved = json.loads(json.dumps(s.state()))
  assert len(json.dumps(saved)) < 2000
  resumed = _stream(names, seed=5)
  resumed.restore(saved)
  for i in range(cut, total):
    got = resumed.next()
    for k in got:
      np.testing.assert_array_equal(got[k], expected[i][k], err_msg=f"step {i} {k}")


def test_resume_reads_at_most_one_unit(tasks):
  names, docs = tasks
  s = _stream(names, seed=1)
  for _ in range(400):  # several epochs of every source
    s.next()
  st = s.state()
  assert all(pos[0] >= 2 for pos in st["sources"].values()), st["sources"]
  resumed = _stream(names, seed=1)
  resumed.restore(st)
  resumed.next()
  unit_size = {names["en"]: 60, names["de"]: 40, names["zh"]: 50 // 4 + 1}
  for task, reader in resumed._readers.items():
    # a restore skips inside one unit (file / host slice), never over past epochs
    assert reader._opened_at <= unit_size[task]


def test_two_hosts_yield_each_example_exactly_once(tasks):
  names, docs = tasks
  # by groups of files, by single files, and by examples (a one-'file' function source)
  for lang, unit_bytes, n_units in (("zh", 1 << 26, 1), ("zh", 1, 2), ("en", 1, 1)):
    seen = []
    for host in range(2):
      r = stream.SourceReader(
        names[lang], shard_index=host, num_shards=2, repeat=False, unit_bytes=unit_bytes
      )
      assert len(r.units) == n_units
      while (item := r.next_doc()) is not None:
        seen.append(tuple(item[0]))
    assert sorted(seen) == sorted(tuple(d + [EOS]) for d in docs[lang])
  # through the packed stream: one task, each host's first epoch, disjoint and complete
  plan = stream.StagePlan("zh", (names["zh"],), (1.0,), (0,))
  got = []
  for host in range(2):
    s = stream.PackedStream(
      [plan], seq_len=8, batch_size=2, shard_index=host, num_shards=2, name="zh", unit_bytes=1
    )
    batches = []
    while s.state()["sources"][names["zh"]][0] == 0:
      batches.append(s.next())
    pieces = split_docs(stream_tokens(batches))
    ids = [p[0] for p in pieces]
    first_repeat = next(i for i in range(1, len(ids)) if ids[i] in ids[:i])
    got += pieces[:first_repeat]
  assert sorted(got) == sorted(tuple(d + [EOS]) for d in docs["zh"])


def test_hosts_differ_and_are_deterministic(tasks):
  names, _ = tasks
  a0 = _stream(names, shard_index=0, num_shards=2).next()
  a1 = _stream(names, shard_index=1, num_shards=2).next()
  again = _stream(names, shard_index=0, num_shards=2).next()
  assert not np.array_equal(a0["inputs"], a1["inputs"])
  np.testing.assert_array_equal(a0["inputs"], again["inputs"])


def test_seqio_mixture_rates_are_token_shares_and_a_task_is_one_source(tasks):
  names, _ = tasks
  seqio.MixtureRegistry.remove("streamtest_mix")
  seqio.MixtureRegistry.add("streamtest_mix", [(names["en"], 3.0), (names["de"], 1.0)])
  stages, bounds = stream.resolve("streamtest_mix")
  assert bounds == (0,)
  plan = stages[0]
  assert dict(zip(plan.tasks, plan.shares)) == pytest.approx({names["en"]: 0.75, names["de"]: 0.25})
  assert dict(zip(plan.tasks, plan.langs)) == {
    names["en"]: mixing.language_index("en"),
    names["de"]: mixing.language_index("de"),
  }
  s = stream.build_stream("streamtest_mix", seq_len=64, batch_size=4)
  langs = np.concatenate([s.next()["langs"].reshape(-1) for _ in range(40)])
  assert abs((langs == mixing.language_index("de")).mean() - 0.25) < 0.02
  stages, _ = stream.resolve(names["zh"])
  assert stages[0].tasks == (names["zh"],) and stages[0].shares == (1.0,)
  seqio.MixtureRegistry.remove("streamtest_bad")
  seqio.MixtureRegistry.add("streamtest_bad", [(names["en"], 0.0), (names["de"], 0.0)])
  with pytest.raises(ValueError, match="seqio mixture 'streamtest_bad': rates must be"):
    stream.resolve("streamtest_bad")


def test_eval_batches_are_finite_padded_and_complete(tasks):
  names, _ = tasks
  val = make_docs(9000, 7)
  batches = list(stream.eval_batches([names["en"]], seq_len=8, batch_size=2))
  w = np.concatenate([b["loss_weights"].reshape(-1) for b in batches])
  total = sum(len(d) + 1 for d in val)
  assert int(w.sum()) == total - 1  # every token but the first is a weighted target
  flat = stream_tokens(batches)[:total]
  assert split_docs(flat) == [tuple(d + [EOS]) for d in val]
  last = batches[-1]
  assert (last["langs"][last["loss_weights"] == 0] == -1).all()
  again = list(stream.eval_batches([names["en"]], seq_len=8, batch_size=2))
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  padded = list(
    stream.eval_batches([names["en"]], seq_len=8, batch_size=2, num_batches=len(batches) + 2)
  )
  assert len(padded) == len(batches) + 2
  assert padded[-1]["loss_weights"].sum() == 0
  assert len(list(stream.eval_batches([names["en"]], 8, 2, num_batches=1))) == 1


def test_bad_input_errors(tasks):
  names, _ = tasks
  with pytest.raises(ValueError, match="seq_len"):
    _stream(names, seq_len=0)
  with pytest.raises(ValueError, match="batch_size"):
    _stream(names, batch_size=-1)
  with pytest.raises(ValueError, match="polylm_xx_nope"):
    stream.build_stream("polylm_xx_nope", 8, 2)
  with pytest.raises(ValueError, match="no split 'validation'"):
    list(stream.eval_batches([names["de"]], 8, 2))
  empty = register_int_task("polylm_en_emptytest", {"train": []})
  plan = stream.StagePlan("e", (empty,), (1.0,), (1,))
  with pytest.raises(ValueError, match="polylm_en_emptytest.*yielded no examples"):
    stream.PackedStream([plan], seq_len=8, batch_size=2).next()
  s = _stream(names)
  s.next()
  with pytest.raises(ValueError, match="seq_len: saved 16, now 32"):
    _stream(names, seq_len=32).restore(s.state())
  with pytest.raises(ValueError, match="num_shards"):
    _stream(names, num_shards=2).restore(s.state())


# -- the fast read path: the same batches as the seqio read path -------------------------

RECIPES = {
  "curriculum_seg": dict(
    name="polylm_pretrain_curriculum",
    seq_len=64,
    batch_size=4,
    seed=3,
    train_steps=30,
    segment_aware=True,
  ),
  "stage1_shard1of2": dict(
    name="polylm_pretrain_stage1",
    seq_len=128,
    batch_size=2,
    seed=0,
    shard_index=1,
    num_shards=2,
  ),
  "stage2_shard3of8": dict(
    name="polylm_pretrain_stage2", seq_len=32, batch_size=2, seed=5, shard_index=3, num_shards=8
  ),
}
# crc32 of the first batches, made with the base commit 420f6b0 (seqio read path):
BASE_CRC32 = {
  'curriculum_seg': [
    3107753061,
    4040848263,
    734721903,
    1700776895,
    502647931,
    3286499836,
    3932330056,
    62190239,
    1151953501,
    2205221513,
    316180731,
    2640819532,
    3058384146,
    1433392010,
    1238415825,
    1090581920,
    3167442357,
    1976770924,
    2822694277,
    1660835092,
    3640558034,
    2167296930,
    3269311835,
    3664353023,
    1642413272,
    2342212626,
    2743647593,
    1219383318,
    514562176,
    547303820,
  ],
  'stage1_shard1of2': [
    324300862,
    2990043719,
    3090136827,
    120224256,
    2616276283,
    4255327729,
    3193461976,
    3447840981,
    544258871,
    2342217651,
    1173898525,
    3423737978,
    3904733603,
    2590083530,
    43195015,
    1023959225,
    2165726850,
    2080905147,
    3373670530,
    3951664987,
    85182539,
    201639715,
    3288284089,
    523825951,
    3484457962,
    3616536228,
    1390542981,
    2896001284,
    508255248,
    3744934012,
    680430920,
    2833911446,
    444216208,
    391196810,
    1651355279,
    11937446,
    2065691391,
    975920948,
    1756922078,
    2805100635,
  ],
  'stage2_shard3of8': [
    3762542686,
    4246591315,
    3827642130,
    2743457657,
    481682028,
    321962797,
    4070226686,
    1699417447,
    3480820579,
    368714648,
    4030596890,
    2099764714,
    1547187846,
    821376007,
    4059227959,
    606940005,
    4045465258,
    2002335890,
    793534895,
    2743333128,
    1613626759,
    2004486168,
    2342111460,
    3494881734,
    1329450064,
    1018259554,
    1781189707,
    2209492950,
    2454606927,
    962993169,
    3094624692,
    979240304,
    1613256517,
    566671276,
    1811860980,
    1802824851,
    2861336969,
    2733927065,
    2157221377,
    1795404,
  ],
  'eval_zh_en_ar': [972955883, 3178333675, 4152086034, 316591493, 1621556883],
}


def _crc(batch):
  import zlib

  c = 0
  for k in sorted(batch):
    c = zlib.crc32(np.ascontiguousarray(batch[k]).tobytes(), c)
  return c


def _fresh_caches():
  from polylm_jax import readers, text_units

  readers.UNIT_CACHE.clear()
  text_units.FILE_TOKENS.clear()


@pytest.mark.parametrize("eager", [True, False], ids=["whole_files", "chunks"])
def test_fast_read_batches_equal_the_base_commits(eager, monkeypatch):
  """The sample corpus on the fast path (whole files, or 5-record chunks) gives the batches
  of the base commit's seqio path, bit for bit: three recipes and an eval stream."""
  import tasks  # noqa: F401
  from polylm_jax import text_units

  _fresh_caches()
  if not eager:
    monkeypatch.setattr(text_units, "EAGER_BYTES", 0)
    monkeypatch.setattr(text_units, "CHUNK_RECORDS", 5)
  for key, recipe in RECIPES.items():
    recipe = dict(recipe)
    s = stream.build_stream(recipe.pop("name"), **recipe)
    assert all(r.plan is not None for r in s._readers.values())
    assert [_crc(s.next()) for _ in BASE_CRC32[key]] == BASE_CRC32[key], key
  ev = stream.eval_tasks("polylm_pretrain_stage1")
  ts = [t for lang in ("zh", "en", "ar") for t in ev[lang]]
  got = [_crc(b) for b in stream.eval_batches(ts, 64, 4, shard_index=1, num_shards=2)]
  assert got == BASE_CRC32["eval_zh_en_ar"]
  assert eager == bool(text_units.FILE_TOKENS._entries)  # chunks: no file tokenized whole


@pytest.mark.parametrize("eager", [True, False], ids=["whole_files", "chunks"])
def test_fast_read_resume_is_exact(eager, monkeypatch):
  import tasks  # noqa: F401
  from polylm_jax import text_units

  if not eager:
    monkeypatch.setattr(text_units, "EAGER_BYTES", 0)
    monkeypatch.setattr(text_units, "CHUNK_RECORDS", 7)
  recipe = dict(RECIPES["stage2_shard3of8"])
  name = recipe.pop("name")
  _fresh_caches()
  s = stream.build_stream(name, **recipe)
  states, crcs = {}, []
  for step in range(40):
    if step in (9, 31):
      states[step] = json.loads(json.dumps(s.state()))
    crcs.append(_crc(s.next()))
  for step, state in states.items():
    _fresh_caches()  # as in a new process
    resumed = stream.build_stream(name, **recipe)
    resumed.restore(state)
    assert [_crc(resumed.next()) for _ in range(40 - step)] == crcs[step:], step


def test_fast_read_workers_give_the_same_batches(monkeypatch):
  """Chunks tokenized ahead (split over `workers` SentencePiece threads): the same batches, and
  the ahead pool's threads are the only Python threads they add."""
  import threading

  import tasks  # noqa: F401
  from polylm_jax import text_units

  monkeypatch.setattr(text_units, "EAGER_BYTES", 0)
  monkeypatch.setattr(text_units, "CHUNK_RECORDS", 6)
  stages, bounds = stream.resolve("polylm_pretrain_stage1")
  got = {}
  for workers in (1, 3):
    _fresh_caches()
    s = stream.PackedStream(stages, bounds, seq_len=64, batch_size=2, workers=workers, name="w")
    got[workers] = [_crc(s.next()) for _ in range(30)]
  assert got[1] == got[3]
  pool = [t for t in threading.enumerate() if t.name.startswith("polylm-tokenize")]
  assert 1 <= len(pool) <= text_units.AHEAD_THREADS


def test_encode_is_each_records_ids_then_eos():
  """One SentencePiece call for all records (numpy buffers): each record's own ids and eos."""
  from polylm_jax import text_units
  from polylm_jax import vocab as vocab_lib

  vocab = vocab_lib.get_vocabulary()
  texts = ["Hello world".encode(), b"", "数据 pipeline, 2 threads".encode(), b"x" * 300] * 9
  vals, splits = text_units.encode(vocab.tokenizer, texts, 2, workers=2)  # on 2 threads
  want = [vocab.tokenizer.encode(t.decode()) + [2] for t in texts]
  assert splits.tolist() == np.cumsum([0] + [len(w) for w in want]).tolist()
  assert vals.dtype == np.int32 and vals.tolist() == sum(want, [])
  empty_vals, empty_splits = text_units.encode(vocab.tokenizer, [], 2)
  assert len(empty_vals) == 0 and empty_splits.tolist() == [0]


def test_workers_tokenize_one_chunk_ahead(monkeypatch):
  """workers > 1: a unit of which k chunks are read has tokenized at most k + 1 (a unit read
  only briefly wastes one chunk), and its chunks are those of workers=1."""
  import tasks  # noqa: F401
  from polylm_jax import readers, text_units

  monkeypatch.setattr(text_units, "EAGER_BYTES", 0)
  encoded = []
  real = text_units.encode

  def counting(sp, texts, eos, workers=1):
    encoded.append(len(texts))
    return real(sp, texts, eos, workers)

  monkeypatch.setattr(text_units, "encode", counting)
  task = readers.get_task("polylm_en_sample", "train")
  vocab = task.output_features["targets"].vocabulary
  plan = text_units.plan_for(task, "train")
  got = {}
  for workers in (1, 2):
    _fresh_caches()
    unit = text_units.TextUnit(plan, None, vocab, workers=workers, chunk=64)
    chunks = unit.chunks(3)
    got[workers] = [next(chunks) for _ in range(3)]  # 2 + 4 + 8 records (64 // 32, doubling)
    text_units._ahead_pool().submit(lambda: None).result()  # all submitted before have started
    if workers == 1:
      assert encoded == [2, 4, 8]
    else:
      assert encoded[:3] == [2, 4, 8] and sum(encoded[3:]) <= 16
    encoded.clear()
  for (v1, s1), (v2, s2) in zip(got[1], got[2]):
    assert np.array_equal(v1, v2) and np.array_equal(s1, s2)
