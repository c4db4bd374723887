"""Gin at the edge: t5x-style flags (--gin_file, --gin.KEY=VALUE, --gin_search_paths) for binaries.

Binaries are plain typed functions; `gin.configurable` is applied where the binary defines
its entry point. This module only parses flags and files, registers the project's
configurable value types (PolyLMConfig), and writes the operative config.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
from typing import Callable, Sequence, TypeVar

import gin

from polylm_jax.config import PolyLMConfig
from polylm_jax.files import atomic_write

T = TypeVar("T")

# The repository's gin/ folder, so `include 'models/polylm_base.gin'` resolves from anywhere.
GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"

try:
  gin.external_configurable(PolyLMConfig, "PolyLMConfig", module="polylm")
except ValueError:  # already registered (module reloaded)
  pass


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


class _QuietSearchMisses(logging.Filter):
  """gin logs every search-path miss at ERROR ("Path not found: ..."); they are not errors."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.getMessage()).startswith("Path not found:")


def parse_gin(
  gin_files: Sequence[str], bindings: Sequence[str] = (), search_paths: Sequence[str] = ()
) -> None:
  """Parses files then bindings; unknown names fail here, before any compute.

  Errors name the file or binding at fault (gin's message includes the location).
  """
  for path in [*search_paths, str(GIN_DIR), os.getcwd()]:
    gin.add_config_file_search_path(path)
  for f in gin_files:
    if not any(os.path.exists(os.path.join(p, f)) for p in [*search_paths, "", str(GIN_DIR)]):
      raise FileNotFoundError(
        f"--gin_file={f}: not found (searched {list(search_paths)}, the "
        f"working directory and {GIN_DIR})"
      )
  quiet = _QuietSearchMisses()
  root = logging.getLogger()
  root.addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=True)
  except (ValueError, KeyError, NameError, SyntaxError, TypeError) as e:
    raise ValueError(f"gin configuration error: {e}") from e
  finally:
    root.removeFilter(quiet)


def operative_config() -> str:
  return gin.operative_config_str()


def write_operative_config(directory: str | os.PathLike, name: str = "config.gin") -> pathlib.Path:
  """Writes the operative config (what the run actually used) next to its outputs."""
  return atomic_write(pathlib.Path(directory) / name, gin.config_str())


def run(main: Callable[[Sequence[str]], None]) -> None:
  """absl `app.run` with the gin flags defined and `--gin.KEY=VALUE` accepted."""
  from absl import app

  define_flags()
  sys.argv = rewrite_gin_args(sys.argv)
  app.run(main)


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
    sys.exit(f"error: {e}")
  except TypeError as e:  # a required argument with no gin binding
    if "required" not in str(e) or "argument" not in str(e):
      raise
    sys.exit(f"error: {e} (bind it in a gin file or with --gin.{name}.NAME=VALUE)")
