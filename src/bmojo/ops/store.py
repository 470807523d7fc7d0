"""The storage tier of B'MOJO's eidetic memory (docs/design.md, section 4.10): past raw tokens that the working memory
(window, fading and eidetic slots) no longer holds, kept as (content key, value, position), and the exact search
that brings each query the r stored tokens with the highest content score.

Content keys and queries are the attention's projections *before* RoPE: a stored token is found, and attended, by
what it is, not by where it stands (its distance from a query may be far beyond any distance seen in training).
Shapes: queries q (b, hq, T, d); keys, values (b, hk, N, d), hk dividing hq (query head i reads kv head
i // (hq // hk)); EMPTY positions (-1) mark free or forgotten slots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .ann import ANN_MIN_BLOCK, ann_top_r
from .memory import EMPTY, KVSlots

# Score elements (b * hq * T * block) one search step may hold: 2^24 fp32 scores = 64 MiB.
SEARCH_ELEMENTS = 1 << 24


@dataclass
class TokenStore:
    """The stored tokens of one layer: `blocks`, each a KVSlots (content keys k, values v, positions pos). Appending
    merges the newest blocks while the one before is not larger (a binary counter): a store of N tokens written w at
    a time has at most log2(N / w) + 1 blocks, and each token is copied O(log N) times in all."""

    blocks: list[KVSlots]

    def append(self, new: KVSlots) -> TokenStore:
        """The store with the slots of `new` added; slots EMPTY in every row are not stored."""
        keep = new.valid.any(0)
        if not keep.all():
            new = new.take(keep.nonzero()[:, 0].expand(new.pos.shape[0], -1))
        if new.pos.shape[1] == 0:
            return self
        blocks = [*self.blocks, new]
        while len(blocks) > 1 and blocks[-2].pos.shape[1] <= blocks[-1].pos.shape[1]:
            blocks[-2:] = [blocks[-2].cat(blocks[-1])]
        return TokenStore(blocks)

    def forget(self, before: torch.Tensor) -> TokenStore:
        """The store with each row's tokens at positions < before[row] forgotten (EMPTY); before: (b,) long. A block
        that no row holds a token of any more goes; one whose slots are at least half free in every row is
        compacted to the slots some row holds, so the store's slots stay within twice the tokens it holds (plus a
        block's worth)."""
        blocks = []
        for block in self.blocks:
            block = KVSlots(block.k, block.v, block.pos.masked_fill(block.pos < before[:, None], EMPTY))
            keep = block.valid.any(0)
            kept = int(keep.sum())
            if kept == 0:
                continue
            if 2 * kept <= keep.shape[0]:
                block = block.take(keep.nonzero()[:, 0].expand(block.pos.shape[0], -1))
            blocks.append(block)
        return TokenStore(blocks)

    @property
    def size(self) -> int:
        """Slots held (stored tokens, plus the slots of rows that stored fewer or forgot theirs)."""
        return sum(block.pos.shape[1] for block in self.blocks)

    def search(self, q: torch.Tensor, r: int, backend: str = "exact", nprobe: int | None = None) -> KVSlots:
        """The r stored tokens with the highest content score q . k for every query: keys and values (b, hq, T, r,
        d, in q's dtype whatever the store's), positions (b, hq, T, r), EMPTY where fewer than r are stored, and their
        scores (fp32, -inf where EMPTY).
        q: (b, hq, T, d). backend "exact" scans every block (top_r); "faiss" searches the blocks of >= ANN_MIN_BLOCK
        slots through their approximate index (ops.ann), scanning `nprobe` lists per query (default ANN_NPROBE), and the
        smaller ones exactly."""
        b, hq, T, d = q.shape
        hits = []
        for block in self.blocks:
            if backend == "faiss" and block.pos.shape[1] >= ANN_MIN_BLOCK:
                scores, index = ann_top_r(q, block, r, nprobe)
            else:
                scores, index = top_r(q, block.k, r, lambda a, e, block=block: block.valid[:, None, None, a:e])
            pos = gather_positions(block.pos, index).masked_fill(scores == float("-inf"), EMPTY)
            scores = scores.masked_fill(pos < 0, float("-inf"))  # slots forgotten after their index was built
            hits.append(KVSlots(gather_heads(block.k, index), gather_heads(block.v, index), pos, scores))
        if not hits:
            zeros = q.new_zeros(b, hq, T, r, d)
            return KVSlots(zeros, zeros, torch.full((b, hq, T, r), EMPTY, dtype=torch.long, device=q.device),
                           torch.full((b, hq, T, r), float("-inf"), device=q.device))
        found = hits[0] if len(hits) == 1 else _best(hits, r)
        return KVSlots(found.k.to(q.dtype), found.v.to(q.dtype), found.pos, found.score)


def _best(hits: list[KVSlots], r: int) -> KVSlots:
    """The r best, per query, of several search results (each b, hq, T, r) by their content scores: one top-r over
    all of them."""
    score = torch.cat([h.score for h in hits], 3)
    b, hq, T, n = score.shape
    index = score.topk(r, dim=-1).indices  # (b, hq, T, r) into the n = len(hits) * r candidates
    pick = lambda t: take_rows(t.reshape(b * hq * T, n, -1), index.reshape(b * hq * T, r)).view(b, hq, T, r, -1)  # noqa: E731
    return KVSlots(pick(torch.cat([h.k for h in hits], 3)), pick(torch.cat([h.v for h in hits], 3)),
                   torch.cat([h.pos for h in hits], 3).gather(3, index), score.gather(3, index))


@torch.no_grad()
def top_r(q: torch.Tensor, k: torch.Tensor, r: int, allowed: Callable[[int, int], torch.Tensor],
          block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-r keys by content score q . k, in fp32, over key blocks (a blocked matmul and a running top-r):
    q (b, hq, T, d), k (b, hk, N, d); allowed(a, e) -> bool broadcastable to (b, hq, T, e - a), True where query t may
    read key s in a..e-1. Returns (scores, index), each (b, hq, T, r): scores -inf (and index 0) where fewer than r
    keys are allowed. Between tied scores either key may be kept."""
    b, hq, T, d = q.shape
    hk, N = k.shape[1], k.shape[2]
    rep = hq // hk
    block = block or max(64, SEARCH_ELEMENTS // max(1, b * hq * T))
    qf = q.float().reshape(b, hk, rep * T, d)
    best = q.new_full((b, hq, T, 0), float("-inf"), dtype=torch.float32)
    best_index = torch.zeros((b, hq, T, 0), dtype=torch.long, device=q.device)
    for a in range(0, N, block):
        e = min(N, a + block)
        scores = torch.matmul(qf, k[:, :, a:e].float().transpose(-1, -2)).view(b, hq, T, e - a)
        scores.masked_fill_(~allowed(a, e), float("-inf"))
        top = scores.topk(min(r, e - a), dim=-1, sorted=False)  # the block's own top-r, then merged with the best
        scores, index = torch.cat([best, top.values], -1), torch.cat([best_index, top.indices + a], -1)
        keep = scores.topk(min(r, scores.shape[-1]), dim=-1, sorted=False).indices
        best, best_index = scores.gather(-1, keep), index.gather(-1, keep)
    if best.shape[-1] < r:  # fewer keys than r
        pad = r - best.shape[-1]
        best = torch.cat([best, best.new_full((b, hq, T, pad), float("-inf"))], -1)
        best_index = torch.cat([best_index, best_index.new_zeros(b, hq, T, pad)], -1)
    return best, best_index.masked_fill(best == float("-inf"), 0)


def take_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of t (n, M, d) at index (n, K) -> (n, K, d): out[i, j] = t[i, index[i, j]]. One index_select of whole
    rows, several times faster on a CPU than `gather` along M with an index expanded over d (same values)."""
    n, M, d = t.shape
    flat = index + torch.arange(n, device=index.device)[:, None] * M
    return t.reshape(n * M, d).index_select(0, flat.reshape(-1)).view(n, index.shape[1], d)


def gather_heads(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t (b, hk, N, d) at index (b, hq, T, r), per query head (head i reads kv head i // (hq // hk)) -> (b, hq, T,
    r, d)."""
    b, hk, N, d = t.shape
    hq, T, r = index.shape[1:]
    # query heads g * rep .. g * rep + rep - 1 read kv head g: their indexes are one row of kv head g's slots
    rows = take_rows(t.reshape(b * hk, N, d), index.reshape(b * hk, (hq // hk) * T * r))
    return rows.view(b, hq, T, r, d)


def gather_positions(pos: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """pos (b, N) at index (b, hq, T, r) -> (b, hq, T, r)."""
    b = pos.shape[0]
    return pos.gather(1, index.reshape(b, -1)).view_as(index)


def retrieved_logits(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The attention logits of retrieved tokens: the content score q . k / sqrt(d) (differentiable in q and k), -inf
    where a slot is EMPTY. q (b, hq, T, d), k (b, hq, T, r, d), pos (b, hq, T, r) -> (b, hq, T, r)."""
    logits = (q[..., None, :] * k).sum(-1) * q.shape[-1] ** -0.5  # a batched matmul of 1 x d by d x r is slower
    return logits.masked_fill(pos < 0, float("-inf"))
