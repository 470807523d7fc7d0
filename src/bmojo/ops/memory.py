"""B'MOJO memory rules (docs/design.md, "The B'MOJO layer"): the innovation score, the fading-token
positions, which past positions a chunk may keep, and the running top-m_e eidetic merge. The parallel
form (training) and the recurrent form (decoding) of `bmojo.layers.bmojo.BMojoMixer` both call these;
no rule is written anywhere else.

Conventions: chunk c holds positions [c w, (c+1) w); its history is H_c = {p : p <= c w - w}, the
positions outside the raw window of every query of the chunk. An empty slot has position EMPTY (-1)
and score -inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

EMPTY = -1
NEVER = torch.iinfo(torch.long).max  # a chunk index no sequence reaches


@dataclass
class KVSlots:
    """Tokens held in slots, in time order unless said otherwise: keys and values k, v (b, hk, S, hd);
    positions pos (b, S) (EMPTY = a free slot, never attended); innovation scores score (b, S) where slots
    are ranked (eidetic memory and its candidates, B'MOJO's raw window), else None. The raw window of
    sliding-window layers, the growing KV of full attention and B'MOJO's fading and eidetic memories are
    all KVSlots."""

    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor
    score: torch.Tensor | None = None

    @classmethod
    def empty(cls, batch_size: int, heads: int, size: int, head_dim: int, device, dtype, scored: bool) -> KVSlots:
        """`size` free slots (zero keys/values, EMPTY positions, -inf scores when `scored`)."""
        kv = lambda: torch.zeros(batch_size, heads, size, head_dim, device=device, dtype=dtype)  # noqa: E731
        score = torch.full((batch_size, size), float("-inf"), device=device) if scored else None
        return cls(kv(), kv(), torch.full((batch_size, size), EMPTY, dtype=torch.long, device=device), score)

    @property
    def valid(self) -> torch.Tensor:
        """(b, S) True where a slot holds a token."""
        return self.pos >= 0

    def cat(self, other: KVSlots) -> KVSlots:
        """self's slots followed by other's (scores kept only if both have them)."""
        score = torch.cat([self.score, other.score], 1) if self.score is not None and other.score is not None else None
        return KVSlots(torch.cat([self.k, other.k], 2), torch.cat([self.v, other.v], 2),
                       torch.cat([self.pos, other.pos], 1), score)

    def slots(self, start: int, stop: int | None = None) -> KVSlots:
        """Slots start..stop-1."""
        s = slice(start, stop)
        score = None if self.score is None else self.score[:, s]
        return KVSlots(self.k[:, :, s], self.v[:, :, s], self.pos[:, s], score)

    def take(self, index: torch.Tensor) -> KVSlots:
        """Slots index (b, m), per batch row."""
        kv_index = index[:, None, :, None].expand(-1, self.k.shape[1], -1, self.k.shape[3])
        score = None if self.score is None else self.score.gather(1, index)
        return KVSlots(self.k.gather(2, kv_index), self.v.gather(2, kv_index), self.pos.gather(1, index), score)

    # Fixed-address forms (the static decode step): a ring of S slots where position p lives in slot p % S.
    def roll(self, shift: torch.Tensor) -> KVSlots:
        """Per row r, slot j of the result is slot (j - shift[r]) % S of self. shift: (b,) long. Slots in time
        order whose newest position is n - 1 become a ring with `roll(n)`; a ring becomes time order with `roll(-n)`."""
        return self.take(rolled_index(self.pos.shape[1], shift))

    def put_(self, index: torch.Tensor, new: KVSlots) -> None:
        """In place: slot index[r] of row r takes the one slot of `new` (b, hk, 1, hd), in self's dtype (under autocast
        new keys may be bf16; the slots keep theirs, as `cat` promotes them). index: (b,) long. Written as indexed
        assignment (index_put_), which torch.compile updates in place; a scatter_ into a graph input would copy the
        whole buffer on every call."""
        rows = torch.arange(index.shape[0], device=index.device)
        self.k[rows, :, index] = new.k[:, :, 0].to(self.k.dtype)
        self.v[rows, :, index] = new.v[:, :, 0].to(self.v.dtype)
        self.pos[rows, index] = new.pos[:, 0]
        if self.score is not None:
            self.score[rows, index] = new.score[:, 0]



def rolled_index(size: int, shift: torch.Tensor) -> torch.Tensor:
    """(b, size) index: row r, entry j = (j - shift[r]) % size (what `KVSlots.roll` and `roll_rows` gather)."""
    return (torch.arange(size, device=shift.device)[None, :] - shift[:, None]) % size


def roll_rows(t: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """t (b, S, ...) rolled along dim 1 per row, as `KVSlots.roll`: out[r, j] = t[r, (j - shift[r]) % S]."""
    index = rolled_index(t.shape[1], shift).view(*t.shape[:2], *([1] * (t.dim() - 2))).expand(t.shape)
    return t.gather(1, index)


@torch.no_grad()
def innovation_score(y: torch.Tensor, weights: torch.Tensor, history: torch.Tensor | None = None,
                     seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """eps_t = mean_i (y_t,i - sum_j alpha_j y_{t-j},i)^2, computed without gradient, in fp32.

    y: (b, L, d) SSM outputs; weights: (k,) the fixed predictor alpha_1..alpha_k; history: (b, k, d),
    the k outputs before y[:, 0] (oldest first; zeros = "y before position 0 is 0"); seq_idx (b, L)
    (optional, packed documents): outputs of another document count as zeros (history belongs to y[:, 0]'s
    document). Returns (b, L).
    """
    k = weights.shape[0]
    y = y.float()
    if history is None:
        history = y.new_zeros(y.shape[0], k, y.shape[2])
    full = torch.cat([history.float(), y], dim=1)
    L = y.shape[1]
    guess = sum(weights[j - 1].float() * full[:, k - j : k - j + L] for j in range(1, k + 1))
    if seq_idx is not None:
        # where a term lies in another document (a few positions after each start), redo the sum with it zeroed;
        # multiplying the others by 1 is exact, so this equals masking every term
        docs = torch.cat([seq_idx[:, :1].expand(-1, k), seq_idx], dim=1)
        same = torch.stack([docs[:, k - j : k - j + L] == seq_idx for j in range(1, k + 1)])  # (k, b, L)
        rows, t = (~same).any(0).nonzero(as_tuple=True)
        guess[rows, t] = sum(weights[j - 1].float() * full[rows, t + k - j] * same[j - 1, rows, t, None]
                             for j in range(1, k + 1))
    return (y - guess).pow(2).mean(-1)


def history_end(chunk, window: int):
    """The newest position of chunk c's history H_c: c w - w (int or tensor, like `chunk`)."""
    return chunk * window - window


def fading_positions(chunk: torch.Tensor, window: int, num_fading: int) -> torch.Tensor:
    """Positions of the fading tokens of each chunk: the `num_fading` most recent positions of H_c,
    i.e. [c w - w - m_f + 1, c w - w], oldest first; negatives become EMPTY.
    chunk: (nc,) chunk indices. Returns (nc, m_f) long."""
    pos = history_end(chunk[:, None], window) - num_fading + 1 + torch.arange(num_fading, device=chunk.device)[None, :]
    return pos.masked_fill(pos < 0, EMPTY)


def eidetic_merge(
    mem_score: torch.Tensor, mem_pos: torch.Tensor, new_score: torch.Tensor, new_pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the running top-m_e: keep the m_e = mem_score.shape[1] entries of memory ∪ new
    candidates with the highest score, ties broken toward the more recent (larger) position.

    mem_*: (b, m_e); new_*: (b, n). Empty candidates must carry score -inf and position EMPTY.
    Returns (score, pos, index), each (b, m_e), sorted best first; `index` points into
    cat([mem, new], dim=1) so callers can gather the kept tokens' keys and values.
    """
    score = torch.cat([mem_score, new_score], dim=1)
    pos = torch.cat([mem_pos, new_pos], dim=1)
    by_pos = torch.argsort(pos, dim=1, descending=True, stable=True)
    by_score = torch.argsort(score.gather(1, by_pos), dim=1, descending=True, stable=True)
    index = by_pos.gather(1, by_score)[:, : mem_score.shape[1]]
    return score.gather(1, index), pos.gather(1, index), index


def keep_top(kept: KVSlots, new: KVSlots) -> KVSlots:
    """`eidetic_merge` on scored slots: the kept.pos.shape[1] best of kept ∪ new, with their keys and values."""
    _, _, index = eidetic_merge(kept.score, kept.pos, new.score, new.pos)
    return kept.cat(new).take(index)


def split_top(kept: KVSlots, new: KVSlots) -> tuple[KVSlots, KVSlots, torch.Tensor]:
    """`keep_top` and what it drops: (the m = kept.pos.shape[1] best of kept ∪ new, the other new.pos.shape[1] slots,
    (b, n) True where a dropped slot came from `kept`). The dropped slots are in no particular order."""
    m, n = kept.pos.shape[1], new.pos.shape[1]
    union = kept.cat(new)
    _, _, order = eidetic_merge(kept.score, kept.pos, new.score, new.pos)
    dropped = torch.ones_like(union.pos, dtype=torch.bool).scatter_(1, order, False)
    rest = dropped.nonzero()[:, 1].view(-1, n)  # every row drops exactly n slots
    return union.take(order), union.take(rest), rest < m


@torch.no_grad()
def store_entry_chunks(eidetic: torch.Tensor, length: int, window: int, write: str) -> torch.Tensor:
    """Parallel form of the storage tier's write rule: for every position s < `length`, the first chunk whose store
    holds it (NEVER if none). Stored tokens never leave, so chunk c's store is {s : entry[s] <= c}. eidetic: each
    chunk's eidetic memory (b, nc, m_e), from `eidetic_positions`.
    write "window": every position of H_c that chunk c's eidetic memory does not hold (a token joins H_c at chunk
    ceil(s / w) + 1 and, if admitted, is stored from the chunk after the last that holds it); "evicted": only tokens
    that were in the eidetic memory and left it. Returns (b, length) long."""
    b, nc, _ = eidetic.shape
    s = torch.arange(length, device=eidetic.device)
    joins = ((s + window - 1) // window + 1).expand(b, -1)
    chunk = torch.arange(nc, device=s.device).view(1, nc, 1).expand_as(eidetic)
    last = torch.full((b, length + 1), -1, dtype=torch.long, device=s.device)  # slot `length`: EMPTY entries
    last.scatter_reduce_(1, eidetic.masked_fill(eidetic < 0, length).flatten(1), chunk.flatten(1), "amax")
    last = last[:, :length]
    return torch.where(last >= 0, last + 1, joins if write == "window" else torch.full_like(joins, NEVER))


def regime_shift(means: torch.Tensor, kappa: float) -> torch.Tensor:
    """The storage tier's regime test, entering a chunk c: means (..., R + 1) are the mean innovation scores of
    chunks c-1-R .. c-1 (NaN where unknown: before the document's second chunk, whose first chunk's scores start
    from a zero history and run high). A regime starts at chunk c-1 when its mean is above kappa times, or below
    1/kappa times, the baseline (the mean of the R before it), all known. Returns (...) bool."""
    base, last = means[..., :-1].mean(-1), means[..., -1]
    return ~means.isnan().any(-1) & ((last > kappa * base) | (kappa * last < base))


def store_forget_lines(eps: torch.Tensor, window: int, horizon: int, kappa: float, baseline_chunks: int,
                       seq_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Parallel form of the storage tier's retention: for every chunk c, the first position its store holds (what
    is older is forgotten). horizon H > 0: c w - H; kappa > 0: (c' - 1) w for the latest chunk c' <= c where
    `regime_shift` fires, R = `baseline_chunks` (everything before the new regime). eps (b, L) innovation scores
    (-inf in slots of no token); seq_idx (b, L) as in `eidetic_positions` (documents start at multiples of w; the
    test restarts at each). Returns (b, nc) long, 0 where nothing is forgotten."""
    b, L = eps.shape
    w, R = window, baseline_chunks
    nc = -(-L // w)
    chunk = torch.arange(nc, device=eps.device)
    lines = torch.zeros(b, nc, dtype=torch.long, device=eps.device)
    if kappa:
        means = F.pad(eps.float(), (0, nc * w - L), value=float("-inf")).view(b, nc, w).mean(-1)
        doc = (torch.zeros_like(eps, dtype=torch.long) if seq_idx is None else seq_idx)[:, ::w]  # (b, nc)
        first = torch.ones_like(doc, dtype=torch.bool)
        first[:, 1:] = doc[:, 1:] != doc[:, :-1]
        means = means.masked_fill(first, float("nan"))  # a document's first chunk
        ring = F.pad(means, (R + 1, 0), value=float("nan")).unfold(1, R + 1, 1)[:, :nc]  # (b, nc, R+1): c-1-R..c-1
        ring_doc = F.pad(doc, (R + 1, 0), value=-1).unfold(1, R + 1, 1)[:, :nc]
        ring = ring.masked_fill(ring_doc != doc[..., None], float("nan"))
        shift = regime_shift(ring, kappa)
        lines = torch.cummax(torch.where(shift, (chunk - 1) * w, 0), dim=1).values
    if horizon:
        lines = torch.maximum(lines, (chunk * w - horizon).clamp(min=0))
    return lines


@torch.no_grad()
def eidetic_positions(eps: torch.Tensor, window: int, num_eidetic: int, seq_idx: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """Parallel form: the eidetic memory of every chunk, by running `eidetic_merge` over chunks
    (nc small steps). Entering chunk c the candidates are the w positions (history_end(c-1), history_end(c)]
    = [(c-2) w + 1, (c-1) w] that just joined H_c. eps: (b, L). With seq_idx (b, L) (documents laid out so that
    each starts at a multiple of w, see `bmojo.layers.documents.align_documents`), the memory empties at a
    document's first chunk and only candidates of the chunk's document enter. Returns positions (b, nc, m_e),
    EMPTY where unfilled."""
    b, L = eps.shape
    w = window
    nc = -(-L // w)
    # candidate block for chunk c is block c-1 of the sequence shifted right by w-1
    shifted = F.pad(eps.float(), (w - 1, nc * w - L), value=float("-inf"))
    pos = torch.arange(-(w - 1), nc * w, device=eps.device)
    pos = pos.masked_fill((pos < 0) | (pos >= L), EMPTY).expand(b, -1)
    if seq_idx is not None:
        chunk_doc = seq_idx[:, ::w]  # (b, nc): the document of each chunk
        shifted_doc = F.pad(seq_idx, (w - 1, nc * w - L), value=-1)
    mem_score = eps.new_full((b, num_eidetic), float("-inf"), dtype=torch.float32)
    mem_pos = torch.full((b, num_eidetic), EMPTY, dtype=torch.long, device=eps.device)
    out = [mem_pos]
    for c in range(1, nc):
        block = slice((c - 1) * w, c * w)
        new_score, new_pos = shifted[:, block], pos[:, block]
        if seq_idx is not None:
            restart = (chunk_doc[:, c] != chunk_doc[:, c - 1])[:, None]
            mem_score, mem_pos = mem_score.masked_fill(restart, float("-inf")), mem_pos.masked_fill(restart, EMPTY)
            other = shifted_doc[:, block] != chunk_doc[:, c : c + 1]
            new_score, new_pos = new_score.masked_fill(other, float("-inf")), new_pos.masked_fill(other, EMPTY)
        mem_score, mem_pos, _ = eidetic_merge(mem_score, mem_pos, new_score, new_pos)
        out.append(mem_pos)
    return torch.stack(out, dim=1)
