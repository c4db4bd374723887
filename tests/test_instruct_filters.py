"""polylm_jax/instruct_filters.py: each filter rejects what it should, and only that."""

import json
import os
import pathlib

import pytest
from rouge_score import rouge_scorer

from polylm_jax import instruct_filters as F
from polylm_jax.self_instruct import DEFAULT_SEED_DIR, MULTIALPACA_LANGUAGES


def test_multilingual_rouge_tokenizer_and_rouge_l():
  assert F.tokenize("日本語の文") == ["日", "本", "語", "の", "文"]
  assert F.tokenize("Hola, MUNDO!") == ["hola", "mundo"]
  assert F.tokenize("ภาษาไทย") == list("ภาษาไทย")
  assert F.tokenize("Привет, мир") == ["привет", "мир"]
  # the stock rouge tokenizer sees nothing in these scripts; ours does
  assert F.rouge_l("夏に日が長い理由", "夏に日が長い理由") == pytest.approx(1.0)
  assert F.rouge_l("Почему небо голубое?", "Почему море синее?") == pytest.approx(1 / 3)
  stock = rouge_scorer.RougeScorer(["rougeL"])
  assert stock.score("Почему небо голубое?", "Почему небо голубое?")["rougeL"].fmeasure == 0
  assert F.rouge_l("abc", "xyz") == 0.0


def test_pool_max_rouge_is_exact():
  pool = F.InstructionPool("es")
  texts = [
    f"Escribe {n} ideas para una fiesta de cumpleaños {w}"
    for n, w in [("tres", "infantil"), ("cinco", "sorpresa"), ("diez", "temática")]
  ] + ["Traduce la frase al inglés", "Resume el texto en una frase"]
  pool.extend((t, "") for t in texts)
  cand = "Escribe cinco ideas para una fiesta sorpresa"
  best, i = pool.max_rouge(cand)
  assert best == pytest.approx(max(F.rouge_l(t, cand) for t in texts))
  assert texts[i] == texts[1]
  assert pool.max_rouge("zzz") == (0.0, -1)


def keep_case(pool):
  return pool.check("Explica por qué el mar es salado.", "", "Porque los ríos llevan sales.")


@pytest.mark.parametrize(
  "instruction,input_text,output,reason,detail",
  [
    ("", "", "algo", "format", "empty instruction"),
    ("Resume el texto.", "", "   ", "format", "empty output"),
    ("Resume el texto.", "", "...", "format", "no letters"),
    ("Resume el texto.", "", "Output: un resumen", "format", "template marker left in output"),
    ("Di algo.\n2. Instruction: otra", "", "Hola", "format", "template marker"),
    ("- Resume el texto.", "", "Un resumen.", "format", "starts with"),
    ("Repite esta frase tal cual.", "El gato duerme.", "El gato duerme.", "format", "copies"),
    ("Hola", "", "Hola a ti.", "too_short", "instruction has 1 units"),
    ("Resume esto " + "muy " * 200, "", "Vale.", "too_long", "instruction has"),
    ("Resume el texto.", "palabra " * 500, "Vale.", "too_long", "input has"),
    ("Escribe una historia.", "", "palabra " * 700, "too_long", "output has"),
    ("Explain why the sea is salty.", "", "Rivers carry salts.", "language", "reads as 'en'"),
    ("海がしょっぱいのはなぜですか？", "", "川が塩を運ぶからです。", "language", "reads as 'ja'"),
    ("Describe la imagen adjunta en tres frases.", "", "Una casa.", "unservable", "imagen"),
    ("Resume el artículo del enlace.", "", "Un resumen.", "unservable", "enlace"),
    ("Resume el artículo.", "https://example.com/a", "Un resumen.", "unservable", "https://"),
    ("Resume el archivo que te envié.", "", "Un resumen.", "unservable", "archivo"),
    ("Mira este video y dime de qué trata.", "", "De gatos.", "unservable", "video"),
    ("EXPLICA por qué el mar es salado", "", "Otra respuesta.", "duplicate", "same instruction"),
    (
      "Resume este texto.",
      "El gato de mi vecina duerme en el sofá todo el día.",
      "Duerme.",
      "near_duplicate",
      "Jaccard",
    ),
    (
      "Explica brevemente a un niño pequeño por qué el mar es salado.",
      "",
      "Sal.",
      "rouge",
      "ROUGE-L 0.74",
    ),
  ],
)
def test_each_filter_rejects_what_it_should(instruction, input_text, output, reason, detail):
  pool = F.InstructionPool("es")
  pool.add("Explica por qué el mar es salado.", "")
  pool.add("Resume el texto.", "El gato de mi vecina duerme en el sofá casi todo el día.")
  verdict = pool.check(instruction, input_text, output)
  assert verdict.reason == reason, verdict
  assert detail in verdict.detail
  assert not verdict.kept


@pytest.mark.parametrize(
  "instruction,input_text,output",
  [
    (
      "Agrega una coma donde haga falta.",
      "Voy a casa pero antes compro pan.",
      "Voy a casa, pero antes compro pan.",
    ),
    ("Escribe la frase en mayúsculas.", "la casa es verde", "LA CASA ES VERDE"),
    ("文を単語に区切ってください。", "あなたが好きです", "あなた が 好き です"),
  ],
)
def test_format_keeps_tasks_that_change_only_case_punctuation_or_spacing(
  instruction, input_text, output
):
  assert F.check_format(instruction, input_text, output) is None
  assert F.check_format(instruction, input_text, " " + input_text + "\n") is not None


def test_kept_candidate_reports_its_rouge():
  pool = F.InstructionPool("es")
  pool.add("Explica por qué el mar es salado.", "")
  verdict = pool.check("Enumera tres ríos de Sudamérica y su longitud.", "", "Amazonas...")
  assert verdict.kept and 0.0 <= verdict.rouge < 0.7


@pytest.mark.parametrize(
  "lang,text",
  [
    ("ja", "この写真に写っているものを説明してください。"),
    ("ko", "첨부한 사진을 설명해 주세요."),
    ("th", "อธิบายรูปภาพนี้"),
    ("ru", "Опиши эту картинку."),
    ("ar", "صف الصورة التالية."),
    ("de", "Beschreibe das Bild."),
    ("fr", "Décrivez cette photo."),
    ("pt", "Descreva a imagem."),
    ("id", "Jelaskan gambar ini."),
    ("vi", "Hãy mô tả hình ảnh này."),
    ("es", "Abre el fichero adjunto."),
    ("ja", "リンク先の記事を要約してください。"),
  ],
)
def test_unservable_in_every_language(lang, text):
  assert F.unservable_match(text, lang)


@pytest.mark.parametrize(
  "lang,text",
  [
    ("de", "Erkläre die Bildung von Wolken."),  # Bildung, not Bild
    ("vi", "Điều gì ảnh hưởng đến thời tiết?"),  # ảnh hưởng = influence
    ("th", "สภาพอากาศวันนี้เป็นอย่างไร"),  # สภาพ contains ภาพ
    ("ar", "تصور أنك تعيش في القرن الماضي."),  # تصور contains صور
    ("es", "Explica la fotosíntesis."),  # foto- as a prefix
    ("ja", "次のパラグラフを要約してください。"),  # パラグラフ = paragraph
  ],
)
def test_unservable_avoids_false_positives(lang, text):
  assert F.unservable_match(text, lang) is None


def test_unservable_words_count_in_the_instruction_links_anywhere():
  pool = F.InstructionPool("es")
  story = "Ayer saqué una foto del mar y la guardé en un archivo."
  assert pool.check("Resume el texto en una frase.", story, "Hizo una foto del mar.").kept
  verdict = pool.check("Resume el texto en una frase.", "Lee www.ejemplo.com/nota", "Nada.")
  assert verdict.reason == "unservable" and "www.ejemplo.com" in verdict.detail


def test_config_checks():
  with pytest.raises(ValueError, match="rouge_threshold must be in"):
    F.FilterConfig(rouge_threshold=1.5)
  strict = F.InstructionPool("es", F.FilterConfig(rouge_threshold=0.3))
  strict.add("Explica por qué el mar es salado.", "")
  assert strict.check("Explica por qué llueve en otoño.", "", "Por el frío.").reason == "rouge"
  lax = F.InstructionPool("es", F.FilterConfig(check_language=False))
  assert lax.check("Explain why the sea is salty.", "", "Rivers.").kept


def test_length_units():
  assert F.length_units("uno dos tres") == 3
  assert F.length_units("日本語です") == 2.5
  assert F.length_units("ภาษาไทย") == pytest.approx(7 / 4)


def test_seed_tasks_pass_every_filter():
  """The shipped seeds: >= 20 per MultiAlpaca language, varied types, each one passing the
  filters against the seeds before it (so the pool starts diverse)."""
  for lang in MULTIALPACA_LANGUAGES:
    path = pathlib.Path(DEFAULT_SEED_DIR) / f"{lang}.jsonl"
    seeds = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(seeds) >= 20, lang
    types = {s["type"] for s in seeds}
    assert {
      "open_qa",
      "rewriting",
      "classification",
      "extraction",
      "brainstorming",
      "translation",
    } <= types, (lang, types)
    pool = F.InstructionPool(lang)
    for s in seeds:
      verdict = pool.check(s["instruction"], s["input"] or "", s["output"])
      assert verdict.kept, (lang, s["instruction"], verdict)
      pool.add(s["instruction"], s["input"] or "")
  assert sorted(p[:-6] for p in os.listdir(DEFAULT_SEED_DIR)) == sorted(MULTIALPACA_LANGUAGES)
