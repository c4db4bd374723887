"""The benchmark evaluation loop: one function that the eval binary and the trainer call.

    results = evaluate(config, params, vocab, "polylm_eval_xnli_0shot,polylm_eval_tydiqa_ar_0shot",
                       max_examples=200)
    results.summary()          # {"eval/polylm_eval_xnli_de_0shot/accuracy": 41.5, ...}

The loop knows no task registry: it evaluates `TaskSpec`s (name, family, kind, metric, scoring
and a loader of rendered `Example`s). `tasks/benchmark.py` builds them and, on import,
registers a resolver so that task and mixture names work here too (imports go tasks/ ->
polylm_jax, never back).

Rank classification (XNLI, XCOPA, PAWS-X, XWinograd): every (context, continuation) pair of an
example is scored with `decoding.score` (log p(continuation | context), summed or per token
as the task says) and the best is the prediction. Pairs follow lm-evaluation-harness: a
context and its continuation are tokenized together and split where the context's own
tokens end; the context's trailing whitespace is scored with the continuation (as the
harness's `_encode_pair`); a text's leading whitespace is left to the SentencePiece word-start
marker (as Hugging Face's Llama tokenizer does), so " Yes" at the start of a text is "▁Yes".
Generation (TyDiQA, MTG, translation): `decoding.generate` (greedy unless decode settings say
otherwise), cut at the task's stop string.

Every prompt starts with eos (`prefix_eos`): pre-training joins documents with </s>, so that
is how the model sees the start of a text (the harness's start token when the tokenizer's
BOS is </s>). Long prompts are cut from the left (the oldest demonstrations go first) to fit
the model's positions; each example records whether it was cut and the task counts them.
Pairs and prompts are sorted by length before batching.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from polylm_jax import decoding
from polylm_jax.evaluation import metrics as metrics_lib
from polylm_jax import vocab as vocab_lib
from polylm_jax.config import PolyLMConfig

PRIMARY_METRICS = {"accuracy": "accuracy", "squad": "f1", "rouge": "rougeL", "translation": "bleu"}
METRIC_CONVENTIONS = {
  "accuracy": "accuracy (%) of the best-scoring choice",
  "squad": "F1 and exact match (%), official SQuAD v1.1 normalisation, best over references",
  "rouge": "ROUGE-1/2/L F-measure (%), rouge-score with a multilingual tokenizer, no stemming, "
  "best over references",
  "translation": "corpus sacreBLEU BLEU (tokenizer by target language) and chrF (%)",
}


@dataclasses.dataclass(frozen=True)
class Example:
  """One rendered example. Rank: score each choice after the prompt, or, with a continuation
  (multiple inputs, XWinograd's partial scoring), the continuation after prompt + choice.
  Generation: continue the prompt."""

  id: str
  lang: str
  prompt: str
  choices: tuple[str, ...] = ()
  label: int = -1
  references: tuple[str, ...] = ()
  continuation: str = ""

  def pairs(self) -> list[tuple[str, str]]:
    """(context, scored text) per choice."""
    if self.continuation:
      return [(self.prompt + c, self.continuation) for c in self.choices]
    return [(self.prompt, c) for c in self.choices]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What the loop needs of one benchmark task (tasks/benchmark.py builds these)."""

  name: str
  family: str
  lang: str
  shots: int
  kind: str  # "rank" or "generate"
  metric: str  # a key of PRIMARY_METRICS
  load: Callable[[int | None], Sequence[Example]]  # the first N examples (None: all)
  score: str = "sum"  # rank: "sum" or "mean" log-likelihood
  stop: str = "\n"  # generation: cut the output at its first occurrence
  max_new_tokens: int = 0  # generation default
  conventions: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # for the report

  def __post_init__(self):
    if self.kind not in ("rank", "generate"):
      raise ValueError(f"task {self.name}: kind must be 'rank' or 'generate', got {self.kind!r}")
    if self.metric not in PRIMARY_METRICS:
      raise ValueError(
        f"task {self.name}: metric {self.metric!r} unknown; known: {sorted(PRIMARY_METRICS)}"
      )

  @property
  def primary_metric(self) -> str:
    return PRIMARY_METRICS[self.metric]


# name(s) -> specs, registered by the task library (tasks/benchmark.py) on import.
_resolver: dict[str, Any] = {"resolve": None, "families": ()}


def register_task_resolver(
  resolve: Callable[[Sequence[str]], list[TaskSpec]], families: Sequence[str]
) -> None:
  """Lets `evaluate` take task/mixture names; `families` are the known family names."""
  _resolver.update(resolve=resolve, families=tuple(families))


def task_specs(tasks: str | Sequence[str | TaskSpec]) -> list[TaskSpec]:
  """TaskSpecs of specs and/or names (a comma-separated string or a list)."""
  if isinstance(tasks, str):
    tasks = [n for n in tasks.split(",") if n.strip()]
  names = [t for t in tasks if isinstance(t, str)]
  if names and _resolver["resolve"] is None:
    raise ValueError(
      f"task names {names[:3]} need a task library: import tasks.benchmark (it registers "
      f"the benchmark's names) or pass evaluation.TaskSpec objects"
    )
  specs: list[TaskSpec] = []
  for t in tasks:
    if isinstance(t, TaskSpec):
      specs.append(t)
    elif isinstance(t, str):
      specs.extend(_resolver["resolve"]([t]))
    else:
      raise ValueError(f"a task must be a name or an evaluation.TaskSpec, got {t!r}")
  if not specs:
    raise ValueError("no benchmark task or mixture given")
  return list({s.name: s for s in specs}.values())


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
  # How the numbers were made (prompt set, scoring, start token, metric), for comparisons.
  conventions: dict[str, Any] = dataclasses.field(default_factory=dict)

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
  """Tokens of prompt+choice, split into (context, continuation) where the context's end.

  As lm-evaluation-harness: the prompt's trailing whitespace belongs to the continuation,
  and leading whitespace of the whole text is dropped (the tokenizer's word-start marker
  stands for it). prompt_ids: `context_ids(vocab, prompt)`, when already computed.
  """
  text = prompt + choice
  start = len(text) - len(text.lstrip())
  cut = max(len(prompt.rstrip()), start)
  whole = list(vocab.encode(text[start:]))
  if not whole:
    raise ValueError(f"prompt + choice {text!r} encode to no tokens")
  if cut == start:  # no context text: everything is scored
    return [], whole
  ctx = context_ids(vocab, prompt) if prompt_ids is None else list(prompt_ids)
  n = min(_common_prefix(ctx, whole), len(whole) - 1)
  return whole[:n], whole[n:]


def context_ids(vocab: Any, prompt: str) -> list[int]:
  """The tokens of a prompt as split_encode sees it (outer whitespace dropped)."""
  text = prompt.strip()
  return list(vocab.encode(text)) if text else []


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


def _encode_pairs(config, vocab, examples, prefix_eos):
  """(contexts, continuations, truncated per example) of every choice of every example."""
  start = [config.eos_id] if prefix_eos else []
  contexts, conts, truncated = [], [], np.zeros(len(examples), bool)
  for i, ex in enumerate(examples):
    shared = None if ex.continuation else context_ids(vocab, ex.prompt)
    for context, scored in ex.pairs():
      ctx, cont = split_encode(vocab, context, scored, shared)
      # score() needs a context token: an empty prompt without prefix_eos still gets eos.
      ctx, cont, cut = _fit(start + ctx or [config.eos_id], cont, config.max_len)
      truncated[i] |= cut
      contexts.append(ctx)
      conts.append(cont)
  return contexts, conts, truncated


def _rank_task(config, params, vocab, spec, examples, *, batch_size, mesh, prefix_eos):
  contexts, conts, truncated = _encode_pairs(config, vocab, examples, prefix_eos)
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
  ranking = total if spec.score == "sum" else per_token
  predicted = np.argmax(ranking, axis=1)
  labels = np.array([ex.label for ex in examples])
  predictions = [
    {
      "id": ex.id,
      "lang": ex.lang,
      "prompt": ex.prompt,
      "choices": list(ex.choices),
      **({"continuation": ex.continuation} if ex.continuation else {}),
      "label": int(ex.label),
      "prediction": int(predicted[i]),
      "correct": bool(predicted[i] == ex.label),
      "scores": total[i].tolist(),
      "per_token_scores": per_token[i].tolist(),
      "truncated": bool(truncated[i]),
    }
    for i, ex in enumerate(examples)
  ]
  metrics = {"accuracy": metrics_lib.accuracy(predicted, labels)}
  return metrics, predictions, int(truncated.sum()), {"score": spec.score}


def generation_metrics(spec, texts, refs, bleu_tokenizers, notes):
  """(metrics over all outputs, per-example scores) of a generation task; the eval binary
  merges multi-process shares through it too (evaluation/checkpoint.py)."""
  if spec.metric == "squad":
    per = [metrics_lib.squad_scores(p, r) for p, r in zip(texts, refs)]
    return metrics_lib.squad_metrics(texts, refs), per
  if spec.metric == "rouge":
    per = [metrics_lib.rouge_scores(p, r) for p, r in zip(texts, refs)]
    return metrics_lib.rouge_metrics(texts, refs), per
  tgt = spec.lang.split("-")[1]
  tokenize = (bleu_tokenizers or {}).get(tgt)
  notes["bleu_tokenizer"] = tokenize or metrics_lib.bleu_tokenizer(tgt)
  per = [{"chrf": metrics_lib.sentence_chrf(p, r)} for p, r in zip(texts, refs)]
  return metrics_lib.translation_metrics(texts, refs, tgt, tokenize), per


def _generate_task(
  config,
  params,
  vocab,
  spec,
  examples,
  *,
  batch_size,
  mesh,
  prefix_eos,
  max_new_tokens,
  decode_settings,
  bleu_tokenizers,
):
  max_new = min(max_new_tokens, config.max_len // 2)
  if max_new < max_new_tokens:
    logging.info(
      "%s: max_new_tokens %d capped at %d (half the model's %d positions)",
      spec.name,
      max_new_tokens,
      max_new,
      config.max_len,
    )
  notes: dict[str, Any] = {"max_new_tokens": max_new}
  start = [config.eos_id] if prefix_eos else []
  prompts, truncated = [], np.zeros(len(examples), bool)
  room = config.max_len - max_new
  for i, ex in enumerate(examples):
    text = ex.prompt.lstrip()  # leading whitespace: as in split_encode
    ids = start + (list(vocab.encode(text)) if text else [])
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
    if spec.stop:
      text = text.split(spec.stop)[0]
    texts[j] = text.strip()
  refs = [list(ex.references) for ex in examples]
  metrics, per = generation_metrics(spec, texts, refs, bleu_tokenizers, notes)
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


def _max_new_for(spec: TaskSpec, max_new_tokens: int | Mapping[str, int] | None) -> int:
  if max_new_tokens is None:
    return spec.max_new_tokens
  if isinstance(max_new_tokens, Mapping):
    return int(max_new_tokens.get(spec.family, spec.max_new_tokens))
  return int(max_new_tokens)


def _check_max_new(specs: Sequence[TaskSpec], max_new_tokens) -> None:
  if isinstance(max_new_tokens, Mapping):
    known = set(_resolver["families"]) | {s.family for s in specs}
    unknown = sorted(set(max_new_tokens) - known)
    if unknown:
      raise ValueError(f"max_new_tokens: unknown families {unknown}; known: {sorted(known)}")


def conventions(
  spec: TaskSpec, *, prefix_eos: bool, decode_settings: Mapping[str, Any] | None
) -> dict[str, Any]:
  """How a task's numbers were made: the spec's (prompt set, demonstrations) and the loop's."""
  out = dict(spec.conventions)
  out["start_token"] = "</s>" if prefix_eos else "none"
  if spec.kind == "rank":
    out["scoring"] = f"{'summed' if spec.score == 'sum' else 'per-token mean'} log-likelihood"
  else:
    out["decoding"] = dict(decode_settings) if decode_settings else "greedy"
    out["output"] = f"cut at the first {spec.stop!r}" if spec.stop else "whole"
  out["metric"] = METRIC_CONVENTIONS[spec.metric]
  return out


def _check_args(config, vocab, max_examples, batch_size, decode_settings) -> None:
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


def evaluate(
  config: PolyLMConfig,
  params: Any,
  vocab: Any,
  task_names: str | Sequence[str | TaskSpec],
  *,
  max_examples: int | None = None,
  batch_size: int = 32,
  max_new_tokens: int | Mapping[str, int] | None = None,
  decode_settings: Mapping[str, Any] | None = None,
  mesh=None,
  prefix_eos: bool = True,
  bleu_tokenizers: Mapping[str, str] | None = None,
) -> EvalResults:
  """Evaluates `params` on benchmark tasks: TaskSpecs and/or task and mixture names.

  max_examples: the first N examples of each task (None: all). max_new_tokens: one limit for
  every generation task or {family: limit} (default: the family's; capped at half the
  model's positions). decode_settings: `decoding.generate` settings (default greedy).
  bleu_tokenizers: {target language: sacrebleu tokenizer} overriding metrics_lib'.
  """
  _check_args(config, vocab, max_examples, batch_size, decode_settings)
  specs = task_specs(task_names)
  _check_max_new(specs, max_new_tokens)
  results = []
  for spec in specs:
    t0 = time.perf_counter()
    examples = list(spec.load(max_examples))
    kw = dict(batch_size=batch_size, mesh=mesh, prefix_eos=prefix_eos)
    if spec.kind == "rank":
      metrics, predictions, cut, notes = _rank_task(config, params, vocab, spec, examples, **kw)
    else:
      metrics, predictions, cut, notes = _generate_task(
        config,
        params,
        vocab,
        spec,
        examples,
        **kw,
        max_new_tokens=_max_new_for(spec, max_new_tokens),
        decode_settings=decode_settings,
        bleu_tokenizers=bleu_tokenizers,
      )
    seconds = time.perf_counter() - t0
    result = TaskResult(
      spec.name,
      spec.family,
      spec.lang,
      spec.shots,
      metrics,
      spec.primary_metric,
      len(examples),
      cut,
      seconds,
      predictions,
      notes,
      conventions(spec, prefix_eos=prefix_eos, decode_settings=decode_settings),
    )
    logging.info(
      "%s: %s over %d examples (%d cut to fit) in %.1f s",
      spec.name,
      ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()),
      len(examples),
      cut,
      seconds,
    )
    results.append(result)
  return EvalResults(results)
