"""Prompt templates of the benchmark tasks: every prompt the evaluation shows a model is here.

Two prompt sets (`use_prompt_set(name)`; gin: `BenchmarkSpec.prompt_set`):
  lm_eval   (default) lm-evaluation-harness 0.4.13's prompts, the XGLM-style prompts behind the
            published multilingual numbers of PolyLM's peers (XGLM, BLOOM, mGPT): per-language
            words, the harness's choice of scored text and its whitespace and punctuation
            (tests/test_lm_eval_parity.py runs the harness itself against these).
              XNLI    "{premise}, right? Yes|Also|No, {hypothesis}" (translated words), the whole
                      sentence scored after the start token, with the harness's leading space
              PAWS-X  "{sentence1}, right? No|Yes, {sentence2}" (translated; de en es fr are
                      detokenised, sentence 1 loses a final . , ; and sentence 2 starts lower-case)
              XCOPA   premise minus its last character + " " + connective (zh 因为/所以), the
                      choice with a lower-case first letter scored after a space
              XWinograd partial scoring: the contexts differ (sentence up to the blank + option),
                      the rest of the sentence after the blank is scored
            Few-shot: demonstrations joined with "\n\n" (the harness's fewshot_delimiter).
  english   the project's earlier prompts: English instructions for every language ("Answer:"
            prompts, XCOPA with because/therefore, XWinograd scoring the whole sentences).
  For generation the harness 0.4.13 has TyDiQA-GoldP only: lm_eval uses its prompt
  ("Context: ...\n\nQuestion: ...\n\nAnswer:" in the language's own words); english keeps
  "{context}\nQuestion: {question}\nAnswer:". MTG, WMT20 and FLORES-200 have no harness task
  (its translation tasks are WMT14/16 and IWSLT17 in the GPT-3 "German phrase:" format), so
  both sets use ours: a labelled source for MTG, and translation in the instruction format of
  the bilingual pre-training data (tasks/registry.py), which is what PolyLM was trained on;
  generations are cut at the first newline (the harness's `until: ["\n"]`).

A template turns one normalised record (see FIELDS) into text with `str.format`:
  prompt       the query; few-shot prompts are
               instruction + demo_1 + separator + ... + demo_k + separator + prompt
  choices      rank classification: one text per class, in label order. Without a
               continuation the model scores log p(choice | prompt) for each (choices carry
               their own leading space, " True"). With a continuation ("multiple input", as
               XWinograd in the harness) each choice completes the prompt into its own context
               and log p(continuation | prompt + choice) is scored.
  continuation see choices.
  target       generation: the answer a demonstration shows after its prompt.
  stop         generation: the output is cut at the first occurrence (a newline: answers,
               titles and translations are one line).
  score        rank classification by summed ("sum") or per-token ("mean") log-likelihood.
  words        per-language constants, {lang: {name: text}}, usable as {name} fields.
  lookups      derived fields: {new_field: (record_field, {value: text})}, e.g. XCOPA's
               connective from its "question" field; a text may use words ("{cause}").

A demonstration of a rank task is its prompt, its gold choice and the continuation.
Scoring follows the harness: prompt and choice are tokenized together, the prompt's trailing
whitespace is scored with the choice, and a text's leading whitespace is left to the
tokenizer's word-start marker (polylm_jax/evaluation/__init__.py).

Override at the binary edge (gin: `BenchmarkSpec.template_overrides = {'xnli': {...}}`) or in code:
    set_template("xnli", prompt="{premise}\\nQ: {hypothesis}?\\nA:", choices=(" yes", " maybe", " no"))
Overrides apply when a task's examples are next read; `reset_templates()` restores the default
set.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from typing import Any

SCORE_MODES = ("sum", "mean")
DEFAULT_PROMPT_SET = "lm_eval"
HARNESS_VERSION = "0.4.13"  # the lm-evaluation-harness release the lm_eval set follows


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
  continuation: str = ""
  words: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    object.__setattr__(self, "choices", tuple(self.choices))
    object.__setattr__(
      self, "lookups", {k: (v[0], dict(v[1])) for k, v in dict(self.lookups).items()}
    )
    object.__setattr__(self, "words", {k: dict(v) for k, v in dict(self.words).items()})

  def word_names(self) -> set[str]:
    return {name for table in self.words.values() for name in table}


# Record fields each template family may use (after normalisation in tasks/benchmark_data.py).
FIELDS: dict[str, tuple[str, ...]] = {
  "xnli": ("premise", "hypothesis"),
  "pawsx": ("sentence1", "sentence2", "sentence1_clause", "sentence2_lower"),
  "xcopa": (
    "premise",
    "premise_clause",
    "premise_cut",
    "question",
    "choice1",
    "choice2",
    "choice1_clause",
    "choice2_clause",
  ),
  "xwinograd": (
    "sentence",
    "option1",
    "option2",
    "sentence1",
    "sentence2",
    "before_blank",
    "after_blank",
  ),
  "tydiqa": ("title", "context", "question", "answer"),
  "mtg_story": ("src", "tgt"),
  "mtg_question": ("src", "tgt"),
  "mtg_title": ("src", "tgt"),
  "translation": ("src", "tgt", "src_name", "tgt_name", "src_code", "tgt_code"),
}
# Rank families and their number of classes (choices must match it).
NUM_CHOICES = {"xnli": 3, "pawsx": 2, "xcopa": 2, "xwinograd": 2}

# -- lm-evaluation-harness 0.4.13's words (lm_eval/tasks/{xnli,paws-x,xcopa,tydiqa}) ---------

# xnli/utils.py LANGUAGES: question word, then the entailment / neutral / contradiction words.
_XNLI_WORDS = {
  "ar": ("صحيح", "نعم", "لذا", "رقم"),
  "bg": ("правилно", "да", "така", "не"),
  "de": ("richtig", "Ja", "Auch", "Nein"),
  "el": ("σωστός", "Ναί", "Έτσι", "όχι"),
  "en": ("right", "Yes", "Also", "No"),
  "es": ("correcto", "Sí", "Asi que", "No"),
  "fr": ("correct", "Oui", "Aussi", "Non"),
  "hi": ("सही", "हाँ", "इसलिए", "नहीं"),
  "ru": ("правильно", "Да", "Так", "Нет"),
  "sw": ("sahihi", "Ndiyo", "Hivyo", "Hapana"),
  "th": ("ถูกต้อง", "ใช่", "ดังนั้น", "ไม่"),
  "tr": ("doğru", "Evet", "Böylece", "Hayır"),
  "ur": ("صحیح", "جی ہاں", "اس لئے", "نہیں"),
  "vi": ("đúng", "Vâng", "Vì vậy", "Không"),
  "zh": ("正确", "是的", "所以", "不是的"),
}
# paws-x/paws_{lang}.yaml (the installed configs; fr says "Non" there, "No" in its generator).
_PAWSX_WORDS = {
  "de": ("richtig", "Ja", "Nein"),
  "en": ("right", "Yes", "No"),
  "es": ("verdad", "Sí", "No"),
  "fr": ("n'est-ce pas", "Oui", "Non"),
  "ja": ("ですね", "はい", "いいえ"),
  "ko": ("맞죠", "예", "아니요"),
  "zh": ("对吧", "是", "不是"),
}
# xcopa/utils.py connectives: cause, effect.
_XCOPA_WORDS = {
  "et": ("sest", "seetõttu"),
  "ht": ("poukisa", "donk sa"),
  "id": ("karena", "maka"),
  "it": ("perché", "quindi"),
  "qu": ("imataq", "chaymi"),
  "sw": ("kwa sababu", "kwa hiyo"),
  "ta": ("காரணமாக", "எனவே"),
  "th": ("เพราะ", "ดังนั้น"),
  "tr": ("çünkü", "bu yüzden"),
  "vi": ("bởi vì", "vì vậy"),
  "zh": ("因为", "所以"),
}
# tydiqa/tydiqa_goldp_{lang}.yaml: the words for context, question, answer.
_TYDIQA_WORDS = {
  "ar": ("السياق", "السؤال", "الإجابة"),
  "bn": ("প্রসঙ্গ", "প্রশ্ন", "উত্তর"),
  "en": ("Context", "Question", "Answer"),
  "fi": ("Konteksti", "Kysymys", "Vastaus"),
  "id": ("Konteks", "Pertanyaan", "Jawaban"),
  "ko": ("맥락", "질문", "답변"),
  "ru": ("Контекст", "Вопрос", "Ответ"),
  "sw": ("Muktadha", "Swali", "Jibu"),
  "te": ("సందర్భం", "ప్రశ్న", "సమాధానం"),
}


def _words(table: Mapping[str, tuple[str, ...]], names: tuple[str, ...]) -> dict:
  return {lang: dict(zip(names, words, strict=True)) for lang, words in table.items()}


_XNLI_CHOICE = " {premise}, {right}? {%s}, {hypothesis}"
_PAWSX_CHOICE = "{sentence1_clause}, {right}? {%s}, {sentence2_lower}"
# Shared by both sets: the generation tasks lm-evaluation-harness does not have.
_GENERATION = {
  "mtg_story": Template(prompt="Story beginning: {src}\nStory continuation:", target=" {tgt}"),
  "mtg_question": Template(prompt="Passage: {src}\nQuestion about the passage:", target=" {tgt}"),
  "mtg_title": Template(prompt="Article: {src}\nTitle:", target=" {tgt}"),
  "translation": Template(
    prompt="Translate the following {src_name} text into {tgt_name}.\n{src}\n", target="{tgt}"
  ),
}

PROMPT_SETS: dict[str, dict[str, Template]] = {
  "lm_eval": {
    # XNLI labels 0 entailment, 1 neutral, 2 contradiction; the context is empty (the start
    # token), the harness's target delimiter " " leads each sentence.
    "xnli": Template(
      prompt="",
      choices=tuple(_XNLI_CHOICE % w for w in ("yes", "also", "no")),
      words=_words(_XNLI_WORDS, ("right", "yes", "also", "no")),
    ),
    # PAWS-X labels 0 different meaning, 1 paraphrase; target delimiter "".
    "pawsx": Template(
      prompt="",
      choices=tuple(_PAWSX_CHOICE % w for w in ("no", "yes")),
      words=_words(_PAWSX_WORDS, ("right", "yes", "no")),
    ),
    "xcopa": Template(
      prompt="{premise_cut} {connective}",
      choices=(" {choice1_clause}", " {choice2_clause}"),
      lookups={"connective": ("question", {"cause": "{cause}", "effect": "{effect}"})},
      words=_words(_XCOPA_WORDS, ("cause", "effect")),
    ),
    "xwinograd": Template(
      prompt="",
      choices=("{before_blank}{option1}", "{before_blank}{option2}"),
      continuation=" {after_blank}",
    ),
    "tydiqa": Template(
      prompt="{context_word}: {context}\n\n{question_word}: {question}\n\n{answer_word}:",
      target=" {answer}",
      words=_words(_TYDIQA_WORDS, ("context_word", "question_word", "answer_word")),
    ),
    **_GENERATION,
  },
  "english": {
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
    **_GENERATION,
  },
}

_state: dict[str, Any] = {"set": DEFAULT_PROMPT_SET, "overridden": set()}
_templates: dict[str, Template] = dict(PROMPT_SETS[DEFAULT_PROMPT_SET])


def format_fields(text: str) -> list[str]:
  """The {field} names used by a format string."""
  return [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]


def _check_text(family: str, part: str, text: Any, known: set[str]) -> list[str]:
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
  return used


def _check_words(family: str, template: Template) -> set[str]:
  names = template.word_names()
  for lang, table in template.words.items():
    if set(table) != names:
      raise ValueError(
        f"template {family!r}: words for {lang!r} are {sorted(table)}, but other languages "
        f"have {sorted(names)}: every language needs the same words"
      )
    clash = sorted(set(table) & (set(FIELDS[family]) | set(template.lookups)))
    if clash:
      raise ValueError(f"template {family!r}: words {clash} shadow record fields or lookups")
  return names


def check_template(family: str, template: Template) -> Template:
  """ValueError naming the family and the part at fault for unknown fields or bad shapes."""
  if family not in FIELDS:
    raise ValueError(f"unknown template family {family!r}; known: {sorted(FIELDS)}")
  words = _check_words(family, template)
  known = set(FIELDS[family]) | set(template.lookups) | words
  parts = {
    "prompt": template.prompt,
    "target": template.target,
    "instruction": template.instruction,
    "continuation": template.continuation,
    **{f"choices[{i}]": c for i, c in enumerate(template.choices)},
  }
  for part, text in parts.items():
    used = _check_text(family, part, text, known)
    if part == "instruction" and used:
      raise ValueError(f"template {family!r}: instruction {text!r} must not use fields")
  for name, (source, table) in template.lookups.items():
    if source not in FIELDS[family]:
      raise ValueError(
        f"template {family!r}: lookup {name!r} reads unknown field {source!r}; "
        f"known: {list(FIELDS[family])}"
      )
    for value, text in table.items():
      _check_text(family, f"lookup {name!r}[{value!r}]", text, words)
  if family in NUM_CHOICES:
    if len(template.choices) != NUM_CHOICES[family]:
      raise ValueError(
        f"template {family!r}: needs {NUM_CHOICES[family]} choices (one per "
        f"label, in label order), got {len(template.choices)}"
      )
    if not template.prompt and not template.choices[0]:
      raise ValueError(f"template {family!r}: prompt and choices are empty")
  elif template.choices or template.continuation:
    raise ValueError(f"template {family!r}: a generation task takes no choices or continuation")
  if template.score not in SCORE_MODES:
    raise ValueError(
      f"template {family!r}: score must be one of {SCORE_MODES}, got {template.score!r}"
    )
  return template


def get_template(family: str) -> Template:
  if family not in _templates:
    raise ValueError(f"unknown template family {family!r}; known: {sorted(_templates)}")
  return _templates[family]


def use_prompt_set(name: str) -> None:
  """Selects a prompt set (PROMPT_SETS) for every family; drops earlier overrides."""
  if name not in PROMPT_SETS:
    raise ValueError(f"unknown prompt set {name!r}; known: {sorted(PROMPT_SETS)}")
  _templates.clear()
  _templates.update(PROMPT_SETS[name])
  _state.update(set=name, overridden=set())


def prompt_set() -> str:
  """The name of the prompt set in use."""
  return _state["set"]


def prompt_set_of(family: str) -> str:
  """The prompt set a family's prompts come from, e.g. "lm_eval" or "lm_eval+overrides"."""
  return _state["set"] + ("+overrides" if family in _state["overridden"] else "")


def _replace(family: str, base: Template, changes: Mapping[str, Any]) -> Template:
  names = [f.name for f in dataclasses.fields(Template)]
  unknown = sorted(set(changes) - set(names))
  if unknown:
    raise ValueError(f"template {family!r}: unknown part(s) {unknown}; known: {names}")
  return check_template(family, dataclasses.replace(base, **changes))


def set_template(family: str, template: Template | None = None, **changes: Any) -> Template:
  """Replace a family's template, or change some of its parts; validated before use."""
  base = template if template is not None else get_template(family)
  new = _replace(family, base, changes)
  _templates[family] = new
  _state["overridden"].add(family)
  return new


def apply_overrides(overrides: Mapping[str, Mapping[str, Any]]) -> None:
  """{family: {part: value}} from gin; all are checked before any is applied."""
  checked = {}
  for family, changes in overrides.items():
    if not isinstance(changes, Mapping):
      raise ValueError(f"template override for {family!r} must be a dict of parts, got {changes!r}")
    checked[family] = _replace(family, get_template(family), changes)
  _templates.update(checked)
  _state["overridden"].update(checked)


def reset_templates() -> None:
  """Back to the default prompt set, without overrides."""
  use_prompt_set(DEFAULT_PROMPT_SET)


def default_template(family: str) -> Template:
  return PROMPT_SETS[DEFAULT_PROMPT_SET][family]


def fill(text: str, fields: Mapping[str, Any]) -> str:
  return text.format(**fields)


def with_lookups(
  template: Template, fields: Mapping[str, Any], where: str, lang: str | None = None
) -> dict[str, Any]:
  """fields plus the language's words and the template's derived fields.

  A language without words, or a value missing from a lookup, is an error naming `where`.
  """
  out = dict(fields)
  words: dict[str, str] = {}
  if template.words:
    if lang not in template.words:
      raise ValueError(
        f"{where}: the prompt template has no words for language {lang!r}; "
        f"languages: {sorted(template.words)}"
      )
    words = template.words[lang]
    out.update(words)
  for name, (source, table) in template.lookups.items():
    value = fields.get(source)
    if value not in table:
      raise ValueError(
        f"{where}: field {source!r} is {value!r}, which the template's lookup "
        f"{name!r} does not map; known values: {sorted(table)}"
      )
    out[name] = fill(table[value], words)
  return out


for _set in PROMPT_SETS.values():
  for _family, _template in _set.items():
    check_template(_family, _template)
