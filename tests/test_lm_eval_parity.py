"""The lm_eval prompt set against lm-evaluation-harness 0.4.13 itself.

One small random transformers GPT-2 (saved as an HF folder with the demo SentencePiece model
as tokenizer.model) is evaluated by the harness (its own task configs, pointed at local files
this test writes, offline) and by this project (`polylm_jax.load` of the same folder). Both
start every text with </s>: the HF tokenizer's BOS is set to </s>, as pre-training joins
documents with it. Per example the log-likelihoods agree within 1e-4 and the accuracies are
equal; the strings the harness scores are ours exactly. A second test renders every
language of XNLI, PAWS-X, XCOPA, XWinograd and TyDiQA with the harness's configs and utils
and compares the prompt strings.
"""

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")


import polylm_jax  # noqa: E402
from polylm_jax import evaluation
from polylm_jax import vocab as vocab_lib  # noqa: E402
from tasks import benchmark, benchmark_data, benchmark_demo, templates  # noqa: E402

HARNESS_TASKS = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
XCOPA = {
  "zh": [
    ("该物品用气泡包装纸包着。", "它很易碎。", "它很小。", "cause", 0),
    ("我清空了口袋。", "我发现了一件武器。", "我取回了一张票根。", "effect", 1),
    ("女人的头发湿了。", "她刚洗完澡。", "她在读书。", "cause", 0),
    ("男孩的父母出门了。", "他打扫了厨房。", "他邀请朋友来家里玩。", "effect", 1),
    ("天开始下雨了。", "我打开了伞。", "我关掉了灯。", "effect", 0),
  ],
  "it": [
    ("L'oggetto era avvolto nella plastica a bolle.", "Era fragile.", "Era piccolo.", "cause", 0),
    ("Ho svuotato le tasche.", "Ho trovato un'arma.", "Ho trovato un biglietto.", "effect", 1),
    ("La donna si è ritirata.", "Ha ricevuto la pensione.", "Ha pagato il mutuo.", "effect", 0),
    ("Volevo risparmiare energia.", "Ho spazzato il pavimento.", "Ho spento la luce.", "cause", 1),
    ("Il cane abbaiava.", "Qualcuno ha bussato alla porta.", "Il sole splendeva.", "cause", 0),
  ],
}
XWINOGRAD = {
  "en": [
    (
      "The trophy doesn't fit into the suitcase because _ is too large.",
      "the trophy",
      "the suitcase",
      "1",
    ),
    (
      "The city councilmen refused the demonstrators a permit because _ feared violence.",
      "the demonstrators",
      "the city councilmen",
      "2",
    ),
    ("Paul tried to call George on the phone, but _ wasn't successful.", "Paul", "George", "1"),
  ],
  "zh": [
    ("这个奖杯放不进棕色的箱子里，因为_太大了。", "奖杯", "箱子", "1"),
    ("我把水从瓶子倒进杯子里，直到_满了。", "瓶子", "杯子", "2"),
    ("小明没有赢过小红，因为_太弱了。", "小明", "小红", "1"),
  ],
}
# XNLI (German premise, hypothesis, Chinese premise, hypothesis, label) as mock TFDS records.
# Short texts: a log-likelihood summed over many tokens in float32 is only good to ~1e-7 of it.
XNLI = {
  "test": [
    ("Der Hund schläft.", "Das Tier ruht.", "狗在睡觉。", "动物在休息。", 0),
    ("Es regnet heute.", "Morgen scheint die Sonne.", "今天下雨。", "明天出太阳。", 1),
    ("Sie kauft Brot.", "Sie kauft nichts.", "她买面包。", "她什么也没买。", 2),
    ("Ich lese ein Buch.", "Ich lese.", "我在看书。", "我在阅读。", 0),
  ],
  "validation": [("Er singt laut.", "Er ist still.", "他大声唱歌。", "他很安静。", 2)],
}
XNLI_LANGS = ("de", "zh")
PAWSX = {
  "de": [
    ("Der Hund schläft im Garten .", "Im Garten schläft der Hund.", 1),
    ("Er wohnt in Berlin.", "Er arbeitet in Bonn.", 0),
    ("Sie hat das Buch gelesen ;", "Das Buch wurde von ihr gelesen.", 1),
  ],
  "zh": [
    ("他住在北京。", "他在北京生活。", 1),
    ("她喜欢猫。", "她讨厌狗。", 0),
    ("今天很冷。", "今天天气寒冷。", 1),
  ],
}
SHOTS0 = [
  *(f"xcopa_{lang}" for lang in XCOPA),
  *(f"xnli_{lang}" for lang in XNLI_LANGS),
  *(f"xwinograd_{lang}" for lang in XWINOGRAD),
  *(f"pawsx_{lang}" for lang in PAWSX),
]


def _jsonl(path, records):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _tfds_records(name, split, n):
  """XNLI and PAWS-X in TFDS's feature structures (what the project reads), for mock_tfds."""
  if name.startswith("paws_x_wiki/"):
    rows = PAWSX[name.split("/")[1]]
    return [{"sentence1": a, "sentence2": b, "label": y} for a, b, y in rows]
  assert name == "xnli", name
  return [
    {
      "premise": {"de": p_de, "zh": p_zh},
      "hypothesis": {"language": ["de", "zh"], "translation": [h_de, h_zh]},
      "label": y,
    }
    for p_de, h_de, p_zh, h_zh, y in XNLI[split.split("[")[0]]
  ]


def _xnli_docs(lang, split):
  """The same records as the harness's docs."""
  docs = []
  for r in _tfds_records("xnli", split, 0):
    hyp = r["hypothesis"]["translation"][r["hypothesis"]["language"].index(lang)]
    docs.append({"premise": r["premise"][lang], "hypothesis": hyp, "label": r["label"]})
  return docs


def _write_data(root):
  """Local files: XCOPA and XWinograd in the release layouts, harness docs for XNLI."""
  for lang, items in XCOPA.items():
    rows = [
      {"premise": p, "choice1": a, "choice2": b, "question": q, "label": y, "idx": i}
      for i, (p, a, b, q, y) in enumerate(items)
    ]
    _jsonl(f"{root}/xcopa/{lang}/test.{lang}.jsonl", rows[1:])
    _jsonl(f"{root}/xcopa/{lang}/val.{lang}.jsonl", rows[:1])  # one: both 1-shot draws agree
  for lang, items in XWINOGRAD.items():
    rows = [{"sentence": s, "option1": a, "option2": b, "answer": y} for s, a, b, y in items]
    _jsonl(f"{root}/xwinograd/{lang}/test.jsonl", rows)
  for lang, rows in PAWSX.items():
    docs = [{"sentence1": a, "sentence2": b, "label": y} for a, b, y in rows]
    _jsonl(f"{root}/harness/pawsx_{lang}.jsonl", docs)
  for lang in XNLI_LANGS:
    for split in ("test", "validation"):
      _jsonl(f"{root}/harness/xnli_{lang}.{split}.jsonl", _xnli_docs(lang, split))


def _harness_yaml(root, name):
  """A task YAML including the harness's own config, reading our files (offline)."""
  family, lang = name.split("_")
  if family == "xcopa":
    base, files = (
      "xcopa/default_{}.yaml",
      {
        "test": f"{root}/xcopa/{lang}/test.{lang}.jsonl",
        "validation": f"{root}/xcopa/{lang}/val.{lang}.jsonl",
      },
    )
  elif family == "xnli":  # the harness evaluates XNLI on its validation split (no test split)
    base, files = (
      "xnli/xnli_{}.yaml",
      {
        "validation": f"{root}/harness/xnli_{lang}.test.jsonl",
        "train": f"{root}/harness/xnli_{lang}.validation.jsonl",
      },
    )
  elif family == "pawsx":
    path = f"{root}/harness/pawsx_{lang}.jsonl"
    base, files = "paws-x/paws_{}.yaml", {s: path for s in ("test", "validation", "train")}
  else:
    base, files = "xwinograd/xwinograd_{}.yaml", {"test": f"{root}/xwinograd/{lang}/test.jsonl"}
  lines = [
    f"include: {os.path.join(HARNESS_TASKS, base.format(lang))}",
    f"task: parity_{name}",
    "dataset_path: json",
    "dataset_name: null",
    "dataset_kwargs:",
    "  data_files:",
    *(f"    {split}: {path}" for split, path in files.items()),
  ]
  with open(f"{root}/yaml/parity_{name}.yaml", "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


def _hf_dir(path):
  """A random PolyLM-shaped GPT-2 and the demo tokenizer, with </s> as the HF BOS."""
  vocab = vocab_lib.get_vocabulary()
  torch.manual_seed(0)
  config = transformers.GPT2Config(
    vocab_size=vocab.vocab_size,
    n_positions=128,
    n_embd=32,
    n_layer=2,
    n_head=2,
    activation_function="gelu_new",
    attn_pdrop=0.0,
    embd_pdrop=0.0,
    resid_pdrop=0.0,
    bos_token_id=vocab_lib.EOS_ID,
    eos_token_id=vocab_lib.EOS_ID,
    tie_word_embeddings=True,
  )
  model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(path)
  shutil.copy(vocab_lib.default_vocabulary_path(), os.path.join(path, "tokenizer.model"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump(
      {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "</s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
      },
      f,
    )
  return path


def _run_harness(hf_dir, yaml_dir, names, shots):
  from lm_eval import simple_evaluate
  from lm_eval.models.huggingface import HFLM
  from lm_eval.tasks import TaskManager

  lm = HFLM(pretrained=hf_dir, tokenizer=hf_dir, batch_size=16, device="cpu", max_length=128)
  manager = TaskManager(include_path=yaml_dir, include_defaults=False)
  out = simple_evaluate(
    model=lm,
    tasks=[f"parity_{n}" for n in names],
    num_fewshot=shots,
    task_manager=manager,
    log_samples=True,
  )
  return {
    n: (out["samples"][f"parity_{n}"], out["results"][f"parity_{n}"]["acc,none"]) for n in names
  }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("parity"))
  os.makedirs(f"{root}/yaml")
  _write_data(root)
  for name in SHOTS0:
    _harness_yaml(root, name)
  hf_dir = _hf_dir(f"{root}/hf")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("HF_HUB_OFFLINE", "1")
    harness = {(n, 0): r for n, r in _run_harness(hf_dir, f"{root}/yaml", SHOTS0, 0).items()}
    one = [f"xcopa_{lang}" for lang in XCOPA]
    harness.update({(n, 1): r for n, r in _run_harness(hf_dir, f"{root}/yaml", one, 1).items()})
    mp.setitem(
      benchmark._settings, "paths", {"xcopa": f"{root}/xcopa", "xwinograd": f"{root}/xwinograd"}
    )
    templates.reset_templates()
    config, params = polylm_jax.load(hf_dir)
    vocab = vocab_lib.get_vocabulary(os.path.join(hf_dir, "tokenizer.model"))
    ours_names = [benchmark.task_name(*n.split("_"), k) for n, k in harness]
    mp.setattr(benchmark_demo, "tfds_examples", _tfds_records)
    with benchmark_demo.mock_tfds():
      ours = evaluation.evaluate(config, params, vocab, ours_names, batch_size=16)
  return harness, {key: ours[name] for key, name in zip(harness, ours_names)}


@pytest.mark.parametrize("key", [(n, 0) for n in SHOTS0] + [(f"xcopa_{x}", 1) for x in XCOPA])
def test_loglikelihoods_and_accuracy_equal_the_harness(runs, key):
  harness, ours = runs
  samples, accuracy = harness[key]
  task = ours[key]
  assert len(samples) == task.num_examples > 0
  examples = task.predictions
  for sample, pred in zip(sorted(samples, key=lambda s: s["doc_id"]), examples):
    contexts = [p[0] for p in sample["arguments"]]
    scored = [p[1] for p in sample["arguments"]]
    if pred.get("continuation"):  # XWinograd: the contexts differ, one scored continuation
      assert contexts == [pred["prompt"] + c for c in pred["choices"]]
      assert scored == [pred["continuation"]] * len(contexts)
    else:
      assert contexts == [pred["prompt"]] * len(scored)
      assert scored == pred["choices"]
    harness_ll = [r[0] for r in sample["filtered_resps"]]
    np.testing.assert_allclose(pred["scores"], harness_ll, rtol=0, atol=1e-4)
    # The harness's target: the label, or in multiple-input mode the scored text.
    assert sample["target"] == (
      pred["continuation"].strip() if pred.get("continuation") else pred["label"]
    )
    assert pred["correct"] == bool(sample["acc"])
  assert task.metrics["accuracy"] == pytest.approx(100 * accuracy)
  assert task.conventions["prompt_set"] == "lm_eval"


# -- prompt strings of every language ---------------------------------------------------------

PAWSX_SENTENCES = ('He said " yes " ( loudly ) .', "It wasn 't so ;")


def _harness_config(path):
  from lm_eval.tasks import _yaml_loader

  return _yaml_loader.load_yaml(os.path.join(HARNESS_TASKS, path))


def _field(cfg, key, doc):
  """A config field as the harness resolves it: a function, a Jinja template or a value."""
  import ast

  from lm_eval.utils import apply_template

  value = cfg[key]
  if callable(value):
    return value(doc)
  if isinstance(value, str) and "{{" in value:
    text = apply_template(value, doc)
    return ast.literal_eval(text) if key == "doc_to_choice" else text
  return value


def _harness_pairs(cfg, doc):
  """(context, scored text) per choice, as the harness's construct_requests builds them."""
  import datasets

  if callable(cfg.get("process_docs")):
    doc = cfg["process_docs"](datasets.Dataset.from_list([doc]))[0]
  delimiter = cfg.get("target_delimiter", " ")
  text, choices = _field(cfg, "doc_to_text", doc), _field(cfg, "doc_to_choice", doc)
  if isinstance(text, int):  # multiple inputs: the choices are the contexts
    return [(c, delimiter + _field(cfg, "doc_to_target", doc)) for c in choices]
  return [(text, delimiter + c) for c in choices]


def _cases():
  """(our task, harness config, our raw record, the harness's doc) for every language."""
  for lang in benchmark.FAMILIES["xnli"].languages:
    p, h = f"Premise {lang}.", f"Hypothesis {lang}."
    raw = {"premise": {lang: p}, "hypothesis": {"language": [lang], "translation": [h]}}
    yield (
      "xnli",
      lang,
      f"xnli/xnli_{lang}.yaml",
      {**raw, "label": 1},
      {"premise": p, "hypothesis": h},
    )
  for lang in benchmark.FAMILIES["pawsx"].languages:
    doc = dict(zip(("sentence1", "sentence2"), PAWSX_SENTENCES), label=0)
    yield "pawsx", lang, f"paws-x/paws_{lang}.yaml", doc, dict(doc)
  for lang in benchmark.FAMILIES["xcopa"].languages:
    for q in ("cause", "effect"):
      doc = {"premise": "Prem ise!", "choice1": "One.", "choice2": "Two", "question": q, "label": 1}
      yield "xcopa", lang, f"xcopa/default_{lang}.yaml", doc, dict(doc)
  for lang in benchmark.FAMILIES["xwinograd"].languages:
    doc = {"sentence": "The cup fell as _ was  full .", "option1": "it", "option2": "X"}
    harness_lang = benchmark_data.XWINOGRAD_DIRS.get(lang, lang)
    yield (
      "xwinograd",
      lang,
      f"xwinograd/xwinograd_{harness_lang}.yaml",
      {**doc, "answer": "2"},
      {
        **doc,
        "answer": "2",
      },
    )


@pytest.mark.parametrize("family, lang, config, raw, doc", list(_cases()))
def test_prompt_strings_equal_the_harness_configs(family, lang, config, raw, doc):
  templates.reset_templates()
  ours = benchmark.render_example(benchmark.task_name(family, lang, 0), raw)
  assert ours.pairs() == _harness_pairs(_harness_config(config), doc)


@pytest.mark.parametrize("lang", benchmark.FAMILIES["tydiqa"].languages)
def test_tydiqa_prompt_equals_the_harness_config(lang):
  templates.reset_templates()
  raw = {"id": "x", "context": "Some context.", "question": "Why?", "answers": {"text": ["A"]}}
  ours = benchmark.render_example(benchmark.task_name("tydiqa", lang, 0), raw)
  cfg = _harness_config(f"tydiqa/tydiqa_goldp_{lang}.yaml")
  doc = {"context": "Some context.", "question": "Why?", "answers": ["A"]}
  assert ours.prompt == _field(cfg, "doc_to_text", doc)
  demo = ours.prompt + templates.fill(templates.get_template("tydiqa").target, {"answer": "A"})
  assert demo == ours.prompt + cfg["target_delimiter"] + _field(cfg, "doc_to_target", doc)
