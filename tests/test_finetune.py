"""End to end: gin/runs/finetune.gin fine-tunes a tiny model from an init checkpoint on fixture
MultiAlpaca JSONL (loss on responses only), and then the chat binary's loop answers in the
MultiAlpaca format."""

import io
import json

import gin
import jax
import numpy as np
import pytest

from polylm_jax import checkpoints as ckpt_lib
from polylm_jax import decoding, gin_utils, prompts
from polylm_jax import vocab as vocab_lib
from polylm_jax.config import get_config
from polylm_jax.model import init_params

ANSWER = "OK."
QUESTIONS = {
  "ar": "ما هو {}؟",
  "de": "Was ist {}?",
  "es": "¿Qué es {}?",
  "fr": "Qu'est-ce que {} ?",
  "id": "Apa itu {}?",
  "ja": "{}とは何ですか？",
  "ko": "{}은 무엇인가요?",
  "pt": "O que é {}?",
  "ru": "Что такое {}?",
  "th": "{} คืออะไร",
  "vi": "{} là gì?",
}
THINGS = [
  "agua",
  "sol",
  "luna",
  "tren",
  "libro",
  "mar",
  "río",
  "pan",
  "arroz",
  "té",
  "casa",
  "nube",
  "árbol",
  "flor",
  "gato",
  "perro",
  "piedra",
  "viento",
  "fuego",
  "nieve",
]


def write_fixture(data_dir):
  """Every language: 110 questions (the 100th is held out for eval), every answer the same
  short text (easy to learn)."""
  data_dir.mkdir()
  for lang, q in QUESTIONS.items():
    with open(data_dir / f"{lang}.jsonl", "w", encoding="utf-8") as f:
      for i in range(110):
        thing = THINGS[i % len(THINGS)]
        inp = None if i % 2 else f"{thing} {i}"
        f.write(
          json.dumps(
            {"instruction": q.format(thing), "input": inp, "output": ANSWER}, ensure_ascii=False
          )
          + "\n"
        )


@pytest.mark.slow
def test_finetune_gin_then_answers_in_multialpaca_format(tmp_path, monkeypatch):
  from polylm_jax import train as train_lib
  from tasks import instructions

  vocab = vocab_lib.get_vocabulary()
  config = get_config("polylm_tiny", vocab_size=vocab.vocab_size)
  write_fixture(tmp_path / "multialpaca")
  monkeypatch.setenv(instructions.DATA_DIR_ENV, str(tmp_path / "multialpaca"))
  init_dir = tmp_path / "pretrained"
  with ckpt_lib.CheckpointManager(init_dir, config) as manager:
    manager.save(0, init_params(config, jax.random.key(0)), force=True)
  question = prompts.format_prompt("¿Qué es una montaña?")  # not in the data
  _, before = ckpt_lib.load(str(init_dir))
  assert decoding.generate_text(config, before, vocab, [question], 6)[0] != ANSWER

  gin.clear_config()
  try:
    gin_utils.parse_gin(
      ["models/polylm_tiny.gin", "runs/finetune.gin"],
      [
        f"MODEL_DIR = '{tmp_path / 'finetuned'}'",
        f"CHECKPOINT_PATH = '{init_dir}'",
        "TRAIN_STEPS = 80",
        "BATCH_SIZE = 8",
        "TASK_FEATURE_LENGTHS = {'targets': 64}",
        f"polylm.PolyLMConfig.vocab_size = {vocab.vocab_size}",
        "COMPUTE_DTYPE = 'float32'",
        "WARMUP_STEPS = 5",
        "OptimizerSpec.decay_steps = 75",
        "OptimizerSpec.peak_learning_rate = 1e-2",
        "EvalSpec.period = 80",
        "EvalSpec.steps = 1",
        "CheckpointPolicy.save_every = 80",
        "ReportSpec.log_period = 10",
        "ReportSpec.sample_prompts = []",
      ],
    )
    logs = []
    result = train_lib.gin_train(print_fn=lambda *a, **k: logs.append(" ".join(map(str, a))))
  finally:
    gin.clear_config()
  assert result.step == 80
  losses = [result.losses[s] for s in sorted(result.losses)]
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
  assert {f"loss/{lang}" for lang in QUESTIONS} <= set(result.eval)  # eval per language
  text = "\n".join(map(str, logs))
  assert "params from" in text and str(init_dir) in text  # started from the init checkpoint

  cfg, params = ckpt_lib.load(str(tmp_path / "finetuned"))
  # the fine-tuned model answers the (unseen) prompt with the response and stops at eos
  out = decoding.generate(cfg, params, [list(vocab.encode(question))], 8, include_eos=True)[0]
  assert vocab.decode(out[:-1]) == ANSWER and out[-1] == vocab_lib.EOS_ID
  # ... and so does the chat binary's loop, which formats what is typed the same way
  from polylm_jax import chat

  stdout = io.StringIO()
  transcript = chat.chat_loop(
    cfg,
    params,
    vocab,
    style="multialpaca",
    max_new_tokens=8,
    preset="greedy",
    stdin=io.StringIO("Was ist ein Berg?\n/quit\n"),
    stdout=stdout,
  )
  assert transcript == [("Was ist ein Berg?", ANSWER)]
  assert f"> {ANSWER}\n" in stdout.getvalue()
