"""polylm_jax/langid.py: offline language identification."""

import pytest

from polylm_jax import langid

SENTENCES = {
  "es": "¿Puedes explicar por qué los días son más largos en verano?",
  "pt": "Você pode explicar por que os dias são mais longos no verão?",
  "fr": "Pouvez-vous expliquer pourquoi les jours sont plus longs en été ?",
  "de": "Kannst du erklären, warum die Tage im Sommer länger sind?",
  "id": "Bisakah kamu menjelaskan mengapa siang hari lebih panjang pada musim panas?",
  "vi": "Bạn có thể giải thích tại sao ngày mùa hè lại dài hơn không?",
  "en": "Can you explain why the days are longer in summer?",
  "ru": "Можешь объяснить, почему летом дни длиннее?",
  "ar": "هل يمكنك أن تشرح لماذا تكون الأيام أطول في الصيف؟",
  "ja": "夏に日が長くなるのはなぜか説明してください。",
  "zh": "你能解释一下为什么夏天白天更长吗？",
  "ko": "여름에 낮이 더 긴 이유를 설명해 줄 수 있나요?",
  "th": "ช่วยอธิบายหน่อยว่าทำไมกลางวันในฤดูร้อนจึงยาวกว่า",
  "he": "אתה יכול להסביר למה הימים ארוכים יותר בקיץ?",
}


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_langid_identifies_each_language(lang):
  assert langid.identify(SENTENCES[lang]).lang == lang
  assert langid.is_language(SENTENCES[lang], lang)
  others = [c for c in SENTENCES if c != lang]
  assert not any(langid.is_language(SENTENCES[lang], o) for o in others)


def test_langid_mixed_scripts_and_unknown():
  # a Japanese instruction quoting English is Japanese; kana decides ja vs zh
  assert langid.identify("「Dog is barking.」に冠詞をつけてください。").lang == "ja"
  assert langid.identify("把这句话翻译成英文：Good morning").lang == "zh"
  assert langid.identify("12345 !!! ...").lang == langid.UNKNOWN
  # a short Latin text with no profile word is undecided: not rejected for a Latin language
  assert langid.identify("Zxqv blorf").lang == langid.UNKNOWN
  assert langid.is_language("Zxqv blorf", "es") and not langid.is_language("Zxqv blorf", "ja")
