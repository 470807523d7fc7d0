"""`BMojoCache`: the decoding state of a whole model, one entry per layer.

Every layer kind except full attention ('attn') keeps a state whose size is fixed at creation, so
`nbytes` does not grow with the context length. The cache is what `generate()` threads through the
forward passes (HF's `cache` / `past_key_values` argument).
"""

from __future__ import annotations

import dataclasses

import torch


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))


class BMojoCache:
    """Per-layer states (SSMState, KVSlots, BMojoState: whatever each mixer's `init_state` returns), the number
    of tokens seen, and where each row stands in its current document: `positions` (b,) the next token's position
    inside it, `seq_idx` (b,) its index. While every row has read the same unpadded tokens (`aligned`), rows
    share their positions and decoding takes the chunked fast path."""

    is_compileable = False

    def __init__(self, states: list, layer_pattern: list[str], batch_size: int = 1, device=None,
                 dtype: torch.dtype = torch.float32):
        self.states = states
        self.dtype = dtype  # of the states that follow the model's dtype
        self.layer_pattern = list(layer_pattern)
        self.seen_tokens = 0
        self.positions = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.seq_idx = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.aligned = True

    def advance(self, num_tokens: int, docs=None) -> None:
        """Record that `num_tokens` more tokens were read (with their `Documents`, if any)."""
        self.seen_tokens += num_tokens
        if docs is None:
            self.positions = self.positions + num_tokens
        else:
            self.positions, self.seq_idx = docs.positions[:, -1] + 1, docs.seq_idx[:, -1]
            self.aligned = False

    def __len__(self) -> int:
        return len(self.states)

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors held (SSM states, windows, memories, and the growing KV of 'attn' layers)."""
        return sum(t.numel() * t.element_size() for s in self.states for t in _tensors(s))

    # The small part of HF's Cache interface that `generate()` consults.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    @property
    def is_linear(self) -> list[bool]:
        return [False] * len(self.states)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (beam search)."""
        for i, s in enumerate(self.states):
            self.states[i] = _index_batch(s, beam_idx)
        self.positions, self.seq_idx = _index_batch(self.positions, beam_idx), _index_batch(self.seq_idx, beam_idx)


def _index_batch(obj, idx):
    if obj is None:
        return None
    if dataclasses.is_dataclass(obj):
        return type(obj)(**{f.name: _index_batch(getattr(obj, f.name), idx) for f in dataclasses.fields(obj)})
    return obj.index_select(0, idx.to(obj.device))  # every state tensor is batch-first
