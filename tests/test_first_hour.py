"""A user's first hour (issue 11), library side: the checkpoint's tokenizer, damaged
checkpoints, text edge cases in prompts and on chat's stdin, defaults that fit the model,
output folders checked up front. (Console line counts: tests/test_console.py.)"""

import hashlib
import io
import json
import os

import jax
import pytest

from polylm_jax import chat, checkpoints, decoding, hf, inference, logs, self_instruct
from polylm_jax.inference_config import CheckpointSpec, GenerationSpec, PromptSpec
from polylm_jax import vocab as vocab_lib
from polylm_jax.config import get_config
from polylm_jax.model import init_params

SYNC = checkpoints.CheckpointPolicy(save_every=1, keep=None, async_save=False)


@pytest.fixture(scope="module")
def vocab():
  return vocab_lib.get_vocabulary()


@pytest.fixture(scope="module")
def model(vocab):
  config = get_config("polylm_tiny", vocab_size=vocab.vocab_size)
  return config, init_params(config, jax.random.key(0))


def _run(path, model, fingerprint, steps=(3,)):
  config, params = model
  with checkpoints.CheckpointManager(path, config, SYNC) as manager:
    for step in steps:
      manager.save(step, params, stream_state={"trainer": {"vocabulary": fingerprint}})
  return path


def test_fingerprint_is_the_trainers(vocab):
  with open(vocab.sentencepiece_model_file, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:16]
  assert vocab_lib.fingerprint(vocab) == f"sentencepiece:{digest}:{vocab.vocab_size}"
  from polylm_jax.training import prepare

  if hasattr(prepare, "vocabulary_fingerprint"):
    assert prepare.vocabulary_fingerprint(vocab) == vocab_lib.fingerprint(vocab)


def test_a_tokenizer_the_model_was_not_trained_with_is_refused(tmp_path, model, vocab):
  good = _run(tmp_path / "good", model, vocab_lib.fingerprint(vocab))
  bad = _run(tmp_path / "bad", model, "sentencepiece:0123456789abcdef:4096")
  config, _, v = checkpoints.load_for_inference(str(good))
  assert v.vocab_size == vocab.vocab_size and config.vocab_size == vocab.vocab_size
  with pytest.raises(ValueError, match=r"VOCAB_PATH: the tokenizer .* is not the one .*bad"):
    checkpoints.load_for_inference(str(bad))
  with pytest.raises(ValueError, match=r"^--vocab: "):
    checkpoints.load_for_inference(str(bad), vocab_flag="--vocab")
  with pytest.raises(FileNotFoundError, match="VOCAB_PATH=.*nope.model: no such file"):
    checkpoints.load_for_inference(str(good), str(tmp_path / "nope.model"))


def test_run_tokenizer_is_found_from_run_checkpoints_and_step_dirs(tmp_path, model, vocab):
  run = _run(tmp_path / "run", model, vocab_lib.fingerprint(vocab))
  assert checkpoints.tokenizer_beside(run) is None
  written = vocab_lib.save_tokenizer(vocab, run)
  stamp = os.stat(written).st_mtime_ns
  assert vocab_lib.save_tokenizer(vocab, run) == written  # the same bytes: left alone
  assert os.stat(written).st_mtime_ns == stamp
  for path in (run, run / "checkpoints", run / "checkpoints" / "3"):
    assert checkpoints.tokenizer_beside(path) == str(run / "tokenizer.model")
  assert checkpoints.tokenizer_beside(tmp_path) is None  # never a folder above the run


def test_damaged_checkpoint_names_the_older_steps_and_the_flag(tmp_path, model, vocab):
  run = _run(tmp_path / "run", model, vocab_lib.fingerprint(vocab), steps=(2, 4))
  open(run / "checkpoints" / "4" / "params" / "_METADATA", "w").close()
  with pytest.raises(ValueError) as e:
    checkpoints.load_for_inference(str(run), step_flag="--step")
  message = str(e.value)
  assert "\n" not in message and "step 4" in message and "_METADATA" in message
  assert "older complete steps: [2]" in message and "--step=N" in message
  config, _, _ = checkpoints.load_for_inference(str(run), step=2)
  assert config == model[0]


def test_jsonl_prompts_bom_invalid_utf8_and_lone_surrogates(tmp_path):
  bom = tmp_path / "bom.jsonl"
  bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "hi"}).encode() + b"\n")
  assert inference.read_jsonl_prompts(str(bom)) == [{"id": 0, "prompt": "hi"}]
  latin = tmp_path / "latin1.jsonl"
  latin.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
  with pytest.raises(ValueError, match=r"latin1.jsonl:2: not valid UTF-8 \(byte 0xe9"):
    inference.read_jsonl_prompts(str(latin))
  lone = tmp_path / "lone.jsonl"
  lone.write_text('{"prompt": "ok"}\n{"id": 1, "prompt": "a\\ud800b"}\n')
  with pytest.raises(ValueError, match=r"lone.jsonl:2: field 'prompt' holds a lone surrogate"):
    inference.read_jsonl_prompts(str(lone))


def test_output_folders_are_checked_before_the_model_is_loaded(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  prompts = tmp_path / "p.jsonl"
  prompts.write_text('{"prompt": "hi"}\n')
  with pytest.raises(ValueError, match=r"^INFER_OUTPUT_DIR: .*file/out is not writable"):
    inference.run_inference(  # the checkpoint does not exist: the folder is checked first
      checkpoint=CheckpointSpec(str(tmp_path / "missing")),
      prompts=PromptSpec(input_file=str(prompts)),
      generation=GenerationSpec(),
      output_dir=str(blocker / "out"),
    )
  with pytest.raises(ValueError, match=r"^--to_hf: .*/hf is not writable"):
    from polylm_jax import convert

    convert.export_checkpoint_to_hf(str(tmp_path / "missing"), str(blocker / "hf"))


def test_chat_keeps_the_session_after_bytes_that_are_not_utf8(model, vocab):
  config, params = model
  stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9\nHello\n/quit\n"), encoding="utf-8")
  out = io.StringIO()
  turns = chat.chat_loop(
    config, params, vocab, preset="greedy", max_new_tokens=3, stdin=stdin, stdout=out
  )
  assert "not valid UTF-8 and was skipped" in out.getvalue()
  assert [t[0] for t in turns] == ["Hello"]


def test_reply_lengths_fit_the_model():
  assert chat.fit_max_new_tokens(None, 2048) == (256, None)
  assert chat.fit_max_new_tokens(200, 256) == (200, None)
  tokens, note = chat.fit_max_new_tokens(None, 256)  # the demo model: 256 positions
  assert tokens == 128 and "the default --max_new_tokens=256" in note and "\n" not in note
  assert chat.fit_max_new_tokens(4000, 2048)[0] == 1024
  with pytest.raises(ValueError, match="--max_new_tokens must be >= 1"):
    chat.fit_max_new_tokens(0, 256)
  assert self_instruct.fit_max_new_tokens(512, 2048) == (512, None)
  tokens, note = self_instruct.fit_max_new_tokens(512, 256)
  assert tokens == 128 and "--max_new_tokens=512" in note


def test_generate_stream_refuses_a_list_of_prompts(model):
  config, params = model
  with pytest.raises(TypeError, match="streams one prompt.*generate\\(\\)"):
    next(decoding.generate_stream(config, params, [[5, 6], [7]], 2))


def test_hf_export_and_import_carry_the_tokenizer(tmp_path, model, vocab):
  from polylm_jax import convert

  config, params = model
  run = _run(tmp_path / "run", model, vocab_lib.fingerprint(vocab))
  vocab_lib.save_tokenizer(vocab, run)
  convert.export_checkpoint_to_hf(str(run), str(tmp_path / "hf"))
  with open(vocab.sentencepiece_model_file, "rb") as f:
    assert (tmp_path / "hf" / hf.TOKENIZER_FILE).read_bytes() == f.read()
  convert.import_hf_to_checkpoint(str(tmp_path / "hf"), str(tmp_path / "back"))
  assert (tmp_path / "back" / "tokenizer.model").read_bytes() == (
    tmp_path / "hf" / "tokenizer.model"
  ).read_bytes()
  assert checkpoints.load_for_inference(str(tmp_path / "back"))[2].vocab_size == vocab.vocab_size


def test_check_output_dir(tmp_path):
  logs.check_output_dir(tmp_path / "a" / "b", "--out")
  assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())
  (tmp_path / "f").write_text("x")
  with pytest.raises(ValueError, match=r"^--out: .*/f/x is not writable"):
    logs.check_output_dir(tmp_path / "f" / "x", "--out")


def test_tokenizer_output_folder_is_checked_before_sampling(tmp_path, capsys):
  from polylm_jax import tokenizer

  (tmp_path / "f").write_text("x")
  rc = tokenizer.main(
    [
      "train",
      f"--corpus_glob={tmp_path}/none/*.txt",
      "--vocab_size=300",
      f"--output={tmp_path}/f/t.model",
    ]
  )
  err = capsys.readouterr().err
  assert rc == 2 and f"--output={tmp_path}/f/t.model: {tmp_path}/f is not writable" in err
