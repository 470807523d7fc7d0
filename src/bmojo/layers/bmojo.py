"""The B'MOJO mixer (docs/design.md, "The B'MOJO layer"): sliding-window attention over the raw window,
m_f fading tokens (SSM outputs from just beyond the window) and m_e eidetic tokens (the most surprising
past raw tokens, by the innovation test). `m_e = 0` is the 'bmojo_f' kind.

Both forms take every memory rule (positions, merge, eviction) from `bmojo.ops.memory`: the parallel form
computes each chunk's memory positions for the whole sequence at once, the recurrent form updates one
chunk's memory at every chunk boundary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ..ops.attention import window_attention
from ..ops.memory import (
    EMPTY,
    KVSlots,
    eidetic_positions,
    fading_positions,
    innovation_score,
    keep_top,
)
from .attention import Attention, chunk_segments
from .mamba2 import Mamba2Mixer, SSMState


@dataclass
class BMojoState:
    """Decoding state of one B'MOJO mixer; every size is fixed (independent of the context length).

    ssm: the SSM's state.
    window: the raw window, the last w tokens (keys/values of u, positions, innovation scores when m_e > 0).
    y (b, R_y, d): the last R_y = max(w + m_f - 1, k) SSM outputs (zeros before position 0): the innovation
        predictor's history and, at a chunk boundary, the source of the fading tokens.
    fading (m_f slots), eidetic (m_e slots, scored): the current chunk's memory prefix.
    pending (min(w, m_e) slots, scored): the best tokens that left the window since the last chunk boundary;
        merged into the eidetic memory at the next one.
    """

    ssm: SSMState
    window: KVSlots
    y: torch.Tensor
    fading: KVSlots
    eidetic: KVSlots
    pending: KVSlots

    @property
    def memory(self) -> KVSlots:
        """The memory prefix every query of the current chunk reads: [fading; eidetic]."""
        return self.fading.cat(self.eidetic)


def gather_positions(t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """t: (b, H, L, hd), pos: (b, nc, M) (EMPTY allowed) -> (b, H, nc, M, hd)."""
    b, H, _, hd = t.shape
    nc, M = pos.shape[1:]
    idx = pos.clamp(min=0).reshape(b, 1, nc * M, 1).expand(b, H, nc * M, hd)
    return t.gather(2, idx).view(b, H, nc, M, hd)


class BMojoMixer(nn.Module):
    """u: (b, L, d) -> (b, L, d). Parameters: `ssm` (Mamba-2), `attn` (q/k/v/o), and, when the fading
    projections are untied, `fade_k_proj` / `fade_v_proj`."""

    def __init__(self, config, num_eidetic: int):
        super().__init__()
        self.window = config.window_size
        self.num_fading = config.num_fading_tokens
        self.num_eidetic = num_eidetic
        self.fading_residual = config.fading_residual
        self.ssm = Mamba2Mixer(config)
        self.attn = Attention(config, window=self.window)
        self.tied = config.tie_fading_projections
        if not self.tied:
            kv = self.attn.num_kv_heads * self.attn.head_dim
            self.fade_k_proj = nn.Linear(config.hidden_size, kv, bias=False)
            self.fade_v_proj = nn.Linear(config.hidden_size, kv, bias=False)
        weights = torch.tensor(config.innovation_weights, dtype=torch.float32)
        self.register_buffer("innovation_weights", weights, persistent=False)

    def fading_kv(self, y: torch.Tensor, positions: torch.Tensor):
        """Keys/values of SSM outputs y (b, T, d) at `positions` (T,): (b, hk, T, hd) each."""
        k_proj, v_proj = (self.attn.k_proj, self.attn.v_proj) if self.tied else (self.fade_k_proj, self.fade_v_proj)
        return self.attn.split_heads(k_proj(y), positions), self.attn.split_heads(v_proj(y), None)

    def output(self, o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.attn.merge(o)
        return out + y if self.fading_residual else out

    def forward(self, u: torch.Tensor, state: BMojoState | None = None, start: int = 0):
        """u: (b, T, d) at positions start..start+T-1. Without state: the parallel form (start must be 0).
        With state: the recurrent form, continuing from it. Returns (out, new state or None)."""
        if state is not None:
            return self._recurrent(u, state, start)
        b, L, _ = u.shape
        w = self.window
        positions = torch.arange(L, device=u.device)
        y, _ = self.ssm(u)
        q, k, v = self.attn.qkv(u, positions)
        nc = -(-L // w)
        mem_k, mem_v, mem_valid = [], [], []
        if self.num_fading:
            fpos = fading_positions(torch.arange(nc, device=u.device), w, self.num_fading)  # (nc, m_f)
            flat = fpos.clamp(min=0).flatten()
            fk, fv = self.fading_kv(y[:, flat], flat)  # only the nc * m_f outputs that are read
            mem_k.append(fk.unflatten(2, fpos.shape))
            mem_v.append(fv.unflatten(2, fpos.shape))
            mem_valid.append((fpos >= 0).expand(b, -1, -1))
        if self.num_eidetic:
            epos = eidetic_positions(innovation_score(y, self.innovation_weights), w, self.num_eidetic)
            mem_k.append(gather_positions(k, epos))
            mem_v.append(gather_positions(v, epos))
            mem_valid.append(epos >= 0)
        if mem_k:
            o = window_attention(q, k, v, w, torch.cat(mem_k, 3), torch.cat(mem_v, 3), torch.cat(mem_valid, 2))
        else:
            o = window_attention(q, k, v, w)
        return self.output(o, y), None

    def init_state(self, batch_size: int, device, dtype) -> BMojoState:
        hk, hd = self.attn.num_kv_heads, self.attn.head_dim
        m_f, m_e = self.num_fading, self.num_eidetic
        slots = lambda n, scored: KVSlots.empty(batch_size, hk, n, hd, device, dtype, scored)  # noqa: E731
        y_size = max(self.window + m_f - 1 if m_f else 0, self.innovation_weights.shape[0])
        return BMojoState(
            ssm=self.ssm.init_state(batch_size, device, dtype),
            window=self.attn.init_state(batch_size, device, dtype, scored=m_e > 0),
            y=torch.zeros(batch_size, y_size, self.attn.o_proj.out_features, device=device, dtype=dtype),
            fading=slots(m_f, False),
            eidetic=slots(m_e, True),
            pending=slots(min(self.window, m_e), True),
        )

    def _enter_chunk(self, s: BMojoState, chunk: int) -> None:
        """Refresh the memory for chunk `chunk` (its first token is next): fading tokens from the y history at
        `fading_positions`; eidetic = top m_e of the previous eidetic memory and the pending candidates."""
        if self.num_fading:
            pos = fading_positions(torch.tensor([chunk], device=s.y.device), self.window, self.num_fading)[0]
            # the y history ends at position chunk * w - 1 (EMPTY slots read a zero entry from before position 0)
            y = s.y[:, pos - chunk * self.window + s.y.shape[1]]
            k, v = self.fading_kv(y, pos.clamp(min=0))
            s.fading = KVSlots(k, v, pos.expand(s.y.shape[0], -1))
        if self.num_eidetic:
            s.eidetic = keep_top(s.eidetic, s.pending)
            s.pending = dataclasses.replace(s.pending, score=torch.full_like(s.pending.score, float("-inf")),
                                            pos=torch.full_like(s.pending.pos, EMPTY))

    def _recurrent(self, u: torch.Tensor, state: BMojoState, start: int):
        b, T, _ = u.shape
        w, m_e = self.window, self.num_eidetic
        positions = torch.arange(start, start + T, device=u.device)
        y, ssm_state = self.ssm(u, state.ssm)
        q, k, v = self.attn.qkv(u, positions)
        eps = None
        if m_e:
            k_hist = self.innovation_weights.shape[0]
            eps = innovation_score(y, self.innovation_weights, state.y[:, state.y.shape[1] - k_hist :])
        new = KVSlots(k, v, positions.expand(b, -1), eps)
        s = dataclasses.replace(state, ssm=ssm_state)
        outs = []
        for a, e in chunk_segments(start, T, w):
            boundary = (start + a) % w == 0 and start + a > 0
            if boundary:
                chunk = (start + a) // w
                if m_e:  # the window's oldest token, at history_end(chunk), becomes a candidate for this chunk
                    s.pending = keep_top(s.pending, s.window.slots(0, 1))
                self._enter_chunk(s, chunk)
            o, s.window, left = self.attn.attend_window(q[:, :, a:e], s.window, new.slots(a, e), s.memory)
            outs.append(o)
            if m_e:  # the other tokens that left the window are candidates for the next chunk
                s.pending = keep_top(s.pending, left.slots(1 if boundary else 0))
            s.y = torch.cat([s.y, y[:, a:e]], 1)[:, -s.y.shape[1] :]
        return self.output(torch.cat(outs, dim=2), y), s
