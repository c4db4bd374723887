"""The built-in PolyLM pre-training tasks, registered on import.

Monolingual, `polylm_{lang}_{source}` for each of the 18 languages:
  sample     the built-in corpus: parallel/{lang}.txt sentences and documents/{lang}.txt
             documents, each non-blank line one example. Every 10th line (by index, the
             same lines in every language) is the "validation" split, the rest "train".
  mc4        TFDS c4/multilingual:3.1.0, split {lang} ("iw" for Hebrew) / {lang}-validation
  wiki40b    TFDS wiki40b/{lang}:1.3.0 ("zh-cn" for Chinese), markers turned into newlines
  wikipedia  TFDS wikipedia/20230601.{lang}:1.0.0, title line + article text
Bilingual, `polylm_bitext_{xx}_en_{source}` (xx = the other 17 languages; every pair is with
English, as in the TFDS corpora; other pairs of the sample corpus: `register_sample_bitext`):
  sample       aligned lines of parallel/{xx}.txt and parallel/en.txt (same holdout)
  ted          TFDS ted_multi_translate:1.1.0 (all 17)
  wmt13..19    TFDS wmt{yy}_translate/{xx}-en:1.0.0, the newest year that has the pair:
               de, ru, zh -> wmt19; tr -> wmt18; fr -> wmt15; es -> wmt13
  para_crawl   TFDS para_crawl/en{xx}:1.2.0 for de, es, fr, it, nl, pl, pt
  opus         TFDS opus/subtitles:0.1.0 (de-en only: the only pair TFDS builds)
Bitext is rendered with registry.DEFAULT_BITEXT_TEMPLATES in both directions.

Nothing here reads data or trains the tokenizer at import; TFDS tasks need prepared data in
$TFDS_DATA_DIR (tests use tfds.testing.mock_data).
"""

from __future__ import annotations

import functools

import seqio
import tensorflow as tf

from polylm_jax.paths import SAMPLE_CORPUS_DIR
from tasks import registry, sources
from tasks.languages import LANGUAGE_CODES, check_language

SAMPLE_HOLDOUT_EVERY = 10
MC4_TFDS = "c4/multilingual:3.1.0"
WIKI40B_TFDS = "wiki40b/{config}:1.3.0"
WIKIPEDIA_DATE = "20230601"
WIKIPEDIA_TFDS = "wikipedia/{date}.{config}:1.0.0"
TED_TFDS = "ted_multi_translate:1.1.0"
WMT_YEAR = {"de": 19, "ru": 19, "zh": 19, "tr": 18, "fr": 15, "es": 13}
PARA_CRAWL_LANGS = ("de", "es", "fr", "it", "nl", "pl", "pt")
OPUS_SUBSET = "subtitles"


def _tfds_splits(*names: str) -> dict[str, str]:
  return {n: n for n in names}


# -- per-source preprocessors: map raw examples to {"text"} or {"src", "tgt"} --------------


def clean_wiki40b(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Wiki40B marks structure with _START_ARTICLE_/_START_SECTION_/_START_PARAGRAPH_ lines and
  _NEWLINE_: keep the titles and text, as plain lines."""

  def clean(ex):
    text = ex["text"]
    text = tf.strings.regex_replace(text, r"_START_(ARTICLE|SECTION|PARAGRAPH)_\n", "")
    text = tf.strings.regex_replace(text, "_NEWLINE_", "\n")
    return {"text": tf.strings.strip(text)}

  return dataset.map(clean, num_parallel_calls=tf.data.AUTOTUNE)


def wikipedia_text(dataset: tf.data.Dataset) -> tf.data.Dataset:
  return dataset.map(
    lambda ex: {"text": tf.strings.join([ex["title"], ex["text"]], "\n")},
    num_parallel_calls=tf.data.AUTOTUNE,
  )


def pick_pair(dataset: tf.data.Dataset, src_key: str, tgt_key: str) -> tf.data.Dataset:
  """{src_key: str, tgt_key: str, ...} (a tfds Translation feature) -> {"src", "tgt"}."""
  return dataset.map(
    lambda ex: {"src": ex[src_key], "tgt": ex[tgt_key]}, num_parallel_calls=tf.data.AUTOTUNE
  )


def pick_ted_pair(dataset: tf.data.Dataset, src_label: str, tgt_label: str) -> tf.data.Dataset:
  """ted_multi_translate holds each talk sentence in many languages:
  {"translations": {"language": [...], "translation": [...]}}. Keep the sentences that have
  both languages, as {"src", "tgt"}."""

  def has_both(ex):
    langs = ex["translations"]["language"]
    return tf.logical_and(
      tf.reduce_any(tf.equal(langs, src_label)), tf.reduce_any(tf.equal(langs, tgt_label))
    )

  def pick(ex):
    langs, texts = ex["translations"]["language"], ex["translations"]["translation"]
    side = lambda label: texts[tf.argmax(tf.cast(tf.equal(langs, label), tf.int32))]  # noqa
    return {"src": side(src_label), "tgt": side(tgt_label)}

  return dataset.filter(has_both).map(pick, num_parallel_calls=tf.data.AUTOTUNE)


# -- registrations ------------------------------------------------------------------------


def sample_parallel_file(lang: str) -> str:
  return str(SAMPLE_CORPUS_DIR / "parallel" / f"{lang}.txt")


def sample_documents_file(lang: str) -> str:
  return str(SAMPLE_CORPUS_DIR / "documents" / f"{lang}.txt")


def register_sample_mono(lang: str, vocabulary: seqio.Vocabulary | None = None) -> str:
  files = [sample_parallel_file(lang), sample_documents_file(lang)]
  return registry.register_text_task(
    lang,
    "sample",
    {"train": files, "validation": files},
    holdout_every=SAMPLE_HOLDOUT_EVERY,
    vocabulary=vocabulary,
  )


def register_sample_bitext(
  src_lang: str,
  tgt_lang: str,
  templates=None,
  direction="both",
  vocabulary: seqio.Vocabulary | None = None,
) -> str:
  """`polylm_bitext_{src}_{tgt}_sample`: any two of the sample corpus languages."""
  name = registry.bitext_task_name(src_lang, tgt_lang, "sample")
  source = sources.AlignedTextSource(
    sample_parallel_file(src_lang),
    sample_parallel_file(tgt_lang),
    holdout_every=SAMPLE_HOLDOUT_EVERY,
    name=name,
  )
  return registry.register_bitext_task(
    src_lang,
    tgt_lang,
    "sample",
    source,
    templates=templates or registry.DEFAULT_BITEXT_TEMPLATES,
    direction=direction,
    vocabulary=vocabulary,
  )


def register_language_tasks(code: str, vocabulary: seqio.Vocabulary | None = None) -> list[str]:
  """Register every built-in monolingual source a language has, and its bitext with English
  where the corpora hold it. A new language: `register_language(Language(...))`, then this."""
  lang = check_language(code)
  names = [register_sample_mono(code, vocabulary)]
  if lang.mc4:
    names.append(
      registry.register_mono_task(
        code,
        "mc4",
        seqio.TfdsDataSource(
          MC4_TFDS, splits={"train": lang.mc4, "validation": f"{lang.mc4}-validation"}
        ),
        vocabulary=vocabulary,
      )
    )
  if lang.wiki40b:
    names.append(
      registry.register_mono_task(
        code,
        "wiki40b",
        seqio.TfdsDataSource(
          WIKI40B_TFDS.format(config=lang.wiki40b),
          splits=_tfds_splits("train", "validation", "test"),
        ),
        preprocessors=[clean_wiki40b],
        vocabulary=vocabulary,
      )
    )
  if lang.wikipedia:
    names.append(
      registry.register_mono_task(
        code,
        "wikipedia",
        seqio.TfdsDataSource(
          WIKIPEDIA_TFDS.format(date=WIKIPEDIA_DATE, config=lang.wikipedia),
          splits=_tfds_splits("train"),
        ),
        preprocessors=[wikipedia_text],
        vocabulary=vocabulary,
      )
    )
  if code != "en":
    names += register_english_bitext(code, vocabulary)
  return names


def register_english_bitext(code: str, vocabulary: seqio.Vocabulary | None = None) -> list[str]:
  """`polylm_bitext_{code}_en_*` for every source that has the pair."""
  lang, en = check_language(code), check_language("en")
  names = [register_sample_bitext(code, "en", vocabulary=vocabulary)]
  if lang.ted:
    names.append(
      registry.register_bitext_task(
        code,
        "en",
        "ted",
        seqio.TfdsDataSource(TED_TFDS, splits=_tfds_splits("train", "validation", "test")),
        preprocessors=[functools.partial(pick_ted_pair, src_label=lang.ted, tgt_label=en.ted)],
        vocabulary=vocabulary,
      )
    )
  if code in WMT_YEAR:
    year = WMT_YEAR[code]
    names.append(
      registry.register_bitext_task(
        code,
        "en",
        f"wmt{year}",
        seqio.TfdsDataSource(
          f"wmt{year}_translate/{code}-en:1.0.0", splits=_tfds_splits("train", "validation")
        ),
        preprocessors=[functools.partial(pick_pair, src_key=code, tgt_key="en")],
        vocabulary=vocabulary,
      )
    )
  if code in PARA_CRAWL_LANGS:
    names.append(
      registry.register_bitext_task(
        code,
        "en",
        "para_crawl",
        seqio.TfdsDataSource(f"para_crawl/en{code}:1.2.0", splits=_tfds_splits("train")),
        preprocessors=[functools.partial(pick_pair, src_key=code, tgt_key="en")],
        vocabulary=vocabulary,
      )
    )
  if code == "de":
    names.append(
      registry.register_bitext_task(
        "de",
        "en",
        "opus",
        seqio.TfdsDataSource(f"opus/{OPUS_SUBSET}:0.1.0", splits=_tfds_splits("train")),
        preprocessors=[functools.partial(pick_pair, src_key="de", tgt_key="en")],
        vocabulary=vocabulary,
      )
    )
  return names


def register_all(vocabulary: seqio.Vocabulary | None = None) -> list[str]:
  """Register the built-in tasks of the 18 languages (with `vocabulary`, or the default)."""
  return [name for code in LANGUAGE_CODES for name in register_language_tasks(code, vocabulary)]


BUILTIN_TASKS: tuple[str, ...] = tuple(register_all())
