r"""Interactive terminal chat with a PolyLM checkpoint, streaming the reply as it is generated.

    python -m polylm_jax.chat --checkpoint=runs/demo [--format=multialpaca|chat|plain]
        [--preset=sampling|greedy|beam] [--max_new_tokens=256] [--seed=0] [--step=N]

Prompt formats (SPEC section 5, built by polylm_jax.prompts): MultiAlpaca
"{q1}\n\n{r1}\n{q2}\n\n", chat "<|user|>\n{q}\n<|assistant|>\n", plain (text as typed).
Earlier turns are kept as context and the oldest are dropped when the prompt would not fit
the model's positions. Commands: /reset forgets the conversation, /quit (or end of input)
leaves. The demo sampling preset (top_p 0.8, temperature 0.7, repetition_penalty 1.02) is
the default; turn i samples with seed + i, so a session is reproducible. Input that is not
UTF-8 is reported and skipped; the session goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from polylm_jax import decoding, prompts as prompts_lib
from polylm_jax.config import PolyLMConfig

HELP = "/reset forgets the conversation, /quit leaves"
DEFAULT_MAX_NEW_TOKENS = 256


def fit_max_new_tokens(
  requested: int | None, max_len: int, flag: str = "--max_new_tokens"
) -> tuple[int, str | None]:
  """The reply length to use and, when it differs from the request, a one-line note.

  Half the model's positions at most, so earlier turns and the message keep the other
  half; a request that leaves no room for a prompt (>= max_len) is capped the same way.
  """
  if requested is not None and requested < 1:
    raise ValueError(f"{flag} must be >= 1, got {requested}")
  cap = max(1, max_len // 2)
  want = DEFAULT_MAX_NEW_TOKENS if requested is None else requested
  if want < max_len and (requested is not None or want <= cap):
    return want, None
  source = f"{flag}={requested}" if requested is not None else f"the default {flag}={want}"
  return cap, (
    f"({source} does not fit this model's {max_len} positions with a prompt: "
    f"replies are up to {cap} tokens)"
  )


def build_prompt(
  config: PolyLMConfig,
  vocab: Any,
  history: list[tuple[str, str]],
  message: str,
  style: str,
  max_new_tokens: int,
) -> tuple[list[int], int]:
  """Token ids of the prompt, dropping the oldest turns until it fits; (ids, turns dropped).

  A single message longer than the room left keeps its last tokens.
  """
  room = config.max_len - max_new_tokens
  dropped = 0
  while True:
    ids = list(vocab.encode(prompts_lib.format_dialogue(history[dropped:], message, style)))
    if len(ids) <= room or dropped == len(history):
      return ids[-room:], dropped
    dropped += 1


def chat_loop(
  config: PolyLMConfig,
  params: Any,
  vocab: Any,
  *,
  style: str = "multialpaca",
  max_new_tokens: int = 256,
  preset: str = "sampling",
  settings: dict[str, Any] | None = None,
  seed: int = 0,
  stdin: TextIO = sys.stdin,
  stdout: TextIO = sys.stdout,
  prompt_marker: str = "> ",
) -> list[tuple[str, str]]:
  """Reads messages line by line from `stdin`, streams replies to `stdout`; returns the turns."""
  prompts_lib.check_style(style, "--format")
  decoding.check_vocab(config, vocab)
  base = decoding.make_settings(preset, **(settings or {}))  # bad settings fail before input
  if max_new_tokens < 1 or max_new_tokens >= config.max_len:
    raise ValueError(f"--max_new_tokens must be in [1, {config.max_len - 1}], got {max_new_tokens}")
  # The layer split once, not at every turn; one prompt (num_beams rows) at a time.
  params = decoding.prepare(config, params, batch_size=base.num_beams)
  binary = getattr(stdin, "buffer", None)  # bytes, so bad input costs one line, not the session
  history: list[tuple[str, str]] = []
  transcript: list[tuple[str, str]] = []
  stdout.write(f"PolyLM chat ({style} format, {preset} decoding). {HELP}.\n")
  turn = 0
  while True:
    stdout.write(prompt_marker)
    stdout.flush()
    line = _read_line(stdin, binary)
    if line is None:
      stdout.write(
        "(that input was not valid UTF-8 and was skipped; check the terminal's encoding)\n"
      )
      continue
    if not line:
      stdout.write("\n")
      break
    message = line.strip()
    if not message:
      continue
    if message in ("/quit", "/exit"):
      break
    if message == "/reset":
      history = []
      stdout.write("(conversation cleared)\n")
      continue
    if message.startswith("/"):
      stdout.write(f"unknown command {message.split()[0]}: {HELP}\n")
      continue
    ids, dropped = build_prompt(config, vocab, history, message, style, max_new_tokens)
    if dropped:
      history = history[dropped:]
      stdout.write(f"(dropped the {dropped} oldest turn(s) to fit the context)\n")
    kwargs = {
      **{k: getattr(base, k) for k in decoding.DecodeSettings.__dataclass_fields__},
      "seed": seed + turn,
    }
    reply = _respond(config, params, vocab, ids, max_new_tokens, kwargs, stdout)
    history.append((message, reply))
    transcript.append((message, reply))
    turn += 1
  return transcript


def _read_line(stdin: TextIO, binary: Any) -> str | None:
  """One line of input ('' at the end), or None when its bytes are not UTF-8."""
  if binary is None:
    return stdin.readline()
  raw = binary.readline()
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    return None


def _respond(config, params, vocab, ids, max_new_tokens, kwargs, stdout) -> str:
  """Streams one reply (beam search prints it whole: it is only known at the end)."""
  if kwargs["num_beams"] > 1:
    out = decoding.generate(config, params, [ids], max_new_tokens, **kwargs)[0]
    text = vocab.decode(out)
    stdout.write(text)
  else:
    streamer = decoding.TextStreamer(vocab)
    for chunk in decoding.generate_stream(config, params, ids, max_new_tokens, **kwargs):
      stdout.write(streamer.push(chunk))
      stdout.flush()
    stdout.write(streamer.flush())
    text = streamer.printed
  stdout.write("\n")
  stdout.flush()
  return text


def main(argv: Sequence[str]) -> None:
  from absl import flags

  from polylm_jax import checkpoints

  f = flags.FLAGS
  if len(argv) > 1:
    sys.exit(f"unexpected arguments {argv[1:]}")
  try:
    print(f"loading {f.checkpoint} ...", flush=True)
    config, params, vocab = checkpoints.load_for_inference(
      f.checkpoint, f.vocab, step=f.step, step_flag="--step", vocab_flag="--vocab"
    )
    max_new_tokens, note = fit_max_new_tokens(f.max_new_tokens, config.max_len)
    if note:
      print(note)
    overrides = {
      k: getattr(f, k)
      for k in ("temperature", "top_p", "top_k", "repetition_penalty", "num_beams")
      if getattr(f, k) is not None
    }
    chat_loop(
      config,
      params,
      vocab,
      style=f.format,
      max_new_tokens=max_new_tokens,
      preset=f.preset,
      settings=overrides,
      seed=f.seed,
    )
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    print()


def _define_flags() -> None:
  from absl import flags

  flags.DEFINE_string(
    "checkpoint", None, "Run dir, checkpoint (step) dir or HF model dir.", required=True
  )
  flags.DEFINE_string(
    "vocab",
    None,
    "SentencePiece model (default: tokenizer.model beside "
    "the checkpoint, else the project's default vocabulary).",
  )
  flags.DEFINE_enum("format", "multialpaca", list(prompts_lib.STYLES), "Prompt format.")
  flags.DEFINE_enum("preset", "sampling", list(decoding.PRESETS), "Decoding preset.")
  flags.DEFINE_integer(
    "max_new_tokens",
    None,
    f"Most tokens per reply (default {DEFAULT_MAX_NEW_TOKENS}, at most half the model's "
    "positions; a larger value is capped with a note).",
  )
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest complete one).")
  flags.DEFINE_integer("seed", 0, "Sampling seed of the first turn (turn i uses seed + i).")
  flags.DEFINE_float("temperature", None, "Override the preset's temperature (0: greedy).")
  flags.DEFINE_float("top_p", None, "Override the preset's top_p.")
  flags.DEFINE_integer("top_k", None, "Override the preset's top_k (0: off).")
  flags.DEFINE_float("repetition_penalty", None, "Override the preset's repetition penalty.")
  flags.DEFINE_integer("num_beams", None, "Override the preset's number of beams.")


if __name__ == "__main__":
  from polylm_jax import logs

  _define_flags()
  logs.run(main)
