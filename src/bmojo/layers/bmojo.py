"""The B'MOJO mixer (docs/design.md, "The B'MOJO layer"): sliding-window attention over the raw window,
m_f fading tokens (SSM outputs from just beyond the window, the same for every query of a chunk), optionally each
query's own span of s fading tokens (the SSM outputs at t-w-s+1..t-w, `fading_span`), m_e eidetic tokens (the
most surprising past raw tokens, by the innovation test), and optionally each query's r best-matching tokens of a
store of what the working memory dropped (the storage tier, `num_retrieved_tokens`). `m_e = 0` is the 'bmojo_f' kind.

Both forms take every memory rule (positions, merge, eviction) from `bmojo.ops.memory`: the parallel form
computes each chunk's memory positions for the whole sequence at once, the recurrent form updates one
chunk's memory at every chunk boundary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..ops.attention import masked_attention, window_attention, window_attention_weights
from ..ops.memory import (
    EMPTY,
    KVSlots,
    eidetic_positions,
    fading_positions,
    history_end,
    innovation_score,
    keep_top,
    regime_shift,
    split_top,
    store_entry_chunks,
    store_forget_lines,
)
from ..ops.store import TokenStore, gather_heads, retrieved_logits, top_r
from .attention import Attention, chunk_segments
from .documents import Documents, align_documents, copy_into, select_rows
from .mamba2 import Mamba2Mixer, SSMState


@dataclass
class BMojoState:
    """Decoding state of one B'MOJO mixer; every size is fixed (independent of the context length).

    ssm: the SSM's state.
    window: the raw window, the last w tokens (keys/values of u, positions, innovation scores when m_e > 0).
    y (b, R_y, d): the last R_y = max(w + m_f - 1, w + s - 1, k) SSM outputs (zeros before position 0): the
        innovation predictor's history, the source of the fading tokens at a chunk boundary and of each query's
        fading span (s = `fading_span`).
    fading (m_f slots), eidetic (m_e slots, scored): the current chunk's memory prefix.
    pending (min(w, m_e) slots, scored): the best tokens that left the window since the last chunk boundary;
        merged into the eidetic memory at the next one.
    fading_ring (R_f = `fading_ring_slots` slots): in the fixed-address layout only (bmojo.models.static, when m_f > 0
        or s > 0), the fading keys/values of the last R_f SSM outputs (position p in slot p % R_f), projected as each
        output arrives; None in the reference layout.
    store: the storage tier (when r = `num_retrieved_tokens` > 0): the tokens the working memory dropped, content
        keys (before RoPE), values, positions; it grows with the context (the one field that does). pending then
        keeps all w tokens that left the window since the last boundary, so that those the merge drops are stored.
    regime (b, R + 1), forget_before (b,): with `store_regime_threshold`, the mean innovation scores of the last
        R + 1 chunks (NaN: unknown) and the first position of the current regime (older stored tokens are forgotten).
    """

    ssm: SSMState
    window: KVSlots
    y: torch.Tensor
    fading: KVSlots
    eidetic: KVSlots
    pending: KVSlots
    fading_ring: KVSlots | None = None
    store: TokenStore | None = None
    regime: torch.Tensor | None = None
    forget_before: torch.Tensor | None = None

    @property
    def memory(self) -> KVSlots:
        """The memory prefix every query of the current chunk reads: [fading; eidetic]."""
        return self.fading.cat(self.eidetic)


@dataclass
class MemoryRecord:
    """What one parallel forward of a B'MOJO mixer read (handed to `BMojoMixer.recorder`; see bmojo.inspection).

    score (b, L): the innovation score of every token (None without eidetic tokens).
    fading (nc, m_f), eidetic (b, nc, m_e): each chunk's memory positions (EMPTY = a free slot; None when m = 0).
    weights (b, hq, L, M + 2w (+ 2w)): each query's attention probabilities over [fading; eidetic; chunk c-1;
        chunk c (; fading span: the SSM outputs of chunks c-2, c-1)].
    """

    score: torch.Tensor | None
    fading: torch.Tensor | None
    eidetic: torch.Tensor | None
    weights: torch.Tensor


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
        self.fading_span = config.fading_span
        self.eidetic_position = config.eidetic_position
        self.num_eidetic = num_eidetic
        self.num_retrieved = config.num_retrieved_tokens if num_eidetic else 0  # r; the store needs m_e > 0
        self.store_write = config.store_write
        self.store_backend = config.store_backend  # decoding's search of the store; the parallel form is exact
        self.store_nprobe = config.store_nprobe  # lists a "faiss" search scans
        self.retrieved_position = config.retrieved_position
        self.store_horizon = config.store_horizon  # retention: forget stored tokens older than H, or
        self.store_regime_threshold = config.store_regime_threshold  # what came before a regime shift
        self.store_regime_chunks = config.store_regime_chunks
        # the precision stored keys and values keep (None: the layer's own); both forms round them to it
        self.store_dtype = None if config.store_dtype == "model" else getattr(torch, config.store_dtype)
        self.fading_residual = config.fading_residual
        # with the gate, out + g * y, g = scale * p (d,), p learned from 0: the layer starts as the paper's and opens
        # the SSM's path; Adam moves p by about the lr per step whatever its gradient's size, so g moves scale x that
        self.residual_gate = (nn.Parameter(torch.zeros(config.hidden_size))
                              if config.fading_residual and config.fading_residual_gate else None)
        self.residual_gate_scale = config.fading_residual_gate_scale
        self.ssm = Mamba2Mixer(config)
        self.attn = Attention(config, window=self.window)
        self.tied = config.tie_fading_projections
        if not self.tied:
            kv = self.attn.num_kv_heads * self.attn.head_dim
            self.fade_k_proj = nn.Linear(config.hidden_size, kv, bias=False)
            self.fade_v_proj = nn.Linear(config.hidden_size, kv, bias=False)
        weights = torch.tensor(config.innovation_weights, dtype=torch.float32)
        self.register_buffer("innovation_weights", weights, persistent=False)
        # called with a MemoryRecord by each parallel forward when set (bmojo.inspection sets it)
        self.recorder: Callable[[MemoryRecord], None] | None = None

    def fading_kv(self, y: torch.Tensor, positions: torch.Tensor):
        """Keys/values of SSM outputs y (b, T, d) at `positions` (T,) or (b, T): (b, hk, T, hd) each."""
        k_proj, v_proj = (self.attn.k_proj, self.attn.v_proj) if self.tied else (self.fade_k_proj, self.fade_v_proj)
        return self.attn.split_heads(k_proj(y), positions), self.attn.split_heads(v_proj(y), None)

    def output(self, o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.attn.merge(o)
        if not self.fading_residual:
            return out
        return out + (y if self.residual_gate is None else (self.residual_gate_scale * self.residual_gate) * y)

    def forward(self, u: torch.Tensor, state: BMojoState | None = None, start: int = 0,
                docs: Documents | None = None):
        """u: (b, T, d) at positions start..start+T-1 (with `docs`: packed or padded documents, each computed as if
        alone). Without state: the parallel form (start must be 0). With state: the recurrent form, continuing from
        it (with docs, one token per call). Returns (out, new state or None)."""
        if state is not None:
            return self._recurrent(u, state, start, docs)
        L = u.shape[1]
        positions = torch.arange(L, device=u.device) if docs is None else docs.positions
        y, _ = self.ssm(u, docs=docs)
        q, k, v, content = self._qkv(u, positions)
        eps = None
        if self.num_eidetic:
            eps = innovation_score(y, self.innovation_weights, seq_idx=None if docs is None else docs.seq_idx)
        if docs is None:
            return self.output(self._read_memory(q, k, v, y, eps, positions, content=content), y), None
        # the memory reads run with every document starting at a multiple of w (its chunk grid counts from its own
        # start); the SSM and the projections above ran on the tokens as they are
        index, seq_idx, aligned_positions = align_documents(docs.seq_idx, self.window)
        b, L_aligned = seq_idx.shape
        rows = torch.arange(b, device=u.device)[:, None]

        def aligned(t: torch.Tensor, dim: int, fill: float = 0.0) -> torch.Tensor:  # token l of row r: slot index[r, l]
            shape = list(t.shape)
            shape[dim] = L_aligned
            out = t.new_full(shape, fill)
            out.movedim(dim, 1)[rows, index] = t.movedim(dim, 1)
            return out

        o = self._read_memory(aligned(q, 2), aligned(k, 2), aligned(v, 2), aligned(y, 1),
                              None if eps is None else aligned(eps, 1, float("-inf")), aligned_positions, seq_idx,
                              None if content is None else tuple(aligned(t, 2) for t in content))
        return self.output(o.movedim(2, 1)[rows, index].movedim(1, 2), y), None

    def _qkv(self, u: torch.Tensor, positions: torch.Tensor):
        """q, k (rotated at `positions`), v, and with a store the content (unrotated) queries and keys, else None."""
        if not self.num_retrieved:
            return (*self.attn.qkv(u, positions), None)
        q0, k0, v = self.attn.qkv(u, None)
        return self.attn.rotate(q0, positions), self.attn.rotate(k0, positions), v, (q0, k0)

    def _read_memory(self, q, k, v, y, eps, positions, seq_idx=None, content=None) -> torch.Tensor:
        """Blocked attention of every query over its window and its chunk's memory: q (b, h, L, hd), k, v
        (b, hk, L, hd), SSM outputs y (b, L, d), innovation scores eps (b, L) (None without eidetic tokens),
        positions (L,) or (b, L); seq_idx (b, L) for documents laid out on the chunk grid; content: the unrotated
        (q, k) when the layer retrieves from its store. Returns (b, h, L, hd)."""
        b, L = y.shape[:2]
        w = self.window
        nc = -(-L // w)
        mem_k, mem_v, mem_valid = [], [], []
        fpos = epos = None
        if self.num_fading:
            fpos = fading_positions(torch.arange(nc, device=y.device), w, self.num_fading)  # (nc, m_f)
            flat = fpos.clamp(min=0).flatten()
            if seq_idx is None:
                fk, fv = self.fading_kv(y[:, flat], flat)  # only the nc * m_f outputs that are read
                valid = (fpos >= 0).expand(b, -1, -1)
            else:  # a fading token of another document is empty
                fk, fv = self.fading_kv(y[:, flat], positions[:, flat])
                valid = (fpos >= 0) & (seq_idx[:, flat].view(b, *fpos.shape) == seq_idx[:, ::w, None])
            mem_k.append(fk.unflatten(2, fpos.shape))
            mem_v.append(fv.unflatten(2, fpos.shape))
            mem_valid.append(valid)
        if self.num_eidetic:
            epos = eidetic_positions(eps, w, self.num_eidetic, seq_idx)
            ek = gather_positions(k, epos)
            if self.eidetic_position == "edge":  # from each token's own position to its chunk's edge
                rows = positions.expand(b, -1) if positions.dim() == 1 else positions
                own = rows.gather(1, epos.clamp(min=0).flatten(1)).view_as(epos)
                edge = self._edge(rows[:, ::w])  # (b, nc): every chunk's first position
                ek = self.attn.rope.rotate(ek, (edge[..., None] - own)[:, None])
            mem_k.append(ek)
            mem_v.append(gather_positions(v, epos))
            mem_valid.append(epos >= 0)
        memory = (torch.cat(mem_k, 3), torch.cat(mem_v, 3), torch.cat(mem_valid, 2)) if mem_k else ()
        band = (*self.fading_kv(y, positions), self.fading_span) if self.fading_span else None
        extra = self._retrieve_parallel(*content, v, eps, epos, positions, seq_idx) if self.num_retrieved else None
        if self.recorder is not None:
            if extra is not None:
                raise ValueError("inspection does not cover the storage tier yet (num_retrieved_tokens > 0)")
            weights = window_attention_weights(q, k, v, w, *memory, seq_idx=seq_idx, band=band)
            self.recorder(MemoryRecord(score=eps, fading=fpos, eidetic=epos, weights=weights))
        return window_attention(q, k, v, w, *memory, seq_idx=seq_idx, band=band, extra=extra)

    def _retrieve_parallel(self, q0, k0, v, eps, epos, positions, seq_idx):
        """Parallel form of the storage tier: query t of chunk c reads the r stored tokens with the highest content
        score among chunk c's store, {s : entry[s] <= c, s >= line[c]} (`store_entry_chunks`, `store_forget_lines`;
        of its own document). Content queries and keys q0 (b, h, L, hd), k0 (b, hk, L, hd); innovation scores eps
        (b, L); eidetic memories epos (b, nc, m_e); positions (L,) or (b, L) (in-document). Returns the `extra` of
        `window_attention`: logits (b, h, L, r) and values (b, h, L, r, hd)."""
        L = q0.shape[2]
        if self.store_dtype is not None:  # what decoding would store: keys and values at the store's precision
            k0, v = k0.to(self.store_dtype).to(k0.dtype), v.to(self.store_dtype).to(v.dtype)
        entry = store_entry_chunks(epos, L, self.window, self.store_write)
        chunk = torch.arange(L, device=q0.device) // self.window
        line = None
        if self.store_horizon or self.store_regime_threshold:
            line = store_forget_lines(eps, self.window, self.store_horizon, self.store_regime_threshold,
                                      self.store_regime_chunks, seq_idx)
            line = line[:, chunk]  # (b, L): per query
        slot = torch.arange(L, device=q0.device)

        def allowed(a: int, e: int) -> torch.Tensor:  # (b, 1, L, e - a)
            ok = entry[:, None, None, a:e] <= chunk[None, None, :, None]
            if line is not None:
                ok = ok & (slot[None, None, None, a:e] >= line[:, None, :, None])
            return ok if seq_idx is None else ok & (seq_idx[:, None, None, a:e] == seq_idx[:, None, :, None])

        scores, index = top_r(q0, k0, self.num_retrieved, allowed)
        rows = positions.expand(q0.shape[0], -1) if positions.dim() == 1 else positions  # (b, L) in-document
        pos = rows.gather(1, index.flatten(1)).view_as(index).masked_fill(scores == float("-inf"), EMPTY)
        return self._retrieved_logits(q0, gather_heads(k0, index), pos, rows), gather_heads(v, index)

    def _retrieved_logits(self, q0, k0, pos, qpos) -> torch.Tensor:
        """Logits (b, h, T, r) of the retrieved tokens: content queries q0 (b, h, T, hd) and keys k0 (b, h, T, r, hd),
        their positions pos (b, h, T, r) (EMPTY: masked), the queries' positions qpos (b, T). `retrieved_position`:
        "none", the content score; "original", the RoPE logit at the token's own position; "edge", at the chunk's
        edge (as eidetic_position="edge": a distance seen in training)."""
        if self.retrieved_position != "none":
            at = pos if self.retrieved_position == "original" else self._edge(qpos)[:, None, :, None]
            k0 = self.attn.rope.rotate(k0, at - qpos[:, None, :, None])  # q0 . R(s - t) k0 = rot(q0, t) . rot(k0, s)
        return retrieved_logits(q0, k0, pos)

    @property
    def fading_ring_slots(self) -> int:
        """R_f, the fading ring's slots in the static layout: the step writes its token's keys/values (position t)
        before it reads the ring, and reads back to t - w - m_f + 1 (the fading tokens, at a boundary) and t - w - s + 1
        (its span), so R_f = max(w + m_f, w + s) (<= R_y + 1)."""
        return max(self.window + self.num_fading if self.num_fading else 0,
                   self.window + self.fading_span if self.fading_span else 0)

    def init_state(self, batch_size: int, device, dtype) -> BMojoState:
        hk, hd = self.attn.num_kv_heads, self.attn.head_dim
        m_f, m_e = self.num_fading, self.num_eidetic
        slots = lambda n, scored: KVSlots.empty(batch_size, hk, n, hd, device, dtype, scored)  # noqa: E731
        y_size = max(self.window + m_f - 1 if m_f else 0, self.window + self.fading_span - 1 if self.fading_span else 0,
                     self.innovation_weights.shape[0])
        return BMojoState(
            ssm=self.ssm.init_state(batch_size, device, dtype),
            window=self.attn.init_state(batch_size, device, dtype, scored=m_e > 0),
            y=torch.zeros(batch_size, y_size, self.attn.o_proj.out_features, device=device, dtype=dtype),
            fading=slots(m_f, False),
            eidetic=slots(m_e, True),
            pending=slots(self.window if self.num_retrieved else min(self.window, m_e), True),
            store=TokenStore([]) if self.num_retrieved else None,
            regime=(torch.full((batch_size, self.store_regime_chunks + 1), float("nan"), device=device)
                    if self.num_retrieved and self.store_regime_threshold else None),
            forget_before=(torch.zeros(batch_size, dtype=torch.long, device=device)
                           if self.num_retrieved and self.store_regime_threshold else None),
        )

    def _enter_chunk(self, s: BMojoState, chunk, rows) -> BMojoState:
        """The state once chunk `chunk` (an int, or (b,) per row) is entered (its first token is next), for the
        rows where `rows` (True, or (b,) bool) holds: the window's oldest token (at history_end(chunk)) joins the
        pending candidates; fading tokens from the y history at `fading_positions`; eidetic = top m_e of the
        previous eidetic memory and the candidates; with a store, what that merge drops is stored (`store_write`)."""
        b, m_f, w = s.y.shape[0], self.num_fading, self.window
        entered = dataclasses.replace(s)
        if self.num_eidetic:
            entered.pending = keep_top(s.pending, s.window.slots(0, 1))
        if m_f:
            chunk = torch.as_tensor(chunk, device=s.y.device).expand(b)
            pos = fading_positions(chunk, w, m_f)  # (b, m_f)
            # the y history ends at position chunk * w - 1 (EMPTY slots read a zero entry from before position 0)
            index = pos - chunk[:, None] * w + s.y.shape[1]
            y = s.y.gather(1, index[..., None].expand(-1, -1, s.y.shape[2]))
            k, v = self.fading_kv(y, pos.clamp(min=0))
            entered.fading = KVSlots(k, v, pos)
        dropped = None
        if self.num_eidetic:
            if self.num_retrieved:
                entered.eidetic, dropped, from_memory = split_top(s.eidetic, entered.pending)
                if self.store_write == "evicted":
                    dropped = dataclasses.replace(dropped, pos=dropped.pos.masked_fill(~from_memory, EMPTY))
            else:
                entered.eidetic = keep_top(s.eidetic, entered.pending)
            entered.pending = dataclasses.replace(entered.pending, pos=torch.full_like(s.pending.pos, EMPTY),
                                                  score=torch.full_like(s.pending.score, float("-inf")))
        entered = entered if rows is True else select_rows(rows, entered, s)
        if dropped is not None:  # the tokens the merge dropped go to the store, as content keys
            pos = dropped.pos if rows is True else dropped.pos.masked_fill(~rows[:, None], EMPTY)
            k0 = dropped.k if self.attn.rope is None else self.attn.rope.rotate(dropped.k, -dropped.pos[:, None])
            dtype = self.store_dtype or dropped.v.dtype  # .to() of the same dtype is the tensor itself
            entered.store = s.store.append(KVSlots(k0.to(dtype), dropped.v.to(dtype), pos))
            if self.store_horizon or self.store_regime_threshold:
                entered = self._forget(s, entered, chunk, rows)
        return entered

    def _forget(self, s: BMojoState, entered: BMojoState, chunk, rows) -> BMojoState:
        """The store's retention entering chunk c (the recurrent twin of `store_forget_lines`): it forgets the
        tokens before c w - H (`store_horizon`) and, once the regime test fires on chunk c - 1 (whose innovation
        scores the window holds now), every token before that chunk."""
        b, w = s.y.shape[0], self.window
        chunk = torch.as_tensor(chunk, device=s.y.device).expand(b)
        line = torch.zeros_like(chunk)
        if self.store_regime_threshold:
            mean = s.window.score.mean(-1).masked_fill(chunk == 1, float("nan"))  # a document's first chunk: unknown
            ring = torch.cat([s.regime[:, 1:], mean[:, None]], 1)
            shift = regime_shift(ring, self.store_regime_threshold)
            line = torch.maximum(s.forget_before, torch.where(shift, (chunk - 1) * w, 0))
            entered.regime = ring if rows is True else select_rows(rows, ring, s.regime)
            entered.forget_before = line if rows is True else select_rows(rows, line, s.forget_before)
        if self.store_horizon:
            line = torch.maximum(line, chunk * w - self.store_horizon)
        entered.store = entered.store.forget(line if rows is True else line.masked_fill(~rows, 0))
        return entered

    def _recurrent(self, u: torch.Tensor, state: BMojoState, start: int, docs: Documents | None):
        b, T, _ = u.shape
        w, m_e = self.window, self.num_eidetic
        positions = torch.arange(start, start + T, device=u.device).expand(b, -1) if docs is None else docs.positions
        y, ssm_state = self.ssm(u, state.ssm, start, docs)
        q, k, v, content = self._qkv(u, positions)
        eps = None
        if m_e:
            k_hist = self.innovation_weights.shape[0]
            eps = innovation_score(y, self.innovation_weights, state.y[:, state.y.shape[1] - k_hist :],
                                   None if docs is None else docs.seq_idx)
        new = KVSlots(k, v, positions, eps)
        s = dataclasses.replace(state, ssm=ssm_state)
        outs = []
        for a, e in chunk_segments(start, T, w) if docs is None else [(t, t + 1) for t in range(T)]:
            if docs is None:  # every row at the same position: a chunk boundary is a Python decision
                boundary = (start + a) % w == 0 and start + a > 0
                chunk = (start + a) // w
            else:
                boundary = (positions[:, a] % w == 0) & (positions[:, a] > 0)  # (b,)
                chunk = positions[:, a] // w
            if boundary is not False:
                s = self._enter_chunk(s, chunk, boundary)
            band = self._fading_span(s.y, positions[:, a:e]) if self.fading_span else None
            memory = self._memory(s, positions[:, a])
            extra = None
            if self.num_retrieved:  # the r stored tokens with the highest content score, for each query
                found = s.store.search(content[0][:, :, a:e], self.num_retrieved, self.store_backend,
                                        self.store_nprobe)
                logits = self._retrieved_logits(content[0][:, :, a:e], found.k, found.pos, positions[:, a:e])
                extra = logits, found.v
            o, s.window, left = self.attn.attend_window(q[:, :, a:e], s.window, new.slots(a, e), memory, band,
                                                        self.fading_span, extra)
            outs.append(o)
            if m_e:  # the other tokens that left the window are candidates for the next chunk
                s.pending = keep_top(s.pending, _without_first(left, boundary))
            s.y = torch.cat([s.y, y[:, a:e]], 1)[:, -s.y.shape[1] :]
        return self.output(torch.cat(outs, dim=2), y), s

    def _edge(self, pos: torch.Tensor) -> torch.Tensor:
        """The rotary position where eidetic_position="edge" puts the eidetic tokens read by a query at `pos` (any
        shape): c w - w - m_f for chunk c = pos // w, just beyond the chunk's fading tokens."""
        return history_end(pos // self.window, self.window) - self.num_fading

    def _memory(self, s: BMojoState, pos: torch.Tensor) -> KVSlots:
        """The memory prefix [fading; eidetic] read by the queries of one chunk, at positions pos (b,): the eidetic
        keys turned from their own positions to the chunk's edge under eidetic_position="edge"."""
        if self.eidetic_position == "original" or not self.num_eidetic:
            return s.memory
        k = self.attn.rope.rotate(s.eidetic.k, (self._edge(pos)[:, None] - s.eidetic.pos)[:, None])
        return s.fading.cat(dataclasses.replace(s.eidetic, k=k))

    def _fading_span(self, y_hist: torch.Tensor, pos: torch.Tensor) -> KVSlots:
        """The fading spans of n consecutive queries at positions pos (b, n) inside one chunk: the keys/values of the
        SSM outputs at pos[:, 0] - w - s + 1 .. pos[:, -1] - w (n + s - 1 slots, EMPTY before position 0), read from
        the y history y_hist (b, R_y, d), which ends at position pos[:, 0] - 1."""
        n, R = pos.shape[1], y_hist.shape[1]
        offsets = torch.arange(n + self.fading_span - 1, device=pos.device) - self.window - self.fading_span + 1
        band_pos = pos[:, :1] + offsets
        k, v = self.fading_kv(y_hist[:, R + offsets], band_pos.clamp(min=0))
        return KVSlots(k, v, band_pos.masked_fill(band_pos < 0, EMPTY))

    def static_step(self, u: torch.Tensor, s: BMojoState, pos: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """One token per row in the fixed-address layout (bmojo.models.static): `s.window` is a ring of w slots and
        `s.y` a ring of R_y outputs (position p in slot p % size); the other fields as in the recurrent form. The
        chunk-boundary work (`_enter_chunk`) is computed at every step and kept only in the rows at a boundary (a
        mask, not a branch). u: (b, 1, d) at positions pos (b,). Updates `s` in place; returns (b, 1, d)."""
        b, _, d = u.shape
        w, m_f, R = self.window, self.num_fading, s.y.shape[1]
        y = self.ssm.static_step(u, s.ssm, pos, count)
        q, k, v = self.attn.qkv(u, pos[:, None])
        boundary = (pos % w == 0) & (pos > 0)
        slot = pos % w
        eps = None
        if self.num_eidetic:
            # the innovation predictor's history: positions pos - k .. pos - 1 of the y ring
            k_hist = self.innovation_weights.shape[0]
            hist = (pos[:, None] - k_hist + torch.arange(k_hist, device=u.device)) % R
            eps = innovation_score(y, self.innovation_weights, s.y.gather(1, hist[..., None].expand(-1, -1, d)))
            pending = keep_top(s.pending, s.window.take(slot[:, None]))  # the token at pos - w leaves the window
            cleared = dataclasses.replace(
                pending, pos=torch.full_like(pending.pos, EMPTY), score=torch.full_like(pending.score, float("-inf"))
            )
            copy_into(s.eidetic, select_rows(boundary, keep_top(s.eidetic, pending), s.eidetic))
            copy_into(s.pending, select_rows(boundary, cleared, pending))
        if s.fading_ring is not None:
            # written before it is read: the slot taken, that of position pos - R_f, is older than every position read
            # below, and a ring read before its write would be copied whole on every step by torch.compile
            R_f = s.fading_ring.pos.shape[1]
            s.fading_ring.put_(pos % R_f, KVSlots(*self.fading_kv(y, pos[:, None]), pos[:, None]))
        if m_f:
            fpos = fading_positions(pos // w, w, m_f)  # (b, m_f); at a boundary they lie in the ring
            entered = dataclasses.replace(s.fading_ring.take(fpos % R_f), pos=fpos)
            copy_into(s.fading, select_rows(boundary, entered, s.fading))
        keys = self._memory(s, pos)
        if self.fading_span:  # this query's span, pos - w - s + 1 .. pos - w, lies in the ring
            band_pos = pos[:, None] - w - self.fading_span + 1 + torch.arange(self.fading_span, device=u.device)
            band = dataclasses.replace(s.fading_ring.take(band_pos % R_f),
                                       pos=band_pos.masked_fill(band_pos < 0, EMPTY))
            keys = keys.cat(band)
        s.window.put_(slot, KVSlots(k, v, pos[:, None], eps))
        s.y[torch.arange(b, device=u.device), pos % R] = y[:, 0].to(s.y.dtype)  # index_put_: in place when compiled
        keys = keys.cat(s.window)
        o = masked_attention(q, keys.k, keys.v, keys.valid[:, None, None, :])
        return self.output(o, y)


def _without_first(slots: KVSlots, rows) -> KVSlots:
    """`slots` minus its first slot in `rows` (True: every row; False: none; or (b,) bool): that token, at
    history_end of the chunk just entered, was already a candidate there."""
    if rows is True:
        return slots.slots(1)
    if rows is False:
        return slots
    first = torch.zeros_like(slots.pos, dtype=torch.bool)
    first[:, 0] = rows
    return KVSlots(slots.k, slots.v, slots.pos.masked_fill(first, EMPTY), slots.score.masked_fill(first, float("-inf")))
