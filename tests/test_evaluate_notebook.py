"""notebooks/evaluate.ipynb runs headlessly from top to bottom and shows the table and plot."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_evaluate_notebook_runs(monkeypatch):
  # One CPU device in the kernel, as on Colab (conftest gives this process 8).
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(os.path.join(REPO, "notebooks", "evaluate.ipynb"), as_version=4)
  NotebookClient(
    nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": REPO}}
  ).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
  assert any("## xnli, 0-shot" in m and "## flores, 0-shot" in m for m in markdown)
  assert any("image/png" in o.get("data", {}) for o in outputs)
  text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  assert "loss " in text and "prediction:" in text
  assert "eval/polylm_eval_xnli_en_0shot/accuracy" in text
