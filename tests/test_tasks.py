"""Task registrations: names and language look-ups, the built-in sample tasks, bitext templates
in both directions, every TFDS-backed source read offline through tfds.testing.mock_data,
the few-line helpers for new sources/languages, and bad-input errors naming the task."""

import json

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import tasks
from polylm_jax import vocab as vocab_lib
from tasks import languages, pretrain, registry

OTHERS = [c for c in languages.LANGUAGE_CODES if c != "en"]


def _read(name, split="train", n=None, **kw):
  ds = seqio.get_mixture_or_task(name).get_dataset(
    None, split=split, shuffle=False, try_in_mem_cache=False, **kw
  )
  if n:
    ds = ds.take(n)
  return list(ds.as_numpy_iterator())


def _decode(ex):
  return vocab_lib.get_vocabulary().decode(ex["targets"].tolist())


@pytest.fixture
def cleanup():
  """Forget tasks and languages a test registers."""
  names, langs = [], []
  yield names, langs
  for n in names:
    seqio.TaskRegistry.remove(n)
    registry._TASKS.pop(n, None)
  for code in langs:
    languages._LANGUAGES.pop(code, None)


def test_every_language_has_its_tasks_and_lookups():
  for code in languages.LANGUAGE_CODES:
    for source in ("sample", "mc4", "wiki40b", "wikipedia"):
      name = f"polylm_{code}_{source}"
      assert name in seqio.TaskRegistry.names()
      assert tasks.task_language(name) == code and tasks.task_info(name).kind == "mono"
  for code in OTHERS:
    for source in ("sample", "ted"):
      name = f"polylm_bitext_{code}_en_{source}"
      assert (
        tasks.task_languages(name) == (code, "en") and tasks.task_language(name) == f"{code}-en"
      )
  assert tasks.list_tasks(source="wmt19") == [
    "polylm_bitext_de_en_wmt19",
    "polylm_bitext_ru_en_wmt19",
    "polylm_bitext_zh_en_wmt19",
  ]
  assert len(tasks.list_tasks(kind="mono", source="sample")) == 18
  assert set(pretrain.BUILTIN_TASKS) <= set(seqio.TaskRegistry.names())
  with pytest.raises(ValueError, match="unknown PolyLM task 'polylm_xx_sample'"):
    tasks.task_info("polylm_xx_sample")


def test_sample_mono_task_contract():
  exs = _read("polylm_th_sample")
  assert len(exs) > 100
  for ex in exs:
    t = ex["targets"]
    assert t.dtype == np.int32 and t[-1] == vocab_lib.EOS_ID and 0 not in t
    assert list(t).count(vocab_lib.EOS_ID) == 1 and ex["lang"] == b"th"
  # Documents longer than any sequence length come whole: nothing trims them.
  assert max(len(ex["targets"]) for ex in exs) > 200


def test_sample_holdout_is_the_same_lines_in_every_task():
  lines = pretrain.sample_parallel_file("fr")
  fr = open(lines, encoding="utf-8").read().splitlines()
  en = open(pretrain.sample_parallel_file("en"), encoding="utf-8").read().splitlines()
  val = [_decode(ex) for ex in _read("polylm_fr_sample", "validation")]
  held = [fr[i] for i in range(9, len(fr), 10)]
  assert val[: len(held)] == held  # parallel file first, then documents
  train = {_decode(ex) for ex in _read("polylm_fr_sample", "train")}
  assert not train & set(held)
  pairs = [_decode(ex) for ex in _read("polylm_bitext_fr_en_sample", "validation")]
  assert len(pairs) == len(held)
  for i, text in zip(range(9, len(fr), 10), pairs):
    assert text in (f"{fr[i]}\n{en[i]}", f"{en[i]}\n{fr[i]}")


def test_bitext_both_directions_are_used_and_deterministic():
  first = [_decode(ex) for ex in _read("polylm_bitext_ja_en_sample")]
  again = [_decode(ex) for ex in _read("polylm_bitext_ja_en_sample")]
  assert first == again
  ja = set(open(pretrain.sample_parallel_file("ja"), encoding="utf-8").read().splitlines())
  starts_ja = sum(text.split("\n")[0] in ja for text in first)
  assert 0.3 * len(first) < starts_ja < 0.7 * len(first)


def test_bitext_templates_render_names_and_directions():
  ds = tf.data.Dataset.from_tensor_slices(
    {"src": ["Guten Morgen", "Danke"], "tgt": ["Good morning", "Thanks"]}
  )
  fwd = registry.render_bitext(ds, "de", "en", [registry.INSTRUCTION_TEMPLATE], "forward")
  out = [e["targets"].decode() for e in fwd.as_numpy_iterator()]
  assert out[0] == ("Translate the following German text into English.\nGuten Morgen\nGood morning")
  back = registry.render_bitext(
    ds, "de", "en", ["{src_native} -> {tgt_code}: {src_text} = {tgt_text}"], "backward"
  )
  assert [e["targets"].decode() for e in back.as_numpy_iterator()][
    1
  ] == "English -> de: Thanks = Danke"
  assert {e["lang"] for e in back.as_numpy_iterator()} == {b"de-en"}
  with pytest.raises(ValueError, match="unknown fields.*'language'"):
    registry.check_template("{language}: {src_text} {tgt_text}")
  with pytest.raises(ValueError, match="needs both"):
    registry.check_template("{src_text}")


# -- TFDS sources, offline ----------------------------------------------------------------


def _tfds_tasks():
  out = []
  for name in registry.list_tasks():
    src = seqio.get_mixture_or_task(name).source
    if isinstance(src, seqio.TfdsDataSource):
      out.append((name, src))
  return out


def test_every_tfds_name_config_version_and_split_exists_in_tfds():
  from tensorflow_datasets.text import c4

  tfds_tasks = _tfds_tasks()
  assert len(tfds_tasks) == 18 * 3 + 17 + 6 + 7 + 1
  for name, src in tfds_tasks:
    loader = src.tfds_dataset
    builder = tfds.builder(loader.name)  # raises for an unknown name/config/version
    assert str(builder.version) == loader.name.rsplit(":", 1)[1], name
    if builder.name == "c4":
      for split in loader._split_map.values():
        assert split.removesuffix("-validation") in c4.MC4_LANGUAGES, (name, split)
    if builder.name in (
      "wmt19_translate",
      "wmt18_translate",
      "wmt15_translate",
      "wmt13_translate",
      "para_crawl",
      "opus",
    ):
      assert set(tasks.task_languages(name)) == set(
        builder.builder_config.language_pair
        if builder.name != "para_crawl"
        else ("en", builder.builder_config.target_language)
      )


MOCKED = [
  "polylm_zh_mc4",
  "polylm_he_mc4",
  "polylm_zh_wiki40b",
  "polylm_he_wikipedia",
  "polylm_bitext_de_en_wmt19",
  "polylm_bitext_tr_en_wmt18",
  "polylm_bitext_fr_en_wmt15",
  "polylm_bitext_es_en_wmt13",
  "polylm_bitext_pl_en_para_crawl",
  "polylm_bitext_de_en_opus",
]


@pytest.mark.parametrize("name", MOCKED)
def test_tfds_task_reads_offline_with_mock_data(name):
  split = "validation" if "mc4" in name or "wiki40b" in name else "train"
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    exs = _read(name, split)
  assert len(exs) == 3
  for ex in exs:
    assert ex["targets"][-1] == vocab_lib.EOS_ID and 0 not in ex["targets"]
    assert ex["lang"].decode() == tasks.task_language(name)
  if "bitext" in name:
    assert all("\n" in _decode(ex) for ex in exs)  # two sides, newline-joined


def test_ted_task_picks_the_right_languages():
  talks = [
    {
      "language": ["en", "pt-br", "zh-cn", "de"],
      "translation": ["Thank you.", "Obrigado.", "谢谢。", "Danke."],
    },
    {"language": ["en", "de"], "translation": ["Hello.", "Hallo."]},  # no Chinese: dropped
    {"language": ["zh-cn", "en"], "translation": ["你好。", "Hi."]},
  ]

  def as_dataset(self, *args, **kwargs):
    return tf.data.Dataset.from_generator(
      lambda: ({"translations": t, "talk_name": "talk"} for t in talks),
      output_signature={
        "translations": {
          "language": tf.TensorSpec([None], tf.string),
          "translation": tf.TensorSpec([None], tf.string),
        },
        "talk_name": tf.TensorSpec([], tf.string),
      },
    )

  with tfds.testing.mock_data(as_dataset_fn=as_dataset, policy=tfds.testing.MockPolicy.USE_CODE):
    texts = [_decode(ex) for ex in _read("polylm_bitext_zh_en_ted")]
  assert len(texts) == 2
  assert texts[0] in ("谢谢。\nThank you.", "Thank you.\n谢谢。")
  assert texts[1] in ("你好。\nHi.", "Hi.\n你好。")


def test_wiki40b_markers_become_plain_text():
  raw = (
    "\n_START_ARTICLE_\nLighthouse\n_START_SECTION_\nHistory\n_START_PARAGRAPH_\n"
    "Keepers lived there._NEWLINE_They left in 1990."
  )
  ds = pretrain.clean_wiki40b(tf.data.Dataset.from_tensors({"text": raw}))
  assert (
    next(ds.as_numpy_iterator())["text"].decode()
    == "Lighthouse\nHistory\nKeepers lived there.\nThey left in 1990."
  )


# -- helpers for new sources and languages -------------------------------------------------


def test_register_local_text_and_jsonl_tasks(tmp_path, cleanup):
  names, _ = cleanup
  for i in range(3):
    (tmp_path / f"news-{i}.txt").write_text(f"Habari ya leo {i}.\n\nHabari nyingine {i}.\n")
  names.append(tasks.register_text_task("de", "news", str(tmp_path / "news-*.txt")))
  assert names[-1] == "polylm_de_news" and tasks.task_language("polylm_de_news") == "de"
  exs = _read("polylm_de_news")
  assert sorted(_decode(e) for e in exs)[0] == "Habari nyingine 0."
  assert len(exs) == 6
  host0 = _read("polylm_de_news", shard_info=seqio.ShardInfo(0, 2))
  host1 = _read("polylm_de_news", shard_info=seqio.ShardInfo(1, 2))
  assert sorted(_decode(e) for e in host0 + host1) == sorted(_decode(e) for e in exs)

  (tmp_path / "pairs.jsonl").write_text(
    json.dumps({"de": "Wie spät ist es?", "en": "What time is it?"})
    + "\n"
    + "{oops\n"
    + json.dumps({"de": "Gute Nacht", "en": "Good night"})
    + "\n"
  )
  names.append(
    tasks.register_bitext_files_task(
      "de",
      "en",
      "mydocs",
      str(tmp_path / "pairs.jsonl"),
      fmt="jsonl",
      on_error="skip",
      templates=[registry.INSTRUCTION_TEMPLATE],
      direction="forward",
    )
  )
  texts = [_decode(e) for e in _read(names[-1])]
  assert texts == [
    "Translate the following German text into English.\nWie spät ist es?\nWhat time is it?",
    "Translate the following German text into English.\nGute Nacht\nGood night",
  ]


def test_new_language_in_a_few_lines(tmp_path, cleanup):
  names, langs = cleanup
  tasks.register_language(tasks.Language("sw", "Swahili", "Kiswahili", "Latn", mc4="sw"))
  langs.append("sw")
  names += tasks.register_language_tasks("sw")
  assert "polylm_sw_mc4" in names and "polylm_bitext_sw_en_sample" in names
  assert "polylm_sw_wiki40b" not in names  # wiki40b=None: not registered
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    assert len(_read("polylm_sw_mc4")) == 2
  # The sample corpus has no Swahili: reading says which file is missing.
  with pytest.raises(FileNotFoundError, match="polylm_sw_sample.*sw.txt"):
    _read("polylm_sw_sample")


def test_unknown_language_names_the_task():
  with pytest.raises(ValueError) as e:
    tasks.register_text_task("xx", "news", "/data/*.txt")
  assert "polylm_xx_news" in str(e.value) and "'xx'" in str(e.value)
  with pytest.raises(ValueError, match="polylm_bitext_de_qq_x.*'qq'"):
    tasks.register_bitext_files_task("de", "qq", "x", "/data/*.tsv")


def test_task_that_yields_nothing_names_the_task(tmp_path, cleanup):
  names, _ = cleanup
  (tmp_path / "blank.txt").write_text("\n   \n\n")
  names.append(tasks.register_text_task("it", "blank", str(tmp_path / "blank.txt")))
  with pytest.raises(tf.errors.InvalidArgumentError, match="Task polylm_it_blank yielded no"):
    _read("polylm_it_blank")


def test_missing_and_malformed_files_through_a_task(tmp_path, cleanup):
  names, _ = cleanup
  names.append(tasks.register_text_task("nl", "gone", str(tmp_path / "gone-*.jsonl"), fmt="jsonl"))
  with pytest.raises(FileNotFoundError, match=r"polylm_nl_gone.*gone-\*\.jsonl"):
    _read("polylm_nl_gone")
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"text": "goed"}) + "\n" + json.dumps({"txt": "fout"}) + "\n")
  names.append(tasks.register_text_task("nl", "bad", str(bad), fmt="jsonl"))
  with pytest.raises(tf.errors.OpError, match=f"{bad} line 2: field 'text' must be a string"):
    _read("polylm_nl_bad")


def test_tasks_with_an_explicit_vocabulary(tmp_path, cleanup):
  """A task can carry its own vocabulary (e.g. the released 256k tokenizer)."""
  names, _ = cleanup
  from polylm_jax import tokenizer_training, paths

  path = tokenizer_training.train_tokenizer(
    str(paths.SAMPLE_CORPUS_DIR / "*" / "*.txt"), str(tmp_path / "v.model"), vocab_size=3500
  )
  v = vocab_lib.get_vocabulary(path)
  (tmp_path / "a.txt").write_text("Buongiorno a tutti.\n")
  names.append(tasks.register_text_task("it", "own", str(tmp_path / "a.txt"), vocabulary=v))
  task = seqio.get_mixture_or_task("polylm_it_own")
  assert task.output_features["targets"].vocabulary.vocab_size == 3500
  ex = _read("polylm_it_own")[0]
  assert v.decode(ex["targets"].tolist()) == "Buongiorno a tutti."
