"""Inference over a checkpoint: prompts in (JSONL or a SeqIO task), JSONL generations out.

`run_inference` is what `python -m polylm_jax.infer` calls with the settings gin built
(inference_config.py). Prompts come from a JSONL file (one object per line: {"prompt": ...},
optionally with "id"; or {"instruction", "input"} formatted with the prompt style) or from a
registered SeqIO task or mixture (the prompt is its `feature`, a trailing eos dropped). It
writes OUTPUT_FILE ({"id", "prompt", "output", "num_tokens", and "target" when the task has
one}) atomically, plus the operative gin config.

Long prompts are an error naming the record, unless `PromptSpec.truncate_prompts`, which keeps
the last max_len - max_new_tokens tokens (the end of a prompt is what the model continues).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from polylm_jax import decoding, gin_utils, host_shares, logs
from polylm_jax import prompts as prompts_lib
from polylm_jax.config import PolyLMConfig
from polylm_jax.files import atomic_write
from polylm_jax.inference_config import CheckpointSpec, GenerationSpec, PromptSpec
from polylm_jax.training.settings import MeshSpec

OUTPUT_FILE = "outputs.jsonl"


def read_jsonl_prompts(path: str, style: str = "plain") -> list[dict[str, Any]]:
  """Records {"id", "prompt"} from a JSONL file; errors name the file and line."""
  prompts_lib.check_style(style, "PromptSpec.style")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"INFER_INPUT_FILE={path}: no such file")
  records = []
  with open(path, "rb") as f:
    for n, raw in enumerate(f, 1):
      where = f"{path}:{n}"
      try:
        line = raw.decode("utf-8-sig" if n == 1 else "utf-8")  # a UTF-8 BOM is fine
      except UnicodeDecodeError as e:
        raise ValueError(
          f"{where}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})"
        ) from None
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
      _check_text(obj, where)
      if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
      if isinstance(obj.get("prompt"), str):
        text = prompts_lib.wrap_message(obj["prompt"], style)
      elif isinstance(obj.get("instruction"), str):
        text = prompts_lib.format_prompt(
          obj["instruction"], obj.get("input"), "multialpaca" if style == "plain" else style
        )
      else:
        raise ValueError(
          f"{where}: needs a string field 'prompt' (or 'instruction' and "
          f"optional 'input'); got keys {sorted(obj)}"
        )
      records.append({"id": obj.get("id", len(records)), "prompt": text})
  if not records:
    raise ValueError(f"INFER_INPUT_FILE={path}: no prompts in the file")
  return records


def _check_text(obj: Any, where: str) -> None:
  """JSON may escape a lone surrogate (\\ud800), which no tokenizer can encode."""
  if isinstance(obj, dict):
    for key, value in obj.items():
      if isinstance(value, str):
        try:
          value.encode("utf-8")
        except UnicodeEncodeError as e:
          raise ValueError(
            f"{where}: field {key!r} holds a lone surrogate ({value[e.start]!a}) at "
            f"character {e.start + 1}: not valid Unicode text"
          ) from None


def read_task_prompts(
  name: str,
  split: str,
  vocab: Any,
  feature: str = "inputs",
  task_feature_lengths: Mapping[str, int] | None = None,
  max_examples: int | None = None,
) -> list[dict[str, Any]]:
  """Records {"id", "prompt", "ids", "target"?} from a SeqIO task or mixture (registered
  beforehand: the infer binary imports `tasks`)."""
  import seqio  # TensorFlow: only when a task is read

  try:
    task = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ValueError(f"MIXTURE_OR_TASK_NAME={name!r}: {e}") from None
  if feature not in task.output_features:
    raise ValueError(
      f"task {name!r} has no feature {feature!r} to use as the prompt (it has "
      f"{sorted(task.output_features)}); set PromptSpec.feature"
    )
  ds = task.get_dataset(
    sequence_length=dict(task_feature_lengths) if task_feature_lengths else None,
    split=split,
    shuffle=False,
    use_cached=False,
    num_epochs=1,
  )
  if max_examples is not None:
    ds = ds.take(max_examples)
  eos = getattr(vocab, "eos_id", None)
  records = []
  for i, ex in enumerate(ds.as_numpy_iterator()):
    ids = [int(t) for t in np.asarray(ex[feature]).reshape(-1)]
    if ids and ids[-1] == eos:
      ids = ids[:-1]  # a prompt is continued, not ended
    text = ex.get(f"{feature}_pretokenized")
    record = {
      "id": i,
      "ids": ids,
      "prompt": text.decode("utf-8") if isinstance(text, bytes) else vocab.decode(ids),
    }
    target = ex.get("targets_pretokenized")
    if isinstance(target, bytes) and feature != "targets":
      record["target"] = target.decode("utf-8")
    records.append(record)
  if not records:
    raise ValueError(f"task {name!r} split {split!r} gave no examples")
  return records


def fit_prompts(
  config: PolyLMConfig, records: list[dict[str, Any]], max_new_tokens: int, truncate: bool
) -> int:
  """Checks prompt lengths (or left-truncates them); returns how many were truncated."""
  limit = config.max_len - max_new_tokens
  if limit < 1:
    raise ValueError(
      f"INFER_MAX_NEW_TOKENS={max_new_tokens} leaves no room for a prompt "
      f"(max_len={config.max_len})"
    )
  truncated = 0
  for r in records:
    if not r["ids"]:
      raise ValueError(f"record {r['id']!r}: the prompt is empty after tokenization")
    if len(r["ids"]) > limit:
      if not truncate:
        raise ValueError(
          f"record {r['id']!r}: the prompt has {len(r['ids'])} tokens; with max_new_tokens="
          f"{max_new_tokens} at most {limit} fit in max_len={config.max_len}. Shorten it, "
          f"lower INFER_MAX_NEW_TOKENS or set PromptSpec.truncate_prompts = True"
        )
      r["ids"] = r["ids"][-limit:]
      truncated += 1
  return truncated


def read_prompts(
  spec: PromptSpec, vocab: Any, records: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
  """The records of the prompt source (or `records`, read from the JSONL file before the
  model was loaded), each with its token ids."""
  if records is None and spec.input_file:
    records = read_jsonl_prompts(spec.input_file, spec.style)[: spec.max_examples]
  elif records is None:
    records = read_task_prompts(
      spec.mixture_or_task_name,
      spec.split,
      vocab,
      spec.feature,
      spec.task_feature_lengths,
      spec.max_examples,
    )
  for r in records:
    if "ids" not in r:
      r["ids"] = list(vocab.encode(r["prompt"]))
  return records


def write_outputs(
  output_dir: str, records: list[dict[str, Any]], outputs: list[list[int]], vocab: Any
) -> str:
  """OUTPUT_FILE in input order (outputs[i] belongs to records[i]); returns its path."""
  rows = []
  for record, ids in zip(records, outputs, strict=True):
    row = {"id": record["id"], "prompt": record["prompt"], "output": vocab.decode(ids)}
    row["num_tokens"] = len(ids)
    if "target" in record:
      row["target"] = record["target"]
    rows.append(row)
  path = os.path.join(output_dir, OUTPUT_FILE)
  atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
  return path


def run_inference(
  *,
  checkpoint: CheckpointSpec,
  prompts: PromptSpec,
  generation: GenerationSpec,
  output_dir: str,
  mesh: MeshSpec = MeshSpec(),
  print_fn: Callable[..., None] = print,
) -> str:
  """Generates for every prompt; returns the path of the JSONL written.

  Every input is checked, and the output folder proven writable, before the model is loaded.
  In a multi-process run every process loads the model onto its own devices and generates
  its share of the batches; process 0 writes the one file, as a 1-process run would.
  """
  if not output_dir:
    raise ValueError('INFER_OUTPUT_DIR is empty: pass --gin.INFER_OUTPUT_DIR=\\"/path\\"')
  max_new_tokens = generation.max_new_tokens
  if not isinstance(max_new_tokens, int):
    raise ValueError(
      f"INFER_MAX_NEW_TOKENS (GenerationSpec.max_new_tokens) must be one integer, got "
      f"{max_new_tokens!r}"
    )
  settings = generation.settings()
  writer = host_shares.is_writer()
  if not writer:
    print_fn = _quiet
  # A bad file fails before the model is loaded (on every process when it fails on one).
  records = host_shares.agree(lambda: _precheck(prompts, output_dir, writer))
  config, params, vocab, device_mesh = host_shares.agree(lambda: checkpoint.load(mesh))
  records = host_shares.agree(lambda: read_prompts(prompts, vocab, records))
  truncated = fit_prompts(config, records, max_new_tokens, prompts.truncate_prompts)
  if truncated:
    logging.warning(
      "left-truncated %d prompts to %d tokens", truncated, config.max_len - max_new_tokens
    )
  print_fn(
    f"generating for {len(records)} prompts ({generation.preset}, up to {max_new_tokens} tokens)"
  )
  # Longest first, so each batch pads little; outputs go back to input order. With several
  # processes each generates whole batches of this order (host_shares.map_batches).
  order = sorted(range(len(records)), key=lambda i: -len(records[i]["ids"]))
  rows = generation.batch_size and generation.batch_size * settings.num_beams
  params = decoding.prepare(config, params, mesh=device_mesh, batch_size=rows)  # once
  generated = host_shares.map_batches(
    lambda ids: decoding.generate(
      config,
      params,
      ids,
      max_new_tokens,
      batch_size=generation.batch_size,
      mesh=device_mesh,
      **dataclasses.asdict(settings),
    ),
    [records[i]["ids"] for i in order],
    generation.batch_size,
  )
  outputs: list[list[int]] = [[] for _ in records]
  for j, i in enumerate(order):
    outputs[i] = generated[j]
  path = os.path.join(output_dir, OUTPUT_FILE)
  if writer:
    write_outputs(output_dir, records, outputs, vocab)
    gin_utils.write_operative_config(output_dir)
  print_fn(f"wrote {len(records)} generations to {path}")
  return path


def _precheck(spec: PromptSpec, output_dir: str, writer: bool) -> list[dict[str, Any]] | None:
  """The JSONL prompts (None for a SeqIO source), and the output folder proven writable by
  the process that writes it."""
  records = None
  if spec.input_file:
    records = read_jsonl_prompts(spec.input_file, spec.style)[: spec.max_examples]
  if writer:
    logs.check_output_dir(output_dir, "INFER_OUTPUT_DIR")
  return records


def _quiet(*args: Any, **kwargs: Any) -> None:
  """print_fn of processes other than 0: one summary per run."""
