"""The PolyLM benchmark (SPEC section 6) as SeqIO tasks with zero- and k-shot variants.

Task names: polylm_eval_{family}_{lang}_{k}shot, e.g. polylm_eval_xnli_de_0shot,
polylm_eval_tydiqa_ar_1shot, polylm_eval_mtg_story_fr_0shot, polylm_eval_wmt20_en_zh_5shot.
Mixtures: polylm_eval_{family}_{k}shot (every language of a family) and
polylm_eval_{understanding,qa,generation,translation,all}_{k}shot. Tasks and mixtures for
DEFAULT_SHOTS are registered on import; any other k is registered on first use by
`resolve(name)` (the eval binary calls it). `task_specs(names)` gives `polylm_jax.evaluation`
its TaskSpecs; this module registers it there on import, so `evaluation.evaluate` also takes
names (polylm_jax never imports tasks/). Prompts: tasks/templates.py (prompt sets).

| family      | kind                         | metric            | data (tasks/benchmark_data.py) |
|-------------|------------------------------|-------------------|--------------------------------|
| xnli        | rank over 3 verbalised labels | accuracy          | TFDS xnli, 15 languages       |
| xcopa       | rank over 2 alternatives      | accuracy          | local JSONL, 11 languages     |
| pawsx       | rank over 2 verbalised labels | accuracy          | TFDS paws_x_wiki, 7 languages |
| xwinograd   | rank, 2 options (partial scoring) | accuracy        | local JSONL/TSV, 6 languages  |
| tydiqa      | generation                    | F1 / exact match  | TFDS tydi_qa/goldp, 9 languages |
| mtg_story, mtg_question, mtg_title | generation | ROUGE-1/2/L  | local JSONL, en de fr es      |
| wmt20       | generation, en<->xx           | BLEU, chrF        | local WMT20 sgm, de ja pl ru zh |
| flores      | generation, en<->xx           | BLEU, chrF        | local FLORES-200, 17 languages |

k-shot: k demonstrations precede each query, drawn without replacement from the family's
demonstration split with a generator seeded by (shot_seed, example index): the same draws
on every run, and the same demonstration indices in every language. When the demonstration
split is the evaluation split (XWinograd has only test), the example itself is excluded.

Each seqio task yields text features inputs (the full prompt), targets (the gold choice or
first reference), choices, continuation (partial scoring: the text scored after prompt +
choice; else empty), label, references, lang, id; inputs/targets are also tokenized
with the default vocabulary for seqio consumers. `load_examples` gives the same examples as
Python objects: the evaluation loop uses those and tokenizes with the model's vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from polylm_jax.evaluation import metrics
from polylm_jax import evaluation
from polylm_jax import vocab as vocab_lib
from polylm_jax.evaluation import Example
from tasks import benchmark_data as data
from tasks import registry, templates
from tasks.languages import LANGUAGE_CODES, check_language

DEFAULT_SHOTS = (0, 1, 2, 3, 4, 5)
# The lm-evaluation-harness task of each family whose prompts the lm_eval prompt set follows.
HARNESS_TASKS = {
  "xnli": "xnli_{lang}",
  "pawsx": "paws_{lang}",
  "xcopa": "xcopa_{lang}",
  "xwinograd": "xwinograd_{lang}",
  "tydiqa": "tydiqa_goldp_{lang}",
}  # registering is cheap (about 3 ms per 100 tasks)
PREFIX = "polylm_eval"


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  kind: str  # "rank" or "generate"
  metric: str  # "accuracy", "squad", "rouge" or "translation"
  languages: tuple[str, ...]  # codes, or "src-tgt" pairs for translation
  eval_split: str
  demo_split: str
  source: str  # "tfds" or "local"
  template: str
  normalizer: str
  max_new_tokens: int = 0  # generation default
  subdir: str = ""  # local: folder under the benchmark data dir

  @property
  def primary_metric(self) -> str:
    return evaluation.PRIMARY_METRICS[self.metric]


def _pairs(others: Sequence[str]) -> tuple[str, ...]:
  return tuple(p for x in others for p in (f"en-{x}", f"{x}-en"))


_XNLI = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
_XCOPA = ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh")
_MTG = ("en", "de", "fr", "es")
FAMILIES: dict[str, Family] = {
  f.name: f
  for f in (
    Family("xnli", "rank", "accuracy", _XNLI, "test", "validation", "tfds", "xnli", "xnli"),
    Family(
      "xcopa",
      "rank",
      "accuracy",
      _XCOPA,
      "test",
      "validation",
      "local",
      "xcopa",
      "xcopa",
      subdir="xcopa",
    ),
    Family(
      "pawsx",
      "rank",
      "accuracy",
      ("de", "en", "es", "fr", "ja", "ko", "zh"),
      "test",
      "validation",
      "tfds",
      "pawsx",
      "pawsx",
    ),
    Family(
      "xwinograd",
      "rank",
      "accuracy",
      ("en", "fr", "ja", "pt", "ru", "zh"),
      "test",
      "test",
      "local",
      "xwinograd",
      "xwinograd",
      subdir="xwinograd",
    ),
    Family(
      "tydiqa",
      "generate",
      "squad",
      tuple(data.TYDIQA_NAMES),
      "validation",
      "train",
      "tfds",
      "tydiqa",
      "tydiqa",
      max_new_tokens=32,
    ),
    *(
      Family(
        f"mtg_{sub}",
        "generate",
        "rouge",
        _MTG,
        "test",
        "dev",
        "local",
        f"mtg_{sub}",
        "mtg",
        max_new_tokens=n,
        subdir="mtg",
      )
      for sub, n in (("story", 128), ("question", 48), ("title", 32))
    ),
    Family(
      "wmt20",
      "generate",
      "translation",
      _pairs(("de", "ja", "pl", "ru", "zh")),
      "test",
      "dev",
      "local",
      "translation",
      "translation",
      max_new_tokens=256,
      subdir="wmt20",
    ),
    Family(
      "flores",
      "generate",
      "translation",
      _pairs([c for c in LANGUAGE_CODES if c != "en"]),
      "devtest",
      "dev",
      "local",
      "translation",
      "translation",
      max_new_tokens=256,
      subdir="flores200",
    ),
  )
}
GROUPS = {
  "understanding": ("xnli", "xcopa", "pawsx", "xwinograd"),
  "qa": ("tydiqa",),
  "generation": ("mtg_story", "mtg_question", "mtg_title"),
  "translation": ("wmt20", "flores"),
}
GROUPS["all"] = tuple(f for g in GROUPS.values() for f in g)


@dataclasses.dataclass(frozen=True)
class BenchmarkTask:
  name: str
  family: Family
  lang: str
  shots: int


# -- settings (set at the binary edge) ----------------------------------------------------

_settings: dict[str, Any] = {"data_dir": None, "tfds_data_dir": None, "shot_seed": 0, "paths": {}}


def configure(
  data_dir: str | None = None,
  tfds_data_dir: str | None = None,
  shot_seed: int | None = None,
  paths: dict[str, str] | None = None,
) -> None:
  """Where local benchmark files and TFDS data live, and the few-shot seed.

  paths: {family: folder} overrides `data_dir/<family subdir>` for single families.
  Only the arguments given change.
  """
  for family in paths or {}:
    if family not in FAMILIES:
      raise ValueError(f"benchmark paths: unknown family {family!r}; known: {sorted(FAMILIES)}")
  if data_dir is not None:
    _settings["data_dir"] = os.fspath(data_dir)
  if tfds_data_dir is not None:
    _settings["tfds_data_dir"] = os.fspath(tfds_data_dir)
  if shot_seed is not None:
    _settings["shot_seed"] = int(shot_seed)
  if paths is not None:
    _settings["paths"] = {k: os.fspath(v) for k, v in paths.items()}


def family_dir(family: Family, task: str) -> str:
  if family.name in _settings["paths"]:
    return _settings["paths"][family.name]
  root = _settings["data_dir"] or os.environ.get("POLYLM_EVAL_DATA_DIR")
  if not root:
    raise FileNotFoundError(
      f"task {task} reads local files: set the benchmark data dir (gin EVAL_DATA_DIR, "
      f"tasks.benchmark.configure(data_dir=...) or $POLYLM_EVAL_DATA_DIR); expected layout "
      f"in tasks/benchmark_data.py"
    )
  return os.path.join(root, family.subdir)


# -- reading and rendering ----------------------------------------------------------------


def task_name(family: str, lang: str, shots: int) -> str:
  return f"{PREFIX}_{family}_{lang.replace('-', '_')}_{shots}shot"


_TASKS: dict[str, BenchmarkTask] = {}


def get_task(name: str) -> BenchmarkTask:
  resolve(name)
  if name not in _TASKS:
    raise ValueError(f"{name!r} is not a benchmark task (a mixture? use resolve(name))")
  return _TASKS[name]


def read_records(task: BenchmarkTask, split: str) -> list[data.Record]:
  """Normalised records of one split of a task, in file / TFDS order."""
  fam = task.family
  if fam.source == "tfds":
    raw = data.tfds_records(fam.name, task.lang, split, task.name, _settings["tfds_data_dir"])
  else:
    raw = data.read_local(fam.name, family_dir(fam, task.name), task.lang, split, task.name)
  normalize = data.NORMALIZERS[fam.normalizer]
  records = [normalize(r, where, task.name, task.lang) for r, where in raw]
  dropped = [r for r in records if r is None]  # records the harness drops too (PAWS-X)
  if dropped:
    records = [r for r in records if r is not None]
    logging.info("task %s: split %r: %d empty records dropped", task.name, split, len(dropped))
  if not records:
    raise data.BenchmarkDataError(f"task {task.name}: split {split!r} has no examples")
  return records


def _fields(task: BenchmarkTask, record: data.Record, template: templates.Template):
  fields = dict(record.fields)
  if task.family.normalizer == "translation":
    s, t = task.lang.split("-")
    fields.update(
      src_name=check_language(s).name, tgt_name=check_language(t).name, src_code=s, tgt_code=t
    )
  return templates.with_lookups(template, fields, f"task {task.name}: {record.where}", task.lang)


def _render_one(task, record, template) -> tuple[str, tuple[str, ...], str, str]:
  """(query prompt, choices, continuation, demonstration text) of one record."""
  fields = _fields(task, record, template)
  prompt = templates.fill(template.prompt, fields)
  if task.family.kind == "rank":
    choices = tuple(templates.fill(c, fields) for c in template.choices)
    continuation = templates.fill(template.continuation, fields)
    return prompt, choices, continuation, prompt + choices[record.label] + continuation
  return prompt, (), "", prompt + templates.fill(template.target, fields)


def load_examples(
  name: str, split: str | None = None, max_examples: int | None = None
) -> list[Example]:
  """The rendered examples of a benchmark task (the first `max_examples` of the split)."""
  task = get_task(name)
  fam = task.family
  split = split or fam.eval_split
  template = templates.get_template(fam.template)
  records = read_records(task, split)
  if max_examples is not None:
    records = records[:max_examples]
  pool: list[data.Record] = []
  if task.shots:
    pool = read_records(task, fam.demo_split)
    same = fam.demo_split == split
    available = len(pool) - (1 if same else 0)
    if task.shots > available:
      raise ValueError(
        f"task {task.name}: k={task.shots} demonstrations requested but the "
        f"demonstration split {fam.demo_split!r} ({pool[0].where.rsplit(' ', 2)[0]})"
        f" has only {available}" + (" besides the example itself" if same else "")
      )
    demos = [_render_one(task, r, template)[3] for r in pool]
  out = []
  for i, record in enumerate(records):
    shown = []
    if task.shots:
      candidates = np.arange(len(pool))
      if fam.demo_split == split:
        candidates = candidates[candidates != i]
      rng = np.random.default_rng([_settings["shot_seed"], i])
      shown = [demos[j] for j in rng.choice(candidates, task.shots, replace=False)]
    out.append(_example(task, record, template, shown))
  return out


def _example(task, record, template, demos: Sequence[str]) -> Example:
  prompt, choices, continuation, _ = _render_one(task, record, template)
  parts = [template.instruction] if template.instruction else []
  parts += [*demos, prompt]
  return Example(
    id=record.id,
    lang=task.lang,
    prompt=template.separator.join(parts),
    choices=choices,
    label=record.label,
    references=record.references or (choices[record.label] + continuation,),
    continuation=continuation,
  )


def render_example(name: str, raw: dict[str, Any], where: str = "record") -> Example:
  """One raw record (in its dataset's own structure) as task `name` shows it, without
  demonstrations: for looking at prompts, and for comparing them with other harnesses."""
  task = get_task(name)
  record = data.NORMALIZERS[task.family.normalizer](raw, where, name, task.lang)
  return _example(task, record, templates.get_template(task.family.template), [])


def conventions(task: BenchmarkTask) -> dict[str, Any]:
  """The prompt set, the scored text and the demonstrations of a task, for the report."""
  fam, template = task.family, templates.get_template(task.family.template)
  out: dict[str, Any] = {"prompt_set": templates.prompt_set_of(fam.template)}
  if templates.prompt_set() == "lm_eval" and fam.name in HARNESS_TASKS:
    harness_lang = (
      data.XWINOGRAD_DIRS.get(task.lang, task.lang) if fam.name == "xwinograd" else task.lang
    )
    harness_task = HARNESS_TASKS[fam.name].format(lang=harness_lang)
    out["prompts_of"] = f"lm-evaluation-harness {templates.HARNESS_VERSION} task {harness_task}"
  if fam.kind == "rank":
    out["scored_text"] = (
      "the continuation after prompt + choice (partial scoring)"
      if template.continuation
      else "each choice after the prompt"
    )
  out["eval_split"] = fam.eval_split
  if task.shots:
    out["demonstrations"] = (
      f"{task.shots} drawn from {fam.demo_split!r} (seed {_settings['shot_seed']}), "
      f"joined with {template.separator!r}"
    )
  return out


def task_spec(name: str) -> evaluation.TaskSpec:
  """What polylm_jax.evaluation needs of a benchmark task (templates as they are now)."""
  task = get_task(name)
  fam = task.family
  template = templates.get_template(fam.template)
  return evaluation.TaskSpec(
    name=name,
    family=fam.name,
    lang=task.lang,
    shots=task.shots,
    kind=fam.kind,
    metric=fam.metric,
    load=functools.partial(_load_spec_examples, name),
    score=template.score,
    stop=template.stop,
    max_new_tokens=fam.max_new_tokens,
    conventions=conventions(task),
  )


def _load_spec_examples(name: str, max_examples: int | None) -> list[Example]:
  return load_examples(name, max_examples=max_examples)


def task_specs(names: str | Sequence[str]) -> list[evaluation.TaskSpec]:
  """TaskSpecs of task and mixture names (a comma-separated string or a list)."""
  return [task_spec(n) for n in resolve_all(names)]


# -- seqio registration -------------------------------------------------------------------


class BenchmarkSource(seqio.DataSource):
  """Rendered examples of one benchmark task as a tf.data source (read on demand)."""

  def __init__(self, name: str):
    self._name = name
    fam = _TASKS[name].family
    super().__init__(splits=tuple(dict.fromkeys((fam.eval_split, fam.demo_split))))

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def get_dataset(
    self,
    split: str = "test",
    shuffle: bool = False,
    seed: int | None = None,
    shard_info: seqio.ShardInfo | None = None,
    *,
    sequence_length=None,
    use_cached: bool = False,
    num_epochs: int | None = 1,
  ) -> tf.data.Dataset:
    if split not in self.splits:
      raise ValueError(f"task {self._name}: no split {split!r}; splits: {list(self.splits)}")
    examples = load_examples(self._name, split)
    n = max(len(examples[0].choices), 1)

    def gen():
      for ex in examples:
        yield {
          "inputs": ex.prompt,
          "targets": ex.references[0],
          "choices": list(ex.choices) or [""] * n,
          "continuation": ex.continuation,
          "label": np.int32(ex.label),
          "references": list(ex.references),
          "lang": ex.lang,
          "id": ex.id,
        }

    sig = {
      "inputs": tf.TensorSpec([], tf.string),
      "targets": tf.TensorSpec([], tf.string),
      "choices": tf.TensorSpec([n], tf.string),
      "continuation": tf.TensorSpec([], tf.string),
      "label": tf.TensorSpec([], tf.int32),
      "references": tf.TensorSpec([None], tf.string),
      "lang": tf.TensorSpec([], tf.string),
      "id": tf.TensorSpec([], tf.string),
    }
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
    if shard_info:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return ds.shuffle(len(examples), seed=seed) if shuffle else ds


def postprocess(output: Any, example: Any = None, is_target: bool = False) -> Any:
  """seqio postprocessor: references for targets, the first line for predictions."""
  if is_target:
    return [r.decode("utf-8") if isinstance(r, bytes) else str(r) for r in example["references"]]
  text = output.decode("utf-8") if isinstance(output, bytes) else str(output)
  return text.split("\n")[0].strip()


def _seqio_metric_fns(task: BenchmarkTask) -> list:
  fam = task.family
  if fam.metric == "squad":
    return [lambda targets, predictions: metrics.squad_metrics(predictions, targets)]
  if fam.metric == "rouge":
    return [lambda targets, predictions: metrics.rouge_metrics(predictions, targets)]
  if fam.metric == "translation":
    tgt = task.lang.split("-")[1]
    return [lambda targets, predictions: metrics.translation_metrics(predictions, targets, tgt)]
  return []  # rank classification is scored by polylm_jax.evaluation (log-likelihoods)


def register_task(family: str, lang: str, shots: int) -> str:
  """Registers (or re-registers) one benchmark task; returns its name."""
  if family not in FAMILIES:
    raise ValueError(f"unknown benchmark family {family!r}; known: {sorted(FAMILIES)}")
  fam = FAMILIES[family]
  if lang not in fam.languages:
    raise ValueError(f"benchmark {family}: no language {lang!r}; known: {list(fam.languages)}")
  if not isinstance(shots, (int, np.integer)) or shots < 0:
    raise ValueError(f"benchmark {family}: shots must be an integer >= 0, got {shots!r}")
  name = task_name(family, lang, int(shots))
  _TASKS[name] = BenchmarkTask(name, fam, lang, int(shots))
  vocabulary = vocab_lib.get_vocabulary()
  registry.add_provider(
    seqio.TaskRegistry,
    name,
    source=BenchmarkSource(name),
    output_features={
      "inputs": seqio.Feature(vocabulary, add_eos=False, required=False),
      "targets": seqio.Feature(vocabulary, add_eos=True),
    },
    preprocessors=[
      functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=True),
      seqio.preprocessors.append_eos_after_trim,
    ],
    postprocess_fn=postprocess if fam.kind == "generate" else None,
    metric_fns=_seqio_metric_fns(_TASKS[name]),
  )
  return name


def _add_mixture(name: str, tasks: Sequence[str]) -> str:
  registry.add_provider(seqio.MixtureRegistry, name, [(t, 1.0) for t in tasks])
  return name


def register_shots(shots: int) -> list[str]:
  """Registers every task, family mixture and group mixture for k=shots."""
  by_family = {
    f: [register_task(f, lang, shots) for lang in fam.languages] for f, fam in FAMILIES.items()
  }
  names = [_add_mixture(f"{PREFIX}_{f}_{shots}shot", ts) for f, ts in by_family.items()]
  for group, families in GROUPS.items():
    names.append(
      _add_mixture(f"{PREFIX}_{group}_{shots}shot", [t for f in families for t in by_family[f]])
    )
  return names


_NAME = re.compile(rf"^{PREFIX}_(?P<body>.+)_(?P<k>\d+)shot$")


def resolve(name: str) -> list[str]:
  """Benchmark task names of a task or mixture name; registers other k on first use."""
  name = name.strip()
  known = seqio.TaskRegistry.names() | seqio.MixtureRegistry.names()
  if name not in known:
    m = _NAME.match(name)
    if m is None:
      raise ValueError(
        f"unknown task or mixture {name!r}: benchmark names look like "
        f"{PREFIX}_xnli_de_0shot or {PREFIX}_understanding_5shot"
      )
    register_shots(int(m.group("k")))
  if name in seqio.MixtureRegistry.names():
    return [t.name for t in seqio.get_mixture_or_task(name).tasks]
  if name not in seqio.TaskRegistry.names():
    body = _NAME.match(name).group("body") if _NAME.match(name) else ""
    for family in sorted(FAMILIES, key=len, reverse=True):
      if body.startswith(family + "_"):
        lang = body[len(family) + 1 :].replace("_", "-")
        raise ValueError(
          f"unknown task {name!r}: benchmark {family} has no language {lang!r}; "
          f"languages: {', '.join(FAMILIES[family].languages)}"
        )
    raise ValueError(
      f"unknown task or mixture {name!r}; families: {sorted(FAMILIES)}, groups: {sorted(GROUPS)}"
    )
  return [name]


def resolve_all(names: str | Sequence[str]) -> list[str]:
  """Task names of a comma-separated string or list of tasks and mixtures, de-duplicated."""
  if isinstance(names, str):
    names = [n for n in names.split(",") if n.strip()]
  if not names:
    raise ValueError("no benchmark task or mixture given")
  return list(dict.fromkeys(t for n in names for t in resolve(n)))


for _k in DEFAULT_SHOTS:
  register_shots(_k)
evaluation.register_task_resolver(task_specs, FAMILIES)
