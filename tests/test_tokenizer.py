"""Tokenizer training: the recipe's layout, balanced sampling, reproducibility, the CLI and the
cached demo tokenizer. No TensorFlow here: the module imports only sentencepiece."""

import os
import shutil

import pytest
import sentencepiece as spm

from polylm_jax import tokenizer, tokenizer_training, paths

_TEXT = {
  "en": [
    "The river was calm this morning, so we took the boat out early.",
    "Please close the window before you leave the office tonight.",
    "Our neighbours grow tomatoes and beans in their small garden.",
    "In 1969, 600 million people watched the first moon landing.",
  ],
  "de": [
    "Der Zug nach München hat heute zwanzig Minuten Verspätung.",
    "Im Winter trinken wir gern heißen Tee mit Honig und Zitrone.",
    "Die Kinder spielen nach der Schule Fußball im Park.",
  ],
  "zh": [
    "我们明天早上八点在学校门口见面。",
    "这本书讲的是一个小村庄的历史。",
    "他每天骑自行车上班，大约需要二十分钟。",
  ],
}


def _corpus(tmp_path, repeat=20):
  d = tmp_path / "corpus"
  d.mkdir()
  for lang, lines in _TEXT.items():
    (d / f"{lang}.txt").write_text("\n\n".join(lines * repeat) + "\n", encoding="utf-8")
  return d


def test_trained_model_has_the_released_layout(tmp_path):
  out = tokenizer_training.train_tokenizer(
    str(_corpus(tmp_path) / "*.txt"), str(tmp_path / "t.model"), vocab_size=400
  )
  sp = spm.SentencePieceProcessor(model_file=out)
  assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
  assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
  assert sp.piece_to_id("<0x0A>") == 3 + 0x0A and sp.is_byte(3 + 0xFF)
  assert sp.get_piece_size() == 400
  # split_digits: every digit is its own piece.
  pieces = sp.encode("In 1969, 600", out_type=str)
  assert all(len(p.strip("▁")) == 1 for p in pieces if p.strip("▁").isdigit()) and "9" in pieces


def test_training_is_reproducible_byte_for_byte(tmp_path):
  corpus = _corpus(tmp_path)
  kw = dict(vocab_size=400, per_language_chars=1500, seed=3)
  a = tokenizer_training.train_tokenizer(str(corpus / "*.txt"), str(tmp_path / "a.model"), **kw)
  b = tokenizer_training.train_tokenizer(str(corpus / "*.txt"), str(tmp_path / "b.model"), **kw)
  assert open(a, "rb").read() == open(b, "rb").read()


def test_sampling_is_language_balanced_and_seeded(tmp_path):
  groups = tokenizer_training.group_by_language(
    tokenizer_training.expand_globs([str(_corpus(tmp_path) / "*")])
  )
  assert list(groups) == ["de", "en", "zh"]
  sample, taken = tokenizer_training.sample_balanced(groups, 1000, seed=0)
  assert all(900 <= n <= 1000 for n in taken.values()), taken
  assert sum(len(s) for s in sample) == sum(taken.values())
  other, _ = tokenizer_training.sample_balanced(groups, 1000, seed=1)
  assert sample != other  # the seed picks the documents
  assert tokenizer_training.sample_balanced(groups, 1000, seed=0)[0] == sample
  _, taken = tokenizer_training.sample_balanced(groups, "en=500,*=2000", seed=0)
  assert taken["en"] <= 500 < taken["de"]
  # A budget above a language's size takes all of it.
  _, taken = tokenizer_training.sample_balanced(groups, 10**9)
  assert taken["zh"] == sum(len(line) for line in _TEXT["zh"]) * 20


def test_per_language_chars_flag_errors():
  with pytest.raises(ValueError, match="--per_language_chars"):
    tokenizer_training.parse_per_language_chars("en=lots")
  with pytest.raises(ValueError, match="positive"):
    tokenizer_training.parse_per_language_chars("0")
  groups = {"en": [], "de": []}
  with pytest.raises(ValueError, match="no budget for language 'de'"):
    tokenizer_training.sample_balanced(groups, "en=10")
  with pytest.raises(ValueError, match=r"not in the corpus: \['fr'\]"):
    tokenizer_training.sample_balanced(groups, "fr=10,*=5")


def test_language_from_dir(tmp_path):
  (tmp_path / "en").mkdir()
  (tmp_path / "en" / "part-0.txt").write_text("x\n")
  assert tokenizer_training.language_of(str(tmp_path / "en" / "part-0.txt"), "dir") == "en"
  assert tokenizer_training.language_of("/a/zh.part-3.txt") == "zh"


def test_long_documents_are_cut_at_spaces_below_the_byte_limit():
  doc = " ".join(["слово"] * 5000)  # ~60 KB of 2-byte characters
  chunks = list(tokenizer_training._chunks(doc, max_bytes=1000))
  assert all(len(c.encode()) <= 1000 for c in chunks)
  assert " ".join(chunks) == doc


def test_cli_train_and_errors(tmp_path, capsys):
  corpus = _corpus(tmp_path)
  out = tmp_path / "cli.model"
  rc = tokenizer.main(
    [
      "train",
      f"--corpus_glob={corpus}/*.txt",
      "--vocab_size=400",
      f"--output={out}",
      "--per_language_chars=en=800,*=1200",
    ]
  )
  assert rc == 0 and out.exists() and capsys.readouterr().out.strip() == str(out)
  rc = tokenizer.main(
    [
      "train",
      f"--corpus_glob={tmp_path}/nothing/*.txt",
      "--vocab_size=400",
      f"--output={tmp_path}/x.model",
    ]
  )
  err = capsys.readouterr().err
  assert rc == 2 and "--corpus_glob" in err and "nothing" in err
  assert not (tmp_path / "x.model").exists()
  rc = tokenizer.main(
    ["train", f"--corpus_glob={corpus}/*.txt", "--vocab_size=100", f"--output={tmp_path}/y.model"]
  )
  assert rc == 2 and "--vocab_size=100" in capsys.readouterr().err


def test_failed_training_keeps_the_existing_model(tmp_path):
  corpus = _corpus(tmp_path)
  out = tmp_path / "keep.model"
  out.write_bytes(b"previous model")
  with pytest.raises(RuntimeError, match="--vocab_size=100000"):
    tokenizer_training.train_tokenizer(str(corpus / "*.txt"), str(out), vocab_size=100000)
  assert out.read_bytes() == b"previous model"
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_demo_tokenizer_is_cached_by_corpus_content(tmp_path):
  corpus = tmp_path / "sample"
  shutil.copytree(paths.SAMPLE_CORPUS_DIR, corpus)
  cache = tmp_path / "cache"
  first = tokenizer_training.train_demo_tokenizer(cache, corpus_dir=corpus)
  stamp = os.stat(first).st_mtime_ns
  assert tokenizer_training.train_demo_tokenizer(cache, corpus_dir=corpus) == first
  assert os.stat(first).st_mtime_ns == stamp  # not retrained
  sp = spm.SentencePieceProcessor(model_file=first)
  assert sp.get_piece_size() == tokenizer_training.DEMO_VOCAB_SIZE
  with open(corpus / "parallel" / "en.txt", "a", encoding="utf-8") as f:
    f.write("One more sentence changes the key.\n")
  second = tokenizer_training.train_demo_tokenizer(cache, corpus_dir=corpus)
  assert second != first and os.path.exists(second)


def test_cache_root_follows_env(monkeypatch, tmp_path):
  monkeypatch.setenv("POLYLM_JAX_CACHE", str(tmp_path))
  assert paths.cache_root() == tmp_path
