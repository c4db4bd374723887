"""polylm_jax/self_instruct.py end to end: HTTP teacher (local fake server), own model as
teacher, every filter in the loop, statistics and plot, resumability, bad input."""

import hashlib
import json
import os
import random
import re
import subprocess
import sys

import pytest
from fake_openai import FakeOpenAI, ok, raw

from polylm_jax import instruct_store as store
from polylm_jax import self_instruct as si
from polylm_jax import teachers
from polylm_jax.instruct_filters import REASONS

ES_GOOD = [
  "Enumera tres ríos de Sudamérica y su longitud aproximada.",
  "¿Qué consejos darías a alguien que empieza a correr?",
  "Convierte la receta en una lista de pasos numerados.",
  "Escribe un eslogan para una campaña de reciclaje escolar.",
  "Explica la diferencia entre un volcán activo y uno extinto.",
  "Clasifica estas profesiones según trabajen al aire libre o en interiores.",
  "Redacta una invitación breve para una cena de antiguos alumnos.",
  "¿Cuántos planetas tiene el sistema solar y cuál es el más grande?",
]
JA_GOOD = [
  "日本の四季について短く説明してください。",
  "健康的な朝ごはんのメニューを三つ提案してください。",
  "敬語の種類を例とともに教えてください。",
  "次の数字を大きい順に並べてください。",
  "東京から大阪まで新幹線で何時間かかりますか？",
  "図書館を上手に使うコツを教えてください。",
  "環境にやさしい生活習慣を五つ挙げてください。",
  "夏休みの思い出について短い作文を書いてください。",
]
ES_SEED_SUMMARY_INPUT = (
  "El ayuntamiento ha decidido cerrar al tráfico el centro histórico los "
  "fines de semana. La medida busca reducir la contaminación y favorecer el "
  "comercio local. Los vecinos podrán seguir accediendo con sus vehículos."
)


def block(n, instruction, inp, output):
  return (
    f"{n}. Instruction: {instruction}\n{n}. Input:\n{inp or '<noinput>'}\n{n}. Output:\n{output}"
  )


def scripted_reply(lang, k):
  """The k-th reply for `lang`: two good tasks and one task for each way to fail."""
  good = (ES_GOOD if lang == "es" else JA_GOOD)[2 * k : 2 * k + 2]
  bad = {
    "es": [
      ("Describe la imagen adjunta.", "", "Una casa."),  # unservable
      ("Explain why the sea is salty.", "", "Rivers."),  # language
      ("¿Por qué el cielo se ve azul durante el día?", "", "Por la luz."),  # duplicate seed
      ("Haz un resumen muy breve del texto.", ES_SEED_SUMMARY_INPUT, "Cierre."),  # near dup
      (
        "Explica en pocas palabras, para estudiantes universitarios principiantes, qué es "
        "la fotosíntesis.",
        "",
        "Luz a azúcar.",
      ),  # rouge
      ("Resume", "", "Vale."),  # too_short
      ("Escribe una historia larga.", "", "palabra " * 700),  # too_long
      ("Resume el texto.", "Un texto.", "Output: nada"),
    ],  # format
    "ja": [
      ("この写真を説明してください。", "", "家です。"),  # unservable
      ("Explain why the sea is salty.", "", "Rivers."),  # language
      ("空が青く見えるのはなぜですか？", "", "光のためです。"),
    ],  # duplicate seed
  }[lang]
  tasks = [(t, "", "Respuesta de ejemplo." if lang == "es" else "回答の例です。") for t in good]
  tasks += bad
  first = 6
  body = "\n###\n".join(block(first + i, *t) for i, t in enumerate(tasks))
  body += f"\n###\n{first + len(tasks)}. Instruction: Escribe algo cortado sin"  # unparsed
  return body[len(f"{first}. Instruction:") :]  # the teacher goes on after the prompt


def teacher_server(extra_script=()):
  counters = {"es": 0, "ja": 0}

  def answer(body):
    prompt = body["messages"][-1]["content"]
    lang = "ja" if "written in Japanese" in prompt else "es"
    k = counters[lang]
    counters[lang] += 1
    return ok(scripted_reply(lang, k))

  return FakeOpenAI(list(extra_script), default=answer)


def config(tmp_path, **kw):
  kw.setdefault("languages", ("es", "ja"))
  kw.setdefault("rounds", 2)
  kw.setdefault("requests_per_round", 2)
  kw.setdefault("tasks_per_request", 20)
  return si.SelfInstructConfig(output_dir=str(tmp_path / "out"), **kw)


def http_teacher(url, **kw):
  return teachers.OpenAITeacher(url, "fake", backoff=0.01, max_backoff=0.02, timeout=5, **kw)


def test_loop_with_http_teacher_every_filter_stats_and_plot(tmp_path):
  logs = []
  with teacher_server([raw(b"{broken json")]) as srv:  # the first answer is retried
    stats = si.run_self_instruct(http_teacher(srv.url), config(tmp_path), log=logs.append)
  out = tmp_path / "out"
  kept = store.read_jsonl(str(out / "es.jsonl"))
  assert [r["instruction"] for r in kept] == ES_GOOD
  assert [r["round"] for r in kept] == [1] * 4 + [2] * 4
  for r in kept:
    assert r["input"] is None and r["lang"] == "es" and r["teacher"] == "openai:fake"
    assert 0 <= r["rouge_l"] < 0.7
  assert len(store.read_jsonl(str(out / "ja.jsonl"))) == 8
  es = stats["languages"]["es"]
  # every filter rejected its task in each of the 4 requests
  assert es["rejected"] == {r: 4 for r in [*REASONS, "unparsed"]}
  assert es["kept"] == 8 and es["candidates"] == 8 + 4 * len(REASONS)
  assert stats["languages"]["ja"]["rejected"] == {
    "duplicate": 4,
    "language": 4,
    "unparsed": 4,
    "unservable": 4,
  }
  rejected = store.read_jsonl(str(out / "rejected.jsonl"))
  assert {r["reason"] for r in rejected} == {*REASONS, "unparsed"}
  assert all(r["rouge_l"] >= 0.7 for r in rejected if r["reason"] == "rouge")
  # statistics: printed table, json, PNG beside the data, progress lines per round
  text = "\n".join(logs)
  assert re.search(r"round 1 es: generated \d+, kept 4, rejected \d+ \(", text)
  assert "near_duplicate 2" in text and "ROUGE-L to the pool, kept (16)" in text
  assert json.loads((out / "stats.json").read_text())["languages"]["es"]["kept"] == 8
  assert (out / "stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert json.loads((out / "progress.json").read_text())["rounds_done"] == {"es": 2, "ja": 2}
  prompt = srv.requests[0]["json"]["messages"][0]["content"]
  assert "written in Spanish (Español)" in prompt and prompt.endswith("6. Instruction:")
  assert prompt.count("Instruction:") == 6  # 5 demonstrations + the open slot


def test_output_trains_as_an_instruction_task(tmp_path):
  with teacher_server() as srv:
    si.run_self_instruct(
      http_teacher(srv.url), config(tmp_path, languages=("es",), rounds=1), log=lambda s: None
    )
  import seqio
  from tasks import instructions

  name = instructions.register_instruction_task(
    "es", str(tmp_path / "out" / "es.jsonl"), source_name="selfinstruct", holdout_every=None
  )
  ds = seqio.get_mixture_or_task(name).get_dataset(
    sequence_length=None, split="train", shuffle=False, use_cached=False
  )
  prompts = [ex["inputs_pretokenized"].decode() for ex in ds.as_numpy_iterator()]
  assert prompts == [f"{t}\n\n" for t in ES_GOOD[:4]]


def test_loop_with_own_model_as_teacher(tmp_path):
  import jax
  from polylm_jax import vocab as vocab_lib
  from polylm_jax.config import get_config
  from polylm_jax.model import init_params

  vocab = vocab_lib.get_vocabulary()
  cfg = get_config("polylm_tiny", vocab_size=vocab.vocab_size)
  teacher = teachers.ModelTeacher(
    cfg, init_params(cfg, jax.random.key(1)), vocab, max_new_tokens=16, name="polylm_tiny_random"
  )
  logs = []
  stats = si.run_self_instruct(
    teacher, config(tmp_path, languages=("es", "th"), rounds=1), log=logs.append
  )
  for lang in ("es", "th"):
    v = stats["languages"][lang]
    # a random model writes garbage: no task survives, and each reply is counted
    assert v["kept"] == 0
    assert sum(v["rejected"].values()) >= 2
  assert "round 1 th: generated" in "\n".join(logs)
  assert all(
    r["teacher"] == "polylm_tiny_random"
    for r in store.read_jsonl(str(tmp_path / "out" / "rejected.jsonl"))
  )


# -- resumability -------------------------------------------------------------------------

WORDS = (
  "casa perro ciudad montaña río libro mesa ventana jardín escuela mercado puente "
  "tren barco nube árbol camino playa bosque isla pueblo plaza museo teatro cocina "
  "huerto granja puerto faro molino torre castillo lago valle desierto selva cueva "
  "volcán glaciar costa bahía colina llanura pradera"
).split()
ES_SEED_INSTRUCTIONS = {
  s["instruction"] for s in store.load_seed_tasks(os.path.join(si.DEFAULT_SEED_DIR, "es.jsonl"))
}


class HashTeacher:
  """Replies depend only on the seed demonstrations in the prompt, which depend only on
  (seed, language, round, request): a rerun round gets the same replies."""

  name = "hash"

  def complete_batch(self, prompts):
    out = []
    for p in prompts:
      shown = [
        x for x in re.findall(r"^\d+\. Instruction: (.*)$", p, re.M) if x in ES_SEED_INSTRUCTIONS
      ]
      rng = random.Random(hashlib.sha256("|".join(shown).encode()).hexdigest())
      tasks = [
        (f"Escribe sobre {' '.join(rng.sample(WORDS, 5))} de la ciudad.", "", "Un texto breve.")
        for _ in range(2)
      ]
      tasks.append(("Describe la imagen adjunta.", "", "Nada."))
      out.append(teachers.Reply("\n###\n".join(block(6 + i, *t) for i, t in enumerate(tasks))))
    return out


class Killed(BaseException):
  pass


def run_dir(tmp_path, name, kill_at=None, monkeypatch=None):
  cfg = config(tmp_path / name, languages=("es",), rounds=3)
  if kill_at is not None:
    real = store.JsonlAppender.append
    calls = {"n": 0}

    def dying_append(self, record):
      calls["n"] += 1
      if calls["n"] == kill_at:  # killed in the middle of writing this line
        line = json.dumps(record, ensure_ascii=False)
        self._f.write(line[: len(line) // 2])
        self._f.flush()
        raise Killed()
      real(self, record)

    monkeypatch.setattr(store.JsonlAppender, "append", dying_append)
    with pytest.raises(Killed):
      si.run_self_instruct(HashTeacher(), cfg, log=lambda s: None)
    monkeypatch.setattr(store.JsonlAppender, "append", real)
  logs = []
  stats = si.run_self_instruct(HashTeacher(), cfg, log=logs.append)
  out = tmp_path / name / "out"
  return (
    store.read_jsonl(str(out / "es.jsonl")),
    store.read_jsonl(str(out / "rejected.jsonl")),
    stats,
    "\n".join(logs),
  )


@pytest.mark.parametrize("kill_at", [5, 8, 9])
def test_killed_run_resumes_without_duplicates_or_losses(tmp_path, monkeypatch, kill_at):
  kept, rejected, stats, _ = run_dir(tmp_path, "whole")
  assert len(kept) >= 8 and len(rejected) >= 6  # 3 rounds x 2 replies x (2 tasks + 1 unservable)
  kept2, rejected2, stats2, logs = run_dir(tmp_path, "killed", kill_at, monkeypatch)
  assert kept2 == kept  # same records, same order: none lost, none twice
  assert rejected2 == rejected
  assert stats2 == stats
  assert "cut a partial last line" in logs and "resuming in" in logs


# -- bad input ----------------------------------------------------------------------------


def test_malformed_seed_file(tmp_path):
  seeds = tmp_path / "seeds"
  seeds.mkdir()
  (seeds / "es.jsonl").write_text('{"instruction": "Di hola.", "output": "Hola"}\n{nope\n')
  with pytest.raises(ValueError, match=r"seed file .*es.jsonl line 2: not valid JSON"):
    si.SelfInstruct(HashTeacher(), config(tmp_path, languages=("es",), seed_dir=str(seeds)))
  (seeds / "es.jsonl").write_text('{"instruction": "Di hola.", "input": null}\n')
  with pytest.raises(ValueError, match=r"line 1: field 'output' must be a non-empty string"):
    store.load_seed_tasks(str(seeds / "es.jsonl"))
  (seeds / "es.jsonl").write_text('{"instruction": "Di hola.", "input": 5, "output": "x"}\n')
  with pytest.raises(ValueError, match=r"field 'input' must be a string or null"):
    store.load_seed_tasks(str(seeds / "es.jsonl"))


def test_unknown_language_and_missing_seeds(tmp_path):
  with pytest.raises(ValueError, match=r"unknown language code 'ess' \(did you mean es"):
    si.check_languages(["ess"], si.DEFAULT_SEED_DIR)
  with pytest.raises(ValueError, match=r"no seed tasks for 'zh'.*exist for: ar, de, es"):
    si.check_languages(["zh"], si.DEFAULT_SEED_DIR)
  with pytest.raises(ValueError, match="repeated codes"):
    si.check_languages(["es", "es"], si.DEFAULT_SEED_DIR)


def test_unwritable_output_path(tmp_path):
  blocker = tmp_path / "file.txt"
  blocker.write_text("x")
  with pytest.raises(OSError, match=r"--output_dir=.*file.txt: exists and is not a directory"):
    si.check_output_dir(str(blocker))
  with pytest.raises(OSError, match=r"--output_dir=.*file.txt/sub: not writable"):
    si.SelfInstruct(
      HashTeacher(), si.SelfInstructConfig(languages=("es",), output_dir=str(blocker / "sub"))
    )


def test_failing_endpoint_is_counted_then_stops(tmp_path):
  with FakeOpenAI([], default=raw(b"<html>bad gateway</html>")) as srv:
    teacher = http_teacher(srv.url, max_retries=2)
    with pytest.raises(RuntimeError, match=r"failed every request for 2 rounds.*malformed chat"):
      si.run_self_instruct(
        teacher,
        config(tmp_path, languages=("es",), rounds=5, max_failed_rounds=2),
        log=lambda s: None,
      )
  assert len(srv.requests) == 2 * 2 * 3  # rounds x requests x (1 + 2 retries): bounded
  rejected = store.read_jsonl(str(tmp_path / "out" / "rejected.jsonl"))
  assert [r["reason"] for r in rejected] == ["teacher_error"] * 4
  progress = json.loads((tmp_path / "out" / "progress.json").read_text())
  assert progress["rounds_done"] == {"es": 2}


def test_config_and_prompt_checks():
  with pytest.raises(ValueError, match="--tasks_per_request=5 must exceed"):
    si.SelfInstructConfig(tasks_per_request=5)
  with pytest.raises(ValueError, match="--rounds must be >= 1"):
    si.SelfInstructConfig(rounds=0)


def test_parse_reply_variants():
  reply = (
    " **Nombra un color.**\n6. Input: <noinput>\n6. Output: Rojo.\n\n###\n"
    "**7. Instruction:** Suma 2 y 3.\n7) Input:\nN/A\n7. Output:\n5\n###\n"
    "8. Instruction: sin salida\n8. Input:\nx"
  )
  tasks, bad = si.parse_reply(reply, 6)
  assert tasks == [
    {"instruction": "**Nombra un color.**", "input": "", "output": "Rojo."},
    {"instruction": "Suma 2 y 3.", "input": "", "output": "5"},
  ]
  assert bad == 1
  assert si.parse_reply("6. Instruction: A\n6. Output: B", 6) == (
    [{"instruction": "A", "input": "", "output": "B"}],
    0,
  )


def test_language_names_match_tasks_languages():
  from tasks import languages

  for lang in languages.all_languages()[:18]:
    assert si.LANGUAGE_NAMES[lang.code] == (lang.name, lang.native)


def test_binary_runs_against_fake_server(tmp_path):
  with teacher_server() as srv:
    proc = subprocess.run(
      [
        sys.executable,
        "-m",
        "polylm_jax.self_instruct",
        "--teacher=openai",
        f"--url={srv.url}",
        "--model_name=fake",
        "--languages=es",
        f"--output_dir={tmp_path}/bin",
        "--rounds=1",
        "--requests_per_round=1",
        "--tasks_per_request=20",
      ],
      capture_output=True,
      text=True,
      timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "round 1 es: generated" in proc.stdout and "ROUGE-L to the pool" in proc.stdout
  assert len(store.read_jsonl(str(tmp_path / "bin" / "es.jsonl"))) == 2
