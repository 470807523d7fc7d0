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
                size += seq_len * batch_size * kv_bytes_per_token(config, elem)
            per_layer.append(size)
    return {"total": sum(per_layer), "per_layer": per_layer}


def kv_bytes_per_token(config: BMojoConfig, elem: int) -> int:
    """Bytes one token adds to a layer's growing cache, per batch row: a key and a value per kv head (`elem` bytes per
    element) and an int64 position. Full attention's KV and B'MOJO's storage tier both grow by it."""
    return 2 * config.num_key_value_heads * (config.hidden_size // config.num_attention_heads) * elem + 8


def stored_bytes_per_token(config: BMojoConfig, backend: str | None = None, dtype=torch.float32) -> tuple[int, int]:
    """(store, index): the bytes one batch row's storage tier grows by per token read, over all layers. The store is
    what `BMojoCache.stored_nbytes` counts (`kv_bytes_per_token` per storing layer, at `store_dtype` when set); the
    faiss backend's indexes (`backend="faiss"`) keep another fp32 copy of the keys and an int64 id per kv head."""
    if not config.stores_tokens:
        return 0, 0
    store_dtype = dtype if config.store_dtype == "model" else getattr(torch, config.store_dtype)
    storing = sum(1 for i in range(config.num_hidden_layers) if config.eidetic_tokens(i))
    head_dim = config.hidden_size // config.num_attention_heads
    index = config.num_key_value_heads * (head_dim * 4 + 8) if backend == "faiss" else 0
    return storing * kv_bytes_per_token(config, torch.empty((), dtype=store_dtype).element_size()), storing * index


def token_equivalents(num_bytes: int, config: BMojoConfig, dtype=torch.float32) -> float:
    """Bytes expressed in full-attention KV tokens of the same width and depth."""
    elem = torch.empty((), dtype=dtype).element_size()
    return num_bytes / (2 * config.hidden_size * config.num_hidden_layers * elem)


def parameter_count(config: BMojoConfig) -> int:
    """Parameters of a model built from `config` (constructed on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in BMojoForCausalLM(config).parameters())
