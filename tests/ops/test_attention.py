"""Every fast path against the fp32 eager reference: bf16 autocast (with tolerances), torch.compile, CUDA.

Tolerances for bf16 autocast. bf16 keeps 8 significant bits, a unit roundoff of 2^-8 = 3.9e-3 per rounding.
Under autocast the matmuls take bf16 inputs (rounded once) and accumulate in fp32, while norm and softmax
statistics, the SSD decays (cumsum, exp) and the carried scan state stay fp32; so an output is off by a few
roundoffs, not by a growing amount. We compare relative Frobenius errors ||a - b|| / ||b||:
  logits: <= 2e-2 (5 roundoffs; measured 3e-3 .. 9e-3 on the tiny models below),
  loss: <= 1e-3 relative (a mean over many tokens averages the rounding; measured ~3e-5),
  all gradients together: <= 5e-2 (a gradient passes through twice as many bf16 matmuls as the forward;
  measured <= 1.2e-2), and cosine similarity >= 0.999 (the update direction is the same; measured >= 0.99993).
Kernels in bf16 (SSD, short conv, blocked attention) against their fp32 reference twins, values and gradients:
<= 2e-2 relative.
Compiled and CUDA paths compute the same fp32 arithmetic in another order: 1e-4 .. 1e-3.
"""

import shutil

import pytest
import torch

import bmojo
from bmojo.ops.attention import explicit_attention, masked_attention, window_attention, window_attention_reference
from bmojo.ops.conv import causal_conv_silu, causal_conv_silu_reference
from bmojo.ops.ssd import fla_available, ssd_chunked, ssd_sequential
from conftest import tiny_model

PRESETS = list(bmojo.PRESETS)
L = 45
bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is as fast, and immune to a busy machine descheduling the second one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_autocast_forward_and_decoding_track_fp32(preset):
    model = tiny_model(preset)
    ids = torch.randint(0, 61, (2, L))
    with torch.no_grad():
        ref = model(ids).logits
        with bf16():
            out = model(ids).logits
            cache = model.new_cache(2)  # decode the first 20 tokens (two chunk boundaries at w = 8)
            step = torch.cat([model(ids[:, t : t + 1], cache=cache).logits for t in range(20)], dim=1)
    assert out.dtype == torch.bfloat16  # the LM head really ran in bf16
    assert rel(out, ref) <= 2e-2
    assert rel(step, ref[:, :20]) <= 2e-2


@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_autocast_training_step_tracks_fp32(preset):
    """Loss and gradients under autocast; the master weights (and so the gradients) stay fp32."""
    model = tiny_model(preset).train()
    ids = torch.randint(0, 61, (2, L))
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(ids, labels=ids).loss
    g_ref = torch.autograd.grad(loss, params, allow_unused=True)
    with bf16():
        loss_bf = model(ids, labels=ids).loss
    g_bf = torch.autograd.grad(loss_bf, params, allow_unused=True)
    assert abs(loss_bf.item() - loss.item()) <= 1e-3 * loss.item()
    pairs = [(a, b) for a, b in zip(g_bf, g_ref) if b is not None]
    assert all(a.dtype == torch.float32 for a, _ in pairs)
    flat_bf, flat_ref = torch.cat([a.flatten() for a, _ in pairs]), torch.cat([b.flatten() for _, b in pairs])
    assert rel(flat_bf, flat_ref) <= 5e-2
    assert torch.nn.functional.cosine_similarity(flat_bf.double(), flat_ref.double(), dim=0) >= 0.999


@pytest.mark.parametrize("L,Q", [(203, 4), (1000, 8)])
def test_ssd_chunked_many_chunks_matches_sequential(L, Q):
    """Many chunks (51 and 125): the chunked form with a long scan over chunks against the per-token
    recurrence: values, final state and gradients (both compute in fp32)."""
    g = torch.Generator().manual_seed(0)
    x, B, C = torch.randn(2, L, 4, 8, generator=g), torch.randn(2, L, 2, 6, generator=g), torch.randn(2, L, 2, 6, generator=g)
    dt = torch.nn.functional.softplus(torch.randn(2, L, 4, generator=g) - 2)
    A, s0 = -torch.rand(4, generator=g) - 0.1, torch.randn(2, 4, 8, 6, generator=g)
    inputs = [t.double().requires_grad_() for t in (x, dt, A, B, C)]
    y, s = ssd_chunked(*inputs, Q, s0.double())
    y_ref, s_ref = ssd_sequential(*inputs, s0.double())
    torch.testing.assert_close(y.double(), y_ref.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.double(), s_ref.double(), atol=1e-5, rtol=1e-5)
    g1 = torch.autograd.grad((y.square().sum() + s.sum()), inputs)
    g2 = torch.autograd.grad((y_ref.square().sum() + s_ref.sum()), inputs)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-3, rtol=1e-3)  # fp32 inside both


def test_bf16_autocast_kernels_match_fp32_reference_twins():
    x = torch.randn(2, 70, 4, 8)
    dt = torch.nn.functional.softplus(torch.randn(2, 70, 4) - 1)
    A, B, C = -torch.rand(4) * 2 - 0.1, torch.randn(2, 70, 2, 6), torch.randn(2, 70, 2, 6)
    ins_ref, ins = [t.clone().requires_grad_() for t in (x, dt, A, B, C)], [t.clone().requires_grad_() for t in (x, dt, A, B, C)]
    y_ref, s_ref = ssd_sequential(*ins_ref)
    with bf16():
        y, s = ssd_chunked(*ins, 16)
    assert y.dtype == torch.float32 and s.dtype == torch.float32  # y in x's dtype; the state is kept in fp32
    assert rel(y, y_ref) <= 2e-2 and rel(s, s_ref) <= 2e-2
    # gradients through the bf16 matmuls, the bf16 scores and the fp32 chunk scan (measured <= 8e-3)
    grads_ref = torch.autograd.grad(y_ref.square().sum() + s_ref.sum(), ins_ref)
    grads = torch.autograd.grad(y.square().sum() + s.sum(), ins)
    assert all(rel(a, b) <= 2e-2 for a, b in zip(grads, grads_ref))

    x, weight, bias = torch.randn(2, 50, 12), torch.randn(12, 4), torch.randn(12)
    ins_ref, ins = [t.clone().requires_grad_() for t in (x, weight, bias)], [t.clone().requires_grad_() for t in (x, weight, bias)]
    ref, _ = causal_conv_silu_reference(*ins_ref)
    with bf16():  # the short conv computes in bf16 under autocast
        out, _ = causal_conv_silu(*ins)
    assert out.dtype == torch.bfloat16 and rel(out, ref) <= 2e-2
    grads_ref = torch.autograd.grad(ref.square().sum(), ins_ref)
    grads = torch.autograd.grad(out.float().square().sum(), ins)
    assert all(g.dtype == torch.float32 and rel(g, g_ref) <= 2e-2 for g, g_ref in zip(grads, grads_ref))

    q, k, v = torch.randn(2, 4, 45, 8), torch.randn(2, 2, 45, 8), torch.randn(2, 2, 45, 8)
    mem = dict(mem_k=torch.randn(2, 2, 6, 5, 8), mem_v=torch.randn(2, 2, 6, 5, 8), mem_valid=torch.rand(2, 6, 5) > 0.3)
    ref = window_attention_reference(q, k, v, 8, **mem)
    with bf16():  # on CPU: `explicit_attention`, bf16 matmuls around an fp32 softmax
        out = window_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 8, **{k_: t.bfloat16() if t.is_floating_point() else t for k_, t in mem.items()})
    assert rel(out, ref) <= 2e-2


def test_explicit_attention_matches_sdpa():
    """The CPU reduced-precision attention (GQA heads folded into rows, additive mask) computes what SDPA does:
    in fp32 to rounding, in bf16 within a few roundoffs, values and gradients."""
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 6, 9, 8, generator=g), torch.randn(3, 2, 13, 8, generator=g), torch.randn(3, 2, 13, 8, generator=g)
    mask = torch.rand(3, 1, 9, 13, generator=g) > 0.5
    mask[..., 4] = True  # every row attends somewhere
    ins_ref, ins = [t.clone().requires_grad_() for t in (q, k, v)], [t.clone().requires_grad_() for t in (q, k, v)]
    ref = masked_attention(*ins_ref, mask)
    torch.testing.assert_close(explicit_attention(q, k, v, mask, torch.float32), ref.detach(), atol=1e-5, rtol=1e-5)
    out = explicit_attention(*ins, mask, torch.bfloat16)
    assert out.dtype == torch.bfloat16 and rel(out, ref) <= 2e-2
    grads_ref = torch.autograd.grad(ref.square().sum(), ins_ref)
    grads = torch.autograd.grad(out.float().square().sum(), ins)
    assert all(rel(a, b) <= 2e-2 for a, b in zip(grads, grads_ref))


def _compiler_available() -> bool:
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


@pytest.mark.skipif(not _compiler_available(), reason="torch.compile (inductor, CPU) needs a C++ compiler")
def test_compiled_ssd_matches_eager():
    """torch.compile of the chunked SSD (the kernel with the most elementwise work to fuse): same values and
    gradients as eager. (It does not pay on this CPU: see docs/benchmarks.md.)"""
    torch._dynamo.reset()
    inputs = [torch.randn(1, 40, 4, 8), torch.rand(1, 40, 4) * 0.5, -torch.rand(4) - 0.1, torch.randn(1, 40, 2, 8), torch.randn(1, 40, 2, 8)]
    eager_in = [t.clone().requires_grad_() for t in inputs]
    comp_in = [t.clone().requires_grad_() for t in inputs]
    y, s = ssd_chunked(*eager_in, 16)
    y_c, s_c = torch.compile(ssd_chunked, fullgraph=True, dynamic=False)(*comp_in, 16)
    torch.testing.assert_close(y_c, y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s_c, s, atol=1e-4, rtol=1e-4)
    (y.square().sum() + s.sum()).backward()
    (y_c.square().sum() + s_c.sum()).backward()
    for a, b in zip(comp_in, eager_in):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (the GPU path is optional)")


@cuda
@pytest.mark.parametrize("preset", PRESETS)
def test_cuda_model_matches_cpu(preset):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = tiny_model(preset)
    ids = torch.randint(0, 61, (2, L))
    with torch.no_grad():
        ref = model(ids).logits
        gpu = model.to("cuda")
        out = gpu(ids.cuda()).logits.cpu()
        cache = gpu.new_cache(2)
        step = torch.cat([gpu(ids[:, t : t + 1].cuda(), cache=cache).logits.cpu() for t in range(L)], dim=1)
    torch.testing.assert_close(out, ref, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(step, ref, atol=1e-3, rtol=1e-3)


@cuda
@pytest.mark.skipif(not fla_available(), reason="flash-linear-attention (fla) is not installed")
def test_cuda_fla_ssd_matches_torch_and_sequential():
    torch.backends.cuda.matmul.allow_tf32 = False
    inputs = [torch.randn(2, 200, 4, 32), torch.rand(2, 200, 4) * 0.5, -torch.rand(4) - 0.1, torch.randn(2, 200, 2, 64), torch.randn(2, 200, 2, 64)]
    s0 = torch.randn(2, 4, 32, 64)
    y_ref, s_ref = ssd_sequential(*inputs, initial_state=s0)
    gpu = [t.cuda().requires_grad_() for t in inputs]
    y, s = ssd_chunked(*gpu, 64, s0.cuda(), backend="fla")
    torch.testing.assert_close(y.cpu(), y_ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(s.cpu(), s_ref, atol=2e-3, rtol=2e-3)
    y.square().sum().backward()
    grads = [t.grad.clone() for t in gpu]
    for t in gpu:
        t.grad = None
    y_t, _ = ssd_chunked(*gpu, 64, s0.cuda(), backend="torch")
    y_t.square().sum().backward()
    for a, t in zip(grads, gpu):
        torch.testing.assert_close(a, t.grad, atol=2e-3, rtol=2e-3)
