"""Causal self-attention with grouped-query heads: full ('attn') or sliding window ('swa').

Decoding state: the keys/values of the tokens still attended to, as `KVSlots` (oldest first). A sliding
window keeps exactly w slots; full attention appends. `Attention.attend_window` is the one decoding step
of a sliding window, shared with the B'MOJO layer (which adds a memory prefix).
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops.attention import attention_with_extra, causal_attention, masked_attention, window_attention
from ..ops.memory import KVSlots
from .common import RotaryEmbedding
from .documents import Documents


def chunk_segments(start: int, length: int, window: int) -> list[tuple[int, int]]:
    """Split offsets [0, length) of tokens at positions start.. into pieces that never cross a multiple of
    `window` (a chunk boundary). Returns [(a, e), ...] offsets."""
    cuts, a = [], 0
    while a < length:
        e = min(length, a + window - (start + a) % window)
        cuts.append((a, e))
        a = e
    return cuts


def window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int) -> torch.Tensor:
    """q_pos (b, T), k_pos (b, S) -> (b, T, S), True where key position s is in query t's window:
    t - w < s <= t (and s is not an empty slot)."""
    t, s = q_pos[:, :, None], k_pos[:, None, :]
    return (s >= 0) & (s <= t) & (s > t - window)


class Attention(nn.Module):
    """Multi-head causal attention; `window=None` for full attention. x: (b, T, d) -> (b, T, d)."""

    def __init__(self, config, window: int | None):
        super().__init__()
        d = config.hidden_size
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = d // self.num_heads
        self.window = window
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=False)
        self.rope = RotaryEmbedding(self.head_dim, config.rope_theta) if config.pos_encoding == "rope" else None

    def split_heads(self, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """(b, T, H*hd) -> (b, H, T, hd), rotated by `positions` when RoPE is on and positions given."""
        x = x.unflatten(-1, (-1, self.head_dim)).transpose(1, 2)
        return self.rope(x, positions) if self.rope is not None and positions is not None else x

    def qkv(self, x: torch.Tensor, positions: torch.Tensor | None):
        """Queries (b, h, T, hd) and keys/values (b, hk, T, hd) of x at absolute `positions` (T,) or (b, T) (None: not
        rotated, the content queries and keys)."""
        return (
            self.split_heads(self.q_proj(x), positions),
            self.split_heads(self.k_proj(x), positions),
            self.split_heads(self.v_proj(x), None),
        )

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Content queries or keys (b, H, T, hd) rotated by `positions` (RoPE; unchanged without it)."""
        return x if self.rope is None else self.rope(x, positions)

    def merge(self, o: torch.Tensor) -> torch.Tensor:
        """(b, h, T, hd) -> o_proj -> (b, T, d)."""
        return self.o_proj(o.transpose(1, 2).flatten(2))

    def init_state(self, batch_size: int, device, dtype, scored: bool = False) -> KVSlots:
        """An empty window of w slots (sliding window) or of 0 slots (full attention, grows)."""
        size = 0 if self.window is None else self.window
        return KVSlots.empty(batch_size, self.num_kv_heads, size, self.head_dim, device, dtype, scored)

    def attend_window(self, q: torch.Tensor, window: KVSlots, new: KVSlots, memory: KVSlots | None = None,
                      band: KVSlots | None = None, band_span: int = 0,
                      extra: tuple[torch.Tensor, torch.Tensor] | None = None):
        """One decoding step of a sliding window, for n new tokens that do not cross a chunk boundary.

        q (b, h, n, hd) are the new tokens' queries, `new` their keys/values (positions new.pos); each attends,
        under one softmax, to the window's and the new tokens' raw keys in its window, to every valid slot of
        `memory` (B'MOJO's memory prefix) and to the slots of `band` at t - w - band_span < f <= t - w (B'MOJO's
        per-query fading span), and to `extra` = (logits (b, h, n, r), values (b, h, n, r, hd)), keys of each query's
        own (B'MOJO's retrieved tokens). Returns (o (b, h, n, hd), the window after the step (its last w slots), the n
        slots that left it, oldest first)."""
        n = new.pos.shape[1]
        slots = window.cat(new)
        mask = window_mask(new.pos, slots.pos, self.window)
        k, v = slots.k, slots.v
        if memory is not None:
            mask = torch.cat([memory.valid[:, None, :].expand(-1, n, -1), mask], dim=2)
            k, v = torch.cat([memory.k, k], 2), torch.cat([memory.v, v], 2)
        if band is not None:
            mask = torch.cat([mask, window_mask(new.pos - self.window, band.pos, band_span)], dim=2)
            k, v = torch.cat([k, band.k], 2), torch.cat([v, band.v], 2)
        mask = mask[:, None]
        o = masked_attention(q, k, v, mask) if extra is None else attention_with_extra(q, k, v, mask, extra)
        return o, slots.slots(n), slots.slots(0, n)

    def static_step(self, x: torch.Tensor, state: KVSlots, pos: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """One token per row in the fixed-address layout (bmojo.models.static): x (b, 1, d) at positions pos (b,);
        `state` is a ring of w slots (sliding window: position p in slot p % w) or full attention's preallocated
        slots (the token goes to slot `count`, a 0-dim tensor: the tokens read so far). Updates `state` in place;
        returns (b, 1, d)."""
        q, k, v = self.qkv(x, pos[:, None])
        slot = count.expand(x.shape[0]) if self.window is None else pos % self.window
        state.put_(slot, KVSlots(k, v, pos[:, None]))
        return self.merge(masked_attention(q, state.k, state.v, state.valid[:, None, None, :]))

    def forward(self, x: torch.Tensor, state: KVSlots | None = None, start: int = 0, docs: Documents | None = None):
        """x: (b, T, d), tokens at positions start..start+T-1 (with `docs`: at docs.positions, masked to their
        documents). Without state: the parallel form (start 0); with state: decoding, continuing from it (with
        docs, one token per call). Returns (out, new state or None)."""
        b, T, _ = x.shape
        positions = torch.arange(start, start + T, device=x.device) if docs is None else docs.positions
        seq_idx = None if docs is None else docs.seq_idx
        q, k, v = self.qkv(x, positions)
        if state is None:
            if self.window is None:
                return self.merge(causal_attention(q, k, v, seq_idx)), None
            return self.merge(window_attention(q, k, v, self.window, seq_idx=seq_idx)), None
        new = KVSlots(k, v, positions.expand(b, -1))
        if self.window is None:  # full attention: every past token stays (empty slots: padding, earlier documents)
            state = state.cat(new)
            if docs is None:
                return self.merge(causal_attention(q, state.k, state.v)), state
            S = state.pos.shape[1]
            causal = torch.arange(S, device=x.device)[None, :] <= torch.arange(S - T, S, device=x.device)[:, None]
            return self.merge(masked_attention(q, state.k, state.v, (causal & state.valid[:, None, :])[:, None])), state
        outs = []
        for a, e in chunk_segments(start, T, self.window):
            o, state, _ = self.attend_window(q[:, :, a:e], state, new.slots(a, e))
            outs.append(o)
        return self.merge(torch.cat(outs, dim=2)), state
