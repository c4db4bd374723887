"""Instruction prompt formats (SPEC section 5), in one place for training, chat and self-instruct.

The instruction tasks (tasks/instructions.py) train on exactly the strings these functions
build, so a chat front end that formats with them asks the model in the format it learnt.

  multialpaca  "{input}\\n{instruction}\\n\\n" then the response (the released PolyLM-MultiAlpaca
               prompt). A null, missing or blank input gives "{instruction}\\n\\n": the released
               template would otherwise start with a bare newline, which the released demo
               never sends. Multi-turn: "{q1}\\n\\n{r1}\\n{q2}\\n\\n" (released).
  chat         "<|user|>\\n{message}\\n<|assistant|>\\n" then the response (the released chat
               model); message is the same "{input}\\n{instruction}" text. Multi-turn (ours: not
               published): turns concatenated, each response followed by "\\n".
  plain        the message itself, no template (for base models).
Instruction and input are stripped of surrounding whitespace; the response is not touched.
This module is pure Python and imports nothing from the project.
"""

from __future__ import annotations

from collections.abc import Sequence

STYLES = ("multialpaca", "chat", "plain")
CHAT_USER = "<|user|>\n"
CHAT_ASSISTANT = "<|assistant|>\n"


def check_style(style: str, where: str = "prompt style") -> str:
  if style not in STYLES:
    raise ValueError(f"{where}: unknown prompt style {style!r}; known: {', '.join(STYLES)}")
  return style


def user_message(instruction: str, input: str | None = None) -> str:  # noqa: A002 (field name)
  """The user's text: "{input}\\n{instruction}", or the instruction alone when input is blank."""
  if not isinstance(instruction, str):
    raise TypeError(f"instruction must be a string, got {type(instruction).__name__}")
  if input is not None and not isinstance(input, str):
    raise TypeError(f"input must be a string or None, got {type(input).__name__}")
  instruction, input = instruction.strip(), (input or "").strip()
  return f"{input}\n{instruction}" if input else instruction


def wrap_message(message: str, style: str = "multialpaca") -> str:
  """The prompt for one already-joined user message."""
  check_style(style)
  if style == "multialpaca":
    return f"{message}\n\n"
  if style == "chat":
    return f"{CHAT_USER}{message}\n{CHAT_ASSISTANT}"
  return message


def format_prompt(
  instruction: str,
  input: str | None = None,  # noqa: A002
  style: str = "multialpaca",
) -> str:
  """The prompt the model continues with its response."""
  return wrap_message(user_message(instruction, input), style)


def format_example(
  instruction: str,
  input: str | None,
  output: str,  # noqa: A002
  style: str = "multialpaca",
) -> tuple[str, str]:
  """(prompt, response) of one record; training appends eos after the response."""
  return format_prompt(instruction, input, style), output


def format_dialogue(
  history: Sequence[tuple[str, str]], message: str, style: str = "multialpaca"
) -> str:
  """Prompt for `message` after earlier (message, response) turns."""
  check_style(style)
  if style == "plain":
    return "".join(f"{q}\n{r}\n" for q, r in history) + message
  if style == "multialpaca":
    # "{q1}\n\n{r1}\n{q2}\n\n" (SPEC section 5)
    return "".join(f"{q}\n\n{r}\n" for q, r in history) + f"{message}\n\n"
  return "".join(f"{CHAT_USER}{q}\n{CHAT_ASSISTANT}{r}\n" for q, r in history) + wrap_message(
    message, "chat"
  )
