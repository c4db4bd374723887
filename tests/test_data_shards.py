"""Data shards: the global batch and its position do not depend on the process count."""

import jax
import numpy as np
import pytest
import seqio
from jax.sharding import NamedSharding, PartitionSpec as P

from polylm_jax import data_shards, stream
from stream_fixtures import make_docs, register_int_task

T = 16
B = 8


@pytest.fixture(scope="module")
def task():
  docs = {"train": make_docs(1000, 80), "validation": make_docs(5000, 9, max_len=30)}
  name = register_int_task("data_shards_test", docs)
  yield name
  seqio.TaskRegistry.remove(name)


def _sharded(task, total, first, count, **kw):
  lay = data_shards.layout(total, B, first * B // total, (first + count) * B // total)
  return data_shards.build(stream, task, T, lay, seed=3, **kw)


def _take(s, n):
  return [s.next() for _ in range(n)]


def _cat(*parts):
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_the_global_batch_is_the_same_whichever_process_makes_which_shard(task):
  whole = _take(_sharded(task, 4, 0, 4), 5)
  halves = [_take(_sharded(task, 4, 0, 2), 5), _take(_sharded(task, 4, 2, 2), 5)]
  quarters = [_take(_sharded(task, 4, v, 1), 5) for v in range(4)]
  for i in range(5):
    for parts in (halves, quarters):
      got = _cat(*(p[i] for p in parts))
      for k in whole[i]:
        np.testing.assert_array_equal(got[k], whole[i][k])


def test_one_shard_is_the_plain_stream(task):
  plain = stream.build_stream(task, T, B, seed=3)
  sharded = _sharded(task, 1, 0, 1)
  for _ in range(3):
    a, b = plain.next(), sharded.next()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # a state saved before data shards existed restores on one shard
  fresh = _sharded(task, 1, 0, 1)
  fresh.restore(plain.state())
  np.testing.assert_array_equal(fresh.next()["inputs"], plain.next()["inputs"])


def test_elastic_resume_two_processes_to_one_and_back(task):
  ref = _sharded(task, 2, 0, 2)
  expected = _take(ref, 7)
  # two "processes" run 3 steps; their states merge as the checkpointer merges them
  procs = [_sharded(task, 2, v, 1) for v in range(2)]
  for p in procs:
    _take(p, 3)
  merged = data_shards.merge_states([p.state() for p in procs], processes=2)
  assert merged["processes"] == 2 and sorted(merged["shards"]) == ["0", "1"]
  one = _sharded(task, 2, 0, 2)
  one.restore(merged)  # resumed on one process
  for i in range(3, 5):
    got = one.next()
    np.testing.assert_array_equal(got["inputs"], expected[i]["inputs"])
  # ...and back on two processes
  merged = data_shards.merge_states([one.state()], processes=1)
  again = [_sharded(task, 2, v, 1) for v in range(2)]
  for p in again:
    p.restore(merged)
  got = _cat(*(p.next() for p in again))
  np.testing.assert_array_equal(got["inputs"], expected[5]["inputs"])


def test_a_state_of_another_shard_count_fails_naming_both(task):
  s = _sharded(task, 2, 0, 2)
  s.next()
  state = data_shards.merge_states([s.state()], processes=1)
  with pytest.raises(data_shards.TopologyError, match="2 data shards .*written by 1 processes.*4"):
    _sharded(task, 4, 0, 4).restore(state)
  with pytest.raises(data_shards.TopologyError, match="no data shards"):
    _sharded(task, 2, 0, 2).restore(stream.build_stream(task, T, B).state())


def test_resolve_count():
  assert data_shards.resolve_count(None, None, 2) == 2
  assert data_shards.resolve_count(None, 4, 2) == 4  # the checkpoint's count
  assert data_shards.resolve_count(8, None, 1) == 8
  with pytest.raises(data_shards.TopologyError, match="3 processes but its data has 2 data"):
    data_shards.resolve_count(None, 2, 3, "ckpt/5")
  with pytest.raises(data_shards.TopologyError, match="data_shards=4 but the checkpoint"):
    data_shards.resolve_count(4, 2, 1, "ckpt/5")


def test_layout_checks():
  assert list(data_shards.layout(4, 8, 4, 8).shards) == [2, 3]
  with pytest.raises(
    data_shards.TopologyError, match=r"not a multiple of the data shards \(3; DataSpec.data_shards"
  ):
    data_shards.layout(3, 8, 0, 8)
  with pytest.raises(data_shards.TopologyError, match="do not fall on data shard boundaries"):
    data_shards.layout(2, 8, 0, 2)
  with pytest.raises(data_shards.TopologyError, match="not one contiguous block"):
    data_shards.process_rows([slice(0, 2), slice(4, 6)], 8)


def test_row_layout_from_the_batch_sharding():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  sharding = NamedSharding(mesh, P("data", None))
  lay = data_shards.row_layout(4, 8, sharding, jax.process_index())
  assert (lay.first, lay.count, lay.rows_per_shard) == (0, 4, 2)


def test_eval_batches_pad_the_shorter_shards(task):
  lay = data_shards.layout(2, 4, 0, 4)
  shard_batches = lambda tasks, **kw: stream.eval_batches(tasks, T, **kw)  # noqa: E731
  per_shard = [
    list(stream.eval_batches([task], T, 2, shard_index=v, num_shards=2, split="validation"))
    for v in range(2)
  ]
  n = max(len(p) for p in per_shard)
  assert len({len(p) for p in per_shard}) == 2, "the fixture should give uneven shards"
  agreed = []

  def agree(k):
    agreed.append(k)
    return k + 1  # another process has one more batch

  got = data_shards.eval_batches(
    lambda tasks, **kw: shard_batches(tasks, split="validation", **kw),
    [task],
    lay,
    T,
    None,
    agree,
  )
  assert agreed == [n] and len(got) == n + 1
  weights = sum(float(b["loss_weights"].sum()) for b in got)
  assert weights == sum(float(b["loss_weights"].sum()) for p in per_shard for b in p)
  assert float(got[-1]["loss_weights"].sum()) == 0.0 and (got[-1]["langs"] == -1).all()
