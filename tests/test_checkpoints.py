"""Orbax run checkpoints: sharded round trip, keep-K, never a half-written latest, load()."""

import os
import shutil
import signal
import subprocess
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from polylm_jax import checkpoints as ck
from polylm_jax import hf
from polylm_jax import partitioning as pt
from polylm_jax.config import get_config
from polylm_jax.model import init_params

CFG = get_config("polylm_tiny")
SYNC = ck.CheckpointPolicy(save_every=1, keep=None, async_save=False)


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def mesh():
  return pt.make_mesh(data=2, fsdp=2, tensor=2)


def test_sharded_round_trip_of_every_item(tmp_path, params, mesh):
  shardings = pt.param_shardings(CFG, mesh)
  sharded = pt.shard_params(params, shardings)
  tx = optax.adamw(1e-3)
  opt_state = jax.jit(tx.init)(sharded)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), sharded)
  opt_state = jax.jit(lambda g, s, p: tx.update(g, s, p)[1])(grads, opt_state, sharded)
  rng = jax.random.key(42)
  stream = {"position": 1234, "stage": 1, "sources": {"en": [1, 2]}}
  gin_text = "train.TRAIN_STEPS = 10\n"
  policy = ck.CheckpointPolicy(save_every=10, keep=3, async_save=True)
  with ck.CheckpointManager(tmp_path, CFG, policy) as manager:
    assert manager.save(
      10, sharded, opt_state=opt_state, rng=rng, stream_state=stream, gin_config=gin_text
    )
  assert ck.complete_steps(tmp_path / "checkpoints") == [10]

  with ck.CheckpointManager(tmp_path, CFG, policy) as manager:
    assert manager.latest_step() == 10
    opt_target = ck.shape_dtype_structs(opt_state, jax.tree.map(lambda x: x.sharding, opt_state))
    restored = manager.restore(mesh=mesh, opt_state_target=opt_target)
  assert restored.step == 10 and restored.config == CFG
  assert_trees_equal(restored.params, params)
  assert_trees_equal(restored.opt_state, opt_state)
  assert restored.stream_state == stream and restored.gin_config == gin_text
  np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(rng))
  # Restored straight onto the mesh: really split, with the requested shardings.
  qkv = restored.params["layers"]["attn"]["qkv_kernel"]
  assert qkv.sharding == shardings["layers"]["attn"]["qkv_kernel"]
  assert qkv.addressable_shards[0].data.shape == (
    CFG.num_layers,
    CFG.d_model // 2,
    3,
    CFG.num_heads // 2,
    CFG.head_dim,
  )
  mu = restored.opt_state[0].mu["layers"]["mlp"]["fc1_kernel"]
  assert mu.addressable_shards[0].data.shape == (CFG.num_layers, CFG.d_model // 2, CFG.d_ff // 2)


def test_save_policy_and_keep_last_k(tmp_path, params):
  policy = ck.CheckpointPolicy(save_every=2, keep=2, async_save=True)
  with ck.CheckpointManager(tmp_path, CFG, policy) as manager:
    saved = [s for s in range(1, 10) if manager.save(s, params)]
    assert manager.save(9, params, force=True)  # e.g. on SIGTERM
  assert saved == [2, 4, 6, 8]
  assert ck.complete_steps(tmp_path / "checkpoints") == [8, 9]


def test_only_forced_saves_when_save_every_is_zero(tmp_path, params):
  with ck.CheckpointManager(tmp_path, CFG, ck.CheckpointPolicy(save_every=0)) as manager:
    assert not manager.should_save(1000)
    assert manager.save(7, params, force=True)
    assert not manager.save(7, params, force=True)  # an existing step is left alone
  assert ck.complete_steps(tmp_path / "checkpoints") == [7]


def test_half_written_step_is_never_latest(tmp_path, params):
  with ck.CheckpointManager(tmp_path, CFG, SYNC) as manager:
    manager.save(2, params)
    manager.save(4, jax.tree.map(lambda x: x + 1, params))
  root = tmp_path / "checkpoints"
  # What a kill during an async write leaves: Orbax's temporary dir, some items written.
  tmp_step = root / "6.orbax-checkpoint-tmp"
  shutil.copytree(root / "4", tmp_step)
  shutil.rmtree(tmp_step / "meta")
  (tmp_step / "commit_success.txt").unlink()
  assert ck.complete_steps(root) == [2, 4]
  with ck.CheckpointManager(tmp_path, CFG, SYNC, read_only=True) as manager:
    assert manager.latest_step() == 4
    assert manager.restore().step == 4
  config, loaded = ck.load(tmp_path)
  assert_trees_equal(loaded, jax.tree.map(lambda x: x + 1, params))
  with pytest.raises(FileNotFoundError, match="no complete checkpoint for step 6"):
    ck.load(tmp_path, step=6)
  # A writing manager clears the debris (before its first save).
  with ck.CheckpointManager(tmp_path, CFG, SYNC) as manager:
    manager.save(8, params)
  assert not tmp_step.exists()
  assert ck.complete_steps(root) == [2, 4, 8]


KILL_DURING_SAVE = """
import os, signal, sys, time
import flax.linen as nn, jax, numpy as np
from polylm_jax import checkpoints as ck
from polylm_jax.config import get_config
from polylm_jax.model import abstract_params

def random_params(config, offset):
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32) + offset,
                      nn.unbox(abstract_params(config)))

config = get_config("polylm_tiny", vocab_size=200_000)  # ~50 MB: the write takes a while
if __name__ == "__main__":
  with ck.CheckpointManager(sys.argv[1], config, ck.CheckpointPolicy(save_every=1)) as manager:
    manager.save(1, random_params(config, 0.0))
    manager.wait_until_finished()
    hold = os.environ["POLYLM_JAX_TEST_HOLD_COMMIT"]  # checkpoints.py holds step 2's commit
    open(hold, "w").close()
    manager.save(2, random_params(config, 1.0))
    deadline = time.time() + 120
    while not os.path.exists(hold + ".held") and time.time() < deadline:
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)  # dies while step 2 is written but not committed
"""


@pytest.mark.slow
def test_killed_during_async_save_keeps_the_previous_step(tmp_path):
  hold = tmp_path / "hold"
  done = subprocess.run(
    [sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path / "run")],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "POLYLM_JAX_TEST_HOLD_COMMIT": str(hold)},
  )
  assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
  assert (tmp_path / "hold.held").exists()  # the kill landed while step 2's write was held
  root = tmp_path / "run" / "checkpoints"
  leftovers = [p.name for p in root.iterdir() if ".orbax-checkpoint-tmp" in p.name]
  assert leftovers == ["2.orbax-checkpoint-tmp"] and any((root / leftovers[0]).iterdir())
  steps = ck.complete_steps(root)
  assert steps == [1], steps
  helpers: dict = {"__name__": "helpers"}
  exec(KILL_DURING_SAVE, helpers)  # pylint: disable=exec-used  (defines random_params)
  config, params = ck.load(tmp_path / "run", on_host=True)
  assert_trees_equal(params, helpers["random_params"](config, 0.0))


def test_in_flight_async_save_is_not_latest_and_donation_after_save_is_safe(tmp_path, params):
  state = jax.tree.map(jnp.copy, params)
  expected = jax.tree.map(lambda x: np.array(x, copy=True), state)  # no view of the buffers
  bump = jax.jit(lambda p: jax.tree.map(lambda x: x * 2.0, p), donate_argnums=0)
  with ck.CheckpointManager(tmp_path, CFG, ck.CheckpointPolicy(save_every=1)) as manager:
    manager.save(1, params)
    manager.wait_until_finished()
    assert manager.save(2, state)
    # Orbax already lists step 2; only a finished write may count as latest.
    assert manager.latest_step() in (1, 2)
    assert manager.latest_step() in ck.complete_steps(manager.directory)
    donated = state
    state = bump(state)  # donate the saved buffers right after save() returned
    assert donated["wte"].is_deleted()
    manager.wait_until_finished()
    assert manager.latest_step() == 2
    assert_trees_equal(manager.restore(2).params, expected)


def test_saving_host_arrays_without_a_copy(tmp_path, params):
  host = jax.tree.map(lambda x: np.array(x, copy=True), params)
  opt_state = optax.adam(1e-3).init(host)
  with ck.CheckpointManager(tmp_path, CFG, SYNC, copy_host_arrays=False) as manager:
    assert manager.save(1, host, opt_state=opt_state, stream_state={"a": 1})
    opt_target = jax.eval_shape(optax.adam(1e-3).init, params)
    restored = manager.restore(1, opt_state_target=opt_target)
  assert_trees_equal(restored.params, params)
  assert_trees_equal(restored.opt_state, opt_state)
  assert restored.stream_state == {"a": 1}
  # The on-disk format is the standard one.
  with ck.CheckpointManager(tmp_path, CFG, SYNC, read_only=True) as manager:
    assert_trees_equal(manager.restore(1).params, params)


def test_config_mismatch_names_the_field(tmp_path, params):
  with ck.CheckpointManager(tmp_path, CFG, SYNC) as manager:
    manager.save(1, params)
  for field, value, pattern in (
    ("d_ff", 128, r"d_ff: checkpoint 256 vs requested 128"),
    ("vocab_size", 1000, r"different vocabulary.*vocab_size"),
    ("num_layers", 3, r"num_layers: checkpoint 2"),
  ):
    with ck.CheckpointManager(
      tmp_path, CFG.replace(**{field: value}), SYNC, read_only=True
    ) as manager:
      with pytest.raises(ck.ConfigMismatchError, match=pattern):
        manager.restore()
    with pytest.raises(ck.ConfigMismatchError, match=field):
      ck.load(tmp_path, CFG.replace(**{field: value}))
  # Numerics may differ: restore computes in bf16 with the same weights.
  config, loaded = ck.load(tmp_path, CFG.replace(dtype="bfloat16", remat_policy="full"))
  assert config.dtype == "bfloat16"
  assert_trees_equal(loaded, params)


def test_params_only_checkpoint_restores_without_opt_state(tmp_path, params):
  with ck.CheckpointManager(tmp_path, CFG, SYNC) as manager:
    manager.save(3, params, rng=jnp.array([0, 7], jnp.uint32))
  with ck.CheckpointManager(tmp_path, CFG, SYNC, read_only=True) as manager:
    opt_target = jax.eval_shape(optax.adamw(1e-3).init, params)
    restored = manager.restore(opt_state_target=opt_target)
  assert restored.opt_state is None and restored.stream_state is None
  assert restored.gin_config is None
  np.testing.assert_array_equal(restored.rng, [0, 7])  # a raw uint32 key stays raw
  assert restored.rng.dtype == jnp.uint32


def test_load_run_checkpoints_and_step_dirs(tmp_path, params):
  with ck.CheckpointManager(tmp_path, CFG, SYNC) as manager:
    manager.save(5, params)
    manager.save(9, jax.tree.map(lambda x: x * 3, params))
  for path, factor in (
    (tmp_path, 3),
    (tmp_path / "checkpoints", 3),
    (tmp_path / "checkpoints" / "5", 1),
  ):
    config, loaded = ck.load(path)
    assert config == CFG
    assert_trees_equal(loaded, jax.tree.map(lambda x, f=factor: x * f, params))
  config, loaded = ck.load(tmp_path, step=5)
  assert_trees_equal(loaded, params)


def test_load_on_host_gives_numpy(tmp_path, params):
  with ck.CheckpointManager(tmp_path / "bf16", CFG.replace(param_dtype="bfloat16"), SYNC) as m:
    m.save(1, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
  config, loaded = ck.load(tmp_path / "bf16", on_host=True)
  assert isinstance(loaded["layers"]["attn"]["qkv_kernel"], np.ndarray)
  assert loaded["wte"].dtype == hf.np_dtype("bfloat16") and config.param_dtype == "bfloat16"
  assert_trees_equal(loaded, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
  # One manager serves host reads (PyTree restore) and device restores (Standard) alike.
  with ck.CheckpointManager(tmp_path / "bf16", None, read_only=True) as manager:
    read = manager.host_param_reader(1)
    fc1 = read(("layers", "mlp", "fc1_kernel"))
    assert isinstance(fc1, np.ndarray) and fc1.shape == params["layers"]["mlp"]["fc1_kernel"].shape
    assert manager.restore(on_host=True).config.param_dtype == "bfloat16"
    restored = manager.restore()
    assert isinstance(restored.params["wte"], jax.Array)
    assert_trees_equal(restored.params, loaded)


def test_load_onto_a_mesh(tmp_path, params, mesh):
  with ck.CheckpointManager(tmp_path, CFG, SYNC) as manager:
    manager.save(1, params)
  _, loaded = ck.load(tmp_path, mesh=mesh)
  assert loaded["wte"].sharding == pt.param_shardings(CFG, mesh)["wte"]
  assert_trees_equal(loaded, params)


def test_load_hf_directory(tmp_path, params):
  hf.export_hf(CFG, params, tmp_path)
  config, loaded = ck.load(tmp_path)
  assert config == CFG
  assert_trees_equal(loaded, params)
  assert isinstance(loaded["wte"], jax.Array)
  with pytest.raises(hf.HFFormatError, match="d_ff"):
    ck.load(tmp_path, CFG.replace(d_ff=128))


def test_load_of_something_else_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such directory"):
    ck.load(tmp_path / "nope")
  (tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp").mkdir(parents=True)
  with pytest.raises(
    FileNotFoundError,
    match=r"neither a Hugging Face model directory .* nor "
    r"a checkpoint directory.*only unfinished checkpoints",
  ):
    ck.load(tmp_path)


def test_policy_validation():
  with pytest.raises(ValueError, match="keep"):
    ck.CheckpointPolicy(keep=0)
  with pytest.raises(ValueError, match="save_every"):
    ck.CheckpointPolicy(save_every=-1)


# -- damaged checkpoints (issue 11): one line naming the step and file; the newest intact one ----


def _largest_data_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir / "params") for f in fs]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncated_params", "empty_metadata"])
def test_damaged_step_is_one_line_and_restore_intact_skips_it(tmp_path, params, damage):
  with ck.CheckpointManager(tmp_path, CFG, SYNC) as manager:
    manager.save(5, params)
    manager.save(9, jax.tree.map(lambda x: x * 3, params))
  step_dir = tmp_path / "checkpoints" / "9"
  if damage == "truncated_params":
    victim = _largest_data_file(step_dir)
    os.truncate(victim, 100)
  else:
    victim = str(step_dir / "params" / "_METADATA")
    open(victim, "w").close()
  with pytest.raises(ck.CorruptCheckpointError) as e:
    ck.load(tmp_path)
  message = str(e.value)
  assert "\n" not in message and len(message) < 400, message
  assert "step 9" in message and "older complete steps: [5]" in message
  assert (victim if damage == "empty_metadata" else str(step_dir / "params")) in message
  assert e.value.older_steps == [5]
  with ck.CheckpointManager(tmp_path, None, read_only=True) as manager:
    restored = manager.restore_intact()
    assert restored.step == 5 and len(restored.skipped) == 1 and "step 9" in restored.skipped[0]
    assert_trees_equal(restored.params, params)
    with pytest.raises(ck.CorruptCheckpointError):  # restore() still means the latest step
      manager.restore()


def test_restore_intact_when_every_step_is_damaged(tmp_path, params):
  with ck.CheckpointManager(tmp_path, CFG, SYNC) as manager:
    manager.save(5, params)
  open(tmp_path / "checkpoints" / "5" / "params" / "_METADATA", "w").close()
  with ck.CheckpointManager(tmp_path, CFG, read_only=True) as manager:
    with pytest.raises(ck.CorruptCheckpointError, match="every checkpoint is damaged: .*step 5"):
      manager.restore_intact()
