"""Source readers: units per host, empty units, the process and disk unit caches."""

import functools
import os

import numpy as np
import pytest
import seqio

from polylm_jax import readers
from stream_fixtures import EOS, FEATURES, _parse, make_docs, register_file_task


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("POLYLM_JAX_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("POLYLM_JAX_UNIT_DISK_CACHE", "1")
  readers.UNIT_CACHE.clear()
  yield tmp_path / "cache" / "units"
  readers.UNIT_CACHE.clear()


def _read_all(reader):
  out = []
  while (item := reader.next_doc()) is not None:
    out.append(tuple(item[0].tolist()))
  return out


def test_units_per_host(tmp_path):
  docs = make_docs(1000, 40)
  name = register_file_task("polylm_en_unittest", str(tmp_path), docs, num_files=4)
  task = seqio.get_mixture_or_task(name)
  assert readers._plan_units(task, "train", 1, 2, 1 << 30) == [seqio.ShardInfo(1, 2)]
  assert readers._plan_units(task, "train", 1, 2, 1) == [
    seqio.ShardInfo(1, 4),
    seqio.ShardInfo(3, 4),
  ]
  assert readers._plan_units(task, "train", 0, 1, 1) == [seqio.ShardInfo(i, 4) for i in range(4)]
  assert readers._plan_units(task, "train", 4, 5, 1) == [seqio.ShardInfo(4, 5)]
  # the unit order is re-drawn per epoch, the same in every process
  r = readers.SourceReader(name, unit_bytes=1)
  orders = {tuple(r._unit_order(e)) for e in range(8)}
  assert len(orders) > 1
  assert tuple(readers.SourceReader(name, unit_bytes=1)._unit_order(3)) == tuple(r._unit_order(3))


def test_disk_cache_hits_and_invalidates(tmp_path, cache_dir, monkeypatch):
  docs = make_docs(5000, 30)
  name = register_file_task("polylm_en_disktest", str(tmp_path / "d"), docs, num_files=1)
  first = _read_all(readers.SourceReader(name, repeat=False))
  assert first == [tuple(d + [EOS]) for d in docs]
  assert len(os.listdir(cache_dir)) == 1
  readers.UNIT_CACHE.clear()
  task = seqio.get_mixture_or_task(name)
  calls = []
  real = task.get_dataset
  monkeypatch.setattr(task, "get_dataset", lambda *a, **k: calls.append(1) or real(*a, **k))
  assert _read_all(readers.SourceReader(name, repeat=False)) == first
  assert not calls  # served from disk, no seqio pipeline
  # an edited input file is a new key: read afresh, and the new document shows up
  path = task.source.list_shards("train")[0]
  with open(path, "a") as f:
    f.write("4242 7 7\n")
  os.utime(path, ns=(1, 1))
  readers.UNIT_CACHE.clear()
  again = _read_all(readers.SourceReader(name, repeat=False))
  assert calls and again[-1] == (4242, 7, 7, EOS)
  monkeypatch.setenv("POLYLM_JAX_UNIT_DISK_CACHE", "0")
  assert readers.DISK_CACHE.key(task, "train", seqio.ShardInfo(0, 1)) is None


def test_empty_units_are_skipped_and_an_empty_task_is_an_error(tmp_path, cache_dir):
  from tasks.sources import assert_nonempty  # the check every PolyLM task ends with

  d = tmp_path / "e"
  d.mkdir()
  (d / "a.txt").write_text("1001 5 6\n1002 7\n")
  (d / "b.txt").write_text("")
  for name, files in (
    ("polylm_en_halfempty", ["a.txt", "b.txt"]),
    ("polylm_en_allempty", ["b.txt"]),
  ):
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
      name,
      source=seqio.TextLineDataSource({"train": [str(d / f) for f in files]}),
      preprocessors=[
        _parse,
        seqio.preprocessors.append_eos,
        functools.partial(assert_nonempty, task_name=name),
      ],
      output_features=FEATURES,
    )
  r = readers.SourceReader("polylm_en_halfempty", unit_bytes=1)
  assert len(r.units) == 2
  got = [tuple(r.next_doc()[0].tolist()) for _ in range(6)]
  assert sorted(set(got)) == [(1001, 5, 6, EOS), (1002, 7, EOS)]
  with pytest.raises(
    ValueError, match="'polylm_en_allempty' split 'train' yielded no examples for host shard 0 of 1"
  ):
    readers.SourceReader("polylm_en_allempty").next_doc()
  assert readers.SourceReader("polylm_en_allempty", repeat=False).next_doc() is None


def test_bad_task_names_and_splits():
  with pytest.raises(ValueError, match="task 'polylm_en_nothere' is not registered"):
    readers.SourceReader("polylm_en_nothere")
  with pytest.raises(ValueError, match="bad position"):
    r = readers.SourceReader.__new__(readers.SourceReader)
    r.name, r.units = "x", [seqio.ShardInfo(0, 1)]
    r.seek((0, 3, 0))


def test_tfds_task_streams_offline_with_mock_data(monkeypatch):
  """A TFDS-backed PolyLM task (mC4 zh) through the reader and the packer, mocked offline.

  Mocked TFDS has no split metadata, so the reader falls back to one unit and lets seqio
  read the split whole (one host); sharding a real TFDS split goes by its files.
  """
  import tensorflow_datasets as tfds

  import tasks  # noqa: F401  (registers polylm_zh_mc4)
  from polylm_jax import stream

  monkeypatch.setenv("POLYLM_JAX_UNIT_DISK_CACHE", "0")
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    r = readers.SourceReader("polylm_zh_mc4", "validation", repeat=False)
    docs = _read_all(r)
    assert len(docs) == 6 and all(d[-1] == EOS for d in docs)
    plan = stream.StagePlan("mc4", ("polylm_zh_mc4",), (1.0,), (0,))
    s = stream.PackedStream([plan], seq_len=16, batch_size=2, split="validation")
    flat = np.concatenate([s.next()["targets"].reshape(-1) for _ in range(3)])
    assert (flat == EOS).sum() >= 2


def test_bad_text_is_one_line_naming_task_file_and_line(tmp_path):
  from tasks import registry

  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"gut\nschlecht \xff\n")
  surrogate = tmp_path / "surrogate.jsonl"
  surrogate.write_text('{"text": "a \\ud800 b"}\n', encoding="utf-8")
  for path, fmt, want in [
    (bad, "text", f"{bad} line 2: not valid UTF-8"),
    (surrogate, "jsonl", f"{surrogate} line 1: field 'text' holds a lone surrogate"),
  ]:
    name = registry.register_text_task("de", f"readertest_{fmt}", str(path), fmt=fmt)
    with pytest.raises(readers.DataError) as e:
      _read_all(readers.SourceReader(name, repeat=False))
    assert str(e.value).startswith(f"task {name!r} split 'train': {want}")
    assert "\n" not in str(e.value)


def _threads():
  return len(os.listdir("/proc/self/task"))


def test_threads_per_open_source_are_bounded(monkeypatch):
  """A source read through seqio holds a handful of threads (was 40-60), one read on the
  fast path none. (A source with its own parallel interleave, e.g. seqio.TextLineDataSource or
  TFDS, adds a thread per file of its cycle: not the reader's to bound.)"""
  import tasks  # noqa: F401  (the sample tasks: LocalFileSource, fast path unless fast=False)

  monkeypatch.setenv("POLYLM_JAX_UNIT_DISK_CACHE", "0")
  readers.UNIT_CACHE.clear()
  langs = ["en", "fr", "es", "it"]
  open_readers = []
  for k, lang in enumerate(langs):
    r = readers.SourceReader(
      f"polylm_{lang}_sample", read_batch=2, threads_per_source=1, fast=False
    )
    assert r.next_doc() is not None and r._it is not None  # open, mid-unit
    open_readers.append(r)
    if k == 0:
      before = _threads()  # TensorFlow's process-wide pools start with the first
  assert (_threads() - before) / (len(langs) - 1) <= 8
  before = _threads()
  for lang in ("de", "zh", "ar"):
    r = readers.SourceReader(f"polylm_{lang}_sample")
    assert r.plan is not None and r.next_doc() is not None
  assert _threads() <= before


def test_shards_of_a_small_source_tokenize_its_files_once(monkeypatch):
  """Streams of one process (one per data shard) share the tokens of a small source."""
  import tasks  # noqa: F401
  from polylm_jax import text_units

  readers.UNIT_CACHE.clear()
  text_units.FILE_TOKENS.clear()
  calls = []
  real = text_units.encode
  monkeypatch.setattr(text_units, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))
  docs = set()
  for v in range(8):  # 8 shards of a 2-file source: seqio shards the examples
    r = readers.SourceReader("polylm_de_sample", shard_index=v, num_shards=8, repeat=False)
    docs |= {tuple(d.tolist()) for d, _ in iter(r.next_doc, None)}
  assert len(calls) == 2  # one SentencePiece call per file, for all 8 shards
  whole = readers.SourceReader("polylm_de_sample", repeat=False)
  assert docs == {tuple(d.tolist()) for d, _ in iter(whole.next_doc, None)}
