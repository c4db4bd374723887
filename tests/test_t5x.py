"""PolyLM inside the real t5x: the binaries end to end on CPU (train on a (data=2, model=4)
mesh of 8 host devices, resume on another mesh, infer, eval), decoding parity with
polylm_jax.generate, sampling and beam search, the curriculum switch, stage shares,
checkpoint conversions, and the adapter's errors."""

import functools
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("CI"):
  import t5x  # noqa: F401  (under CI these tests must run, never skip)
else:
  pytest.importorskip("t5x")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import tensorflow as tf  # noqa: E402
from flax import core as flax_core  # noqa: E402
from flax import traverse_util  # noqa: E402
from flax.linen import partitioning as flax_partitioning  # noqa: E402
from t5x import decoding as t5x_decoding  # noqa: E402
from t5x import optimizers as t5x_optimizers  # noqa: E402
from t5x import utils as t5x_utils  # noqa: E402

import polylm_jax  # noqa: E402
from polylm_jax import decoding, t5x_ckpt, t5x_data, t5x_features, t5x_model  # noqa: E402
from polylm_jax import vocab as vocab_lib  # noqa: E402
from polylm_jax.config import get_config  # noqa: E402
from polylm_jax.model import abstract_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASK = "polylm_eval_wmt20_de_en_0shot"
LENGTHS = "{'inputs': 40, 'targets': 24}"  # prompt + new tokens = polylm_tiny's 64 positions


# ---- the binaries, from a folder laid out like the repository root ------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """gin/ as in the repository, plus a `runs/` folder of decoys: t5x's own run gins must
  not be shadowed by a local runs/ (an earlier run's output folder, say)."""
  root = tmp_path_factory.mktemp("t5x_root")
  (root / "gin").symlink_to(REPO / "gin")
  (root / "runs").mkdir()
  for name in ("pretrain.gin", "infer.gin", "eval.gin"):
    (root / "runs" / name).write_text("this is not gin (((\n")
  from tasks import benchmark_demo

  data = benchmark_demo.write_demo_data(str(root / "benchmark_data"))
  env = dict(os.environ, POLYLM_EVAL_DATA_DIR=data, TF_CPP_MIN_LOG_LEVEL="2")
  return root, env


def _t5x(binary: str, workdir, *args: str) -> str:
  root, env = workdir
  proc = subprocess.run(
    [sys.executable, "-m", f"t5x.{binary}", *args],
    cwd=root,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stderr


def _train(workdir, model_dir, steps, model_parallel):
  return _t5x(
    "train",
    workdir,
    "--gin_file=gin/t5x/polylm_tiny.gin",
    "--gin_file=gin/t5x/pretrain_sample.gin",
    f'--gin.MODEL_DIR="{model_dir}"',
    f"--gin.TRAIN_STEPS={steps}",
    f"--gin.MODEL_PARALLEL={model_parallel}",
  )


@pytest.fixture(scope="module")
def run_dir(workdir, tmp_path_factory):
  """20 steps on a (data=2, model=4) mesh, then resumed to 30 on (data=8, model=1)."""
  model_dir = tmp_path_factory.mktemp("t5x_run") / "tiny"
  first = _train(workdir, model_dir, 20, 4)
  second = _train(workdir, model_dir, 30, 1)
  return model_dir, first, second


@pytest.mark.slow
def test_train_on_a_data2_model4_mesh_then_resume_to_30(run_dir):
  model_dir, first, second = run_dir
  assert "(data=2, model=4)" in first
  assert "(data=8, model=1)" in second
  info = (model_dir / "model-info.txt").read_text()
  wte = next(line for line in info.splitlines() if line.startswith("Variable wte "))
  assert "partition spec ('model', None)" in wte  # the vocabulary split over model=4
  assert "checkpoint_20" in second  # resumed, not restarted
  assert sorted(t5x_ckpt.steps(str(model_dir)))[-1] == 30
  losses = [
    float(line.split("cross_ent_loss=")[1].split(",")[0])
    for line in (first + second).splitlines()
    if "collection=train " in line and "cross_ent_loss=" in line
  ]
  assert losses and all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.fixture(scope="module")
def infer_rows(workdir, run_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("t5x_infer")
  _t5x(
    "infer",
    workdir,
    "--gin_file=gin/t5x/polylm_tiny.gin",
    "--gin_file=gin/t5x/infer.gin",
    f'--gin.CHECKPOINT_PATH="{run_dir[0] / "checkpoint_30"}"',
    f'--gin.INFER_OUTPUT_DIR="{out}"',
    f'--gin.MIXTURE_OR_TASK_NAME="{TASK}"',
    f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
  )
  (path,) = glob.glob(str(out / f"{TASK}-predict.jsonl-*-of-[0-9][0-9][0-9][0-9][0-9]"))
  return [json.loads(line) for line in open(path)]


@pytest.mark.slow
def test_t5x_infer_greedy_equals_polylm_generate(run_dir, infer_rows):
  config, params = polylm_jax.load(run_dir[0])
  assert len(infer_rows) >= 4
  for row in infer_rows:
    prompt, theirs = row["inputs"]["inputs"], row["prediction_tokens"]
    ours = decoding.generate(
      config, params, [prompt], config.max_len - len(prompt), include_eos=True
    )[0]
    assert len(ours) >= min(len(theirs), config.max_len - len(prompt))
    assert ours == theirs[: len(ours)]


@pytest.mark.slow
def test_t5x_eval_reports_seqio_metrics(workdir, run_dir, tmp_path):
  _t5x(
    "eval",
    workdir,
    "--gin_file=gin/t5x/polylm_tiny.gin",
    "--gin_file=gin/t5x/eval.gin",
    f'--gin.CHECKPOINT_PATH="{run_dir[0] / "checkpoint_30"}"',
    f'--gin.EVAL_OUTPUT_DIR="{tmp_path}"',
    f'--gin.MIXTURE_OR_TASK_NAME="{TASK}"',
    f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
  )
  (metrics,) = glob.glob(str(tmp_path / "inference_eval" / f"{TASK}-metrics.jsonl"))
  record = json.loads(open(metrics).read().splitlines()[-1])
  assert record["step"] == 30 and "bleu" in record


@pytest.mark.slow
def test_t5x_checkpoint_to_hf_to_project_gives_identical_logits(run_dir, tmp_path):
  from polylm_jax import convert
  from polylm_jax.model import PolyLM

  config, params = polylm_jax.load(run_dir[0] / "checkpoint_30")
  convert.convert(from_checkpoint=str(run_dir[0]), to_hf=str(tmp_path / "hf"))
  config_hf, params_hf = polylm_jax.load(tmp_path / "hf")
  assert config_hf == config
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, config.vocab_size, (2, 16)))
  a = PolyLM(config).apply({"params": params}, tokens)
  b = PolyLM(config_hf).apply({"params": params_hf}, tokens)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


# ---- decoding inside t5x, in process ----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
  config = get_config("polylm_tiny")
  model = t5x_model.PolyLMModel(
    t5x_model.PolyLMT5x(config),
    vocabulary=vocab_lib.get_vocabulary(),
    optimizer_def=t5x_optimizers.OptaxWrapper(optax.sgd(0.1)),
  )
  variables = model.get_initial_variables(
    jax.random.key(0), {"decoder_input_tokens": (1, config.max_len)}
  )
  return config, model, variables["params"]


PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17], [3, 4]]


def _prompt_batch(prompts, targets_length=12):
  conv = t5x_features.PolyLMFeatureConverter(pack=False)
  ds = tf.data.Dataset.from_generator(
    lambda: (
      {"inputs": np.array(p, np.int32), "targets": np.zeros(1, np.int32) + 2} for p in prompts
    ),
    output_signature={
      "inputs": tf.TensorSpec([None], tf.int32),
      "targets": tf.TensorSpec([None], tf.int32),
    },
  )
  rows = conv(ds, {"inputs": 12, "targets": targets_length}).batch(len(prompts))
  return {k: jnp.asarray(v) for k, v in next(rows.as_numpy_iterator()).items()}


def test_t5x_greedy_prediction_equals_generate_for_prompts_of_different_lengths(tiny_model):
  """The per-row cache index: each row decodes from its own prompt length."""
  config, model, params = tiny_model
  model._decode_fn = functools.partial(t5x_decoding.temperature_sample, temperature=0.0, topk=1)
  batch = _prompt_batch(PROMPTS)
  out = np.asarray(model.predict_batch_with_aux(params, batch)[0])
  width = batch["decoder_input_tokens"].shape[1]
  for i, p in enumerate(PROMPTS):
    n = width - len(p)  # t5x fills the row: prompt + new tokens = its length
    ours = decoding.generate(config, params, [p], n, include_eos=True)[0]
    assert out[i, : len(ours)].tolist() == ours


def test_t5x_sampling_with_num_decodes_3_and_beam_search_run(tiny_model):
  config, model, params = tiny_model
  batch = _prompt_batch(PROMPTS)
  width = batch["decoder_input_tokens"].shape[1]
  model._decode_fn = functools.partial(t5x_decoding.temperature_sample, temperature=1.0, topk=0)
  samples, aux = model.predict_batch_with_aux(
    params, batch, rng=jax.random.key(1), num_decodes=3, return_all_decodes=True
  )
  assert samples.shape == (3, 3, width) and aux["scores"].shape == (3, 3)
  assert len({tuple(s) for s in np.asarray(samples[1])}) > 1  # three different samples
  model._decode_fn = t5x_decoding.beam_search
  beams, aux = model.predict_batch_with_aux(params, batch, num_decodes=3, return_all_decodes=True)
  assert beams.shape == (3, 3, width)
  scores = np.asarray(aux["scores"])
  assert np.all(np.isfinite(scores)) and np.all(np.diff(scores, axis=1) >= 0)  # sorted
  assert np.all((np.asarray(beams) >= 0) & (np.asarray(beams) < config.vocab_size))


# ---- the adapter ------------------------------------------------------------------------


def test_params_axes_are_the_models_logical_axes(tiny_model):
  config, model, _ = tiny_model
  variables = t5x_model.PolyLMT5x(config).init(
    jax.random.key(0), jnp.ones((1, 4), jnp.int32), enable_dropout=False
  )
  want = traverse_util.flatten_dict(abstract_params(config))
  got = traverse_util.flatten_dict(
    flax_core.unfreeze(flax_partitioning.get_axis_names(variables["params_axes"]))
  )
  assert {k: tuple(v) for k, v in got.items()} == {k: v.names for k, v in want.items()}


def test_prefix_lm_attention_is_a_clear_error(tiny_model):
  config, _, params = tiny_model
  with pytest.raises(ValueError, match="prefix-LM"):
    t5x_model.PolyLMModel(
      t5x_model.PolyLMT5x(config),
      vocabulary=vocab_lib.get_vocabulary(),
      optimizer_def=None,
      inputs_bidirectional_attention=True,
    )
  tokens = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="prefix-LM"):
    t5x_model.PolyLMT5x(config).apply(
      {"params": params}, tokens, tokens, decoder_causal_attention=tokens
    )


def test_mesh_partitioner_builds_the_explicit_mesh_on_host_devices():
  assert jax.device_count() == 8  # tests/conftest.py
  mesh = t5x_model.MeshPartitioner(data=2, model=4).mesh
  assert dict(mesh.shape) == {"data": 2, "model": 4}
  assert dict(t5x_model.MeshPartitioner(model=2).mesh.shape) == {"data": 4, "model": 2}
  with pytest.raises(ValueError, match="data=3 x model=4"):
    _ = t5x_model.MeshPartitioner(data=3, model=4).mesh
  with pytest.raises(ValueError, match="model=3 does not divide"):
    _ = t5x_model.MeshPartitioner(model=3).mesh


# ---- data: the curriculum and the stage shares -------------------------------------------


def _stage_datasets(cfg, *args, **kwargs):
  return tf.data.Dataset.from_tensors(cfg.mixture_or_task_name).repeat()


def _config(name):
  return t5x_utils.DatasetConfig(name, {"targets": 64}, "train", 8, False, None)


def test_curriculum_switches_at_the_exact_step_and_resumes_in_stage_2(tmp_path):
  import tasks.t5x_pretrain  # noqa: F401  (registers the curriculum)

  fn = functools.partial(
    t5x_data.curriculum_dataset, total_steps=100, get_dataset_fn=_stage_datasets
  )
  cfg = _config("polylm_pretrain_curriculum")
  names = [n.decode() for n in fn(cfg, 0, 1, None).take(100).as_numpy_iterator()]
  assert names == ["polylm_pretrain_stage1"] * 80 + ["polylm_pretrain_stage2"] * 20
  (tmp_path / "checkpoint_50").mkdir()
  ds = fn(cfg, 0, 1, None, model_dir=str(tmp_path))
  names = [n.decode() for n in ds.take(50).as_numpy_iterator()]
  assert names == ["polylm_pretrain_stage1"] * 30 + ["polylm_pretrain_stage2"] * 20
  (tmp_path / "checkpoint_90").mkdir()  # killed after the switch
  ds = fn(cfg, 0, 1, None, model_dir=str(tmp_path))
  names = {n.decode() for n in ds.take(10).as_numpy_iterator()}
  assert names == {"polylm_pretrain_stage2"}
  # A plain mixture or task is t5x's own get_dataset.
  assert next(iter(fn(_config("polylm_en_sample"), 0, 1, None))).numpy() == b"polylm_en_sample"
  with pytest.raises(ValueError, match="TRAIN_STEPS"):
    t5x_data.curriculum_dataset(cfg, 0, 1, None, get_dataset_fn=_stage_datasets)


_SHARES = """
import collections, json, seqio
import tasks.t5x_pretrain
out = {}
for stage in ("stage1", "stage2"):
  ds = seqio.get_mixture_or_task(f"polylm_pretrain_{stage}").get_dataset(
    sequence_length=None, split="train", shuffle=False, seed=0, passthrough_features=["lang"])
  tokens = collections.Counter()
  for ex in ds.take(10000).as_numpy_iterator():
    tokens[bool(ex["lang"] != b"en")] += len(ex["targets"])
  out[stage] = tokens[True] / (tokens[True] + tokens[False])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_stage_mixtures_give_the_non_english_token_shares():
  """Measured on the sample corpus through seqio (10,000 documents of each mixture; in its
  own process: seqio's preprocessing state here is shared with the other tests)."""
  proc = subprocess.run(
    [sys.executable, "-c", _SHARES], capture_output=True, text=True, timeout=900, cwd=REPO
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  shares = json.loads(proc.stdout.strip().splitlines()[-1])
  assert abs(shares["stage1"] - 0.3) < 0.02, shares
  assert abs(shares["stage2"] - 0.6) < 0.02, shares


@pytest.mark.slow
def test_t5x_run_starts_from_hf_weights(workdir, run_dir, tmp_path):
  """Released weights into t5x in one command: an HF dir -> t5x checkpoint_0 -> a t5x run
  that starts from them (learning rate 0: the saved step holds exactly those weights)."""
  from polylm_jax import convert

  convert.convert(from_checkpoint=str(run_dir[0]), to_hf=str(tmp_path / "hf"))
  subprocess.run(
    [sys.executable, str(REPO / "tools" / "t5x_from_weights.py"), f"--from={tmp_path / 'hf'}"]
    + [f"--to={tmp_path / 'init'}"],
    check=True,
    capture_output=True,
  )
  _t5x(
    "train",
    workdir,
    "--gin_file=gin/t5x/polylm_tiny.gin",
    "--gin_file=gin/t5x/pretrain_sample.gin",
    "--gin_file=gin/t5x/from_weights.gin",
    f'--gin.INIT_CHECKPOINT="{tmp_path / "init" / "checkpoint_0"}"',
    f'--gin.MODEL_DIR="{tmp_path / "run"}"',
    "--gin.TRAIN_STEPS=1",
    "--gin.PEAK_LEARNING_RATE=0.0",
    "--gin.MIN_LEARNING_RATE=0.0",
  )
  _, want = polylm_jax.load(tmp_path / "hf", on_host=True)
  _, got = polylm_jax.load(tmp_path / "run" / "checkpoint_1", on_host=True)
  jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.slow
def test_t5x_finetune_on_multialpaca_from_a_t5x_checkpoint(workdir, run_dir, tmp_path):
  """finetune.gin on a small MultiAlpaca file: starts from the pre-training run's weights."""
  data = tmp_path / "multialpaca"
  data.mkdir()
  with open(data / "de.jsonl", "w") as f:
    for i in range(200):
      record = {"instruction": f"Zähle bis {i % 7}.", "input": "", "output": "eins zwei drei"}
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  root, env = workdir
  log = _t5x(
    "train",
    (root, dict(env, POLYLM_JAX_MULTIALPACA_DIR=str(data))),
    "--gin_file=gin/t5x/polylm_tiny.gin",
    "--gin_file=gin/t5x/finetune.gin",
    f'--gin.INITIAL_CHECKPOINT_PATH="{run_dir[0] / "checkpoint_30"}"',
    f'--gin.MODEL_DIR="{tmp_path / "sft"}"',
    '--gin.MIXTURE_OR_TASK_NAME="polylm_multialpaca_de"',
    f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
    "--gin.TRAIN_STEPS=33",
    "--gin.EVAL_PERIOD=3",
    "--gin.CHECKPOINT_PERIOD=3",
    "--gin.EVAL_STEPS=1",
    "--gin.PEAK_LEARNING_RATE=1e-3",
    "--gin.WARMUP_STEPS=1",
    "--gin.DECAY_STEPS=2",
  )
  assert "checkpoint_30" in log
  assert t5x_ckpt.steps(str(tmp_path / "sft"))[-1] == 33


_PARSE = """
import __main__, importlib, json, os, sys, gin
from t5x import gin_utils
from polylm_jax import config as polylm_config
__main__.train = importlib.import_module("t5x.train").train
search = [os.path.dirname(os.path.dirname(gin_utils.__file__))]
out = {}
for size, run in json.loads(sys.argv[1]):
  gin.clear_config()
  gin_utils.parse_gin_flags(
    search, [f"gin/t5x/{size}.gin", f"gin/t5x/{run}.gin"],
    ['MODEL_DIR="/tmp/x"', 'INITIAL_CHECKPOINT_PATH="/tmp/x"'])
  with gin.config_scope(None):
    cfg = gin.get_configurable(polylm_config.PolyLMConfig)()
  out[f"{size}+{run}"] = dict(cfg.to_dict(), batch=gin.query_parameter("%BATCH_SIZE"),
                              model_parallel=gin.query_parameter("%MODEL_PARALLEL"))
print(json.dumps(out))
"""


@pytest.mark.slow
def test_every_size_parses_with_the_run_gins_and_matches_the_presets():
  combos = [(s, "pretrain") for s in ("polylm_mid", "polylm_1_7b")]
  combos += [("polylm_13b", "pretrain_13b"), ("polylm_small", "finetune")]
  proc = subprocess.run(
    [sys.executable, "-c", _PARSE, json.dumps(combos)],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  arch = ("vocab_size", "num_layers", "d_model", "num_heads", "head_dim", "d_ff", "max_len")
  for size, run in combos:
    cfg = got[f"{size}+{run}"]
    assert {k: cfg[k] for k in arch} == {k: getattr(get_config(size), k) for k in arch}
  assert got["polylm_13b+pretrain_13b"]["batch"] == 2048
  assert got["polylm_13b+pretrain_13b"]["remat_policy"] == "full"
  assert got["polylm_1_7b+pretrain"]["batch"] == 512
  assert got["polylm_1_7b+pretrain"]["dtype"] == "bfloat16"
