"""SentencePiece in worker processes: a chunk's records in, flat int32 ids + row splits out.

Threads that tokenize ahead share the reader's GIL: SentencePiece builds one numpy array per
record and the join concatenates them, all under the GIL the packing thread needs, so with
2 threads on 2 cores a third of the CPU sat idle. A worker process does that work on its own
GIL and hands back two flat arrays: per chunk the reader's side writes one blob of records and
reads two buffers (the pipe I/O releases the GIL).

Workers are plain subprocesses running this file (`python -P tokenize_workers.py`), not
multiprocessing: spawn and forkserver import the parent's `__main__` in the child (the train
binary: JAX), and fork would copy a process with JAX/TensorFlow threads. A worker imports
numpy and sentencepiece only, gets the model bytes once, and exits on end of input, so it dies
with its parent even on SIGKILL. A pool starts when a reader first needs it, lives while a unit
holds a lease (`acquire`), and closes `IDLE_SECONDS` after the last lease is released (a
reader or stream that is deleted releases its units) or at interpreter exit (`shutdown`).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import hashlib
import itertools
import os
import queue
import struct
import subprocess
import sys
import threading
from typing import Optional, Sequence

import numpy as np

MIN_RECORDS_PER_PIECE = 16  # a chunk splits over workers in pieces of at least this many
IDLE_SECONDS = 2.0  # a pool without leases closes after this long (a new unit may reuse it)
_READY = b"R"


class TokenizeWorkerError(RuntimeError):
  """A worker process died or failed; the message names the worker and what it tokenized."""


def encode(sp, texts: Sequence[bytes], eos: int, workers: int = 1) -> tuple[np.ndarray, ...]:
  """(values int32, row splits int64) of `texts` tokenized in one call, eos after each.

  SentencePiece returns each record's ids as a numpy buffer (no Python int per token) and
  holds no GIL while it encodes; the join is whole-array numpy. workers > 1: SentencePiece
  splits the records over that many threads of this call's own."""
  n = len(texts)
  splits = np.zeros(n + 1, np.int64)
  if not n:
    return np.zeros(0, np.int32), splits
  threads = max(1, min(workers, n // MIN_RECORDS_PER_PIECE))
  ids = sp.encode(list(texts), num_threads=threads, out_type="numpy")
  np.cumsum(np.fromiter(map(len, ids), np.int64, n) + 1, out=splits[1:])
  vals = np.full(int(splits[-1]), eos, np.int32)
  body = np.ones(len(vals), bool)
  body[splits[1:] - 1] = False
  vals[body] = np.concatenate(ids)
  return vals, splits


def _read_exact(f, n: int) -> bytes:
  data = f.read(n)
  if len(data) != n:
    raise EOFError
  return data


def _read_into(f, arr: np.ndarray) -> None:
  view, got = memoryview(arr).cast("B"), 0
  while got < len(view):
    k = f.readinto(view[got:])
    if not k:
      raise EOFError
    got += k


def serve(inp, out) -> None:
  """A worker's loop: the model (length-prefixed) and eos, then requests until end of input.

  Request: n records, blob bytes (2 x u64), n + 1 int64 offsets into the blob, the blob.
  Reply: b"\\0", n values (u64), values int32, splits int64; or b"\\1", length, utf-8 error."""
  import sentencepiece as spm

  size, eos = struct.unpack("<Qq", _read_exact(inp, 16))
  sp = spm.SentencePieceProcessor(model_proto=_read_exact(inp, size))
  out.write(_READY)
  out.flush()
  while True:
    head = inp.read(16)
    if not head:
      return
    n, size = struct.unpack("<QQ", head)
    offsets = np.frombuffer(_read_exact(inp, 8 * (n + 1)), np.int64).tolist()
    blob = _read_exact(inp, size)
    try:
      vals, splits = encode(sp, [blob[a:b] for a, b in zip(offsets, offsets[1:])], eos)
      out.write(b"\0" + struct.pack("<Q", len(vals)))
      out.write(vals.data)
      out.write(splits.data)
    except Exception as e:  # noqa: BLE001 - reported to the reader, the worker lives on
      msg = f"{type(e).__name__}: {e}".encode()
      out.write(b"\1" + struct.pack("<Q", len(msg)) + msg)
    out.flush()


class _Worker:
  def __init__(self, model: bytes, eos: int):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    self.proc = subprocess.Popen(
      [sys.executable, "-P", os.path.abspath(__file__)],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      env=env,
      close_fds=True,
    )
    self.proc.stdin.write(struct.pack("<Qq", len(model), eos))
    self.proc.stdin.write(model)
    self.proc.stdin.flush()

  def send(self, texts: Sequence[bytes]) -> None:
    offsets = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)), out=offsets[1:])
    f = self.proc.stdin
    f.write(struct.pack("<QQ", len(texts), int(offsets[-1])))
    f.write(offsets.data)
    f.write(b"".join(texts))
    f.flush()

  def receive(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    f = self.proc.stdout
    status, size = struct.unpack("<cQ", _read_exact(f, 9))
    if status != b"\0":
      raise TokenizeWorkerError(
        f"tokenize worker {self.proc.pid} failed: {_read_exact(f, size).decode(errors='replace')}"
      )
    vals, splits = np.empty(size, np.int32), np.empty(n + 1, np.int64)
    _read_into(f, vals)
    _read_into(f, splits)
    return vals, splits

  def died(self) -> str:
    """Why this worker stopped answering (its exit status, once it has exited)."""
    try:
      code = self.proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      code = self.proc.wait()
    return f"tokenize worker {self.proc.pid} exited with status {code}"

  def stop(self) -> None:
    try:
      self.proc.stdin.close()  # end of input: the worker returns
    except OSError:
      pass
    try:
      self.proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
    self.proc.stdout.close()


class Due:
  """A chunk for `pool`, wanted at `when` (time.monotonic()): `encode(Due(...), texts, ...)`
  queues its pieces behind those wanted earlier; `hurry()` moves the ones not yet started to
  the front (the reader waits for them now)."""

  def __init__(self, pool: "Pool", when: float):
    self.pool, self.when, self.items = pool, when, ()

  def tokenize(self, texts: Sequence[bytes]) -> tuple[np.ndarray, ...]:
    return self.pool.tokenize(texts, self)

  def hurry(self) -> None:
    pool = self.pool
    with _LOCK:
      for f, t in self.items:
        if not (f.running() or f.done()):
          pool._pieces.put((float("-inf"), next(pool._seq), f, t))


class Pool:
  """`workers` processes with one model, fed pieces of chunks from one queue.

  Each worker has a thread here that takes the next piece as soon as its worker is free, writes
  it and waits for the answer (pipe I/O, no GIL held), so a chunk cut into `workers` pieces
  keeps every process busy while there is work, whichever chunk it belongs to."""

  def __init__(self, model: bytes, eos: int, workers: int, key: tuple):
    self.workers, self.key = workers, key
    self._procs = [_Worker(model, eos) for _ in range(workers)]
    self._pieces: "queue.PriorityQueue" = queue.PriorityQueue()  # (due, seq, future, texts)
    self._seq = itertools.count()  # FIFO among equal due times; stop items come last
    self._claim = threading.Lock()
    self._started = 0
    self._broken: Optional[str] = None
    self._closed = False
    self._leases = 0
    self._timer: Optional[threading.Timer] = None
    self._threads = [
      threading.Thread(target=self._serve, args=(w,), name=f"polylm-spworker-{i}", daemon=True)
      for i, w in enumerate(self._procs)
    ]
    for t in self._threads:
      t.start()

  def _serve(self, w: _Worker) -> None:
    """One worker's thread: wait until it has loaded the model, then serve pieces."""
    try:
      if w.proc.stdout.read(1) != _READY:
        raise EOFError
    except (EOFError, OSError, ValueError):
      self._break(w.died() + " while loading the SentencePiece model")
      return
    with _LOCK:
      self._started += 1
    while True:
      _, _, future, texts = self._pieces.get()
      if future is None:
        w.stop()
        return
      with self._claim:  # a hurried piece is queued twice: the first taker runs it
        if future.running() or future.done() or not future.set_running_or_notify_cancel():
          continue
      try:
        w.send(texts)
        future.set_result(w.receive(len(texts)))
      except TokenizeWorkerError as e:  # the worker answered and lives on
        future.set_exception(e)
      except (EOFError, OSError, ValueError, struct.error):
        future.set_exception(TokenizeWorkerError(self._break(w.died())))
        return

  def ready(self) -> bool:
    """Whether to send chunks here: every worker has loaded the model (until then, or once
    the pool is shut down, readers tokenize in-process), or one died (`tokenize` raises)."""
    return (self._started == self.workers or self._broken is not None) and not self._closed

  def pids(self) -> list[int]:
    return [w.proc.pid for w in self._procs]

  def tokenize(self, texts: Sequence[bytes], due: Optional["Due"] = None) -> tuple[np.ndarray, ...]:
    """What `encode(sp, texts, eos)` gives, computed by the workers in pieces of about equal
    bytes (SentencePiece's time goes with the text's length); pieces of earlier `due` first."""
    n = len(texts)
    if not n:
      return np.zeros(0, np.int32), np.zeros(1, np.int64)
    k = max(1, min(self.workers, n // MIN_RECORDS_PER_PIECE))
    sizes = np.cumsum(np.fromiter(map(len, texts), np.int64, n))
    cuts = np.searchsorted(sizes, sizes[-1] * np.arange(1, k) / k)
    bounds = [0, *sorted({int(c) for c in cuts if 0 < c < n}), n]
    futures = [concurrent.futures.Future() for _ in bounds[1:]]
    when = due.when if due is not None else 0.0
    with _LOCK:
      if self._broken or self._closed:
        raise TokenizeWorkerError(self._broken or "the tokenize worker pool is closed")
      items = [(f, texts[a:b]) for f, a, b in zip(futures, bounds, bounds[1:])]
      for f, t in items:
        self._pieces.put((when, next(self._seq), f, t))
      if due is not None:
        due.items = items
    parts = [f.result() for f in futures]
    if len(parts) == 1:
      return parts[0]
    offsets = np.cumsum([0] + [len(v) for v, _ in parts])
    splits = np.concatenate(
      [parts[0][1]] + [s[1:] + o for (_, s), o in zip(parts[1:], offsets[1:])]
    )
    return np.concatenate([v for v, _ in parts]), splits

  def _break(self, why: str) -> str:
    """Mark the pool unusable: pieces queued or sent later fail, and its workers stop."""
    with _LOCK:
      self._broken = self._broken or why
      if _POOLS.get(self.key) is self:
        del _POOLS[self.key]
      while True:
        try:
          item = self._pieces.get_nowait()
        except queue.Empty:
          break
        f = item[2]
        if f is not None and not (f.running() or f.done()) and f.set_running_or_notify_cancel():
          f.set_exception(TokenizeWorkerError(self._broken))
      for _ in self._threads:  # the other workers' threads stop too
        self._pieces.put((float("inf"), next(self._seq), None, None))
    for w in self._procs:
      if w.proc.poll() is None:
        w.proc.kill()
        w.proc.wait()
    return why

  def close(self) -> None:
    """Stop the workers once the pieces queued are done (each thread stops its own)."""
    self._closed = True
    for _ in self._threads:
      self._pieces.put((float("inf"), next(self._seq), None, None))
    for t in self._threads:
      t.join(timeout=5.0)
    for w in self._procs:
      if w.proc.poll() is None:
        w.proc.kill()
        w.proc.wait()

  def _release(self) -> None:
    if self._closed or self._broken:  # also after shutdown() at exit, when globals may be gone
      return
    with _LOCK:
      self._leases -= 1
      if self._leases == 0 and not self._closed:
        self._timer = threading.Timer(IDLE_SECONDS, self._close_if_idle)
        self._timer.daemon = True
        self._timer.start()

  def _close_if_idle(self) -> None:
    with _LOCK:
      if self._leases or self._closed:
        return
      if _POOLS.get(self.key) is self:
        del _POOLS[self.key]
      self._closed = True
    self.close()


_POOLS: dict[tuple, Pool] = {}
_LOCK = threading.Lock()
_AT_EXIT: list = []


class Lease:
  """A unit's hold on the pool for its model and `workers`; `release` once (idempotent)."""

  def __init__(self, pool: Pool):
    self.pool: Optional[Pool] = pool

  def release(self) -> None:
    pool, self.pool = self.pool, None
    if pool is not None:
      pool._release()


def acquire(model: bytes, eos: int, workers: int) -> Lease:
  """A lease on the process's pool of `workers` processes for this model (started if none)."""
  key = (hashlib.sha1(model).hexdigest(), eos, workers)
  with _LOCK:
    pool = _POOLS.get(key)
    if pool is None:
      if not _AT_EXIT:
        _AT_EXIT.append(atexit.register(shutdown))
      pool = _POOLS[key] = Pool(model, eos, workers, key)
    pool._leases += 1
    if pool._timer is not None:
      pool._timer.cancel()
      pool._timer = None
  return Lease(pool)


def pools() -> list[Pool]:
  """The pools alive now (for tests and benchmarks)."""
  with _LOCK:
    return list(_POOLS.values())


def shutdown() -> None:
  """Stop every pool's workers now (at exit, or where a caller wants them gone)."""
  with _LOCK:
    live = list(_POOLS.values())
    _POOLS.clear()
    for pool in live:
      pool._closed = True
      if pool._timer is not None:
        pool._timer.cancel()
  for pool in live:
    pool.close()


if __name__ == "__main__":
  serve(sys.stdin.buffer, sys.stdout.buffer)
