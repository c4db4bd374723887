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
