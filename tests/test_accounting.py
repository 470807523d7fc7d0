"""bmojo.accounting: decoding-state bytes equal the real caches; token equivalents."""

import pytest
import torch

import bmojo
from bmojo.accounting import decoding_state_bytes, token_equivalents

VOCAB = 61  # the tiny models' vocab_size (TINY in tests/conftest.py)


@pytest.mark.parametrize("preset", bmojo.PRESETS)
def test_accounting_equals_cache_after_prefill(preset, tiny_model):
    model = tiny_model(preset)
    seq_len = 77  # 9 chunks of 8 and a remainder
    cache = model.new_cache(3)
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (3, seq_len)), cache=cache)
    assert decoding_state_bytes(model.config, seq_len, batch_size=3)["total"] == cache.nbytes


def test_token_equivalents_of_full_attention_is_about_the_context_length(tiny_config):
    cfg = tiny_config("transformer")
    total = decoding_state_bytes(cfg, 500)["total"]
    # k and v of 500 tokens at full width, plus 8-byte positions per token and layer
    assert total == 500 * cfg.num_hidden_layers * (2 * cfg.num_key_value_heads * 8 * 4 + 8)
    expected = 500 * cfg.num_key_value_heads / cfg.num_attention_heads
    assert token_equivalents(total, cfg) == pytest.approx(expected, rel=0.1)
