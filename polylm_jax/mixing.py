"""Token-share mixing: per-language rates, stage mixtures and a token scheduler.

seqio mixture rates are per *example*; PolyLM's curriculum is stated in *tokens* (30% non-English
in stage 1, 60% in the last stage). So a stage mixture here is a set of components (seqio task +
the language its tokens count toward + a weight) whose token shares are fixed, and
`TokenScheduler` picks the next document by deficit over tokens so the realised share tracks the
target to within a few documents' worth of tokens, whatever the document lengths are.

A deficit over the whole stage still lets single batches swing (the first batches of a stage
held 0% to 90% non-English at a 30% target). So the stream splits each batch between two lanes,
non-English and English: `lane_quota` gives the non-English lane its exact token count per
batch (its stage total after batch k is round((k + 1) * N * share)), and a `TokenScheduler` per
lane picks the documents inside it.

Language rates follow the usual temperature rule p_i ∝ n_i^(1/T) over token counts n_i, applied
to the non-English languages only; English then takes exactly 1 - non_english_share.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

# SPEC section 4: the 18 PolyLM languages, in this order. `langs` in a batch indexes this tuple
# (then `add_language` codes, from index 18 on).
LANGUAGES: tuple[str, ...] = (
  "zh",
  "en",
  "es",
  "fr",
  "pt",
  "ru",
  "de",
  "it",
  "ar",
  "ja",
  "ko",
  "th",
  "vi",
  "id",
  "nl",
  "pl",
  "tr",
  "he",
)
ENGLISH = "en"
_LANGS: list[str] = list(LANGUAGES)
_LANG_INDEX = {lang: i for i, lang in enumerate(_LANGS)}
_CODE_RE = re.compile(r"^[a-z][a-z0-9]*$")


def languages() -> tuple[str, ...]:
  """The 18 PolyLM languages, then any added with `add_language`, in index order."""
  return tuple(_LANGS)


def add_language(code: str) -> int:
  """Give a new language code the next `langs` index (a no-op for a known one)."""
  if not isinstance(code, str) or not _CODE_RE.match(code) or code == "bitext":
    raise ValueError(f"language code must be lower-case letters/digits, got {code!r}")
  if code not in _LANG_INDEX:
    _LANG_INDEX[code] = len(_LANGS)
    _LANGS.append(code)
  return _LANG_INDEX[code]


def language_index(lang: str, *, where: str = "") -> int:
  """Index of `lang` in `languages()`; a clear error names `where` it came from."""
  if lang not in _LANG_INDEX:
    at = f" in {where}" if where else ""
    raise ValueError(
      f"unknown language code {lang!r}{at}; known: {', '.join(_LANGS)} "
      "(a new language needs polylm_jax.mixing.add_language first)"
    )
  return _LANG_INDEX[lang]


_MONO_RE = re.compile(r"^polylm_([a-z][a-z0-9]*)_")
_BITEXT_RE = re.compile(r"^polylm_bitext_([a-z][a-z0-9]*)_([a-z][a-z0-9]*)_")


def language_of_task(task_name: str) -> Optional[str]:
  """The language a task's tokens count toward, from the project's task naming convention.

  `polylm_{lang}_{source}` -> lang. `polylm_bitext_{src}_{tgt}_{source}` -> the non-English
  side (src if neither side is English): the published recipe does not say how bilingual
  tokens are counted, and a packed row cannot tell where one side ends, so a bitext document
  counts as a whole toward its non-English language. None when the name does not follow it.
  """
  m = _BITEXT_RE.match(task_name)
  if m:
    src, tgt = m.groups()
    return tgt if src == ENGLISH else src
  m = _MONO_RE.match(task_name)
  if m and m.group(1) in _LANG_INDEX:
    return m.group(1)
  return None


def is_bitext_task(task_name: str) -> bool:
  return bool(_BITEXT_RE.match(task_name))


@dataclasses.dataclass(frozen=True)
class Component:
  """One seqio task in a stage mixture.

  weight: relative share of this task among the components of the same language (e.g.
  up-weight high-quality or bilingual sources in the last stage). lang: defaults to the task
  name convention (see `language_of_task`).
  """

  task: str
  weight: float = 1.0
  lang: Optional[str] = None

  @property
  def language(self) -> str:
    lang = self.lang or language_of_task(self.task)
    if lang is None:
      raise ValueError(
        f"component {self.task!r}: cannot infer its language from the name; "
        "pass Component(task, lang=...)"
      )
    return lang


@dataclasses.dataclass(frozen=True)
class StageMixture:
  """A stage of pre-training: components and the exact non-English token share.

  token_counts: tokens per language used for the temperature rule; None means "count the
  train split of the components" (fine for local corpora; give real counts for web-scale
  TFDS corpora, counting those would read everything). language_shares: bypasses the rule
  with explicit per-language token shares (normalised; non_english_share then unused).
  """

  name: str
  components: tuple[Component, ...]
  non_english_share: Optional[float] = 0.3
  temperature: float = 1.0
  token_counts: Optional[Mapping[str, float]] = None
  language_shares: Optional[Mapping[str, float]] = None

  def __post_init__(self):
    object.__setattr__(self, "components", tuple(self.components))
    validate_mixture(self)


def validate_mixture(m: StageMixture) -> None:
  """Raises a ValueError naming the mixture and the field at fault."""
  if not m.components:
    raise ValueError(f"mixture {m.name!r}: no components")
  seen = set()
  for c in m.components:
    where = f"mixture {m.name!r}, component {c.task!r}"
    if c.task in seen:
      raise ValueError(f"{where}: task listed twice")
    seen.add(c.task)
    language_index(c.language, where=where)
    if not np.isfinite(c.weight) or c.weight < 0:
      raise ValueError(f"{where}: weight must be finite and >= 0, got {c.weight}")
  if all(c.weight == 0 for c in m.components):
    raise ValueError(f"mixture {m.name!r}: all component weights are zero")
  if m.language_shares is None:
    s = m.non_english_share
    if s is None or not 0.0 <= s <= 1.0:
      raise ValueError(f"mixture {m.name!r}: non_english_share must be in [0, 1], got {s}")
    if not m.temperature > 0:
      raise ValueError(f"mixture {m.name!r}: temperature must be > 0, got {m.temperature}")
    langs = {c.language for c in m.components if c.weight > 0}
    if s < 1 and ENGLISH not in langs:
      raise ValueError(
        f"mixture {m.name!r}: English share {1 - s:g} > 0 but no English component with weight > 0"
      )
    if s > 0 and not langs - {ENGLISH}:
      raise ValueError(
        f"mixture {m.name!r}: non-English share {s:g} > 0 but no "
        "non-English component with weight > 0"
      )
  else:
    _check_rates(m.language_shares, f"mixture {m.name!r} language_shares")
  if m.token_counts is not None:
    for lang in m.token_counts:
      language_index(lang, where=f"mixture {m.name!r} token_counts")


def _check_rates(rates: Mapping[str, float], where: str) -> None:
  for k, v in rates.items():
    language_index(k, where=where)
    if not np.isfinite(v) or v < 0:
      raise ValueError(f"{where}: rate for {k!r} must be finite and >= 0, got {v}")
  if not rates or sum(rates.values()) <= 0:
    raise ValueError(f"{where}: rates are all zero (or empty)")


def language_rates(
  token_counts: Mapping[str, float], temperature: float = 1.0, *, where: str = "token_counts"
) -> dict[str, float]:
  """p_i ∝ n_i^(1/T): T=1 keeps natural proportions, larger T flattens toward uniform."""
  _check_rates(token_counts, where)
  if not temperature > 0:
    raise ValueError(f"{where}: temperature must be > 0, got {temperature}")
  w = {k: float(v) ** (1.0 / temperature) if v > 0 else 0.0 for k, v in token_counts.items()}
  total = sum(w.values())
  return {k: v / total for k, v in w.items()}


def stage_language_shares(
  m: StageMixture, count_tokens: Optional[Callable[[str], float]] = None
) -> dict[str, float]:
  """Token share per language for a stage: English gets exactly 1 - non_english_share."""
  langs = sorted({c.language for c in m.components if c.weight > 0}, key=_LANG_INDEX.get)
  if m.language_shares is not None:
    shares = {k: v for k, v in m.language_shares.items() if v > 0}
    missing = set(shares) - set(langs)
    if missing:
      raise ValueError(
        f"mixture {m.name!r}: language_shares names {sorted(missing)} "
        "which have no component with weight > 0"
      )
    total = sum(shares.values())
    return {k: shares[k] / total for k in langs if k in shares}
  counts = dict(m.token_counts) if m.token_counts is not None else None
  if counts is None:
    if count_tokens is None:
      raise ValueError(f"mixture {m.name!r}: no token_counts and no way to count them")
    counts = {}
    for c in m.components:
      if c.weight > 0:
        counts[c.language] = counts.get(c.language, 0.0) + float(count_tokens(c.task))
  non_en = {k: counts.get(k, 0.0) for k in langs if k != ENGLISH}
  missing = [k for k, v in non_en.items() if v <= 0]
  if missing:
    raise ValueError(
      f"mixture {m.name!r}: no token count for languages {missing} "
      "(a task that yields nothing, or token_counts lacks them)"
    )
  shares: dict[str, float] = {}
  s = float(m.non_english_share)
  if ENGLISH in langs and s < 1:
    shares[ENGLISH] = 1.0 - s
  if non_en and s > 0:
    for k, p in language_rates(non_en, m.temperature, where=f"mixture {m.name!r}").items():
      shares[k] = s * p
  return shares


def component_shares(m: StageMixture, lang_shares: Mapping[str, float]) -> list[float]:
  """Token share per component (in m.components order): the language share split by weight."""
  per_lang: dict[str, float] = {}
  for c in m.components:
    per_lang[c.language] = per_lang.get(c.language, 0.0) + c.weight
  out = []
  for c in m.components:
    lw = per_lang[c.language]
    out.append(lang_shares.get(c.language, 0.0) * c.weight / lw if lw > 0 else 0.0)
  total = sum(out)
  return [x / total for x in out]


def stable_u64(*parts: object) -> int:
  """A 64-bit key that is the same in every process (Python's hash() is salted)."""
  h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8)
  return int.from_bytes(h.digest(), "little")


class CounterRNG:
  """Uniforms addressed by (key, index): O(1) to resume, no generator state to save.

  Values come from numpy's Philox keyed by `key`, in blocks of `block` rows of `width`
  uniforms; row i is the same whether it is drawn first or after a restore.
  """

  def __init__(self, key: Sequence[int], width: int, block: int = 256):
    self._key = np.array([k & (2**64 - 1) for k in key], dtype=np.uint64)
    self._width, self._block = width, block
    self._cached_block = -1
    self._values = np.empty((0, width))
    self._rows: list[list[float]] = []
    self._bits: Optional[np.random.Philox] = None

  def row(self, i: int) -> np.ndarray:
    self._fill(i // self._block)
    return self._values[i % self._block]

  def row_list(self, i: int) -> list[float]:
    """row(i) as Python floats (the same doubles), for scalar code on the hot path."""
    self._fill(i // self._block)
    return self._rows[i % self._block]

  def _fill(self, b: int) -> None:
    if b != self._cached_block:
      self._values = np.random.Generator(self._philox(b)).random((self._block, self._width))
      self._rows = self._values.tolist()
      self._cached_block = b

  def _philox(self, b: int) -> np.random.Philox:
    """Philox(key, counter=(b, 0, 0, 0)) fresh: one generator re-keyed, since each new one
    draws OS entropy for a seed it does not use (~30 us-1 ms, per 256 decisions)."""
    if self._bits is None:
      self._bits = np.random.Philox(key=self._key)
    st = self._bits.state
    st["state"] = {"counter": np.array([b, 0, 0, 0], np.uint64), "key": self._key.copy()}
    st.update(buffer_pos=4, has_uint32=0, uinteger=0)  # as a new generator's: nothing buffered
    self._bits.state = st
    return self._bits


class TokenScheduler:
  """Picks the component whose token count lags its target share the most (stride scheduling).

  pass_i = (consumed_i + jitter * u_i) / share_i; the smallest pass goes next. u_i comes from
  a CounterRNG row per decision, so ties break at random and the order is not periodic, yet
  the state is two small integer lists. After any prefix, |consumed_i - share_i * total| stays
  within a few documents plus `jitter` tokens: it does not grow with the tokens consumed.
  """

  def __init__(self, shares: Sequence[float], key: Sequence[int], jitter: float = 0.0):
    shares = np.asarray(shares, dtype=np.float64)
    if shares.ndim != 1 or not len(shares) or (shares < 0).any() or shares.sum() <= 0:
      raise ValueError(f"scheduler shares must be >= 0 and not all zero: {shares}")
    self.shares = shares / shares.sum()
    self._active = self.shares > 0
    self._inv = np.where(self._active, 1.0 / np.where(self._active, self.shares, 1.0), np.inf)
    self.jitter = float(jitter)
    self._consumed = [0] * len(shares)
    self.decisions = 0
    self._rng = CounterRNG(key, width=len(shares))
    self._live = [i for i in range(len(shares)) if self._active[i]]
    self._inv_list = self._inv.tolist()

  @property
  def consumed(self) -> np.ndarray:
    return np.array(self._consumed, dtype=np.int64)

  def choose(self) -> int:
    """Scalar Python (a decision is ~1 us, not ~25 us of numpy on a few elements); the same
    doubles as the vectorised formula: (consumed + jitter * u) * (1 / share)."""
    u = self._rng.row_list(self.decisions)
    self.decisions += 1
    c, inv, jitter = self._consumed, self._inv_list, self.jitter
    best, ties = math.inf, []
    for i in self._live:
      p = (c[i] + jitter * u[i]) * inv[i]
      if p < best:
        best, ties = p, [i]
      elif p == best:
        ties.append(i)
    if len(ties) == 1:
      return ties[0]
    return min(ties, key=u.__getitem__)

  def add(self, component: int, num_tokens: int) -> None:
    self._consumed[component] += int(num_tokens)

  def state(self) -> dict:
    return {"consumed": [int(x) for x in self._consumed], "decisions": int(self.decisions)}

  def restore(self, state: Mapping) -> None:
    consumed = list(state["consumed"])
    if len(consumed) != len(self.consumed):
      raise ValueError(
        f"scheduler state has {len(consumed)} components, the stage has {len(self.consumed)}"
      )
    self._consumed = [int(x) for x in consumed]
    self.decisions = int(state["decisions"])


def lane_quota(batch_in_stage: int, batch_tokens: int, share: float, emitted: int) -> int:
  """Target tokens a lane with `share` of the stage takes in batch `batch_in_stage` (0-based).

  Its stage total after the batch should be round((k + 1) * N * share): what it still lacks of
  that, clipped to [0, N]. Stateless but for `emitted` (the lane's tokens so far in the stage),
  so a resumed run computes the same quota and a lane that ran over or under catches up.
  """
  if batch_in_stage < 0 or batch_tokens <= 0 or not 0.0 <= share <= 1.0:
    raise ValueError(
      f"lane_quota: batch {batch_in_stage}, batch_tokens {batch_tokens}, share {share}"
    )
  want = math.floor((batch_in_stage + 1) * batch_tokens * share + 0.5)
  return min(batch_tokens, max(0, want - int(emitted)))


# Registry of stage mixtures by name (tasks/mixtures.py fills it; seqio's registry holds tasks).
_STAGE_MIXTURES: dict[str, StageMixture] = {}


def register_stage_mixture(m: StageMixture, *, overwrite: bool = False) -> StageMixture:
  if m.name in _STAGE_MIXTURES and not overwrite and _STAGE_MIXTURES[m.name] != m:
    raise ValueError(f"stage mixture {m.name!r} is already registered")
  _STAGE_MIXTURES[m.name] = m
  return m


def get_stage_mixture(name: str) -> StageMixture:
  if name not in _STAGE_MIXTURES:
    raise KeyError(
      f"no stage mixture named {name!r}; registered: "
      f"{sorted(_STAGE_MIXTURES) or 'none (import tasks first)'}"
    )
  return _STAGE_MIXTURES[name]


def stage_mixture_names() -> Iterable[str]:
  return tuple(_STAGE_MIXTURES)
