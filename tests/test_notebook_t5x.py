"""notebooks/t5x.ipynb: t5x.train through gin, then polylm_jax.load of its checkpoint.

Its own file, so that `pytest -n 2 --dist loadfile` runs it beside tests/test_notebooks.py
(the t5x binary's start-up and compiles take most of its minute or two).
"""

import pytest
from test_notebooks import _floats, images, run_notebook, text_of

pytest.importorskip("t5x", reason="t5x comes from tools/install_t5x.sh")


def test_t5x(monkeypatch):
  nb = run_notebook("t5x", monkeypatch, timeout=900)
  text = text_of(nb)
  assert "--gin_file=gin/t5x/polylm_tiny.gin" in text
  assert "checkpoints: ['checkpoint_2', 'checkpoint_4']" in text  # the run gin's period
  (first, last) = _floats(r"t5x train loss ([0-9.]+) \(step 2\) -> ([0-9.]+) \(step 4\)", text)
  assert last < first
  (params,) = _floats(r"t5x_run: ([0-9]+) parameters", text.replace(",", ""))
  assert params == 366336  # polylm_tiny with the 4,096-piece sample vocabulary and 64 positions
  loss = _floats(r"'en': ([0-9.]+), 'es'", text)[0]
  assert 5 < loss < 8.4  # below log(4096) = 8.32 after 4 steps (English is 70% of them)
  assert images(nb) == 2
