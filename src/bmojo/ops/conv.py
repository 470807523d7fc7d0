"""Mamba-2's short convolution: causal depthwise conv along the sequence followed by SiLU, in the
(batch, length, channels) layout the projections produce, plus its reference twin (`F.conv1d`).

Shapes: x (b, L, C); weight (C, K) (the Conv1d weight (C, 1, K) squeezed); bias (C,);
past (b, K-1, C): the K-1 inputs before x[:, 0] (zeros at the start of a sequence).
out_t = silu(bias + sum_k weight[:, k] * x_{t-K+1+k}).
seq_idx (b, L) (optional, packed documents): inputs of another document count as zeros; `past` belongs to
the document of x[:, 0].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import compute_dtype


class _CausalConvSiLU(torch.autograd.Function):
    """K shifted multiply-adds over the padded input, streaming along the channels (no transposes);
    saves the padded input and the pre-activation, and writes the input gradient in place.
    `cross` (rows, t, k) (optional, packed documents): the few terms where output t's k-th input lies in another
    document; they are subtracted again (a handful of rows after each document start, not a mask over all)."""

    @staticmethod
    def forward(ctx, full: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor, cross=None) -> torch.Tensor:
        K = weight_t.shape[0]
        L = full.shape[1] - K + 1
        pre = torch.addcmul(bias, full[:, :L], weight_t[0])
        for k in range(1, K):
            pre.addcmul_(full[:, k : k + L], weight_t[k])
        if cross is not None:
            rows, t, k = cross
            pre.index_put_((rows, t), -(full[rows, t + k] * weight_t[k]), accumulate=True)
        ctx.cross = cross
        ctx.save_for_backward(full, weight_t, pre)
        return F.silu(pre)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        full, weight_t, pre = ctx.saved_tensors
        K, L = weight_t.shape[0], pre.shape[1]
        grad_pre = torch.ops.aten.silu_backward(grad, pre)
        grad_full = torch.zeros_like(full)
        for k in range(K):
            grad_full[:, k : k + L].addcmul_(grad_pre, weight_t[k])
        grad_weight_t = torch.stack([(grad_pre * full[:, k : k + L]).sum((0, 1)) for k in range(K)])
        if ctx.cross is not None:
            rows, t, k = ctx.cross
            g = grad_pre[rows, t]  # (n, C)
            grad_full.index_put_((rows, t + k), -(g * weight_t[k]), accumulate=True)
            grad_weight_t.index_add_(0, k, -(g * full[rows, t + k]))
        return grad_full, grad_weight_t, grad_pre.sum((0, 1)), None


def _cross_document_terms(seq_idx: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, t, k) of the conv terms that read another document: output t's input k (at position t - K + 1 + k,
    k < K - 1) lies in another document than t; `past` belongs to the document of x[:, 0]."""
    L = seq_idx.shape[1]
    docs = torch.cat([seq_idx[:, :1].expand(-1, K - 1), seq_idx], dim=1)
    other = torch.stack([docs[:, k : k + L] != seq_idx for k in range(K - 1)], dim=-1)  # (b, L, K-1)
    return other.nonzero(as_tuple=True)


def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, past: torch.Tensor | None = None,
                     seq_idx: torch.Tensor | None = None):
    """Returns (out (b, L, C), the last K-1 inputs (b, K-1, C): the `past` of the next call, in past's dtype).
    Computes in the weight's dtype, or under autocast in the autocast dtype (x comes from the input projection
    in it), like the Linear layers around it: elementwise work on half the bytes, no cast of the activations.
    With `seq_idx`, the terms that would read another document are removed (`_cross_document_terms`)."""
    K = weight.shape[1]
    dtype = compute_dtype(x.device.type, weight.dtype)
    x = x.to(dtype)  # one cast up front rather than one per shifted product
    if past is None:
        full = F.pad(x, (0, 0, K - 1, 0))
    else:
        full = torch.cat([past.to(dtype), x], dim=1)
    weight_t = weight.t().to(dtype).contiguous()
    cross = None if seq_idx is None else _cross_document_terms(seq_idx, K)
    out = _CausalConvSiLU.apply(full, weight_t, bias.to(dtype), cross)
    carry = full[:, x.shape[1] :]
    return out, carry if past is None else carry.to(past.dtype)


def causal_conv_silu_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, past: torch.Tensor | None = None
):
    """Reference twin of `causal_conv_silu`: `F.conv1d` with groups = C over the transposed input."""
    b, L, C = x.shape
    K = weight.shape[1]
    past = x.new_zeros(b, K - 1, C) if past is None else past.to(x.dtype)
    full = torch.cat([past, x], dim=1)
    out = F.silu(F.conv1d(full.transpose(1, 2), weight[:, None, :], bias, groups=C)).transpose(1, 2)
    return out, full[:, L:]
