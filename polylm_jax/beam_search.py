"""Beam search: a port of transformers' vectorised `GenerationMixin._beam_search`.

Kept step for step (and constant for constant: -1e9 marks impossible beams) so that the
tokens equal HF's `generate(num_beams=k, do_sample=False)`. Per batch row: the 2k best
continuations of all running beams; those ending in eos (or reaching max_new_tokens) and
ranked in the top k become finished hypotheses scored `sum logprob / new_len **
length_penalty`; the k best unfinished ones run on. `early_stopping`: True stops a row once
k hypotheses are finished; False / "never" use HF's heuristics on whether a running beam
can still beat the worst finished one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from polylm_jax.decode_stack import DecodeStack
from polylm_jax.logits_processors import apply_repetition_penalty, seen_mask

NEG = -1.0e9  # HF's score for impossible beams; identical so that ranking matches.


def _take_beams(x: jax.Array, idx: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - idx.ndim)), axis=1)


def _step(stack: DecodeStack, s: Any, max_new: int, st: dict[str, Any], logits: jax.Array):
  b, k = st["running_scores"].shape
  k2, v = 2 * k, logits.shape[-1]
  t, eos = st["step"], st["knobs"]["eos"]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  if s.repetition_penalty != 1.0:  # as HF, on log-probabilities here
    log_probs = apply_repetition_penalty(log_probs, st["seen"], st["knobs"]["repetition_penalty"])
  log_probs = (log_probs.reshape(b, k, v) + st["running_scores"][:, :, None]).reshape(b, k * v)
  topk_lp, topk_idx = jax.lax.top_k(log_probs, k2)
  parent, ids = topk_idx // v, (topk_idx % v).astype(jnp.int32)
  topk_seq = _take_beams(st["running_seq"], parent)
  topk_seq = jnp.where(jnp.arange(max_new) == t, ids[:, :, None], topk_seq)
  hits = (ids == eos) | (t + 1 >= max_new)

  # The k best continuations that did not just finish run on.
  running_lp = topk_lp + hits.astype(jnp.float32) * NEG
  keep = jax.lax.top_k(running_lp, k)[1]

  # Finished hypotheses: merge the new ones (top k only) with the old, keep the best k.
  did_finish = hits & (jnp.arange(k2) < k)[None]
  fin_lp = topk_lp / (jnp.float32(t + 1) ** jnp.float32(s.length_penalty))
  full = jnp.all(st["finished"], axis=-1, keepdims=True) & (s.early_stopping is True)
  fin_lp = fin_lp + full.astype(jnp.float32) * NEG
  fin_lp = fin_lp + (~st["unsat"]).astype(jnp.float32) * NEG
  fin_lp = fin_lp + (~did_finish).astype(jnp.float32) * NEG
  merged_scores = jnp.concatenate([st["beam_scores"], fin_lp], axis=1)
  best = jax.lax.top_k(merged_scores, k)[1]
  new = dict(
    st,
    step=t + 1,
    running_seq=_take_beams(topk_seq, keep),
    running_scores=_take_beams(running_lp, keep),
    sequences=_take_beams(jnp.concatenate([st["sequences"], topk_seq], 1), best),
    beam_scores=_take_beams(merged_scores, best),
    finished=_take_beams(jnp.concatenate([st["finished"], did_finish], 1), best),
  )

  rows = (jnp.arange(b)[:, None] * k + _take_beams(parent, keep)).reshape(-1)
  new["cache"] = stack.take_rows(st["cache"], rows)
  if "seen" in st:
    new_tokens = new["running_seq"][:, :, t].reshape(-1)
    new["seen"] = st["seen"][rows].at[jnp.arange(b * k), new_tokens].set(True)

  # Can a running beam still beat the worst finished hypothesis? (HF's heuristic.)
  if s.early_stopping == "never" and s.length_penalty > 0:
    best_len = jnp.float32(max_new)
  else:
    best_len = jnp.float32(t + 1)
  best_running = new["running_scores"][:, :1] / best_len ** jnp.float32(s.length_penalty)
  worst_finished = jnp.where(new["finished"], jnp.min(new["beam_scores"], 1, keepdims=True), NEG)
  new["unsat"] = st["unsat"] & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
  open_beam = ~(jnp.all(new["finished"]) & (s.early_stopping is True))
  new["go"] = jnp.any(new["unsat"]) & open_beam & ~jnp.all(hits)
  return new


def beam_search(
  stack: DecodeStack,
  s: Any,
  max_new: int,
  knobs: dict[str, Any],
  tokens: jax.Array,
  positions: jax.Array,
  segment_ids: jax.Array,
  prompt_lens: jax.Array,
  active: jax.Array,
) -> tuple[jax.Array, jax.Array]:
  """Best hypothesis [B, max_new] (eos-filled after its end) and its score, per row.

  Inactive rows (batch padding) count as finished from the start. Traceable; jit outside.
  """
  k = s.num_beams
  logits, cache = stack.prefill(tokens, positions, segment_ids, prompt_lens)
  b = tokens.shape[0]
  rep = lambda x: jnp.repeat(x, k, axis=0)
  st = dict(
    cache=stack.repeat_rows(cache, k),
    step=jnp.int32(0),
    lens=rep(prompt_lens),
    knobs=knobs,
    running_seq=jnp.full((b, k, max_new), knobs["eos"], jnp.int32),
    running_scores=jnp.zeros((b, k), jnp.float32).at[:, 1:].set(NEG),
    beam_scores=jnp.full((b, k), NEG, jnp.float32),
    finished=jnp.broadcast_to(~active[:, None], (b, k)),
    unsat=active[:, None],
    go=jnp.bool_(True),
  )
  st["sequences"] = st["running_seq"]
  if s.repetition_penalty != 1.0:
    st["seen"] = rep(seen_mask(tokens, segment_ids, stack.config.vocab_size))
  st = _step(stack, s, max_new, st, rep(logits))

  def cond(st):
    return st["go"] & (st["step"] < max_new)

  def body(st):
    t = st["step"]
    prev = st["running_seq"][:, :, t - 1].reshape(-1, 1)
    logits, cache = stack(st["cache"], prev, (st["lens"] + t - 1)[:, None], jnp.ones_like(prev))
    return _step(stack, s, max_new, dict(st, cache=cache), logits)

  st = jax.lax.while_loop(cond, body, st)
  return st["sequences"][:, 0], st["beam_scores"][:, 0]
