"""bmojo.ops.attention: blocked sliding-window attention (with a per-chunk memory prefix) against the dense
reference, in fp32 and under bf16 autocast, and `explicit_attention` against SDPA (bf16 tolerances: see
tests/conftest.py)."""

import pytest
import torch

from bmojo.ops.attention import (
    explicit_attention,
    masked_attention,
    window_attention,
    window_attention_reference,
    window_attention_weights,
)

FP32_TOL = 1e-5  # blocked vs dense fp32 attention: the same sums in another order
BF16_TOL = 2e-2  # a bf16 kernel against its fp32 reference twin, relative (tests/conftest.py)


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
    torch.testing.assert_close(out, ref, atol=FP32_TOL, rtol=FP32_TOL)


@pytest.mark.parametrize("L,w,M,span", [(45, 8, 0, 8), (45, 8, 5, 3), (45, 8, 5, 1), (12, 8, 2, 8), (7, 8, 0, 5)])
def test_window_attention_band_matches_dense_reference(L, w, M, span):
    """The band (B'MOJO's per-query fading span): query t also reads band keys t - w - span < f <= t - w."""
    b, hq, hk, d = 2, 4, 2, 8
    q, k, v = torch.randn(b, hq, L, d), torch.randn(b, hk, L, d), torch.randn(b, hk, L, d)
    band = (torch.randn(b, hk, L, d), torch.randn(b, hk, L, d), span)
    nc = -(-L // w)
    mem = {}
    if M:
        mem = dict(mem_k=torch.randn(b, hk, nc, M, d), mem_v=torch.randn(b, hk, nc, M, d),
                   mem_valid=torch.rand(b, nc, M) > 0.3)
    out = window_attention(q, k, v, w, **mem, band=band)
    torch.testing.assert_close(out, window_attention_reference(q, k, v, w, **mem, band=band), atol=FP32_TOL,
                               rtol=FP32_TOL)
    if L > w:  # queries past the first window do read the band
        assert not torch.allclose(out[:, :, w:], window_attention(q, k, v, w, **mem)[:, :, w:])


@pytest.mark.parametrize("L,w,M,span", [(45, 8, 5, 3), (7, 8, 2, 0), (16, 4, 0, 4)])
def test_window_attention_gradients_match_dense_reference(L, w, M, span):
    """The backward of the blocked layout (chunk views of padded keys, one cat into the folded batch) against the
    dense twin's: gradients of q, k, v, the memory and the band."""
    g = torch.Generator().manual_seed(0)
    b, hq, hk, d = 2, 4, 2, 8
    nc = -(-L // w)
    leaves = [torch.randn(*shape, generator=g).requires_grad_() for shape in
              [(b, hq, L, d), (b, hk, L, d), (b, hk, L, d), (b, hk, nc, M, d), (b, hk, nc, M, d), (b, hk, L, d),
               (b, hk, L, d)]]
    q, k, v, mem_k, mem_v, band_k, band_v = leaves
    kwargs = dict(mem_k=mem_k, mem_v=mem_v, mem_valid=torch.rand(b, nc, M, generator=g) > 0.3)
    if span:
        kwargs["band"] = (band_k, band_v, span)
    dy = torch.randn(b, hq, L, d, generator=g)
    grads = torch.autograd.grad(window_attention(q, k, v, w, **kwargs), leaves, dy, allow_unused=True)
    ref = torch.autograd.grad(window_attention_reference(q, k, v, w, **kwargs), leaves, dy, allow_unused=True)
    for got, want in zip(grads, ref, strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, atol=FP32_TOL, rtol=FP32_TOL)


def test_window_attention_weights_are_the_probabilities_window_attention_applies():
    """With one-hot values (source s -> unit vector e_s) the attention output is each query's distribution over its
    sources; `window_attention_weights`, mapped from the blocked layout [memory of chunk c; chunk c-1; chunk c] to
    those sources, equals it; rows sum to 1."""
    b, hq, hk, L, w, M = 2, 4, 2, 45, 8, 5
    nc = -(-L // w)
    D = L + nc * M  # one source per raw position and per memory slot of each chunk
    q, k = torch.randn(b, hq, L, D), torch.randn(b, hk, L, D)
    eye = torch.eye(D).expand(b, hk, D, D)
    v, mem_v = eye[:, :, :L], eye[:, :, L:].reshape(b, hk, nc, M, D)
    mem_k, mem_valid = torch.randn(b, hk, nc, M, D), torch.rand(b, nc, M) > 0.3
    out = window_attention(q, k, v, w, mem_k, mem_v, mem_valid)
    weights = window_attention_weights(q, k, v, w, mem_k, mem_v, mem_valid)
    assert weights.shape == (b, hq, L, M + 2 * w)
    torch.testing.assert_close(weights.sum(-1), torch.ones(b, hq, L))
    t = torch.arange(L)
    c = t // w
    source = torch.cat([L + c[:, None] * M + torch.arange(M), (c[:, None] - 1) * w + torch.arange(2 * w)], dim=1)
    dense = torch.zeros(b, hq, L, D).scatter_add_(3, source.clamp(min=0).expand(b, hq, L, -1), weights)
    torch.testing.assert_close(dense, out, atol=FP32_TOL, rtol=FP32_TOL)


@pytest.mark.usefixtures("one_thread")
def test_bf16_autocast_window_attention_matches_fp32_reference_twin(rel):
    q, k, v = torch.randn(2, 4, 45, 8), torch.randn(2, 2, 45, 8), torch.randn(2, 2, 45, 8)
    mem = dict(mem_k=torch.randn(2, 2, 6, 5, 8), mem_v=torch.randn(2, 2, 6, 5, 8), mem_valid=torch.rand(2, 6, 5) > 0.3)
    ref = window_attention_reference(q, k, v, 8, **mem)
    # on CPU: `explicit_attention`, bf16 matmuls around an fp32 softmax
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = window_attention(
            q.bfloat16(), k.bfloat16(), v.bfloat16(), 8,
            **{k_: t.bfloat16() if t.is_floating_point() else t for k_, t in mem.items()},
        )
    assert rel(out, ref) <= BF16_TOL


@pytest.mark.usefixtures("one_thread")
def test_explicit_attention_matches_sdpa(rel):
    """The CPU reduced-precision attention (GQA heads folded into rows, additive mask) computes what SDPA does:
    in fp32 to rounding, in bf16 within a few roundoffs, values and gradients."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(3, 6, 9, 8, generator=g), torch.randn(3, 2, 13, 8, generator=g),
        torch.randn(3, 2, 13, 8, generator=g),
    )
    mask = torch.rand(3, 1, 9, 13, generator=g) > 0.5
    mask[..., 4] = True  # every row attends somewhere
    ins_ref, ins = [t.clone().requires_grad_() for t in (q, k, v)], [t.clone().requires_grad_() for t in (q, k, v)]
    ref = masked_attention(*ins_ref, mask)
    out_fp32 = explicit_attention(q, k, v, mask, torch.float32)
    torch.testing.assert_close(out_fp32, ref.detach(), atol=FP32_TOL, rtol=FP32_TOL)
    out = explicit_attention(*ins, mask, torch.bfloat16)
    assert out.dtype == torch.bfloat16 and rel(out, ref) <= BF16_TOL
    grads_ref = torch.autograd.grad(ref.square().sum(), ins_ref)
    grads = torch.autograd.grad(out.float().square().sum(), ins)
    assert all(rel(a, b) <= BF16_TOL for a, b in zip(grads, grads_ref, strict=True))


def test_window_attention_with_documents_equals_each_document_alone():
    """seq_idx: raw keys of another document are masked; each document equals the dense reference over it alone."""
    seq_idx = torch.tensor([[0] * 7 + [1] * 2 + [2] * 14, [0] * 23])
    q, k, v = torch.randn(2, 4, 23, 8), torch.randn(2, 2, 23, 8), torch.randn(2, 2, 23, 8)
    out = window_attention(q, k, v, 5, seq_idx=seq_idx)
    for row in range(2):
        for doc in seq_idx[row].unique():
            a, e = (seq_idx[row] == doc).nonzero()[[0, -1], 0].tolist()
            part = [t[row : row + 1, :, a : e + 1] for t in (q, k, v)]
            alone = window_attention_reference(*part, 5)
            torch.testing.assert_close(out[row : row + 1, :, a : e + 1], alone, rtol=0, atol=FP32_TOL)


def test_window_attention_band_with_documents_equals_each_document_alone():
    """seq_idx with a band: band keys of another document are masked too; each document equals the reference over
    it alone."""
    seq_idx = torch.tensor([[0] * 7 + [1] * 2 + [2] * 14, [0] * 23])
    q, k, v = torch.randn(2, 4, 23, 8), torch.randn(2, 2, 23, 8), torch.randn(2, 2, 23, 8)
    band_k, band_v = torch.randn(2, 2, 23, 8), torch.randn(2, 2, 23, 8)
    out = window_attention(q, k, v, 5, seq_idx=seq_idx, band=(band_k, band_v, 4))
    for row in range(2):
        for doc in seq_idx[row].unique():
            a, e = (seq_idx[row] == doc).nonzero()[[0, -1], 0].tolist()
            part = [t[row : row + 1, :, a : e + 1] for t in (q, k, v, band_k, band_v)]
            alone = window_attention_reference(*part[:3], 5, band=(*part[3:], 4))
            torch.testing.assert_close(out[row : row + 1, :, a : e + 1], alone, rtol=0, atol=FP32_TOL)


@pytest.mark.parametrize("L,w,M", [(45, 8, 0), (45, 8, 5), (7, 16, 2)])
def test_window_attention_extra_keys_match_dense_reference(L, w, M):
    """Each query's own extra keys (B'MOJO's retrieved tokens: logits and values per query) join the same softmax;
    values and gradients equal the dense twin's; extra keys that are all -inf change nothing."""
    b, hq, hk, d, r = 2, 4, 2, 8, 3
    q, k, v = (torch.randn(b, h, L, d, requires_grad=True) for h in (hq, hk, hk))
    logits = torch.randn(b, hq, L, r).masked_fill(torch.rand(b, hq, L, r) > 0.7, float("-inf")).requires_grad_()
    values = torch.randn(b, hq, L, r, d, requires_grad=True)
    nc = -(-L // w)
    mem = {}
    if M:
        mem = dict(mem_k=torch.randn(b, hk, nc, M, d), mem_v=torch.randn(b, hk, nc, M, d),
                   mem_valid=torch.rand(b, nc, M) > 0.3)
    out = window_attention(q, k, v, w, **mem, extra=(logits, values))
    ref = window_attention_reference(q, k, v, w, **mem, extra=(logits, values))
    torch.testing.assert_close(out, ref, atol=FP32_TOL, rtol=FP32_TOL)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v, logits, values))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v, logits, values))
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, rg, atol=1e-4, rtol=1e-4)
    none = (torch.full_like(logits, float("-inf")), values)
    torch.testing.assert_close(window_attention(q, k, v, w, **mem, extra=none), window_attention(q, k, v, w, **mem),
                               atol=FP32_TOL, rtol=FP32_TOL)
