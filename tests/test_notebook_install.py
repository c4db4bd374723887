"""The notebooks' install cell, run as Colab runs it: Python 3.12, a fresh venv, pip.

The cell pip-installs `git+$POLYLM_JAX_REPO_URL`; here that URL is this repository
(file://), so pip clones it, builds the wheel locally and installs it. The dependencies come
from `.venv312` (`.ci/run` creates it: the `test` extra on Python 3.12, no torch), added to the
fresh venv's path, with PIP_NO_INDEX so nothing is downloaded. Skipped where there is no
.venv312; `.ci/run` runs it once .venv312 exists.
"""

import os
import subprocess
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
SITE312 = REPO / ".venv312" / "lib" / "python3.12" / "site-packages"
CHECK = """
import importlib.util, os, sys
import polylm_jax, tasks
from polylm_jax import config, logs
here = os.path.dirname(polylm_jax.__file__)
assert here.startswith(sys.prefix), ("not the installed copy", here)
assert os.path.isfile(os.path.join(here, "data", "sample_corpus", "documents", "en.txt"))
assert importlib.util.find_spec("torch") is None, "torch came in"
print("installed", sys.version.split()[0], here)
"""


def install_cell() -> str:
  nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
  return nb.cells[1].source  # tests/test_notebooks.py: every notebook has this same cell


@pytest.mark.slow
def test_install_cell_on_python312(tmp_path):
  python312 = REPO / ".venv312" / "bin" / "python"  # venv makes the new one from its base
  if not SITE312.is_dir() or not python312.exists():
    pytest.skip("needs .venv312 (Python 3.12, created by .ci/run)")
  venv = tmp_path / "venv"
  subprocess.run([str(python312), "-m", "venv", "--without-pip", str(venv)], check=True)
  py = str(venv / "bin" / "python")
  purelib = subprocess.check_output(
    [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
  ).strip()
  # .venv312's packages (pip, setuptools and the dependencies) without its editable polylm_jax:
  # a .pth line only extends sys.path; the .pth files inside that folder are not run.
  Path(purelib, "deps_from_venv312.pth").write_text(f"{SITE312}\n")
  env = {
    **os.environ,
    "POLYLM_JAX_REPO_URL": REPO.as_uri(),
    "PIP_NO_INDEX": "1",
    "PIP_NO_BUILD_ISOLATION": "false",  # build with .venv312's setuptools, offline
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PYTHONNOUSERSITE": "1",
  }
  env.pop("PYTHONPATH", None)
  # cwd: not the repository, whose polylm_jax/ would shadow the install (Colab: /content)
  probe = "import importlib.util; print(importlib.util.find_spec('polylm_jax'))"
  assert (
    subprocess.check_output([py, "-c", probe], env=env, text=True, cwd=tmp_path).strip() == "None"
  )
  run = subprocess.run(
    [py, "-c", install_cell()], env=env, capture_output=True, text=True, cwd=tmp_path
  )
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
  out = subprocess.run([py, "-c", CHECK], env=env, capture_output=True, text=True, cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "installed 3.12" in out.stdout and str(venv) in out.stdout
