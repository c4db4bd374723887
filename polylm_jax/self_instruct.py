r"""Multilingual self-instruct: grow a pool of instructions per language from seed tasks.

    python -m polylm_jax.self_instruct --teacher=openai --url=http://localhost:8000/v1 \
        --model_name=my-model --languages=es,ja,th --output_dir=data/selfinstruct \
        --rounds=10 --target_per_language=500
    python -m polylm_jax.self_instruct --teacher=model --checkpoint=runs/polylm_1_7b ...

Each round, for each language: `requests_per_round` prompts, each showing seed tasks and
tasks generated so far as numbered demonstrations and asking for more in that language
(English meta-instructions, as in Alpaca's self-instruct prompt); the replies are parsed,
filtered (polylm_jax.instruct_filters) and the survivors appended to `{output_dir}/{lang}.jsonl`
in MultiAlpaca format (+ "lang", "round", "teacher", "rouge_l"), ready for
tasks.instructions.register_instruction_task. Rejections go to `rejected.jsonl` with the
reason; `progress.json` records finished rounds; `stats.json` and `stats.png` are written at
the end (and printed).

Resume: rerun the same command. Kept records are fsynced one by one; a partial last line is
cut; the pool is rebuilt from the seeds and the kept files; an unfinished round is run again
(its log lines are dropped first, and replays of its already-kept tasks are not counted
twice), so no record is duplicated or lost.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from polylm_jax.files import atomic_write
from polylm_jax import instruct_filters as filters_lib
from polylm_jax import instruct_store as store
from polylm_jax.teachers import Teacher

DEFAULT_SEED_DIR = str(Path(__file__).resolve().parent / "data" / "seed_tasks")
MULTIALPACA_LANGUAGES = ("ar", "de", "es", "fr", "id", "ja", "ko", "pt", "ru", "th", "vi")
# (English name, endonym) of the 18 PolyLM languages, for the teacher prompt; the same as
# tasks.languages (a test checks), kept here so an HTTP-teacher run does not import TF.
LANGUAGE_NAMES: dict[str, tuple[str, str]] = {
  "zh": ("Chinese", "中文"),
  "en": ("English", "English"),
  "es": ("Spanish", "Español"),
  "fr": ("French", "Français"),
  "pt": ("Portuguese", "Português"),
  "ru": ("Russian", "Русский"),
  "de": ("German", "Deutsch"),
  "it": ("Italian", "Italiano"),
  "ar": ("Arabic", "العربية"),
  "ja": ("Japanese", "日本語"),
  "ko": ("Korean", "한국어"),
  "th": ("Thai", "ไทย"),
  "vi": ("Vietnamese", "Tiếng Việt"),
  "id": ("Indonesian", "Bahasa Indonesia"),
  "nl": ("Dutch", "Nederlands"),
  "pl": ("Polish", "Polski"),
  "tr": ("Turkish", "Türkçe"),
  "he": ("Hebrew", "עברית"),
}
LOOP_REASONS = ("teacher_error", "unparsed")  # besides instruct_filters.REASONS
NO_INPUT = "<noinput>"
PROGRESS_FILE, REJECTED_FILE = "progress.json", "rejected.jsonl"


@dataclasses.dataclass(frozen=True)
class SelfInstructConfig:
  languages: tuple[str, ...] = MULTIALPACA_LANGUAGES
  output_dir: str = "selfinstruct"
  seed_dir: str = DEFAULT_SEED_DIR
  rounds: int = 10
  target_per_language: int = 1000  # stop a language once this many were kept
  requests_per_round: int = 4  # prompts per language per round
  num_seed_demos: int = 3
  num_generated_demos: int = 2
  tasks_per_request: int = 10  # demonstrations + new tasks asked for, numbered
  max_failed_rounds: int = 3  # rounds in a row where every request failed -> stop
  random_seed: int = 0
  filters: filters_lib.FilterConfig = filters_lib.FilterConfig()

  def __post_init__(self):
    for name in ("rounds", "target_per_language", "requests_per_round", "max_failed_rounds"):
      if getattr(self, name) < 1:
        raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
    if self.num_seed_demos < 1 or self.num_generated_demos < 0:
      raise ValueError("--num_seed_demos must be >= 1 and --num_generated_demos >= 0")
    if self.tasks_per_request <= self.num_seed_demos + self.num_generated_demos:
      raise ValueError(
        f"--tasks_per_request={self.tasks_per_request} must exceed the "
        f"{self.num_seed_demos + self.num_generated_demos} demonstrations"
      )
    if not self.languages:
      raise ValueError("--languages: give at least one language")


def check_languages(codes: Sequence[str], seed_dir: str) -> tuple[str, ...]:
  """The codes, checked: known PolyLM languages that have a seed file."""
  for code in codes:
    if code not in LANGUAGE_NAMES:
      close = difflib.get_close_matches(code, list(LANGUAGE_NAMES), n=3, cutoff=0.5)
      hint = f" (did you mean {', '.join(close)}?)" if close else ""
      raise ValueError(
        f"--languages: unknown language code {code!r}{hint}; known: {', '.join(LANGUAGE_NAMES)}"
      )
    if not os.path.isfile(os.path.join(seed_dir, f"{code}.jsonl")):
      have = (
        sorted(p[:-6] for p in os.listdir(seed_dir) if p.endswith(".jsonl"))
        if os.path.isdir(seed_dir)
        else []
      )
      raise ValueError(
        f"--languages: no seed tasks for {code!r}: write {seed_dir}/{code}.jsonl "
        f"(one {{instruction, input, output}} object per line); seed files "
        f"exist for: {', '.join(have) or 'none'}"
      )
  if len(set(codes)) != len(codes):
    raise ValueError(f"--languages: repeated codes in {list(codes)}")
  return tuple(codes)


def check_output_dir(path: str) -> None:
  """Create `path` and make sure files can be written there; OSError naming it if not."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise OSError(f"--output_dir={path}: exists and is not a directory")
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, ".write_test")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise OSError(f"--output_dir={path}: not writable ({e.strerror or e})") from None


# -- the prompt and the reply -------------------------------------------------------------


def _task_block(n: int, task: Mapping[str, str]) -> str:
  return (
    f"{n}. Instruction: {task['instruction'].strip()}\n"
    f"{n}. Input:\n{task['input'].strip() or NO_INPUT}\n"
    f"{n}. Output:\n{task['output'].strip()}"
  )


def build_prompt(lang: str, demos: Sequence[Mapping[str, str]], num_tasks: int) -> str:
  """The teacher prompt: requirements, the demonstrations numbered 1..d, then "d+1.
  Instruction:" for the teacher to go on from."""
  name, native = LANGUAGE_NAMES[lang]
  head = (
    f"You are asked to come up with a set of {num_tasks} diverse task instructions written "
    f"in {name} ({native}). These task instructions will be given to a language model and we "
    f"will evaluate it on completing them.\n\n"
    f"Here are the requirements:\n"
    f"1. Write every instruction, input and output in {name}, except where the task itself "
    f"needs another language (for example a translation).\n"
    f"2. Vary the tasks: open questions, rewriting, classification, extraction, "
    f"brainstorming, translation, summarization, writing and reasoning. Do not start two "
    f"instructions with the same verb.\n"
    f"3. A text-only model must be able to do each task: nothing about images, drawings, "
    f"audio, video, files or links, and nothing that needs acting in the world.\n"
    f"4. An instruction is one or two sentences: an imperative or a question.\n"
    f"5. Give an input only when the task needs one (a text to rewrite, classify or extract "
    f"from, ...); it must be the real content, not a description of it. Otherwise write "
    f"{NO_INPUT}.\n"
    f"6. The output is a correct, complete answer of at most about 100 words.\n\n"
    f"List of {num_tasks} tasks:\n"
  )
  blocks = [_task_block(i + 1, t) for i, t in enumerate(demos)]
  return head + "###\n" + "\n###\n".join(blocks) + f"\n###\n{len(demos) + 1}. Instruction:"


_HEADER = r"^[ \t]*(?:\*\*)?\d+[ \t]*[.)][ \t]*(?:\*\*)?{field}(?:\*\*)?[ \t]*:(?:\*\*)?"
_SPLIT_RE = re.compile(_HEADER.format(field="Instruction"), re.MULTILINE | re.IGNORECASE)
_FIELD_RE = re.compile(
  r"\A[ \t]*(?P<instruction>.*?)"
  rf"(?:{_HEADER.format(field='Input')}(?P<input>.*?))?"
  rf"{_HEADER.format(field='Output')}(?P<output>.*)\Z",
  re.MULTILINE | re.IGNORECASE | re.DOTALL,
)


def parse_reply(reply: str, first_number: int) -> tuple[list[dict[str, str]], int]:
  """(tasks, unparseable segments) of a teacher reply in the prompt's numbered format.

  The reply may go on straight after the prompt's "N. Instruction:" or restate it. A
  segment without an output (e.g. cut off by the token limit) is unparseable.
  """
  text = reply.replace("\r\n", "\n")
  if not _SPLIT_RE.match(text.lstrip("\n# ")):
    text = f"{first_number}. Instruction:" + text
  starts = [m.end() for m in _SPLIT_RE.finditer(text)]
  ends = [m.start() for m in _SPLIT_RE.finditer(text)][1:] + [len(text)]
  tasks, bad = [], 0
  for a, b in zip(starts, ends):
    segment = re.sub(r"\n\s*#{3,}[\s\S]*\Z", "", text[a:b])  # the separator, and after it
    m = _FIELD_RE.match(segment)
    if not m:
      bad += 1
      continue
    inp = (m.group("input") or "").strip()
    if re.fullmatch(r"<\s*no\s*input\s*>|n/?a|none|-", inp, re.IGNORECASE):
      inp = ""
    tasks.append(
      {
        "instruction": m.group("instruction").strip(),
        "input": inp,
        "output": m.group("output").strip(),
      }
    )
  return tasks, bad


# -- the loop -----------------------------------------------------------------------------


def _rng(seed: int, lang: str, rnd: int, request: int) -> random.Random:
  digest = hashlib.blake2b(f"{seed}\x1f{lang}\x1f{rnd}\x1f{request}".encode(), digest_size=8)
  return random.Random(int.from_bytes(digest.digest(), "little"))


class SelfInstruct:
  """One run's state: pools, files and counters (see the module docstring)."""

  def __init__(
    self, teacher: Teacher, config: SelfInstructConfig, log: Callable[[str], None] = print
  ):
    self.teacher, self.config, self.log = teacher, config, log
    check_languages(config.languages, config.seed_dir)
    self.seeds = {
      lang: store.load_seed_tasks(os.path.join(config.seed_dir, f"{lang}.jsonl"))
      for lang in config.languages
    }
    check_output_dir(config.output_dir)
    out = config.output_dir
    self.kept_path = {lang: os.path.join(out, f"{lang}.jsonl") for lang in config.languages}
    self.rejected_path = os.path.join(out, REJECTED_FILE)
    self.progress_path = os.path.join(out, PROGRESS_FILE)
    for path in [*self.kept_path.values(), self.rejected_path]:
      cut = store.repair_jsonl(path)
      if cut:
        self.log(f"{path}: cut a partial last line ({cut} bytes) left by an interrupted run")
    self.rounds_done: dict[str, int] = {}
    if os.path.exists(self.progress_path):
      with open(self.progress_path, encoding="utf-8") as f:
        self.rounds_done = {k: int(v) for k, v in json.load(f).get("rounds_done", {}).items()}
    self.kept = {lang: store.read_jsonl(p) for lang, p in self.kept_path.items()}
    rejected = store.read_jsonl(self.rejected_path)
    keep = [
      r
      for r in rejected
      if r.get("lang") not in self.config.languages
      or int(r.get("round", 0)) <= self.rounds_done.get(r["lang"], 0)
    ]
    if len(keep) != len(rejected):  # an interrupted round is run again: drop its log first
      store.rewrite_jsonl(self.rejected_path, keep)
      rejected = keep
    self.rejected = rejected
    self.pools: dict[str, filters_lib.InstructionPool] = {}
    self._kept_round: dict[str, dict[str, int]] = {}
    for lang in config.languages:
      pool = filters_lib.InstructionPool(lang, config.filters)
      pool.extend((s["instruction"], s["input"]) for s in self.seeds[lang])
      for r in self.kept[lang]:
        pool.add(r["instruction"], r.get("input") or "")
      self.pools[lang] = pool
      self._kept_round[lang] = {
        pool.key(r["instruction"], r.get("input") or ""): int(r.get("round", 0))
        for r in self.kept[lang]
      }
    self._kept_writer = {lang: store.JsonlAppender(p) for lang, p in self.kept_path.items()}
    self._rejected_writer = store.JsonlAppender(self.rejected_path)
    if any(self.kept.values()) or self.rounds_done:
      self.log(
        f"resuming in {out}: "
        + ", ".join(
          f"{lang} {len(self.kept[lang])} kept / {self.rounds_done.get(lang, 0)} rounds"
          for lang in config.languages
        )
      )

  def close(self) -> None:
    for w in [*self._kept_writer.values(), self._rejected_writer]:
      w.close()

  def _demos(self, lang: str, rnd: int, rng: random.Random) -> list[dict[str, str]]:
    """Seed and generated demonstrations; generated ones only from earlier rounds, so a
    round's prompts do not depend on how far it got before an interruption."""
    cfg = self.config
    generated = [
      {"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]}
      for r in self.kept[lang]
      if int(r["round"]) < rnd
    ]
    n_gen = min(cfg.num_generated_demos, len(generated))
    n_seed = min(len(self.seeds[lang]), cfg.num_seed_demos + cfg.num_generated_demos - n_gen)
    demos = rng.sample(self.seeds[lang], n_seed) + rng.sample(generated, n_gen)
    rng.shuffle(demos)
    return demos

  def _reject(
    self,
    lang: str,
    rnd: int,
    reason: str,
    detail: str,
    task: Mapping[str, str],
    rouge: float | None,
    counts: Counter,
  ) -> None:
    counts[reason] += 1
    record = {
      "lang": lang,
      "round": rnd,
      "teacher": self.teacher.name,
      "reason": reason,
      "detail": detail,
      "instruction": task.get("instruction", ""),
      "input": task.get("input", ""),
      "output": task.get("output", ""),
      "rouge_l": rouge,
    }
    self._rejected_writer.append(record)
    self.rejected.append(record)

  def run_round(self, lang: str, rnd: int) -> Counter:
    """One round of one language; returns its counts (kept, generated, reasons)."""
    cfg = self.config
    counts: Counter = Counter()
    prompts, firsts = [], []
    for i in range(cfg.requests_per_round):
      demos = self._demos(lang, rnd, _rng(cfg.random_seed, lang, rnd, i))
      prompts.append(build_prompt(lang, demos, cfg.tasks_per_request))
      firsts.append(len(demos) + 1)
    replies = self.teacher.complete_batch(prompts)
    pool = self.pools[lang]
    for reply, first in zip(replies, firsts):
      if reply.text is None:
        self._reject(lang, rnd, "teacher_error", reply.error or "", {}, None, counts)
        continue
      tasks, bad = parse_reply(reply.text, first)
      tasks = tasks[: cfg.tasks_per_request - first + 1]
      if bad or not tasks:
        self._reject(
          lang,
          rnd,
          "unparsed",
          f"{bad} unparseable segment(s), {len(tasks)} parsed",
          {"output": reply.text[:2000]},
          None,
          counts,
        )
      for task in tasks:
        if len(self.kept[lang]) >= cfg.target_per_language:
          break
        counts["generated"] += 1
        verdict = pool.check(task["instruction"], task["input"], task["output"])
        key = pool.key(task["instruction"], task["input"])
        if verdict.reason == "duplicate" and self._kept_round[lang].get(key) == rnd:
          counts["replayed"] += 1  # kept before this round was interrupted
          continue
        if not verdict.kept:
          self._reject(lang, rnd, verdict.reason, verdict.detail, task, verdict.rouge, counts)
          continue
        record = {
          "instruction": task["instruction"],
          "input": task["input"] or None,
          "output": task["output"],
          "lang": lang,
          "round": rnd,
          "teacher": self.teacher.name,
          "rouge_l": round(verdict.rouge or 0.0, 4),
        }
        self._kept_writer[lang].append(record)
        self.kept[lang].append(record)
        pool.add(task["instruction"], task["input"])
        self._kept_round[lang][key] = rnd
        counts["kept"] += 1
    return counts

  def _save_progress(self) -> None:
    atomic_write(
      self.progress_path,
      json.dumps({"rounds_done": self.rounds_done, "teacher": self.teacher.name}, indent=1) + "\n",
    )

  def run(self) -> dict[str, Any]:
    """All rounds (skipping finished ones); returns the statistics."""
    cfg = self.config
    failed_rounds = 0
    for rnd in range(1, cfg.rounds + 1):
      for lang in cfg.languages:
        if self.rounds_done.get(lang, 0) >= rnd or len(self.kept[lang]) >= cfg.target_per_language:
          continue
        counts = self.run_round(lang, rnd)
        self.rounds_done[lang] = rnd
        self._save_progress()
        rejected = {
          k: v for k, v in counts.items() if k in filters_lib.REASONS or k in LOOP_REASONS
        }
        self.log(
          f"round {rnd} {lang}: generated {counts['generated']}, kept {counts['kept']}, "
          f"rejected {sum(rejected.values())} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(rejected.items())) or '-'})"
          f"{', replayed ' + str(counts['replayed']) if counts['replayed'] else ''}"
          f" | pool {len(self.kept[lang])}/{cfg.target_per_language}"
        )
        all_failed = counts["teacher_error"] == cfg.requests_per_round
        failed_rounds = failed_rounds + 1 if all_failed else 0
        if failed_rounds >= cfg.max_failed_rounds:
          last = next(
            (r["detail"] for r in reversed(self.rejected) if r["reason"] == "teacher_error"), ""
          )
          raise RuntimeError(
            f"the teacher failed every request for {failed_rounds} rounds in a "
            f"row; stopping (rerun to resume). Last error: {last}"
          )
    return self.finish()

  def finish(self) -> dict[str, Any]:
    """Statistics: printed, and written as stats.json and stats.png beside the data."""
    stats = store.compute_stats(self.kept, self.rejected, self.config.languages)
    out = self.config.output_dir
    atomic_write(os.path.join(out, "stats.json"), json.dumps(stats, indent=1) + "\n")
    threshold = self.config.filters.rouge_threshold
    store.plot_stats(stats, os.path.join(out, "stats.png"), threshold)
    self.log(store.format_stats(stats, threshold))
    self.log(
      f"data: {out}/{{{','.join(self.config.languages)}}}.jsonl; rejections: "
      f"{self.rejected_path}; plot: {out}/stats.png"
    )
    return stats


def run_self_instruct(
  teacher: Teacher, config: SelfInstructConfig, log: Callable[[str], None] = print
) -> dict[str, Any]:
  """The whole run as a plain function: returns the statistics."""
  job = SelfInstruct(teacher, config, log)
  try:
    return job.run()
  finally:
    job.close()


# -- the binary ---------------------------------------------------------------------------


def _define_flags() -> None:
  from absl import flags

  if "teacher" in flags.FLAGS:
    return
  flags.DEFINE_enum("teacher", "openai", ["openai", "model"], "Teacher backend.")
  flags.DEFINE_string("url", None, "OpenAI-compatible endpoint (…/v1 or …/chat/completions).")
  flags.DEFINE_string("model_name", None, "Model name sent to the endpoint.")
  flags.DEFINE_string("api_key_env", "OPENAI_API_KEY", "Environment variable holding the key.")
  flags.DEFINE_float("timeout", 120.0, "Seconds per HTTP request.")
  flags.DEFINE_integer("max_retries", 4, "Retries per request (exponential backoff).")
  flags.DEFINE_integer("concurrency", 1, "Parallel HTTP requests.")
  flags.DEFINE_float("temperature", 0.7, "Teacher sampling temperature.")
  flags.DEFINE_string("checkpoint", None, "Run/checkpoint/HF dir of the model teacher.")
  flags.DEFINE_string(
    "vocab",
    None,
    "SentencePiece model of the model teacher (default: tokenizer.model beside the "
    "checkpoint, else $POLYLM_JAX_VOCAB or the demo tokenizer).",
  )
  flags.DEFINE_integer(
    "max_new_tokens",
    512,
    "Tokens the model teacher writes per request (at most half its positions: capped with a note).",
  )
  flags.DEFINE_list("languages", list(MULTIALPACA_LANGUAGES), "Language codes.")
  flags.DEFINE_string("output_dir", None, "Where the pool, logs, stats and plot go.")
  flags.DEFINE_string("seed_dir", DEFAULT_SEED_DIR, "Folder of {lang}.jsonl seed tasks.")
  flags.DEFINE_integer("rounds", 10, "Rounds.")
  flags.DEFINE_integer("target_per_language", 1000, "Stop a language at this pool size.")
  flags.DEFINE_integer("requests_per_round", 4, "Teacher requests per language per round.")
  flags.DEFINE_integer("tasks_per_request", 10, "Tasks per request (demonstrations included).")
  flags.DEFINE_float("rouge_threshold", 0.7, "Reject at ROUGE-L >= this against the pool.")
  flags.DEFINE_integer("seed", 0, "Random seed for demonstrations.")


def fit_max_new_tokens(requested: int, max_len: int) -> tuple[int, str | None]:
  """The teacher's reply length: at most half the model's positions (the prompt, with its
  demonstrations, keeps the other half); a one-line note when the request is cut."""
  if requested < 1:
    raise ValueError(f"--max_new_tokens must be >= 1, got {requested}")
  cap = max(1, max_len // 2)
  if requested <= cap:
    return requested, None
  return cap, (
    f"(--max_new_tokens={requested} does not fit the teacher model's {max_len} positions "
    f"with a prompt: it writes up to {cap} tokens per request)"
  )


def _model_teacher(
  checkpoint: str | None, vocab_path: str | None, max_new_tokens: int, temperature: float
):
  """The project's own model as the teacher, its tokenizer checked, its reply length fitted."""
  from polylm_jax import checkpoints, teachers

  if not checkpoint:
    raise ValueError("--teacher=model needs --checkpoint")
  config, params, vocab = checkpoints.load_for_inference(
    checkpoint, vocab_path, step_flag="--checkpoint=RUN/checkpoints/N", vocab_flag="--vocab"
  )
  max_new_tokens, note = fit_max_new_tokens(max_new_tokens, config.max_len)
  if note:
    print(note)
  return teachers.ModelTeacher(
    config,
    params,
    vocab,
    max_new_tokens=max_new_tokens,
    name=f"polylm:{os.path.basename(os.path.normpath(checkpoint))}",
    preset="sampling",
    temperature=temperature,
  )


def main(argv: Sequence[str]) -> None:
  from absl import flags
  from polylm_jax import teachers

  if len(argv) > 1:
    sys.exit(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  try:
    if not f.output_dir:
      raise ValueError("--output_dir is required")
    config = SelfInstructConfig(
      languages=tuple(f.languages),
      output_dir=f.output_dir,
      seed_dir=f.seed_dir,
      rounds=f.rounds,
      target_per_language=f.target_per_language,
      requests_per_round=f.requests_per_round,
      tasks_per_request=f.tasks_per_request,
      random_seed=f.seed,
      filters=filters_lib.FilterConfig(rouge_threshold=f.rouge_threshold),
    )
    check_languages(config.languages, config.seed_dir)
    if f.teacher == "openai":
      if not f.url or not f.model_name:
        raise ValueError("--teacher=openai needs --url and --model_name")
      teacher = teachers.OpenAITeacher(
        f.url,
        f.model_name,
        api_key_env=f.api_key_env,
        timeout=f.timeout,
        max_retries=f.max_retries,
        temperature=f.temperature,
        concurrency=f.concurrency,
      )
    else:
      teacher = _model_teacher(f.checkpoint, f.vocab, f.max_new_tokens, f.temperature)
    run_self_instruct(teacher, config)
  except (ValueError, OSError, RuntimeError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  from polylm_jax import logs

  _define_flags()
  logs.run(main)
