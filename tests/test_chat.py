"""The terminal chat: prompt formats, history, streaming, commands, the CLI."""

import io
import os
import subprocess
import sys

import jax
import pytest

from polylm_jax import chat, checkpoints, decoding
from polylm_jax.config import get_config
from polylm_jax.model import init_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vocab():
  from polylm_jax import vocab as vocab_lib

  return vocab_lib.get_vocabulary()


@pytest.fixture(scope="module")
def model(vocab):
  config = get_config("polylm_tiny", vocab_size=vocab.vocab_size)
  return config, init_params(config, jax.random.key(1))


class Recorder(io.StringIO):
  """stdout that remembers each write, to see the reply arrive in pieces."""

  def __init__(self):
    super().__init__()
    self.writes = []

  def write(self, s):
    self.writes.append(s)
    return super().write(s)


def test_multialpaca_history_reset_and_streaming(model, vocab):
  config, params = model
  stdin = io.StringIO("Hello\nHow are you?\n/reset\n\n/bogus\nBonjour\n/quit\nnever read\n")
  out = Recorder()
  turns = chat.chat_loop(
    config,
    params,
    vocab,
    style="multialpaca",
    preset="greedy",
    max_new_tokens=6,
    stdin=stdin,
    stdout=out,
  )
  assert [q for q, _ in turns] == ["Hello", "How are you?", "Bonjour"]
  r1 = decoding.generate_text(config, params, vocab, ["Hello\n\n"], 6)[0]
  r2 = decoding.generate_text(config, params, vocab, [f"Hello\n\n{r1}\nHow are you?\n\n"], 6)[0]
  r3 = decoding.generate_text(config, params, vocab, ["Bonjour\n\n"], 6)[0]
  assert [r for _, r in turns] == [r1, r2, r3]
  text = out.getvalue()
  assert f"> {r1}\n> {r2}\n> (conversation cleared)\n" in text
  assert "unknown command /bogus" in text and "never read" not in text
  start = out.writes.index("> ") + 1  # the first reply is written in several pieces
  end = out.writes.index("> ", start)
  assert "".join(out.writes[start:end]) == r1 + "\n" and end - start > 2


def test_chat_format_and_sampling_seeds(model, vocab):
  config, params = model
  turns = chat.chat_loop(
    config,
    params,
    vocab,
    style="chat",
    max_new_tokens=5,
    seed=3,
    stdin=io.StringIO("Hi\nAgain\n"),
    stdout=io.StringIO(),
  )
  first = "<|user|>\nHi\n<|assistant|>\n"
  r1 = decoding.generate_text(config, params, vocab, [first], 5, preset="sampling", seed=3)[0]
  second = f"{first}{r1}\n<|user|>\nAgain\n<|assistant|>\n"
  r2 = decoding.generate_text(config, params, vocab, [second], 5, preset="sampling", seed=4)[0]
  assert [r for _, r in turns] == [r1, r2]


def test_beam_preset_and_long_history(model, vocab):
  config, params = model
  turns = chat.chat_loop(
    config,
    params,
    vocab,
    style="plain",
    preset="beam",
    max_new_tokens=4,
    stdin=io.StringIO("The sky is\n"),
    stdout=io.StringIO(),
  )
  assert (
    turns[0][1]
    == decoding.generate_text(config, params, vocab, ["The sky is"], 4, **decoding.DEMO_BEAM)[0]
  )
  history = [("word " * 20, "reply " * 20)] * 3
  ids, dropped = chat.build_prompt(config, vocab, history, "last", "multialpaca", 8)
  assert dropped >= 1 and len(ids) <= config.max_len - 8


def test_errors(model, vocab):
  config, params = model
  with pytest.raises(ValueError, match="unknown prompt style"):
    chat.chat_loop(config, params, vocab, style="alpaca", stdin=io.StringIO(""))
  with pytest.raises(ValueError, match="vocabulary mismatch"):
    chat.chat_loop(config.replace(vocab_size=512), params, vocab, stdin=io.StringIO(""))
  with pytest.raises(ValueError, match="unknown decoding setting"):
    chat.chat_loop(config, params, vocab, settings={"temp": 1.0}, stdin=io.StringIO(""))


def test_cli_reads_stdin(model, vocab, tmp_path):
  config, params = model
  with checkpoints.CheckpointManager(tmp_path, config) as manager:
    manager.save(1, params, force=True)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "polylm_jax.chat",
      f"--checkpoint={tmp_path}",
      "--preset=greedy",
      "--max_new_tokens=4",
      "--format=plain",
    ],
    input="Once upon a time\n/quit\n",
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  reply = decoding.generate_text(config, params, vocab, ["Once upon a time"], 4)[0]
  assert proc.stdout.startswith(
    f"loading {tmp_path} ...\nPolyLM chat (plain format, greedy decoding)"
  )
  assert proc.stderr == ""  # no library logs (polylm_jax.logs)
  assert f"> {reply}\n> " in proc.stdout
