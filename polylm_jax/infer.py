r"""The t5x-style inference binary: prompts in, JSONL generations out.

    python -m polylm_jax.infer --gin_file=gin/runs/infer.gin \
        --gin.CHECKPOINT_PATH=\"runs/demo\" --gin.INFER_OUTPUT_DIR=\"runs/demo/infer\" \
        --gin.INFER_INPUT_FILE=\"prompts.jsonl\"

Prompts come from a JSONL file (one object per line: {"prompt": ...}, optionally with "id";
or {"instruction", "input"} formatted with the prompt style) or from a SeqIO task or mixture
(MIXTURE_OR_TASK_NAME, split; the prompt is its "inputs" feature, a trailing eos dropped).
CHECKPOINT_PATH is a run dir, a checkpoint (step) dir or a Hugging Face PolyLM directory
(`checkpoints.load`). Writes INFER_OUTPUT_DIR/outputs.jsonl ({"id", "prompt", "output",
"num_tokens", and "target" when the task has one}) atomically, plus the operative config.

Long prompts are an error naming the record, unless `infer.truncate_prompts = True`, which
keeps the last max_len - max_new_tokens tokens (the end of a prompt is what the model
continues). `run_inference()` is a plain function; gin binds it as `infer` at this edge.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import jax
import numpy as np

from polylm_jax import checkpoints, decoding, gin_utils, logs, partitioning
from polylm_jax import prompts as prompts_lib
from polylm_jax.config import PolyLMConfig
from polylm_jax.files import atomic_write

OUTPUT_FILE = "outputs.jsonl"


def read_jsonl_prompts(path: str, style: str = "plain") -> list[dict[str, Any]]:
  """Records {"id", "prompt"} from a JSONL file; errors name the file and line."""
  prompts_lib.check_style(style, "infer.prompt_style")
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
  """Records {"id", "prompt", "ids", "target"?} from a SeqIO task or mixture."""
  import seqio
  import tasks  # noqa: F401  (registers the project's tasks)

  try:
    task = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ValueError(f"MIXTURE_OR_TASK_NAME={name!r}: {e}") from None
  if feature not in task.output_features:
    raise ValueError(
      f"task {name!r} has no feature {feature!r} to use as the prompt (it has "
      f"{sorted(task.output_features)}); set infer.prompt_feature"
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


def _fit(
  config: PolyLMConfig, records: list[dict[str, Any]], max_new_tokens: int, truncate: bool
) -> int:
  """Checks prompt lengths (or left-truncates them); returns how many were truncated."""
  limit = config.max_len - max_new_tokens
  if limit < 1:
    raise ValueError(
      f"infer.max_new_tokens={max_new_tokens} leaves no room for a prompt "
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
          f"lower INFER_MAX_NEW_TOKENS or set infer.truncate_prompts = True"
        )
      r["ids"] = r["ids"][-limit:]
      truncated += 1
  return truncated


def run_inference(
  *,
  checkpoint_path: str,
  output_dir: str,
  input_file: str | None = None,
  mixture_or_task_name: str | None = None,
  split: str = "validation",
  prompt_feature: str = "inputs",
  task_feature_lengths: Mapping[str, int] | None = None,
  prompt_style: str = "plain",
  vocab_path: str | None = None,
  step: int | None = None,
  max_examples: int | None = None,
  max_new_tokens: int = 128,
  batch_size: int = 8,
  preset: str = "greedy",
  decode_settings: Mapping[str, Any] | None = None,
  seed: int = 0,
  truncate_prompts: bool = False,
  mesh_data: int = -1,
  mesh_fsdp: int = 1,
  mesh_tensor: int = 1,
  print_fn: Callable[..., None] = print,
) -> str:
  """Generates for every prompt; returns the path of the JSONL written.

  Exactly one of input_file / mixture_or_task_name. preset: 'greedy', 'sampling' (the demo's
  top_p 0.8, temperature 0.7, repetition_penalty 1.02) or 'beam' (4 beams, early stopping);
  decode_settings override single values (see decoding.DecodeSettings). Every input is
  checked, and the output folder proven writable, before the model is loaded.
  """
  _check_arguments(checkpoint_path, output_dir, input_file, mixture_or_task_name, batch_size)
  settings = decoding.make_settings(preset, **{"seed": seed, **dict(decode_settings or {})})
  records = read_jsonl_prompts(input_file, prompt_style) if input_file else None
  if records is not None and max_examples is not None:
    records = records[:max_examples]
  logs.check_output_dir(output_dir, "INFER_OUTPUT_DIR")

  mesh = (
    partitioning.make_mesh(mesh_data, mesh_fsdp, mesh_tensor) if jax.device_count() > 1 else None
  )
  config, params, vocab = checkpoints.load_for_inference(
    checkpoint_path, vocab_path, step=step, mesh=mesh, step_flag="--gin.infer.step"
  )
  if records is None:
    records = read_task_prompts(
      mixture_or_task_name, split, vocab, prompt_feature, task_feature_lengths, max_examples
    )
  for r in records:
    if "ids" not in r:
      r["ids"] = list(vocab.encode(r["prompt"]))
  truncated = _fit(config, records, max_new_tokens, truncate_prompts)
  if truncated:
    logging.warning(
      "left-truncated %d prompts to %d tokens", truncated, config.max_len - max_new_tokens
    )
  print_fn(f"generating for {len(records)} prompts ({preset}, up to {max_new_tokens} tokens)")
  # Longest first, so each batch pads little; outputs go back to input order.
  order = sorted(range(len(records)), key=lambda i: -len(records[i]["ids"]))
  outputs = decoding.generate(
    config,
    params,
    [records[i]["ids"] for i in order],
    max_new_tokens,
    batch_size=batch_size,
    mesh=mesh,
    **dataclasses.asdict(settings),
  )
  rows: list[dict[str, Any]] = [{}] * len(records)
  for j, i in enumerate(order):
    rows[i] = {
      "id": records[i]["id"],
      "prompt": records[i]["prompt"],
      "output": vocab.decode(outputs[j]),
      "num_tokens": len(outputs[j]),
      **({"target": records[i]["target"]} if "target" in records[i] else {}),
    }
  path = os.path.join(output_dir, OUTPUT_FILE)
  atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
  gin_utils.write_operative_config(output_dir)
  print_fn(f"wrote {len(rows)} generations to {path}")
  return path


def _check_arguments(
  checkpoint_path: str,
  output_dir: str,
  input_file: str | None,
  mixture_or_task_name: str | None,
  batch_size: int,
) -> None:
  if not checkpoint_path:
    raise ValueError("CHECKPOINT_PATH is empty: pass --gin.CHECKPOINT_PATH=\\\"/path\\\"")
  if not output_dir:
    raise ValueError("INFER_OUTPUT_DIR is empty: pass --gin.INFER_OUTPUT_DIR=\\\"/path\\\"")
  if bool(input_file) == bool(mixture_or_task_name):
    raise ValueError(
      "give exactly one prompt source: INFER_INPUT_FILE (JSONL) or "
      f"MIXTURE_OR_TASK_NAME (got {input_file!r} and {mixture_or_task_name!r})"
    )
  if batch_size < 1:
    raise ValueError(f"infer.batch_size must be >= 1, got {batch_size}")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"unexpected arguments {argv[1:]} (gin settings go in --gin.KEY=VALUE)")
  gin_utils.call_configured(gin_infer, "infer")


gin_infer = gin_utils.configurable(run_inference, "infer")

if __name__ == "__main__":
  gin_utils.run(main)
