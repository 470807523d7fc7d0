"""Memory accounting: the bytes of a model's decoding state after a prefill of `seq_len` tokens.

This is the x-axis of the paper's recall-vs-memory figure: SSM states, the raw-window keys/values,
fading and eidetic tokens (with their scores and positions), and for full attention the KV of every
past token. It is computed from the layers' own state constructors (on the meta device, so nothing is
allocated), which is why it equals `BMojoCache.nbytes` after a real prefill (tested).

A *token-equivalent* is the KV-cache footprint of one token in a full-attention model of the same
width and depth: 2 * hidden_size * num_hidden_layers * element size. A Transformer at context L holds
about L token-equivalents.
"""

from __future__ import annotations

import torch

from .models.cache import BMojoCache
from .models.configuration import BMojoConfig
from .models.modeling import BMojoBlock, BMojoForCausalLM


def decoding_state_bytes(config: BMojoConfig, seq_len: int, batch_size: int = 1, dtype=torch.float32) -> dict:
    """{'total': bytes, 'per_layer': [bytes, ...]} of the decoding state after `seq_len` tokens."""
    elem = torch.empty((), dtype=dtype).element_size()
    per_layer = []
    with torch.device("meta"):
        for i in range(config.num_hidden_layers):
            block = BMojoBlock(config, i)
            state = block.mixer.init_state(batch_size, "meta", dtype)
            size = BMojoCache([state], [block.kind]).nbytes
            if block.kind == "attn":  # keys and values (b, hk, L, hd) plus positions (b, L) int64 grow with L
                size += seq_len * batch_size * (2 * config.num_key_value_heads * block.mixer.head_dim * elem + 8)
            per_layer.append(size)
    return {"total": sum(per_layer), "per_layer": per_layer}


def token_equivalents(num_bytes: int, config: BMojoConfig, dtype=torch.float32) -> float:
    """Bytes expressed in full-attention KV tokens of the same width and depth."""
    elem = torch.empty((), dtype=dtype).element_size()
    return num_bytes / (2 * config.hidden_size * config.num_hidden_layers * elem)


def parameter_count(config: BMojoConfig) -> int:
    """Parameters of a model built from `config` (constructed on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in BMojoForCausalLM(config).parameters())
