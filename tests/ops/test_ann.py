"""bmojo.ops.ann, the approximate backend of the storage tier: exhaustive probing equals the exact search, the
default probing finds what the exact search finds on clustered keys, an index is built once per block and
deterministically (a block read back from a file searches the same), and slots forgotten after the build are not
returned."""

import copy

import pytest
import torch

pytest.importorskip("faiss")

from bmojo.ops import ann  # noqa: E402
from bmojo.ops.memory import EMPTY, KVSlots  # noqa: E402
from bmojo.ops.store import TokenStore, top_r  # noqa: E402


def block_of(k: torch.Tensor, pos: torch.Tensor | None = None) -> KVSlots:
    b, _, n, _ = k.shape
    return KVSlots(k, torch.randn_like(k), torch.arange(n).expand(b, n).clone() if pos is None else pos)


def clustered(b, hk, n, d, centers=40, seed=0):
    """Keys around `centers` random centers (as trained keys are: far from uniform on the sphere)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centers, d, generator=g) * 3
    return c[torch.randint(0, centers, (b, hk, n), generator=g)] + torch.randn(b, hk, n, d, generator=g)


def test_exhaustive_probing_equals_the_exact_search():
    """nprobe = every list: the same top-r scores as top_r, per row and grouped head; EMPTY slots never returned."""
    b, hq, hk, T, n, d, r = 2, 4, 2, 3, 600, 8, 5
    k = torch.randn(b, hk, n, d)
    pos = torch.arange(n).expand(b, n).clone()
    pos[1, ::3] = EMPTY  # row 1: a third of its slots hold nothing
    block = block_of(k, pos)
    q = torch.randn(b, hq, T, d)
    scores, index = ann.ann_top_r(q, block, r, nprobe=n)
    exact, _ = top_r(q, k, r, lambda a, e: block.valid[:, None, None, a:e])
    torch.testing.assert_close(scores.sort(-1).values, exact.sort(-1).values)
    assert (pos[1][index[1]] != EMPTY).all()
    rep = hq // hk
    picked = torch.stack([k[i, h // rep].gather(0, index[i, h].reshape(-1, 1).expand(-1, d)).view(T, r, d)
                          for i in range(b) for h in range(hq)]).view(b, hq, T, r, d)
    torch.testing.assert_close((picked * q[..., None, :]).sum(-1), scores)  # scores are q . k of the returned keys


def test_default_probing_recall_on_clustered_keys():
    """The default nprobe finds >= 95% of the exact top-16 for queries near stored keys."""
    b, hk, n, d, r = 1, 2, 20000, 32, 16
    k = clustered(b, hk, n, d)
    q = k[:, :, torch.randint(0, n, (50,))] + 0.1 * torch.randn(b, hk, 50, d)
    block = block_of(k)
    _, index = ann.ann_top_r(q, block, r)
    _, exact = top_r(q, k, r, lambda a, e: block.valid[:, None, None, a:e])
    hits = [len(set(index[0, h, t].tolist()) & set(exact[0, h, t].tolist())) for h in range(hk) for t in range(50)]
    assert sum(hits) / (len(hits) * r) >= 0.95


def test_index_built_once_per_block_and_deterministically():
    k = clustered(1, 1, 5000, 16)
    block = block_of(k)
    first = ann.block_indexes(block)
    assert ann.block_indexes(block) is first  # kept while the block lives
    q = torch.randn(1, 1, 4, 16)
    again = copy.deepcopy(block)  # as a cache read back from a file: new tensors, the same values
    assert ann.block_indexes(again) is not first
    for a, b in zip(ann.ann_top_r(q, block, 8, nprobe=4), ann.ann_top_r(q, again, 8, nprobe=4), strict=True):
        assert torch.equal(a, b)
    key = id(again.k)
    del again
    assert key not in ann._INDEXES  # an index goes with its block


def test_store_search_through_the_index_skips_forgotten_slots(monkeypatch):
    """A row restarted after its block was indexed (EMPTY positions) gets no stored token back; the other row does,
    and the faiss backend with every list probed returns what the exact backend returns."""
    monkeypatch.setattr("bmojo.ops.store.ANN_MIN_BLOCK", 100)
    monkeypatch.setattr("bmojo.ops.ann.ANN_NPROBE", 10**6)
    k = torch.randn(2, 2, 300, 8)
    store = TokenStore([block_of(k)])
    q = torch.randn(2, 2, 1, 8)
    exact, approx = store.search(q, 4, "exact"), store.search(q, 4, "faiss")
    for a, b in zip([exact.pos, exact.score], [approx.pos, approx.score], strict=True):
        torch.testing.assert_close(a.sort(-1).values, b.sort(-1).values)
    restarted = store.blocks[0].pos.masked_fill(torch.tensor([[True], [False]]), EMPTY)  # row 0 forgets its slots
    forgotten = TokenStore([KVSlots(k, store.blocks[0].v, restarted)])  # the same keys: the index built above
    found = forgotten.search(q, 4, "faiss")
    assert (found.pos[0] == EMPTY).all() and (found.pos[1] != EMPTY).all()


def test_recall_meter_counts_what_the_exact_search_finds():
    """measuring_recall: 1 with every list probed; below 1 with one list of many on unstructured keys."""
    block = block_of(torch.randn(1, 1, 8000, 16))
    q = torch.randn(1, 1, 20, 16)
    with ann.measuring_recall() as every:
        ann.ann_top_r(q, block, 8, nprobe=10**6)
    with ann.measuring_recall() as one:
        ann.ann_top_r(q, block, 8, nprobe=1)
    assert every.total == one.total == 20 * 8
    assert every.recall == 1.0 and one.recall < 0.9
    assert ann._METER is None  # inactive outside the context
