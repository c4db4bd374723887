r"""The t5x-style training binary: pre-training, continued training and the README demo.

    python -m polylm_jax.train --gin_file=gin/models/polylm_1_7b.gin \
        --gin_file=gin/runs/pretrain.gin --gin.MODEL_DIR=\"runs/polylm_1_7b\" \
        --gin.TRAIN_STEPS=1000 --gin.MIXTURE_OR_TASK_NAME=\"polylm_pretrain_curriculum\"

`train()` is a plain typed function; gin binds it at the edge (`train.batch_size = ...`, the
SPEC 7 macros in gin/runs/pretrain.gin). It wires the data stream, the jitted step (jax.jit
with shardings and a donated state), Orbax checkpoints, eval and metrics.

Resume: a run restores the latest *complete* checkpoint in MODEL_DIR/checkpoints by itself:
params, optimizer state, step, RNG, the data stream's position (which fixes the curriculum
stage) and the trainer's counters; so the same command after a crash or SIGTERM continues
with the very batches and losses of an uninterrupted run. SIGTERM saves a checkpoint first.

Non-finite loss or gradients: the step is skipped inside `train_step` (nothing is applied)
and counted. After `max_consecutive_skips` in a row, `nonfinite_policy` decides: 'rollback'
restores the last checkpoint's params and optimizer state and goes on with the data stream
where it is (the batches since are not replayed, as PaLM does for loss spikes); 'stop'
raises; 'continue' only logs.

Multi-host: `jax.distributed.initialize()` runs when the environment says so (see
`maybe_initialize_distributed`); every host reads only its shard of the global batch and
`jax.make_array_from_process_local_data` assembles the global arrays.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from polylm_jax import checkpoints as ckpt_lib
from polylm_jax import metrics as metrics_lib
from polylm_jax import optim, partitioning
from polylm_jax import train_step as step_lib
from polylm_jax.config import PolyLMConfig, describe, flops_per_token
from polylm_jax.train_setup import (
  StepFunctions,  # noqa: F401  (re-exported)
  check_batch_layout,  # noqa: F401
  check_model_dir,
  check_shardable,
  fingerprint,
  make_step_functions,
  maybe_initialize_distributed,
  to_global,
  vocabulary_fingerprint,
)

NONFINITE_POLICIES = ("rollback", "stop", "continue")
TRAINER_STATE_VERSION = 1


class NonFiniteError(RuntimeError):
  """Training stopped on non-finite losses or gradients."""


@dataclasses.dataclass
class TrainResult:
  step: int
  state: step_lib.TrainState
  losses: dict[int, float]  # per step (the last value when a step was re-run)
  eval: dict[str, float]  # the last eval (loss, perplexity, per language)
  model_dir: str
  checkpoint_dir: str
  preempted: bool = False
  rollbacks: int = 0


# -- the trainer ---------------------------------------------------------------------------------


def train(
  *,
  model_dir: str,
  model_config: PolyLMConfig,
  mixture_or_task_name: str,
  train_steps: int,
  task_feature_lengths: Mapping[str, int] = {"targets": 2048},  # noqa: B006 (read only)
  batch_size: int = 512,
  mesh_data: int = -1,
  mesh_fsdp: int = 1,
  mesh_tensor: int = 1,
  num_microbatches: int = 1,
  peak_learning_rate: float = 6e-5,
  min_learning_rate: float = 6e-6,
  warmup_steps: int = 2000,
  decay_steps: int = 608_000,
  adam_b1: float = 0.9,
  adam_b2: float = 0.95,
  adam_eps: float = 1e-8,
  weight_decay: float = 1e-4,
  clip_norm: float | None = 1.0,
  z_loss: float = 0.0,
  label_smoothing: float = 0.0,
  dropout_rate: float = 0.0,
  random_seed: int = 0,
  segment_aware: bool = False,
  use_cached_tasks: bool = False,
  checkpoint_period: int = 1000,
  keep_checkpoints: int | None = 3,
  async_checkpoints: bool = True,
  init_checkpoint: str | None = None,
  eval_period: int = 1000,
  eval_steps: int | None = 10,
  eval_before_training: bool = False,
  benchmark_tasks: str = "",
  benchmark_max_examples: int | None = 100,
  benchmark_batch_size: int = 16,
  benchmark_data_dir: str | None = None,
  log_period: int = 10,
  nonfinite_policy: str = "rollback",
  max_consecutive_skips: int = 10,
  max_rollbacks: int = 5,
  peak_flops_per_device: float | None = None,
  sample_prompts: Sequence[str] = (),
  sample_max_new_tokens: int = 24,
  debug_nonfinite_batches: Sequence[int] = (),
  devices: Sequence[jax.Device] | None = None,
  print_fn: Callable[..., None] = print,
) -> TrainResult:
  """Trains until `train_steps` steps are done, resuming from MODEL_DIR if it has a checkpoint.

  batch_size is global (sequences per step, over all hosts); eval_steps is the number of
  held-out batches per language (None: all held-out data, single host only), run every
  eval_period steps, at the end, and at step 0 of a fresh run with eval_before_training;
  checkpoint_period: save every N steps and at the end (0: never, except on SIGTERM).
  benchmark_tasks: benchmark tasks/mixtures (tasks/benchmark.py names, comma-separated) that
  every eval also runs through `evaluation.evaluate`, at most benchmark_max_examples each; the
  report goes to MODEL_DIR/benchmark/<step> and the scores to the eval metrics.
  init_checkpoint (CHECKPOINT_PATH) gives the starting params of a fresh run: a run dir,
  checkpoint dir or Hugging Face dir. debug_nonfinite_batches: stream batch indices whose
  loss weights are set to NaN, to exercise the non-finite guard. devices: default all.
  """
  # ---- input checks: all of them before any compute --------------------------------------
  if dropout_rate != 0:
    raise ValueError(
      f"DROPOUT_RATE={dropout_rate}: PolyLM is trained without dropout and "
      "this model has none; set DROPOUT_RATE = 0.0"
    )
  if use_cached_tasks:
    raise ValueError(
      "USE_CACHED_TASKS=True is not supported: the packed stream reads tasks "
      "directly (seqio caches are not read); set USE_CACHED_TASKS = False"
    )
  if set(task_feature_lengths) != {"targets"}:
    raise ValueError(
      f"TASK_FEATURE_LENGTHS must be {{'targets': seq_len}} for a decoder-only "
      f"model, got {dict(task_feature_lengths)}"
    )
  seq_len = int(task_feature_lengths["targets"])
  if seq_len <= 0 or seq_len > model_config.max_len:
    raise ValueError(
      f"TASK_FEATURE_LENGTHS['targets']={seq_len} must be in [1, max_len="
      f"{model_config.max_len}] of the model (PolyLMConfig.max_len: the learned "
      "position table)"
    )
  if train_steps <= 0:
    raise ValueError(f"TRAIN_STEPS must be > 0, got {train_steps}")
  if nonfinite_policy not in NONFINITE_POLICIES:
    raise ValueError(
      f"nonfinite_policy must be one of {NONFINITE_POLICIES}, got {nonfinite_policy!r}"
    )
  for name, v in (("log_period", log_period), ("max_consecutive_skips", max_consecutive_skips)):
    if v < 1:
      raise ValueError(f"{name} must be >= 1, got {v}")
  if checkpoint_period < 0 or eval_period < 0:
    raise ValueError("checkpoint_period and eval_period must be >= 0 (0: off)")
  model_dir = check_model_dir(model_dir)
  mesh = partitioning.make_mesh(mesh_data, mesh_fsdp, mesh_tensor, devices=devices)
  num_hosts, host = jax.process_count(), jax.process_index()
  if eval_period and eval_steps is None and num_hosts > 1:
    raise ValueError(
      "eval_steps=None (all held-out data) needs one host: hosts must run the "
      "same number of eval batches; set train.eval_steps"
    )
  benchmark_names: list[str] = []
  if benchmark_tasks:
    if num_hosts > 1:
      raise ValueError(
        "train.benchmark_tasks runs on one host only; evaluate multi-host runs "
        "with python -m polylm_jax.eval"
      )
    from tasks import benchmark  # pylint: disable=import-outside-toplevel

    if benchmark_data_dir is not None:
      benchmark.configure(data_dir=benchmark_data_dir)
    benchmark_names = benchmark.resolve_all(benchmark_tasks)  # unknown names fail here
  check_batch_layout(batch_size, mesh, num_microbatches, num_hosts)
  check_shardable(model_config, mesh)

  # seqio + TensorFlow: imported when training. Pre-training mixtures get the packed stream,
  # instruction data (tasks/instructions.py) the instruction stream; both share one API.
  from polylm_jax import instruct_stream

  stream_lib = instruct_stream.data_module(mixture_or_task_name)
  from polylm_jax import vocab as vocab_lib
  import seqio

  host_batch = stream_lib.per_host_batch_size(batch_size, num_hosts)
  stream = stream_lib.build_stream(
    mixture_or_task_name,
    seq_len,
    host_batch,
    seed=random_seed,
    shard_index=host,
    num_shards=num_hosts,
    train_steps=train_steps,
    segment_aware=segment_aware,
  )
  vocab = seqio.get_mixture_or_task(stream.stages[0].tasks[0]).output_features["targets"].vocabulary
  vocab_lib.check_vocab_matches(vocab, model_config.vocab_size)
  vocab_id = vocabulary_fingerprint(vocab)
  eval_langs: dict[str, tuple[str, ...]] = {}
  if eval_period:
    eval_langs = stream_lib.eval_tasks(mixture_or_task_name)
    if not eval_langs:
      raise ValueError(
        f"{mixture_or_task_name!r} has no monolingual held-out ('validation') "
        "tasks for eval; set train.eval_period = 0 to train without eval"
      )

  from polylm_jax import mixing

  languages = mixing.LANGUAGES
  out = metrics_lib.MetricsWriter(model_dir, is_chief=host == 0, print_fn=print_fn)
  schedule = optim.learning_rate_schedule(
    peak_learning_rate, min_learning_rate, warmup_steps, decay_steps
  )
  optimizer = optim.make_optimizer(schedule, adam_b1, adam_b2, adam_eps, weight_decay, clip_norm)
  fns = make_step_functions(
    model_config,
    mesh,
    optimizer,
    schedule,
    num_microbatches=num_microbatches,
    z_loss=z_loss,
    label_smoothing=label_smoothing,
    num_languages=len(languages),
  )
  state_sh, batch_sh, replicated = fns.state_shardings, fns.batch_shardings, fns.replicated
  abstract_state = step_lib.abstract_train_state(model_config, optimizer, state_sh)
  manager = ckpt_lib.CheckpointManager(
    model_dir,
    model_config,
    ckpt_lib.CheckpointPolicy(checkpoint_period, keep_checkpoints, async_checkpoints),
  )
  gin_text = _gin_config_text(model_dir if host == 0 else None)

  # ---- state: restore, init from a checkpoint, or init ---------------------------------------
  rng = jax.random.key(random_seed)
  init_rng, train_rng = jax.random.split(rng)
  trainer = {
    "version": TRAINER_STATE_VERSION,
    "vocabulary": vocab_id,
    "skipped_steps": 0,
    "consecutive_skips": 0,
    "rollbacks": 0,
    "tokens_consumed": {lang: 0.0 for lang in languages},
  }

  def restore(step: int | None, with_stream: bool) -> step_lib.TrainState:
    nonlocal train_rng
    r = manager.restore(
      step, params_target=abstract_state.params, opt_state_target=abstract_state.opt_state
    )
    saved = (r.stream_state or {}).get("trainer", {})
    if saved.get("vocabulary", vocab_id) != vocab_id:
      raise ckpt_lib.ConfigMismatchError(
        f"{manager.directory}/{r.step}: vocabulary mismatch: checkpoint "
        f"{saved['vocabulary']!r} vs the tasks' {vocab_id!r}"
      )
    if r.opt_state is None:
      raise ValueError(
        f"{manager.directory}/{r.step} holds no optimizer state: not a "
        "training checkpoint (use it as train.init_checkpoint instead)"
      )
    if with_stream:
      trainer.update(saved)
      if r.stream_state and "stream" in r.stream_state:
        stream.restore(r.stream_state["stream"])
    if r.rng is not None:
      train_rng = r.rng
    counters = {
      k: jax.device_put(jnp.asarray(int(trainer[k]), jnp.int32), replicated)
      for k in ("skipped_steps", "consecutive_skips")
    }
    return step_lib.TrainState(
      step=jax.device_put(jnp.asarray(r.step, jnp.int32), replicated),
      params=r.params,
      opt_state=r.opt_state,
      **counters,
    )

  with partitioning.use_mesh(mesh):
    latest = manager.latest_step()
    if latest is not None:
      state = restore(latest, with_stream=True)
      origin = f"restored step {latest} from {manager.directory}"
    elif init_checkpoint:
      _, params = ckpt_lib.load(init_checkpoint, model_config, mesh=mesh)
      state = fns.from_params(params)
      origin = f"params from {init_checkpoint} (fresh optimizer, step 0)"
    else:
      state = fns.init(init_rng)
      origin = f"random init (seed {random_seed})"
    step = int(jax.device_get(state.step))
    p_step, p_eval = fns.train_step, fns.eval_step

    tokens_per_step = batch_size * seq_len
    fpt = flops_per_token(model_config, seq_len)
    peak, peak_source = metrics_lib.device_peak_flops(mesh.devices.flat[0], peak_flops_per_device)
    out.log(
      f"PolyLM {describe(model_config)}; compute {model_config.dtype}, "
      f"remat {model_config.remat_policy}"
    )
    out.log(
      f"mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']} "
      f"tensor={mesh.shape['tensor']} on {mesh.size} {mesh.devices.flat[0].platform} "
      f"device(s), {num_hosts} host(s); batch {batch_size} x {seq_len} = "
      f"{tokens_per_step:,} tokens/step in {num_microbatches} microbatch(es); "
      f"peak {peak or 0:.3g} FLOP/s/device ({peak_source})"
    )
    out.log(
      f"{mixture_or_task_name}: stages {[s.name for s in stream.stages]} starting at "
      f"steps {list(stream.boundaries)}; {origin}; training to step {train_steps}; "
      f"checkpoints in {manager.directory}"
    )

    eval_cache: dict[str, list[dict[str, np.ndarray]]] = {}

    def run_eval(at_step: int) -> dict[str, float]:
      t0 = time.perf_counter()
      total = {
        "nll_sum": 0.0,
        "tokens": 0.0,
        "lang_nll_sum": np.zeros(len(languages)),
        "lang_tokens": np.zeros(len(languages)),
      }
      for lang, tasks in eval_langs.items():
        if lang not in eval_cache:
          eval_cache[lang] = list(
            stream_lib.eval_batches(
              tasks,
              seq_len,
              host_batch,
              shard_index=host,
              num_shards=num_hosts,
              segment_aware=segment_aware,
              num_batches=eval_steps,
            )
          )
        for b in eval_cache[lang]:
          r = jax.device_get(p_eval(state.params, to_global(b, batch_sh)))
          for k in total:
            total[k] = total[k] + np.asarray(r[k], np.float64)
      res = metrics_lib.eval_summary(
        float(total["nll_sum"]),
        float(total["tokens"]),
        total["lang_nll_sum"],
        total["lang_tokens"],
        languages,
      )
      out.write("eval", at_step, res)
      per_lang = " ".join(
        f"{k.split('/')[1]} {v:.3f}" for k, v in res.items() if k.startswith("loss/")
      )
      out.log(
        f"eval step {at_step}: loss {res.get('loss', float('nan')):.4f} ppl "
        f"{res.get('perplexity', float('nan')):.1f} on {res['tokens']:,.0f} tokens "
        f"({time.perf_counter() - t0:.1f}s) | {per_lang}"
      )
      if benchmark_names:
        res = {**res, **run_benchmark(at_step)}
      return res

    def run_benchmark(at_step: int) -> dict[str, float]:
      from polylm_jax import eval_report, evaluation  # pylint: disable=import-outside-toplevel

      t0 = time.perf_counter()
      r = evaluation.evaluate(
        model_config,
        state.params,
        vocab,
        benchmark_names,
        max_examples=benchmark_max_examples,
        batch_size=benchmark_batch_size,
        mesh=mesh,
      )
      scores = r.summary(prefix="benchmark")
      out.write("eval", at_step, scores)
      report = eval_report.write_report(r, os.path.join(model_dir, "benchmark", str(at_step)))
      out.log(
        f"benchmark step {at_step} ({time.perf_counter() - t0:.1f}s): "
        + ", ".join(f"{k.split('/', 1)[1]} {v:.2f}" for k, v in scores.items())
        + f" -> {report['markdown']}"
      )
      return scores

    def save(at_step: int, stream_state: dict, force: bool) -> bool:
      # A copy: the JSON is written in the background while the trainer's counters move on.
      payload = json.loads(json.dumps({"stream": stream_state, "trainer": trainer}))
      return manager.save(
        at_step,
        state.params,
        opt_state=state.opt_state,
        rng=train_rng,
        stream_state=payload,
        gin_config=gin_text,
        force=force,
      )

    # ---- the loop ----------------------------------------------------------------------------
    stop = {"sigterm": False}
    previous_handler = _install_sigterm(stop)
    losses: dict[int, float] = {}
    last_eval: dict[str, float] = {}
    throughput = metrics_lib.Throughput(tokens_per_step, train_steps)
    pending: tuple[int, Any, dict] | None = None
    timing = {"started": False}
    period_losses: list[float] = []
    preempted = False
    nan_batches = set(int(i) for i in debug_nonfinite_batches)
    stream_state = stream.state()

    def consume(pending) -> int:
      """Host side of a finished step: logs it; its step when the skip streak calls for action
      (else 0)."""
      at_step, dev_metrics, info = pending
      m = jax.device_get(dev_metrics)
      losses[at_step] = float(m["loss"])
      for i, lang in enumerate(languages):
        trainer["tokens_consumed"][lang] += float(m["lang_tokens"][i])
      trainer["skipped_steps"] = int(m["skipped_steps"])
      trainer["consecutive_skips"] = int(m["consecutive_skips"])
      record = {k: v for k, v in m.items() if np.ndim(v) == 0}
      record.update(info)
      period_losses.append(losses[at_step])
      if m["skipped"]:
        out.log(
          f"step {at_step}: non-finite loss/gradients: update skipped "
          f"({int(m['consecutive_skips'])} in a row, {int(m['skipped_steps'])} in all)"
        )
      if at_step % log_period == 0 or at_step == train_steps:
        record.update(throughput.measure(at_step))
        finite = [x for x in period_losses if np.isfinite(x)]
        record["loss_avg"] = float(np.mean(finite)) if finite else float("nan")
        period_losses.clear()
        tps = record.get("tokens_per_second")
        record["mfu"] = metrics_lib.mfu(tps, fpt, mesh.size, peak) if tps else None
        if record["mfu"] is None:
          record.pop("mfu")
        record.update(
          {f"tokens_consumed/{k}": v for k, v in trainer["tokens_consumed"].items() if v}
        )
        out.write("train", at_step, record)
        out.log(metrics_lib.progress_line(at_step, train_steps, record))
      else:
        out.write("train", at_step, record, tensorboard=False)
      if not timing["started"]:  # time from the first finished step: compilation excluded
        throughput.start(at_step)
        timing["started"] = True
      return at_step if int(m["consecutive_skips"]) >= max_consecutive_skips else 0

    try:
      if eval_period and eval_before_training and latest is None:
        run_eval(step)
      while step < train_steps:
        stage = stream.stage
        batch_index = stream.step
        host_batch_np = stream.next()
        stream_state = stream.state()
        if batch_index in nan_batches:
          host_batch_np["loss_weights"] = np.full_like(host_batch_np["loss_weights"], np.nan)
        info = {"stage": stage, "batch": batch_index, "batch_crc": fingerprint(host_batch_np)}
        state, dev_metrics = p_step(state, to_global(host_batch_np, batch_sh))
        step += 1
        # The host reads step s-1's metrics while step s runs (no stall), except where it
        # must wait anyway: the last step and eval steps.
        streak = consume(pending) if pending is not None else 0
        pending = (step, dev_metrics, info)
        eval_due = bool(eval_period) and (step % eval_period == 0 or step == train_steps)
        if step == train_steps or eval_due:
          streak = consume(pending) or streak
          pending = None
        if streak:
          pending = None
          state, step = _handle_streak(
            nonfinite_policy, manager, restore, trainer, step, streak, max_rollbacks, out, state
          )
          throughput.start(step)
          period_losses.clear()
          continue
        preempted = stop["sigterm"] or (num_hosts > 1 and manager.reached_preemption(step))
        final = step == train_steps and checkpoint_period > 0
        if save(step, stream_state, force=preempted or final):
          out.log(
            f"step {step}: checkpoint {'(preemption) ' if preempted else ''}-> "
            f"{manager.directory}/{step}"
          )
        if preempted:
          out.log(f"SIGTERM: saved step {step}; stopping (rerun the same command to resume)")
          break
        if eval_due:
          last_eval = run_eval(step)
          throughput.start(step)
      if pending is not None:
        consume(pending)
      if not preempted and latest is not None and latest >= train_steps:
        out.log(f"already trained to step {step} (TRAIN_STEPS={train_steps}); nothing to do")
      if not preempted and eval_period and not last_eval:
        last_eval = run_eval(step)
      manager.wait_until_finished()
    finally:
      signal.signal(signal.SIGTERM, previous_handler)
      manager.close()
      out.flush()

    if not preempted:
      _final_report(out, manager, last_eval, languages)
      if sample_prompts:
        _print_samples(
          out, model_config, state.params, vocab, sample_prompts, sample_max_new_tokens, mesh
        )
    out.close()
    return TrainResult(
      step=step,
      state=state,
      losses=losses,
      eval=last_eval,
      model_dir=model_dir,
      checkpoint_dir=manager.directory,
      preempted=preempted,
      rollbacks=int(trainer["rollbacks"]),
    )


def _handle_streak(policy, manager, restore, trainer, step, last_bad, max_rollbacks, out, state):
  """After `max_consecutive_skips` skipped steps in a row: roll back, stop or go on, loudly."""
  n = trainer["consecutive_skips"]
  what = f"{n} consecutive non-finite steps (steps {last_bad - n + 1}-{last_bad})"
  if policy == "continue":
    out.log(f"WARNING: {what}; nonfinite_policy='continue': going on")
    return state, step
  if policy == "stop":
    raise NonFiniteError(f"{what}; nonfinite_policy='stop'")
  manager.wait_until_finished()
  target = manager.latest_step()
  if target is None:
    raise NonFiniteError(f"{what}; no checkpoint to roll back to in {manager.directory}")
  if trainer["rollbacks"] >= max_rollbacks:
    raise NonFiniteError(
      f"{what}; already rolled back {trainer['rollbacks']} times (max_rollbacks)"
    )
  rollbacks = trainer["rollbacks"] + 1
  state = restore(target, with_stream=False)
  trainer["rollbacks"], trainer["consecutive_skips"] = rollbacks, 0
  out.log(
    f"ROLLBACK {rollbacks}/{max_rollbacks}: {what}; restored step {target} from "
    f"{manager.directory}/{target}; the data stream goes on (batches since are skipped)"
  )
  out.write("train", target, {"rollback": rollbacks, "rolled_back_from": step})
  return state, target


def _install_sigterm(flag: dict) -> Any:
  def handler(signum, frame):  # noqa: ARG001
    flag["sigterm"] = True

  try:
    return signal.signal(signal.SIGTERM, handler)
  except ValueError:  # not the main thread: no handler (the caller owns signals)
    return signal.getsignal(signal.SIGTERM)


def _gin_config_text(write_dir: str | None) -> str | None:
  """The operative gin config (written to MODEL_DIR), or None when gin configured nothing."""
  import gin

  text = gin.operative_config_str()
  if not text.strip():
    return None
  if write_dir:
    path = os.path.join(write_dir, "operative_config.gin")
    with open(path + ".tmp", "w") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
  return text


def _final_report(out, manager, last_eval, languages) -> None:
  steps = manager.all_steps()
  out.log(
    f"checkpoints: {manager.directory} (steps {steps}); load with "
    f"polylm_jax.load({os.path.dirname(manager.directory)!r})"
  )
  if last_eval:
    out.log(
      f"eval loss {last_eval.get('loss', float('nan')):.4f} "
      f"(perplexity {last_eval.get('perplexity', float('nan')):.1f}); per language:"
    )
    for lang in languages:
      if f"loss/{lang}" in last_eval:
        out.log(
          f"  {lang}: loss {last_eval[f'loss/{lang}']:.4f}  "
          f"perplexity {last_eval[f'perplexity/{lang}']:.1f}"
        )


def _print_samples(out, config, params, vocab, prompts, max_new_tokens, mesh) -> None:
  try:
    from polylm_jax import decoding
  except ImportError:
    return
  ids = [list(vocab.encode(p)) for p in prompts]
  max_new = min(max_new_tokens, config.max_len - max(map(len, ids)))
  new = decoding.generate(config, params, ids, max_new, mesh=mesh)
  out.log("greedy continuations:")
  for p, n in zip(prompts, new):
    out.log(f"  {p!r} -> {vocab.decode(n)!r}")


# -- the binary ----------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"unexpected arguments {argv[1:]} (gin settings go in --gin.KEY=VALUE)")
  from absl import flags
  from absl import logging as absl_logging
  from polylm_jax import gin_utils

  if not flags.FLAGS["verbosity"].present:  # Orbax and TF log every file at INFO
    absl_logging.set_verbosity(absl_logging.WARNING)
  maybe_initialize_distributed(flags.FLAGS.distributed)
  result = gin_utils.call_configured(gin_train, "train", errors=(NonFiniteError,))
  if result.preempted:
    sys.exit(143)  # 128 + SIGTERM: the checkpoint is saved, a supervisor may restart us


def _define_flags() -> None:
  from absl import flags

  if "distributed" not in flags.FLAGS:
    flags.DEFINE_enum(
      "distributed",
      "auto",
      ["auto", "on", "off"],
      "jax.distributed.initialize(): auto = when the environment names a "
      "multi-process job (see maybe_initialize_distributed).",
    )


def _register_gin() -> Callable[..., TrainResult]:
  from polylm_jax import gin_utils  # gin at the edge: train() itself stays plain Python

  return gin_utils.configurable(train, "train")


gin_train = _register_gin()

if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow (data only): no INFO lines
  from polylm_jax import gin_utils as _gin_utils

  _define_flags()
  _gin_utils.run(main)
