"""Tokenize worker processes: the same tokens and batches, shut down when unused, errors named."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from polylm_jax import readers, stream, text_units, tokenize_workers
from polylm_jax import vocab as vocab_lib


@pytest.fixture
def fresh(monkeypatch):
  monkeypatch.setattr(tokenize_workers, "IDLE_SECONDS", 0.05)
  tokenize_workers.shutdown()
  readers.UNIT_CACHE.clear()
  text_units.FILE_TOKENS.clear()
  yield
  tokenize_workers.shutdown()


def _alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie has exited)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except (FileNotFoundError, ProcessLookupError, IndexError):
    return False


def _wait_gone(pids, seconds=5.0) -> bool:
  end = time.monotonic() + seconds
  while any(_alive(p) for p in pids) and time.monotonic() < end:
    time.sleep(0.02)
  return not any(_alive(p) for p in pids)


def _ready_pool(vocab, workers=2):
  lease = tokenize_workers.acquire(vocab.sp_model, vocab.eos_id, workers)
  end = time.monotonic() + 30
  while not lease.pool.ready():
    assert time.monotonic() < end, "workers did not start"
    time.sleep(0.01)
  return lease


def test_pool_gives_what_encode_gives(fresh):
  """Records split over the processes by bytes, joined back: each record's ids, then eos."""
  vocab = vocab_lib.get_vocabulary()
  texts = ["Hello world".encode(), b"", "数据 pipeline, 2 processes".encode(), b"x" * 300] * 40
  lease = _ready_pool(vocab)
  want = tokenize_workers.encode(vocab.tokenizer, texts, vocab.eos_id)
  for k in (0, 1, 5, 17, 33, len(texts)):
    got = text_units.encode(lease.pool, texts[:k], vocab.eos_id)
    ref = tokenize_workers.encode(vocab.tokenizer, texts[:k], vocab.eos_id)
    assert got[0].dtype == np.int32 and np.array_equal(got[0], ref[0]), k
    assert np.array_equal(got[1], ref[1]), k
  assert np.array_equal(text_units.encode(lease.pool, texts, 0)[0], want[0])
  lease.release()


def _big_unit(workers, chunk=64):
  import tasks  # noqa: F401

  task = readers.get_task("polylm_en_sample", "train")
  vocab = task.output_features["targets"].vocabulary
  return text_units.TextUnit(text_units.plan_for(task, "train"), None, vocab, workers, chunk)


def test_unit_chunks_match_and_workers_stop_when_the_unit_is_dropped(fresh, monkeypatch):
  """workers=2: the chunks of workers=1, from processes that end once no unit reads."""
  monkeypatch.setattr(text_units, "EAGER_BYTES", 0)
  want = list(_big_unit(1).chunks(5))
  assert not tokenize_workers.pools()  # workers=1 starts no process
  unit = _big_unit(2)
  chunks = unit.chunks(5)
  got = [next(chunks)]
  (pool,) = tokenize_workers.pools()
  while not pool.ready():
    time.sleep(0.01)
  got += list(chunks)
  assert len(got) == len(want)
  for (v1, s1), (v2, s2) in zip(want, got):
    assert np.array_equal(v1, v2) and np.array_equal(s1, s2)
  pids = pool.pids()
  assert all(_alive(p) for p in pids)
  del chunks  # the unit's generator is done: its lease is released
  assert _wait_gone(pids) and not tokenize_workers.pools()


def test_stream_batches_with_workers_match_and_stop_on_delete(fresh, monkeypatch):
  """A packed stream: the same batches with workers=2 as with 1 (processes serving most
  chunks), and deleting the stream stops them."""
  import gc
  import zlib

  import tasks  # noqa: F401

  monkeypatch.setattr(text_units, "EAGER_BYTES", 0)
  monkeypatch.setattr(text_units, "CHUNK_RECORDS", 64)
  monkeypatch.setattr(readers.UNIT_CACHE, "max_tokens", 0)  # every unit tokenized again
  stages, bounds = stream.resolve("polylm_pretrain_stage1")

  def crcs(s, n):
    return [
      zlib.crc32(b"".join(np.ascontiguousarray(b[k]).tobytes() for k in sorted(b)))
      for b in (s.next() for _ in range(n))
    ]

  one = crcs(stream.PackedStream(stages, bounds, seq_len=64, batch_size=4, workers=1), 40)
  s = stream.PackedStream(stages, bounds, seq_len=64, batch_size=4, workers=2)
  first = crcs(s, 2)
  (pool,) = tokenize_workers.pools()
  while not pool.ready():
    time.sleep(0.01)
  assert first + crcs(s, 38) == one
  pids = pool.pids()
  del s
  gc.collect()
  assert _wait_gone(pids)


def test_a_dead_worker_is_an_error_naming_the_file(fresh, monkeypatch):
  """A worker killed mid-read: the next chunk raises TokenizeWorkerError naming the unit's file
  and the worker's exit, no hang; the next unit gets a fresh pool."""
  monkeypatch.setattr(text_units, "EAGER_BYTES", 0)
  unit = _big_unit(2, chunk=32)
  chunks = unit.chunks(0)
  next(chunks)
  (pool,) = tokenize_workers.pools()
  while not pool.ready():
    time.sleep(0.01)
  for pid in pool.pids():
    os.kill(pid, signal.SIGKILL)
  with pytest.raises(tokenize_workers.TokenizeWorkerError) as err:
    for _ in range(len(unit)):
      next(chunks)
  assert any(f"(of {f})" in str(err.value) for f in unit._files), err.value
  assert "exited with status -9" in str(err.value)
  assert not tokenize_workers.pools()
  fresh_chunks = _big_unit(2, chunk=32).chunks(0)
  assert len(next(fresh_chunks)[0])
  assert tokenize_workers.pools() and tokenize_workers.pools()[0] is not pool


def test_a_worker_that_cannot_start_or_encode_says_why(fresh, monkeypatch):
  """A bad model: the pool breaks at start and tokenize raises with the exit status; an
  exception while encoding is answered as an error and the worker serves on."""
  import io
  import struct

  lease = tokenize_workers.acquire(b"not a model", 2, 1)
  end = time.monotonic() + 30
  while not lease.pool.ready():
    assert time.monotonic() < end
    time.sleep(0.01)
  with pytest.raises(tokenize_workers.TokenizeWorkerError, match="while loading the Sentence"):
    lease.pool.tokenize([b"x"])
  lease.release()

  model = vocab_lib.get_vocabulary().sp_model
  texts = [b"ok", b"fails", b"ok again"]
  inp = struct.pack("<Qq", len(model), 2) + model
  for t in texts:
    inp += struct.pack("<QQ", 1, len(t)) + np.array([0, len(t)], np.int64).tobytes() + t
  real = tokenize_workers.encode

  def encode(sp, texts, eos):
    if texts == [b"fails"]:
      raise ValueError("no good")
    return real(sp, texts, eos)

  monkeypatch.setattr(tokenize_workers, "encode", encode)
  out = io.BytesIO()
  tokenize_workers.serve(io.BytesIO(inp), out)
  reply = out.getvalue()
  assert reply[:1] == b"R" and b"\1" + struct.pack("<Q", 19) + b"ValueError: no good" in reply
  assert reply.count(b"\0" + struct.pack("<Q", 2)) >= 1  # "ok" is one piece + eos


_CHILD = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("tw", sys.argv[1])
tw = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tw)
lease = tw.acquire(open(sys.argv[2], "rb").read(), 2, 2)
while not lease.pool.ready():
  time.sleep(0.01)
print(*lease.pool.pids(), flush=True)


class Reader:  # released during teardown, after atexit (as a reader's generator is)
  def __del__(self):
    lease.release()


reader = Reader()
if sys.argv[3] == "sigkill":
  time.sleep(60)
"""


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_workers_end_with_their_parent(how):
  """At interpreter exit (atexit) or when the parent is killed (end of input): no leaked worker.
  The parent here imports only the module file (no JAX), as a worker does."""
  vocab = vocab_lib.get_vocabulary()
  model = vocab.sentencepiece_model_file
  argv = [sys.executable, "-c", _CHILD, tokenize_workers.__file__, model, how]
  if how == "exit":
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr, done.stderr
    pids = [int(p) for p in done.stdout.split()]
  else:
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in child.stdout.readline().split()]
    child.send_signal(signal.SIGKILL)
    child.wait()
  assert len(pids) == 2
  assert _wait_gone(pids)
