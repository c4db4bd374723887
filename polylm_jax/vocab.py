"""The SeqIO vocabulary of PolyLM: a SentencePiece model with the released layout.

Layout (the released `tokenizer.model` and every model `polylm_jax.tokenizer` trains):
<unk>=0, <s>=1, </s>=2 (eos), byte-fallback pieces <0x00>..<0xFF>, no pad piece.
`PolyLMVocabulary` checks that layout when the model is loaded and refuses others (a T5
model, where 0 is pad and 1 is eos, would silently break eos=2).

Id 0: seqio pads with 0 and t5x-style feature converters derive loss weights from
`token != 0`. In PolyLM id 0 is <unk>. This is safe because:
  1. Encoding never yields 0: with byte fallback, SentencePiece spells any character it has
     no piece for as UTF-8 byte pieces instead of <unk>, and the literal texts "<unk>",
     "</s>" are split into ordinary pieces (tests/test_vocab.py checks all 18 scripts,
     emoji, rare CJK, control characters and those literals).
  2. The contract with the packer: `polylm_jax.stream` emits explicit loss weights (1 on
     every real token, 0 on padding) and never derives them from `token != 0`. A consumer
     that does derive them (seqio's LMFeatureConverter) still loses nothing, by 1.
  3. Decoding treats 0 as padding and drops it (python and TF paths), so padded model
     outputs and seqio's after-eos padding decode to clean text.
Round trips are exact (identity normalisation) in Python: decode(encode(t)) == t, except that
a literal U+2581 '▁' (SentencePiece's space symbol) comes back as a space, as with the
released tokenizer. The TF path (tf_text) also drops spaces at the very start of a text.
Tokenized task features end with eos (2); the packer concatenates them (SPEC section 3).

Importing this module imports seqio (and TensorFlow, about 9 s): model-side code imports it
only where a vocabulary is needed; `polylm_jax/__init__` does not.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Callable
from typing import Union

import seqio
import tensorflow as tf

from polylm_jax import tokenizer_training as tokenizer_lib

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
PAD_ID = 0  # seqio's padding id; never produced by encoding (see the module docstring)
_SPECIALS = {UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>"}

ModelFile = Union[str, Callable[[], str]]


def check_layout(sp, where: str) -> None:
  """Raise ValueError unless `sp` (a SentencePieceProcessor) has the PolyLM layout."""
  problems = []
  for i, piece in _SPECIALS.items():
    if sp.GetPieceSize() <= i or sp.IdToPiece(i) != piece:
      got = sp.IdToPiece(i) if sp.GetPieceSize() > i else "nothing"
      problems.append(f"id {i} must be {piece!r}, is {got!r}")
  if sp.unk_id() != UNK_ID or sp.bos_id() != BOS_ID or sp.eos_id() != EOS_ID:
    problems.append(
      f"unk/bos/eos ids are {sp.unk_id()}/{sp.bos_id()}/{sp.eos_id()}, expected 0/1/2"
    )
  if sp.PieceToId("<0x0A>") == sp.unk_id():
    problems.append("no byte-fallback pieces (<0x0A> missing): train with byte_fallback")
  if problems:
    raise ValueError(f"{where}: not a PolyLM tokenizer layout: " + "; ".join(problems))


class PolyLMVocabulary(seqio.SentencePieceVocabulary):
  """SentencePieceVocabulary with the PolyLM layout checks and pad-safe decoding.

  `model_file` may be a path or a zero-argument callable returning one; the callable runs on
  first use (so registering tasks does not train the demo tokenizer).
  """

  def __init__(self, model_file: ModelFile, validate: bool = True):
    self._model_file_fn = model_file if callable(model_file) else None
    self._validate = validate
    self._resolve_lock = threading.Lock()
    super().__init__(model_file if isinstance(model_file, str) else "", extra_ids=0)

  def __getstate__(self):
    state = super().__getstate__()
    state.pop("_resolve_lock", None)
    return state

  def __setstate__(self, state):
    super().__setstate__(state)
    self._resolve_lock = threading.Lock()

  @property
  def sentencepiece_model_file(self) -> str:
    if not self._sentencepiece_model_file:
      with self._resolve_lock:
        if not self._sentencepiece_model_file:
          self._sentencepiece_model_file = self._model_file_fn()
    return self._sentencepiece_model_file

  def _model_context(self):
    if self._model:
      return self._model
    path = self.sentencepiece_model_file
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"SentencePiece model not found: {path}")
    context = super()._model_context()
    if self._validate:
      check_layout(context.tokenizer, where=path)
    return context

  def _decode(self, ids):
    return self.tokenizer.DecodeIds([int(i) for i in ids if int(i) != PAD_ID])

  def _decode_tf(self, ids):
    ids = tf.convert_to_tensor(ids)
    return self.tf_tokenizer.detokenize(tf.ragged.boolean_mask(ids, tf.not_equal(ids, PAD_ID)))

  def __str__(self) -> str:
    return f"PolyLMVocabulary(file={self.sentencepiece_model_file}, size={self.vocab_size})"


@functools.lru_cache(maxsize=None)
def _vocabulary_for(path: str) -> PolyLMVocabulary:
  return PolyLMVocabulary(path)


_default_path: str | None = None


def set_default_vocabulary_path(path: str | None) -> None:
  """Make `get_vocabulary()` (and so every registered task) use `path` instead of the demo
  tokenizer; also settable with $POLYLM_JAX_VOCAB. Call before any task is read."""
  global _default_path
  resolved = _default_vocabulary._sentencepiece_model_file
  if resolved and path is not None and os.path.abspath(path) != os.path.abspath(resolved):
    raise RuntimeError(
      f"the default vocabulary is already in use with {resolved}; set the vocabulary path "
      f"({path}) before any task is read, or pass a vocabulary to the task explicitly"
    )
  _default_path = path


def default_vocabulary_path() -> str:
  """The model file of `get_vocabulary()`: the one set, else $POLYLM_JAX_VOCAB, else the demo
  tokenizer (trained from the sample corpus on first use, then cached)."""
  return _default_path or os.environ.get("POLYLM_JAX_VOCAB") or tokenizer_lib.train_demo_tokenizer()


_default_vocabulary = PolyLMVocabulary(default_vocabulary_path)


def get_vocabulary(path: str | None = None) -> PolyLMVocabulary:
  """The vocabulary of a model file; with no path, the default (see default_vocabulary_path).

  The default is resolved lazily, on first encode/decode, so that it can be registered in
  tasks at import time without training anything.
  """
  if path is None:
    return _default_vocabulary
  return _vocabulary_for(str(path))


def check_vocab_matches(
  vocab: seqio.Vocabulary | int, model_vocab_size: int, where: str = "model config vocab_size"
) -> None:
  """Raise ValueError if the vocabulary has ids the model's embedding cannot hold.

  A model vocab larger than the tokenizer's is fine (embeddings are often padded to a
  multiple of 128); a smaller one would index past the embedding table.
  """
  size = vocab if isinstance(vocab, int) else vocab.vocab_size
  name = "" if isinstance(vocab, int) else f" ({getattr(vocab, 'sentencepiece_model_file', vocab)})"
  if model_vocab_size <= 0:
    raise ValueError(f"{where}: vocab_size must be positive, got {model_vocab_size}")
  if size > model_vocab_size:
    raise ValueError(
      f"{where}: the tokenizer{name} has {size} pieces but the model's vocab_size is "
      f"{model_vocab_size}; use a model with vocab_size >= {size} (e.g. "
      f"config.replace(vocab_size={size})) or the tokenizer the model was trained with"
    )


# -- a checkpoint's tokenizer ----------------------------------------------------------------------

TOKENIZER_FILE = "tokenizer.model"  # = hf.TOKENIZER_FILE


def fingerprint(vocab: seqio.Vocabulary) -> str:
  """Names a vocabulary by content: a SentencePiece model's hash, else its type and size.

  The trainer stores this in every checkpoint (`stream_state["trainer"]["vocabulary"]`);
  infer, eval and chat compare it with the tokenizer they were given.
  """
  path = getattr(vocab, "sentencepiece_model_file", None)
  if path:
    with tf.io.gfile.GFile(path, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return f"sentencepiece:{digest}:{vocab.vocab_size}"
  return f"{type(vocab).__name__}:{vocab.vocab_size}:eos={getattr(vocab, 'eos_id', None)}"


def for_checkpoint(
  checkpoint_path: str | os.PathLike,
  vocab_path: str | None = None,
  *,
  step: int | None = None,
  flag: str = "VOCAB_PATH",
) -> PolyLMVocabulary:
  """The tokenizer to use with a checkpoint, refused if it is not the one the model learnt.

  `vocab_path` (named `flag` in errors), else `tokenizer.model` beside the checkpoint, else
  the default vocabulary. A run checkpoint stores its vocabulary's fingerprint: a tokenizer
  with another fingerprint would turn every id into the wrong piece, so it is an error.
  """
  from polylm_jax import checkpoints  # Orbax: only when a checkpoint is read

  if vocab_path:
    if not os.path.isfile(vocab_path):
      raise FileNotFoundError(f"{flag}={vocab_path}: no such file")
    path: str | None = vocab_path
  else:
    path = checkpoints.tokenizer_beside(checkpoint_path)
  vocab = get_vocabulary(path)
  saved = checkpoints.saved_vocabulary(checkpoint_path, step)
  if saved is not None and saved != fingerprint(vocab):
    raise ValueError(
      f"{flag}: the tokenizer {vocab.sentencepiece_model_file} ({fingerprint(vocab)}) is not "
      f"the one {checkpoint_path} was trained with ({saved}); pass that model's "
      f"{TOKENIZER_FILE} with {flag}"
    )
  return vocab


def save_tokenizer(vocab: PolyLMVocabulary | str, directory: str | os.PathLike) -> str:
  """Copies a vocabulary's SentencePiece model to `directory/tokenizer.model` (atomically).

  The trainer calls it for its MODEL_DIR, so infer, eval, chat and convert find the run's
  tokenizer without flags. Returns the path written.
  """
  from polylm_jax.files import atomic_write

  src = vocab if isinstance(vocab, str) else vocab.sentencepiece_model_file
  with tf.io.gfile.GFile(src, "rb") as f:
    data = f.read()
  dest = os.path.join(os.fspath(directory), TOKENIZER_FILE)
  if os.path.isfile(dest):
    with open(dest, "rb") as f:
      if f.read() == data:
        return dest
  return str(atomic_write(dest, data))
