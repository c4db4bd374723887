"""The PolyLM SeqIO vocabulary: exact round trips in all 18 scripts and through byte fallback,
id 0 never produced (so seqio's pad convention is safe), pad-safe decoding, layout and
model-size checks."""

import pickle

import numpy as np
import pytest
import seqio
import sentencepiece as spm
import tensorflow as tf

from polylm_jax import tokenizer_training, paths, vocab

SCRIPTS = {
  "zh": "今天天气很好，我们去公园散步吧。",
  "en": "The quick brown fox jumps over the lazy dog.",
  "es": "¿Dónde está la biblioteca? ¡Qué día tan bonito!",
  "fr": "L'été dernier, nous sommes allés à la mer en Bretagne.",
  "pt": "A educação é a arma mais poderosa do coração.",
  "ru": "Съешь же ещё этих мягких французских булок, да выпей чаю.",
  "de": "Größere Übungen für Straßenbahnfahrer müssen geplant werden.",
  "it": "Perché non andiamo al cinema più tardi? È già ora.",
  "ar": "اللغة العربية جميلة جداً، وأحب القراءة كل يوم.",
  "ja": "私は東京で日本語を勉強しています。カタカナもひらがなも好きです。",
  "ko": "안녕하세요, 저는 한국어를 배우고 있습니다.",
  "th": "ภาษาไทยเป็นภาษาที่สวยงามมาก และมีวรรณยุกต์ห้าเสียง",
  "vi": "Tiếng Việt có nhiều dấu thanh: sắc, huyền, hỏi, ngã, nặng.",
  "id": "Saya suka makan nasi goreng di pagi hari bersama keluarga.",
  "nl": "Het is vandaag een mooie dag om langs de gracht te fietsen.",
  "pl": "Zażółć gęślą jaźń — to zdanie zawiera wszystkie polskie znaki.",
  "tr": "Çocuklar bahçede oynuyor; ağaçlar yeşil ve çok güzel.",
  "he": "שלום עולם, אני לומד עברית כבר שנתיים.",
}
# Characters no 4096-piece demo vocabulary holds: they must come back through byte fallback.
OUT_OF_VOCAB = {
  "emoji": "Party 🎉 with family 👨‍👩‍👧‍👦, thumbs 👍🏽 and flags 🇯🇵🇧🇷.",
  "rare_cjk": "𠀀𪚥𰻞𠮷 龘靐 〇",
  "symbols": "∑∫√∞ ≠ ½ € ₿ © ™ 🂡",
  "combining_and_invisible": "e\u0301 n\u0303 a\u200bb\u200dc\ufeff \u200fשלום\u200e",
  "whitespace": "  two  spaces\n\nnewlines\ttab \r\n trailing ",
  "code": "def f(x):\n    return x ** 2  # 注释 1234567890\n",
  "specials_as_text": "<unk> <s> </s> <pad> <0x0A>",
  "control": "\x01\x07\x1b[0m\x7f",
}
ALL_TEXTS = {**SCRIPTS, **OUT_OF_VOCAB}


@pytest.fixture(scope="module")
def demo():
  return vocab.get_vocabulary()


@pytest.mark.parametrize("name", sorted(ALL_TEXTS))
def test_round_trip_and_never_id_zero(demo, name):
  text = ALL_TEXTS[name]
  ids = demo.encode(text)
  assert 0 not in ids, f"{name}: encoding produced id 0 (<unk>): {ids}"
  assert all(3 <= i < demo.vocab_size for i in ids)  # no specials from text either
  assert demo.decode(ids) == text
  tf_ids = demo.encode_tf(tf.constant(text)).numpy().tolist()
  assert tf_ids == ids
  # tf_text's detokenizer drops whitespace at the very start of a text (documented in vocab.py).
  assert demo.decode_tf(tf.constant(ids)).numpy().decode() == text.lstrip(" ")


def test_out_of_vocab_characters_use_byte_pieces(demo):
  sp = demo.tokenizer
  ids = demo.encode("a𪚥")
  pieces = [sp.id_to_piece(i) for i in ids]
  assert [sp.is_byte(i) for i in ids].count(True) == 4, pieces  # one piece per UTF-8 byte
  assert pieces[-4:] == ["<0xF0>", "<0xAA>", "<0x9A>", "<0xA5>"]


def test_known_limit_the_whitespace_meta_symbol_decodes_as_space(demo):
  """SentencePiece writes spaces as U+2581 '▁', so a literal '▁' comes back as a space (the same
  holds for the released PolyLM tokenizer). It still never encodes to id 0."""
  ids = demo.encode("a▁b")
  assert 0 not in ids and demo.decode(ids) == "a b"


def test_decode_treats_zero_as_padding(demo):
  ids = demo.encode(SCRIPTS["ja"])
  assert demo.decode(ids + [vocab.EOS_ID] + [0] * 5) == SCRIPTS["ja"]
  assert demo.decode([0, 0] + ids) == SCRIPTS["ja"]
  batch = tf.constant([ids + [vocab.EOS_ID, 0, 0], ids[:2] + [0] * (len(ids) + 1)])
  out = demo.decode_tf(batch).numpy()
  assert out[0].decode() == SCRIPTS["ja"] and out[1].decode() == demo.decode(ids[:2])
  # Tokens after eos are dropped by seqio's decode_tf (it pads them with 0): no "⁇" appears.
  assert "⁇" not in demo.decode_tf(tf.constant(ids + [vocab.EOS_ID] + ids)).numpy().decode()


def test_seqio_loss_weights_keep_every_real_token(demo):
  """seqio's LM converter derives loss weights from token != 0: with PolyLM's vocabulary no
  real token is lost, because no text encodes to 0."""
  texts = list(ALL_TEXTS.values())
  ds = tf.data.Dataset.from_tensor_slices({"targets": texts})
  feats = {"targets": seqio.Feature(demo, add_eos=True)}
  ds = seqio.preprocessors.tokenize(ds, feats)
  ds = seqio.preprocessors.append_eos(ds, feats)
  lengths = [len(ex["targets"]) for ex in ds.as_numpy_iterator()]
  conv = seqio.LMFeatureConverter(pack=False)
  out = conv(ds, {"targets": 512})
  weights = [int(ex["decoder_loss_weights"].sum()) for ex in out.as_numpy_iterator()]
  assert weights == lengths


def test_layout_check_rejects_a_t5_style_model(tmp_path):
  lines = iter(["some training text for a tiny model"] * 50)
  spm.SentencePieceTrainer.train(
    sentence_iterator=lines,
    model_prefix=str(tmp_path / "t5"),
    vocab_size=20,
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    hard_vocab_limit=False,
    minloglevel=2,
  )
  v = vocab.PolyLMVocabulary(str(tmp_path / "t5.model"))
  with pytest.raises(ValueError) as e:
    v.encode("text")
  msg = str(e.value)
  assert "t5.model" in msg and "id 0 must be '<unk>'" in msg and "byte_fallback" in msg


def test_missing_model_file_is_named(tmp_path):
  v = vocab.get_vocabulary(str(tmp_path / "absent.model"))
  with pytest.raises(FileNotFoundError, match="absent.model"):
    v.vocab_size  # noqa: B018


def test_project_trained_model_works_as_vocabulary(tmp_path):
  path = tokenizer_training.train_tokenizer(
    str(paths.SAMPLE_CORPUS_DIR / "parallel" / "*.txt"),
    str(tmp_path / "p.model"),
    vocab_size=3000,
  )
  v = vocab.get_vocabulary(path)
  assert v.vocab_size == 3000 and (v.unk_id, v.bos_id, v.eos_id) == (0, 1, 2)
  for text in SCRIPTS.values():
    assert v.decode(v.encode(text)) == text


def test_check_vocab_matches(demo):
  vocab.check_vocab_matches(demo, demo.vocab_size)
  vocab.check_vocab_matches(demo, demo.vocab_size + 128)  # padded embedding is fine
  with pytest.raises(ValueError) as e:
    vocab.check_vocab_matches(demo, 1000, where="gin PolyLMConfig.vocab_size")
  msg = str(e.value)
  assert "gin PolyLMConfig.vocab_size" in msg and str(demo.vocab_size) in msg and "1000" in msg
  assert demo.sentencepiece_model_file in msg
  with pytest.raises(ValueError, match="256000 pieces.*vocab_size is 4096"):
    vocab.check_vocab_matches(256000, 4096)


def test_default_vocabulary_is_lazy_pickles_and_cannot_be_switched_once_used(demo):
  assert vocab.get_vocabulary() is demo
  assert demo.vocab_size == tokenizer_training.DEMO_VOCAB_SIZE
  clone = pickle.loads(pickle.dumps(demo))
  assert clone == demo and clone.encode("hola") == demo.encode("hola")
  with pytest.raises(RuntimeError, match="already in use"):
    vocab.set_default_vocabulary_path("/elsewhere/tokenizer.model")
  vocab.set_default_vocabulary_path(demo.sentencepiece_model_file)  # same file: fine
  vocab.set_default_vocabulary_path(None)


def test_ids_fit_int32_features(demo):
  ids = np.asarray(demo.encode(SCRIPTS["ko"]), np.int32)
  assert ids.dtype == np.int32 and ids.max() < demo.vocab_size
