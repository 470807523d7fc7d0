"""bmojo.ops.conv: the short causal depthwise conv + SiLU against its F.conv1d twin, in fp64 and under bf16
autocast (bf16 tolerances: see tests/conftest.py)."""

import pytest
import torch

from bmojo.ops.conv import causal_conv_silu, causal_conv_silu_reference

BF16_TOL = 2e-2  # a bf16 kernel against its fp32 reference twin, relative (tests/conftest.py)


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
        for a, b in zip(g, g_ref, strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.usefixtures("one_thread")
def test_bf16_autocast_conv_matches_fp32_reference_twin(rel):
    x, weight, bias = torch.randn(2, 50, 12), torch.randn(12, 4), torch.randn(12)
    ins_ref, ins = [t.clone().requires_grad_() for t in (x, weight, bias)], [
        t.clone().requires_grad_() for t in (x, weight, bias)
    ]
    ref, _ = causal_conv_silu_reference(*ins_ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the short conv computes in bf16 under autocast
        out, _ = causal_conv_silu(*ins)
    assert out.dtype == torch.bfloat16 and rel(out, ref) <= BF16_TOL
    grads_ref = torch.autograd.grad(ref.square().sum(), ins_ref)
    grads = torch.autograd.grad(out.float().square().sum(), ins)
    assert all(
        g.dtype == torch.float32 and rel(g, g_ref) <= BF16_TOL for g, g_ref in zip(grads, grads_ref, strict=True)
    )


def test_causal_conv_silu_with_documents_equals_each_document_alone():
    """seq_idx: each document's output equals the conv over that document alone (`past` feeds the first one)."""
    seq_idx = torch.tensor([[0] * 3 + [1] + [2] * 9, [0] * 13])
    x, w, b = torch.randn(2, 13, 6, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), torch.randn(6)
    past = torch.randn(2, 3, 6, dtype=torch.float64)
    out, carry = causal_conv_silu(x, w, b.double(), past, seq_idx)
    torch.testing.assert_close(carry, x[:, -3:])
    for row in range(2):
        for doc in seq_idx[row].unique():
            a, e = (seq_idx[row] == doc).nonzero()[[0, -1], 0].tolist()
            p = past[row : row + 1] if a == 0 else None
            alone, _ = causal_conv_silu_reference(x[row : row + 1, a : e + 1], w, b.double(), p)
            torch.testing.assert_close(out[row : row + 1, a : e + 1], alone)


def test_causal_conv_silu_gradients_with_documents_equal_each_document_alone():
    """The packed path's gradients (input, past, weight, bias) equal those of the conv over each document alone."""
    seq_idx = torch.tensor([[0] * 3 + [1] + [2] * 9, [0] * 5 + [1] * 8])
    x, w = torch.randn(2, 13, 6, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    b, past = torch.randn(6, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    ins = [t.clone().requires_grad_() for t in (x, w, b, past)]
    seed = torch.randn(2, 13, 6, dtype=torch.float64)
    out, _ = causal_conv_silu(ins[0], ins[1], ins[2], ins[3], seq_idx)
    grads = torch.autograd.grad((out * seed).sum(), ins)
    ref_ins = [t.clone().requires_grad_() for t in (x, w, b, past)]
    total = 0
    for row in range(2):
        for doc in seq_idx[row].unique():
            a, e = (seq_idx[row] == doc).nonzero()[[0, -1], 0].tolist()
            p = ref_ins[3][row : row + 1] if a == 0 else None
            alone, _ = causal_conv_silu_reference(ref_ins[0][row : row + 1, a : e + 1], ref_ins[1], ref_ins[2], p)
            total = total + (alone * seed[row : row + 1, a : e + 1]).sum()
    for g, g_ref in zip(grads, torch.autograd.grad(total, ref_ins), strict=True):
        torch.testing.assert_close(g, g_ref)
