"""Mamba-2 state-space duality (SSD) scan: chunked parallel form, one-step recurrence, and a
sequential reference twin.

Shapes (all functions):
    x:  (b, L, h, p)   inputs per head          dt: (b, L, h)   step sizes (already softplus-ed)
    A:  (h,)           negative decay rates     B, C: (b, L, g, n) input/output projections,
                                                 head i uses group i // (h // g)
    state: (b, h, p, n)                         seq_idx: (b, L) document index per token (optional)
The recurrence, per head:  S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T,   y_t = S_t C_t.
With `seq_idx` (packed documents) the state restarts from zero at every token whose document index differs
from the previous token's; `initial_state` belongs to the document of x[:, 0].
(The D skip connection is applied by the caller.) Computation runs in fp32; under autocast the matmuls
and their operands are in the autocast dtype (see `ssd_chunked`).

On CUDA with flash-linear-attention installed (optional), `ssd_chunked` uses its Triton chunked kernel
(`ssd_chunked_fla`); the PyTorch code here stays the reference and the CPU path. The backend in use is logged
once per device type (logger "bmojo.ops.ssd"); `auto` warns when it falls back on CUDA.
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch
import torch.nn.functional as F

from . import compute_dtype


def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(..., g, n) -> (..., h, n) by repeating each group for its h // g heads."""
    return t.repeat_interleave(num_heads // t.shape[-2], dim=-2)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
    backend: str = "auto",
    seq_idx: torch.Tensor | None = None,
    final_state: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked SSD: quadratic (attention-like) inside chunks of `chunk_size`, a linear scan over
    chunk states between them. Returns (y (b, L, h, p), final_state (b, h, p, n), or None when `final_state` is
    False). A sequence of one chunk (L <= chunk_size) from no initial state whose final state is not asked for is the
    quadratic part alone (steps 2-4 below would add exact zeros): the training forward of small models.

    `backend`: "torch" (this code, any device), "fla" (the Triton kernel of flash-linear-attention, CUDA
    only, see `ssd_chunked_fla`), or "auto": fla for CUDA tensors when it is installed, else torch. Packed
    documents (`seq_idx`) always run here: every term that would cross a document boundary is masked (pairs
    inside a chunk, a chunk's contribution to the carried state, the carried state itself).

    Heads are kept as (g groups, r = h // g heads per group), so B and C are never repeated per head:
    C B^T is formed once per group, and the state matmuls batch a group's r heads together.
    The log decays (cumsum, exp) and the scan over chunk states are fp32. The matmul operands (x dt, B, C,
    the decayed scores, the entering states) are in the autocast dtype under autocast (else fp32) and are
    produced directly in it, so no large tensor is cast twice; y comes back in x's dtype."""
    if seq_idx is None and select_backend(backend, x.device.type) == "fla":
        y, state = ssd_chunked_fla(x, dt, A, B, C, initial_state)
        return y, state if final_state else None
    b, L, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g
    in_dtype = x.dtype
    cd = compute_dtype(x.device.type, torch.float32)  # the matmul operands' dtype
    dt = dt.float()
    # matmul operands are made once, directly in the matmul dtype (no fp32 copy to cast again)
    xdt = x.to(cd) * dt.to(cd)[..., None]  # (b, L, h, p)
    B, C = B.to(cd), C.to(cd)
    Q = chunk_size
    pad = (-L) % Q
    if pad:  # dt = 0 on padding: no decay and no input, so the final state is unaffected
        xdt, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xdt, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    nc = (L + pad) // Q
    docs = None if seq_idx is None else _chunk_documents(seq_idx, Q, pad)
    xdt = xdt.view(b, nc, Q, g, r, p)
    B, C = B.view(b, nc, Q, g, n), C.view(b, nc, Q, g, n)
    # log decay from the chunk start, in two layouts (contiguous, so elementwise ops stream through memory)
    cum_t = torch.cumsum((dt * A.float()).view(b, nc, Q, g, r), dim=2)  # (b, nc, Q, g, r)
    cum = cum_t.permute(0, 1, 3, 4, 2).contiguous()  # (b, nc, g, r, Q)

    # 1. within chunks: y_l += sum_{s<=l} (C_l . B_s) exp(cum_l - cum_s) xdt_s, per head, in the head-major
    #    layout (b, nc, g, r, Q, p) so that every per-head matmul is a contiguous batch
    CB = torch.einsum("bclgn,bcsgn->bcgls", C, B)  # (b, nc, g, Q, Q)
    same_doc = None if docs is None else docs["pairs"]
    y = _IntraChunk.apply(cum, CB, xdt.permute(0, 1, 3, 4, 2, 5).contiguous(), same_doc).permute(0, 1, 4, 2, 3, 5)
    if nc == 1 and initial_state is None and not final_state:
        return y.reshape(b, Q, h, p)[:, :L].to(in_dtype), None

    # 2. state contributed by each chunk, taken at its end: sum_l exp(cum_end - cum_l) xdt_l B_l^T
    to_end = torch.exp(cum_t[:, :, -1:] - cum_t)  # (b, nc, Q, g, r)
    if docs is not None:  # only the chunk's last document reaches its end state
        to_end = to_end * docs["reaches_end"][..., None, None]
    to_end = to_end.to(cd)
    chunk_states = torch.einsum("bclgrp,bclgn->bcgrpn", xdt * to_end[..., None], B)

    # 3. scan over chunks (L / Q small steps, fp32) for the state entering each chunk. (A two-level scan, a
    #    (K x K) decay matmul inside groups of K ~ sqrt(nc) chunks and a loop of nc / K steps, measured 15-20% slower.)
    chunk_decay = torch.exp(cum[..., -1])  # (b, nc, g, r)
    if docs is not None:  # a document that starts inside chunk c does not carry the state entering it
        chunk_decay = chunk_decay * docs["carries"][..., None, None]
    if initial_state is None:
        state = x.new_zeros(b, g, r, p, n, dtype=torch.float32)
    else:
        state = initial_state.float().view(b, g, r, p, n)
    entering, state = _ChunkScan.apply(chunk_states, chunk_decay, state)  # (b, nc, g, r, p, n) in cd

    # 4. contribution of the entering state to every position of the chunk: exp(cum_l) C_l S
    y_off = torch.einsum("bclgn,bcgrpn->bclgrp", C, entering)
    from_start = torch.exp(cum_t)  # (b, nc, Q, g, r)
    if docs is not None:  # the entering state reaches only the tokens of the document it belongs to
        from_start = from_start * docs["continues"][..., None, None]
    y = y + y_off * from_start.to(cd)[..., None]
    y = y.reshape(b, nc * Q, h, p)[:, :L]
    return y.to(in_dtype), state.reshape(b, h, p, n) if final_state else None


def _chunk_documents(seq_idx: torch.Tensor, Q: int, pad: int) -> dict[str, torch.Tensor]:
    """Document masks of the chunked scan, from seq_idx (b, L) padded to nc chunks of Q:
    pairs (b, nc, Q, Q): tokens l, s of a chunk in the same document; reaches_end (b, nc, Q): token l is in the
    document of its chunk's last token; continues (b, nc, Q): token l is in the document of the token before
    its chunk (x[:, 0]'s for chunk 0: the initial state's); carries (b, nc): the chunk's last token is."""
    seg = F.pad(seq_idx, (0, pad), mode="replicate") if pad else seq_idx  # padding joins the last document
    seg = seg.view(seg.shape[0], -1, Q)
    before = torch.cat([seg[:, :1, 0], seg[:, :-1, -1]], dim=1)  # (b, nc): document of the token before chunk c
    continues = seg == before[..., None]
    return {"pairs": seg[..., :, None] == seg[..., None, :], "reaches_end": seg == seg[..., -1:],
            "continues": continues, "carries": continues[..., -1]}


class _IntraChunk(torch.autograd.Function):
    """The quadratic part of `ssd_chunked`, y = (exp(segsum(cum)) * CB) @ xdt with the decay masked to s <= l,
    with a hand-written backward: the decay is built in place, decay and scores are saved once, and their
    gradients need no negated copy (d cum = row sums - column sums of d scores * scores).
    cum: (b, nc, g, r, Q) fp32; CB: (b, nc, g, Q, Q) [l, s] = C_l . B_s; xdt: (b, nc, g, r, Q, p).
    CB and xdt are in the matmul dtype (bf16 under autocast, else fp32): the decay is computed in fp32 and
    rounded to it once, so that the scores, the saved tensors and all matmuls are in it; y comes out in it.
    same_doc (b, nc, Q, Q) or None: pairs in different documents are masked like s > l."""

    @staticmethod
    def forward(ctx, cum, CB, xdt, same_doc=None):
        Q = cum.shape[-1]
        decay = cum[..., :, None] - cum[..., None, :]  # (b, nc, g, r, Q, Q), [l, s] = cum_l - cum_s
        masked = torch.ones(Q, Q, dtype=torch.bool, device=cum.device).triu(1)
        if same_doc is not None:
            masked = masked | ~same_doc[:, :, None, None]
        decay.masked_fill_(masked, float("-inf")).exp_()
        decay = decay.to(CB.dtype)
        scores = decay * CB[:, :, :, None]
        ctx.save_for_backward(decay, scores, xdt)
        return torch.matmul(scores, xdt)

    @staticmethod
    def backward(ctx, dy):
        decay, scores, xdt = ctx.saved_tensors
        dy = dy.contiguous()  # in xdt's dtype, like the output
        d_scores = torch.matmul(dy, xdt.transpose(-1, -2))
        d_xdt = torch.matmul(scores.transpose(-1, -2), dy)
        d_CB = (d_scores * decay).sum(3)
        d_seg = d_scores.mul_(scores)
        return d_seg.sum(-1).float() - d_seg.sum(-2).float(), d_CB, d_xdt, None


class _ChunkScan(torch.autograd.Function):
    """The scan over chunks: state_{c+1} = chunk_states[c] + chunk_decay[c] * state_c from state_0 = initial.
    Returns (entering (b, nc, g, r, p, n): state_c for every chunk, in chunk_states' dtype; final state, fp32).
    The state is carried in fp32. Forward and backward are one fused multiply-add per chunk, written straight
    into a preallocated (b, nc + 1, ...) tensor (no stack of nc pieces, no autograd node per step); dtype casts
    are done in bulk.
    chunk_states: (b, nc, g, r, p, n); chunk_decay: (b, nc, g, r) fp32; initial: (b, g, r, p, n) fp32."""

    @staticmethod
    def forward(ctx, chunk_states, chunk_decay, initial):
        inputs, decay = chunk_states.float(), chunk_decay[..., None, None]
        states = torch.empty(inputs.shape[0], inputs.shape[1] + 1, *inputs.shape[2:], device=inputs.device)
        states[:, 0] = initial
        for c in range(inputs.shape[1]):
            torch.addcmul(inputs[:, c], states[:, c], decay[:, c], out=states[:, c + 1])
        entering = states[:, :-1].to(chunk_states.dtype)
        ctx.save_for_backward(chunk_decay, entering)
        return entering, states[:, -1]

    @staticmethod
    def backward(ctx, d_entering, d_final):
        # d state_c = d entering_c + decay_c * d state_{c+1};  d chunk_states_c = d state_{c+1}
        chunk_decay, entering = ctx.saved_tensors
        decay = chunk_decay[..., None, None]
        b, nc = entering.shape[:2]
        grads = torch.zeros(b, nc + 1, *entering.shape[2:], device=entering.device)  # d state_0 .. d state_nc
        if d_final is not None:
            grads[:, -1] = d_final
        d_entering = torch.zeros_like(grads[:, :-1]) if d_entering is None else d_entering.float()
        for c in reversed(range(nc)):
            torch.addcmul(d_entering[:, c], grads[:, c + 1], decay[:, c], out=grads[:, c])
        d_inputs = grads[:, 1:]
        d_decay = (d_inputs * entering).sum((-1, -2))
        return d_inputs.to(entering.dtype), d_decay, grads[:, 0]


BACKENDS = ("auto", "torch", "fla")


@functools.cache
def fla_import_error() -> str | None:
    """None if flash-linear-attention's `chunk_simple_gla` (Triton, CUDA) imports; else why it does not."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla  # noqa: F401
    except Exception as err:  # ImportError, or Triton failing to initialise without a GPU
        return f"{type(err).__name__}: {err}"
    return None


def fla_available() -> bool:
    """Whether the fla backend can be used."""
    return fla_import_error() is None


def select_backend(backend: str, device_type: str) -> str:
    """The SSD backend `ssd_chunked` runs for `backend` on `device_type`: "fla" that cannot load raises with the
    import error; "auto" takes fla on CUDA when it loads, else torch, with a warning when a CUDA run falls back.
    Eager calls log the choice once per (backend, device type); under torch.compile nothing is logged."""
    if backend not in BACKENDS:
        raise ValueError(f"ssd_chunked backend must be one of {BACKENDS}, got {backend!r}")
    if torch.compiler.is_compiling():
        return _choose_backend(backend, device_type)
    return _choose_and_log_backend(backend, device_type)


def _choose_backend(backend: str, device_type: str) -> str:
    if backend == "auto":
        return "fla" if device_type == "cuda" and fla_import_error() is None else "torch"
    if backend == "fla" and fla_import_error() is not None:
        raise RuntimeError(f"ssd_chunked(backend='fla') needs flash-linear-attention on CUDA "
                           f"(pip install 'bmojo[gpu]'); importing it failed: {fla_import_error()}")
    return backend


@functools.cache
def _choose_and_log_backend(backend: str, device_type: str) -> str:
    chosen = _choose_backend(backend, device_type)
    if backend == "auto" and device_type == "cuda" and chosen == "torch":
        warnings.warn(f"SSD on CUDA falls back to the PyTorch reference (slower): flash-linear-attention is not "
                      f"usable ({fla_import_error()}); pip install 'bmojo[gpu]'", stacklevel=4)
    logging.getLogger(__name__).info("SSD backend for %s tensors: %s (requested %r)", device_type, chosen, backend)
    return chosen


def ssd_chunked_fla(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD through flash-linear-attention's chunked simple-GLA kernel (CUDA; optional dependency `fla`).

    Simple GLA is S_t = exp(g_t) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t with a scalar gate per head, so the SSD
    is q = C, k = B (per head), v = dt x, g = dt A, scale = 1; its state (K = n, V = p) is ours transposed.
    Same shapes and results as `ssd_chunked` (its reference twin, tested against it on CUDA)."""
    select_backend("fla", x.device.type)  # raises with the import error when fla cannot load
    from fla.ops.simple_gla import chunk_simple_gla

    h = x.shape[2]
    Bh, Ch = _heads(B, h), _heads(C, h)
    v = x * dt[..., None].to(x.dtype)
    g = dt.float() * A.float()  # log decay per step
    s0 = None if initial_state is None else initial_state.float().transpose(-1, -2).contiguous()
    y, state = chunk_simple_gla(q=Ch.contiguous(), k=Bh.contiguous(), v=v.contiguous(), g=g.contiguous(), scale=1.0,
                                initial_state=s0, output_final_state=True)
    return y.to(x.dtype), state.float().transpose(-1, -2)


def ssd_step(
    state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    restart: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrence step. x: (b, h, p), dt: (b, h), B, C: (b, g, n), state: (b, h, p, n); restart (b,) bool:
    rows whose token starts a new document (their state is dropped first). Returns (y (b, h, p), new_state)."""
    h = x.shape[1]
    xf, dtf = x.float(), dt.float()
    Bh, Ch = _heads(B.float(), h), _heads(C.float(), h)
    decay = torch.exp(dtf * A.float())[..., None, None]
    if restart is not None:
        decay = decay.masked_fill(restart[:, None, None, None], 0.0)
    state = state.float() * decay + (xf * dtf[..., None])[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, Ch)
    return y.to(x.dtype), state


def ssd_sequential(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference twin of `ssd_chunked`: the plain per-token recurrence (slow; tests and benchmarks)."""
    b, L, h, p = x.shape
    state = x.new_zeros(b, h, p, B.shape[-1], dtype=torch.float32) if initial_state is None else initial_state
    ys = []
    for t in range(L):
        restart = None if seq_idx is None or t == 0 else seq_idx[:, t] != seq_idx[:, t - 1]
        y, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], restart)
        ys.append(y)
    return torch.stack(ys, dim=1), state
