"""bmojo.models.cache: the decoding cache stays a constant size for every sub-quadratic preset, and beam
search reorders it correctly."""

import pytest
import torch

import bmojo

PRESETS = list(bmojo.PRESETS)
VOCAB = 61  # the tiny models' vocab_size (TINY in tests/conftest.py)


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "transformer"])
def test_cache_size_is_constant_in_context_length(preset, tiny_model):
    assert_cache_size_is_constant(tiny_model(preset, num_hidden_layers=2))
    grow = tiny_model("transformer").new_cache(1)
    with torch.no_grad():
        tiny_model("transformer")(torch.randint(0, VOCAB, (1, 100)), cache=grow)
    assert grow.nbytes > 0  # full attention's cache grows (contrast)


def test_knob_cache_size_is_constant_in_context_length(knob, tiny_model):
    preset, overrides = knob
    model = tiny_model(preset, **overrides)
    assert_cache_size_is_constant(model)
    config = model.config  # the y history keeps R_y = max(w + m_f - 1, w + s - 1, k) outputs
    w, m_f, s, k = config.window_size, config.num_fading_tokens, config.fading_span, config.innovation_span
    expected = max(w + m_f - 1 if m_f else 0, w + s - 1 if s else 0, k)
    assert model.new_cache(1).states[0].y.shape[1] == expected


def assert_cache_size_is_constant(model):
    """The working memory is constant in the context length; a storage tier grows by exactly the tokens it stores."""
    cache = model.new_cache(1)
    sizes = {}
    with torch.no_grad():
        for _ in range(40):  # 20 000 tokens, fed 500 at a time through the recurrent path
            model(torch.randint(0, VOCAB, (1, 500)), cache=cache, logits_to_keep=1)
            sizes[cache.seen_tokens] = cache.working_nbytes, cache.stored_nbytes
    assert sizes[2000][0] == sizes[20000][0] > 0
    config = model.config
    if not config.stores_tokens:
        assert sizes[20000][1] == 0 and cache.nbytes == cache.working_nbytes
        return
    assert cache.nbytes == sum(sizes[20000])
    if config.store_horizon:  # the store holds the tokens of the last H positions, in at most twice their slots
        for state in cache.states:
            assert sum(block.pos.shape[1] for block in state.store.blocks) < 2 * config.store_horizon
            oldest = min((int(block.pos[block.pos >= 0].min()) for block in state.store.blocks), default=10**9)
            assert oldest >= cache.seen_tokens - config.window_size - config.store_horizon
        return
    if config.store_regime_threshold:  # a regime shift forgets the store: it may be empty at any point
        return
    assert sizes[20000][1] >= sizes[2000][1] > 0
    if config.store_write == "window":  # H_c = {p <= c w - w} less the m_e eidetic tokens, c the chunk entered last
        w = config.window_size
        c = (cache.seen_tokens - 1) // w
        for state in cache.states:
            assert sum(block.pos.shape[1] for block in state.store.blocks) == c * w - w + 1 - config.num_eidetic_tokens
            assert len(state.store.blocks) <= (c * w).bit_length()  # the binary counter keeps few blocks


def test_a_half_precision_store_holds_the_same_tokens_in_half_the_key_value_bytes(tiny_model):
    """store_dtype="bfloat16": the same stored positions, keys rounded to bf16, half the key/value bytes (the positions
    stay int64)."""
    ids = torch.randint(0, VOCAB, (1, 300))
    caches = []
    for dtype in ("model", "bfloat16"):
        model = tiny_model("bmojo", num_retrieved_tokens=4, store_dtype=dtype)
        caches.append(model.new_cache(1))
        with torch.no_grad():
            model(ids, cache=caches[-1])
    full, half = caches
    first, first_half = full.states[0].store.blocks, half.states[0].store.blocks  # layer 0: its input is the same
    assert [b.pos.tolist() for b in first] == [b.pos.tolist() for b in first_half]
    assert all(torch.equal(h.k, f.k.to(torch.bfloat16)) and h.v.dtype == torch.bfloat16
               for f, h in zip(first, first_half, strict=True))
    kv_bytes = sum(b.k.nbytes + b.v.nbytes for s in full.states for b in s.store.blocks)
    assert half.stored_nbytes == full.stored_nbytes - kv_bytes // 2 and half.working_nbytes == full.working_nbytes


@pytest.mark.parametrize("preset", ["hybrid", "bmojo"])
def test_beam_search_with_cache_equals_without(preset, tiny_model):
    """Beam search reorders the cache's batch rows (BMojoCache.reorder_cache); recomputing from scratch
    every step (use_cache=False) must pick the same beams."""
    model = tiny_model(preset)
    prompt = torch.randint(1, VOCAB, (2, 13))
    kwargs = dict(max_new_tokens=12, num_beams=3, do_sample=False, pad_token_id=0)
    with_cache = model.generate(prompt, use_cache=True, **kwargs)
    without = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without)
