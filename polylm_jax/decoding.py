"""Generation and scoring: everything that turns a PolyLM into tokens or log-likelihoods.

One jitted function per call shape runs the whole generation: a prefill of the right-padded
prompts (padding has segment id 0, never attended to; each row's positions then continue from
its own length), then a `lax.while_loop` of cached one-token steps that exits
as soon as every row has emitted eos or `max_new_tokens` is reached. No host sync inside; the
greedy path does only an argmax. Speed (profiled; docs/inference.md "Speed"): the layer weights
are split once per call or once for good (`prepare`), the step's cache is laid out for the
attention dots (decode_stack), and the output layer and argmax use CPU-friendly forms.

Semantics follow transformers' `generate` so that results can be compared token for token:
logits processors run in HF's order (repetition penalty, temperature, top-k, top-p), and
beam search is a port of its vectorised beam search (finished hypotheses scored
`logprob / generated_len ** length_penalty`, `early_stopping` True / False / "never").
Two deliberate differences: the repetition penalty sees only real tokens (HF also penalises
the padding id of a left-padded batch), and with beam search it is applied to log-probabilities
(as HF does there).

Length policy: no silent truncation. A prompt longer than the model's positions, or a prompt
plus `max_new_tokens` that does not fit, is an error; `inference.py` can left-truncate them
(PromptSpec.truncate_prompts).
`generate` returns the new tokens without the final eos (`include_eos=True` keeps it).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from polylm_jax import beam_search, decode_stack, logits_processors, partitioning
from polylm_jax.config import PolyLMConfig
from polylm_jax.decode_stack import DecodeStack
from polylm_jax.model import PolyLM, output_logits

# The released demos' settings (SPEC section 5).
DEMO_SAMPLING = dict(top_p=0.8, temperature=0.7, repetition_penalty=1.02)
DEMO_BEAM = dict(num_beams=4, early_stopping=True)
PRESETS: dict[str, dict[str, Any]] = {"greedy": {}, "sampling": DEMO_SAMPLING, "beam": DEMO_BEAM}

_PROMPT_BUCKET = 16  # prompt and score lengths are padded to multiples of this (fewer compiles)
_CACHE_BUCKET = 32


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """How to pick tokens. temperature 0 is greedy (argmax after the repetition penalty)."""

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  repetition_penalty: float = 1.0
  num_beams: int = 1
  length_penalty: float = 1.0
  early_stopping: bool | str = False
  seed: int = 0
  eos_id: int | None = None  # None: config.eos_id

  def __post_init__(self):
    def bad(name, why):
      raise ValueError(f"decoding setting {name}={getattr(self, name)!r}: {why}")

    if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
      bad("temperature", "must be >= 0 (0 means greedy)")
    if not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
      bad("top_k", "must be an integer >= 0 (0 disables it)")
    if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
      bad("top_p", "must be in (0, 1] (1 disables it)")
    if not isinstance(self.repetition_penalty, (int, float)) or self.repetition_penalty <= 0:
      bad("repetition_penalty", "must be > 0 (1 disables it)")
    if not isinstance(self.num_beams, (int, np.integer)) or self.num_beams < 1:
      bad("num_beams", "must be an integer >= 1")
    if self.early_stopping not in (True, False, "never"):
      bad("early_stopping", "must be True, False or 'never'")
    if self.early_stopping != "never":  # 1 -> True: the beam code tests `is True`, as HF does
      object.__setattr__(self, "early_stopping", bool(self.early_stopping))
    if self.num_beams > 1 and self.temperature > 0:
      bad("temperature", "beam search is deterministic here: use temperature=0 with num_beams>1")
    if not isinstance(self.seed, (int, np.integer)):
      bad("seed", "must be an integer")

  @property
  def do_sample(self) -> bool:
    return self.temperature > 0


def make_settings(preset: str | None = None, **settings: Any) -> DecodeSettings:
  """Settings from an optional preset name plus overrides; unknown names are errors."""
  base: dict[str, Any] = {}
  if preset is not None:
    if preset not in PRESETS:
      raise ValueError(f"unknown decoding preset {preset!r}; known: {sorted(PRESETS)}")
    base = dict(PRESETS[preset])
  known = {f.name for f in dataclasses.fields(DecodeSettings)}
  unknown = sorted(set(settings) - known)
  if unknown:
    raise ValueError(f"unknown decoding setting(s) {unknown}; known: {sorted(known)}")
  return DecodeSettings(**{**base, **settings})


# Re-exported: the processors live in logits_processors.py (beam_search.py uses them too).
apply_repetition_penalty = logits_processors.apply_repetition_penalty
top_k_filter = logits_processors.top_k_filter
top_p_filter = logits_processors.top_p_filter


def process_logits(
  logits: jax.Array, seen: jax.Array | None, s: DecodeSettings, knobs: dict[str, Any] | None = None
) -> jax.Array:
  """HF's processor chain for settings `s`; values from `knobs` (traced) if given."""
  return logits_processors.process_logits(
    logits, seen, s, knobs if knobs is not None else _knobs(s, 0)
  )


def _knobs(s: DecodeSettings, eos: int) -> dict[str, Any]:
  """The values that are traced, so that changing them does not recompile."""
  return dict(
    eos=np.int32(eos),
    temperature=np.float32(s.temperature if s.do_sample else 1.0),
    top_p=np.float32(s.top_p),
    repetition_penalty=np.float32(s.repetition_penalty),
  )


def _compile_key(s: DecodeSettings) -> DecodeSettings:
  """Only what changes the program: which processors run, top_k, and the beam settings."""
  return dataclasses.replace(
    s,
    seed=0,
    eos_id=None,
    temperature=1.0 if s.do_sample else 0.0,
    top_p=0.5 if s.top_p < 1.0 else 1.0,
    repetition_penalty=2.0 if s.repetition_penalty != 1.0 else 1.0,
  )


# ----------------------------------------------------------------------------------------
# The jitted core. `config` here is the decode config: max_len = the cache length.


def _row_keys(seed_key, row_ids, step):
  return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(seed_key, r), step))(row_ids)


def _emit(s: DecodeSettings, state, logits):
  """Picks one token per row from `logits`, records it, advances the step."""
  step, eos = state["step"], state["knobs"]["eos"]
  logits = process_logits(logits, state.get("seen"), s, state["knobs"])
  if s.do_sample:
    keys = _row_keys(state["key"], state["row_ids"], step)
    token = jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)
  else:
    token = logits_processors.argmax(logits)
  token = jnp.where(state["done"], eos, token)
  new = dict(
    state,
    step=step + 1,
    done=state["done"] | (token == eos),
    out=jax.lax.dynamic_update_slice(state["out"], token[:, None], (0, step)),
  )
  if "seen" in state:
    new["seen"] = state["seen"].at[jnp.arange(token.shape[0]), token].set(True)
  return new


def _sample_init(
  stack, s, max_new, tokens, positions, segment_ids, prompt_lens, active, row_ids, key, knobs
):
  logits, cache = stack.prefill(tokens, positions, segment_ids, prompt_lens)
  b = tokens.shape[0]
  state = dict(
    cache=cache,
    step=jnp.int32(0),
    done=~active,
    row_ids=row_ids,
    key=key,
    lens=prompt_lens,
    knobs=knobs,
    out=jnp.full((b, max_new), knobs["eos"], jnp.int32),
  )
  if s.repetition_penalty != 1.0:
    state["seen"] = logits_processors.seen_mask(tokens, segment_ids, stack.config.vocab_size)
  return _emit(s, state, logits)


def _sample_steps(stack, s, state, limit):
  def cond(st):
    return (st["step"] < limit) & ~jnp.all(st["done"])

  def body(st):
    step = st["step"]
    prev = jax.lax.dynamic_slice_in_dim(st["out"], step - 1, 1, axis=1)
    logits, cache = stack(st["cache"], prev, (st["lens"] + step - 1)[:, None], jnp.ones_like(prev))
    return _emit(s, dict(st, cache=cache), logits)

  return jax.lax.while_loop(cond, body, state)


_STATICS = ("config", "s", "max_new", "layer_loop")


@functools.partial(jax.jit, static_argnames=_STATICS)
def _generate_sample(
  params,
  tokens,
  positions,
  segment_ids,
  prompt_lens,
  active,
  row_ids,
  key,
  knobs,
  *,
  config,
  s,
  max_new,
  layer_loop,
):
  stack = DecodeStack(config, params, layer_loop)
  state = _sample_init(
    stack, s, max_new, tokens, positions, segment_ids, prompt_lens, active, row_ids, key, knobs
  )
  return _sample_steps(stack, s, state, max_new)["out"]


@functools.partial(jax.jit, static_argnames=_STATICS)
def _generate_beam(
  params,
  tokens,
  positions,
  segment_ids,
  prompt_lens,
  active,
  knobs,
  *,
  config,
  s,
  max_new,
  layer_loop,
):
  return beam_search.beam_search(
    DecodeStack(config, params, layer_loop),
    s,
    max_new,
    knobs,
    tokens,
    positions,
    segment_ids,
    prompt_lens,
    active,
  )


@functools.partial(jax.jit, static_argnames=_STATICS)
def _stream_init(
  params,
  tokens,
  positions,
  segment_ids,
  prompt_lens,
  active,
  row_ids,
  key,
  knobs,
  *,
  config,
  s,
  max_new,
  layer_loop,
):
  return _sample_init(
    DecodeStack(config, params, layer_loop),
    s,
    max_new,
    tokens,
    positions,
    segment_ids,
    prompt_lens,
    active,
    row_ids,
    key,
    knobs,
  )


@functools.partial(jax.jit, static_argnums=(0, 2))
def _split_layers(num_layers: int, params: Any, fc2_t: bool) -> dict[str, Any]:
  layers = [jax.tree.map(lambda x, i=i: x[i], params["layers"]) for i in range(num_layers)]
  if fc2_t:  # see decode_stack._mlp; plain dicts, also for FrozenDict params (t5x)
    layers = [_with_fc2_transposed(layer) for layer in layers]
  return dict(
    layers=layers,
    wte_t=params["wte"].T,  # see decode_stack: the output layer reads it faster on CPU
  )


def _with_fc2_transposed(layer: Any) -> dict[str, Any]:
  mlp = {k: v for k, v in layer["mlp"].items() if k != "fc2_kernel"}
  mlp["fc2_kernel_t"] = layer["mlp"]["fc2_kernel"].T
  return {**layer, "mlp": mlp}


def _prepared(config: PolyLMConfig, params: Any, layer_loop: str, batch_size: int | None) -> Any:
  """params laid out for the unrolled loop (one array per layer, the output embedding
  transposed, and at batch 1 on CPU fc2 transposed): done once per call (or once for good by
  `prepare`), not inside the jitted function of every batch."""
  if layer_loop != "unrolled" or isinstance(params["layers"], list):
    return params
  fc2_t = batch_size == 1 and jax.default_backend() == "cpu"
  return {**params, **_split_layers(config.num_layers, params, fc2_t)}


def prepare(
  config: PolyLMConfig,
  params: Any,
  *,
  layer_loop: str = "unrolled",
  mesh=None,
  batch_size: int | None = None,
) -> Any:
  """The params as decoding reads them, for callers that generate many times with the same
  weights (a server, chat, a benchmark): pass the result to `generate` / `generate_stream`
  instead of `params` (with the same `mesh` and `layer_loop`). "unrolled" splits the stacked
  layer weights into one copy per layer (the stacked originals may then be dropped) and adds
  a transposed copy of the output embedding; each call otherwise does this again (on CPU
  about a tenth of a 64-token batch-1 call). batch_size: the rows the caller decodes at, if
  always the same; 1 (chat, one prompt at a time) on CPU stores fc2 transposed, which XLA's
  matrix-vector product reads faster (batch-1 steps ~10% faster) but its matrix product
  slower (batch 8 ~10% slower): any batch works with either layout."""
  decode_stack.check_layer_loop(layer_loop)
  place = _Placement(config, params, mesh)
  with place.context():
    return _prepared(config, place.params, layer_loop, batch_size)


@functools.partial(
  jax.jit, static_argnames=("config", "s", "layer_loop"), donate_argnames=("state",)
)
def _stream_steps(params, state, limit, *, config, s, layer_loop):
  return _sample_steps(DecodeStack(config, params, layer_loop), s, state, limit)


# ----------------------------------------------------------------------------------------
# Host side: validation, padding, batching, sharding.


def _bucket(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _check_ids(
  kind: str, i: int, ids: Any, vocab_size: int, allow_empty: bool = False
) -> list[int]:
  if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__"):
    raise TypeError(f"{kind} {i} must be a list of token ids, got {type(ids).__name__}")
  ids = [int(t) for t in ids]
  if not ids and not allow_empty:
    raise ValueError(f"{kind} {i} is empty: give at least one token")
  bad = [t for t in ids if not 0 <= t < vocab_size]
  if bad:
    raise ValueError(f"{kind} {i} has token ids outside [0, {vocab_size}): {bad[:5]}")
  return ids


def validate_prompts(
  config: PolyLMConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int
) -> list[list[int]]:
  """Clear errors for empty prompts, bad ids and prompts that do not fit the positions."""
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
  if max_new_tokens >= config.max_len:
    raise ValueError(
      f"max_new_tokens={max_new_tokens} leaves no room for a prompt: the model "
      f"has max_len={config.max_len} positions"
    )
  out = []
  for i, p in enumerate(prompts):
    p = _check_ids("prompt", i, p, config.vocab_size)
    if len(p) > config.max_len:
      raise ValueError(
        f"prompt {i} has {len(p)} tokens, more than the model's max_len="
        f"{config.max_len} positions (truncate it, e.g. keep the last tokens)"
      )
    if len(p) + max_new_tokens > config.max_len:
      raise ValueError(
        f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} "
        f"that is {len(p) + max_new_tokens} > max_len={config.max_len}: shorten "
        f"the prompt to {config.max_len - max_new_tokens} tokens or generate fewer"
      )
    out.append(p)
  return out


def _right_pad(prompts: list[list[int]], rows: int, width: int):
  tokens = np.zeros((rows, width), np.int32)
  positions = np.broadcast_to(np.arange(width, dtype=np.int32), (rows, width)).copy()
  segments = np.zeros((rows, width), np.int32)
  lens = np.ones((rows,), np.int32)
  for i in range(rows):
    p = prompts[i] if i < len(prompts) else [0]  # padding rows: one dummy token, inactive
    tokens[i, : len(p)] = p
    segments[i, : len(p)] = 1
    lens[i] = len(p)
  active = np.arange(rows) < len(prompts)
  return tokens, positions, segments, lens, active


class _Placement:
  """Puts params and batches on a mesh (or leaves them alone) and traces under its rules."""

  def __init__(self, config: PolyLMConfig, params: Any, mesh):
    self.mesh = mesh
    self.dp = 1 if mesh is None else partitioning.data_parallel_size(mesh)
    self.params = params
    if mesh is not None and not isinstance(params["layers"], list):  # else placed by prepare()
      self.params = jax.device_put(params, partitioning.param_shardings(config, mesh))

  def batch(self, *arrays):
    if self.mesh is None:
      return [jnp.asarray(a) for a in arrays]
    return [jax.device_put(a, partitioning.batch_sharding(self.mesh, a.ndim)) for a in arrays]

  def context(self):
    import contextlib

    return contextlib.nullcontext() if self.mesh is None else partitioning.use_mesh(self.mesh)


def _chunks(n: int, batch_size: int | None):
  size = n if not batch_size else batch_size
  return [(i, min(i + size, n)) for i in range(0, n, size)]


def _decode_config(config: PolyLMConfig, width: int, max_new: int) -> PolyLMConfig:
  return config.replace(max_len=min(_bucket(width + max_new, _CACHE_BUCKET), config.max_len))


def _trim(row: np.ndarray, eos: int, include_eos: bool) -> list[int]:
  row = [int(t) for t in row]
  if eos in row:
    row = row[: row.index(eos) + (1 if include_eos else 0)]
  return row


def generate(
  config: PolyLMConfig,
  params: Any,
  prompts: Sequence[Sequence[int]],
  max_new_tokens: int,
  *,
  batch_size: int | None = None,
  mesh=None,
  include_eos: bool = False,
  preset: str | None = None,
  layer_loop: str = "unrolled",
  **settings: Any,
) -> list[list[int]]:
  """New token ids for each prompt (greedy, sampling or beam search; see DecodeSettings).

  prompts are processed `batch_size` at a time (default: all at once), each batch right-padded
  to a common length. With `mesh`, params are sharded as in training and batches split over
  the data axes. Sampling is reproducible from `seed` and independent of batching.
  layer_loop: "unrolled" (fast) or "scan" (no extra copy of the weights); see decode_stack.
  params may be `prepare(config, params, ...)`'s result (split once for many calls).
  """
  s = make_settings(preset, **settings)
  decode_stack.check_layer_loop(layer_loop)
  eos = config.eos_id if s.eos_id is None else int(s.eos_id)
  prompts = validate_prompts(config, prompts, max_new_tokens)
  if not prompts:
    return []
  place = _Placement(config, params, mesh)
  with place.context():
    rows = (batch_size or len(prompts)) * s.num_beams if place.dp == 1 else None
    params = _prepared(config, place.params, layer_loop, rows)  # once for every batch
  results: list[list[int]] = []
  statics, knobs = _compile_key(s), _knobs(s, eos)
  for lo, hi in _chunks(len(prompts), batch_size):
    chunk = prompts[lo:hi]
    rows = _bucket(hi - lo if not batch_size else batch_size, place.dp)
    width = min(_bucket(max(map(len, chunk)), _PROMPT_BUCKET), config.max_len - max_new_tokens)
    tokens, positions, segments, lens, active = _right_pad(chunk, rows, width)
    row_ids = np.arange(lo, lo + rows, dtype=np.int32)
    dcfg = _decode_config(config, width, max_new_tokens)
    with place.context():
      args = place.batch(tokens, positions, segments, lens, active, row_ids)
      if s.num_beams > 1:
        out, _ = _generate_beam(
          params,
          *args[:5],
          knobs,
          config=dcfg,
          s=statics,
          max_new=max_new_tokens,
          layer_loop=layer_loop,
        )
      else:
        out = _generate_sample(
          params,
          *args,
          jax.random.key(s.seed),
          knobs,
          config=dcfg,
          s=statics,
          max_new=max_new_tokens,
          layer_loop=layer_loop,
        )
    out = np.asarray(jax.device_get(out))
    results.extend(_trim(out[i], eos, include_eos) for i in range(hi - lo))
  return results


def generate_stream(
  config: PolyLMConfig,
  params: Any,
  prompt: Sequence[int],
  max_new_tokens: int,
  *,
  chunk_tokens: int = 1,
  preset: str | None = None,
  layer_loop: str = "unrolled",
  **settings: Any,
) -> Iterator[list[int]]:
  """Yields the new tokens of one prompt in chunks as they are generated (eos not yielded).

  Same tokens as `generate` with the same settings; beam search cannot stream (error).
  """
  s = make_settings(preset, **settings)
  if s.num_beams > 1:
    raise ValueError(
      "beam search cannot stream: its best hypothesis is only known at the end; "
      "use generate() or num_beams=1"
    )
  if chunk_tokens < 1:
    raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
  if isinstance(prompt, str) or any(isinstance(t, str) or np.ndim(t) for t in prompt):
    raise TypeError(
      "generate_stream streams one prompt: a sequence of token ids, got "
      f"{type(prompt).__name__} of {type(next(iter(prompt), None)).__name__}; "
      "for several prompts call generate(), or generate_stream once per prompt"
    )
  decode_stack.check_layer_loop(layer_loop)
  eos = config.eos_id if s.eos_id is None else int(s.eos_id)
  (prompt,) = validate_prompts(config, [prompt], max_new_tokens)
  width = min(_bucket(len(prompt), _PROMPT_BUCKET), config.max_len - max_new_tokens)
  tokens, positions, segments, lens, active = _right_pad([prompt], 1, width)
  dcfg = _decode_config(config, width, max_new_tokens)
  statics = _compile_key(s)
  params = _prepared(config, params, layer_loop, 1)  # once, not per chunk
  state = _stream_init(
    params,
    tokens,
    positions,
    segments,
    lens,
    active,
    np.zeros(1, np.int32),
    jax.random.key(s.seed),
    _knobs(s, eos),
    config=dcfg,
    s=statics,
    max_new=max_new_tokens,
    layer_loop=layer_loop,
  )
  emitted = 0
  while True:
    out, step, done = jax.device_get((state["out"][0], state["step"], state["done"][0]))
    new = [int(t) for t in out[emitted:step]]
    emitted = int(step)
    if eos in new:
      new = new[: new.index(eos)]
    if new:
      yield new
    if done or emitted >= max_new_tokens:
      return
    state = _stream_steps(
      params,
      state,
      jnp.int32(min(emitted + chunk_tokens, max_new_tokens)),
      config=dcfg,
      s=statics,
      layer_loop=layer_loop,
    )


# ----------------------------------------------------------------------------------------
# Scoring.


class Scores(NamedTuple):
  """Per example: summed and per-token log-likelihood of the continuation, its length, and
  whether greedy decoding would have produced it exactly."""

  total: np.ndarray
  per_token: np.ndarray
  num_tokens: np.ndarray
  is_greedy: np.ndarray


# Positions whose logits are computed at once when scoring: [_SCORE_CHUNK, vocab] fp32 is the
# largest temporary (512 x 256k = 0.5 GB); more continuation tokens go through lax.map.
_SCORE_CHUNK = 512
_SCORE_BUCKET = 64


@functools.partial(jax.jit, static_argnames=("config", "chunk"))
def _score_batch(params, tokens, segments, rows, cols, targets, valid, *, config, chunk):
  """Summed log-likelihood and greedy flag per row, from the hidden states of the scored
  positions only: the output layer sees [n_positions, d_model], never [batch, length, vocab].
  rows/cols/targets/valid [N]: hidden (row, col) predicts token `targets`; padding not valid."""
  hidden = PolyLM(config).apply(
    {"params": params}, tokens, segment_ids=segments, return_hidden=True
  )
  h = hidden[rows, cols]  # [N, d_model]

  def chunk_scores(args):
    h, targets = args
    logits = output_logits(h, params["wte"], config)  # [chunk, vocab] fp32
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[:, None], -1)[:, 0]
    return lp, logits_processors.argmax(logits) == targets

  if h.shape[0] <= chunk:
    token_lp, hit = chunk_scores((h, targets))
  else:
    split = lambda x: x.reshape((-1, chunk) + x.shape[1:])
    token_lp, hit = jax.lax.map(chunk_scores, (split(h), split(targets)))
    token_lp, hit = token_lp.reshape(-1), hit.reshape(-1)
  b = tokens.shape[0]
  total = jax.ops.segment_sum(jnp.where(valid, token_lp, 0.0), rows, num_segments=b)
  misses = jax.ops.segment_sum((valid & ~hit).astype(jnp.int32), rows, num_segments=b)
  return total, misses == 0


def _score_positions(pairs: list[tuple[list[int], list[int]]], chunk: int):
  """Flat (row, col, target, valid) of every continuation token, padded to a bucket."""
  rows, cols, targets = [], [], []
  for r, (c, x) in enumerate(pairs):
    rows += [r] * len(x)
    cols += range(len(c) - 1, len(c) + len(x) - 1)  # the hidden state before each token
    targets += x
  n = len(rows)
  size = min(_bucket(n, _SCORE_BUCKET), chunk) if n <= chunk else _bucket(n, chunk)
  pad = size - n
  valid = np.arange(size) < n
  as_int = lambda v: np.asarray(list(v) + [0] * pad, np.int32)
  return as_int(rows), as_int(cols), as_int(targets), valid


def score(
  config: PolyLMConfig,
  params: Any,
  contexts: Sequence[Sequence[int]],
  continuations: Sequence[Sequence[int]],
  *,
  batch_size: int | None = None,
  mesh=None,
) -> Scores:
  """log p(continuation | context) for each pair, batched (rank classification).

  Only the continuation positions go through the output layer (`_score_batch`), so a 256k
  vocabulary costs [continuation tokens, vocab], not [batch, length, vocab]."""
  if len(contexts) != len(continuations):
    raise ValueError(f"score: {len(contexts)} contexts but {len(continuations)} continuations")
  rows_in = []
  for i, (c, x) in enumerate(zip(contexts, continuations)):
    c = _check_ids("context", i, c, config.vocab_size)
    x = _check_ids("continuation", i, x, config.vocab_size)
    if len(c) + len(x) > config.max_len:
      raise ValueError(
        f"context {i} + continuation {i} have {len(c) + len(x)} tokens, more than "
        f"max_len={config.max_len}"
      )
    rows_in.append((c, x))
  n = len(rows_in)
  total, greedy = np.zeros(n, np.float32), np.zeros(n, bool)
  lengths = np.array([len(x) for _, x in rows_in], np.int32)
  place = _Placement(config, params, mesh)
  for lo, hi in _chunks(n, batch_size):
    rows = _bucket(hi - lo if not batch_size else batch_size, place.dp)
    width = min(
      _bucket(max(len(c) + len(x) for c, x in rows_in[lo:hi]), _PROMPT_BUCKET), config.max_len
    )
    tokens = np.zeros((rows, width), np.int32)
    segments = np.zeros_like(tokens)
    for r, (c, x) in enumerate(rows_in[lo:hi]):
      tokens[r, : len(c) + len(x)] = c + x
      segments[r, : len(c) + len(x)] = 1
    positions = _score_positions(rows_in[lo:hi], _SCORE_CHUNK)
    with place.context():
      t, g = _score_batch(
        place.params,
        *place.batch(tokens, segments),
        *map(jnp.asarray, positions),
        config=config,
        chunk=_SCORE_CHUNK,
      )
    total[lo:hi], greedy[lo:hi] = np.asarray(t)[: hi - lo], np.asarray(g)[: hi - lo]
  return Scores(total, total / np.maximum(lengths, 1), lengths, greedy)


# ----------------------------------------------------------------------------------------
# Text level.


def check_vocab(config: PolyLMConfig, vocab: Any) -> None:
  """Errors unless the tokenizer and the checkpoint agree on vocabulary size and eos."""
  size = int(vocab.vocab_size)
  where = getattr(vocab, "sentencepiece_model_file", type(vocab).__name__)
  if size != config.vocab_size:
    raise ValueError(
      f"vocabulary mismatch: the tokenizer ({where}) has {size} pieces but the "
      f"checkpoint's vocab_size is {config.vocab_size}; load the tokenizer the "
      f"model was trained with"
    )
  eos = getattr(vocab, "eos_id", None)
  if eos is not None and int(eos) != config.eos_id:
    raise ValueError(
      f"vocabulary mismatch: the tokenizer ({where}) has eos id {eos} but the "
      f"model config says eos_id={config.eos_id}"
    )


def _encode(vocab, texts: Sequence[str], what: str) -> list[list[int]]:
  if isinstance(texts, str):
    raise TypeError(f"{what} must be a list of strings, got one string")
  return [list(vocab.encode(t)) for t in texts]


def generate_text(
  config: PolyLMConfig,
  params: Any,
  vocab: Any,
  prompts: Sequence[str],
  max_new_tokens: int,
  **kwargs: Any,
) -> list[str]:
  """`generate` on text: encodes with `vocab` (no BOS, as in training), decodes the output."""
  check_vocab(config, vocab)
  ids = generate(config, params, _encode(vocab, prompts, "prompts"), max_new_tokens, **kwargs)
  return [vocab.decode(x) for x in ids]


def score_text(
  config: PolyLMConfig,
  params: Any,
  vocab: Any,
  contexts: Sequence[str],
  continuations: Sequence[str],
  **kwargs: Any,
) -> Scores:
  """`score` on text; context and continuation are tokenized separately."""
  check_vocab(config, vocab)
  return score(
    config,
    params,
    _encode(vocab, contexts, "contexts"),
    _encode(vocab, continuations, "continuations"),
    **kwargs,
  )


class TextStreamer:
  """Turns token chunks into printable text increments (waits out partial UTF-8 bytes)."""

  def __init__(self, vocab: Any):
    self.vocab, self.ids, self.printed = vocab, [], ""

  def push(self, tokens: Sequence[int]) -> str:
    self.ids.extend(tokens)
    text = self.vocab.decode(self.ids)
    if text.endswith("\ufffd"):
      return ""
    new, self.printed = text[len(self.printed) :], text
    return new

  def flush(self) -> str:
    """Whatever is still held back (an incomplete character at the very end)."""
    text = self.vocab.decode(self.ids)
    new, self.printed = text[len(self.printed) :], text
    return new
