"""Notebooks run headless, top to bottom, in a python3 kernel of this environment."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run_notebook(name: str, timeout: int = 300) -> nbformat.NotebookNode:
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  env_cwd = str(NOTEBOOKS.parent)
  client = NotebookClient(
    nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": env_cwd}}
  )
  client.execute()  # ipykernel's inline backend turns plt.show() into image/png outputs
  return nb


def _outputs(nb) -> str:
  return "\n".join(
    o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
  )


def test_data_mixtures_notebook():
  nb = run_notebook("data_mixtures.ipynb")
  text = _outputs(nb)
  assert "non-English 0.300" in text and "non-English 0.600" in text
  assert "[en]" in text and "stage 2 mean" in text
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) >= 2
