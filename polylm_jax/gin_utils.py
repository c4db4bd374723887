"""Gin at the edge: t5x-style flags (--gin_file, --gin.KEY=VALUE, --gin_search_paths) for binaries.

Binaries are plain typed functions; `gin.configurable` is applied where the binary defines
its entry point. This module only parses flags and files, registers the project's
configurable value types (PolyLMConfig), and writes the operative config.

Errors are one line naming the file, line or flag at fault: a gin syntax error, an include
that is not found, an unquoted string in `--gin.KEY=VALUE`, and an override of a macro that
no gin file defines (a typo such as `--gin.TRAIN_STEP=2` would otherwise create a new, unused
macro silently).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import logging
import os
import pathlib
import re
import sys
import tokenize
from typing import Callable, Iterator, Sequence, TypeVar

import gin
from gin import config as gin_config
from gin import resource_reader

from polylm_jax.config import PolyLMConfig
from polylm_jax.files import atomic_write

T = TypeVar("T")

# The repository's gin/ folder, so `include 'models/polylm_base.gin'` resolves from anywhere.
GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"

try:
  gin.external_configurable(PolyLMConfig, "PolyLMConfig", module="polylm")
except ValueError:  # already registered (module reloaded)
  pass

# Folders searched for gin files after the working directory (parse_gin adds to it).
_SEARCH_PATHS: list[str] = []


def _found_in_search_paths(path: str) -> bool:
  return any(os.path.isfile(os.path.join(p, path)) for p in _SEARCH_PATHS)


def _package_gin_file(path: str) -> str | None:
  """`pkg/sub/x.gin` inside an installed Python package (gin's resource lookup), or None.

  gin's own lookup crashes on a namespace package: a plain `runs/` folder in the working
  directory (which the demo writes) turns `include 'runs/pretrain.gin'` into
  "expected str ... not NoneType". Files in the search paths win, so the project's includes
  never import anything; a package without a file origin is not a package of gin files.
  """
  head, name = os.path.split(path)
  if not head or os.path.isabs(path) or _found_in_search_paths(path):
    return None
  try:
    spec = importlib.util.find_spec(head.replace("/", "."))
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.origin or not os.path.isfile(spec.origin):
    return None
  full = os.path.join(os.path.dirname(spec.origin), name)
  return full if os.path.isfile(full) else None


def _open_package_gin_file(path: str):
  return open(_package_gin_file(path) or path, encoding="utf-8")


def _tracking(reader: Callable[[str], object]) -> Callable[[str], object]:
  """Wraps a gin file reader so that a tokenizer error names the (innermost) file."""

  @contextlib.contextmanager
  def read(path: str) -> Iterator[object]:
    with reader(path) as f:  # type: ignore[attr-defined]
      try:
        yield f
      except tokenize.TokenError as e:
        if not getattr(e, "gin_file", None):  # the innermost file (includes nest)
          e.gin_file = path  # type: ignore[attr-defined]
          e.gin_line = e.args[1][0] if len(e.args) > 1 else "?"  # type: ignore[attr-defined]
          e.gin_msg = e.args[0] if e.args else "tokenizer error"  # type: ignore[attr-defined]
        raise

  read.polylm_tracking = True  # type: ignore[attr-defined]
  return read


def _install_file_readers() -> None:
  """Replaces gin's package reader by a safe one and makes every reader name its file.

  gin has no public API to replace a reader, so this edits its reader list in place; a test
  (tests/test_gin_utils.py) fails if a gin release changes that list.
  """
  readers = gin_config._FILE_READERS  # pylint: disable=protected-access
  for i, (reader, exists) in enumerate(readers):
    if getattr(reader, "polylm_tracking", False):
      continue
    if exists is resource_reader.system_path_file_exists:
      reader, exists = _open_package_gin_file, lambda p: _package_gin_file(p) is not None
    readers[i] = (_tracking(reader), exists)


_install_file_readers()


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns t5x's `--gin.KEY=VALUE` into `--gin_bindings=KEY=VALUE` for absl."""
  out = []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      key, value = arg[len("--gin.") :].split("=", 1)
      out.append(f"--gin_bindings={key} = {value}")
    else:
      out.append(arg)
  return out


def define_flags() -> None:
  """The gin flags every binary takes (idempotent)."""
  from absl import flags

  if "gin_file" in flags.FLAGS:
    return
  flags.DEFINE_multi_string("gin_file", [], "Gin files to parse, in order.")
  flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings (or --gin.KEY=VALUE).")
  flags.DEFINE_list("gin_search_paths", [], "Folders searched for gin files and includes.")


_CALL_NOTE = re.compile(r"In call to configurable '[\w.]+' \(<.*>\)$")


def one_line(error: BaseException) -> str:
  """gin's message without its multi-line location block: 'msg (In file "x", line 3; ...)'."""
  lines = [s.strip() for s in str(error).splitlines() if s.strip()]
  # gin appends "In call to configurable 'train' (<function train at 0x...>)": no news to a user.
  lines = [s for s in lines if not _CALL_NOTE.match(s)]
  if not lines:
    return type(error).__name__
  where = [s for s in lines[1:] if s.startswith(("In file", "In binding"))]
  if not where:
    return " ".join(lines)
  return lines[0] + f" ({'; '.join(where)})"


_BINDING_KEY = re.compile(r"\s*([\w./]+)\s*=(.*)", re.DOTALL)
_MACRO_LINE = re.compile(r"^((?:[\w.]+/)?[A-Za-z_]\w*) = ", re.MULTILINE)


def known_macros() -> set[str]:
  """Macros the parsed files define (`NAME = value`) or use (`%NAME`), from gin's config
  string (a macro a file uses but leaves to the command line is known too)."""
  text = gin.config_str()
  return set(_MACRO_LINE.findall(text)) | set(re.findall(r"%([A-Za-z_][\w/]*)", text))


def check_macro_overrides(bindings: Sequence[str], known: set[str]) -> None:
  """An override of a macro no gin file defines is a typo: fail, naming the closest macro.

  Macros that another binding refers to (`%NAME`) count as defined.
  """
  referenced = set(re.findall(r"%([\w/]+)", "\n".join(bindings)))
  for binding in bindings:
    m = _BINDING_KEY.match(binding)
    if not m or "." in m.group(1):
      continue
    name = m.group(1)
    if name in known or name in referenced:
      continue
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else f"; defined: {', '.join(sorted(known))}"
    raise ValueError(f"--gin.{name}: no gin file defines the macro {name}{hint}")


def _parse_binding(binding: str) -> None:
  try:
    gin.parse_config(binding)
  except SyntaxError as e:
    m = _BINDING_KEY.match(binding)
    flag = f"--gin.{m.group(1)}={m.group(2).strip()}" if m else f"--gin_bindings={binding}"
    value = m.group(2).strip() if m else ""
    quote = (
      f"; strings need quotes that reach gin: --gin.{m.group(1)}=\\\"{value}\\\" "
      f"or '--gin.{m.group(1)}=\"{value}\"'"
      if m and value and value[0] not in "\"'[({%@" and not _is_number(value)
      else ""
    )
    reason = (e.msg or "unable to parse").strip().splitlines()[-1].strip()
    raise ValueError(f"{flag}: {reason}{quote}") from None


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return text in ("True", "False", "None")
  return True


def _add_search_paths(search_paths: Sequence[str]) -> None:
  for path in [*search_paths, str(GIN_DIR), os.getcwd()]:
    if path not in _SEARCH_PATHS:
      _SEARCH_PATHS.append(path)
      gin.add_config_file_search_path(path)


def parse_gin(
  gin_files: Sequence[str], bindings: Sequence[str] = (), search_paths: Sequence[str] = ()
) -> None:
  """Parses files then bindings; unknown names fail here, before any compute.

  Every error is a one-line ValueError (or FileNotFoundError) naming the file, line or flag.
  """
  _add_search_paths(search_paths)
  for f in gin_files:
    if not any(os.path.exists(os.path.join(p, f)) for p in [*search_paths, "", str(GIN_DIR)]):
      raise FileNotFoundError(
        f"--gin_file={f}: not found (searched {list(search_paths)}, the "
        f"working directory and {GIN_DIR})"
      )
  try:
    for f in gin_files:
      gin.parse_config_file(f)
    check_macro_overrides(bindings, known_macros())
    for binding in bindings:
      _parse_binding(binding)
    gin.finalize()
  except tokenize.TokenError as e:  # gin may re-raise it as a proxy without args
    where = getattr(e, "gin_file", None) or ", ".join(gin_files)
    line = getattr(e, "gin_line", "?")
    raise ValueError(
      f"gin configuration error: {where}: {getattr(e, 'gin_msg', e)} at line {line} "
      "(an unclosed bracket, brace or string?)"
    ) from None
  except (ValueError, KeyError, NameError, SyntaxError, TypeError, OSError, ImportError) as e:
    if isinstance(e, ValueError) and str(e).startswith("--gin"):
      raise
    raise ValueError(f"gin configuration error: {one_line(e)}") from e


def operative_config() -> str:
  return gin.operative_config_str()


def write_operative_config(directory: str | os.PathLike, name: str = "config.gin") -> pathlib.Path:
  """Writes the operative config (what the run actually used) next to its outputs."""
  return atomic_write(pathlib.Path(directory) / name, gin.config_str())


def run(main: Callable[[Sequence[str]], None]) -> None:
  """absl `app.run` with the gin flags defined, `--gin.KEY=VALUE` accepted and the console
  kept quiet (polylm_jax.logs; `--verbosity=0` or higher brings library logs back)."""
  from polylm_jax import logs

  define_flags()
  sys.argv = rewrite_gin_args(sys.argv)
  logs.run(main)


def parse_from_flags() -> None:
  """Parses the gin flags of the running binary."""
  from absl import flags

  f = flags.FLAGS
  parse_gin(f.gin_file, f.gin_bindings, f.gin_search_paths)


def configurable(fn: Callable[..., T], name: str) -> Callable[..., T]:
  """`gin.external_configurable(fn, name)`, idempotent (runpy imports a binary twice)."""
  try:
    return gin.external_configurable(fn, name=name)
  except ValueError:
    return gin.get_configurable(name)


def call_configured(
  entry: Callable[[], T], name: str, errors: tuple[type[BaseException], ...] = ()
) -> T:
  """Parses the gin flags and calls a binary's configured entry point.

  Bad configuration (and `errors`) ends the process with the message alone, no traceback:
  the message names the binding, file or flag at fault.
  """
  try:
    parse_from_flags()
    return entry()
  except (ValueError, FileNotFoundError, KeyError, *errors) as e:
    logging.debug("%s failed", name, exc_info=True)
    sys.exit(f"error: {one_line(e)}")
  except TypeError as e:  # a required argument with no gin binding
    if "required" not in str(e) or "argument" not in str(e):
      raise
    sys.exit(f"error: {one_line(e)} (bind it in a gin file or with --gin.{name}.NAME=VALUE)")
