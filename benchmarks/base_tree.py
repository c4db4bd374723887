"""Imports a module of another checkout of this project (e.g. a git worktree of the base commit)
next to this one, so that a benchmark prints before and after side by side in one process:

  git worktree add /tmp/base 420f6b0
  python benchmarks/decode.py --base /tmp/base

The other checkout's `polylm_jax` modules get their own entries in sys.modules while the
module loads and are kept alive by it afterwards; this checkout's modules are restored.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

PACKAGE = "polylm_jax"


def _ours() -> dict[str, ModuleType]:
  return {k: m for k, m in sys.modules.items() if k == PACKAGE or k.startswith(PACKAGE + ".")}


def load(tree: str, module: str) -> ModuleType:
  """`module` (e.g. "polylm_jax.decoding") as the checkout at `tree` has it."""
  tree = os.path.abspath(tree)
  if not os.path.isfile(os.path.join(tree, PACKAGE, "__init__.py")):
    raise SystemExit(f"--base {tree}: no {PACKAGE}/ there (make one: git worktree add {tree} REV)")
  saved = _ours()
  for name in saved:
    del sys.modules[name]
  sys.path.insert(0, tree)
  try:
    loaded = importlib.import_module(module)
    if not os.path.abspath(loaded.__file__).startswith(tree + os.sep):
      raise SystemExit(f"--base {tree}: {module} came from {loaded.__file__}")
    return loaded
  finally:
    sys.path.remove(tree)
    for name in _ours():
      del sys.modules[name]
    sys.modules.update(saved)
