"""Approximate search of the storage tier (store_backend="faiss"; docs/design.md, section 4.10): an inverted-file
index (faiss IVF-Flat, inner product) over the content keys of one stored block, per batch row and kv head.

A block of the store (a KVSlots) never changes its keys once made, so its index is built the first time the block
is searched (k-means on a sample of its keys, fixed seed, then every valid key added under its slot number) and
kept while the block lives; a merge of blocks makes a new block, indexed anew when searched. The build is
deterministic: a block restored from a cache file gets the same index, so decoding after a reload continues exactly.
Blocks of fewer than ANN_MIN_BLOCK slots are searched exactly (ops.store.top_r): there the scan is cheaper than an
index. Scores are exact fp32 inner products of the keys the index returns; what it may miss is a key of a list
it did not probe.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .memory import KVSlots

ANN_MIN_BLOCK = 4096  # blocks with fewer slots are searched exactly
ANN_NPROBE = 32  # inverted lists scanned per query
ANN_KMEANS_ITERATIONS = 10
ANN_POINTS_PER_LIST = 64  # k-means trains on at most this many keys per list (a sample of the block)
INSTALL_HINT = "pip install 'bmojo[ann]' (the faiss-cpu package)"

# id(block.k) -> (a weak reference to block.k, the indexes [row][kv head]); an entry goes when its block does
_INDEXES: dict[int, tuple[weakref.ref, list]] = {}


@dataclass
class RecallMeter:
    """Counts, over the approximate searches made while it is active, how many of the exact top-r they returned
    (by score: a returned slot counts when its score reaches the exact r-th best, so that between keys of equal
    score, e.g. one token stored twice, either counts)."""

    found: int = 0  # returned slots that score as high as the exact r-th best (at most the exact count per query)
    total: int = 0  # slots of the exact top-r (valid ones)

    @property
    def recall(self) -> float | None:
        return self.found / self.total if self.total else None


_METER: RecallMeter | None = None


@contextmanager
def measuring_recall() -> Iterator[RecallMeter]:
    """While active, every `ann_top_r` also runs the exact search (ops.store.top_r) on the same block and adds to
    the yielded RecallMeter: the recall of the approximate search on the keys the model actually stores."""
    global _METER
    _METER = meter = RecallMeter()
    try:
        yield meter
    finally:
        _METER = None


def faiss_module():
    """The faiss module, or ImportError with the install hint."""
    try:
        import faiss
    except ImportError:
        raise ImportError(f"store_backend='faiss' needs faiss: {INSTALL_HINT}") from None
    return faiss


def num_lists(n: int) -> int:
    """Inverted lists of the index of a block of n slots: about sqrt(n) (search cost ~ nprobe sqrt(n) per query)."""
    return max(1, math.isqrt(n))


def _build(keys: torch.Tensor, ids: torch.Tensor):
    """An IVF-Flat inner-product index of keys (n, d) under ids (n,)."""
    faiss = faiss_module()
    x = np.ascontiguousarray(keys.detach().float().cpu().numpy())
    nlist = num_lists(len(x))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.niter = 0, ANN_KMEANS_ITERATIONS
    index.cp.max_points_per_centroid, index.cp.min_points_per_centroid = ANN_POINTS_PER_LIST, 1
    index.train(x)
    index.add_with_ids(x, ids.cpu().numpy().astype(np.int64))
    return index


def block_indexes(block: KVSlots) -> list[list]:
    """The indexes [row][kv head] of a block (built on first use; each holds the row's valid slots)."""
    key = id(block.k)
    hit = _INDEXES.get(key)
    if hit is not None and hit[0]() is block.k:
        return hit[1]
    faiss_module().omp_set_num_threads(torch.get_num_threads())
    indexes = []
    for row in range(block.k.shape[0]):
        ids = block.valid[row].nonzero()[:, 0]
        indexes.append([_build(block.k[row, g, ids], ids) if len(ids) else None for g in range(block.k.shape[1])])
    _INDEXES[key] = (weakref.ref(block.k, lambda _, key=key: _INDEXES.pop(key, None)), indexes)
    return indexes


@torch.no_grad()
def ann_top_r(q: torch.Tensor, block: KVSlots, r: int, nprobe: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximately the top-r slots of `block` by content score q . k, the contract of ops.store.top_r: q (b, hq, T,
    d) -> (scores, index), each (b, hq, T, r), scores -inf (index 0) where fewer than r were found. Query head i reads
    kv head i // (hq // hk); only slots valid when the index was built can be found. nprobe: lists scanned per query
    (default ANN_NPROBE; all of them make the search exact)."""
    b, hq, T, d = q.shape
    hk = block.k.shape[1]
    rep = hq // hk
    faiss = faiss_module()
    faiss.omp_set_num_threads(torch.get_num_threads())
    scores = np.full((b, hk, rep * T, r), -np.inf, dtype=np.float32)
    index = np.full((b, hk, rep * T, r), -1, dtype=np.int64)
    queries = q.detach().float().cpu().reshape(b, hk, rep * T, d).numpy()
    for row, heads in enumerate(block_indexes(block)):
        for g, ivf in enumerate(heads):
            if ivf is not None:
                params = faiss.SearchParametersIVF()
                params.nprobe = min(nprobe or ANN_NPROBE, ivf.nlist)
                found_scores, found = ivf.search(np.ascontiguousarray(queries[row, g]), r, params=params)
                scores[row, g], index[row, g] = found_scores, found
    scores, index = torch.from_numpy(scores).to(q.device), torch.from_numpy(index).to(q.device)
    scores = scores.masked_fill(index < 0, float("-inf")).view(b, hq, T, r)
    index = index.clamp_min(0).view(b, hq, T, r)
    if _METER is not None:
        from .store import top_r

        exact, _ = top_r(q, block.k, r, lambda a, e: block.valid[:, None, None, a:e])
        wanted = (exact > float("-inf")).sum(-1)
        worst = exact.masked_fill(exact == float("-inf"), float("inf")).amin(-1, keepdim=True)  # the r-th best score
        found = (scores >= worst - 1e-4 * (worst.abs() + 1)).sum(-1)  # by score: between equal keys either counts
        _METER.found += int(found.clamp(max=wanted).sum())
        _METER.total += int(wanted.sum())
    return scores, index
