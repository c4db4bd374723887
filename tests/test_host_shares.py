"""host_shares: the work split of the eval and infer binaries, on 1 process and on 2 real
processes (localhost), where an error on one process is raised on both."""

import json
import sys

import pytest

from polylm_jax import host_shares


def test_one_process_computes_everything_in_one_call():
  calls = []

  def fn(xs):
    calls.append(list(xs))
    return [x * 10 for x in xs]

  assert host_shares.map_batches(fn, range(5), 2) == [0, 10, 20, 30, 40]
  assert calls == [[0, 1, 2, 3, 4]]
  assert [host_shares.owner(i, 2) for i in range(5)] == [0] * 5
  assert host_shares.is_writer()
  assert host_shares.agree(lambda: 3) == 3
  with pytest.raises(FileNotFoundError, match="x.jsonl"):  # the error as it is
    host_shares.agree(lambda: open("/nonexistent/x.jsonl"))


def _child() -> None:
  """Run on each of 2 processes: prints what host_shares gave it, as one JSON line."""
  import jax

  from polylm_jax import distributed

  distributed.maybe_initialize("on")
  me = jax.process_index()
  seen = []

  def tens(xs):
    seen.extend(xs)
    return [x * 10 for x in xs]

  def fails_on_1(xs):
    if me == 1:
      raise ValueError(f"bad item {xs[0]}")
    return xs

  result = {"values": host_shares.map_batches(tens, list(range(7)), 2), "seen": seen}
  for name, fn in (
    ("map_error", lambda: host_shares.map_batches(fails_on_1, list(range(7)), 2)),
    ("agree_error", lambda: host_shares.agree(lambda: fails_on_1([me]))),
  ):
    try:
      fn()
    except ValueError as e:
      result[name] = f"{type(e).__name__}: {e}"
  result["after"] = host_shares.agree(lambda: me)  # both still take part in exchanges
  print(json.dumps(result), flush=True)


def test_two_processes_share_batches_and_errors():
  from test_infer_multiprocess import finish, start  # not in the children: they need no model

  (rc0, out0, err0), (rc1, out1, err1) = finish(start(__file__, ["child"], 2, launcher=False))
  assert rc0 == 0 and rc1 == 0, (err0[-2000:], err1[-2000:])
  r0, r1 = (json.loads(out.strip().splitlines()[-1]) for out in (out0, out1))
  assert r0["values"] == r1["values"] == [0, 10, 20, 30, 40, 50, 60]
  assert r0["seen"] == [0, 1, 4, 5] and r1["seen"] == [2, 3, 6]  # whole batches of 2
  assert r0["map_error"] == "ProcessError: process 1 of 2 failed: bad item 2"
  assert r1["map_error"] == "ValueError: bad item 2"
  assert r0["agree_error"] == "ProcessError: process 1 of 2 failed: bad item 1"
  assert r1["agree_error"] == "ValueError: bad item 1"
  assert (r0["after"], r1["after"]) == (0, 1)


if __name__ == "__main__" and sys.argv[1:] == ["child"]:
  _child()
