"""polylm_jax/instruct_stream.py: loss on response tokens only, packed rows kept apart."""

import json

import numpy as np
import pytest

from polylm_jax import batch_stream, instruct_stream, mixing, readers
from polylm_jax import vocab as vocab_lib
from tasks import instructions

T, B = 48, 4


def _write(path, n, lang_word):
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      inp = None if i % 3 else f"texto {i} " * (i % 4)
      f.write(
        json.dumps(
          {
            "instruction": f"{lang_word} {i}?",
            "input": inp,
            "output": f"resposta {i} " * (1 + i % 5),
          },
          ensure_ascii=False,
        )
        + "\n"
      )
  return str(path)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
  d = tmp_path_factory.mktemp("instr")
  es = instructions.register_instruction_task(
    "es", _write(d / "es.jsonl", 30, "pregunta"), source_name="streamtest", holdout_every=5
  )
  pt = instructions.register_instruction_task(
    "pt", _write(d / "pt.jsonl", 12, "pergunta"), source_name="streamtest", holdout_every=5
  )
  mix = instructions.register_instruction_mixture("streamtest_mix", [es, pt])
  return es, pt, mix


def _segments(batch, r):
  """Per segment of row r: (inputs, targets, weights, positions)."""
  out = []
  seg = batch["segment_ids"][r]
  for s in range(1, seg.max() + 1):
    m = seg == s
    out.append(tuple(batch[k][r][m] for k in ("inputs", "targets", "loss_weights", "positions")))
  return out


def test_prompt_tokens_zero_weight_response_full_on_packed_rows(tasks):
  es, pt, mix = tasks
  stream = instruct_stream.build_instruction_stream(mix, T, B, seed=1)
  readers = {t: instruct_stream.ExampleReader(t, shuffle=False) for t in (es, pt)}
  known = {}
  for reader in readers.values():
    for i in range(len(reader)):
      toks, p = reader.get(0, i)
      known[tuple(toks[:-1].tolist())] = p
  vocab = vocab_lib.get_vocabulary()
  packed_rows = 0
  for _ in range(5):
    batch = stream.next()
    assert set(batch) == set(batch_stream.BATCH_FIELDS)
    for k in batch:
      assert batch[k].shape == (B, T)
    for r in range(B):
      segs = _segments(batch, r)
      packed_rows += len(segs) > 1
      for inputs, targets, w, pos in segs:
        np.testing.assert_array_equal(pos, np.arange(len(inputs)))  # positions reset
        np.testing.assert_array_equal(inputs[1:], targets[:-1])  # one example, shifted
        p = known[tuple(inputs.tolist())]  # the whole example, uncut (all fit in T here)
        np.testing.assert_array_equal(w, (np.arange(1, len(inputs) + 1) >= p).astype(float))
        assert w[p - 2] == 0 and w[p - 1] == 1  # last prompt target 0, first response target 1
        assert targets[-1] == vocab_lib.EOS_ID and w[-1] == 1.0
        # the weighted targets decode to the response, the unweighted ones to the prompt
        prompt_text = vocab.decode(inputs[:p].tolist())
        assert prompt_text.endswith("\n\n") and "\n\n" not in vocab.decode(
          targets[w == 1][:-1].tolist()
        )
      pad = batch["segment_ids"][r] == 0
      assert (batch["loss_weights"][r][pad] == 0).all() and (batch["langs"][r][pad] == -1).all()
  assert packed_rows > 0
  langs = set(np.unique(batch["langs"])) - {-1}
  assert langs <= {mixing.language_index("es"), mixing.language_index("pt")}


def test_mixture_rates_and_resume(tasks):
  es, pt, mix = tasks
  assert instruct_stream.resolve(mix) == ([es, pt], [24.0, 10.0])
  a = instruct_stream.build_instruction_stream(mix, T, B, seed=3)
  for _ in range(3):
    a.next()
  state = json.loads(json.dumps(a.state()))
  want = [a.next() for _ in range(4)]
  b = instruct_stream.build_instruction_stream(mix, T, B, seed=3)
  b.restore(state)
  for w in want:
    got = b.next()
    for k in w:
      np.testing.assert_array_equal(got[k], w[k])
  # every training example is seen once per epoch, in a new order each epoch
  n_es = len(a.readers[0])
  assert n_es == 24 and a.stats["examples"] > n_es
  other = instruct_stream.build_instruction_stream(mix, T, B, seed=4)
  with pytest.raises(ValueError, match="seed: saved 3, now 4"):
    other.restore(state)


def test_epoch_covers_every_example_once(tasks):
  es, _, _ = tasks
  stream = instruct_stream.build_instruction_stream(es, 400, 1, pack=True)
  reader = stream.readers[0]
  seen = []
  while stream.positions[0][0] == 0:
    batch = stream.next()
    for inputs, *_ in _segments(batch, 0):
      seen.append(tuple(inputs.tolist()))
  # the batch that crossed the epoch may hold next-epoch examples; epoch 0's are all there once
  epoch0 = {tuple(reader.get(0, i)[0][:-1].tolist()) for i in range(len(reader))}
  assert epoch0 <= set(seen) and len(seen) - len(set(seen)) <= len(seen) - len(epoch0)


def test_truncation_drop_and_no_packing(tasks):
  toks = np.arange(3, 23, dtype=np.int32)  # 20 tokens
  x, y, w, cut = instruct_stream.example_slots(toks, 5, seq_len=10)
  assert cut and len(x) == 10 and w.sum() == 10 - 4
  assert instruct_stream.example_slots(toks, 11, seq_len=10) is None  # prompt fills the row
  assert instruct_stream.example_slots(toks, 10, seq_len=10) is not None
  es, _, _ = tasks
  short = instruct_stream.build_instruction_stream(es, 12, 2)
  batch = short.next()
  assert short.stats["dropped_overlong"] + short.stats["truncated"] > 0
  assert batch["loss_weights"].sum() > 0
  single = instruct_stream.build_instruction_stream(es, T, B, pack=False).next()
  assert (single["segment_ids"].max(axis=1) == 1).all()


def test_eval_batches_cover_validation_once(tasks):
  es, pt, mix = tasks
  assert instruct_stream.eval_tasks(mix) == {"es": (es,), "pt": (pt,)}
  batches = list(instruct_stream.eval_batches([es, pt], T, 2))
  n = sum(int(b["segment_ids"].max(axis=1).sum()) for b in batches)
  assert n == 6 + 2
  assert len(list(instruct_stream.eval_batches([es, pt], T, 2, num_batches=5))) == 5
  assert instruct_stream.is_instruction_data(mix) and instruct_stream.is_instruction_data(es)
  assert not instruct_stream.is_instruction_data("polylm_es_sample")


def test_bad_names_and_args(tasks):
  with pytest.raises(ValueError, match="no registered seqio task or mixture"):
    instruct_stream.build_instruction_stream("nope", T, B)
  with pytest.raises(ValueError, match="no output feature"):
    instruct_stream.build_instruction_stream("polylm_es_sample", T, B)
  with pytest.raises(ValueError, match="seq_len must be a positive int"):
    instruct_stream.build_instruction_stream(tasks[0], 0, B)


def test_tiny_data_evaluates_and_a_task_without_validation_is_skipped(tmp_path, caplog):
  ten = instructions.register_instruction_task(
    "ko", _write(tmp_path / "ko.jsonl", 10, "질문"), source_name="tiny"
  )
  one = instructions.register_instruction_task(
    "th", _write(tmp_path / "th.jsonl", 1, "คำถาม"), source_name="tiny"
  )
  mix = instructions.register_instruction_mixture("tiny_mix", [ten, one])
  with caplog.at_level("WARNING"):
    assert instruct_stream.eval_tasks(mix) == {"ko": (ten,)}
  assert f"no eval on {one}: its 'validation' split is empty" in caplog.text
  (batch,) = instruct_stream.eval_batches([ten], T, 2)
  assert batch["segment_ids"].max() == 1  # the one held-out record
  assert instruct_stream.build_instruction_stream(mix, T, B).next()["loss_weights"].sum() > 0


def test_bad_utf8_in_instruction_data_is_one_line(tmp_path):
  path = tmp_path / "vi.jsonl"
  path.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff", "output": "b"}\n')
  name = instructions.register_instruction_task("vi", str(path), source_name="badutf8")
  with pytest.raises(readers.DataError) as e:
    len(instruct_stream.ExampleReader(name))
  assert str(e.value) == f"task {name!r} split 'train': {path} line 2: not valid UTF-8 " + (
    "(byte 0xff at column 18: invalid start byte)"
  )
