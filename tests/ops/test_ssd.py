"""bmojo.ops.ssd: the chunked SSD against the per-token recurrence (values, state, gradients), and its fast paths:
bf16 autocast, torch.compile, the CUDA fla backend (bf16 tolerances: see tests/conftest.py)."""

import shutil

import pytest
import torch

from bmojo.ops.ssd import _choose_and_log_backend, fla_available, select_backend, ssd_chunked, ssd_sequential

FP32_TOL = 1e-5  # chunked vs sequential SSD values and state: the same sums in another order
GRAD_TOL = 1e-3  # chunked vs sequential SSD gradients (fp32 inside both)
BF16_TOL = 2e-2  # a bf16 kernel against its fp32 reference twin, relative (tests/conftest.py)
COMPILE_TOL = 1e-4  # torch.compile vs eager: the same fp32 arithmetic in another order
FLA_TOL = 2e-3  # the CUDA fla kernel vs the PyTorch SSD (fp32, another order of summation, no TF32)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (the GPU path is optional)")


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
        torch.testing.assert_close(y.double(), y_ref.double(), atol=FP32_TOL, rtol=FP32_TOL)
        torch.testing.assert_close(s.double(), s_ref.double(), atol=FP32_TOL, rtol=FP32_TOL)


@pytest.mark.parametrize("L,Q", [(16, 16), (11, 16), (37, 8)])
@pytest.mark.parametrize("documents", [False, True])
def test_ssd_chunked_without_final_state_is_the_same_y(L, Q, documents):
    """final_state=False returns no state and the same y, bit for bit, and the same gradients (to fp32 rounding:
    autograd adds the skipped zeros in another order): with one chunk and no initial state it skips the carried-state
    terms (exact zeros there), with more chunks it runs them all."""
    inputs = [t.float().requires_grad_() for t in ssd_inputs(L=L)]
    seq_idx = SEQ_IDX[:, :L] if documents else None
    y, state = ssd_chunked(*inputs, Q, seq_idx=seq_idx)
    y_fast, none = ssd_chunked(*inputs, Q, seq_idx=seq_idx, final_state=False)
    assert state is not None and none is None
    assert torch.equal(y_fast, y)
    grads = torch.autograd.grad(y.square().sum(), inputs)
    for a, b in zip(torch.autograd.grad(y_fast.square().sum(), inputs), grads, strict=True):
        torch.testing.assert_close(a, b, atol=FP32_TOL, rtol=FP32_TOL)


def test_ssd_chunked_gradients_match_sequential():
    inputs = [t.float().requires_grad_(t.dtype.is_floating_point) for t in ssd_inputs(L=20)]
    y, _ = ssd_chunked(*inputs, chunk_size=8)
    g1 = torch.autograd.grad(y.square().sum(), inputs)
    y_ref, _ = ssd_sequential(*inputs)
    g2 = torch.autograd.grad(y_ref.square().sum(), inputs)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=GRAD_TOL, rtol=GRAD_TOL)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("L,Q", [(203, 4), (1000, 8)])
def test_ssd_chunked_many_chunks_matches_sequential(L, Q):
    """Many chunks (51 and 125): the chunked form with a long scan over chunks against the per-token
    recurrence: values, final state and gradients (both compute in fp32)."""
    g = torch.Generator().manual_seed(0)
    x, B, C = (
        torch.randn(2, L, 4, 8, generator=g), torch.randn(2, L, 2, 6, generator=g), torch.randn(2, L, 2, 6, generator=g)
    )
    dt = torch.nn.functional.softplus(torch.randn(2, L, 4, generator=g) - 2)
    A, s0 = -torch.rand(4, generator=g) - 0.1, torch.randn(2, 4, 8, 6, generator=g)
    inputs = [t.double().requires_grad_() for t in (x, dt, A, B, C)]
    y, s = ssd_chunked(*inputs, Q, s0.double())
    y_ref, s_ref = ssd_sequential(*inputs, s0.double())
    torch.testing.assert_close(y.double(), y_ref.double(), atol=FP32_TOL, rtol=FP32_TOL)
    torch.testing.assert_close(s.double(), s_ref.double(), atol=FP32_TOL, rtol=FP32_TOL)
    g1 = torch.autograd.grad((y.square().sum() + s.sum()), inputs)
    g2 = torch.autograd.grad((y_ref.square().sum() + s_ref.sum()), inputs)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a.double(), b.double(), atol=GRAD_TOL, rtol=GRAD_TOL)  # fp32 inside both


@pytest.mark.usefixtures("one_thread")
def test_bf16_autocast_ssd_matches_fp32_reference_twin(rel):
    x = torch.randn(2, 70, 4, 8)
    dt = torch.nn.functional.softplus(torch.randn(2, 70, 4) - 1)
    A, B, C = -torch.rand(4) * 2 - 0.1, torch.randn(2, 70, 2, 6), torch.randn(2, 70, 2, 6)
    ins_ref, ins = [t.clone().requires_grad_() for t in (x, dt, A, B, C)], [
        t.clone().requires_grad_() for t in (x, dt, A, B, C)
    ]
    y_ref, s_ref = ssd_sequential(*ins_ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = ssd_chunked(*ins, 16)
    assert y.dtype == torch.float32 and s.dtype == torch.float32  # y in x's dtype; the state is kept in fp32
    assert rel(y, y_ref) <= BF16_TOL and rel(s, s_ref) <= BF16_TOL
    # gradients through the bf16 matmuls, the bf16 scores and the fp32 chunk scan (measured <= 8e-3)
    grads_ref = torch.autograd.grad(y_ref.square().sum() + s_ref.sum(), ins_ref)
    grads = torch.autograd.grad(y.square().sum() + s.sum(), ins)
    assert all(rel(a, b) <= BF16_TOL for a, b in zip(grads, grads_ref, strict=True))


def _compiler_available() -> bool:
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.skipif(not _compiler_available(), reason="torch.compile (inductor, CPU) needs a C++ compiler")
def test_compiled_ssd_matches_eager():
    """torch.compile of the chunked SSD (the kernel with the most elementwise work to fuse): same values and
    gradients as eager. (It does not pay on this CPU: see docs/benchmarks.md.)"""
    torch._dynamo.reset()
    inputs = [
        torch.randn(1, 40, 4, 8), torch.rand(1, 40, 4) * 0.5, -torch.rand(4) - 0.1, torch.randn(1, 40, 2, 8),
        torch.randn(1, 40, 2, 8),
    ]
    eager_in = [t.clone().requires_grad_() for t in inputs]
    comp_in = [t.clone().requires_grad_() for t in inputs]
    y, s = ssd_chunked(*eager_in, 16)
    y_c, s_c = torch.compile(ssd_chunked, fullgraph=True, dynamic=False)(*comp_in, 16)
    torch.testing.assert_close(y_c, y, atol=COMPILE_TOL, rtol=COMPILE_TOL)
    torch.testing.assert_close(s_c, s, atol=COMPILE_TOL, rtol=COMPILE_TOL)
    (y.square().sum() + s.sum()).backward()
    (y_c.square().sum() + s_c.sum()).backward()
    for a, b in zip(comp_in, eager_in, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=COMPILE_TOL, rtol=COMPILE_TOL)


@cuda
@pytest.mark.usefixtures("one_thread")
@pytest.mark.skipif(not fla_available(), reason="flash-linear-attention (fla) is not installed")
def test_cuda_fla_ssd_matches_torch_and_sequential():
    torch.backends.cuda.matmul.allow_tf32 = False
    inputs = [
        torch.randn(2, 200, 4, 32), torch.rand(2, 200, 4) * 0.5, -torch.rand(4) - 0.1, torch.randn(2, 200, 2, 64),
        torch.randn(2, 200, 2, 64),
    ]
    s0 = torch.randn(2, 4, 32, 64)
    y_ref, s_ref = ssd_sequential(*inputs, initial_state=s0)
    gpu = [t.cuda().requires_grad_() for t in inputs]
    y, s = ssd_chunked(*gpu, 64, s0.cuda(), backend="fla")
    torch.testing.assert_close(y.cpu(), y_ref, atol=FLA_TOL, rtol=FLA_TOL)
    torch.testing.assert_close(s.cpu(), s_ref, atol=FLA_TOL, rtol=FLA_TOL)
    y.square().sum().backward()
    grads = [t.grad.clone() for t in gpu]
    for t in gpu:
        t.grad = None
    y_t, _ = ssd_chunked(*gpu, 64, s0.cuda(), backend="torch")
    y_t.square().sum().backward()
    for a, t in zip(grads, gpu, strict=True):
        torch.testing.assert_close(a, t.grad, atol=FLA_TOL, rtol=FLA_TOL)


@pytest.mark.skipif(fla_available(), reason="needs a machine where flash-linear-attention cannot load")
def test_backend_choice_is_explicit():
    """An explicit fla backend that cannot load raises with the import error; auto falls back to the PyTorch SSD
    on CPU silently (it is the CPU path) and on CUDA with a warning; an unknown name lists the valid ones."""
    _choose_and_log_backend.cache_clear()  # the fallback warning is given once per process
    with pytest.raises(RuntimeError, match="importing it failed: .*Error"):
        select_backend("fla", "cpu")
    assert select_backend("auto", "cpu") == "torch"
    with pytest.warns(UserWarning, match="falls back to the PyTorch reference"):
        assert select_backend("auto", "cuda") == "torch"
    with pytest.raises(ValueError, match="'auto', 'torch', 'fla'"):
        select_backend("triton", "cpu")


SEQ_IDX = torch.tensor([[0] * 5 + [1] * 20 + [2] * 12, [0] * 16 + [1] + [2] * 20])  # L 37: boundaries in and at chunks


@pytest.mark.parametrize("Q", [4, 8, 16, 64])
def test_ssd_chunked_with_documents_matches_sequential_and_each_document(Q):
    """Packed documents (seq_idx): the chunked scan equals its sequential twin (which restarts the state at every
    boundary), and each document equals the document scanned alone (the initial state belongs to the first)."""
    x, dt, A, B, C = ssd_inputs()
    s0 = torch.randn(2, 4, 8, 6, dtype=torch.float64)
    y, state = ssd_chunked(x, dt, A, B, C, Q, s0, seq_idx=SEQ_IDX)
    y_ref, state_ref = ssd_sequential(x, dt, A, B, C, s0, seq_idx=SEQ_IDX)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=FP32_TOL * 10)
    torch.testing.assert_close(state, state_ref.to(state.dtype), rtol=0, atol=FP32_TOL)
    for row in range(2):
        for doc in SEQ_IDX[row].unique():
            a, e = (SEQ_IDX[row] == doc).nonzero()[[0, -1], 0].tolist()
            part = [t[row : row + 1, a : e + 1] for t in (x, dt, B, C)]
            alone, _ = ssd_sequential(part[0], part[1], A, part[2], part[3], s0[row : row + 1] if a == 0 else None)
            torch.testing.assert_close(y[row : row + 1, a : e + 1], alone, rtol=0, atol=FP32_TOL * 10)
