"""polylm_jax/teachers.py: the HTTP teacher against a local fake server, and the model teacher."""

import jax
import pytest
from fake_openai import FakeOpenAI, ok, raw, slow, status

from polylm_jax import teachers
from polylm_jax.config import get_config
from polylm_jax.model import init_params


class Sleeps(list):
  def __call__(self, seconds):
    self.append(seconds)


def make(url, **kw):
  kw.setdefault("sleep", Sleeps())
  kw.setdefault("timeout", 5.0)
  return teachers.OpenAITeacher(url, "fake-model", backoff=0.5, max_backoff=1.5, **kw)


def test_success_sends_model_messages_and_key_from_env(monkeypatch):
  monkeypatch.setenv("FAKE_TEACHER_KEY", "sk-test-123")
  with FakeOpenAI([ok("hola")]) as srv:
    t = make(srv.url, api_key_env="FAKE_TEACHER_KEY", system_prompt="be brief")
    assert t.complete("¿qué tal?") == "hola"
  (req,) = srv.requests
  assert req["path"] == "/v1/chat/completions"
  assert req["headers"]["Authorization"] == "Bearer sk-test-123"
  assert req["json"]["model"] == "fake-model"
  assert req["json"]["messages"] == [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "¿qué tal?"},
  ]
  assert "sk-test-123" not in repr(vars(t))  # the key lives only in the environment


def test_no_key_no_auth_header(monkeypatch):
  monkeypatch.delenv("FAKE_TEACHER_KEY", raising=False)
  with FakeOpenAI([ok("x")]) as srv:
    make(srv.url + "/chat/completions", api_key_env="FAKE_TEACHER_KEY").complete("p")
  assert "Authorization" not in srv.requests[0]["headers"]


def test_malformed_json_and_bad_shape_are_retried_with_backoff():
  script = [
    raw(b"{not json"),
    raw(b'{"choices": []}'),
    raw(b'{"choices": [{"message": {"content": null}}]}'),
    ok("fine"),
  ]
  with FakeOpenAI(script) as srv:
    t = make(srv.url, max_retries=4)
    assert t.complete("p") == "fine"
  assert t.attempts == 4
  assert t._sleep == [0.5, 1.0, 1.5]  # exponential, capped at max_backoff


def test_timeouts_are_retried_then_bounded():
  with FakeOpenAI([slow(1.0, ok("late")), ok("in time")]) as srv:
    t = make(srv.url, timeout=0.2, max_retries=2)
    assert t.complete("p") == "in time"
  assert t.attempts == 2
  with FakeOpenAI([], default=slow(1.0, ok("late"))) as srv:
    t = make(srv.url, timeout=0.2, max_retries=2)
    with pytest.raises(
      teachers.TeacherError,
      match=r"gave up after 3 attempts; last error: "
      r"timed out after 0.2s",
    ):
      t.complete("p")
  assert t.attempts == 3 and t._sleep == [0.5, 1.0]


def test_server_errors_retried_client_errors_not():
  with FakeOpenAI([status(503), status(429), ok("ok")]) as srv:
    assert make(srv.url).complete("p") == "ok"
  with FakeOpenAI([status(401)]) as srv:
    t = make(srv.url)
    with pytest.raises(teachers.TeacherError, match=r"HTTP 401 .*\(not retried\)"):
      t.complete("p")
  assert t.attempts == 1


def test_connection_refused_is_a_bounded_teacher_error():
  with FakeOpenAI() as srv:
    url = srv.url
  t = make(url, max_retries=1)
  with pytest.raises(teachers.TeacherError, match="connection failed"):
    t.complete("p")
  assert t.attempts == 2


def test_batch_reports_each_failure_and_keeps_order():
  def answer(body):
    text = body["messages"][-1]["content"]
    return status(500) if text == "bad" else ok(text.upper())

  with FakeOpenAI([], default=answer) as srv:
    t = make(srv.url, max_retries=1, concurrency=3)
    replies = t.complete_batch(["a", "bad", "c", "d"])
  assert [r.text for r in replies] == ["A", None, "C", "D"]
  assert "HTTP 500" in replies[1].error


def test_bad_settings():
  with pytest.raises(ValueError, match="must start with http"):
    teachers.OpenAITeacher("localhost:8000", "m")
  with pytest.raises(ValueError, match="max_retries >= 0"):
    teachers.OpenAITeacher("http://x", "m", max_retries=-1)


@pytest.fixture(scope="module")
def tiny_model():
  from polylm_jax import vocab as vocab_lib

  vocab = vocab_lib.get_vocabulary()
  config = get_config("polylm_tiny", vocab_size=vocab.vocab_size)
  return config, init_params(config, jax.random.key(0)), vocab


def test_model_teacher_writes_text_and_cuts_long_prompts(tiny_model):
  config, params, vocab = tiny_model
  t = teachers.ModelTeacher(config, params, vocab, max_new_tokens=8, name="tiny")
  long_prompt = "Escribe una lista de tareas. " * 40  # far more than max_len=64 tokens
  replies = t.complete_batch(["Hola", long_prompt])
  assert [r.error for r in replies] == [None, None]
  assert all(isinstance(r.text, str) for r in replies)
  teachers.ModelTeacher(config, params, vocab, max_new_tokens=8, preset="sampling", seed=3)
  with pytest.raises(ValueError, match="max_new_tokens=64 must be in"):
    teachers.ModelTeacher(config, params, vocab, max_new_tokens=64)
  with pytest.raises(ValueError, match="unknown decoding setting"):
    teachers.ModelTeacher(config, params, vocab, max_new_tokens=8, beams=2)
  with pytest.raises(ValueError, match="vocabulary mismatch"):
    teachers.ModelTeacher(config.replace(vocab_size=512), params, vocab)


def test_model_teacher_from_checkpoint_checks_the_tokenizer(tmp_path, tiny_model):
  from polylm_jax import checkpoints
  from polylm_jax import vocab as vocab_lib

  config, params, vocab = tiny_model
  policy = checkpoints.CheckpointPolicy(save_every=1, keep=None, async_save=False)
  for name, fingerprint in (("good", vocab_lib.fingerprint(vocab)), ("bad", "sentencepiece:0:1")):
    with checkpoints.CheckpointManager(tmp_path / name, config, policy) as manager:
      manager.save(1, params, stream_state={"trainer": {"vocabulary": fingerprint}})
  teacher = teachers.ModelTeacher.from_checkpoint(str(tmp_path / "good"), max_new_tokens=4)
  assert teacher.name == "polylm:good" and len(teacher.complete_batch(["Hola"])) == 1
  with pytest.raises(ValueError, match="is not the one"):
    teachers.ModelTeacher.from_checkpoint(str(tmp_path / "bad"), max_new_tokens=4)
