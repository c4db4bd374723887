"""The settings of the infer and eval binaries: each checks itself and names the field at
fault; gin builds them from gin/runs/infer.gin and eval.gin; the damaged-checkpoint hint names
the macro that picks a step."""

import gin
import jax
import pytest

from polylm_jax import checkpoints, decoding, gin_utils
from polylm_jax.config import get_config
from polylm_jax.inference_config import (
  STEP_FLAG,
  BenchmarkSpec,
  CheckpointSpec,
  GenerationSpec,
  PromptSpec,
)
from polylm_jax.model import init_params
from polylm_jax.training.settings import MeshSpec


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_checkpoint_spec():
  assert CheckpointSpec("runs/x", step=3).step == 3
  with pytest.raises(ValueError, match=r"^CHECKPOINT_PATH is empty: pass --gin.CHECKPOINT_PATH"):
    CheckpointSpec("")
  with pytest.raises(ValueError, match=r"CHECKPOINT_STEP \(CheckpointSpec.step\) must be >= 0"):
    CheckpointSpec("runs/x", step=-1)
  with pytest.raises(ValueError, match="MeshSpec.num_microbatches=2 is a training setting"):
    CheckpointSpec("runs/x").load(MeshSpec(num_microbatches=2))


def test_damaged_checkpoint_hint_names_the_step_macro(tmp_path):
  from polylm_jax import vocab as vocab_lib

  config = get_config("polylm_tiny", vocab_size=vocab_lib.get_vocabulary().vocab_size)
  params = init_params(config, jax.random.key(0))
  policy = checkpoints.CheckpointPolicy(save_every=1, keep=None, async_save=False)
  with checkpoints.CheckpointManager(tmp_path, config, policy) as manager:
    manager.save(2, params)
    manager.save(4, params)
  open(tmp_path / "checkpoints" / "4" / "params" / "_METADATA", "w").close()
  with pytest.raises(ValueError, match=r"older complete steps: \[2\].*--gin.CHECKPOINT_STEP=N"):
    CheckpointSpec(str(tmp_path)).load(MeshSpec())
  assert STEP_FLAG == "--gin.CHECKPOINT_STEP"
  assert CheckpointSpec(str(tmp_path), step=2).load(MeshSpec())[0] == config


def test_generation_spec():
  beam = GenerationSpec(preset="beam", decode_settings={"length_penalty": 0.8})
  assert beam.settings() == decoding.make_settings("beam", length_penalty=0.8)
  assert GenerationSpec().overrides() == {}  # greedy: the eval report says "greedy"
  assert GenerationSpec(preset="sampling", seed=3).overrides() == {
    **decoding.DEMO_SAMPLING,
    "seed": 3,
  }
  assert GenerationSpec(max_new_tokens={"tydiqa": 32}).max_new_tokens == {"tydiqa": 32}
  for kwargs, field in [
    ({"preset": "nucleus"}, "unknown decoding preset 'nucleus'"),
    ({"decode_settings": {"top_q": 1}}, r"unknown decoding setting\(s\) \['top_q'\]"),
    ({"decode_settings": {"temperature": -1}}, "temperature=-1"),
    ({"batch_size": 0}, "GenerationSpec.batch_size must be an integer >= 1"),
    ({"max_new_tokens": 0}, "GenerationSpec.max_new_tokens must be an integer >= 1"),
    ({"max_new_tokens": {"flores": 0}}, r"GenerationSpec.max_new_tokens\['flores'\]"),
    ({"decode_settings": [1]}, "GenerationSpec.decode_settings must be a dict"),
  ]:
    with pytest.raises(ValueError, match=field):
      GenerationSpec(**kwargs)


def test_prompt_spec():
  spec = PromptSpec(input_file="p.jsonl", task_feature_lengths={"inputs": 8})
  assert spec.style == "plain" and spec.task_feature_lengths == {"inputs": 8}
  with pytest.raises(ValueError, match="exactly one prompt source: INFER_INPUT_FILE"):
    PromptSpec()
  with pytest.raises(ValueError, match="exactly one prompt source"):
    PromptSpec(input_file="p.jsonl", mixture_or_task_name="task")
  with pytest.raises(ValueError, match="PromptSpec.style"):
    PromptSpec(input_file="p.jsonl", style="alpaca")
  with pytest.raises(ValueError, match="PromptSpec.max_examples must be an integer >= 1"):
    PromptSpec(input_file="p.jsonl", max_examples=0)


def test_benchmark_spec():
  spec = BenchmarkSpec(["polylm_eval_xcopa_it_0shot", "polylm_eval_xnli_0shot"], paths=None)
  assert spec.tasks == "polylm_eval_xcopa_it_0shot,polylm_eval_xnli_0shot" and spec.paths == {}
  with pytest.raises(ValueError, match=r"MIXTURE_OR_TASK_NAME \(BenchmarkSpec.tasks\) is empty"):
    BenchmarkSpec(" , ")
  with pytest.raises(ValueError, match="BenchmarkSpec.max_examples"):
    BenchmarkSpec("t", max_examples=0)
  with pytest.raises(ValueError, match="BenchmarkSpec.template_overrides must be a dict"):
    BenchmarkSpec("t", template_overrides="xnli")
  with pytest.raises(ValueError, match="BenchmarkSpec.shot_seed must be an integer"):
    BenchmarkSpec("t", shot_seed=1.5)


@pytest.mark.parametrize(
  "gin_file, entry, required",
  [
    ("runs/infer.gin", "infer", ["INFER_OUTPUT_DIR = 'o'", "INFER_INPUT_FILE = 'p.jsonl'"]),
    ("runs/eval.gin", "evaluate", ["EVAL_OUTPUT_DIR = 'o'"]),
  ],
)
def test_gin_builds_the_settings_from_the_macros(gin_file, entry, required):
  from polylm_jax import eval as eval_bin  # noqa: F401  (registers the configurables)
  from polylm_jax import infer  # noqa: F401

  gin_utils.parse_gin(
    [gin_file],
    ["CHECKPOINT_PATH = 'ckpt'", "CHECKPOINT_STEP = 5", "BATCH_SIZE = 3", *required],
  )
  built = {
    name: gin.get_configurable(name)() for name in ("CheckpointSpec", "GenerationSpec", "MeshSpec")
  }
  assert built["CheckpointSpec"] == CheckpointSpec("ckpt", step=5)
  assert built["GenerationSpec"].batch_size == 3
  assert built["MeshSpec"] == MeshSpec()
  for param in ("checkpoint", "generation", "output_dir", "mesh"):
    assert gin.query_parameter(f"{entry}.{param}") is not None
