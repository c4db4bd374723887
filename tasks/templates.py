"""Prompt templates of the benchmark tasks: every prompt the evaluation shows a model is here.

A template turns one normalised record (see FIELDS) into text with `str.format`:
  prompt       the query; few-shot prompts are
               instruction + demo_1 + separator + ... + demo_k + separator + prompt
  choices      rank classification: one continuation per class, in label order. The
               model scores log p(choice | prompt) for each and predicts the best. Choices
               carry their own leading space (" True"), and the loop tokenizes prompt+choice
               jointly, so the split between them follows the tokenizer (no stray piece).
  target       generation: the answer a demonstration shows after its prompt.
  stop         generation: the output is cut at the first occurrence (a newline: answers,
               titles and translations are one line).
  score        rank classification by summed ("sum") or per-token ("mean") log-likelihood.
  lookups      derived fields: {new_field: (record_field, {value: text})}, e.g. XCOPA's
               connective "because"/"therefore" from its "question" field.

The defaults are ours (the paper does not publish its prompts): English instructions for
every language, answers on the same line after "Answer:", translation in the same
instruction format as the bilingual pre-training data (tasks/registry.py). A demonstration
of a rank task is its prompt followed by its gold choice.

Override at the binary edge (gin: `evaluate.template_overrides = {'xnli': {...}}`) or in code:
    set_template("xnli", prompt="{premise}\\nQ: {hypothesis}?\\nA:", choices=(" yes", " maybe", " no"))
Overrides apply when a task's examples are next read; `reset_templates()` restores defaults.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from typing import Any

SCORE_MODES = ("sum", "mean")


@dataclasses.dataclass(frozen=True)
class Template:
  prompt: str
  choices: tuple[str, ...] = ()
  target: str = ""
  instruction: str = ""
  separator: str = "\n\n"
  stop: str = "\n"
  score: str = "sum"
  lookups: Mapping[str, tuple[str, Mapping[str, str]]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    object.__setattr__(self, "choices", tuple(self.choices))
    object.__setattr__(
      self, "lookups", {k: (v[0], dict(v[1])) for k, v in dict(self.lookups).items()}
    )


# Record fields each template family may use (after normalisation in tasks/benchmark.py).
FIELDS: dict[str, tuple[str, ...]] = {
  "xnli": ("premise", "hypothesis"),
  "pawsx": ("sentence1", "sentence2"),
  "xcopa": (
    "premise",
    "premise_clause",
    "question",
    "choice1",
    "choice2",
    "choice1_clause",
    "choice2_clause",
  ),
  "xwinograd": ("sentence", "option1", "option2", "sentence1", "sentence2"),
  "tydiqa": ("title", "context", "question", "answer"),
  "mtg_story": ("src", "tgt"),
  "mtg_question": ("src", "tgt"),
  "mtg_title": ("src", "tgt"),
  "translation": ("src", "tgt", "src_name", "tgt_name", "src_code", "tgt_code"),
}
# Rank families and their number of classes (choices must match it).
NUM_CHOICES = {"xnli": 3, "pawsx": 2, "xcopa": 2, "xwinograd": 2}

_DEFAULTS: dict[str, Template] = {
  # XNLI labels: 0 entailment, 1 neutral, 2 contradiction.
  "xnli": Template(
    prompt="{premise}\nQuestion: {hypothesis} True, Neither or False?\nAnswer:",
    choices=(" True", " Neither", " False"),
  ),
  # PAWS-X labels: 0 different meaning, 1 paraphrase.
  "pawsx": Template(
    prompt="Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: Do "
    "Sentence 1 and Sentence 2 mean the same thing? Yes or No?\nAnswer:",
    choices=(" No", " Yes"),
  ),
  # XCOPA: "<premise without final period> because|therefore <alternative>".
  "xcopa": Template(
    prompt="{premise_clause} {connective}",
    choices=(" {choice1_clause}", " {choice2_clause}"),
    lookups={"connective": ("question", {"cause": "because", "effect": "therefore"})},
  ),
  # XWinograd: the likelihood of each completed sentence ("_" replaced by an option).
  "xwinograd": Template(prompt="", choices=("{sentence1}", "{sentence2}"), separator="\n"),
  "tydiqa": Template(prompt="{context}\nQuestion: {question}\nAnswer:", target=" {answer}"),
  "mtg_story": Template(prompt="Story beginning: {src}\nStory continuation:", target=" {tgt}"),
  "mtg_question": Template(prompt="Passage: {src}\nQuestion about the passage:", target=" {tgt}"),
  "mtg_title": Template(prompt="Article: {src}\nTitle:", target=" {tgt}"),
  "translation": Template(
    prompt="Translate the following {src_name} text into {tgt_name}.\n{src}\n", target="{tgt}"
  ),
}

_templates: dict[str, Template] = dict(_DEFAULTS)


def format_fields(text: str) -> list[str]:
  """The {field} names used by a format string."""
  return [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]


def check_template(family: str, template: Template) -> Template:
  """ValueError naming the family and the part at fault for unknown fields or bad shapes."""
  if family not in FIELDS:
    raise ValueError(f"unknown template family {family!r}; known: {sorted(FIELDS)}")
  known = set(FIELDS[family]) | set(template.lookups)
  parts = {
    "prompt": template.prompt,
    "target": template.target,
    "instruction": template.instruction,
    **{f"choices[{i}]": c for i, c in enumerate(template.choices)},
  }
  for part, text in parts.items():
    if not isinstance(text, str):
      raise ValueError(f"template {family!r}: {part} must be a string, got {text!r}")
    try:
      used = format_fields(text)
    except ValueError as e:
      raise ValueError(
        f"template {family!r}: {part} {text!r} is not a valid format string: {e}"
      ) from None
    unknown = sorted(set(used) - known)
    if unknown:
      raise ValueError(
        f"template {family!r}: {part} {text!r} uses unknown field(s) {unknown}; "
        f"known: {sorted(known)}"
      )
    if part == "instruction" and used:
      raise ValueError(f"template {family!r}: instruction {text!r} must not use fields")
  for name, (source, table) in template.lookups.items():
    if source not in FIELDS[family]:
      raise ValueError(
        f"template {family!r}: lookup {name!r} reads unknown field {source!r}; "
        f"known: {list(FIELDS[family])}"
      )
  if family in NUM_CHOICES:
    if len(template.choices) != NUM_CHOICES[family]:
      raise ValueError(
        f"template {family!r}: needs {NUM_CHOICES[family]} choices (one per "
        f"label, in label order), got {len(template.choices)}"
      )
    if not template.prompt and not template.choices[0]:
      raise ValueError(f"template {family!r}: prompt and choices are empty")
  elif template.choices:
    raise ValueError(f"template {family!r}: a generation task takes no choices")
  if template.score not in SCORE_MODES:
    raise ValueError(
      f"template {family!r}: score must be one of {SCORE_MODES}, got {template.score!r}"
    )
  return template


def get_template(family: str) -> Template:
  if family not in _templates:
    raise ValueError(f"unknown template family {family!r}; known: {sorted(_templates)}")
  return _templates[family]


def set_template(family: str, template: Template | None = None, **changes: Any) -> Template:
  """Replace a family's template, or change some of its parts; validated before use."""
  base = template if template is not None else get_template(family)
  unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(Template)})
  if unknown:
    raise ValueError(
      f"template {family!r}: unknown part(s) {unknown}; known: "
      f"{[f.name for f in dataclasses.fields(Template)]}"
    )
  new = check_template(family, dataclasses.replace(base, **changes))
  _templates[family] = new
  return new


def apply_overrides(overrides: Mapping[str, Mapping[str, Any]]) -> None:
  """{family: {part: value}} from gin; all are checked before any is applied."""
  checked = {}
  for family, changes in overrides.items():
    if not isinstance(changes, Mapping):
      raise ValueError(f"template override for {family!r} must be a dict of parts, got {changes!r}")
    base = get_template(family)
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(Template)})
    if unknown:
      raise ValueError(f"template {family!r}: unknown part(s) {unknown}")
    checked[family] = check_template(family, dataclasses.replace(base, **changes))
  _templates.update(checked)


def reset_templates() -> None:
  _templates.clear()
  _templates.update(_DEFAULTS)


def default_template(family: str) -> Template:
  return _DEFAULTS[family]


def fill(text: str, fields: Mapping[str, Any]) -> str:
  return text.format(**fields)


def with_lookups(template: Template, fields: Mapping[str, Any], where: str) -> dict[str, Any]:
  """fields plus the template's derived fields; a value missing from a lookup is an error."""
  out = dict(fields)
  for name, (source, table) in template.lookups.items():
    value = fields.get(source)
    if value not in table:
      raise ValueError(
        f"{where}: field {source!r} is {value!r}, which the template's lookup "
        f"{name!r} does not map; known values: {sorted(table)}"
      )
    out[name] = table[value]
  return out


for _family, _template in _DEFAULTS.items():
  check_template(_family, _template)
