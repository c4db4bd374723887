"""polylm_jax/batch_stream.py: both packers satisfy one interface and share its helpers."""

import inspect
import json

import numpy as np
import pytest

from polylm_jax import batch_stream, instruct_stream, stream
from stream_fixtures import make_docs, register_int_task
from tasks import instructions

MODULES = (stream, instruct_stream)
T, B = 32, 2


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):  # these tasks live in temp dirs: keep them out of the cache
  monkeypatch.setenv("POLYLM_JAX_UNIT_DISK_CACHE", "0")


@pytest.fixture(scope="module")
def names(tmp_path_factory):
  """One pre-training task and one instruction task, both with a validation split."""
  pretrain = register_int_task(
    "polylm_en_batchtest", {"train": make_docs(1000, 80), "validation": make_docs(5000, 9)}
  )
  path = tmp_path_factory.mktemp("batchtest") / "es.jsonl"
  with open(path, "w", encoding="utf-8") as f:
    for i in range(25):
      f.write(json.dumps({"instruction": f"pregunta {i}?", "output": f"sí {i} " * (1 + i % 4)}))
      f.write("\n")
  instruct = instructions.register_instruction_task(
    "es", str(path), source_name="batchtest", holdout_every=5
  )
  return {stream: pretrain, instruct_stream: instruct}


def _params(fn, drop_self=False):
  params = list(inspect.signature(fn).parameters.values())
  return params[1:] if drop_self else params


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_module_satisfies_the_data_protocol(module):
  assert isinstance(module, batch_stream.DataModule)
  for fn_name in ("build_stream", "eval_tasks", "eval_batches"):
    want = _params(getattr(batch_stream.DataModule, fn_name), drop_self=True)
    have = {p.name: p for p in _params(getattr(module, fn_name))}
    where = f"{module.__name__}.{fn_name}"
    for p in want:  # the same names, kinds and defaults as the protocol's
      assert p.name in have, f"{where} lacks {p.name}"
      assert (have[p.name].kind, have[p.name].default) == (p.kind, p.default), where
    assert [p.name for p in want] == list(have)[: len(want)], f"{where}: parameter order"
    extra = [p for n, p in have.items() if n not in {q.name for q in want}]
    for p in extra:  # additions are optional keywords, never **kwargs that swallow typos
      assert p.kind is p.KEYWORD_ONLY and p.default is not p.empty, f"{where}: {p}"


def test_a_module_missing_a_function_is_not_a_data_module():
  class Partial:
    build_stream = eval_tasks = staticmethod(lambda *a: None)

  assert not isinstance(Partial(), batch_stream.DataModule)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_trainer_calls_work_on_both_and_resume_exactly(names, module):
  name = names[module]
  assert instruct_stream.data_module(name) is module
  host_batch = B  # one of 2 data shards of a 2 * B batch
  kw = dict(seed=5, shard_index=0, num_shards=2, train_steps=10, segment_aware=False)
  s = module.build_stream(name, T, host_batch, **kw)  # what trainer._build_data passes
  assert isinstance(s, batch_stream.BatchStream)
  assert s.stage == 0 and s.boundaries == (0,) and s.stages[0].tasks == (name,)
  first = next(iter(s))
  assert set(first) == set(batch_stream.BATCH_FIELDS)
  assert all(first[k].shape == (B, T) for k in batch_stream.BATCH_FIELDS)
  saved = json.loads(json.dumps(s.state()))
  want = [s.next() for _ in range(3)]
  again = module.build_stream(name, T, host_batch, **kw)
  again.restore(saved)
  assert again.step == s.step - 3
  for a, b in zip(want, [again.next() for _ in range(3)]):
    for k in batch_stream.BATCH_FIELDS:
      np.testing.assert_array_equal(a[k], b[k])
  other = module.build_stream(name, T, host_batch, **{**kw, "seed": 6})
  with pytest.raises(ValueError, match="seed: saved 5, now 6"):
    other.restore(saved)
  with pytest.raises(TypeError, match="jitter_tokens"):
    module.build_stream(name, T, host_batch, jitter_tokens=1.0)


def test_a_state_of_the_other_packer_is_refused(names):
  pre = stream.build_stream(names[stream], T, B)
  ins = instruct_stream.build_stream(names[instruct_stream], T, B)
  with pytest.raises(
    ValueError, match="pre-training stream: the state has version 1, kind 'instruction'"
  ):
    pre.restore(ins.state())
  with pytest.raises(ValueError, match="instruction stream: the state has version 2, kind None"):
    ins.restore(pre.state())


def test_instruction_rows_reset_whatever_segment_aware_says(names):
  name = names[instruct_stream]
  plain = instruct_stream.build_stream(name, 4 * T, B).next()  # rows of several examples
  batch = instruct_stream.build_stream(name, 4 * T, B, segment_aware=True, train_steps=7).next()
  for k in batch_stream.BATCH_FIELDS:
    np.testing.assert_array_equal(batch[k], plain[k])
  starts = np.diff(batch["segment_ids"], axis=1, prepend=0) != 0
  assert (batch["positions"][starts] == 0).all() and batch["segment_ids"].max() > 1


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_eval_batches_cut_and_padded_the_same_way(names, module):
  evals = module.eval_tasks(names[module])
  (tasks,) = evals.values()
  kw = dict(shard_index=0, num_shards=1, segment_aware=True)  # the trainer's keywords
  full = list(module.eval_batches(tasks, T, B, **kw))
  assert full and full[-1]["loss_weights"].sum() > 0
  padded = list(module.eval_batches(tasks, T, B, **kw, num_batches=len(full) + 2))
  assert len(padded) == len(full) + 2
  for extra in padded[len(full) :]:
    assert set(extra) == set(batch_stream.BATCH_FIELDS)
    assert extra["loss_weights"].sum() == 0 and (extra["langs"] == -1).all()
  for a, b in zip(full, padded):
    np.testing.assert_array_equal(a["targets"], b["targets"])
  (cut,) = module.eval_batches(tasks, T, B, **kw, num_batches=1)
  np.testing.assert_array_equal(cut["inputs"], full[0]["inputs"])
  assert list(module.eval_batches(tasks, T, B, num_batches=0)) == []
  with pytest.raises(ValueError, match="num_batches must be None or an int >= 0, got -1"):
    module.eval_batches(tasks, T, B, num_batches=-1)
  with pytest.raises(ValueError, match="seq_len must be a positive int, got 0"):
    module.eval_batches(tasks, 0, B)  # at the call, before any data is read
  with pytest.raises(ValueError, match=r"shard_index must be in \[0, 2\), got 2"):
    module.eval_batches(tasks, T, B, shard_index=2, num_shards=2)


def test_shared_helpers():
  with pytest.raises(ValueError, match="batch_size must be a positive int, got True"):
    batch_stream.check_layout(8, True)
  assert batch_stream.check_rates("m", ["a", "b", "c"], [1, 0, 3]) == (["a", "c"], [1.0, 3.0])
  with pytest.raises(ValueError, match=r"^mixture 'x': rates must be >= 0 .*'b': nan"):
    batch_stream.check_rates("mixture 'x'", ["a", "b"], [1, float("nan")])
  config = {"seq_len": 8, "seed": 1}
  state = {"version": 3, "kind": "k", "config": {"seq_len": 8, "seed": 1}, "step": (4,)}
  assert batch_stream.checked_state(state, "s", 3, config, "k")["step"] == [4]  # JSON again
  with pytest.raises(ValueError, match="^s state does not match this stream: seq_len: saved 8, "):
    batch_stream.checked_state(state, "s", 3, {"seq_len": 16, "seed": 2}, "k")
  with pytest.raises(ValueError, match="seed: saved 1, now 2$"):
    batch_stream.checked_state(state, "s", 3, {"seq_len": 8, "seed": 2}, "k")
  with pytest.raises(
    ValueError, match="^s: the state has version 3, kind 'k'; expected version 3, kind None"
  ):
    batch_stream.checked_state(state, "s", 3, config)
  pads = batch_stream.exactly(iter([{"n": 1}, {"n": 2}]), 4, lambda: {"n": 0})
  assert [b["n"] for b in pads] == [1, 2, 0, 0]
  assert [b["n"] for b in batch_stream.exactly(iter([{"n": 1}, {"n": 2}]), 1, dict)] == [1]
