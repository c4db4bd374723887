"""Teachers for self-instruct: something that continues a prompt with text.

  ModelTeacher   the project's own model, through polylm_jax.decoding (greedy or sampled);
                 prompts longer than the model allows are cut from the left.
  OpenAITeacher  any OpenAI-compatible chat endpoint (`POST {url}/chat/completions`). The key
                 comes from an environment variable (never from a file or a flag value), is
                 sent as a Bearer token, and is never logged. Timeouts, connection errors,
                 HTTP 429/5xx and malformed JSON are retried with bounded exponential backoff;
                 other HTTP errors (401, 404, ...) fail at once, as retrying cannot help.

`complete_batch(prompts)` returns one Reply per prompt: the text, or the error that ended it,
so one failed request is a counted skip and not the end of a run.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
RETRY_HTTP_CODES = (408, 409, 429, 500, 502, 503, 504)


class TeacherError(RuntimeError):
  """A request that failed for good (after its retries, or at once when not retryable)."""


class Reply(NamedTuple):
  text: str | None
  error: str | None = None


class Teacher(Protocol):
  name: str

  def complete_batch(self, prompts: Sequence[str]) -> list[Reply]: ...


class ModelTeacher:
  """A PolyLM (config, params, vocabulary) writing continuations with decoding.generate."""

  def __init__(
    self,
    config: Any,
    params: Any,
    vocab: Any,
    *,
    max_new_tokens: int = 512,
    name: str = "polylm",
    batch_size: int | None = 8,
    preset: str | None = None,
    **settings: Any,
  ):
    from polylm_jax import decoding  # JAX: imported only for this teacher

    decoding.check_vocab(config, vocab)
    if not 0 < max_new_tokens < config.max_len:
      raise ValueError(
        f"max_new_tokens={max_new_tokens} must be in [1, max_len="
        f"{config.max_len}) of the teacher model"
      )
    self._decoding = decoding
    self.config, self.params, self.vocab = config, params, vocab
    self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
    self.preset, self.settings = preset, settings
    decoding.make_settings(preset, **settings)  # bad settings fail here, not mid-run
    self.name = name

  @classmethod
  def from_checkpoint(
    cls, path: str, vocab_path: str | None = None, **kwargs: Any
  ) -> "ModelTeacher":
    from polylm_jax import checkpoints

    # The tokenizer is checked against the one the checkpoint was trained with.
    config, params, vocab = checkpoints.load_for_inference(path, vocab_path)
    return cls(
      config,
      params,
      vocab,
      name=kwargs.pop("name", f"polylm:{os.path.basename(os.path.normpath(path))}"),
      **kwargs,
    )

  def complete_batch(self, prompts: Sequence[str]) -> list[Reply]:
    room = self.config.max_len - self.max_new_tokens
    ids = [list(self.vocab.encode(p))[-room:] for p in prompts]
    out = self._decoding.generate(
      self.config,
      self.params,
      ids,
      self.max_new_tokens,
      batch_size=self.batch_size,
      preset=self.preset,
      **self.settings,
    )
    return [Reply(self.vocab.decode(x)) for x in out]


def chat_completions_url(url: str) -> str:
  """`url` as given when it ends with /chat/completions, else that path appended."""
  url = url.rstrip("/")
  if not url.startswith(("http://", "https://")):
    raise ValueError(f"teacher url {url!r}: must start with http:// or https://")
  return url if url.endswith("/chat/completions") else url + "/chat/completions"


class OpenAITeacher:
  """An OpenAI-compatible chat endpoint as teacher (see the module docstring)."""

  def __init__(
    self,
    url: str,
    model: str,
    *,
    api_key_env: str = DEFAULT_API_KEY_ENV,
    timeout: float = 120.0,
    max_retries: int = 4,
    backoff: float = 2.0,
    max_backoff: float = 60.0,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_tokens: int = 2048,
    system_prompt: str | None = None,
    concurrency: int = 1,
    name: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
  ):
    if max_retries < 0 or timeout <= 0 or backoff < 0 or max_backoff < 0 or concurrency < 1:
      raise ValueError(
        "OpenAITeacher: need timeout > 0, max_retries >= 0, backoff >= 0, "
        "max_backoff >= 0, concurrency >= 1"
      )
    self.url = chat_completions_url(url)
    self.model, self.api_key_env = model, api_key_env
    self.timeout, self.max_retries = timeout, max_retries
    self.backoff, self.max_backoff = backoff, max_backoff
    self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens
    self.system_prompt, self.concurrency = system_prompt, concurrency
    self.name = name or f"openai:{model}"
    self._sleep = sleep
    self.attempts = 0  # requests sent, retries included (for the logs and tests)
    if not os.environ.get(api_key_env):
      logging.info(
        "teacher %s: $%s is not set; sending requests without a key", self.name, api_key_env
      )

  def _body(self, prompt: str) -> bytes:
    messages = (
      [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
    ) + [{"role": "user", "content": prompt}]
    return json.dumps(
      {
        "model": self.model,
        "messages": messages,
        "temperature": self.temperature,
        "top_p": self.top_p,
        "max_tokens": self.max_tokens,
      }
    ).encode("utf-8")

  def _headers(self) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    key = os.environ.get(self.api_key_env)
    if key:
      headers["Authorization"] = f"Bearer {key}"
    return headers

  @staticmethod
  def parse_response(raw: bytes) -> str:
    """The first choice's message content; ValueError when the body is not that shape."""
    try:
      obj = json.loads(raw.decode("utf-8"))
      content = obj["choices"][0]["message"]["content"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
      raise ValueError(
        f"malformed chat completion ({type(e).__name__}: {e}); body starts {raw[:120]!r}"
      ) from None
    if not isinstance(content, str):
      raise ValueError(f"malformed chat completion: content is {type(content).__name__}")
    return content

  def complete(self, prompt: str) -> str:
    """One completion; TeacherError after the retries (or at once for non-retryable HTTP)."""
    last = ""
    for attempt in range(self.max_retries + 1):
      if attempt:
        self._sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
      self.attempts += 1
      request = urllib.request.Request(
        self.url, data=self._body(prompt), headers=self._headers(), method="POST"
      )
      try:
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
          raw = response.read()
        return self.parse_response(raw)
      except urllib.error.HTTPError as e:
        last = f"HTTP {e.code} {e.reason}"
        if e.code not in RETRY_HTTP_CODES:
          raise TeacherError(f"teacher {self.name} at {self.url}: {last} (not retried)") from None
      except (TimeoutError, socket.timeout) as e:
        last = f"timed out after {self.timeout:g}s ({e})"
      except urllib.error.URLError as e:
        last = f"connection failed: {e.reason}"
      except (ConnectionError, OSError) as e:
        last = f"connection failed: {e}"
      except ValueError as e:
        last = str(e)
      logging.warning(
        "teacher %s: attempt %d/%d failed: %s", self.name, attempt + 1, self.max_retries + 1, last
      )
    raise TeacherError(
      f"teacher {self.name} at {self.url}: gave up after "
      f"{self.max_retries + 1} attempts; last error: {last}"
    )

  def _reply(self, prompt: str) -> Reply:
    try:
      return Reply(self.complete(prompt))
    except TeacherError as e:
      return Reply(None, str(e))

  def complete_batch(self, prompts: Sequence[str]) -> list[Reply]:
    if self.concurrency == 1 or len(prompts) < 2:
      return [self._reply(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
      return list(pool.map(self._reply, prompts))
