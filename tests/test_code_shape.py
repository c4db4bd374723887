"""The shape rules of the tree, read from the source: short functions, imports one way.

Rules (README, "Working on the code"): `tasks/` may import `polylm_jax` library modules, but
no library module in `polylm_jax/` imports `tasks/` (only binaries, at the edge, register
tasks); no module imports a binary; no function in `polylm_jax/` is longer than 120 lines.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BINARIES = frozenset(
  {"train", "eval", "infer", "chat", "convert", "self_instruct", "tokenizer", "launch"}
)
MAX_FUNCTION_LINES = 120


def imported_modules(source: str) -> set[str]:
  """Every module a source imports, at any depth (function-level imports count too)."""
  names: set[str] = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def import_violations(module: str, source: str) -> list[str]:
  """Broken import rules of one module, named `package.module`."""
  package, _, name = module.partition(".")
  found = []
  for imported in sorted({".".join(m.split(".")[:2]) for m in imported_modules(source)}):
    parts = imported.split(".")
    if parts[0] == "polylm_jax" and len(parts) > 1 and parts[1] in BINARIES:
      if imported != module:
        found.append(f"{module} imports the binary {imported}")
    if package == "polylm_jax" and name not in BINARIES and parts[0] == "tasks":
      found.append(f"library module {module} imports {imported}")
  return found


def long_functions(path: str, source: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      lines = node.end_lineno - node.lineno + 1
      if lines > limit:
        found.append(f"{path}:{node.lineno} {node.name} has {lines} lines (limit {limit})")
  return found


def _modules(package: str):
  for path in sorted((ROOT / package).rglob("*.py")):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    yield ".".join(parts), path


@pytest.mark.parametrize("package", ["polylm_jax", "tasks"])
def test_imports_go_one_way(package):
  found = []
  for module, path in _modules(package):
    found += import_violations(module, path.read_text(encoding="utf-8"))
  assert not found, "\n".join(found)


def test_functions_in_the_library_stay_short():
  found = []
  for _, path in _modules("polylm_jax"):
    found += long_functions(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
  assert not found, "\n".join(found)


def test_the_checks_catch_what_they_are_for():
  assert import_violations("polylm_jax.decoding", "from tasks import benchmark\n")
  assert import_violations("polylm_jax.decoding", "def f():\n  import tasks.benchmark\n")
  assert import_violations("tasks.pretrain", "from polylm_jax.tokenizer import X\n")
  assert import_violations("polylm_jax.vocab", "from polylm_jax import train\n")
  assert not import_violations("polylm_jax.eval", "import tasks\n")  # a binary may register
  assert not import_violations("tasks.pretrain", "from polylm_jax import vocab\n")
  body = "\n".join(f"  x{i} = {i}" for i in range(130))
  assert long_functions("m.py", f"def f():\n{body}\n")
  assert not long_functions("m.py", "def f():\n  return 1\n")
