"""How the eval and infer binaries split their work over the processes of a multi-process run.

Every process holds the whole model on its own devices (no collective inside a step, so a slow
host never stalls another's step), computes its share of the prompts or examples, and the
results meet in one `distributed.allgather_json`; process 0 alone writes files and prints.
An error on one process becomes an error on all, naming the process, at the next exchange:
no process is left waiting for one that stopped. With one process nothing is exchanged and
every function here returns what the plain computation would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax

from polylm_jax import distributed, gin_utils

T = TypeVar("T")


class ProcessError(ValueError):
  """Another process failed; the message names it (a ValueError: the binaries print it)."""


def is_writer() -> bool:
  """Whether this process writes the run's files and prints its summary (process 0)."""
  return jax.process_index() == 0


def _run(fn: Callable[[], T]) -> tuple[T | None, Exception | None]:
  try:
    return fn(), None
  except Exception as e:  # pylint: disable=broad-except  (re-raised after the exchange)
    return None, e


def _raise_first(error: Exception | None, messages: Sequence[str | None]) -> None:
  """This process's own error as it is, else the first other process's, by number."""
  if error is not None:
    raise error
  for k, message in enumerate(messages):
    if message is not None:
      raise ProcessError(f"process {k} of {len(messages)} failed: {message}")


def agree(fn: Callable[[], T]) -> T:
  """fn() on every process; when it raises on any process, it raises on all.

  A check only one host can fail (its input file, the output folder of process 0) then
  stops the whole run at once instead of leaving the others in a later exchange.
  """
  if jax.process_count() == 1:
    return fn()
  result, error = _run(fn)
  messages = distributed.allgather_json(None if error is None else gin_utils.one_line(error))
  _raise_first(error, messages)
  return result  # type: ignore[return-value]


def owner(index: int, batch_size: int) -> int:
  """The process that computes item `index`: whole batches, dealt round-robin (batch b goes
  to process b % process_count), so each batch is the one a 1-process run forms."""
  return (index // batch_size) % jax.process_count()


def map_batches(
  fn: Callable[[list[Any]], Sequence[Any]], items: Sequence[Any], batch_size: int
) -> list[Any]:
  """fn over `items` (one JSON value back per item), each process computing its batches.

  fn receives this process's items, in order, and batches them by `batch_size` itself: the
  items of each process are whole batches but the last, so its batches are a 1-process run's.
  Every process gets every result, in the order of `items`.
  """
  count = jax.process_count()
  if count == 1:
    return list(fn(list(items)))
  me = jax.process_index()
  mine = [x for i, x in enumerate(items) if owner(i, batch_size) == me]
  values, error = _run(lambda: [_plain(v) for v in fn(mine)] if mine else [])
  parts = distributed.allgather_json(
    {"error": gin_utils.one_line(error)} if error is not None else {"values": values}
  )
  _raise_first(error, [p.get("error") for p in parts])
  streams = [iter(p["values"]) for p in parts]
  return [next(streams[owner(i, batch_size)]) for i in range(len(items))]


def gather_shares(value: Any) -> list[Any]:
  """Every process's JSON `value` (its share of a result), in process order."""
  return distributed.allgather_json(_plain(value))


def _plain(value: Any) -> Any:
  """numpy scalars and arrays as JSON values (float32 round-trips exactly through a double)."""
  if hasattr(value, "tolist"):
    return value.tolist()
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  return value
