import pytest

from polylm_jax.config import PRESETS, PolyLMConfig, count_params, flops_per_token, get_config


def test_released_parameter_counts():
  assert count_params(get_config("polylm_1_7b")) == 1_737_084_928
  assert count_params(get_config("polylm_13b")) == 13_906_790_400


def test_presets_are_consistent():
  for name, cfg in PRESETS.items():
    assert cfg.num_heads * cfg.head_dim == cfg.d_model, name
  assert get_config("polylm_13b").head_dim == 128


def test_get_config_overrides_and_errors():
  assert get_config("polylm_tiny", dtype="bfloat16").dtype == "bfloat16"
  with pytest.raises(ValueError, match="unknown PolyLM config 'polylm_7b'"):
    get_config("polylm_7b")
  with pytest.raises(ValueError, match="no field"):
    get_config("polylm_tiny", n_layers=3)


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("num_heads", 3, "num_heads \\* head_dim"),
    ("dtype", "int8", "PolyLMConfig.dtype"),
    ("remat_policy", "some", "remat_policy"),
    ("vocab_size", 0, "vocab_size"),
    ("attention_impl", "flash", "attention_impl"),
  ],
)
def test_invalid_fields_are_named(field, value, match):
  with pytest.raises(ValueError, match=match):
    get_config("polylm_tiny", **{field: value})


def test_dict_round_trip():
  cfg = get_config("polylm_small")
  assert PolyLMConfig.from_dict(cfg.to_dict()) == cfg
  with pytest.raises(ValueError, match="rotary"):
    PolyLMConfig.from_dict({**cfg.to_dict(), "rotary": True})


def test_flops_per_token_matches_formula():
  cfg = get_config("polylm_1_7b")
  n = count_params(cfg) - cfg.max_len * cfg.d_model
  assert flops_per_token(cfg, 2048) == 6 * n + 12 * 24 * 2048 * 2048
