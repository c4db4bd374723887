"""Orbax checkpoints of a run, and `load`: one entry point for run dirs and HF model dirs.

Layout: MODEL_DIR/checkpoints/<step>/{params, opt_state, meta, model_config, stream_state,
gin_config}. Orbax writes each step under `<step>.orbax-checkpoint-tmp` and renames it when
complete, so only finalised steps are ever listed here; `latest_step` reads the directory
rather than the manager's in-memory list, which already names a step while its async write
is still running.

Saving is asynchronous: `save` returns once the arrays are copied off the device buffers
(SPEC 8), so the caller may donate them to the next step right after; it must not call
`save` with buffers that were already donated.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, SingleDeviceSharding
from orbax.checkpoint import checkpoint_managers as ocp_policies

from polylm_jax import hf
from polylm_jax.config import PolyLMConfig
from polylm_jax.model import abstract_params

CHECKPOINTS_SUBDIR = "checkpoints"
_ARRAY_ITEMS = ("params", "opt_state")
_JSON_ITEMS = ("meta", "model_config", "stream_state", "gin_config")
_SMALL_FILE_BYTES = 16 << 20
FORMAT_VERSION = 1
ARCH_FIELDS = hf.ARCH_FIELDS


class ConfigMismatchError(ValueError):
  """A checkpoint's model config differs from the one it is restored into."""


class CorruptCheckpointError(ValueError):
  """A finalised step cannot be read (a truncated or emptied file); the message is one line
  naming the step and the file. `older_steps`: the complete steps before it."""

  def __init__(self, message: str, step: int, path: str, older_steps: list[int]):
    super().__init__(message)
    self.step, self.path, self.older_steps = step, path, older_steps


# Orbax's small JSON files of a step: an empty or unparsable one is named exactly.
_JSON_FILES = ("_CHECKPOINT_METADATA", "_METADATA", "metadata", "_sharding", "process_0")


def damaged_file(step_dir: str) -> str | None:
  """The first empty or malformed metadata file under a step directory, or None."""
  import json

  for root, _, files in sorted(os.walk(step_dir)):
    for name in sorted(files):
      path = os.path.join(root, name)
      if os.path.getsize(path) == 0 and name != "commit_success.txt":
        return path
      if name in _JSON_FILES:
        try:
          with open(path, "rb") as f:
            json.loads(f.read())
        except (ValueError, UnicodeDecodeError):
          return path
  return None


def _is_damage(error: BaseException, step_dir: str) -> bool:
  """Whether a restore error means damaged files (not, say, a target of the wrong shape)."""
  text = str(error)
  return (
    damaged_file(step_dir) is not None
    or isinstance(error, (OSError, UnicodeDecodeError))
    or type(error).__name__ == "JSONDecodeError"
    or any(s in text for s in ("TensorStore", "error while reading", "DATA_LOSS", "OUT_OF_RANGE"))
  )


def _unreadable(directory: str, step: int, error: BaseException) -> CorruptCheckpointError:
  """A one-line error for a step Orbax/TensorStore failed to read (their messages run to
  hundreds of lines): the damaged file if one is found, else the item and array named."""
  import re

  step_dir = os.path.join(directory, str(step))
  text = str(error)
  path = damaged_file(step_dir)
  if path is None:
    items = re.findall(re.escape(step_dir) + r"/(\w+)/", text)
    arrays = [a for a in re.findall(r"'path': '([\w/.]+?)/?'", text) if not a.startswith("/")]
    path = os.path.join(step_dir, items[0]) if items else step_dir
    if arrays and items:
      path += f" (array {arrays[0]})"
  first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
  if "TensorStore" in first or "error while reading" in first:
    first = "array data cannot be read (a truncated or corrupted file)"
  older = [s for s in complete_steps(directory) if s < step]
  return CorruptCheckpointError(
    f"checkpoint step {step} is damaged: {path}: {first[:160]}; "
    + (f"older complete steps: {older}" if older else "no older complete step"),
    step,
    path,
    older,
  )


@dataclasses.dataclass(frozen=True)
class CheckpointPolicy:
  """When to save and what to keep. save_every=0 saves only when forced; keep=None keeps all."""

  save_every: int = 1000
  keep: int | None = 3
  async_save: bool = True

  def __post_init__(self):
    if self.save_every < 0:
      raise ValueError(f"CheckpointPolicy.save_every must be >= 0, got {self.save_every}")
    if self.keep is not None and self.keep < 1:
      raise ValueError(f"CheckpointPolicy.keep must be >= 1 or None, got {self.keep}")


@dataclasses.dataclass
class Restored:
  """What one checkpoint holds; optional items are None when the step lacks them."""

  step: int
  config: PolyLMConfig
  params: Any
  opt_state: Any = None
  rng: jax.Array | None = None
  stream_state: dict[str, Any] | None = None
  gin_config: str | None = None
  skipped: tuple[str, ...] = ()  # restore_intact: why each newer step was passed over


def complete_steps(directory: str | os.PathLike) -> list[int]:
  """Finalised steps under `directory`, ascending (temporary step dirs are skipped)."""
  if not os.path.isdir(directory):
    return []
  fmt = ocp.path.step.standard_name_format()
  return sorted(m.step for m in fmt.find_all(os.path.abspath(directory)))


def check_config(saved: PolyLMConfig, requested: PolyLMConfig, where: str) -> None:
  """Raises ConfigMismatchError naming every architecture field that differs."""
  diffs = [f for f in ARCH_FIELDS if getattr(saved, f) != getattr(requested, f)]
  if diffs:
    details = ", ".join(
      f"{f}: checkpoint {getattr(saved, f)!r} vs requested {getattr(requested, f)!r}" for f in diffs
    )
    hint = " (a different vocabulary)" if "vocab_size" in diffs else ""
    raise ConfigMismatchError(f"{where}: model config mismatch{hint}: {details}")


def config_from_json(d: dict[str, Any], where: str) -> PolyLMConfig:
  """A saved config dict; fields this version does not know are dropped with a warning."""
  known = {f.name for f in dataclasses.fields(PolyLMConfig)}
  unknown = sorted(set(d) - known)
  if unknown:
    logging.warning("%s: ignoring unknown model config fields %s", where, unknown)
  return PolyLMConfig.from_dict({k: v for k, v in d.items() if k in known})


def shape_dtype_structs(tree: Any, shardings: Any) -> Any:
  """Restore targets: the shapes and dtypes of `tree` placed with `shardings`."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def param_structs(config: PolyLMConfig, mesh: Mesh | None = None) -> Any:
  """Abstract params of `config` sharded over `mesh` (or on the first local device)."""
  boxed = abstract_params(config)
  # nn.unbox would add sharding constraints, which fail on ShapeDtypeStructs inside a mesh.
  structs = jax.tree.map(
    lambda b: b.unbox(apply_constraint=False),
    boxed,
    is_leaf=lambda x: isinstance(x, nn.Partitioned),
  )
  if mesh is None:
    device = SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, structs)
  else:
    from polylm_jax import partitioning  # pylint: disable=import-outside-toplevel

    shardings = partitioning.logical_shardings(boxed, mesh)
  return shape_dtype_structs(structs, shardings)


def _rng_to_json(rng: Any) -> dict[str, Any] | None:
  if rng is None:
    return None
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    data = np.asarray(jax.random.key_data(rng))
    return {"impl": str(jax.random.key_impl(rng)), "dtype": str(data.dtype), "data": data.tolist()}
  data = np.asarray(rng)
  return {"impl": None, "dtype": str(data.dtype), "data": data.tolist()}


def _rng_from_json(d: dict[str, Any] | None) -> jax.Array | None:
  if d is None:
    return None
  data = np.asarray(d["data"], dtype=d["dtype"])
  if d["impl"] is None:
    return jax.numpy.asarray(data)
  return jax.random.wrap_key_data(data, impl=d["impl"])


class CheckpointManager:
  """Saves and restores the state of one run under MODEL_DIR/checkpoints.

  `config` is the model being saved or restored into; None (for reading only) takes each
  step's saved config as it is. `subdir=""` manages `model_dir` itself as the checkpoint root. Use as a context manager
  (or call `close`) so the last async save is finished before the process exits.
  """

  def __init__(
    self,
    model_dir: str | os.PathLike,
    config: PolyLMConfig | None,
    policy: CheckpointPolicy = CheckpointPolicy(),
    *,
    read_only: bool = False,
    subdir: str = CHECKPOINTS_SUBDIR,
    copy_host_arrays: bool = True,
  ):
    self.config = config
    # Orbax deep-copies numpy leaves before writing, and TensorStore holds each encoded
    # array until it is written: together another whole model in memory. The converter saves
    # numpy params synchronously and never touches them meanwhile, so it turns the copy off
    # and caps OCDBT data files (hence chunks in flight) at _SMALL_FILE_BYTES. The format
    # on disk is the standard one either way.
    self._copy_host_arrays = copy_host_arrays
    self.policy = policy
    self.directory = os.path.abspath(os.path.join(os.fspath(model_dir), subdir))
    if not read_only:
      os.makedirs(self.directory, exist_ok=True)
    save_policy = (
      ocp_policies.FixedIntervalPolicy(policy.save_every)
      if policy.save_every
      else ocp_policies.SpecificStepsPolicy(steps=())
    )
    options = ocp.CheckpointManagerOptions(
      save_interval_steps=0 if read_only else 1,  # unused (save_decision_policy rules)
      save_decision_policy=save_policy,
      preservation_policy=ocp_policies.LatestN(policy.keep),
      cleanup_tmp_directories=not read_only,
      enable_async_checkpointing=policy.async_save,
      read_only=read_only,
      create=not read_only,
      temporary_path_class=_held_commit(os.environ.get("POLYLM_JAX_TEST_HOLD_COMMIT")),
    )
    # Array items use PyTreeCheckpointHandler (what StandardSave wraps) so that one manager
    # can restore a whole tree onto shardings and single leaves to host memory alike.
    handlers = [
      (ty, ocp.type_handlers.get_type_handler(ty)) for ty in ocp.type_handlers.supported_types()
    ]
    if not copy_host_arrays:
      handlers = [
        (ty, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False) if ty is np.ndarray else h)
        for ty, h in handlers
      ]
    registry = ocp.type_handlers.create_type_handler_registry(*handlers)
    item_handlers: dict[str, Any] = {
      name: ocp.PyTreeCheckpointHandler(type_handler_registry=registry) for name in _ARRAY_ITEMS
    }
    item_handlers.update({name: ocp.JsonCheckpointHandler() for name in _JSON_ITEMS})
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_handlers=item_handlers
    )

  # -- steps -----------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    """The newest completely written step on disk, or None."""
    steps = complete_steps(self.directory)
    return steps[-1] if steps else None

  def all_steps(self) -> list[int]:
    return complete_steps(self.directory)

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  def reached_preemption(self, step: int) -> bool:
    """True once a preemption notice reached every host (save now, with force=True)."""
    return self._manager.reached_preemption(step)

  # -- save ------------------------------------------------------------------------------

  def save(
    self,
    step: int,
    params: Any,
    *,
    opt_state: Any = None,
    rng: Any = None,
    stream_state: dict[str, Any] | None = None,
    gin_config: str | None = None,
    force: bool = False,
  ) -> bool:
    """Starts saving `step` if the policy (or `force`) says so; returns whether it did.

    Returns once the arrays are copied to host memory; the write finishes in the
    background. A step that was already saved is left alone.
    """
    if not force and not self._manager.should_save(step):
      return False  # most steps: nothing to build (the trainer asks every step)
    if step in self._manager.all_steps():
      logging.info("checkpoint for step %d already exists in %s", step, self.directory)
      return False
    items: dict[str, Any] = {
      "params": self._save_arrays(params),
      "meta": ocp.args.JsonSave(
        {"format_version": FORMAT_VERSION, "step": int(step), "rng": _rng_to_json(rng)}
      ),
      "model_config": ocp.args.JsonSave(self._config_for_save().to_dict()),
    }
    if opt_state is not None:
      items["opt_state"] = self._save_arrays(opt_state)
    if stream_state is not None:
      items["stream_state"] = ocp.args.JsonSave(stream_state)
    if gin_config is not None:
      items["gin_config"] = ocp.args.JsonSave({"text": gin_config})
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def _save_arrays(self, tree: Any) -> ocp.args.CheckpointArgs:
    if self._copy_host_arrays:
      return ocp.args.PyTreeSave(tree)
    return ocp.args.PyTreeSave(tree, ocdbt_target_data_file_size=_SMALL_FILE_BYTES)

  # -- restore ---------------------------------------------------------------------------

  def _restore_arrays(self, target: Any) -> ocp.args.CheckpointArgs:
    """Restore args onto a tree of ShapeDtypeStructs (with shardings), cast to their dtypes."""
    return ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
    )

  def saved_config(self, step: int) -> PolyLMConfig:
    where = os.path.join(self.directory, str(step), "model_config")
    d = self._restore_json(step, "model_config")
    if d is None:
      raise FileNotFoundError(f"{where}: missing: not a PolyLM checkpoint step")
    return config_from_json(d, where)

  def _checked_config(self, step: int) -> PolyLMConfig:
    """This manager's config after checking it against the step's, or the step's own."""
    saved = self.saved_config(step)
    if self.config is None:
      return saved
    check_config(saved, self.config, os.path.join(self.directory, str(step)))
    return self.config

  def _config_for_save(self) -> PolyLMConfig:
    if self.config is None:
      raise ValueError(f"{self.directory}: a CheckpointManager without a config cannot save")
    return self.config

  def _has(self, step: int, item: str) -> bool:
    return os.path.isdir(os.path.join(self.directory, str(step), item))

  def saved_stream_state(self, step: int) -> Any:
    """The JSON the trainer saved with `step` (data position and counters), or None."""
    return self._restore_json(step, "stream_state")

  def _restore_json(self, step: int, item: str) -> Any:
    if not self._has(step, item):
      return None
    out = self._manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))
    return out[item]

  def restore(
    self,
    step: int | None = None,
    *,
    params_target: Any = None,
    opt_state_target: Any = None,
    mesh: Mesh | None = None,
    on_host: bool = False,
  ) -> Restored:
    """Restores `step` (default: latest complete) onto abstract targets with shardings.

    The saved model config is checked against this manager's config first; a mismatch in
    any architecture field raises ConfigMismatchError before any array is read. Without
    `params_target` params land sharded over `mesh` (or on one device); `on_host=True`
    gives numpy params instead (one copy in host memory, e.g. for export). The optimiser
    state is restored only when `opt_state_target` is given and the step holds one.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"{self.directory}: no complete checkpoint")
    elif step not in complete_steps(self.directory):
      raise FileNotFoundError(
        f"{self.directory}: no complete checkpoint for step {step}; "
        f"complete steps: {complete_steps(self.directory)}"
      )
    try:
      config = self._checked_config(step)
      return self._read_step(step, config, params_target, opt_state_target, mesh, on_host)
    except (ConfigMismatchError, FileNotFoundError):
      raise
    except Exception as e:  # Orbax / TensorStore / json: hundreds of lines, or misleading
      if not _is_damage(e, os.path.join(self.directory, str(step))):
        raise
      raise _unreadable(self.directory, step, e) from e

  def restore_intact(self, **kwargs: Any) -> Restored:
    """The newest step that reads back whole (`restore`'s keyword arguments).

    Damaged newer steps are passed over; `Restored.skipped` says which and why (one line
    each, for the caller to print). Raises CorruptCheckpointError if no step is readable,
    FileNotFoundError if there is none.
    """
    steps = complete_steps(self.directory)
    if not steps:
      raise FileNotFoundError(f"{self.directory}: no complete checkpoint")
    skipped: list[str] = []
    for step in reversed(steps):
      try:
        restored = self.restore(step, **kwargs)
      except CorruptCheckpointError as e:
        skipped.append(str(e).split("; older complete steps")[0].split("; no older")[0])
        if step == steps[0]:
          raise CorruptCheckpointError(
            f"{self.directory}: every checkpoint is damaged: " + "; ".join(skipped),
            e.step,
            e.path,
            [],
          ) from None
        continue
      return dataclasses.replace(restored, skipped=tuple(skipped))
    raise AssertionError("unreachable")

  def _read_step(
    self,
    step: int,
    config: PolyLMConfig,
    params_target: Any,
    opt_state_target: Any,
    mesh: Mesh | None,
    on_host: bool,
  ) -> Restored:
    items: dict[str, Any] = {"meta": ocp.args.JsonRestore()}
    if on_host:  # leaf by leaf: Orbax's whole-tree read holds ~1.5x the model at its peak
      read = self._leaf_reader(step, config)
      params: dict[str, Any] = {}
      for path in hf.param_shapes(config):
        node = params
        for key in path[:-1]:
          node = node.setdefault(key, {})
        node[path[-1]] = read(path)
    else:
      items["params"] = self._restore_arrays(
        params_target if params_target is not None else param_structs(config, mesh)
      )
    if opt_state_target is not None and self._has(step, "opt_state"):
      items["opt_state"] = self._restore_arrays(opt_state_target)
    for name in ("stream_state", "gin_config"):
      if self._has(step, name):
        items[name] = ocp.args.JsonRestore()
    out = self._manager.restore(step, args=ocp.args.Composite(**items))
    meta = out["meta"]
    gin = out["gin_config"]["text"] if "gin_config" in items else None
    if not on_host:
      params = out["params"]
    return Restored(
      step=int(meta["step"]),
      config=config,
      params=params,
      opt_state=out["opt_state"] if "opt_state" in items else None,
      rng=_rng_from_json(meta.get("rng")),
      stream_state=out["stream_state"] if "stream_state" in items else None,
      gin_config=gin,
    )

  def host_param_reader(self, step: int) -> Callable[[tuple[str, ...]], np.ndarray]:
    """A function path -> one stacked param leaf as numpy, read alone from `step`.

    Exporting leaf by leaf keeps one leaf in memory instead of the whole model. The saved
    config is checked against this manager's config first.
    """
    return self._leaf_reader(step, self._checked_config(step))

  def _leaf_reader(
    self, step: int, config: PolyLMConfig
  ) -> Callable[[tuple[str, ...]], np.ndarray]:
    dtype = hf.np_dtype(config.param_dtype)
    shapes = hf.param_shapes(config)

    def read(path: tuple[str, ...]) -> np.ndarray:
      item: Any = jax.ShapeDtypeStruct(shapes[path], dtype)
      args: Any = ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype)
      for key in reversed(path):
        item, args = {key: item}, {key: args}
      out = self._manager.restore(
        step,
        args=ocp.args.Composite(
          params=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)
        ),
      )["params"]
      for key in path:
        out = out[key]
      return out

    return read

  # -- lifecycle -------------------------------------------------------------------------

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "CheckpointManager":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


# --------------------------------------------------------------------------------------------
# polylm_jax.load


def resolve_checkpoint(path: str | os.PathLike, step: int | None = None) -> tuple[str, int]:
  """(checkpoint root, step) for a run dir, a checkpoints dir, or one step dir.

  The step defaults to the latest complete one; errors say what was looked for.
  """
  path = os.fspath(path)
  for root in (os.path.join(path, CHECKPOINTS_SUBDIR), path):
    steps = complete_steps(root)
    if steps:
      if step is None:
        return root, steps[-1]
      if step not in steps:
        raise FileNotFoundError(
          f"{root}: no complete checkpoint for step {step}; complete steps: {steps}"
        )
      return root, step
  parent, name = os.path.split(os.path.normpath(path))
  if name.isdigit() and int(name) in complete_steps(parent):
    if step is not None and step != int(name):
      raise ValueError(f"{path} is the checkpoint of step {name}, not step {step}")
    return parent, int(name)
  unfinished = [
    n
    for d in (path, os.path.join(path, CHECKPOINTS_SUBDIR))
    if os.path.isdir(d)
    for n in os.listdir(d)
    if ".orbax-checkpoint-tmp" in n
  ]
  raise FileNotFoundError(
    f"{path}: neither a Hugging Face model directory ({hf.CONFIG_FILE} with "
    f"{hf.SAFETENSORS_FILE}, {hf.SAFETENSORS_INDEX}, {hf.BIN_FILE} or {hf.BIN_INDEX}) nor a "
    f"checkpoint directory (no complete step under {path}/{CHECKPOINTS_SUBDIR} or {path})"
    + (f"; only unfinished checkpoints: {sorted(unfinished)}" if unfinished else "")
  )


def tokenizer_beside(checkpoint_path: str | os.PathLike) -> str | None:
  """`tokenizer.model` of a run dir or HF dir, or of the run above a checkpoints / step dir."""
  path = os.path.abspath(os.fspath(checkpoint_path))
  candidates = [path]
  parent = os.path.dirname(path)
  if os.path.basename(path) == CHECKPOINTS_SUBDIR:
    candidates.append(parent)
  elif os.path.basename(path).isdigit() and os.path.basename(parent) == CHECKPOINTS_SUBDIR:
    candidates.append(os.path.dirname(parent))
  for folder in candidates:
    f = os.path.join(folder, hf.TOKENIZER_FILE)
    if os.path.isfile(f):
      return f
  return None


def saved_vocabulary(path: str | os.PathLike, step: int | None = None) -> str | None:
  """The vocabulary fingerprint the trainer stored with a run checkpoint (see
  vocab.fingerprint), or None (an HF directory, a converted or older checkpoint)."""
  path = os.fspath(path)
  if hf.is_hf_dir(path):
    return None
  root, step = resolve_checkpoint(path, step)
  with CheckpointManager(root, None, read_only=True, subdir="") as manager:
    state = manager._restore_json(step, "stream_state")  # pylint: disable=protected-access
  trainer = (state or {}).get("trainer") or {}
  return trainer.get("vocabulary")


def _device_put_leafwise(tree: dict[str, Any], shardings: Any) -> Any:
  """Moves a numpy tree to devices one leaf at a time, dropping each host copy as it goes."""
  leaves, treedef = jax.tree.flatten(tree)
  tree.clear()
  targets = treedef.flatten_up_to(shardings)
  out = []
  for i, s in enumerate(targets):
    out.append(jax.device_put(leaves[i], s))
    leaves[i] = None
  return jax.tree.unflatten(treedef, out)


def load(
  path: str | os.PathLike,
  config: PolyLMConfig | None = None,
  *,
  step: int | None = None,
  mesh: Mesh | None = None,
  on_host: bool = False,
) -> tuple[PolyLMConfig, Any]:
  """(config, params) from a run directory, a checkpoint (step) directory or an HF model dir.

  Run/checkpoint directories give the latest complete step (or `step`). With `config`, the
  checkpoint must have the same architecture (ConfigMismatchError names the field) and the
  config's numerics settings are used. Params are placed over `mesh`, or on one device, or
  with `on_host=True` returned as numpy arrays.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no such directory")
  from polylm_jax import t5x_ckpt  # pylint: disable=import-outside-toplevel

  if t5x_ckpt.is_t5x_checkpoint(path):  # a `python -m t5x.train` run dir or checkpoint_N
    cfg, params = t5x_ckpt.load(path, config, step)
    if on_host:
      return cfg, params
    target = param_structs(cfg, mesh)
    return cfg, _device_put_leafwise(params, jax.tree.map(lambda t: t.sharding, target))
  if hf.is_hf_dir(path):
    if step is not None:
      raise ValueError(f"{path} is a Hugging Face model directory: it has no steps")
    cfg, params = hf.import_hf(path, expected=config)
    if on_host:
      return cfg, params
    target = param_structs(cfg, mesh)
    return cfg, _device_put_leafwise(params, jax.tree.map(lambda t: t.sharding, target))
  root, step = resolve_checkpoint(path, step)
  with CheckpointManager(root, config, read_only=True, subdir="") as manager:
    restored = manager.restore(step, mesh=mesh, on_host=on_host)
  return restored.config, restored.params


def load_for_inference(
  path: str | os.PathLike,
  vocab_path: str | None = None,
  *,
  step: int | None = None,
  mesh: Any = None,
  step_flag: str = "step",
  vocab_flag: str = "VOCAB_PATH",
) -> tuple[PolyLMConfig, Any, Any]:
  """(config, params, vocabulary) for infer, eval, chat and self_instruct.

  The tokenizer is `vocab_path` or the checkpoint's own, refused unless it is the one the
  model was trained with (vocab.for_checkpoint) and fits its embedding (decoding.check_vocab).

  A damaged checkpoint is one line naming the step, the file and the older steps to choose
  with `step_flag`.
  """
  from polylm_jax import decoding
  from polylm_jax import vocab as vocab_lib  # seqio/TensorFlow: only when a binary runs

  try:
    config, params = load(path, step=step, mesh=mesh)
  except CorruptCheckpointError as e:
    hint = f" (choose one with {step_flag}=N)" if e.older_steps else ""
    raise ValueError(f"{e}{hint}") from None
  vocab = vocab_lib.for_checkpoint(path, vocab_path, step=step, flag=vocab_flag)
  decoding.check_vocab(config, vocab)
  return config, params, vocab


def _held_commit(hold_file: str | None) -> type | None:
  """Tests only ($POLYLM_JAX_TEST_HOLD_COMMIT=PATH or PATH@STEP): while PATH exists, a write
  (of step STEP only, when given) stops before its commit after creating PATH + ".held", so a
  test can kill the process while a checkpoint is provably half written. Unset: Orbax's
  default atomic rename."""
  if not hold_file:
    return None
  path, _, only_step = hold_file.partition("@")

  class HeldCommit(ocp.path.atomicity.AtomicRenameTemporaryPath):
    async def finalize(self, *args, **kwargs):
      import asyncio

      held = not only_step or self.get_final().name == only_step
      while held and os.path.exists(path):
        open(path + ".held", "a").close()
        await asyncio.sleep(0.05)
      return await super().finalize(*args, **kwargs)

  return HeldCommit
