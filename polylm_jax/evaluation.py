"""The benchmark evaluation loop: one function that the eval binary and the trainer call.

    results = evaluate(config, params, vocab, "polylm_eval_xnli_0shot,polylm_eval_tydiqa_ar_0shot",
                       max_examples=200)
    results.summary()          # {"eval/polylm_eval_xnli_de_0shot/accuracy": 41.5, ...}

Rank classification (XNLI, XCOPA, PAWS-X, XWinograd): every (prompt, choice) pair is scored
with `decoding.score` (log p(choice | prompt), summed or per token as the template says) and
the best choice is the prediction. Prompt and choice are tokenized together and split where
the prompt's own tokens end, so the pair's tokens are exactly those of the joined text.
Generation (TyDiQA, MTG, translation): `decoding.generate` (greedy unless decode settings say
otherwise), cut at the template's stop string.

Every prompt starts with eos (`prefix_eos`): pre-training joins documents with </s>, so that
is how the model sees the start of a text. Long prompts are cut from the left (the oldest
demonstrations go first) to fit the model's positions; each example records whether it was
cut and the task counts them. Pairs and prompts are sorted by length before batching.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from polylm_jax import decoding, eval_metrics
from polylm_jax import vocab as vocab_lib
from polylm_jax.config import PolyLMConfig
from tasks import benchmark, templates


@dataclasses.dataclass
class TaskResult:
  task: str
  family: str
  lang: str
  shots: int
  metrics: dict[str, float]
  primary_metric: str
  num_examples: int
  num_truncated: int
  seconds: float
  predictions: list[dict[str, Any]] = dataclasses.field(repr=False)
  notes: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. the BLEU tokenizer

  @property
  def primary(self) -> float:
    return self.metrics[self.primary_metric]


@dataclasses.dataclass
class EvalResults:
  tasks: list[TaskResult]

  def summary(self, prefix: str = "eval") -> dict[str, float]:
    """Flat scalars for metric writers: {prefix/task/metric: value}."""
    return {f"{prefix}/{t.task}/{k}": v for t in self.tasks for k, v in t.metrics.items()}

  def rows(self) -> list[dict[str, Any]]:
    """One row per task and metric (the results table)."""
    return [
      {
        "task": t.task,
        "family": t.family,
        "lang": t.lang,
        "shots": t.shots,
        "metric": k,
        "value": v,
        "primary": k == t.primary_metric,
        "examples": t.num_examples,
        "truncated": t.num_truncated,
      }
      for t in self.tasks
      for k, v in t.metrics.items()
    ]

  def __getitem__(self, task: str) -> TaskResult:
    for t in self.tasks:
      if t.task == task:
        return t
    raise KeyError(f"no result for task {task!r}; tasks: {[t.task for t in self.tasks]}")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
  n = 0
  for x, y in zip(a, b):
    if x != y:
      break
    n += 1
  return n


def split_encode(
  vocab: Any, prompt: str, choice: str, prompt_ids: Sequence[int] | None = None
) -> tuple[list[int], list[int]]:
  """Tokens of prompt+choice, split into (context, continuation) where the prompt's end."""
  whole = list(vocab.encode(prompt + choice))
  if not whole:
    raise ValueError(f"prompt + choice {prompt + choice!r} encode to no tokens")
  ctx = list(vocab.encode(prompt)) if prompt_ids is None else list(prompt_ids)
  n = min(_common_prefix(ctx, whole), len(whole) - 1) if prompt else 0
  return whole[:n], whole[n:]


def _fit(context: list[int], continuation: list[int], max_len: int):
  """Cuts the context from the left (and, if it alone is too long, the continuation from the
  right) so that both fit in max_len with at least one context token."""
  truncated = False
  if len(continuation) > max_len - 1:
    continuation, truncated = continuation[: max_len - 1], True
  room = max_len - len(continuation)
  if len(context) > room:
    context, truncated = context[len(context) - room :], True
  return context, continuation, truncated


def _by_length(lengths: Sequence[int]) -> np.ndarray:
  return np.argsort(-np.asarray(lengths), kind="stable")


def _rank_task(config, params, vocab, task, examples, *, batch_size, mesh, prefix_eos):
  template = templates.get_template(task.family.template)
  start = [config.eos_id] if prefix_eos else []
  contexts, conts, truncated = [], [], np.zeros(len(examples), bool)
  for i, ex in enumerate(examples):
    prompt_ids = list(vocab.encode(ex.prompt)) if ex.prompt else []
    for choice in ex.choices:
      ctx, cont = split_encode(vocab, ex.prompt, choice, prompt_ids)
      # score() needs a context token: an empty prompt without prefix_eos still gets eos.
      ctx, cont, cut = _fit(start + ctx or [config.eos_id], cont, config.max_len)
      truncated[i] |= cut
      contexts.append(ctx)
      conts.append(cont)
  order = _by_length([len(c) + len(x) for c, x in zip(contexts, conts)])
  scores = decoding.score(
    config,
    params,
    [contexts[j] for j in order],
    [conts[j] for j in order],
    batch_size=batch_size,
    mesh=mesh,
  )
  total, per_token = np.empty(len(order), np.float32), np.empty(len(order), np.float32)
  total[order], per_token[order] = scores.total, scores.per_token
  n = len(examples[0].choices)
  total, per_token = total.reshape(-1, n), per_token.reshape(-1, n)
  ranking = total if template.score == "sum" else per_token
  predicted = np.argmax(ranking, axis=1)
  labels = np.array([ex.label for ex in examples])
  predictions = [
    {
      "id": ex.id,
      "lang": ex.lang,
      "prompt": ex.prompt,
      "choices": list(ex.choices),
      "label": int(ex.label),
      "prediction": int(predicted[i]),
      "correct": bool(predicted[i] == ex.label),
      "scores": total[i].tolist(),
      "per_token_scores": per_token[i].tolist(),
      "truncated": bool(truncated[i]),
    }
    for i, ex in enumerate(examples)
  ]
  metrics = {"accuracy": eval_metrics.accuracy(predicted, labels)}
  return metrics, predictions, int(truncated.sum()), {"score": template.score}


def _generate_task(
  config,
  params,
  vocab,
  task,
  examples,
  *,
  batch_size,
  mesh,
  prefix_eos,
  max_new_tokens,
  decode_settings,
  bleu_tokenizers,
):
  fam = task.family
  template = templates.get_template(fam.template)
  max_new = min(max_new_tokens, config.max_len // 2)
  if max_new < max_new_tokens:
    logging.info(
      "%s: max_new_tokens %d capped at %d (half the model's %d positions)",
      task.name,
      max_new_tokens,
      max_new,
      config.max_len,
    )
  notes: dict[str, Any] = {"max_new_tokens": max_new}
  start = [config.eos_id] if prefix_eos else []
  prompts, truncated = [], np.zeros(len(examples), bool)
  room = config.max_len - max_new
  for i, ex in enumerate(examples):
    ids = start + list(vocab.encode(ex.prompt))
    if len(ids) > room:
      ids, truncated[i] = ids[len(ids) - room :], True
    prompts.append(ids or [config.eos_id])
  order = _by_length([len(p) for p in prompts])
  out = decoding.generate(
    config,
    params,
    [prompts[j] for j in order],
    max_new,
    batch_size=batch_size,
    mesh=mesh,
    **(decode_settings or {}),
  )
  texts = [""] * len(examples)
  for j, ids in zip(order, out):
    text = vocab.decode(ids)
    if template.stop:
      text = text.split(template.stop)[0]
    texts[j] = text.strip()
  refs = [list(ex.references) for ex in examples]
  if fam.metric == "squad":
    metrics = eval_metrics.squad_metrics(texts, refs)
    per = [eval_metrics.squad_scores(p, r) for p, r in zip(texts, refs)]
  elif fam.metric == "rouge":
    metrics = eval_metrics.rouge_metrics(texts, refs)
    per = [eval_metrics.rouge_scores(p, r) for p, r in zip(texts, refs)]
  else:
    tgt = task.lang.split("-")[1]
    tokenize = (bleu_tokenizers or {}).get(tgt)
    metrics = eval_metrics.translation_metrics(texts, refs, tgt, tokenize)
    notes["bleu_tokenizer"] = tokenize or eval_metrics.bleu_tokenizer(tgt)
    per = [{"chrf": eval_metrics.sentence_chrf(p, r)} for p, r in zip(texts, refs)]
  predictions = [
    {
      "id": ex.id,
      "lang": ex.lang,
      "prompt": ex.prompt,
      "prediction": texts[i],
      "references": refs[i],
      "scores": per[i],
      "truncated": bool(truncated[i]),
    }
    for i, ex in enumerate(examples)
  ]
  return metrics, predictions, int(truncated.sum()), notes


def _max_new_for(family: benchmark.Family, max_new_tokens: int | Mapping[str, int] | None) -> int:
  if max_new_tokens is None:
    return family.max_new_tokens
  if isinstance(max_new_tokens, Mapping):
    unknown = sorted(set(max_new_tokens) - set(benchmark.FAMILIES))
    if unknown:
      raise ValueError(
        f"max_new_tokens: unknown families {unknown}; known: {sorted(benchmark.FAMILIES)}"
      )
    return int(max_new_tokens.get(family.name, family.max_new_tokens))
  return int(max_new_tokens)


def evaluate(
  config: PolyLMConfig,
  params: Any,
  vocab: Any,
  task_names: str | Sequence[str],
  *,
  max_examples: int | None = None,
  batch_size: int = 32,
  max_new_tokens: int | Mapping[str, int] | None = None,
  decode_settings: Mapping[str, Any] | None = None,
  mesh=None,
  prefix_eos: bool = True,
  bleu_tokenizers: Mapping[str, str] | None = None,
) -> EvalResults:
  """Evaluates `params` on benchmark tasks and/or mixtures (names or a comma-separated string).

  max_examples: the first N examples of each task (None: all). max_new_tokens: one limit for
  every generation task or {family: limit} (default: the family's; capped at half the
  model's positions). decode_settings: `decoding.generate` settings (default greedy).
  bleu_tokenizers: {target language: sacrebleu tokenizer} overriding eval_metrics'.
  """
  vocab_lib.check_vocab_matches(vocab, config.vocab_size)
  eos = getattr(vocab, "eos_id", None)
  if eos is not None and int(eos) != config.eos_id:
    raise ValueError(
      f"vocabulary eos id {eos} differs from the model config's eos_id {config.eos_id}"
    )
  if max_examples is not None and max_examples < 1:
    raise ValueError(f"max_examples must be >= 1 or None, got {max_examples}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  decoding.make_settings(**(decode_settings or {}))  # unknown settings fail before any work
  results = []
  for name in benchmark.resolve_all(task_names):
    task = benchmark.get_task(name)
    t0 = time.perf_counter()
    examples = benchmark.load_examples(name, max_examples=max_examples)
    if task.family.kind == "rank":
      metrics, predictions, cut, notes = _rank_task(
        config,
        params,
        vocab,
        task,
        examples,
        batch_size=batch_size,
        mesh=mesh,
        prefix_eos=prefix_eos,
      )
    else:
      metrics, predictions, cut, notes = _generate_task(
        config,
        params,
        vocab,
        task,
        examples,
        batch_size=batch_size,
        mesh=mesh,
        prefix_eos=prefix_eos,
        max_new_tokens=_max_new_for(task.family, max_new_tokens),
        decode_settings=decode_settings,
        bleu_tokenizers=bleu_tokenizers,
      )
    seconds = time.perf_counter() - t0
    result = TaskResult(
      name,
      task.family.name,
      task.lang,
      task.shots,
      metrics,
      task.family.primary_metric,
      len(examples),
      cut,
      seconds,
      predictions,
      notes,
    )
    logging.info(
      "%s: %s over %d examples (%d cut to fit) in %.1f s",
      name,
      ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()),
      len(examples),
      cut,
      seconds,
    )
    results.append(result)
  return EvalResults(results)
