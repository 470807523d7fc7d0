"""Document structure of a block of tokens: packed sequences and left padding.

A row may hold several documents (packing) or padding before its text (HF left padding, whose pad tokens
form a document of their own that no real token reads). Every mixer restarts at a document's first token:
the short conv and the SSM state, the attention window, and the B'MOJO memories, so each document is
computed as if it stood alone at position 0. `Documents` is what the model hands its mixers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..ops.memory import EMPTY, KVSlots
from ..ops.store import TokenStore


@dataclass
class Documents:
    """For tokens (b, T): seq_idx, the document index of each token (nondecreasing along a row);
    positions, each token's position inside its document (RoPE and B'MOJO's chunk grid count from it);
    starts, True where a token begins a document (in decoding: does not continue the cached state)."""

    seq_idx: torch.Tensor
    positions: torch.Tensor
    starts: torch.Tensor

    def slice(self, a: int, e: int) -> Documents:
        """Tokens a..e-1."""
        return Documents(self.seq_idx[:, a:e], self.positions[:, a:e], self.starts[:, a:e])


def documents_from_starts(starts: torch.Tensor, first_seq: torch.Tensor, first_position: torch.Tensor) -> Documents:
    """Documents of a block from `starts` (b, T): the block continues a document whose index is `first_seq`
    (b,) and whose next position is `first_position` (b,) until a token starts a new one."""
    T = starts.shape[1]
    idx = torch.arange(T, device=starts.device)
    last_start = torch.cummax(torch.where(starts, idx, -1), dim=1).values  # index of the latest start, or -1
    positions = torch.where(last_start >= 0, idx - last_start, first_position[:, None] + idx)
    seq_idx = first_seq[:, None] + torch.cumsum(starts.long(), dim=1)
    return Documents(seq_idx, positions, starts)


def align_documents(seq_idx: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay the documents of each row out so that each starts at a multiple of `window` (B'MOJO's chunk grid
    counts from a document's start). seq_idx: (b, L). Returns (index (b, L): where each token goes in the
    aligned row; aligned_seq (b, L'): document of each aligned slot (the filler after a document belongs to
    it); aligned_positions (b, L'): position inside that document). L' = max over rows of sum_d ceil(len_d / w) w."""
    b, L = seq_idx.shape
    starts = torch.ones_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    doc = torch.cumsum(starts.long(), dim=1) - 1  # 0-based document number per row
    lengths = torch.zeros(b, L, dtype=torch.long, device=seq_idx.device).scatter_add_(1, doc, torch.ones_like(doc))
    padded = -(-lengths // window) * window
    doc_start = torch.cumsum(padded, dim=1) - padded  # aligned start of each document
    idx = torch.arange(L, device=seq_idx.device)
    first = torch.cummax(torch.where(starts, idx, 0), dim=1).values  # index of each token's document start
    index = doc_start.gather(1, doc) + idx - first
    L_aligned = int(padded.sum(1).max())
    aligned_doc = torch.full((b, L_aligned), -1, dtype=torch.long, device=seq_idx.device)
    aligned_doc.scatter_(1, index, doc)
    aligned_doc = torch.cummax(aligned_doc, dim=1).values  # filler joins the document before it
    aligned_positions = torch.arange(L_aligned, device=seq_idx.device) - doc_start.gather(1, aligned_doc)
    return index, aligned_doc, aligned_positions


def select_rows(rows: torch.Tensor, new, old):
    """Per batch row, `new` where rows (b,) is True else `old`, for states: tensors, dataclasses of them, None.
    Both must have the same shapes."""
    if old is None or new is old:
        return old
    if dataclasses.is_dataclass(old):
        return type(old)(**{f.name: select_rows(rows, getattr(new, f.name), getattr(old, f.name))
                            for f in dataclasses.fields(old)})
    return torch.where(rows.view(-1, *([1] * (old.dim() - 1))), new, old)


def copy_into(dst, src) -> None:
    """In place, for states (tensors, lists or dataclasses of them, None): every tensor of dst takes src's values
    (other fields are left alone); dst keeps its addresses."""
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, list):
        for d, s in zip(dst, src, strict=True):
            copy_into(d, s)
    elif dataclasses.is_dataclass(dst):
        for f in dataclasses.fields(dst):
            copy_into(getattr(dst, f.name), getattr(src, f.name))


def state_tensors(obj):
    """Every tensor of a state (a tensor, or lists or dataclasses of them, nested), in a fixed order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, list):
        for item in obj:
            yield from state_tensors(item)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from state_tensors(getattr(obj, f.name))


def with_tensors(obj, tensors):
    """`obj` (a state) with its tensors replaced, in `state_tensors` order, by those the iterator `tensors` yields
    (new lists and dataclasses; other fields kept)."""
    if isinstance(obj, torch.Tensor):
        return next(tensors)
    if isinstance(obj, list):
        return [with_tensors(item, tensors) for item in obj]
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: with_tensors(getattr(obj, f.name), tensors)
                                           for f in dataclasses.fields(obj)})
    return obj


def restart_rows(rows: torch.Tensor, state, fresh):
    """`state` with the rows where `rows` (b,) holds set back to `fresh` (the mixer's `init_state`): a new document
    begins there. The growing KV of full attention and the storage tier keep their slots and forget them (EMPTY
    positions)."""
    forget = lambda slots: dataclasses.replace(slots, pos=slots.pos.masked_fill(rows[:, None], EMPTY))  # noqa: E731
    if isinstance(state, TokenStore):
        return TokenStore([forget(block) for block in state.blocks])
    if isinstance(state, KVSlots) and state.pos.shape != fresh.pos.shape:
        return forget(state)
    if dataclasses.is_dataclass(state) and not isinstance(state, KVSlots):
        return type(state)(**{f.name: restart_rows(rows, getattr(state, f.name), getattr(fresh, f.name))
                              for f in dataclasses.fields(state)})
    return select_rows(rows, fresh, state)
