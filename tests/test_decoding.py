"""Decoding: cache parity, equivalence with transformers' generate, processors, errors, mesh."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (SPEC 9)

import collections

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polylm_jax import decode_stack, decoding, logits_processors, partitioning
from polylm_jax.config import get_config
from polylm_jax.model import PolyLM, init_params

CFG = get_config("polylm_tiny")
# Different lengths, all within one 16-token padding bucket (fewer compiles).
PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22], [3]]


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.key(0))


@jax.jit
def _forward(params, tokens):
  return PolyLM(CFG).apply({"params": params}, tokens)


def full_logits(params, row):
  """Logits of one row; right-padded to max_len so one compile serves every length (causal)."""
  padded = np.zeros((1, CFG.max_len), np.int32)
  padded[0, : len(row)] = row
  return np.asarray(_forward(params, padded)[0, : len(row)])


# ---- cache parity -----------------------------------------------------------------------


@pytest.mark.parametrize("layer_loop", decode_stack.LAYER_LOOPS)
def test_cached_decoding_matches_full_forward_at_every_position(params, layer_loop):
  """Right-padded prefill of different-length prompts, then one token at a time from each
  row's own length."""
  rng = np.random.RandomState(0)
  rows = [list(rng.randint(0, CFG.vocab_size, n)) for n in (4, 9, 1)]
  extra = rng.randint(0, CFG.vocab_size, (3, 6))
  width = max(map(len, rows))
  tokens, positions, segments, lens, _ = decoding._right_pad(rows, 3, width)
  dcfg = decoding._decode_config(CFG, width, extra.shape[1])  # the short-cache path
  assert dcfg.max_len < CFG.max_len

  @jax.jit
  def run(params, tokens, positions, segments, extra):
    stack = decode_stack.DecodeStack(dcfg, params, layer_loop)
    logits, cache = stack(
      stack.init_cache(3), tokens, positions, segments, last_only=False, lengths=lens
    )
    steps = []
    for t in range(extra.shape[1]):
      step, cache = stack(
        cache, extra[:, t : t + 1], lens[:, None] + t, jnp.ones((3, 1), jnp.int32)
      )
      steps.append(step)
    return logits, jnp.stack(steps, 1)

  prefill, steps = map(np.asarray, run(params, tokens, positions, segments, extra))
  for i, r in enumerate(rows):
    got = np.concatenate([prefill[i, : len(r)], steps[i]])
    np.testing.assert_allclose(got, full_logits(params, r + list(extra[i])), atol=1e-5, rtol=0)


def test_layer_loops_generate_the_same(params):
  for settings in (dict(), decoding.DEMO_BEAM):
    assert decoding.generate(
      CFG, params, PROMPTS, 6, layer_loop="scan", **settings
    ) == decoding.generate(CFG, params, PROMPTS, 6, **settings)
  with pytest.raises(ValueError, match="layer_loop"):
    decoding.generate(CFG, params, PROMPTS, 6, layer_loop="fast")


def test_prepared_params_generate_the_same(params):
  prepared = decoding.prepare(CFG, params)
  assert isinstance(prepared["layers"], list) and len(prepared["layers"]) == CFG.num_layers
  for settings in (dict(), decoding.DEMO_BEAM):
    assert decoding.generate(CFG, prepared, PROMPTS, 6, **settings) == decoding.generate(
      CFG, params, PROMPTS, 6, **settings
    )
  assert list(decoding.generate_stream(CFG, prepared, PROMPTS[1], 6)) == [
    [t] for t in decoding.generate(CFG, params, PROMPTS[1:2], 6)[0]
  ]
  with pytest.raises(ValueError, match="needs the stacked layer weights"):
    decoding.generate(CFG, prepared, PROMPTS, 6, layer_loop="scan")


def test_params_prepared_for_batch_1_generate_the_same(params):
  """batch_size=1 stores fc2 transposed (decode_stack._mlp); any batch still decodes the same."""
  prepared = decoding.prepare(CFG, params, batch_size=1)
  mlp = prepared["layers"][0]["mlp"]
  assert "fc2_kernel" not in mlp and mlp["fc2_kernel_t"].shape == (CFG.d_model, CFG.d_ff)
  assert "fc2_kernel" in decoding.prepare(CFG, params)["layers"][0]["mlp"]
  for prompts in (PROMPTS[1:2], PROMPTS):
    assert decoding.generate(CFG, prepared, prompts, 6) == decoding.generate(
      CFG, params, prompts, 6, layer_loop="scan"
    )
  # FrozenDict params (t5x's) take the same batch-1 path: one prompt, stacked params.
  frozen = flax.core.freeze(params)
  assert decoding.generate(CFG, frozen, PROMPTS[1:2], 6) == decoding.generate(
    CFG, params, PROMPTS[1:2], 6, layer_loop="scan"
  )


def test_greedy_matches_step_by_step_argmax(params):
  out = decoding.generate(CFG, params, PROMPTS, 6)
  for prompt, new in zip(PROMPTS, out):
    seq = list(prompt)
    for _ in range(6):
      seq.append(int(np.argmax(full_logits(params, seq)[-1])))
    assert new == seq[len(prompt) :]


# ---- equivalence with transformers' generate --------------------------------------------


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from polylm_jax import hf

  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(
    transformers.GPT2Config(
      vocab_size=512,
      n_positions=64,
      n_embd=64,
      n_layer=2,
      n_head=4,
      activation_function="gelu_new",
      attn_pdrop=0.0,
      embd_pdrop=0.0,
      resid_pdrop=0.0,
      bos_token_id=1,
      eos_token_id=2,
      tie_word_embeddings=True,
    )
  ).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  path = tmp_path_factory.mktemp("hf_gpt2")
  model.save_pretrained(path)
  config, our_params = hf.import_hf(path)
  return model, config, our_params


def _hf_generate(model, prompt, max_new, eos, **kw):
  import torch

  with torch.no_grad():
    out = model.generate(
      torch.tensor([prompt]),
      attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
      max_new_tokens=max_new,
      do_sample=False,
      pad_token_id=eos,
      eos_token_id=eos,
      **kw,
    )
  new = [int(x) for x in out[0, len(prompt) :]]
  return new[: new.index(eos) + 1] if eos in new else new


def test_greedy_and_beam_equal_transformers_generate(hf_pair):
  model, config, params = hf_pair
  rng = np.random.RandomState(0)
  prompts = [list(rng.randint(3, 512, n)) for n in (3, 8, 5)]
  n = 16
  # eos := a token the model emits mid-sequence, so stopping at eos is exercised.
  first = decoding.generate(config, params, prompts, n)
  counts = collections.Counter(t for row in first for t in row[1:])
  eos = counts.most_common(1)[0][0]
  stopped = 0
  for settings in (dict(), decoding.DEMO_BEAM, dict(num_beams=3, length_penalty=0.5)):
    ours = decoding.generate(config, params, prompts, n, eos_id=eos, include_eos=True, **settings)
    ref = [_hf_generate(model, p, n, eos, **settings) for p in prompts]
    assert ours == ref, settings
    stopped += sum(row[-1] == eos and len(row) < n for row in ours)
  assert stopped  # some outputs ended at eos before max_new_tokens


# ---- sampling ---------------------------------------------------------------------------


def test_sampling_is_reproducible_and_batch_independent(params):
  a = decoding.generate(CFG, params, PROMPTS, 8, preset="sampling", seed=3)
  b = decoding.generate(CFG, params, PROMPTS, 8, preset="sampling", seed=3)
  c = decoding.generate(CFG, params, PROMPTS, 8, preset="sampling", seed=4)
  assert a == b and a != c
  # Streaming runs the prompt alone (batch 1, in chunks of 3 steps): same tokens as row 0.
  chunks = list(
    decoding.generate_stream(CFG, params, PROMPTS[0], 8, chunk_tokens=3, preset="sampling", seed=3)
  )
  assert sum(chunks, []) == a[0] and len(chunks) > 1


def test_degenerate_sampling_equals_greedy(params):
  greedy = decoding.generate(CFG, params, PROMPTS, 6)
  assert decoding.generate(CFG, params, PROMPTS, 6, temperature=1.0, top_k=1, seed=1) == greedy
  # top_p / temperature are traced values: one compile serves both of these.
  assert decoding.generate(CFG, params, PROMPTS, 6, temperature=1.0, top_p=1e-6, seed=1) == greedy
  assert decoding.generate(CFG, params, PROMPTS, 6, temperature=50.0, top_p=0.9, seed=1) != greedy


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_repetition(logits, seen, penalty):
  return np.where(seen, np.where(logits < 0, logits * penalty, logits / penalty), logits)


def np_top_k(logits, k):
  kth = np.sort(logits, -1)[:, ::-1][:, min(k, logits.shape[-1]) - 1][:, None]
  return np.where(logits < kth, -np.inf, logits)


def np_top_p(logits, top_p):
  """HF's TopPLogitsWarper, row by row: ascending sort, drop cumulative mass <= 1 - top_p."""
  out = logits.copy()
  for r in range(len(logits)):
    order = np.argsort(logits[r], kind="stable")
    cum = np.cumsum(np_softmax(logits[r][order]))
    remove = cum <= 1 - top_p
    remove[-1] = False
    out[r, order[remove]] = -np.inf
  return out


def test_processors_match_numpy_reference():
  rng = np.random.RandomState(0)
  logits = (rng.randn(3, 50) * 3).astype(np.float32)
  seen = rng.rand(3, 50) < 0.3
  j = jnp.asarray
  np.testing.assert_allclose(
    decoding.apply_repetition_penalty(j(logits), j(seen), 1.3),
    np_repetition(logits, seen, 1.3),
    rtol=1e-6,
  )
  for k in (1, 5, 50, 80):
    np.testing.assert_array_equal(decoding.top_k_filter(j(logits), k), np_top_k(logits, k))
  for top_p in (0.05, 0.5, 0.9, 1.0):
    got = np.asarray(decoding.top_p_filter(j(logits), top_p))
    np.testing.assert_array_equal(got, np_top_p(logits, top_p))
    assert 1 <= np.isfinite(got).sum(-1).min()
  # The full chain, in HF's order: repetition penalty, temperature, top-k, top-p.
  s = decoding.make_settings(temperature=0.5, top_k=10, top_p=0.9, repetition_penalty=1.3)
  ref = np_top_p(np_top_k(np_repetition(logits, seen, 1.3) / 0.5, 10), 0.9)
  got = np.asarray(decoding.process_logits(j(logits), j(seen), s))
  np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
  np.testing.assert_allclose(got[np.isfinite(got)], ref[np.isfinite(ref)], rtol=1e-6)
  # Greedy (temperature 0) applies only the repetition penalty.
  greedy = decoding.make_settings(top_k=3, repetition_penalty=1.3)
  np.testing.assert_allclose(
    decoding.process_logits(j(logits), j(seen), greedy), np_repetition(logits, seen, 1.3), rtol=1e-6
  )


def test_argmax_equals_jnp_argmax_with_ties_infs_and_nans():
  rng = np.random.RandomState(1)
  x = rng.randint(-3, 4, (64, 40)).astype(np.float32)  # many ties
  x[1], x[2, 5], x[3, [7, 9]], x[4, :] = -np.inf, np.inf, np.nan, -np.inf
  got = np.asarray(logits_processors.argmax(jnp.asarray(x)))
  np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(x), -1)))
  assert got[3] == 7 and got[4] == 0


def test_sampling_frequencies_follow_processed_distribution():
  """Empirical check of temperature + top-k on a fixed distribution (many seeds at once)."""
  logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))[None].repeat(4000, 0)
  s = decoding.make_settings(temperature=2.0, top_k=3)
  processed = decoding.process_logits(logits, None, s)
  keys = jax.random.split(jax.random.key(0), 4000)
  draws = np.asarray(jax.vmap(jax.random.categorical)(keys, processed))
  expected = np_softmax(np.log([0.5, 0.3, 0.15]) / 2.0)
  freq = np.bincount(draws, minlength=4) / 4000
  assert freq[3] == 0
  np.testing.assert_allclose(freq[:3], expected, atol=0.03)


# ---- stopping, outputs, scoring ---------------------------------------------------------


def test_stops_at_eos_and_max_new_tokens(params):
  base = decoding.generate(CFG, params, PROMPTS, 8)
  eos = base[0][2]
  out = decoding.generate(CFG, params, PROMPTS, 8, eos_id=eos)
  with_eos = decoding.generate(CFG, params, PROMPTS, 8, eos_id=eos, include_eos=True)
  for b, o, w in zip(base, out, with_eos):
    cut = b.index(eos) if eos in b else len(b)
    assert o == b[:cut] and w == b[: cut + 1]
  assert all(len(r) == 8 for r in base)


def test_score_matches_full_forward(params):
  greedy = decoding.generate(CFG, params, PROMPTS, 6)
  contexts, conts = PROMPTS, [greedy[0], greedy[1][:2] + [7], [10, 11, 12]]
  s = decoding.score(CFG, params, contexts, conts)
  s2 = decoding.score(CFG, params, contexts, conts, batch_size=2)
  for i, (c, x) in enumerate(zip(contexts, conts)):
    lp = jax.nn.log_softmax(full_logits(params, c + x)[:-1])
    ref = sum(float(lp[len(c) - 1 + j, t]) for j, t in enumerate(x))
    np.testing.assert_allclose(s.total[i], ref, rtol=1e-5)
    np.testing.assert_allclose(s.per_token[i], ref / len(x), rtol=1e-5)
  np.testing.assert_allclose(s.total, s2.total, rtol=1e-6)
  assert s.is_greedy[0] and not s.is_greedy[1:].any()
  assert list(s.num_tokens) == [6, 3, 3]


def test_score_in_chunks_of_positions_matches(params, monkeypatch):
  """More continuation tokens than one chunk: lax.map over chunks gives the same scores."""
  contexts, conts = PROMPTS, [[8, 9, 10, 11, 12], [7], [4, 4, 4, 4, 4, 4, 4]]
  ref = decoding.score(CFG, params, contexts, conts)
  monkeypatch.setattr(decoding, "_SCORE_CHUNK", 4)  # 13 tokens -> 4 chunks of 4
  got = decoding.score(CFG, params, contexts, conts)
  np.testing.assert_allclose(got.total, ref.total, rtol=1e-6)
  np.testing.assert_array_equal(got.is_greedy, ref.is_greedy)


def test_score_never_holds_logits_of_every_position():
  """The compiled scorer's temporaries stay below one [batch, length, vocab] fp32 array."""
  cfg = CFG.replace(vocab_size=16384, max_len=128)
  batch, width = 8, 128
  pairs = [([5] * 100, [6, 7, 8])] * batch
  positions = decoding._score_positions(pairs, decoding._SCORE_CHUNK)
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  tokens = jax.ShapeDtypeStruct((batch, width), jnp.int32)
  compiled = decoding._score_batch.lower(
    shapes, tokens, tokens, *positions, config=cfg, chunk=decoding._SCORE_CHUNK
  ).compile()
  full_logits_bytes = batch * width * cfg.vocab_size * 4
  assert compiled.memory_analysis().temp_size_in_bytes < full_logits_bytes / 4


# ---- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
    (dict(prompts=[list(range(1, 66))]), "more than the model's max_len"),
    (dict(prompts=[list(range(1, 60))]), "with max_new_tokens=8"),
    (dict(prompts=[[1, 512]]), r"outside \[0, 512\)"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(temperature=-0.1), "temperature"),
    (dict(num_beams=0), "num_beams"),
    (dict(top_k=-1), "top_k"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(num_beams=2, temperature=0.7), "beam search is deterministic"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(tempreature=0.7), "unknown decoding setting"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(preset="nucleus"), "unknown decoding preset"),
  ],
)
def test_bad_inputs_raise_clear_errors(params, kwargs, match):
  kwargs = {"prompts": [[1, 2, 3]], "max_new_tokens": 8, **kwargs}
  with pytest.raises(ValueError, match=match):
    decoding.generate(CFG, params, **kwargs)


def test_score_and_stream_errors(params):
  with pytest.raises(ValueError, match="continuation 0 is empty"):
    decoding.score(CFG, params, [[1]], [[]])
  with pytest.raises(ValueError, match="2 contexts but 1"):
    decoding.score(CFG, params, [[1], [2]], [[3]])
  with pytest.raises(ValueError, match="beam search cannot stream"):
    next(decoding.generate_stream(CFG, params, [1, 2], 4, num_beams=2))


def test_check_vocab():
  class Vocab:
    def __init__(self, size, eos=2):
      self.vocab_size, self.eos_id = size, eos

  decoding.check_vocab(CFG, Vocab(512))
  with pytest.raises(
    ValueError, match="tokenizer .* has 4096 pieces but the checkpoint's vocab_size is 512"
  ):
    decoding.check_vocab(CFG, Vocab(4096))
  with pytest.raises(ValueError, match="eos id 1"):
    decoding.check_vocab(CFG, Vocab(512, eos=1))


# ---- mesh -------------------------------------------------------------------------------


def test_sharded_generate_equals_unsharded(params):
  if jax.device_count() < 8:
    pytest.skip("needs 8 host devices (tests/conftest.py sets XLA_FLAGS)")
  mesh = partitioning.make_mesh(data=2, fsdp=2, tensor=2)
  for settings in (dict(), dict(preset="sampling", seed=5), decoding.DEMO_BEAM):
    ref = decoding.generate(CFG, params, PROMPTS, 8, **settings)
    assert decoding.generate(CFG, params, PROMPTS, 8, mesh=mesh, **settings) == ref, settings
  prepared = decoding.prepare(CFG, params, mesh=mesh)
  assert decoding.generate(CFG, prepared, PROMPTS, 8, mesh=mesh) == decoding.generate(
    CFG, params, PROMPTS, 8
  )
  s = decoding.score(CFG, params, [[5, 6], [7]], [[8], [9, 10]], mesh=mesh)
  np.testing.assert_allclose(
    s.total, decoding.score(CFG, params, [[5, 6], [7]], [[8], [9, 10]]).total, rtol=1e-5
  )
