"""Every fast op against its reference twin, and the memory-selection rules on exact examples."""

import pytest
import torch

from bmojo.ops.attention import window_attention, window_attention_reference
from bmojo.ops.conv import causal_conv_silu, causal_conv_silu_reference
from bmojo.ops.memory import EMPTY, eidetic_merge, eidetic_positions, fading_positions, innovation_score
from bmojo.ops.ssd import ssd_chunked, ssd_sequential


def ssd_inputs(b=2, L=37, h=4, p=8, g=2, n=6, dtype=torch.float64):
    x = torch.randn(b, L, h, p, dtype=dtype)
    dt = torch.nn.functional.softplus(torch.randn(b, L, h, dtype=dtype))
    A = -torch.rand(h, dtype=dtype) * 2 - 0.1
    B, C = torch.randn(b, L, g, n, dtype=dtype), torch.randn(b, L, g, n, dtype=dtype)
    return x, dt, A, B, C


@pytest.mark.parametrize("L,Q", [(37, 8), (32, 8), (5, 16), (64, 64)])
def test_ssd_chunked_matches_sequential(L, Q):
    x, dt, A, B, C = ssd_inputs(L=L)
    init = torch.randn(2, 4, 8, 6, dtype=torch.float64)
    for s0 in (None, init):
        y, s = ssd_chunked(x, dt, A, B, C, Q, s0)
        y_ref, s_ref = ssd_sequential(x, dt, A, B, C, s0)
        torch.testing.assert_close(y.double(), y_ref.double(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s.double(), s_ref.double(), atol=1e-5, rtol=1e-5)


def test_ssd_chunked_gradients_match_sequential():
    inputs = [t.float().requires_grad_(t.dtype.is_floating_point) for t in ssd_inputs(L=20)]
    y, _ = ssd_chunked(*inputs, chunk_size=8)
    g1 = torch.autograd.grad(y.square().sum(), inputs)
    y_ref, _ = ssd_sequential(*inputs)
    g2 = torch.autograd.grad(y_ref.square().sum(), inputs)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("L,K", [(37, 4), (2, 4), (1, 4), (9, 1)])
def test_causal_conv_silu_matches_conv1d(L, K):
    """Values, the carried K-1 inputs and gradients (input, weight, bias, past) equal the F.conv1d twin."""
    x = torch.randn(2, L, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, K, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    past = torch.randn(2, K - 1, 6, dtype=torch.float64, requires_grad=True)
    for p in (None, past):
        out, carry = causal_conv_silu(x, weight, bias, p)
        ref, ref_carry = causal_conv_silu_reference(x, weight, bias, p)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(carry, ref_carry)
        leaves = [x, weight, bias] + ([p] if p is not None else [])
        g = torch.autograd.grad((out.sin() * out).sum() + carry.sum(), leaves)
        g_ref = torch.autograd.grad((ref.sin() * ref).sum() + ref_carry.sum(), leaves)
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("L,w,M", [(45, 8, 0), (45, 8, 5), (16, 16, 3), (7, 16, 2)])
def test_window_attention_matches_dense_reference(L, w, M):
    b, hq, hk, d = 2, 4, 2, 8
    q, k, v = torch.randn(b, hq, L, d), torch.randn(b, hk, L, d), torch.randn(b, hk, L, d)
    nc = -(-L // w)
    mem = {}
    if M:
        mem = dict(mem_k=torch.randn(b, hk, nc, M, d), mem_v=torch.randn(b, hk, nc, M, d),
                   mem_valid=torch.rand(b, nc, M) > 0.3)
    out = window_attention(q, k, v, w, **mem)
    ref = window_attention_reference(q, k, v, w, **mem)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


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


def brute_force_eidetic(eps_row, w, m_e, chunk):
    """Top m_e of H_c = {p <= c w - w} by (score, position), descending."""
    hist = [(float(eps_row[p]), p) for p in range(0, chunk * w - w + 1) if p < len(eps_row)]
    return sorted(p for _, p in sorted(hist, reverse=True)[:m_e])


@pytest.mark.parametrize("L,w,m_e", [(45, 8, 5), (50, 7, 20), (9, 4, 1)])
def test_eidetic_positions_match_brute_force(L, w, m_e):
    eps = torch.randint(0, 6, (3, L)).float()  # many ties on purpose
    pos = eidetic_positions(eps, w, m_e)
    for b in range(3):
        for c in range(pos.shape[1]):
            got = sorted(p for p in pos[b, c].tolist() if p != EMPTY)
            assert got == brute_force_eidetic(eps[b], w, m_e, c), (b, c)
