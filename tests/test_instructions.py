"""tasks/instructions.py and polylm_jax/prompts.py: MultiAlpaca JSONL -> (prompt, response)."""

import json

import pytest
import seqio
import tensorflow as tf

from polylm_jax import prompts
from polylm_jax import vocab as vocab_lib
from tasks import instructions

RECORDS = [
  {"instruction": "¿Cuál es la capital de Perú?", "input": None, "output": "Lima."},
  {
    "instruction": "Resume el texto.",
    "input": "El gato duerme en el sofá todo el día.",
    "output": "Un gato duerme mucho.",
  },
  {"instruction": "Di hola.", "output": "¡Hola!"},  # no "input" key at all
  {"instruction": "  Traduce al inglés.  ", "input": "  \n ", "output": "Good morning."},
  {
    "instruction": "Clasifica el sentimiento.",
    "input": "Me encanta.",
    "output": "Positivo",
    "lang": "es",
    "round": 3,
    "teacher": "x",
  },  # self-instruct extras are ignored
]


def write_jsonl(path, records, extra_lines=()):
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
    for line in extra_lines:
      f.write(line + "\n")
  return str(path)


def task_examples(name, split="train"):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(
    sequence_length=None,
    split=split,
    shuffle=False,
    use_cached=False,
    trim_output_features=False,
    try_in_mem_cache=False,
  )
  return list(ds.as_numpy_iterator())


@pytest.mark.parametrize("style", ["multialpaca", "chat"])
def test_task_formats_like_prompts_module(tmp_path, style):
  path = write_jsonl(tmp_path / "es.jsonl", RECORDS)
  name = instructions.register_instruction_task(
    "es", path, source_name="fixture", style=style, holdout_every=None
  )
  assert name == ("polylm_fixture_es" if style == "multialpaca" else "polylm_fixture_es_chat")
  vocab = vocab_lib.get_vocabulary()
  got = task_examples(name)
  assert len(got) == len(RECORDS)
  for ex, r in zip(got, RECORDS):
    want_prompt = prompts.format_prompt(r["instruction"], r.get("input"), style)
    assert ex["inputs_pretokenized"].decode() == want_prompt
    assert ex["targets_pretokenized"].decode() == r["output"]
    assert list(ex["inputs"]) == list(vocab.encode(want_prompt))  # no eos after the prompt
    assert ex["targets"][-1] == vocab_lib.EOS_ID
    assert vocab.decode(ex["targets"][:-1].tolist()) == r["output"]
  assert instructions.instruction_task_info(name) == {
    "lang": "es",
    "source": "fixture",
    "style": style,
  }


def test_holdout_split_and_counts(tmp_path):
  records = [
    {"instruction": f"Pregunta {i}", "input": None, "output": f"Respuesta {i}"} for i in range(10)
  ]
  path = write_jsonl(tmp_path / "pt.jsonl", records)
  name = instructions.register_instruction_task("pt", path, source_name="split", holdout_every=4)
  train = [e["targets_pretokenized"].decode() for e in task_examples(name, "train")]
  val = [e["targets_pretokenized"].decode() for e in task_examples(name, "validation")]
  assert val == ["Respuesta 3", "Respuesta 7"]
  assert len(train) == 8 and not set(train) & set(val)
  assert instructions.num_train_records(name) == 8


def test_malformed_lines_fail_or_skip(tmp_path):
  path = write_jsonl(
    tmp_path / "fr.jsonl",
    RECORDS[:2],
    extra_lines=['{"instruction": "x", "input": 3, "output": "y"}'],
  )
  name = instructions.register_instruction_task("fr", path, source_name="bad", holdout_every=None)
  with pytest.raises(Exception, match=r"fr.jsonl line 3: field 'input' must be a string or null"):
    task_examples(name)
  for bad, why in [
    ("{not json", "invalid JSON"),
    ('["a"]', "expected a JSON object"),
    ('{"input": "a", "output": "b"}', "field 'instruction' must be a string"),
  ]:
    with pytest.raises(instructions.sources.MalformedLine, match=why):
      instructions.parse_record(bad, "f line 1")
  name = instructions.register_instruction_task(
    "fr", path, source_name="bad", on_error="skip", holdout_every=None
  )
  assert len(task_examples(name)) == 2
  assert seqio.get_mixture_or_task(name).source.skipped == {path: 1}


def test_blank_records_are_dropped_and_counted(tmp_path):
  path = write_jsonl(
    tmp_path / "ja.jsonl",
    RECORDS[:2]
    + [
      {"instruction": "質問", "input": None, "output": ""},
      {"instruction": "  ", "input": "x", "output": "y"},
    ],
  )
  name = instructions.register_instruction_task("ja", path, source_name="blank", holdout_every=None)
  assert len(task_examples(name)) == 2
  assert seqio.get_mixture_or_task(name).source.blank == {path: 2}


def test_missing_data_dir_and_files_are_clear(tmp_path, monkeypatch):
  monkeypatch.delenv(instructions.DATA_DIR_ENV, raising=False)
  instructions.set_data_dir(None)
  with pytest.raises(FileNotFoundError, match="POLYLM_JAX_MULTIALPACA_DIR"):
    task_examples("polylm_multialpaca_ja")
  monkeypatch.setenv(instructions.DATA_DIR_ENV, str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"polylm_multialpaca_ja.*no file matches.*ja\.jsonl"):
    task_examples("polylm_multialpaca_ja")
  with pytest.raises(ValueError, match="unknown language code 'xx'"):
    instructions.register_instruction_task("xx", str(tmp_path / "*.jsonl"))
  with pytest.raises(ValueError, match="must contain {lang}"):
    instructions.set_data_dir(str(tmp_path), "all.jsonl")


def test_builtin_tasks_and_mixture_read_data_dir(tmp_path, monkeypatch):
  assert set(instructions.MULTIALPACA_LANGUAGES) == {
    "ar",
    "de",
    "es",
    "fr",
    "id",
    "ja",
    "ko",
    "pt",
    "ru",
    "th",
    "vi",
  }
  for lang in instructions.MULTIALPACA_LANGUAGES:
    assert f"polylm_multialpaca_{lang}" in seqio.TaskRegistry.names()
  monkeypatch.delenv(instructions.DATA_DIR_ENV, raising=False)
  for i, lang in enumerate(instructions.MULTIALPACA_LANGUAGES):
    write_jsonl(
      tmp_path / f"{lang}.jsonl",
      [{"instruction": f"q{j}", "input": None, "output": f"a{j}"} for j in range(100 + 100 * i)],
    )
  instructions.set_data_dir(str(tmp_path))
  try:
    mixture = seqio.get_mixture_or_task(instructions.MIXTURE_NAME)
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    # rates follow the training records: 99, 198, ... (every 100th is held out)
    assert rates["polylm_multialpaca_ar"] == 99 and rates["polylm_multialpaca_vi"] == 1089
    (ex,) = task_examples("polylm_multialpaca_ja", "validation")[:1]
    assert ex["inputs_pretokenized"].decode() == "q99\n\n"
  finally:
    instructions.set_data_dir(None)


def test_shards_one_file_each(tmp_path):
  for k in range(3):
    write_jsonl(
      tmp_path / f"de-{k}.jsonl",
      [{"instruction": f"Frage {k}.{j}", "input": None, "output": "Antwort"} for j in range(2)],
    )
  name = instructions.register_instruction_task(
    "de", str(tmp_path / "de-*.jsonl"), source_name="sharded", holdout_every=None
  )
  source = seqio.get_mixture_or_task(name).source
  assert len(source.list_shards("train")) == 3
  ds = source.get_dataset("train", shuffle=False, shard_info=seqio.ShardInfo(1, 3))
  assert [e["instruction"].decode() for e in ds.as_numpy_iterator()] == ["Frage 1.0", "Frage 1.1"]


def test_tf_formatting_matches_python_on_edge_cases():
  cases = [("a", ""), (" a ", " b "), ("a\n", "\n"), ("多行\n指示", "入力"), ("x", "y\nz")]
  ds = tf.data.Dataset.from_tensor_slices(
    {
      "instruction": [c[0] for c in cases],
      "input": [c[1] for c in cases],
      "output": ["o"] * len(cases),
    }
  )
  for style in prompts.STYLES:
    got = [
      e["inputs"].decode() for e in instructions.format_instructions(ds, style).as_numpy_iterator()
    ]
    assert got == [prompts.format_prompt(i, x, style) for i, x in cases]


def test_small_files_hold_out_their_last_record(tmp_path):
  def split_sizes(n):
    records = [{"instruction": f"q{i}", "input": None, "output": f"a{i}"} for i in range(n)]
    path = write_jsonl(tmp_path / f"id{n}.jsonl", records)
    name = instructions.register_instruction_task("id", path, source_name=f"small{n}")
    source = seqio.get_mixture_or_task(name).source
    val = [r["output"] for r in source.records(path, "validation")]
    return source.num_records("train"), val

  assert split_sizes(10) == (9, ["a9"])  # fewer than HOLDOUT_EVERY: the last is held out
  assert split_sizes(2) == (1, ["a1"])
  assert split_sizes(1) == (1, [])  # nothing to spare
  assert split_sizes(150) == (149, ["a99"])  # the usual every-100th rule


def test_text_edge_cases_bom_utf8_surrogates(tmp_path):
  good = tmp_path / "bom.jsonl"
  good.write_bytes(("\ufeff" + json.dumps(RECORDS[0], ensure_ascii=False) + "\n").encode())
  name = instructions.register_instruction_task(
    "es", str(good), source_name="bom", holdout_every=None
  )
  assert [e["targets_pretokenized"].decode() for e in task_examples(name)] == ["Lima."]
  bad = tmp_path / "bad.jsonl"
  bad.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff", "output": "b"}\n')
  surrogate = tmp_path / "surrogate.jsonl"
  surrogate.write_text('{"instruction": "a \\ud83d", "output": "b"}\n', encoding="utf-8")
  for path, want in [
    (bad, f"{bad} line 2: not valid UTF-8"),
    (surrogate, f"{surrogate} line 1: field 'instruction' holds a lone surrogate '\\\\ud83d'"),
  ]:
    name = instructions.register_instruction_task(
      "es", str(path), source_name="badtext", holdout_every=None
    )
    with pytest.raises(instructions.sources.MalformedLine, match=want):
      list(seqio.get_mixture_or_task(name).source.records(str(path)))


def test_selections_of_tasks_and_languages(tmp_path, monkeypatch):
  from polylm_jax import instruct_stream

  for lang, n in (("es", 12), ("ja", 30)):
    write_jsonl(
      tmp_path / f"{lang}.jsonl",
      [{"instruction": f"q{i}", "input": None, "output": "a"} for i in range(n)],
    )
  monkeypatch.setenv(instructions.DATA_DIR_ENV, str(tmp_path))
  es, ja = "polylm_multialpaca_es", "polylm_multialpaca_ja"
  rates = [11.0, 29.0]  # training records (each file holds out its last)
  for name, want in [
    (f"{es},{ja}", ([es, ja], rates)),
    (f" {es} , {ja},{es}", ([es, ja], rates)),  # spaces and repeats
    ("es,ja", ([es, ja], rates)),
    ("ja", ([ja], rates[1:])),
    ("polylm_multialpaca_chat:ja,es", ([f"{ja}_chat", f"{es}_chat"], rates[::-1])),
    ("polylm_multialpaca_present", ([es, ja], rates)),
    ("polylm_multialpaca_chat_present", ([f"{es}_chat", f"{ja}_chat"], rates)),
  ]:
    assert instructions.select(name) == want, name
    assert instruct_stream.is_instruction_data(name) and instruct_stream.resolve(name) == want
  assert instruct_stream.eval_tasks("es,ja") == {"es": (es,), "ja": (ja,)}
  for other in ("polylm_es_sample", "polylm_es_sample,polylm_ja_sample", "nope", es):
    assert instructions.select(other) is None
  with pytest.raises(ValueError, match=r"'es,jp': 'jp' is no instruction task.*did you mean .*ja"):
    instructions.select("es,jp")
  with pytest.raises(ValueError, match=r"mixture polylm_multialpaca has no task in \['xx'\]"):
    instructions.select("polylm_multialpaca:es,xx")
  # the default mixture needs all 11 files and says how to train the ones present
  with pytest.raises(
    FileNotFoundError, match=r"ar\.jsonl'; MultiAlpaca files are present for es, ja"
  ):
    instruct_stream.resolve(instructions.MIXTURE_NAME)
  with pytest.raises(FileNotFoundError, match=r"de\.jsonl'"):
    instructions.select("es,de")
  monkeypatch.setenv(instructions.DATA_DIR_ENV, str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match="no file of polylm_multialpaca's tasks is present"):
    instructions.select("polylm_multialpaca_present")
