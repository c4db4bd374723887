"""Benchmark tasks: every family end to end on a tiny model (local fixtures in each public
format, TFDS through mock_data), few-shot rendering, seqio registration, bad-input errors."""

import json
import os
import re

import jax
import pytest
import seqio

from polylm_jax import evaluation
from polylm_jax import vocab as vocab_lib
from polylm_jax.config import get_config
from polylm_jax.model import init_params
from tasks import benchmark, benchmark_data, benchmark_demo, templates

EXPECTED_METRICS = {
  "accuracy": {"accuracy"},
  "squad": {"f1", "exact_match"},
  "rouge": {"rouge1", "rouge2", "rougeL"},
  "translation": {"bleu", "chrf"},
}
# One language per family (both XWinograd formats, both translation directions), 0 and 1 shot.
END_TO_END = [
  "polylm_eval_xnli_de_1shot",
  "polylm_eval_xnli_sw_0shot",
  "polylm_eval_pawsx_ja_1shot",
  "polylm_eval_xcopa_zh_1shot",
  "polylm_eval_xwinograd_zh_1shot",
  "polylm_eval_xwinograd_ja_0shot",
  "polylm_eval_tydiqa_ko_1shot",
  "polylm_eval_mtg_story_en_0shot",
  "polylm_eval_mtg_question_fr_1shot",
  "polylm_eval_mtg_title_es_0shot",
  "polylm_eval_wmt20_ja_en_1shot",
  "polylm_eval_wmt20_en_de_0shot",
  "polylm_eval_flores_en_th_0shot",
]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
  root = benchmark_demo.write_demo_data(str(tmp_path_factory.mktemp("bench")), n=4)
  benchmark.configure(data_dir=root)
  return root


@pytest.fixture
def tfds_mock():
  with benchmark_demo.mock_tfds(4):
    yield


@pytest.fixture(scope="module")
def end_to_end(demo_root):
  vocab = vocab_lib.get_vocabulary()
  config = get_config("polylm_tiny", vocab_size=vocab.vocab_size, max_len=128)
  params = init_params(config, jax.random.key(1))
  with benchmark_demo.mock_tfds(4):
    return evaluation.evaluate(
      config, params, vocab, END_TO_END, max_examples=3, max_new_tokens=4, batch_size=4
    )


@pytest.mark.parametrize("name", END_TO_END)
def test_every_family_end_to_end(end_to_end, name):
  task = end_to_end[name]
  family = benchmark.FAMILIES[task.family]
  assert task.num_examples == len(task.predictions) == 3
  assert set(task.metrics) == EXPECTED_METRICS[family.metric]
  assert all(0.0 <= v <= 100.0 for v in task.metrics.values())
  assert task.primary_metric in task.metrics
  for p in task.predictions:
    if family.kind == "rank":
      assert len(p["scores"]) == len(p["choices"]) == templates.NUM_CHOICES[family.template]
      assert p["label"] in range(len(p["choices"]))
    else:
      assert isinstance(p["prediction"], str) and p["references"]


def test_zero_and_k_shot_variants_are_registered(demo_root):
  all0 = benchmark.resolve("polylm_eval_all_0shot")
  assert len(all0) == sum(len(f.languages) for f in benchmark.FAMILIES.values())
  assert len(benchmark.resolve("polylm_eval_xnli_0shot")) == 15
  assert "polylm_eval_wmt20_en_de_0shot" in all0 and "polylm_eval_wmt20_de_en_0shot" in all0
  assert len(benchmark.resolve("polylm_eval_flores_5shot")) == 34
  # Any k is registered on first use.
  assert benchmark.resolve("polylm_eval_xcopa_it_7shot") == ["polylm_eval_xcopa_it_7shot"]
  assert benchmark.get_task("polylm_eval_xcopa_it_7shot").shots == 7
  assert benchmark.resolve_all("polylm_eval_xcopa_it_0shot, polylm_eval_xcopa_it_0shot") == [
    "polylm_eval_xcopa_it_0shot"
  ]
  with pytest.raises(ValueError, match="unknown task or mixture"):
    benchmark.resolve("polylm_eval_nosuch_0shot")
  with pytest.raises(ValueError, match="unknown task or mixture 'xnli'"):
    benchmark.resolve("xnli")
  with pytest.raises(
    ValueError, match="benchmark mtg_story has no language 'it'; languages: en, de, fr, es"
  ):
    benchmark.resolve("polylm_eval_mtg_story_it_0shot")


# -- rendering ---------------------------------------------------------------------------


def _write_jsonl(path, records):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")


def _copa(tag, i, label=0, question="cause"):
  return {
    "premise": f"{tag} premise {i}.",
    "choice1": f"{tag} First {i}.",
    "choice2": f"{tag} Second {i}.",
    "question": question,
    "label": label,
    "idx": i,
  }


@pytest.fixture
def xcopa_dir(tmp_path, monkeypatch):
  root = tmp_path / "xcopa"
  _write_jsonl(str(root / "it" / "test.it.jsonl"), [_copa("TEST", i, i % 2) for i in range(4)])
  _write_jsonl(str(root / "it" / "val.it.jsonl"), [_copa("VAL", i, 1 - i % 2) for i in range(6)])
  monkeypatch.setitem(benchmark._settings, "paths", {"xcopa": str(root)})
  return root


def test_k_shot_demonstrations_come_from_the_demo_split(xcopa_dir):
  examples = benchmark.load_examples("polylm_eval_xcopa_it_2shot")
  assert len(examples) == 4
  for i, ex in enumerate(examples):
    assert ex.prompt.count("VAL premise") == 2 and ex.prompt.count("TEST") == 1
    assert ex.prompt.endswith(f"TEST premise {i} perché")  # the harness's Italian connective
    assert ex.choices == (f" tEST First {i}.", f" tEST Second {i}.")
    assert ex.references == (ex.choices[ex.label],)
  # A demonstration shows its gold alternative (VAL labels are 1 - i % 2).
  demo = examples[0].prompt.split("\n\n")[0]
  j = int(demo.split("premise ")[1].split(" ")[0])
  assert demo == f"VAL premise {j} perché " + (
    f"vAL Second {j}." if j % 2 == 0 else f"vAL First {j}."
  )


def test_k_shot_draws_are_reproducible_and_seeded(xcopa_dir, monkeypatch):
  a = benchmark.load_examples("polylm_eval_xcopa_it_3shot")
  assert a == benchmark.load_examples("polylm_eval_xcopa_it_3shot")
  monkeypatch.setitem(benchmark._settings, "shot_seed", 1)
  b = benchmark.load_examples("polylm_eval_xcopa_it_3shot")
  assert [x.prompt for x in a] != [x.prompt for x in b]
  assert [x.choices for x in a] == [x.choices for x in b]


def test_max_examples_takes_the_first(xcopa_dir):
  full = benchmark.load_examples("polylm_eval_xcopa_it_0shot")
  assert benchmark.load_examples("polylm_eval_xcopa_it_0shot", max_examples=2) == full[:2]
  assert full[0].prompt == "TEST premise 0 perché"


def test_xwinograd_excludes_the_example_from_its_demonstrations(tmp_path, monkeypatch):
  rows = [
    {
      "sentence": f"Sentence {i} with _ here.",
      "option1": f"A{i}",
      "option2": f"B{i}",
      "answer": "2" if i % 2 else "1",
    }
    for i in range(3)
  ]
  _write_jsonl(str(tmp_path / "en" / "test.jsonl"), rows)
  monkeypatch.setitem(benchmark._settings, "paths", {"xwinograd": str(tmp_path)})
  examples = benchmark.load_examples("polylm_eval_xwinograd_en_2shot")
  for i, ex in enumerate(examples):
    own = ex.choices[ex.label] + ex.continuation
    assert own == f"Sentence {i} with {'B' if i % 2 else 'A'}{i} here."
    assert own not in ex.prompt
    others = [f"Sentence {j} with {'B' if j % 2 else 'A'}{j} here." for j in range(3) if j != i]
    assert sorted(ex.prompt.strip().split("\n\n")) == sorted(others)
  with pytest.raises(
    ValueError,
    match=r"polylm_eval_xwinograd_en_3shot: k=3 .*test.jsonl.* has "
    r"only 2 besides the example itself",
  ):
    benchmark.load_examples("polylm_eval_xwinograd_en_3shot")


def test_k_larger_than_the_demonstrations(xcopa_dir):
  with pytest.raises(
    ValueError,
    match=r"polylm_eval_xcopa_it_9shot: k=9 demonstrations "
    r"requested but .*'validation'.*val\.it\.jsonl.* only 6",
  ):
    benchmark.load_examples("polylm_eval_xcopa_it_9shot")


def test_missing_split(xcopa_dir):
  os.remove(xcopa_dir / "it" / "val.it.jsonl")
  assert len(benchmark.load_examples("polylm_eval_xcopa_it_0shot")) == 4  # needs no demos
  with pytest.raises(
    FileNotFoundError,
    match=r"polylm_eval_xcopa_it_1shot: split 'validation'"
    r": XCOPA file not found: .*val\.it\.jsonl",
  ):
    benchmark.load_examples("polylm_eval_xcopa_it_1shot")


def test_missing_data_dir(monkeypatch):
  monkeypatch.setitem(benchmark._settings, "data_dir", None)
  monkeypatch.setitem(benchmark._settings, "paths", {})
  monkeypatch.delenv("POLYLM_EVAL_DATA_DIR", raising=False)
  with pytest.raises(
    FileNotFoundError, match="polylm_eval_mtg_story_en_0shot reads local files.*EVAL_DATA_DIR"
  ):
    benchmark.load_examples("polylm_eval_mtg_story_en_0shot")


@pytest.mark.parametrize(
  "line, message",
  [
    ('{"premise": "p", "choice1": "a"', r"line 2: malformed record: invalid JSON"),
    ('["a list"]', r"line 2: malformed record: expected a JSON object"),
    (
      '{"premise": "p", "choice1": "a", "question": "cause", "label": 0}',
      r"line 2: malformed record: field 'choice2' must be a string, is missing",
    ),
    (
      '{"premise": "p", "choice1": "a", "choice2": 3, "question": "cause", "label": 0}',
      r"line 2: malformed record: field 'choice2' must be a string, is a int",
    ),
    (
      '{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 2}',
      r"line 2: field 'label' is 2, a label not in the xcopa verbaliser \(known labels: 0, 1\)",
    ),
    (
      '{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause"}',
      r"line 2: malformed record: field 'label' is missing",
    ),
    (
      '{"premise": "p", "choice1": "a", "choice2": "b", "question": "why", "label": 1}',
      r"line 2: field 'question' is 'why', which the template's lookup 'connective' does not "
      r"map; known values: \['cause', 'effect'\]",
    ),
  ],
)
def test_bad_records_name_task_file_and_field(xcopa_dir, line, message):
  path = xcopa_dir / "it" / "test.it.jsonl"
  _write_jsonl(str(path), [_copa("TEST", 0), line])
  with pytest.raises(ValueError, match=rf"polylm_eval_xcopa_it_0shot: .*test\.it\.jsonl {message}"):
    benchmark.load_examples("polylm_eval_xcopa_it_0shot")


def test_bad_xwinograd_records(tmp_path, monkeypatch):
  monkeypatch.setitem(benchmark._settings, "paths", {"xwinograd": str(tmp_path)})
  path = tmp_path / "fr" / "test.jsonl"
  _write_jsonl(str(path), [{"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": "3"}])
  with pytest.raises(
    ValueError,
    match=r"test\.jsonl line 1: field 'answer' is '3', a label not "
    r"in the xwinograd verbaliser",
  ):
    benchmark.load_examples("polylm_eval_xwinograd_fr_0shot")
  _write_jsonl(
    str(path), [{"sentence": "No blank.", "option1": "x", "option2": "y", "answer": "1"}]
  )
  with pytest.raises(ValueError, match="field 'sentence' must contain exactly one '_'"):
    benchmark.load_examples("polylm_eval_xwinograd_fr_0shot")
  os.remove(path)
  with open(tmp_path / "fr" / "test.tsv", "w") as f:
    f.write("sentence\toption1\toption2\tanswer\nA _ b.\tx\n")
  with pytest.raises(
    ValueError,
    match=r"test\.tsv line 2: malformed record: 2 columns, the "
    r"header has 4",
  ):
    benchmark.load_examples("polylm_eval_xwinograd_fr_0shot")
  os.remove(tmp_path / "fr" / "test.tsv")
  with pytest.raises(
    FileNotFoundError,
    match=r"split 'test': XWinograd file not found; "
    r"expected one of: .*test\.jsonl, .*test\.tsv",
  ):
    benchmark.load_examples("polylm_eval_xwinograd_fr_0shot")


def test_parallel_files_of_different_lengths(tmp_path, monkeypatch):
  monkeypatch.setitem(benchmark._settings, "paths", {"flores": str(tmp_path)})
  for code, lines in (("eng_Latn", ["a", "b", "c"]), ("deu_Latn", ["x", "y"])):
    _write_jsonl(str(tmp_path / "devtest" / f"{code}.devtest"), lines)
  with pytest.raises(
    ValueError,
    match=r"polylm_eval_flores_en_de_0shot: parallel files differ "
    r"in length: .*eng_Latn\.devtest has 3 segments, "
    r".*deu_Latn\.devtest has 2",
  ):
    benchmark.load_examples("polylm_eval_flores_en_de_0shot")


def test_wmt20_reads_sgm_and_text(demo_root, tmp_path, monkeypatch):
  examples = benchmark.load_examples("polylm_eval_wmt20_de_en_0shot")
  en = benchmark_demo._split_lines(benchmark_demo.sample_lines("en"), 4)[0]
  de = benchmark_demo._split_lines(benchmark_demo.sample_lines("de"), 4)[0]
  assert [ex.references[0] for ex in examples] == en
  assert examples[0].prompt == (f"Translate the following German text into English.\n{de[0]}\n")
  (tmp_path / "sgm").mkdir()
  (tmp_path / "sgm" / "newstest2020-plen-src.pl.txt").write_text("Dzień dobry.\n")
  (tmp_path / "sgm" / "newstest2020-plen-ref.en.txt").write_text("Good morning.\n")
  monkeypatch.setitem(benchmark._settings, "paths", {"wmt20": str(tmp_path)})
  (ex,) = benchmark.load_examples("polylm_eval_wmt20_pl_en_0shot")
  assert ex.references == ("Good morning.",) and "Dzień dobry." in ex.prompt


def test_tfds_tasks_read_the_right_language(demo_root, tfds_mock):
  (ex,) = benchmark.load_examples("polylm_eval_xnli_de_0shot", max_examples=1)
  records = benchmark_demo.tfds_examples("xnli", "test", 1)
  premise, hypothesis = records[0]["premise"]["de"], records[0]["hypothesis"]["translation"][2]
  assert ex.prompt == ""  # "de" is third above; the harness scores whole sentences
  assert ex.choices[0] == f" {premise}, richtig? Ja, {hypothesis}"
  assert ex.choices[2] == f" {premise}, richtig? Nein, {hypothesis}"
  assert ex.label == records[0]["label"]
  (ex,) = benchmark.load_examples("polylm_eval_pawsx_ko_0shot", max_examples=1)
  assert ex.choices[1].startswith(benchmark_demo.sample_lines("ko")[0] + ", 맞죠? 예, ")
  # TyDiQA demonstrations: train examples of the same language only.
  examples = benchmark.load_examples("polylm_eval_tydiqa_ko_3shot")
  korean = {
    r["context"]
    for r in benchmark_demo.tfds_examples("tydi_qa/goldp", "train", 4)
    if r["id"].startswith("korean-")
  }
  for ex in examples:
    contexts = re.findall(r"맥락: (.*?)\n\n질문: ", ex.prompt)  # the harness's Korean words
    assert len(contexts) == 4 and all(c in korean for c in contexts[:3])
    assert ex.prompt.endswith("\n\n답변:")
    assert len(ex.references) == 2


def test_tfds_not_prepared(tmp_path, monkeypatch):
  monkeypatch.setitem(benchmark._settings, "tfds_data_dir", str(tmp_path))
  with pytest.raises(
    FileNotFoundError,
    match=r"polylm_eval_pawsx_de_0shot: TFDS dataset "
    r"paws_x_wiki/de:1\.0\.0 split 'test' is not "
    r"available",
  ):
    benchmark.load_examples("polylm_eval_pawsx_de_0shot")


def test_seqio_task_features(demo_root):
  vocab = vocab_lib.get_vocabulary()
  task = seqio.get_mixture_or_task("polylm_eval_xcopa_it_1shot")
  examples = benchmark.load_examples("polylm_eval_xcopa_it_1shot")
  ds = list(task.get_dataset(None, split="test", shuffle=False).as_numpy_iterator())
  assert len(ds) == len(examples)
  first = ds[0]
  assert first["inputs_pretokenized"].decode() == examples[0].prompt
  assert list(first["inputs"]) == list(vocab.encode(examples[0].prompt))
  assert first["targets"][-1] == vocab_lib.EOS_ID
  assert [c.decode() for c in first["choices"]] == list(examples[0].choices)
  assert first["label"] == examples[0].label and first["lang"] == b"it"
  assert first["continuation"] == b""
  wino = seqio.get_mixture_or_task("polylm_eval_xwinograd_en_0shot")
  row = next(wino.get_dataset(None, split="test", shuffle=False).as_numpy_iterator())
  ex = benchmark.load_examples("polylm_eval_xwinograd_en_0shot")[0]
  assert row["continuation"].decode() == ex.continuation == " is too large."
  assert row["targets_pretokenized"].decode() == ex.choices[ex.label] + ex.continuation
  mixture = seqio.get_mixture_or_task("polylm_eval_xcopa_1shot")
  assert len(mixture.tasks) == 11


def test_seqio_metric_fns_of_generation_tasks(demo_root):
  task = seqio.get_mixture_or_task("polylm_eval_flores_en_de_0shot")
  examples = benchmark.load_examples("polylm_eval_flores_en_de_0shot")
  targets = [
    task.postprocess_fn(
      b"", example={"references": [r.encode() for r in ex.references]}, is_target=True
    )
    for ex in examples
  ]
  predictions = [task.postprocess_fn((ex.references[0] + "\nextra").encode()) for ex in examples]
  (metric_fn,) = task.metric_fns
  assert metric_fn(targets, predictions) == {
    "bleu": pytest.approx(100.0),
    "chrf": pytest.approx(100.0),
  }


# -- templates ----------------------------------------------------------------------------


def test_template_overrides_change_prompts(xcopa_dir):
  try:
    templates.apply_overrides(
      {"xcopa": {"prompt": "{premise} [{connective}]", "choices": [" <{choice1}>", " <{choice2}>"]}}
    )
    (ex, *_) = benchmark.load_examples("polylm_eval_xcopa_it_0shot")
    assert ex.prompt == "TEST premise 0. [perché]"
    assert ex.choices == (" <TEST First 0.>", " <TEST Second 0.>")
  finally:
    templates.reset_templates()
  assert templates.get_template("xcopa") == templates.default_template("xcopa")


def test_bad_templates():
  with pytest.raises(
    ValueError,
    match=r"template 'xnli': prompt '\{premis\}' uses unknown "
    r"field\(s\) \['premis'\]",
  ):
    templates.set_template("xnli", prompt="{premis}")
  with pytest.raises(ValueError, match="template 'xnli': needs 3 choices"):
    templates.set_template("xnli", choices=(" yes", " no"))
  with pytest.raises(ValueError, match="template 'tydiqa': a generation task takes no choices"):
    templates.set_template("tydiqa", choices=(" a",))
  with pytest.raises(ValueError, match="unknown part"):
    templates.apply_overrides({"xnli": {"promt": "x"}})
  with pytest.raises(ValueError, match="unknown template family 'xnl'"):
    templates.apply_overrides({"xnl": {"prompt": "x"}})
  with pytest.raises(ValueError, match="score must be one of"):
    templates.set_template("pawsx", score="max")
  assert templates.get_template("xnli") == templates.default_template("xnli")


def test_label_verbalisers_cover_the_templates():
  for family, n in templates.NUM_CHOICES.items():
    assert set(benchmark_data.LABELS[family].values()) == set(range(n))


def test_prompt_sets(xcopa_dir):
  assert templates.prompt_set() == templates.DEFAULT_PROMPT_SET == "lm_eval"
  try:
    templates.use_prompt_set("english")
    (ex, *_) = benchmark.load_examples("polylm_eval_xcopa_it_0shot")
    assert ex.prompt == "TEST premise 0 because"
    assert templates.get_template("xnli").choices == (" True", " Neither", " False")
    assert benchmark.conventions(benchmark.get_task("polylm_eval_xcopa_it_0shot")) == {
      "prompt_set": "english",
      "scored_text": "each choice after the prompt",
      "eval_split": "test",
    }
    templates.set_template("xcopa", score="mean")
    assert templates.prompt_set_of("xcopa") == "english+overrides"
    assert templates.prompt_set_of("xnli") == "english"
  finally:
    templates.reset_templates()
  assert templates.prompt_set() == "lm_eval" and templates.prompt_set_of("xcopa") == "lm_eval"
  conv = benchmark.conventions(benchmark.get_task("polylm_eval_xwinograd_ja_2shot"))
  assert conv["prompts_of"] == "lm-evaluation-harness 0.4.13 task xwinograd_jp"
  assert conv["scored_text"] == "the continuation after prompt + choice (partial scoring)"
  assert conv["demonstrations"] == "2 drawn from 'test' (seed 0), joined with '\\n\\n'"
  with pytest.raises(
    ValueError, match="unknown prompt set 'gpt3'; known: \\['english', 'lm_eval'\\]"
  ):
    templates.use_prompt_set("gpt3")


def test_per_language_words_are_checked(xcopa_dir):
  words = dict(templates.get_template("xcopa").words)
  with pytest.raises(ValueError, match="words for 'zh' are \\['cause'\\], but other languages"):
    templates.set_template("xcopa", words={**words, "zh": {"cause": "因为"}})
  with pytest.raises(ValueError, match="words \\['premise'\\] shadow record fields"):
    templates.set_template("xcopa", words={"it": {"premise": "x", "cause": "a", "effect": "b"}})
  with pytest.raises(ValueError, match=r"lookup 'connective'\['cause'\] '\{why\}' uses unknown"):
    templates.set_template("xcopa", lookups={"connective": ("question", {"cause": "{why}"})})
  try:
    templates.set_template("xcopa", words={"zh": {"cause": "因为", "effect": "所以"}})
    with pytest.raises(
      ValueError,
      match=r"xcopa_it_0shot: .*test\.it\.jsonl line 1: the prompt template has no "
      r"words for language 'it'; languages: \['zh'\]",
    ):
      benchmark.load_examples("polylm_eval_xcopa_it_0shot")
  finally:
    templates.reset_templates()


def test_harness_fields_of_the_normalisers():
  raw = {"sentence1": 'He said " yes " ( loudly ) .', "sentence2": "It wasn 't so.", "label": 1}
  en = benchmark_data.normalize_pawsx(raw, "w", "t", "en").fields
  assert en["sentence1_clause"] == 'He said"yes"(loudly)'  # the harness's general_detokenize
  assert en["sentence2_lower"] == "it wasn't so."
  ja = benchmark_data.normalize_pawsx(raw, "w", "t", "ja").fields  # the harness leaves ja as is
  assert (ja["sentence1_clause"], ja["sentence2_lower"]) == (raw["sentence1"], raw["sentence2"])
  copa = {"premise": "Il gatto dorme!", "choice1": "A.", "choice2": "B.", "question": "cause"}
  fields = benchmark_data.normalize_xcopa({**copa, "label": 0}, "w", "t", "it").fields
  assert fields["premise_cut"] == "Il gatto dorme" and fields["choice2_clause"] == "b."
  wino = {"sentence": "The cup fell because _ was  full .", "option1": "it", "option2": "X"}
  fields = benchmark_data.normalize_xwinograd({**wino, "answer": "1"}, "w", "t", "en").fields
  assert (fields["before_blank"], fields["after_blank"]) == ("The cup fell because ", "was  full .")


@pytest.mark.slow
def test_eval_binary_on_the_xcopa_release_layout(tmp_path):
  """`python -m polylm_jax.eval` reads the XCOPA release's data/ folder unchanged, with the
  harness's connectives by default (zh: 因为 / 所以)."""
  import subprocess
  import sys

  import shutil

  from polylm_jax import hf

  data = tmp_path / "xcopa-master" / "data"
  langs = benchmark.FAMILIES["xcopa"].languages
  for lang in langs:
    rows = [_copa(lang, i, i % 2, ("cause", "effect")[i % 2]) for i in range(2)]
    if lang == "zh":
      rows[0].update(premise="该物品用气泡包装纸包着。", choice1="它很易碎。", choice2="它很小。")
    _write_jsonl(str(data / lang / f"test.{lang}.jsonl"), rows)
    _write_jsonl(str(data / lang / f"val.{lang}.jsonl"), rows)
  vocab = vocab_lib.get_vocabulary()
  config = get_config("polylm_tiny", vocab_size=vocab.vocab_size, max_len=64)
  hf.export_hf(config, jax.device_get(init_params(config, jax.random.key(0))), tmp_path / "hf")
  shutil.copy(vocab_lib.default_vocabulary_path(), tmp_path / "hf" / "tokenizer.model")
  out = tmp_path / "out"
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run(
    [
      sys.executable,
      "-m",
      "polylm_jax.eval",
      "--gin_file=gin/runs/eval.gin",
      f'--gin.CHECKPOINT_PATH="{tmp_path / "hf"}"',
      f'--gin.EVAL_OUTPUT_DIR="{out}"',
      '--gin.MIXTURE_OR_TASK_NAME="polylm_eval_xcopa_0shot"',
      f"--gin.BenchmarkSpec.paths={{'xcopa': '{data}'}}",
    ],
    cwd=repo,
    capture_output=True,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
    timeout=600,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  (first, second) = [
    json.loads(line) for line in open(out / "predictions" / "polylm_eval_xcopa_zh_0shot.jsonl")
  ]
  assert first["prompt"] == "该物品用气泡包装纸包着 因为"
  assert first["choices"] == [" 它很易碎。", " 它很小。"]
  assert second["prompt"] == "zh premise 1 所以"
  summary = json.loads((out / "results.json").read_text())
  assert [s["lang"] for s in summary] == list(langs)
  assert all(s["examples"] == 2 and s["prompt_set"] == "lm_eval" for s in summary)
  assert "Prompt set: lm_eval." in (out / "results.md").read_text()


def test_empty_pawsx_records_are_dropped_as_the_harness_does(monkeypatch):
  rows = [
    {"sentence1": "A cat .", "sentence2": "A cat.", "label": 1},
    {"sentence1": "", "sentence2": "Nothing.", "label": 0},
  ]
  monkeypatch.setattr(
    benchmark.data, "tfds_records", lambda *a: [(r, f"row {i}") for i, r in enumerate(rows)]
  )
  (ex,) = benchmark.load_examples("polylm_eval_pawsx_en_0shot")  # de en es fr: dropped
  assert ex.choices == ("A cat, right? No, a cat.", "A cat, right? Yes, a cat.")
  assert len(benchmark.load_examples("polylm_eval_pawsx_ja_0shot")) == 2  # kept, as the harness
