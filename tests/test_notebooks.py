"""Notebooks run headless, top to bottom, in a python3 kernel of this environment."""

import re
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
  """The plotted curriculum's measured shares: each stage's mean within 0.1 point of 30% / 60%
  and every 4,096-token step within 3 points (the stream's 1.5% boundary slack at both ends)."""
  nb = run_notebook("data_mixtures.ipynb")
  text = _outputs(nb)
  assert "non-English 0.300" in text and "non-English 0.600" in text  # the plan
  assert "[en]" in text
  for stage, target in (("stage 1", 0.3), ("stage 2", 0.6)):
    m = re.search(rf"{stage} mean ([0-9.]+), per step ([0-9.]+) \.\. ([0-9.]+)", text)
    assert m, f"no measured {stage} share in the notebook's output"
    mean, lo, hi = map(float, m.groups())
    assert abs(mean - target) <= 0.001, (stage, mean)
    assert target - 0.03 <= lo <= hi <= target + 0.03, (stage, lo, hi)
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) >= 2
