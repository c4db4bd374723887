"""The trainer: `train()` builds a run from its settings (train_config.py) and runs the loop.

The loop (`_loop`, one screen) names its parts, as flax's lm1b example does: the data
stream, the jitted step (jax.jit with shardings and a donated state, train_setup.py), the
step reporter (train_report.py), the non-finite guard and the checkpointer
(train_resume.py), and periodic work attached with `Hooks.add_hook(fn, every=N)` as
levanter does (the evaluator of train_eval.py is one). State lives in those objects and in
the loop's locals, never in closures.

SIGTERM and SIGINT (Ctrl-C) save a checkpoint at the current step and stop; a second Ctrl-C
interrupts at once. A finished run only reports (no data, no compilation).
Multi-process: the global batch is a fixed number of data shards (data_shards.py), each
process making only the shards its devices hold, so batches and checkpoints do not depend on
the process count; host 0 writes the files, every process agrees on when to stop.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import signal
import sys
from typing import Any, Callable, Sequence

import jax

from polylm_jax import checkpoints as ckpt_lib
from polylm_jax import data_shards, distributed, gin_utils, mixing, partitioning
from polylm_jax.batch_stream import BatchStream, DataModule
from polylm_jax.training import metrics as metrics_lib
from polylm_jax.training import step as step_lib
from polylm_jax.config import PolyLMConfig, describe, flops_per_token
from polylm_jax.training.settings import (
  DataSpec,
  EvalSpec,
  LossSpec,
  MeshSpec,
  NonFinitePolicy,
  OptimizerSpec,
  ReportSpec,
)
from polylm_jax.training.evaluator import Evaluator, resolve_benchmarks
from polylm_jax.training.reporter import StepReporter, final_report, last_eval, print_samples
from polylm_jax.training.resume import (
  Checkpointer,
  Counters,
  check_vocabulary,
  NonFiniteError,  # noqa: F401  (raised by the guard; part of the trainer's API)
  NonFiniteGuard,
  nan_weights,
  resume,
)
from polylm_jax.training.prepare import (
  check_batch_layout,
  check_model_dir,
  check_shardable,
  fingerprint,
  make_step_functions,
  to_global,
  whole_on_this_process,
)


@dataclasses.dataclass
class TrainResult:
  step: int
  state: step_lib.TrainState | None  # None when the run was already finished
  losses: dict[int, float]  # per step (the last value when a step was re-run)
  eval: dict[str, float]  # the last eval (loss, perplexity, per language)
  model_dir: str
  checkpoint_dir: str
  preempted: bool = False  # stopped by a signal (saved first)
  rollbacks: int = 0
  stop_signal: str | None = None  # 'SIGTERM' or 'SIGINT' when preempted


STOP_CHECK_EVERY = 8  # steps between the processes' agreements on a stop signal

# -- periodic work and signals -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hook:
  fn: Callable[[int, step_lib.TrainState], None]
  every: int
  at_end: bool = True


class Hooks:
  """Periodic work: `add_hook(fn, every=N)` runs fn(step, state) every N steps (and after the
  last step unless at_end=False). every=0 never runs it."""

  def __init__(self):
    self._hooks: list[Hook] = []

  def add_hook(self, fn: Callable[[int, Any], None], *, every: int, at_end: bool = True) -> None:
    if every < 0:
      raise ValueError(f"add_hook: every must be >= 0, got {every}")
    self._hooks.append(Hook(fn, every, at_end))

  def _due(self, hook: Hook, step: int, final: bool) -> bool:
    return bool(hook.every) and (step % hook.every == 0 or (final and hook.at_end))

  def due(self, step: int, final: bool) -> bool:
    return any(self._due(h, step, final) for h in self._hooks)

  def run(self, step: int, state: Any, final: bool) -> None:
    for h in self._hooks:
      if self._due(h, step, final):
        h.fn(step, state)


class StopSignals:
  """A context that turns SIGTERM and SIGINT into a request to save and stop (`received`);
  a second SIGINT raises KeyboardInterrupt. Outside the main thread it installs nothing."""

  NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}

  def __init__(self):
    self.received: str | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):  # noqa: ARG002
    if signum == signal.SIGINT and self.received == "SIGINT":
      raise KeyboardInterrupt
    self.received = self.NAMES[signum]

  def __enter__(self) -> StopSignals:
    for signum in self.NAMES:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread: the caller owns signals
        pass
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


class _EvalHook:
  """The evaluator as a hook: keeps the last result and restarts the throughput clock."""

  def __init__(self, evaluator: Evaluator, throughput: metrics_lib.Throughput):
    self.evaluator, self.throughput = evaluator, throughput
    self.last: dict[str, float] = {}
    self.last_step: int | None = None

  def __call__(self, step: int, state: step_lib.TrainState) -> None:
    self.last, self.last_step = self.evaluator.run(step, state.params), step
    self.throughput.start(step)


# -- the run ------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Run:
  """The parts of a built run that the loop uses, and the little it updates (rng, stream
  position)."""

  train_steps: int
  stream: BatchStream
  fns: Any  # train_setup.StepFunctions
  checkpointer: Checkpointer
  counters: Counters
  reporter: StepReporter
  guard: NonFiniteGuard
  hooks: Hooks
  signals: StopSignals
  out: metrics_lib.MetricsWriter
  rng: jax.Array
  save_at_end: bool
  multi_host: bool
  debug_batches: tuple[int, ...]
  crc_rows: int  # the rows of data shard 0
  stream_state: dict = dataclasses.field(default_factory=dict)

  def next_batch(self) -> tuple[dict, dict]:
    """The next global batch and what the metrics record about it."""
    stage, index = self.stream.stage, self.stream.step
    host_batch = self.stream.next()
    self.stream_state = self.stream.state()
    nan_weights(host_batch, index, self.debug_batches)
    # Data shard 0's rows (process 0 always makes shard 0): the same checksum of the same
    # batch whatever the process count.
    first_shard = {"inputs": host_batch["inputs"][: self.crc_rows]}
    info = {"stage": stage, "batch": index, "batch_crc": fingerprint(first_shard)}
    return to_global(host_batch, self.fns.batch_shardings), info

  def stop_requested(self, step: int, final: bool) -> str | None:
    """A stop signal. Several processes agree every STOP_CHECK_EVERY steps (and at the last
    step): all stop at the same step, as they save together, and the agreement (a small
    collective, which waits for the step in flight) does not stall every step."""
    received = self.signals.received
    if self.multi_host:
      if (step % STOP_CHECK_EVERY == 0 or final) and distributed.any_process(received is not None):
        return received or "stop signal on another process"
      if self.checkpointer.manager.reached_preemption(step):
        return "preemption"
      return None
    return received

  def rolled_back(self, from_step: int, to_step: int, rng: jax.Array | None) -> None:
    """The steps after `to_step` will run again: their records go, the rollback's stays."""
    self.rng = rng if rng is not None else self.rng
    self.reporter.restart(to_step)
    self.out.truncate_after(to_step)
    rollbacks = self.counters.rollbacks
    self.out.write(
      "rollback", to_step, {"rollback": rollbacks, "rolled_back_from": from_step}, tensorboard=False
    )


def _streak_end(reported: Sequence[tuple[int, int]], max_skips: int) -> int:
  """The last reported step whose skip streak reached max_skips, else 0."""
  ends = [s for s, n in reported if n >= max_skips]
  return ends[-1] if ends else 0


def _loop(run: _Run, state: step_lib.TrainState, step: int, max_skips: int):
  """Steps until train_steps or a stop signal; returns (state, step, stop reason or None)."""
  stop = None
  while step < run.train_steps and not stop:
    batch, info = run.next_batch()
    state, dev_metrics = run.fns.train_step(state, batch)
    step += 1
    final = step == run.train_steps
    due = run.hooks.due(step, final)
    reported = run.reporter.push(step, dev_metrics, info, run.counters, flush=final or due)
    last_bad = _streak_end(reported, max_skips)
    if last_bad:
      action = run.guard.act(run.counters, state, step, last_bad)
      if action.rolled_back:
        run.rolled_back(step, action.step, action.rng)
      state, step = action.state, action.step
      continue
    stop = run.stop_requested(step, final)
    force = bool(stop) or (final and run.save_at_end)
    if run.checkpointer.save(step, state, run.rng, run.stream_state, run.counters, force=force):
      run.out.log(
        f"step {step}: checkpoint {'(preemption) ' if stop else ''}-> "
        f"{run.checkpointer.directory}/{step}"
      )
    if stop:
      run.out.log(f"{stop}: saved step {step}; stopping (rerun the same command to resume)")
    else:
      run.hooks.run(step, state, final)
  if run.reporter.pending:
    run.reporter.flush(run.counters)
  return state, step, stop


# -- train() -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Settings:
  """train()'s arguments after its checks, passed as one value to the builders below."""

  model_dir: str
  config: PolyLMConfig
  train_steps: int
  data: DataSpec
  mesh: MeshSpec
  optimizer: OptimizerSpec
  loss: LossSpec
  eval: EvalSpec
  nonfinite: NonFinitePolicy
  report: ReportSpec
  init_checkpoint: str | None
  random_seed: int


def train(
  *,
  model_dir: str,
  model_config: PolyLMConfig,
  train_steps: int,
  data: DataSpec,
  mesh: MeshSpec = MeshSpec(),
  optimizer: OptimizerSpec = OptimizerSpec(),
  loss: LossSpec = LossSpec(),
  checkpointing: ckpt_lib.CheckpointPolicy = ckpt_lib.CheckpointPolicy(),
  eval: EvalSpec = EvalSpec(),  # noqa: A002  (t5x's name for it)
  nonfinite: NonFinitePolicy = NonFinitePolicy(),
  report: ReportSpec = ReportSpec(),
  init_checkpoint: str | None = None,
  random_seed: int = 0,
  devices: Sequence[jax.Device] | None = None,
  print_fn: Callable[..., None] = print,
) -> TrainResult:
  """Trains until `train_steps` steps are done, resuming from MODEL_DIR if it has a checkpoint.

  init_checkpoint (CHECKPOINT_PATH): the starting params of a fresh run (a run dir,
  checkpoint dir or Hugging Face dir). random_seed seeds the init and the data order.
  devices: default all. Every check runs before any compute.
  """
  if train_steps <= 0:
    raise ValueError(f"TRAIN_STEPS must be > 0, got {train_steps}")
  data.check_model(model_config.max_len)
  s = _Settings(
    check_model_dir(model_dir), model_config, train_steps, data, mesh, optimizer, loss, eval,
    nonfinite, report, init_checkpoint, random_seed,
  )  # fmt: skip
  jax_mesh = mesh.build(devices)
  num_hosts = jax.process_count()
  benchmark_names = resolve_benchmarks(eval)
  check_batch_layout(data.batch_size, jax_mesh, mesh.num_microbatches, num_hosts)
  check_shardable(model_config, jax_mesh)
  out = metrics_lib.MetricsWriter(s.model_dir, is_chief=jax.process_index() == 0, print_fn=print_fn)
  manager = ckpt_lib.CheckpointManager(s.model_dir, model_config, checkpointing)
  try:
    latest = manager.latest_step()
    intact = latest is not None and not ckpt_lib.damaged_file(f"{manager.directory}/{latest}")
    if intact and latest >= train_steps:
      return _report_finished(s, manager, latest, out)
    return _train(s, jax_mesh, manager, benchmark_names, out)
  finally:
    manager.close()
    out.close()


@dataclasses.dataclass(frozen=True)
class _Data:
  """The run's data: its module (stream or instruct_stream), stream, vocabulary, eval tasks."""

  module: DataModule  # polylm_jax.stream or polylm_jax.instruct_stream
  stream: BatchStream  # this process's data shards (data_shards.ShardedStream)
  layout: data_shards.Layout
  vocab: Any
  vocab_id: str  # its fingerprint, kept in every checkpoint
  eval_langs: dict[str, tuple[str, ...]]
  languages: tuple[str, ...]  # the stream's `langs` index, added languages included


def _data_module(data: DataSpec) -> DataModule:
  """The data stream's module, after importing the modules that register its tasks.

  Lazy: seqio and TensorFlow load here, so a finished run reports without them."""
  for name in data.task_modules:
    importlib.import_module(name)
  from polylm_jax import instruct_stream  # pylint: disable=import-outside-toplevel

  return instruct_stream.data_module(data.mixture_or_task_name)


def _task_vocabulary(stream: Any, config: PolyLMConfig) -> tuple[Any, str]:
  """The first task's 'targets' vocabulary and its fingerprint (seqio: imported with the
  data, see above)."""
  import seqio  # pylint: disable=import-outside-toplevel

  from polylm_jax import vocab as vocab_lib  # pylint: disable=import-outside-toplevel

  task = seqio.get_mixture_or_task(stream.stages[0].tasks[0])
  vocab = task.output_features["targets"].vocabulary
  vocab_lib.check_vocab_matches(vocab, config.vocab_size)
  return vocab, vocab_lib.fingerprint(vocab)


def _save_tokenizer(vocab: Any, model_dir: str) -> None:
  """MODEL_DIR/tokenizer.model, so infer, eval, chat and convert find the run's tokenizer."""
  from polylm_jax import vocab as vocab_lib  # pylint: disable=import-outside-toplevel

  if getattr(vocab, "sentencepiece_model_file", None):
    vocab_lib.save_tokenizer(vocab, model_dir)


def _build_data(s: _Settings, lay: data_shards.Layout, train_steps: int) -> _Data:
  module = _data_module(s.data)
  extra = {}
  if s.data.read_workers != 1:
    if "workers" not in inspect.signature(module.build_stream).parameters:
      raise ValueError(
        f"DataSpec.read_workers applies to pre-training streams; {module.__name__} has none"
      )
    extra["workers"] = s.data.read_workers
  stream = data_shards.build(
    module, s.data.mixture_or_task_name, s.data.seq_len, lay, seed=s.random_seed,
    train_steps=train_steps, segment_aware=s.data.segment_aware, **extra,
  )  # fmt: skip
  vocab, vocab_id = _task_vocabulary(stream, s.config)
  eval_langs = module.eval_tasks(s.data.mixture_or_task_name) if s.eval.period else {}
  instruction_data = module.__name__ == "polylm_jax.instruct_stream"
  if s.eval.period and not eval_langs and not instruction_data:  # tiny instruction data: _train
    raise ValueError(
      f"{s.data.mixture_or_task_name!r} has no monolingual held-out ('validation') "
      "tasks for eval; set EvalSpec.period = 0 to train without eval"
    )
  # After the tasks registered their languages: the index the stream's `langs` use.
  return _Data(module, stream, lay, vocab, vocab_id, eval_langs, mixing.languages())


def _data_layout(s: _Settings, manager, jax_mesh) -> data_shards.Layout:
  """This process's data shards: the count from DataSpec.data_shards, else the checkpoint's,
  else the process count (a mismatch fails naming both counts, before any data is read)."""
  saved, where = None, ""
  for step in reversed(manager.all_steps()):  # the newest readable: the one resume takes
    try:
      saved = (manager.saved_stream_state(step) or {}).get("stream")
    except Exception:  # pylint: disable=broad-except  (damaged: the resume names it)
      continue
    where = f"{manager.directory}/{step}"
    break
  count = data_shards.resolve_count(
    s.data.data_shards, data_shards.saved_count(saved), jax.process_count(), where
  )
  sharding = partitioning.batch_sharding(jax_mesh)
  return data_shards.row_layout(count, s.data.batch_size, sharding, jax.process_index())


def _report_finished(s: _Settings, manager, latest: int, out) -> TrainResult:
  """A run already at TRAIN_STEPS: checks the model config (and the vocabulary when its tasks
  are loaded in this process already), then reports from the files, in seconds."""
  ckpt_lib.check_config(manager.saved_config(latest), s.config, f"{manager.directory}/{latest}")
  if "seqio" in sys.modules and all(m in sys.modules for m in s.data.task_modules):
    d = _build_data(
      s, data_shards.layout(1, s.data.batch_size, 0, s.data.batch_size), s.train_steps
    )
    saved = ckpt_lib.saved_vocabulary(manager.directory, latest)  # JSON only, no arrays
    check_vocabulary({"vocabulary": saved} if saved else {}, d.vocab_id, manager.directory, latest)
  out.log(f"already trained to step {latest} (TRAIN_STEPS={s.train_steps}); nothing to do")
  evals = last_eval(s.model_dir)
  final_report(out, manager.directory, manager.all_steps(), evals, mixing.languages())
  return TrainResult(latest, None, {}, evals, s.model_dir, manager.directory)


def _run_config_text(model_dir: str, is_chief: bool) -> str | None:
  """The run's gin config: written to MODEL_DIR/operative_config.gin and kept in every
  checkpoint; None when gin configured nothing (a direct call)."""
  text = gin_utils.operative_config()
  if not text.strip():
    return None
  if is_chief:
    return gin_utils.write_operative_config(model_dir, "operative_config.gin").read_text()
  return text


def _log_start(out, s: _Settings, jax_mesh, stream, origin: str, peak) -> None:
  cfg, tokens = s.config, s.data.batch_size * s.data.seq_len
  out.log(f"PolyLM {describe(cfg)}; compute {cfg.dtype}, remat {cfg.remat_policy}")
  out.log(
    f"mesh data={jax_mesh.shape['data']} fsdp={jax_mesh.shape['fsdp']} "
    f"tensor={jax_mesh.shape['tensor']} on {jax_mesh.size} "
    f"{jax_mesh.devices.flat[0].platform} device(s), {jax.process_count()} host(s); batch "
    f"{s.data.batch_size} x {s.data.seq_len} = {tokens:,} tokens/step in "
    f"{s.mesh.num_microbatches} microbatch(es), {stream.layout.total} data shard(s); peak "
    f"{peak[0] or 0:.3g} FLOP/s/device "
    f"({peak[1]})"
  )
  out.log(
    f"{s.data.mixture_or_task_name}: stages {[st.name for st in stream.stages]} starting at "
    f"steps {list(stream.boundaries)}; {origin}; training to step {s.train_steps}; "
    f"checkpoints in {os.path.join(s.model_dir, ckpt_lib.CHECKPOINTS_SUBDIR)}"
  )


def _evaluator(s: _Settings, d: _Data, fns, out, benchmark_names, jax_mesh) -> Evaluator:
  shard_batches = functools.partial(
    d.module.eval_batches, seq_len=s.data.seq_len, segment_aware=s.data.segment_aware
  )
  batches = functools.partial(
    data_shards.eval_batches, shard_batches, lay=d.layout, seq_len=s.data.seq_len,
    num_batches=s.eval.steps, agree_count=distributed.max_over_processes,
  )  # fmt: skip
  return Evaluator(
    s.eval, d.eval_langs, d.languages, batches, fns.eval_step, fns.batch_shardings, out,
    benchmark_names=benchmark_names, model=(s.config, d.vocab, jax_mesh), model_dir=s.model_dir,
  )  # fmt: skip


def _start(s: _Settings, checkpointer: Checkpointer, counters, stream, fns, jax_mesh):
  """Resume, init from CHECKPOINT_PATH, or init (train_resume.resume)."""
  init_from = None
  if s.init_checkpoint:
    init_from = functools.partial(_params_from, fns, s.init_checkpoint, s.config, jax_mesh)
  return resume(
    checkpointer, counters, stream, init=fns.init, init_from_params=init_from,
    init_checkpoint=s.init_checkpoint, random_seed=s.random_seed,
  )  # fmt: skip


def _params_from(fns, path: str, config: PolyLMConfig, jax_mesh) -> step_lib.TrainState:
  return fns.from_params(ckpt_lib.load(path, config, mesh=jax_mesh)[1])


def _train(s: _Settings, jax_mesh, manager, benchmark_names, out) -> TrainResult:
  """Builds the stream, the step functions and the loop's parts; starts or resumes; loops."""
  host = jax.process_index()
  d = _build_data(s, _data_layout(s, manager, jax_mesh), s.train_steps)
  if s.eval.period and not d.eval_langs:  # instruction files too small to hold a record out
    out.log(
      f"WARNING: {s.data.mixture_or_task_name!r} has no held-out records in any language: "
      "training without eval (EvalSpec.period = 0)"
    )
    s = dataclasses.replace(s, eval=dataclasses.replace(s.eval, period=0))
  schedule, tx = s.optimizer.build(s.train_steps)
  fns = make_step_functions(
    s.config, jax_mesh, tx, schedule, num_microbatches=s.mesh.num_microbatches,
    z_loss=s.loss.z_loss, label_smoothing=s.loss.label_smoothing,
    loss_chunk_tokens=s.loss.chunk_tokens,
    num_languages=len(d.languages),
  )  # fmt: skip
  checkpointer = Checkpointer(
    manager,
    step_lib.abstract_train_state(s.config, tx, fns.state_shardings),
    fns.replicated,
    d.vocab_id,
    _run_config_text(s.model_dir, host == 0),
  )
  if host == 0:
    _save_tokenizer(d.vocab, s.model_dir)
  counters = Counters(d.vocab_id, d.languages)
  try:
    with partitioning.use_mesh(jax_mesh):
      result = _start_and_loop(s, d, fns, checkpointer, counters, benchmark_names, out, jax_mesh)
  finally:
    if checkpointer.manager is not manager:  # reopened after setting damaged steps aside
      checkpointer.manager.close()
  return result


def _start_and_loop(s, d, fns, checkpointer, counters, benchmark_names, out, jax_mesh):
  """Starts or resumes, runs the loop, the last eval and the closing report."""
  start = _start(s, checkpointer, counters, d.stream, fns, jax_mesh)
  for line in start.skipped:
    out.log(f"WARNING: skipped {line}")
  if start.skipped:
    checkpointer.set_aside(start.skipped, out.log)
  manager = checkpointer.manager
  out.truncate_after(start.restored_step if start.restored_step is not None else -1)
  peak = metrics_lib.device_peak_flops(jax_mesh.devices.flat[0], s.report.peak_flops_per_device)
  _log_start(out, s, jax_mesh, d.stream, start.origin, peak)
  throughput = metrics_lib.Throughput(s.data.batch_size * s.data.seq_len, s.train_steps)
  mfu_args = (flops_per_token(s.config, s.data.seq_len), jax_mesh.size, peak[0])
  reporter = StepReporter(out, s.train_steps, s.report.log_period, throughput, mfu_args)
  evals = _EvalHook(_evaluator(s, d, fns, out, benchmark_names, jax_mesh), throughput)
  hooks = Hooks()
  hooks.add_hook(evals, every=s.eval.period)
  step = int(jax.device_get(start.state.step))
  if s.eval.period and s.eval.before_training and start.restored_step is None:
    evals(step, start.state)
  with StopSignals() as signals:
    run = _Run(
      s.train_steps, d.stream, fns, checkpointer, counters, reporter,
      NonFiniteGuard(s.nonfinite, checkpointer, out.log), hooks, signals, out, start.rng,
      save_at_end=manager.policy.save_every > 0, multi_host=jax.process_count() > 1,
      debug_batches=s.nonfinite.debug_batches, crc_rows=d.layout.rows_per_shard,
    )  # fmt: skip
    state, step, stop = _loop(run, start.state, step, s.nonfinite.max_consecutive_skips)
  if not stop and s.eval.period and evals.last_step != step:
    evals(step, state)
  manager.wait_until_finished()
  out.flush()
  if not stop:
    final_report(out, manager.directory, manager.all_steps(), evals.last, d.languages)
    if s.report.sample_prompts:
      r = s.report
      params, mesh = state.params, jax_mesh
      if jax.process_count() > 1:  # process 0 generates alone, on its own devices
        params, mesh = whole_on_this_process(state.params)
      if jax.process_index() == 0:
        print_samples(
          out, s.config, params, d.vocab, r.sample_prompts, r.sample_max_new_tokens, mesh
        )
  return TrainResult(
    step=step, state=state, losses=reporter.losses, eval=evals.last, model_dir=s.model_dir,
    checkpoint_dir=manager.directory, preempted=bool(stop), rollbacks=counters.rollbacks,
    stop_signal=stop,
  )  # fmt: skip
