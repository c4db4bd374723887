"""polylm_jax/prompts.py: the instruction prompt formats (SPEC section 5)."""

import pytest

from polylm_jax import prompts


def test_prompt_formats():
  assert prompts.format_prompt("Di hola.") == "Di hola.\n\n"
  assert prompts.format_prompt("Resume.", "Texto largo") == "Texto largo\nResume.\n\n"
  assert prompts.format_prompt("Resume.", "   ") == "Resume.\n\n"
  assert prompts.format_prompt("Q", "I", "chat") == "<|user|>\nI\nQ\n<|assistant|>\n"
  assert prompts.format_prompt("Q", None, "plain") == "Q"
  assert prompts.format_dialogue([("q1", "r1")], "q2") == "q1\n\nr1\nq2\n\n"
  assert prompts.format_dialogue([("q1", "r1")], "q2", "chat") == (
    "<|user|>\nq1\n<|assistant|>\nr1\n<|user|>\nq2\n<|assistant|>\n"
  )
  with pytest.raises(ValueError, match="unknown prompt style 'alpaca'"):
    prompts.format_prompt("x", style="alpaca")
  with pytest.raises(TypeError, match="input must be a string or None"):
    prompts.format_prompt("x", 3)
