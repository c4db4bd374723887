import gin
import pytest

from polylm_jax import gin_utils
from polylm_jax.config import PRESETS


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_gin_files_equal_presets(name):
  gin_utils.parse_gin([f"models/{name}.gin"])
  assert gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn() == PRESETS[name]


def test_bindings_override_files():
  gin_utils.parse_gin(
    ["models/polylm_tiny.gin"], ["COMPUTE_DTYPE = 'bfloat16'", "polylm.PolyLMConfig.num_layers = 3"]
  )
  cfg = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
  assert (cfg.dtype, cfg.num_layers) == ("bfloat16", 3)


def test_typos_and_missing_files_are_named(tmp_path):
  with pytest.raises(ValueError, match="num_layrs"):
    gin_utils.parse_gin(["models/polylm_tiny.gin"], ["polylm.PolyLMConfig.num_layrs = 3"])
  gin.clear_config()
  with pytest.raises(FileNotFoundError, match="--gin_file=models/nope.gin"):
    gin_utils.parse_gin(["models/nope.gin"])
  gin.clear_config()
  extra = tmp_path / "extra"
  extra.mkdir()
  (extra / "mine.gin").write_text(
    "include 'models/polylm_tiny.gin'\npolylm.PolyLMConfig.d_ff = 128\n"
  )
  gin_utils.parse_gin(["mine.gin"], search_paths=[str(extra)])
  assert gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn().d_ff == 128


def test_rewrite_gin_args():
  assert gin_utils.rewrite_gin_args(["prog", '--gin.MODEL_DIR="/x"', "--gin_file=a.gin"]) == [
    "prog",
    '--gin_bindings=MODEL_DIR = "/x"',
    "--gin_file=a.gin",
  ]


def test_write_operative_config(tmp_path):
  gin_utils.parse_gin(["models/polylm_tiny.gin"])
  path = gin_utils.write_operative_config(tmp_path / "run")
  assert "PolyLMConfig.num_layers = 2" in path.read_text()


# -- the first hour: reruns, typos and parse errors (issue 11) ------------------------------------


REQUIRED = {
  "demo.gin": [],
  "runs/infer.gin": ["CHECKPOINT_PATH = 'c'", "INFER_OUTPUT_DIR = 'o'"],
  "runs/eval.gin": ["CHECKPOINT_PATH = 'c'", "EVAL_OUTPUT_DIR = 'o'"],
  "runs/finetune.gin": ["MODEL_DIR = 'm'", "CHECKPOINT_PATH = 'c'"],
}


@pytest.mark.parametrize("run_gin", sorted(REQUIRED))
def test_gin_files_parse_with_a_runs_folder_in_the_working_directory(
  run_gin, tmp_path, monkeypatch
):
  # The demo writes runs/ at the working directory; gin's package lookup used to import it as a
  # namespace package and fail on `include 'runs/...'` ("expected str ... not NoneType").
  from polylm_jax import eval as eval_bin, infer, train  # noqa: F401  (register the configurables)

  (tmp_path / "runs" / "demo" / "checkpoints").mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m` puts the working directory first
  files = [str(gin_utils.GIN_DIR / run_gin)] if run_gin == "demo.gin" else [run_gin]
  if run_gin == "runs/finetune.gin":
    files.insert(0, "models/polylm_tiny.gin")
  gin_utils.parse_gin(files, REQUIRED[run_gin])
  assert gin.query_parameter("BATCH_SIZE/macro.value") > 0


def test_gin_file_readers_are_the_projects():
  from gin import config as gin_config

  assert all(getattr(r, "polylm_tracking", False) for r, _ in gin_config._FILE_READERS)


def test_misspelled_macro_overrides_fail_with_the_closest_name():
  with pytest.raises(ValueError, match=r"--gin.COMPUTE_DTYP: .*did you mean COMPUTE_DTYPE\?"):
    gin_utils.parse_gin(["models/polylm_tiny.gin"], ["COMPUTE_DTYP = 'bfloat16'"])
  gin.clear_config()
  # a new macro that another binding uses is fine
  gin_utils.parse_gin(
    ["models/polylm_tiny.gin"], ["LAYERS = 3", "polylm.PolyLMConfig.num_layers = %LAYERS"]
  )
  assert gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn().num_layers == 3


def test_gin_parse_errors_are_one_line(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text("include 'models/polylm_tiny.gin'\nX = {'a': 1,\n  'b': 2\n")
  with pytest.raises(ValueError) as e:
    gin_utils.parse_gin([str(bad)])
  assert "\n" not in str(e.value) and str(bad) in str(e.value) and "unclosed" in str(e.value)
  gin.clear_config()
  inner = tmp_path / "inner.gin"
  inner.write_text("Y = [1, 2\n")
  (tmp_path / "outer.gin").write_text("include 'inner.gin'\nZ = 1\n")
  with pytest.raises(ValueError, match="inner.gin: .*line"):
    gin_utils.parse_gin(["outer.gin"], search_paths=[str(tmp_path)])
  gin.clear_config()
  with pytest.raises(ValueError) as e:
    gin_utils.parse_gin(["models/polylm_tiny.gin"], ["COMPUTE_DTYPE = bfloat16"])
  assert str(e.value).startswith("--gin.COMPUTE_DTYPE=bfloat16: ")
  assert '\\"bfloat16\\"' in str(e.value) and "\n" not in str(e.value)
  gin.clear_config()
  with pytest.raises(ValueError) as e:  # gin's own location block becomes one line
    gin_utils.parse_gin(["models/polylm_tiny.gin"], ["polylm.PolyLMConfig.num_layrs = 3"])
  assert "num_layrs" in str(e.value) and "\n" not in str(e.value)


def test_a_macro_a_file_uses_but_does_not_define_can_be_set(tmp_path):
  (tmp_path / "uses.gin").write_text("polylm.PolyLMConfig.num_layers = %LAYERS\n")
  gin_utils.parse_gin(["models/polylm_tiny.gin", "uses.gin"], ["LAYERS = 5"], [str(tmp_path)])
  assert gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn().num_layers == 5
  gin.clear_config()
  with pytest.raises(ValueError, match="did you mean LAYERS"):
    gin_utils.parse_gin(["models/polylm_tiny.gin", "uses.gin"], ["LAYER = 5"], [str(tmp_path)])


def test_one_line_drops_gins_call_note():
  @gin.configurable("one_line_probe")
  def probe():
    raise ValueError("TRAIN_STEPS must be > 0, got 0")

  with pytest.raises(ValueError) as info:
    probe()
  assert "In call to configurable" in str(info.value)  # what gin adds
  assert gin_utils.one_line(info.value) == "TRAIN_STEPS must be > 0, got 0"
