"""bmojo.ops.memory: the memory-selection rules on exact examples (innovation score, fading positions, the
eidetic merge) and the eidetic positions against brute force."""

import pytest
import torch

from bmojo.ops.memory import EMPTY, eidetic_merge, eidetic_positions, fading_positions, innovation_score


def test_innovation_score_exact():
    # d = 1, k = 2, alpha = (0.5, 0.5): yhat_t = (y_{t-1} + y_{t-2}) / 2, y before 0 is 0.
    y = torch.tensor([[[2.0], [4.0], [0.0], [6.0]]])
    eps = innovation_score(y, torch.tensor([0.5, 0.5]))
    assert eps.tolist() == [[4.0, 9.0, 9.0, 16.0]]
    hist = torch.tensor([[[1.0], [3.0]]])  # y_{-2} = 1, y_{-1} = 3 -> yhat_0 = 2
    assert innovation_score(y[:, :1], torch.tensor([0.5, 0.5]), hist).tolist() == [[0.0]]


def test_fading_positions_rule():
    # chunk c reads [c w - w - m_f + 1, c w - w]; w = 4, m_f = 3
    pos = fading_positions(torch.arange(4), 4, 3)
    assert pos.tolist() == [[EMPTY] * 3, [EMPTY, EMPTY, 0], [2, 3, 4], [6, 7, 8]]


def test_eidetic_merge_keeps_top_scores_and_breaks_ties_toward_recent():
    inf = float("-inf")
    mem_s, mem_p = torch.tensor([[5.0, 1.0, inf]]), torch.tensor([[3, 7, EMPTY]])
    new_s, new_p = torch.tensor([[1.0, 5.0, 0.5]]), torch.tensor([[9, 10, 11]])
    s, p, idx = eidetic_merge(mem_s, mem_p, new_s, new_p)
    assert p.tolist() == [[10, 3, 9]]  # 5@10 beats 5@3 (more recent); 1@9 beats 1@7
    assert s.tolist() == [[5.0, 5.0, 1.0]]
    assert idx.tolist() == [[4, 0, 3]]


@pytest.mark.parametrize("L,w,m_e", [(45, 8, 5), (50, 7, 20), (9, 4, 1)])
def test_eidetic_positions_match_brute_force(L, w, m_e, brute_force_eidetic):
    eps = torch.randint(0, 6, (3, L)).float()  # many ties on purpose
    pos = eidetic_positions(eps, w, m_e)
    for b in range(3):
        for c in range(pos.shape[1]):
            got = sorted(p for p in pos[b, c].tolist() if p != EMPTY)
            assert got == brute_force_eidetic(eps[b], w, m_e, c), (b, c)


def test_innovation_score_with_documents_restarts_the_predictor():
    """seq_idx: outputs of another document count as zeros, so each document scores as if alone."""
    seq_idx = torch.tensor([[0] * 6 + [1] * 9])
    y, weights = torch.randn(1, 15, 5), torch.tensor([0.4, 0.3, 0.2, 0.1])
    eps = innovation_score(y, weights, seq_idx=seq_idx)
    torch.testing.assert_close(eps[:, :6], innovation_score(y[:, :6], weights))
    torch.testing.assert_close(eps[:, 6:], innovation_score(y[:, 6:], weights))


def test_eidetic_positions_with_aligned_documents_match_brute_force_per_document(brute_force_eidetic):
    """Documents aligned to the chunk grid (w 4: lengths 8, 4, 12): each document's chunks hold the top m_e of its
    own history only, as if it stood alone."""
    w, m_e = 4, 3
    seq_idx = torch.tensor([[0] * 8 + [1] * 4 + [2] * 12])
    eps = torch.randint(0, 6, (1, 24)).float()
    pos = eidetic_positions(eps, w, m_e, seq_idx)
    for start, length in ((0, 8), (8, 4), (12, 12)):
        for c in range(length // w):
            got = sorted(p - start for p in pos[0, start // w + c].tolist() if p != EMPTY)
            assert got == brute_force_eidetic(eps[0, start : start + length], w, m_e, c), (start, c)
