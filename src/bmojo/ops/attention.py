"""Attention kernels: masked attention with grouped-query heads, and blocked sliding-window attention
with a per-chunk memory prefix (the B'MOJO read), plus its dense reference twin.

Shapes: q (b, hq, T, d); k, v (b, hk, S, d) with hk dividing hq (query head i reads kv head
i // (hq // hk)). Boolean masks are True where a query may attend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import compute_dtype


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax attention with a boolean mask broadcastable to (b, hq, T, S). Every query row must
    have at least one True entry. Returns (b, hq, T, d)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """`masked_attention` as matmul, additive mask, softmax, matmul, all on `dtype` (bf16/fp16) tensors, for a mask
    of shape (b, 1, T, S). PyTorch's CPU softmax accumulates in fp32 internally and adding 0 / -inf does not round,
    so this rounds where SDPA does, the scores and the probabilities, plus q * 1/sqrt(d) when d is not a power of 4
    (head size 64: exact). The reduced-precision path on CPU, where PyTorch's flash attention with a mask
    is slower in bf16 than in fp32: this form is 2x faster than either for the blocked window attention (scores of
    size (b, hq, T, S) are materialised, which is O(L (2w + M)) there). Returns (b, hq, T, d) in `dtype`."""
    b, hq, T, d = q.shape
    hk, S = k.shape[1], k.shape[2]
    rep = hq // hk  # query heads i * rep .. i * rep + rep - 1 read kv head i: fold them into the rows
    q = q.to(dtype) * d**-0.5
    scores = torch.matmul(q.reshape(b, hk, rep * T, d), k.to(dtype).transpose(-1, -2)).view(b, hk, rep, T, S)
    scores.add_(torch.zeros(mask.shape, dtype=dtype, device=q.device).masked_fill_(~mask, float("-inf"))[:, :, None])
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs.view(b, hk, rep * T, S), v.to(dtype)).view(b, hq, T, d)


def attention_with_extra(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                         extra: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """`masked_attention` where each query also reads r keys of its own, given as `extra` = (logits (b, hq, T, r),
    already scaled, -inf = none; values (b, hq, T, r, d)): one softmax over both (B'MOJO's retrieved tokens, whose
    logits come from the store search). Scores and probabilities in fp32. mask: (b, 1, T, S). Returns (b, hq, T, d)."""
    b, hq, T, d = q.shape
    hk, S = k.shape[1], k.shape[2]
    rep = hq // hk  # query heads i * rep .. i * rep + rep - 1 read kv head i: fold them into the rows
    scores = torch.matmul(q.reshape(b, hk, rep * T, d), k.transpose(-1, -2)).view(b, hq, T, S).float() * d**-0.5
    extra_logits, extra_v = extra
    probs = torch.cat([scores.masked_fill(~mask, float("-inf")), extra_logits.float()], -1).softmax(-1)
    out = torch.matmul(probs[..., :S].to(v.dtype).reshape(b, hk, rep * T, S), v).view(b, hq, T, d)
    return (out + (probs[..., S:, None].to(extra_v.dtype) * extra_v).sum(-2)).to(q.dtype)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_idx: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Full causal attention where the T queries are the last T of the S keys. seq_idx (b, S) (optional,
    packed documents: a dense (T, S) mask per row): keys of another document are masked. Returns (b, hq, T, d)."""
    T, S = q.shape[2], k.shape[2]
    if seq_idx is not None:
        causal = torch.arange(S, device=q.device)[None, :] <= torch.arange(S - T, S, device=q.device)[:, None]
        same = seq_idx[:, -T:, None] == seq_idx[:, None, :]
        return masked_attention(q, k, v, (causal & same)[:, None])
    if T == S:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
    mask = torch.arange(S, device=q.device)[None, :] <= torch.arange(S - T, S, device=q.device)[:, None]
    return masked_attention(q, k, v, mask)


def _chunk_views(t: torch.Tensor, window: int, nc: int, back: tuple[int, ...]) -> list[torch.Tensor]:
    """t (b, H, L, d) -> for each s in `back`, chunk c - s of t as a view (b, nc, H, w, d) (zeros before chunk 0 and
    past L): one padded copy of t, the chunks read from it in place."""
    first = max(back)
    t = F.pad(t, (0, 0, first * window, nc * window - t.shape[2]))
    return [t[:, :, (first - s) * window:(first - s + nc) * window].unflatten(2, (nc, window)).transpose(1, 2)
            for s in back]


def _window_blocks(q, k, v, window, mem_k=None, mem_v=None, mem_valid=None, seq_idx=None, band=None):
    """The blocked layout of `window_attention`, chunks folded into the batch: q (b*nc, hq, w, d), keys and values
    (b*nc, hk, S, d) = [memory; chunk c-1; chunk c (; band chunks c-2, c-1)] with S = M + 2w (+ 2w), and the mask
    (b*nc, 1, w, S). Keys and values are written once, by one cat of views, straight into the folded layout."""
    b, hq, L, d = q.shape
    w = window
    nc = -(-L // w)
    pad = nc * w - L
    key_parts, value_parts = _chunk_views(k, w, nc, (1, 0)), _chunk_views(v, w, nc, (1, 0))
    i = torch.arange(w, device=q.device)[:, None]  # query offset in its chunk
    j = torch.arange(2 * w, device=q.device)[None, :]  # key offset in [chunk c-1; chunk c]
    raw_mask = (j > i) & (j <= i + w)  # t - w < s <= t with s - t = j - w - i
    raw_mask = raw_mask.expand(nc, w, 2 * w).clone()
    raw_mask[0, :, :w] = False  # chunk -1 does not exist
    mask = raw_mask.expand(b, nc, w, 2 * w)
    docs = None
    if seq_idx is not None:
        docs = F.pad(seq_idx, (0, pad), mode="replicate").view(b, nc, w) if pad else seq_idx.view(b, nc, w)
        key_docs = torch.cat([F.pad(docs, (0, 0, 1, 0), value=-1)[:, :nc], docs], dim=2)  # [chunk c-1; chunk c]
        mask = mask & (docs[..., :, None] == key_docs[..., None, :])
    if band is not None:  # keys at t - w - s < f <= t - w: [chunk c-2; chunk c-1] of the band's keys
        band_k, band_v, span = band
        key_parts += _chunk_views(band_k, w, nc, (2, 1))
        value_parts += _chunk_views(band_v, w, nc, (2, 1))
        band_mask = (j > i + w - span) & (j <= i + w)  # f - t = j - 2w - i
        band_mask = band_mask.expand(nc, w, 2 * w).clone()
        band_mask[0] = False  # chunks -2 and -1 do not exist
        if nc > 1:
            band_mask[1, :, :w] = False
        band_mask = band_mask.expand(b, nc, w, 2 * w)
        if docs is not None:
            band_docs = F.pad(key_docs, (0, 0, 1, 0), value=-1)[:, :nc]  # [chunk c-2; chunk c-1]
            band_mask = band_mask & (docs[..., :, None] == band_docs[..., None, :])
        mask = torch.cat([mask, band_mask], dim=3)
    if mem_k is not None and mem_k.shape[3] > 0:
        key_parts.insert(0, mem_k.transpose(1, 2))
        value_parts.insert(0, mem_v.transpose(1, 2))
        mask = torch.cat([mem_valid[:, :, None, :].expand(b, nc, w, -1), mask], dim=3)
    keys, values = torch.cat(key_parts, dim=3).flatten(0, 1), torch.cat(value_parts, dim=3).flatten(0, 1)
    q_blocks = F.pad(q, (0, 0, 0, pad)).unflatten(2, (nc, w)).transpose(1, 2).reshape(b * nc, hq, w, d)
    return q_blocks, keys, values, mask.reshape(b * nc, 1, w, keys.shape[2])


def _unfold(t: torch.Tensor, b: int, L: int) -> torch.Tensor:
    """(b*nc, hq, w, X) in the blocked layout -> (b, hq, L, X)."""
    _, hq, w, X = t.shape
    nc = t.shape[0] // b
    return t.view(b, nc, hq, w, X).transpose(1, 2).reshape(b, hq, nc * w, X)[:, :, :L]


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    mem_k: torch.Tensor | None = None,
    mem_v: torch.Tensor | None = None,
    mem_valid: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    band: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    extra: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Blocked causal sliding-window attention with optional memory tokens per chunk, an optional band, and optional
    keys of each query's own (`extra`).

    Positions are cut into chunks of length `window` (w). Query t (chunk c = t // w) attends, under one
    softmax, to raw keys s with t - w < s <= t, to the M memory slots of its chunk and, with `band` = (band_k,
    band_v, span), to band keys f with t - w - span < f <= t - w (1 <= span <= w; B'MOJO's per-query fading span).
    q: (b, hq, L, d); k, v, band_k, band_v: (b, hk, L, d); mem_k, mem_v: (b, hk, nc, M, d); mem_valid: (b, nc, M),
    nc = ceil(L / w); seq_idx (b, L) (optional, packed documents): raw and band keys of another document are
    masked. Cost O(L (2w + M)) (+ 2w with a band): each chunk's queries see [memory; chunk c-1; chunk c (; band
    chunks c-2, c-1)]. `extra` = (logits (b, hq, L, r), values (b, hq, L, r, d)): r more keys per query, given by
    their scaled logits (-inf = none), under the same softmax (`attention_with_extra`). Returns (b, hq, L, d).
    """
    q_blocks, keys, values, mask = _window_blocks(q, k, v, window, mem_k, mem_v, mem_valid, seq_idx, band)
    dtype = compute_dtype(q.device.type, q.dtype)
    if extra is not None:
        b, hq, L, _ = q.shape
        pad = -(-L // window) * window - L
        blocked = tuple(F.pad(t.movedim(2, -1), (0, pad)).movedim(-1, 2).unflatten(2, (-1, window)).transpose(1, 2)
                        .flatten(0, 1) for t in extra)  # (b * nc, hq, w, r (, d))
        out = attention_with_extra(q_blocks, keys.to(q_blocks.dtype), values.to(q_blocks.dtype), mask, blocked)
    elif q.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        out = explicit_attention(q_blocks, keys, values, mask, dtype)
    else:
        out = masked_attention(q_blocks, keys, values, mask)
    return _unfold(out, q.shape[0], q.shape[2])


@torch.no_grad()
def window_attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    mem_k: torch.Tensor | None = None,
    mem_v: torch.Tensor | None = None,
    mem_valid: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    band: tuple[torch.Tensor, torch.Tensor, int] | None = None,
) -> torch.Tensor:
    """The attention probabilities of `window_attention` (same arguments), in fp32, for inspection: (b, hq, L, S)
    over each query's blocked keys [the M memory slots of its chunk; chunk c-1; chunk c (; band chunks c-2, c-1)],
    S = M + 2w (+ 2w). Each row sums to 1; masked keys have probability 0."""
    q_blocks, keys, _, mask = _window_blocks(q, k, v, window, mem_k, mem_v, mem_valid, seq_idx, band)
    B, hq, w, d = q_blocks.shape
    hk, S = keys.shape[1], keys.shape[2]
    scores = torch.matmul(q_blocks.float().reshape(B, hk, hq // hk * w, d), keys.float().transpose(-1, -2))
    scores = scores.view(B, hq, w, S) * d**-0.5
    return _unfold(scores.masked_fill(~mask, float("-inf")).softmax(-1), q.shape[0], q.shape[2])


def window_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    mem_k: torch.Tensor | None = None,
    mem_v: torch.Tensor | None = None,
    mem_valid: torch.Tensor | None = None,
    band: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    extra: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Dense twin of `window_attention` (without documents): one (L, nc*M + L (+ L)) mask over all memory slots of
    all chunks, all raw keys (and all band keys), explicit softmax in fp32. O(L^2) memory; for tests and benchmarks."""
    b, hq, L, d = q.shape
    hk, w = k.shape[1], window
    rep = hq // hk
    k, v = k.repeat_interleave(rep, dim=1).float(), v.repeat_interleave(rep, dim=1).float()
    t = torch.arange(L, device=q.device)
    mask = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - w)  # (L, L)
    if band is not None:
        band_k, band_v, span = band
        k = torch.cat([k, band_k.repeat_interleave(rep, dim=1).float()], dim=2)
        v = torch.cat([v, band_v.repeat_interleave(rep, dim=1).float()], dim=2)
        mask = torch.cat([mask, (t[None, :] <= t[:, None] - w) & (t[None, :] > t[:, None] - w - span)], dim=1)
    mask = mask.expand(b, L, mask.shape[1])
    if mem_k is not None and mem_k.shape[3] > 0:
        nc, M = mem_k.shape[2], mem_k.shape[3]
        k = torch.cat([mem_k.repeat_interleave(rep, dim=1).flatten(2, 3).float(), k], dim=2)
        v = torch.cat([mem_v.repeat_interleave(rep, dim=1).flatten(2, 3).float(), v], dim=2)
        own_chunk = (t // w)[:, None] == torch.arange(nc, device=q.device).repeat_interleave(M)[None, :]
        mem_mask = own_chunk[None] & mem_valid.reshape(b, 1, nc * M)
        mask = torch.cat([mem_mask, mask], dim=2)
    scores = torch.einsum("bhtd,bhsd->bhts", q.float(), k) / d**0.5
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    if extra is None:
        return torch.einsum("bhts,bhsd->bhtd", scores.softmax(-1), v).to(q.dtype)
    probs = torch.cat([scores, extra[0].float()], -1).softmax(-1)
    S = scores.shape[-1]
    out = torch.einsum("bhts,bhsd->bhtd", probs[..., :S], v) + torch.einsum("bhtr,bhtrd->bhtd", probs[..., S:],
                                                                           extra[1].float())
    return out.to(q.dtype)
