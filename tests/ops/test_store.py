"""bmojo.ops.store and the storage tier's rules in bmojo.ops.memory: the exact search against brute force, the store's
blocks, which positions a chunk's store holds (against the rule's definition), and what the eidetic merge drops."""

import pytest
import torch

from bmojo.ops.memory import (
    EMPTY,
    NEVER,
    KVSlots,
    eidetic_positions,
    keep_top,
    regime_shift,
    split_top,
    store_entry_chunks,
    store_forget_lines,
)
from bmojo.ops.store import TokenStore, gather_heads, top_r


def brute_top_r(q, k, r, allowed):
    """Per (row, head, query): the r allowed keys with the highest q . k, as a set of indices."""
    b, hq, T, _ = q.shape
    rep = hq // k.shape[1]
    out = {}
    for i in range(b):
        for h in range(hq):
            for t in range(T):
                scores = [(float(q[i, h, t] @ k[i, h // rep, s]), s) for s in range(k.shape[2]) if allowed[i, t, s]]
                out[i, h, t] = {s for _, s in sorted(scores, reverse=True)[:r]}
    return out


@pytest.mark.parametrize("block", [3, 64])
def test_top_r_matches_brute_force(block):
    """Several key blocks (block 3) or one; grouped heads; queries allowed fewer keys than r get -inf slots."""
    b, hq, hk, T, N, d, r = 2, 4, 2, 6, 20, 8, 5
    q, k = torch.randn(b, hq, T, d), torch.randn(b, hk, N, d)
    allowed = torch.rand(b, T, N) > 0.5
    allowed[0, 0] = False
    allowed[0, 0, 7] = allowed[0, 0, 11] = True  # two keys only
    scores, index = top_r(q, k, r, lambda a, e: allowed[:, None, :, a:e], block=block)
    expected = brute_top_r(q, k, r, allowed)
    for (i, h, t), keys in expected.items():
        got = {int(s) for s, v in zip(index[i, h, t], scores[i, h, t], strict=True) if v > float("-inf")}
        assert got == keys, (i, h, t)
        found = scores[i, h, t][scores[i, h, t] > float("-inf")]
        torch.testing.assert_close(found.sort().values, (k[i, h // 2, sorted(keys)] @ q[i, h, t]).sort().values)
    assert (scores[0, :, 0] == float("-inf")).sum(-1).tolist() == [r - 2] * hq


def test_gather_heads_reads_each_query_heads_kv_head():
    k = torch.arange(2 * 5 * 3, dtype=torch.float).view(1, 2, 5, 3)  # hk = 2
    index = torch.tensor([[[[4, 0]], [[1, 1]], [[2, 3]], [[0, 4]]]])  # (1, hq=4, T=1, r=2)
    out = gather_heads(k, index)
    assert out[0, 0, 0].tolist() == [k[0, 0, 4].tolist(), k[0, 0, 0].tolist()]
    assert out[0, 2, 0].tolist() == [k[0, 1, 2].tolist(), k[0, 1, 3].tolist()]  # head 2 reads kv head 1


@pytest.mark.parametrize("hq, hk", [(4, 2), (3, 3)])
def test_gather_heads_equals_repeat_and_gather_on_several_rows(hq, hk):
    """The row-wise index_select equals the plain form: kv heads repeated to the query heads, gathered along slots."""
    torch.manual_seed(0)
    k = torch.randn(2, hk, 9, 5).transpose(2, 3).contiguous().transpose(2, 3)  # not contiguous, as a transposed view
    index = torch.randint(0, 9, (2, hq, 3, 4))
    plain = k.repeat_interleave(hq // hk, 1).gather(2, index.reshape(2, hq, 12, 1).expand(-1, -1, -1, 5))
    assert torch.equal(gather_heads(k, index), plain.view(2, hq, 3, 4, 5))


def slots(pos: list[list[int]], hk: int = 2, d: int = 4) -> KVSlots:
    p = torch.tensor(pos)
    return KVSlots(torch.randn(p.shape[0], hk, p.shape[1], d), torch.randn(p.shape[0], hk, p.shape[1], d), p)


def test_store_blocks_count_in_binary_and_drop_slots_empty_in_every_row():
    store = TokenStore([])
    for i in range(7):
        store = store.append(slots([[3 * i, EMPTY, 3 * i + 1], [EMPTY, EMPTY, 3 * i + 2]]))  # slot 1 empty in both
    assert [block.pos.shape[1] for block in store.blocks] == [8, 4, 2]  # 7 appends of 2: 4 + 2 + 1 appends
    assert store.size == 14
    assert sorted(store.blocks[0].pos[0].tolist() + store.blocks[1].pos[0].tolist() + store.blocks[2].pos[0].tolist()
                  ) == sorted(p for i in range(7) for p in (3 * i, 3 * i + 1))


def test_store_forget_empties_old_slots_drops_empty_blocks_and_compacts_sparse_ones():
    store = TokenStore([])
    for i in range(4):
        store = store.append(slots([[4 * i, 4 * i + 1, 4 * i + 2, 4 * i + 3], [4 * i] * 4]))
    assert [block.pos.shape[1] for block in store.blocks] == [16]
    forgot = store.forget(torch.tensor([6, 13]))  # row 0 keeps 6..15 (10 of 16 slots), row 1 keeps its 12s
    assert [block.pos.shape[1] for block in forgot.blocks] == [16]  # more than half held: not compacted
    assert (forgot.blocks[0].pos[0] >= 0).sum() == 10 and (forgot.blocks[0].pos[1] >= 0).sum() == 0
    forgot = store.forget(torch.tensor([11, 13]))  # 5 slots held in row 0: compacted to them, in order
    assert forgot.blocks[0].pos.tolist() == [[11, 12, 13, 14, 15], [EMPTY] * 5]
    torch.testing.assert_close(forgot.blocks[0].k, store.blocks[0].k[:, :, 11:])
    assert store.forget(torch.tensor([16, 16])).blocks == []


def test_regime_shift_fires_when_the_last_mean_leaves_the_baseline_either_way():
    nan = float("nan")
    means = torch.tensor([[1.0, 1.0, 1.0, 2.1], [1.0, 1.0, 1.0, 0.4], [1.0, 3.0, 2.0, 2.1],  # up, down, within
                          [nan, 1.0, 1.0, 9.0]])  # a baseline chunk unknown: no test
    assert regime_shift(means, 2.0).tolist() == [True, True, False, False]


def test_store_forget_lines_follow_the_horizon_and_the_latest_regime():
    w, R = 4, 2
    chunk_means = [5.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0, 0.5, 0.5]  # chunk 0 runs high (a zero history): ignored
    eps = torch.tensor(chunk_means).repeat_interleave(w)[None, : 10 * w - 1]  # the last chunk one token short
    # entering chunk c tests chunk c-1 against c-1-R..c-2: chunk 4 (3.0 vs 1.0) starts a regime, seen at chunk 5;
    # chunks 5, 6 (3.0 vs 2.0, 3.0) do not at kappa 1.6; chunk 8 (0.5 vs 3.0) does, seen at chunk 9
    lines = store_forget_lines(eps, w, 0, 1.6, R)
    assert lines.tolist() == [[0, 0, 0, 0, 0, 16, 16, 16, 16, 32]]
    assert store_forget_lines(eps, w, 10, 0.0, R).tolist() == [[0, 0, 0, 2, 6, 10, 14, 18, 22, 26]]
    assert store_forget_lines(eps, w, 30, 1.6, R).tolist() == [[0, 0, 0, 0, 0, 16, 16, 16, 16, 32]]
    assert store_forget_lines(eps, w, 20, 1.6, R).tolist() == [[0, 0, 0, 0, 0, 16, 16, 16, 16, 32]]
    assert store_forget_lines(eps, w, 12, 1.6, R).tolist() == [[0, 0, 0, 0, 4, 16, 16, 16, 20, 32]]
    # documents: the second starts at chunk 5 (aligned), so the jump at its first chunk is not a shift
    seq_idx = torch.tensor([0] * 20 + [1] * 19)[None]
    doc_eps = torch.tensor([5.0, 1.0, 1.0, 1.0, 1.0, 5.0, 3.0, 3.0, 3.0, 3.0]).repeat_interleave(w)[None, :39]
    assert store_forget_lines(doc_eps, w, 0, 1.6, R, seq_idx).tolist() == [[0] * 10]


def test_store_search_equals_one_search_over_all_stored_tokens():
    torch.manual_seed(0)
    store = TokenStore([])
    for i in range(7):  # blocks of 16, 8 and 4 slots: three searches merged
        pos = torch.arange(4 * i, 4 * i + 4).expand(2, -1).clone()
        pos[1, :2] = EMPTY  # row 1 stores fewer
        store = store.append(KVSlots(torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8), pos))
    assert [block.pos.shape[1] for block in store.blocks] == [16, 8, 4]
    q = torch.randn(2, 4, 3, 8)
    found = store.search(q, 6)
    keys = torch.cat([block.k for block in store.blocks], 2)
    values = torch.cat([block.v for block in store.blocks], 2)
    pos = torch.cat([block.pos for block in store.blocks], 1)
    scores, index = top_r(q, keys, 6, lambda a, e: pos[:, None, None, a:e] >= 0)
    expected = pos.gather(1, index.flatten(1)).view_as(index)
    assert (found.pos.sort(-1).values == expected.sort(-1).values).all()
    torch.testing.assert_close(found.v.sum(3), gather_heads(values, index).sum(3))
    torch.testing.assert_close(found.k.sum(3), gather_heads(keys, index).sum(3))
    assert (store.search(q[:, :, :1], 16).pos[1] == EMPTY).sum().item() == 4 * 2  # row 1 holds 14 of 16
    empty = TokenStore([]).search(q, 3)
    assert (empty.pos == EMPTY).all() and empty.k.shape == (2, 4, 3, 3, 8)


@pytest.mark.parametrize("write", ["window", "evicted"])
@pytest.mark.parametrize("L,w,m_e", [(45, 8, 5), (50, 7, 2), (9, 4, 1)])
def test_store_entry_chunks_follow_the_rule(L, w, m_e, write):
    """Chunk c's store {s : entry[s] <= c}, by definition: window = H_c less chunk c's eidetic memory; evicted = the
    tokens some earlier chunk's eidetic memory held that chunk c's does not. Never a token of the memory."""
    eps = torch.randint(0, 6, (3, L)).float()
    epos = eidetic_positions(eps, w, m_e)
    entry = store_entry_chunks(epos, L, w, write)
    for b in range(3):
        for c in range(epos.shape[1]):
            memory = {int(p) for p in epos[b, c] if p != EMPTY}
            if write == "window":
                expected = {s for s in range(L) if s <= c * w - w} - memory
            else:
                expected = {int(p) for cc in range(c) for p in epos[b, cc] if p != EMPTY} - memory
            assert {s for s in range(L) if entry[b, s] <= c} == expected, (b, c)
    assert (entry >= 1).all() and (entry <= NEVER).all()


def test_split_top_keeps_the_merge_and_names_what_it_drops():
    kept = slots([[3, 7, EMPTY]])
    kept.score = torch.tensor([[5.0, 1.0, float("-inf")]])
    new = slots([[9, 10, 11]])
    new.score = torch.tensor([[1.0, 5.0, 0.5]])
    top, dropped, from_kept = split_top(kept, new)
    assert top.pos.tolist() == keep_top(kept, new).pos.tolist() == [[10, 3, 9]]
    dropped_from = sorted(zip(dropped.pos[0].tolist(), from_kept[0].tolist(), strict=True))
    assert dropped_from == [(EMPTY, True), (7, True), (11, False)]
