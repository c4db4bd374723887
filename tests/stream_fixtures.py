"""Tiny already-tokenized seqio tasks for the stream, mixing and curriculum tests.

Documents are int lists whose first token is a unique id (>= 1000) so a test can tell every
document apart after packing; the tasks append eos = 2 like the real PolyLM tasks do. Token 0
(PolyLM's <unk>) appears inside documents on purpose.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

EOS = 2
VOCAB = seqio.PassThroughVocabulary(size=1 << 20, eos_id=EOS)
FEATURES = {"targets": seqio.Feature(VOCAB, add_eos=True, dtype=tf.int32)}


def make_docs(
  first_id: int, n: int, min_len: int = 3, max_len: int = 40, seed: int = 0
) -> list[list[int]]:
  rng = np.random.default_rng(seed + first_id)
  docs = []
  for k in range(n):
    length = int(rng.integers(min_len, max_len + 1))
    body = rng.integers(0, 900, size=length - 1)
    body[body == EOS] = 0
    docs.append([first_id + k] + body.tolist())
  return docs


def _ragged_ds(docs: Sequence[Sequence[int]]) -> tf.data.Dataset:
  lens = [len(d) for d in docs]
  flat = np.array([t for d in docs for t in d], np.int32)
  rt = tf.RaggedTensor.from_row_lengths(flat, np.array(lens, np.int64))
  return tf.data.Dataset.from_tensor_slices(rt).map(_as_example)


@tf.autograph.experimental.do_not_convert
def _as_example(x):
  return {"targets": x}


def register_int_task(name: str, splits: Mapping[str, Sequence[Sequence[int]]]) -> str:
  """A FunctionDataSource task (one 'file': host sharding happens at the examples)."""
  seqio.TaskRegistry.remove(name)

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    return _ragged_ds(splits[split])

  seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(dataset_fn, splits=list(splits)),
    preprocessors=[seqio.preprocessors.append_eos],
    output_features=FEATURES,
  )
  return name


@tf.autograph.experimental.do_not_convert
def _parse_line(line):
  return {"targets": tf.strings.to_number(tf.strings.split(line), tf.int32)}


def _parse(ds):
  return ds.map(_parse_line)


def register_file_task(
  name: str, directory: str, docs: Sequence[Sequence[int]], num_files: int
) -> str:
  """A TextLineDataSource task over `num_files` files (host sharding by whole files)."""
  os.makedirs(directory, exist_ok=True)
  paths = []
  for f in range(num_files):
    path = os.path.join(directory, f"{name}-{f:05d}-of-{num_files:05d}.txt")
    with open(path, "w") as fh:
      for d in docs[f::num_files]:
        fh.write(" ".join(map(str, d)) + "\n")
    paths.append(path)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
    name,
    source=seqio.TextLineDataSource({"train": paths}),
    preprocessors=[_parse, seqio.preprocessors.append_eos],
    output_features=FEATURES,
  )
  return name


def split_docs(tokens: np.ndarray) -> list[tuple[int, ...]]:
  """Cut a token stream after every eos (a trailing partial document comes last)."""
  out, cur = [], []
  for t in tokens.tolist():
    cur.append(t)
    if t == EOS:
      out.append(tuple(cur))
      cur = []
  if cur:
    out.append(tuple(cur))
  return out


def stream_tokens(batches: Sequence[dict]) -> np.ndarray:
  """Reassemble the flat token stream from consecutive batches (rows overlap by one)."""
  first = batches[0]["inputs"][0, :1]
  return np.concatenate([first] + [b["targets"].reshape(-1) for b in batches])


def label_by_document(
  batches: Sequence[dict],
  doc_lang: Mapping[tuple, int],
  en: int,
  num_langs: int,
  after_switch: bool = False,
) -> np.ndarray:
  """Tokens per (batch, language), labelled by looking every packed document up in
  `doc_lang` (document tokens with eos -> language index), not by the batch's `langs`.

  The stream interleaves two lanes (non-English, English); each is reassembled with `langs`
  and cut after every eos, and a piece missing from `doc_lang` fails the check (so a wrong
  lane label cannot pass). A lane's last, unfinished document is not counted. after_switch:
  batches[0] is a stage's first batch after a switch, so its first input is the old stage's.
  """
  flat = stream_tokens(batches)
  langs = np.concatenate([[-1]] + [b["langs"].reshape(-1) for b in batches])
  batch_of = np.concatenate([[-1]] + [np.full(b["targets"].size, k) for k, b in enumerate(batches)])
  if after_switch:
    flat, langs, batch_of = flat[1:], langs[1:], batch_of[1:]
  counts = np.zeros((len(batches), num_langs))
  for lane in (langs != en, langs == en):  # langs[0] = -1: the first token is lane 0's
    toks, where = flat[lane], batch_of[lane]
    start = 0
    for end in np.flatnonzero(toks == EOS):
      doc = tuple(toks[start : end + 1].tolist())
      assert doc in doc_lang, f"packed document not in the corpus: {doc[:8]}"
      ks, cs = np.unique(where[start : end + 1], return_counts=True)
      keep = ks >= 0
      counts[ks[keep], doc_lang[doc]] += cs[keep]
      start = end + 1
  return counts
