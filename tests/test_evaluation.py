"""Metrics against values computed by hand, and the evaluation loop against direct decoding."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from polylm_jax import decoding
from polylm_jax.evaluation import metrics as metrics_lib
from polylm_jax.evaluation import report
from polylm_jax import evaluation
from polylm_jax import vocab as vocab_lib
from polylm_jax.config import get_config
from polylm_jax.model import init_params
from tasks import benchmark, benchmark_demo, templates

# -- metrics ---------------------------------------------------------------------------------

# Six tokens, the last one wrong: n-gram precisions 5/6, 4/5, 3/4, 2/3, brevity penalty 1,
# so BLEU = 100 * (5/6 * 4/5 * 3/4 * 2/3) ** (1/4) = 100 * (1/3) ** 0.25.
BLEU_ONE_WRONG = 100 * (1 / 3) ** 0.25


def test_bleu_hand_value():
  assert BLEU_ONE_WRONG == pytest.approx(75.9836, abs=1e-3)
  assert metrics_lib.bleu(["a b c d e x"], [["a b c d e f"]], "en") == pytest.approx(BLEU_ONE_WRONG)
  assert metrics_lib.bleu(["a b c d e f"], ["a b c d e f"], "en") == pytest.approx(100.0)


def test_bleu_tokenizers_for_zh_ja_th():
  # Without spaces, 13a sees one wrong token; per-character tokenizers see 6 chars, 1 wrong.
  assert metrics_lib.bleu_tokenizer("zh") == "zh"
  assert metrics_lib.bleu_tokenizer("ja") == "char"
  assert metrics_lib.bleu_tokenizer("th") == "char"
  assert metrics_lib.bleu_tokenizer("de") == "13a"
  assert metrics_lib.bleu(["猫坐在垫子下"], ["猫坐在垫子上"], "zh") == pytest.approx(BLEU_ONE_WRONG)
  assert metrics_lib.bleu(["猫坐在垫子下"], ["猫坐在垫子上"], "en") == 0.0
  assert metrics_lib.bleu(["กขคงจฉ"], ["กขคงจช"], "th") == pytest.approx(BLEU_ONE_WRONG)
  assert metrics_lib.bleu(["ねこがすわる"], ["ねこがすわれ"], "ja") == pytest.approx(BLEU_ONE_WRONG)
  assert metrics_lib.bleu(
    ["猫坐在垫子下"], ["猫坐在垫子上"], "en", tokenize="char"
  ) == pytest.approx(BLEU_ONE_WRONG)


def test_chrf_hand_value():
  # "abc" vs "abd": char 1-grams P = R = 2/3, 2-grams 1/2, 3-grams 0 (no longer n-grams);
  # average P = R = 7/18, so F-beta = 7/18.
  assert metrics_lib.chrf(["abc"], [["abd"]]) == pytest.approx(100 * 7 / 18)
  assert metrics_lib.chrf(["same text"], ["same text"]) == pytest.approx(100.0)


def test_translation_metrics_need_equal_reference_counts():
  with pytest.raises(ValueError, match="same number of references"):
    metrics_lib.bleu(["a", "b"], [["a"], ["b", "c"]], "en")
  with pytest.raises(ValueError, match="2 predictions but 1 references"):
    metrics_lib.chrf(["a", "b"], [["a"]])


def test_rouge_hand_values():
  # unigrams 2 of 3 match, bigrams 1 of 2, LCS 2 of 3.
  scores = metrics_lib.rouge_metrics(["the cat ran"], ["the cat sat"])
  assert scores["rouge1"] == pytest.approx(100 * 2 / 3)
  assert scores["rouge2"] == pytest.approx(100 * 1 / 2)
  assert scores["rougeL"] == pytest.approx(100 * 2 / 3)


def test_rouge_keeps_non_latin_scripts():
  cjk = metrics_lib.rouge_metrics(["我爱他"], ["我爱你"])
  assert cjk["rouge1"] == pytest.approx(100 * 2 / 3)
  assert cjk["rouge2"] == pytest.approx(50.0)
  # Accented words stay whole: "café" matches "café" but not "cafe".
  assert metrics_lib.rouge_metrics(["café"], ["cafe"])["rouge1"] == 0.0
  assert metrics_lib.rouge_metrics(["Café crème"], ["café crème"])["rouge1"] == pytest.approx(100)
  tokens = metrics_lib.MultilingualTokenizer().tokenize("Über café, 我爱你! Привет мир ไทย")
  assert tokens == ["über", "café", "我", "爱", "你", "привет", "мир", "ไ", "ท", "ย"]
  # Best over several references.
  assert metrics_lib.rouge_scores("a b", ["x y", "a b"])["rouge1"] == pytest.approx(1.0)


def test_squad_normalisation_and_scores():
  assert metrics_lib.squad_normalize("The  Eiffel Tower!") == "eiffel tower"
  assert metrics_lib.squad_normalize("An apple, a pear and the plum.") == "apple pear and plum"
  assert metrics_lib.qa_exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
  assert metrics_lib.qa_exact_match("Eiffel", "eiffel tower") == 0.0
  # "big cat" vs "cat": precision 1/2, recall 1 -> F1 2/3.
  assert metrics_lib.qa_f1("the big cat", "a cat") == pytest.approx(2 / 3)
  assert metrics_lib.qa_f1("dog", "cat") == 0.0
  per = metrics_lib.squad_scores("the big cat", ["dog", "a cat", "big cat"])
  assert per == {"f1": 1.0, "exact_match": 1.0}
  corpus = metrics_lib.squad_metrics(["the big cat", "dog"], [["a cat"], ["dog."]])
  assert corpus["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
  assert corpus["exact_match"] == pytest.approx(50.0)
  with pytest.raises(ValueError, match="at least one reference"):
    metrics_lib.squad_scores("x", [])


def test_accuracy():
  assert metrics_lib.accuracy([0, 1, 2, 1], [0, 1, 1, 1]) == 75.0
  assert metrics_lib.accuracy([], []) == 0.0
  with pytest.raises(ValueError):
    metrics_lib.accuracy([0], [0, 1])


# -- the loop ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
  vocab = vocab_lib.get_vocabulary()
  config = get_config("polylm_tiny", vocab_size=vocab.vocab_size, max_len=128)
  return config, init_params(config, jax.random.key(0)), vocab


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
  root = benchmark_demo.write_demo_data(str(tmp_path_factory.mktemp("bench")), n=5)
  benchmark.configure(data_dir=root)
  return root


def test_split_encode_matches_joint_tokenization(model):
  _, _, vocab = model
  for prompt, choice in [
    ("Question: is it?\nAnswer:", " True"),
    ("我爱", "你们"),
    ("", "A whole sentence."),
    ("x", " y"),
  ]:
    ctx, cont = evaluation.split_encode(vocab, prompt, choice)
    assert ctx + cont == list(vocab.encode(prompt + choice))
    assert cont
  assert evaluation.split_encode(vocab, "", "abc")[0] == []


def test_fit_cuts_context_from_the_left():
  ctx, cont, cut = evaluation._fit(list(range(10)), [50, 51], 8)
  assert (ctx, cont, cut) == ([4, 5, 6, 7, 8, 9], [50, 51], True)
  assert evaluation._fit([1, 2], [3], 8) == ([1, 2], [3], False)
  ctx, cont, cut = evaluation._fit([1, 2], list(range(20)), 8)
  assert (ctx, cont, cut) == ([2], list(range(7)), True)


def test_rank_scores_equal_direct_scoring(model, demo_data):
  config, params, vocab = model
  res = evaluation.evaluate(
    config, params, vocab, "polylm_eval_xcopa_it_2shot", max_examples=5, batch_size=4
  )
  task = res["polylm_eval_xcopa_it_2shot"]
  examples = benchmark.load_examples("polylm_eval_xcopa_it_2shot", max_examples=5)
  assert task.num_examples == len(task.predictions) == 5
  contexts, conts = [], []
  for ex in examples:
    for choice in ex.choices:
      ctx, cont = evaluation.split_encode(vocab, ex.prompt, choice)
      contexts.append([config.eos_id] + ctx)
      conts.append(cont)
  direct = decoding.score(config, params, contexts, conts, batch_size=4).total.reshape(5, 2)
  for ex, pred, row in zip(examples, task.predictions, direct):
    np.testing.assert_allclose(pred["scores"], row, rtol=1e-4, atol=1e-4)
    assert pred["prediction"] == int(np.argmax(row))
    assert pred["correct"] == (pred["prediction"] == ex.label)
  assert task.metrics["accuracy"] == pytest.approx(
    100 * np.mean([p["correct"] for p in task.predictions])
  )


def test_rank_accuracy_with_a_scorer_that_knows_the_answers(model, demo_data, monkeypatch):
  """A scorer preferring the gold continuation gives 100%; one preferring the other 0%."""
  config, params, vocab = model
  name = "polylm_eval_xwinograd_en_0shot"
  examples = benchmark.load_examples(name)
  assert all(ex.continuation for ex in examples)  # partial scoring: the contexts differ
  gold = {
    tuple([config.eos_id] + sum(evaluation.split_encode(vocab, *ex.pairs()[ex.label]), []))
    for ex in examples
  }

  def fake_score(sign):
    def score(config, params, contexts, continuations, **kw):
      pairs = [tuple(a + b) for a, b in zip(contexts, continuations)]
      total = np.array([sign * (1.0 if p in gold else -1.0) for p in pairs])
      n = np.array([len(c) for c in continuations])
      return decoding.Scores(total, total / n, n, np.zeros(len(n), bool))

    return score

  monkeypatch.setattr(evaluation.decoding, "score", fake_score(+1))
  assert evaluation.evaluate(config, params, vocab, name)[name].metrics["accuracy"] == 100.0
  monkeypatch.setattr(evaluation.decoding, "score", fake_score(-1))
  assert evaluation.evaluate(config, params, vocab, name)[name].metrics["accuracy"] == 0.0


def test_generation_equals_direct_generate(model, demo_data):
  config, params, vocab = model
  name = "polylm_eval_flores_en_zh_0shot"
  res = evaluation.evaluate(
    config, params, vocab, name, max_examples=3, max_new_tokens=6, batch_size=2
  )
  task = res[name]
  assert task.notes == {"max_new_tokens": 6, "bleu_tokenizer": "zh"}
  examples = benchmark.load_examples(name, max_examples=3)
  prompts = [[config.eos_id] + list(vocab.encode(ex.prompt)) for ex in examples]
  direct = decoding.generate(config, params, prompts, 6, batch_size=2)
  texts = [vocab.decode(ids).split("\n")[0].strip() for ids in direct]
  assert [p["prediction"] for p in task.predictions] == texts
  assert [p["references"] for p in task.predictions] == [list(ex.references) for ex in examples]
  refs = [list(ex.references) for ex in examples]
  assert task.metrics["bleu"] == pytest.approx(metrics_lib.bleu(texts, refs, "zh"))
  assert task.metrics["chrf"] == pytest.approx(metrics_lib.chrf(texts, refs))


def test_generation_metrics_with_planted_outputs(model, demo_data, monkeypatch):
  """Outputs equal to the references score 100; the loop cuts at the stop string."""
  config, params, vocab = model
  name = "polylm_eval_mtg_title_de_0shot"
  examples = benchmark.load_examples(name, max_examples=3)
  by_prompt = {
    tuple([config.eos_id] + list(vocab.encode(ex.prompt))): list(
      vocab.encode(ex.references[0] + "\nmore text")
    )
    for ex in examples
  }

  def fake_generate(config, params, prompts, max_new, **kw):
    return [by_prompt[tuple(p)] for p in prompts]

  monkeypatch.setattr(evaluation.decoding, "generate", fake_generate)
  task = evaluation.evaluate(config, params, vocab, name, max_examples=3)[name]
  assert [p["prediction"] for p in task.predictions] == [ex.references[0] for ex in examples]
  assert task.metrics == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}


def test_truncation_is_counted(model, demo_data):
  config, params, vocab = model
  small = config.replace(max_len=32)
  params = {**params, "wpe": params["wpe"][:32]}
  name = "polylm_eval_xcopa_it_5shot"
  task = evaluation.evaluate(small, params, vocab, name, max_examples=2)[name]
  assert task.num_truncated == 2
  assert all(p["truncated"] for p in task.predictions)


def test_results_summary_and_rows(model, demo_data):
  config, params, vocab = model
  res = evaluation.evaluate(config, params, vocab, ["polylm_eval_xcopa_id_0shot"], max_examples=2)
  assert set(res.summary()) == {"eval/polylm_eval_xcopa_id_0shot/accuracy"}
  (row,) = res.rows()
  assert row["family"] == "xcopa" and row["lang"] == "id" and row["primary"]
  with pytest.raises(KeyError, match="no result"):
    res["polylm_eval_nope"]


def test_mean_scoring_follows_the_template(model, demo_data):
  config, params, vocab = model
  name = "polylm_eval_xcopa_it_0shot"
  try:
    templates.set_template("xcopa", score="mean")
    task = evaluation.evaluate(config, params, vocab, name, max_examples=4)[name]
  finally:
    templates.reset_templates()
  for p in task.predictions:
    assert p["prediction"] == int(np.argmax(p["per_token_scores"]))
  assert task.notes == {"score": "mean"}


def test_bad_arguments(model, demo_data):
  config, params, vocab = model
  with pytest.raises(ValueError, match="max_examples"):
    evaluation.evaluate(config, params, vocab, "polylm_eval_xcopa_it_0shot", max_examples=0)
  with pytest.raises(ValueError, match="unknown decoding setting"):
    evaluation.evaluate(
      config, params, vocab, "polylm_eval_xcopa_it_0shot", decode_settings={"beams": 2}
    )
  with pytest.raises(ValueError, match="unknown task or mixture"):
    evaluation.evaluate(config, params, vocab, "polylm_eval_nosuch")
  with pytest.raises(ValueError, match="vocab_size"):
    evaluation.evaluate(config.replace(vocab_size=512), params, vocab, "polylm_eval_xcopa_it_0shot")
  with pytest.raises(ValueError, match="unknown families"):
    evaluation.evaluate(
      config, params, vocab, "polylm_eval_mtg_title_de_0shot", max_new_tokens={"mtg": 3}
    )


def test_report_states_prompt_set_shots_and_conventions(model, demo_data, tmp_path):
  config, params, vocab = model
  names = [
    "polylm_eval_xcopa_it_1shot",
    "polylm_eval_xcopa_zh_1shot",
    "polylm_eval_flores_en_de_0shot",
  ]
  res = evaluation.evaluate(config, params, vocab, names, max_examples=2, max_new_tokens=3)
  report.write_report(res, tmp_path, plot=False)
  md = (tmp_path / "results.md").read_text()
  assert "Prompt set: lm_eval. Shots in each table's heading" in md
  assert "## xcopa, 1-shot" in md and "## flores, 0-shot" in md
  assert (
    "Conventions: prompt set: lm_eval; prompts of: per language in results.json; scored text: "
    "each choice after the prompt; eval split: test; demonstrations: 1 drawn from 'validation' "
    "(seed 0), joined with '\\n\\n'; start token: </s>; scoring: summed log-likelihood; "
    "metric: accuracy (%) of the best-scoring choice"
  ) in md
  assert (
    "Conventions: prompt set: lm_eval; eval split: devtest; start token: </s>; decoding: greedy; "
    "output: cut at the first '\\n'; metric: corpus sacreBLEU BLEU"
  ) in md
  (xcopa_it, _, flores) = json.loads((tmp_path / "results.json").read_text())
  assert xcopa_it["prompt_set"] == "lm_eval" and xcopa_it["shots"] == 1
  assert xcopa_it["conventions"]["prompts_of"] == "lm-evaluation-harness 0.4.13 task xcopa_it"
  assert flores["conventions"]["decoding"] == "greedy"
  assert flores["conventions"]["metric"].startswith("corpus sacreBLEU BLEU")
  assert "prompts_of" not in flores["conventions"]  # the harness has no FLORES task


def test_evaluate_takes_task_specs_without_the_task_library(model, monkeypatch):
  """The loop needs no registry: TaskSpecs with their own loader, here a hand-made example
  whose gold choice repeats the prompt's pattern and one with partial scoring."""
  config, params, vocab = model
  plain = evaluation.Example("a", "en", "x y x y x y x", (" y", " q"), label=0)
  partial = evaluation.Example("b", "en", "", ("one two", "one three"), 1, continuation=" four")
  spec = evaluation.TaskSpec(
    "mine",
    "fam",
    "en",
    0,
    "rank",
    "accuracy",
    lambda n: [plain, partial][:n],
    conventions={"prompt_set": "mine"},
  )
  monkeypatch.setitem(evaluation._resolver, "resolve", None)
  (task,) = evaluation.evaluate(config, params, vocab, [spec], max_examples=2).tasks
  assert task.task == "mine" and task.num_examples == 2
  assert task.conventions["prompt_set"] == "mine" and task.conventions["start_token"] == "</s>"
  assert task.predictions[1]["continuation"] == " four"
  contexts, conts = [], []
  for ex in (plain, partial):
    for context, scored in ex.pairs():
      ctx, cont = evaluation.split_encode(vocab, context, scored)
      contexts.append([config.eos_id] + ctx)
      conts.append(cont)
  direct = decoding.score(config, params, contexts, conts).total.reshape(2, 2)
  np.testing.assert_allclose([p["scores"] for p in task.predictions], direct, atol=1e-4)
  with pytest.raises(ValueError, match=r"need a task library: import tasks.benchmark"):
    evaluation.evaluate(config, params, vocab, "polylm_eval_xcopa_it_0shot")
  with pytest.raises(ValueError, match="kind must be 'rank' or 'generate'"):
    evaluation.TaskSpec("t", "f", "en", 0, "rank_it", "accuracy", lambda n: [])


def test_split_encode_follows_the_harness_whitespace():
  """Trailing whitespace of the context is scored with the continuation; leading whitespace
  of the whole text is left to the word-start marker (as HF's Llama tokenizer does)."""
  vocab = vocab_lib.get_vocabulary()
  ctx, cont = evaluation.split_encode(vocab, "Answer:\n\n", "Yes")
  assert ctx == list(vocab.encode("Answer:")) and ctx + cont == list(vocab.encode("Answer:\n\nYes"))
  assert evaluation.split_encode(vocab, "", " Yes, it is") == ([], list(vocab.encode("Yes, it is")))
  ctx, cont = evaluation.split_encode(vocab, " Der Hund\n\n", " Die Katze")
  assert ctx == list(vocab.encode("Der Hund"))
  assert ctx + cont == list(vocab.encode("Der Hund\n\n Die Katze"))


def test_library_modules_import_no_tasks_module():
  code = (
    "import sys; import polylm_jax.evaluation, polylm_jax.evaluation.report, polylm_jax.evaluation.metrics;"
    "bad = [m for m in sys.modules if m == 'tasks' or m.startswith('tasks.')];"
    "assert not bad, bad"
  )
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
