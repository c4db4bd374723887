"""Local-file sources: formats, globs and sharding, holdout splits, and the bad-input errors
(missing/empty file, malformed JSONL in fail and skip modes, misaligned parallel files, a
task that yields nothing)."""

import json

import pytest
import seqio
import tensorflow as tf

from tasks import sources


def _texts(ds, key="text"):
  return [ex[key].decode() for ex in ds.as_numpy_iterator()]


def _write(path, text):
  path.write_text(text, encoding="utf-8")
  return str(path)


def test_text_lines_skip_blanks_and_keep_unicode(tmp_path):
  _write(tmp_path / "a.txt", "first doc\n\nsecond — doc 二\n   \nthird\n")
  src = sources.LocalFileSource({"train": str(tmp_path / "*.txt")}, name="t")
  assert _texts(src.get_dataset("train", shuffle=False)) == [
    "first doc",
    "second — doc 二",
    "third",
  ]


def test_jsonl_tsv_and_tfrecord_formats(tmp_path):
  _write(
    tmp_path / "a.jsonl",
    json.dumps({"text": "héllo", "id": 1}) + "\n" + json.dumps({"text": "world"}) + "\n",
  )
  src = sources.LocalFileSource(
    {"train": str(tmp_path / "a.jsonl")}, fmt="jsonl", fields={"text": "text"}
  )
  assert _texts(src.get_dataset("train", shuffle=False)) == ["héllo", "world"]

  _write(tmp_path / "a.tsv", "Guten Tag\tGood day\nDanke\tThanks\textra column\n")
  src = sources.LocalFileSource(
    {"train": str(tmp_path / "a.tsv")}, fmt="tsv", fields={0: "src", 1: "tgt"}
  )
  out = list(src.get_dataset("train", shuffle=False).as_numpy_iterator())
  assert [(e["src"].decode(), e["tgt"].decode()) for e in out] == [
    ("Guten Tag", "Good day"),
    ("Danke", "Thanks"),
  ]

  path = str(tmp_path / "a.tfrecord")
  with tf.io.TFRecordWriter(path) as w:
    for t in ("uno", "dos"):
      ex = tf.train.Example(
        features=tf.train.Features(
          feature={"content": tf.train.Feature(bytes_list=tf.train.BytesList(value=[t.encode()]))}
        )
      )
      w.write(ex.SerializeToString())
  src = sources.LocalFileSource({"train": path}, fmt="tfrecord", fields={"content": "text"})
  assert _texts(src.get_dataset("train", shuffle=False)) == ["uno", "dos"]


def test_sharded_files_split_across_hosts_exactly_once(tmp_path):
  expected = set()
  for i in range(4):
    lines = [f"file{i} line{j}" for j in range(5)]
    expected.update(lines)
    _write(tmp_path / f"part-{i:05d}.txt", "\n".join(lines) + "\n")
  src = sources.LocalFileSource(
    {"train": [str(tmp_path / "part-0000[01].txt"), str(tmp_path / "part-0000[23].txt")]}
  )
  assert len(src.list_shards("train")) == 4
  seen = []
  for host in range(2):
    ds = src.get_dataset(
      "train", shuffle=True, seed=7, shard_info=seqio.ShardInfo(index=host, num_shards=2)
    )
    seen += _texts(ds)
  assert sorted(seen) == sorted(expected)


def test_holdout_every_splits_deterministically(tmp_path):
  _write(tmp_path / "a.txt", "".join(f"line {i}\n\n" for i in range(25)))
  src = sources.LocalFileSource(
    {"train": str(tmp_path / "a.txt"), "validation": str(tmp_path / "a.txt")}, holdout_every=10
  )
  assert _texts(src.get_dataset("validation", shuffle=False)) == ["line 9", "line 19"]
  train = _texts(src.get_dataset("train", shuffle=False))
  assert len(train) == 23 and "line 9" not in train


def test_missing_pattern_names_pattern_and_source(tmp_path):
  src = sources.LocalFileSource({"train": str(tmp_path / "nope-*.txt")}, name="polylm_xx_news")
  with pytest.raises(FileNotFoundError) as e:
    src.get_dataset("train")
  assert "nope-*.txt" in str(e.value) and "polylm_xx_news" in str(e.value)


def test_empty_file_is_named(tmp_path):
  _write(tmp_path / "a.txt", "text\n")
  empty = _write(tmp_path / "b.txt", "")
  src = sources.LocalFileSource({"train": str(tmp_path / "*.txt")}, name="news")
  with pytest.raises(ValueError) as e:
    src.get_dataset("train")
  assert "file is empty" in str(e.value) and empty in str(e.value)


def _bad_jsonl(tmp_path):
  return _write(
    tmp_path / "bad.jsonl",
    "\n".join(
      [
        json.dumps({"text": "one"}),
        '{"text": "two"',  # line 2: truncated
        json.dumps({"text": "three"}),
        json.dumps({"other": "x"}),  # line 4: no "text"
        json.dumps(["not", "an object"]),  # line 5
        json.dumps({"text": 5}),  # line 6
        json.dumps({"text": "seven"}),
      ]
    )
    + "\n",
  )


def test_malformed_jsonl_fails_naming_file_and_line(tmp_path):
  path = _bad_jsonl(tmp_path)
  src = sources.LocalFileSource({"train": path}, fmt="jsonl", fields={"text": "text"})
  with pytest.raises(tf.errors.OpError) as e:
    list(src.get_dataset("train", shuffle=False).as_numpy_iterator())
  assert f"{path} line 2: invalid JSON" in str(e.value)


def test_malformed_jsonl_skip_and_count(tmp_path):
  path = _bad_jsonl(tmp_path)
  src = sources.LocalFileSource(
    {"train": path}, fmt="jsonl", fields={"text": "text"}, on_error="skip"
  )
  assert _texts(src.get_dataset("train", shuffle=False)) == ["one", "three", "seven"]
  assert src.skipped == {path: 4}


def test_malformed_tsv_line_is_named(tmp_path):
  path = _write(tmp_path / "p.tsv", "a\tb\nonly one column\n")
  src = sources.LocalFileSource({"train": path}, fmt="tsv", fields={0: "src", 1: "tgt"})
  with pytest.raises(tf.errors.OpError, match=f"{path} line 2: expected at least 2"):
    list(src.get_dataset("train", shuffle=False).as_numpy_iterator())


def test_bad_options_are_rejected():
  with pytest.raises(ValueError, match="on_error"):
    sources.LocalFileSource({"train": "x"}, fmt="jsonl", fields={"t": "text"}, on_error="ignore")
  with pytest.raises(ValueError, match="format"):
    sources.LocalFileSource({"train": "x"}, fmt="csv")
  with pytest.raises(ValueError, match="no such split"):
    sources.LocalFileSource({"train": "x"}).list_shards("test")


def test_aligned_text_source_pairs_lines_and_checks_lengths(tmp_path):
  de = _write(tmp_path / "de.txt", "Hallo\nDanke\n\nTschüss\n")
  en = _write(tmp_path / "en.txt", "Hello\nThanks\nPlease\nBye\n")
  src = sources.AlignedTextSource(de, en)
  out = [(e["src"].decode(), e["tgt"].decode()) for e in src.get_dataset().as_numpy_iterator()]
  assert out == [("Hallo", "Hello"), ("Danke", "Thanks"), ("Tschüss", "Bye")]
  short = _write(tmp_path / "short.txt", "Hello\n")
  with pytest.raises(ValueError) as e:
    sources.AlignedTextSource(de, short, name="polylm_bitext_de_en_x").get_dataset()
  msg = str(e.value)
  assert de in msg and short in msg and "4 lines" in msg and "1 lines" in msg
  bom = tmp_path / "bom.txt"
  bom.write_bytes("\ufeffHallo\nDanke\n".encode())
  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"Hello\nThanks \xed\xa0\x80\n")  # an encoded surrogate: not UTF-8
  two = _write(tmp_path / "two.txt", "Hello\nThanks\n")
  out = sources.AlignedTextSource(str(bom), two).get_dataset().as_numpy_iterator()
  assert [e["src"].decode() for e in out] == ["Hallo", "Danke"]
  with pytest.raises(tf.errors.OpError, match=f"{bad} line 2: not valid UTF-8"):
    list(sources.AlignedTextSource(str(bom), str(bad)).get_dataset().as_numpy_iterator())


def test_assert_nonempty_passes_data_and_names_the_task():
  ds = tf.data.Dataset.from_tensor_slices({"targets": [[1, 2], [3, 4]]})
  out = sources.assert_nonempty(ds, "polylm_xx_news")
  assert [list(e["targets"]) for e in out.as_numpy_iterator()] == [[1, 2], [3, 4]]
  empty = ds.filter(lambda ex: False)
  with pytest.raises(
    tf.errors.InvalidArgumentError, match="Task polylm_xx_news yielded no examples"
  ):
    list(sources.assert_nonempty(empty, "polylm_xx_news").as_numpy_iterator())


def test_bom_is_dropped_and_bad_text_names_file_and_line(tmp_path):
  bom = "\ufeff"
  text = tmp_path / "bom.txt"
  text.write_bytes(f"{bom}erste Zeile\nzweite\n".encode())
  jsonl = tmp_path / "bom.jsonl"
  jsonl.write_bytes(f'{bom}{{"text": "eins"}}\n{{"text": "zwei"}}\n'.encode())
  tsv = tmp_path / "bom.tsv"
  tsv.write_bytes(f"{bom}a\tb\n".encode())
  read = lambda path, fmt, fields=None: _texts(  # noqa: E731
    sources.LocalFileSource({"train": str(path)}, fmt=fmt, fields=fields).get_dataset(
      "train", shuffle=False
    )
  )
  assert read(text, "text") == ["erste Zeile", "zweite"]
  assert read(jsonl, "jsonl", {"text": "text"}) == ["eins", "zwei"]
  assert read(tsv, "tsv", {0: "text"}) == ["a"]

  bad_text = tmp_path / "bad.txt"
  bad_text.write_bytes(b"gut\n\nschlecht \xff\n")
  bad_jsonl = tmp_path / "bad.jsonl"
  bad_jsonl.write_bytes(b'{"text": "ok"}\n{"text": "\xc3("}\n')
  surrogate = tmp_path / "surrogate.jsonl"
  surrogate.write_text('{"text": "ok"}\n{"text": "a \\ud800 b"}\n', encoding="utf-8")
  for path, fmt, fields, want in [
    (bad_text, "text", None, f"{bad_text} line 3: not valid UTF-8"),
    (bad_jsonl, "jsonl", {"text": "text"}, f"{bad_jsonl} line 2: not valid UTF-8"),
    (surrogate, "jsonl", {"text": "text"}, f"{surrogate} line 2: field 'text' holds a lone"),
  ]:
    with pytest.raises(tf.errors.OpError) as e:
      read(path, fmt, fields)
    assert want in str(e.value)
  with pytest.raises(sources.MalformedLine, match=r"f line 1: field 'x' holds a lone surrogate"):
    sources.check_text("\udc80", "f line 1", "x")


# -- the fast path (tasks/text_plans.py): the same documents as the seqio pipeline -----------


def _awkward_files(d):
  """Text files with what TextLineDataset and the checks treat specially: CRLF and lone CR,
  a byte order mark, blank and whitespace-only lines, non-ASCII spaces (kept), no final
  newline, a file with no records, and record counts at and off the interleave block."""
  import numpy as np

  d.mkdir()
  (d / "f0.txt").write_bytes(
    "\ufeffa b\r\n\r\n  \t\nx\ry\n\u3000全角\u3000\n\x0bvt\x0c\nlast no newline".encode()
  )
  (d / "f1.txt").write_bytes(b"\n \n\r\n")
  rng = np.random.default_rng(0)
  words = ["Haus", "maison", "房子", "дом", "σπίτι", "بيت", " ", "\t", "\r"]
  for f, n in enumerate([4, 1, 7, 2, 9, 6], start=2):
    lines = ["".join(rng.choice(words, size=rng.integers(0, 4))) for _ in range(n)]
    (d / f"f{f}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(d / "*.txt")


def _docs(name, split, shard=(0, 1), fast=True, **kw):
  from polylm_jax import readers, text_units

  readers.UNIT_CACHE.clear()
  text_units.FILE_TOKENS.clear()
  r = readers.SourceReader(name, split, *shard, repeat=False, fast=fast, **kw)
  assert (r.plan is not None) == fast
  return [(tuple(item[0].tolist()), item[1]) for item in iter(r.next_doc, None)]


def test_fast_path_gives_seqio_documents_for_text_files(tmp_path, monkeypatch):
  from tasks import registry

  monkeypatch.setenv("POLYLM_JAX_UNIT_DISK_CACHE", "0")
  pattern = _awkward_files(tmp_path / "d")
  source = sources.LocalFileSource(
    {"train": pattern, "validation": pattern}, holdout_every=3, cycle_length=3, block_length=2
  )
  name = registry.register_mono_task("de", "fasttest", source)
  # one host; whole files (unit_bytes 1: a unit per file); examples (9 shards > 8 files)
  for split, shard, unit_bytes in [
    ("train", (0, 1), 1 << 30),
    ("train", (1, 3), 1),
    ("train", (2, 9), 1 << 30),
    ("validation", (0, 1), 1),
    ("validation", (1, 3), 1 << 30),
  ]:
    want = _docs(name, split, shard, fast=False, unit_bytes=unit_bytes)
    assert want and _docs(name, split, shard, unit_bytes=unit_bytes) == want, (split, shard)


def test_fast_path_gives_seqio_documents_for_aligned_bitext(tmp_path, monkeypatch):
  from tasks import registry

  monkeypatch.setenv("POLYLM_JAX_UNIT_DISK_CACHE", "0")
  de = tmp_path / "de.txt"
  de.write_bytes("\ufeffHallo\r\nDanke\n\n Bitte \nJa\nNein\nAuto\n\u3000Tschüss".encode())
  en = _write(tmp_path / "en.txt", "Hello\nThanks\nPlease\nPlease \n \nNo\nCar\nBye\n")
  source = sources.AlignedTextSource(str(de), en, holdout_every=4)
  templates = ["{src_text}\n{tgt_text}", "{src_name} -> {tgt_native}: {src_text} = {tgt_text}"]
  name = registry.register_bitext_task("de", "en", "fasttest", source, templates=templates)
  for split in ("train", "validation"):
    for shard in ((0, 1), (1, 2)):
      want = _docs(name, split, shard, fast=False)
      assert want and _docs(name, split, shard) == want, (split, shard)


def test_fast_path_gives_seqio_documents_for_jsonl_and_tsv(tmp_path, monkeypatch):
  """JSONL (blank texts, malformed lines skipped) and TSV bitext, several files, sharded."""
  from tasks import registry

  monkeypatch.setenv("POLYLM_JAX_UNIT_DISK_CACHE", "0")
  d = tmp_path / "j"
  d.mkdir()
  texts = ["Haus", "  ", "maison \r", "房子", "not json", "", "дом\tx", "σπίτι "]
  for f in range(3):
    lines = [json.dumps({"t": t}) if t != "not json" else t for t in texts[f:] + texts[:f]]
    (d / f"{f}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
  mono = registry.register_text_task(
    "de", "jsonfast", str(d / "*.jsonl"), fmt="jsonl", text_key="t", on_error="skip",
    holdout_every=3,
  )  # fmt: skip
  for i, pair in enumerate([("Hallo", "Hello"), ("", "x"), (" Ja ", "Yes"), ("Nein", " ")]):
    (d / f"{i}.tsv").write_text("\n".join("\t".join(pair) for _ in range(i + 2)) + "\n")
  templates = ["{src_text} = {tgt_text}", "{tgt_code}: {tgt_text} / {src_text}"]
  bitext = registry.register_bitext_files_task(
    "de", "en", "tsvfast", str(d / "*.tsv"), templates=templates
  )
  for name, split, shard in [
    (mono, "train", (0, 1)),
    (mono, "validation", (1, 2)),
    (mono, "train", (1, 5)),
    (bitext, "train", (0, 1)),
    (bitext, "train", (1, 6)),
  ]:
    want = _docs(name, split, shard, fast=False)
    assert want and _docs(name, split, shard) == want, (name, split, shard)


def test_fast_path_only_for_tasks_it_can_vouch_for(tmp_path):
  from polylm_jax import text_units
  from tasks import registry

  path = _write(tmp_path / "a.txt", "eins\nzwei\n")
  plain = registry.register_text_task("de", "plaintest", path)
  jsonl = _write(tmp_path / "a.jsonl", '{"t": "x"}\n')
  jsonl = registry.register_text_task("de", "jsonltest", jsonl, fmt="jsonl", text_key="t")
  for name in (plain, jsonl):
    assert text_units.plan_for(seqio.get_mixture_or_task(name), "train") is not None
  upper = lambda ds: ds.map(lambda ex: {"text": tf.strings.upper(ex["text"])})  # noqa: E731
  source = sources.LocalFileSource({"train": path})
  other = registry.register_mono_task("de", "pretest", source, [upper])
  assert text_units.plan_for(seqio.get_mixture_or_task(other), "train") is None


def test_files_read_in_parallel_or_one_after_another_give_one_order(tmp_path):
  pattern = _awkward_files(tmp_path / "d")
  orders = [
    _texts(
      sources.LocalFileSource(
        {"train": pattern}, cycle_length=3, block_length=2, parallel_files=parallel
      ).get_dataset("train", shuffle=False)
    )
    for parallel in (None, tf.data.AUTOTUNE)
  ]
  assert orders[0] and orders[0] == orders[1]
