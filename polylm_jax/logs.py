"""The binaries' console: what the user asked for, progress, and warnings that need action.

Every binary (train, infer, eval, chat, convert, self_instruct, tokenizer) calls `setup`
once its flags are parsed (`run` does it for absl binaries). By default it hides what
libraries print that needs no action: Python INFO logs (Orbax lists every step it reads),
Orbax's "Given directory is read only" (we open checkpoints read-only on purpose), seqio's
"T5 library uses PAD_ID=0" (PolyLM's id 0 is <unk>, see vocab.py), and the C++ lines that
TensorFlow, XLA and SentencePiece write straight to file descriptor 2 ("All log messages
before absl::InitializeLog()", oneDNN and cudart INFO lines, "failed call to cuInit" on
machines without a GPU, SentencePiece's "normalizer.cc LOG(INFO)" each time a tf.data
pipeline loads a tokenizer). No environment variable silences the last two, so stderr is
passed through a pipe that drops exactly those lines.

`--verbosity=0` (INFO; 1 and up: debug) shows everything again, unfiltered.

`check_output_dir` is the binaries' shared up-front check of an output folder.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
from typing import Callable, Sequence

# Python log records that need no action (matched at the start of the message).
QUIET_MESSAGES = (
  "Given directory is read only",
  "T5 library uses PAD_ID=0",
  "Metadata file does not exist",  # Orbax, reading a t5x checkpoint (it has none): no action
)

# Lines written by C++ code to fd 2 that need no action.
NOISE_LINES = re.compile(
  rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
  rb"|I\d{4} [\d:.]+ +\d+ \S+:\d+\] "  # C++ absl/glog INFO lines
  rb"|E\d{4} [\d:.]+ +\d+ cuda_(platform|executor|driver)\.cc:\d+\] failed call to cuInit"
  rb"|normalizer\.cc\(\d+\) LOG\(INFO\) "
  rb"|\[Gloo\] Rank \d+ is connected to )"  # CPU collectives of a multi-process run
)
_F_SETPIPE_SZ = 1031  # Linux: a large pipe, so a burst of C++ output never blocks its writer


class _DropQuietMessages(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.getMessage()).startswith(QUIET_MESSAGES)


class StderrFilter:
  """Replaces fd 2 by a pipe; a thread copies it to the real stderr without NOISE_LINES."""

  def __init__(self, pattern: re.Pattern[bytes] = NOISE_LINES):
    self._pattern = pattern
    sys.stderr.flush()
    self._saved = os.dup(2)
    read_end, write_end = os.pipe()
    try:
      import fcntl

      fcntl.fcntl(write_end, _F_SETPIPE_SZ, 1 << 20)
    except (ImportError, OSError):
      pass
    os.dup2(write_end, 2)
    os.close(write_end)
    self._thread = threading.Thread(
      target=self._pump, args=(read_end,), name="stderr-filter", daemon=True
    )
    self._thread.start()
    atexit.register(self.close)

  def _write(self, data: bytes) -> None:
    while data:
      try:
        data = data[os.write(self._saved, data) :]
      except OSError:
        return

  def _pump(self, read_end: int) -> None:
    pending = b""
    while True:
      chunk = os.read(read_end, 1 << 16)
      if not chunk:
        break
      *lines, pending = (pending + chunk).split(b"\n")
      self._write(b"".join(line + b"\n" for line in lines if not self._pattern.match(line)))
      if pending and pending[:1] not in (b"I", b"E", b"W", b"n"):  # a partial line: no noise
        self._write(pending)
        pending = b""
    if pending and not self._pattern.match(pending):
      self._write(pending)
    os.close(read_end)

  def close(self) -> None:
    """Restores fd 2 (closing the pipe) and lets the thread copy what is left."""
    if self._saved < 0:
      return
    try:
      sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
      pass
    os.dup2(self._saved, 2)
    self._thread.join(timeout=5)
    os.close(self._saved)
    self._saved = -1


_state: dict[str, object] = {}


def setup(verbosity: int | None = None) -> None:
  """Quiet console unless `verbosity` (absl's scale: 0 INFO, 1+ debug) is given. Idempotent."""
  if _state.get("done"):
    return
  _state["done"] = True
  if verbosity is not None:
    level = logging.DEBUG if verbosity > 0 else logging.INFO
    logging.getLogger().setLevel(level)
    logging.getLogger("absl").setLevel(level)
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow only reads data here
  quiet = _DropQuietMessages()
  root = logging.getLogger()
  root.setLevel(logging.WARNING)
  for logger in (root, logging.getLogger("absl")):
    logger.setLevel(logging.WARNING)
    logger.addFilter(quiet)
  for handler in root.handlers:
    handler.addFilter(quiet)
  try:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    absl_logging.get_absl_handler().addFilter(quiet)
  except ImportError:
    pass
  if os.name == "posix" and sys.stderr is not None:
    try:
      _state["stderr"] = StderrFilter()
    except OSError:  # no usable fd 2 (closed): nothing to filter
      pass


def close() -> None:
  """Flushes and closes the stderr filter (if `setup` installed one), so that what was
  written so far reaches the real stderr: before an `os._exit`, which runs no exit handler."""
  stderr_filter = _state.pop("stderr", None)
  if isinstance(stderr_filter, StderrFilter):
    stderr_filter.close()


def verbosity_from_absl() -> int | None:
  """The --verbosity the user gave on the command line, or None."""
  from absl import flags

  f = flags.FLAGS
  return f.verbosity if "verbosity" in f and f["verbosity"].present else None


def run(main: Callable[[Sequence[str]], None]) -> None:
  """absl `app.run(main)` with `setup` applied after the flags are parsed."""
  from absl import app

  def quiet_main(argv: Sequence[str]) -> None:
    setup(verbosity_from_absl())
    main(argv)

  app.run(quiet_main)


def check_output_dir(path: str | os.PathLike, flag: str) -> None:
  """Creates `path` and proves it writable with a probe file, before any slow work.

  A binary calls it up front (before loading a model), so an unwritable output folder is one
  line naming the flag, not an OSError traceback after minutes of work.
  """
  import tempfile

  try:
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise ValueError(f"{flag}: {os.fspath(path)} is not writable ({e.strerror or e})") from None
