"""Every notebook runs headless, top to bottom, in a python3 kernel of this environment.

The kernel gets POLYLM_JAX_NOTEBOOK_SMOKE=1 (each notebook's tiny sizes) and one CPU device,
as on a Colab CPU runtime (conftest gives this process 8). The tests assert what the run
measured, read back from the executed cells' outputs. The committed notebooks carry the
outputs of a run at their default sizes; `test_committed_outputs` checks those are clean.
"""

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from polylm_jax.config import count_params, get_config

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
ALL = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
# What the quiet console (polylm_jax/logs.py) hides, and Python warnings / tracebacks.
NOISE = re.compile(
  r"^(I\d{4} |W\d{4} |E\d{4} |INFO|WARNING:absl|WARNING: All log messages)"
  r"|normalizer\.cc|Given directory is read only|PAD_ID=0|Warning:|Traceback",
  re.M,
)


def run_notebook(name: str, monkeypatch, timeout: int = 600) -> nbformat.NotebookNode:
  monkeypatch.setenv("POLYLM_JAX_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "")
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  client = NotebookClient(
    nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
  )
  client.execute()  # ipykernel's inline backend turns plt.show() into image/png outputs
  check_clean(nb, name)
  return nb


def outputs(nb) -> list:
  return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def text_of(nb) -> str:
  return "\n".join(o.get("text", "") for o in outputs(nb))


def images(nb) -> int:
  return sum("image/png" in o.get("data", {}) for o in outputs(nb))


def check_clean(nb, name: str) -> None:
  errors = [o for o in outputs(nb) if o.get("output_type") == "error"]
  assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
  noisy = NOISE.findall(text_of(nb))
  assert not noisy, f"{name}: noisy output lines {noisy[:3]}"


@pytest.mark.parametrize("name", ALL)
def test_notebook_standard(name):
  """Colab link, the shared install cell, a backend-detection cell, committed clean plots."""
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  assert nb.cells[0].cell_type == "markdown"
  link = f"colab.research.google.com/github/polylm-jax/polylm-jax/blob/main/notebooks/{name}.ipynb"
  assert link in nb.cells[0].source, f"{name}: no Open-in-Colab link in the first cell"
  install = nb.cells[1].source
  assert 'os.environ.get("POLYLM_JAX_REPO_URL"' in install and '"pip", "install"' in install
  assert "torch" not in install.replace("no torch", "")
  code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
  assert "jax.default_backend()" in code and "POLYLM_JAX_NOTEBOOK_SMOKE" in code
  assert "logs.setup()" in code
  check_clean(nb, name)
  assert images(nb) >= 1, f"{name}: the committed notebook has no plot output"
  assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code" and c.source)


def install_cells() -> set[str]:
  return {nbformat.read(NOTEBOOKS / f"{n}.ipynb", as_version=4).cells[1].source for n in ALL}


def test_one_install_cell():
  """tests/test_notebook_install.py checks this cell once for all notebooks."""
  assert len(install_cells()) == 1


def _floats(pattern: str, text: str) -> list[float]:
  m = re.search(pattern, text)
  assert m, f"no match for {pattern!r} in the notebook's output"
  return [float(g) for g in m.groups()]


def test_quickstart(monkeypatch):
  nb = run_notebook("quickstart", monkeypatch)
  text = text_of(nb)
  for preset in ("greedy", "sampling", "beam"):
    assert f"--- {preset}:" in text
  assert len(re.findall(r"^  '.*' -> '.*'$", text, re.M)) == 9  # 3 prompts x 3 presets
  assert len(re.findall(r"per token .* total .* tokens", text)) == 4
  ppl = json.loads(re.search(r"perplexity per language: (\{.*\})", text)[1].replace("'", '"'))
  assert len(ppl) == 18 and all(1 < v < 4096 * 4 for v in ppl.values()), ppl
  assert ppl["en"] < sorted(ppl.values())[9], ppl  # 70% of the tokens were English
  assert images(nb) == 2


def test_pretraining(monkeypatch):
  nb = run_notebook("pretraining", monkeypatch)
  text = text_of(nb)
  (switch, steps) = _floats(r"stage switch at step (\d+) of (\d+)", text)
  assert switch == 0.8 * steps + 1
  before, after = _floats(r"eval loss ([0-9.]+) -> ([0-9.]+)", text)
  assert after < before - 0.3
  (s1,) = _floats(r"stage1: realised non-English share ([0-9.]+)", text)
  (s2,) = _floats(r"stage2: realised non-English share ([0-9.]+)", text)
  assert abs(s1 - 0.3) < 0.02 and abs(s2 - 0.6) < 0.03, (s1, s2)
  (tok_s, mfu) = _floats(r"median ([0-9]+) tokens/s MFU ([0-9.]+)%", text.replace(",", ""))
  assert tok_s > 0 and 0 < mfu < 100
  (diff,) = _floats(r"max \|loss difference\| ([0-9.e+-]+)", text)
  assert diff < 1e-5
  assert images(nb) == 4


def test_instruction_tuning(monkeypatch):
  nb = run_notebook("instruction_tuning", monkeypatch)
  text = text_of(nb)
  (examples, weighted, pct) = _floats(r"tokens in (\d+) examples, (\d+) with loss \((\d+)%\)", text)
  assert examples >= 2 and 0 < weighted and 10 < pct < 90  # prompts carry no loss
  assert re.search(r"no loss on '.*\\n\\n'\n\s+loss on    '", text)  # prompt ends in \n\n
  before, after = _floats(r"loss ([0-9.]+) -> ([0-9.]+)", text)
  assert after < 3.0 < before
  (exact, total) = _floats(r"(\d+) of (\d+) training instructions answered exactly", text)
  assert total == 12 and exact >= 1
  assert text.count("assistant: ") == 2
  assert images(nb) == 2


def test_sharding(monkeypatch):
  """The notebook forces 8 host CPU devices itself (XLA_FLAGS is empty in its kernel)."""
  nb = run_notebook("sharding", monkeypatch)
  text = text_of(nb)
  assert "the mesh uses 8 x cpu" in text
  assert re.search(r"\['wte'\]\s+\(256000, 2048\)\s+\('tensor', 'fsdp'\)\s+\(128000, 512\)", text)
  assert re.search(r"Adam .*\.mu\['wte'\]\s+\('tensor', 'fsdp'\)", text)  # moments split too
  diffs = [float(d) for d in re.findall(r"max \|sharded - single\| ([0-9.e+-]+)", text)]
  assert len(diffs) == 4 and max(diffs) < 1e-5, diffs
  table = dict(
    ((c, m), float(t))
    for c, m, t in re.findall(
      r"\| (polylm_\w+) \| ([^|]+?) \| [^|]+ \| [^|]+ \| ([0-9.]+) \|", text
    )
  )
  assert len(table) == 10
  assert table[("polylm_1_7b", "fsdp=8")] < table[("polylm_1_7b", "data=8")] / 7.9
  params_13b = count_params(get_config("polylm_13b"))
  assert abs(table[("polylm_13b", "data=8")] - params_13b * 12 / 2**30) < 0.01  # fp32 p, mu, nu
  assert images(nb) == 1


def test_released_weights(monkeypatch):
  nb = run_notebook("released_weights", monkeypatch)
  text = text_of(nb)
  assert "'architectures': ['GPT2LMHeadModel']" in text and "'tie_word_embeddings': True" in text
  try:
    import torch  # noqa: F401
  except ImportError:
    assert "parity check skipped" in text
  else:
    (diff, lo, hi) = _floats(
      r"max \|logit difference\| ([0-9.e+-]+) \(logits span ([0-9.-]+) \.\. ([0-9.-]+)\)", text
    )
    assert diff < 1e-4 and hi - lo > 1.0
    assert "same next-token argmax: True" in text
    assert images(nb) == 1
  (same, total) = _floats(r"(\d+) of (\d+) tensors identical to the original", text)
  assert same == total >= 28 and "re-import equal: True; config equal: True" in text


def test_data_mixtures(monkeypatch):
  """The plotted curriculum's measured shares: each stage's mean within 0.1 point of 30% / 60%
  and every 4,096-token step within 3 points (the stream's 1.5% boundary slack at both ends)."""
  nb = run_notebook("data_mixtures", monkeypatch)
  text = text_of(nb)
  assert "non-English 0.300" in text and "non-English 0.600" in text  # the plan
  assert "[en]" in text
  for stage, target in (("stage 1", 0.3), ("stage 2", 0.6)):
    mean, lo, hi = _floats(rf"{stage} mean ([0-9.]+), per step ([0-9.]+) \.\. ([0-9.]+)", text)
    assert abs(mean - target) <= 0.001, (stage, mean)
    assert target - 0.03 <= lo <= hi <= target + 0.03, (stage, lo, hi)
  assert images(nb) >= 2


def test_evaluate(monkeypatch):
  nb = run_notebook("evaluate", monkeypatch)
  markdown = [
    o["data"]["text/markdown"] for o in outputs(nb) if "text/markdown" in o.get("data", {})
  ]
  assert any("## xnli, 0-shot" in m and "## flores, 0-shot" in m for m in markdown)
  assert images(nb) == 1  # results.png
  text = text_of(nb)
  before, after = _floats(r"loss ([0-9.]+) -> ([0-9.]+)", text)
  assert after < before
  assert "prediction:" in text and "eval/polylm_eval_xnli_en_0shot/accuracy" in text
  (acc,) = _floats(r"'eval/polylm_eval_xnli_en_0shot/accuracy': ([0-9.]+)", text)
  assert 0 <= acc <= 100
