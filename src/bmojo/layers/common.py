"""Small building blocks: RMSNorm, gated RMSNorm (Mamba-2), SwiGLU MLP, rotary position embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import compute_dtype


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight, computed in fp32; returned in x's dtype, or under autocast in the autocast
    dtype (every consumer is a matmul: one cast here instead of one per projection). x: (..., d)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return y.to(compute_dtype(x.device.type, x.dtype))


class GatedRMSNorm(nn.Module):
    """Mamba-2's norm: RMSNorm(x * silu(z)) over groups of `group_size` channels, then the per-channel weight.
    In x's dtype, or under autocast in the autocast dtype (F.rms_norm takes its statistics in fp32 either way):
    its inputs come from bf16 matmuls and its output goes to one, so this halves the bytes it moves."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size = group_size
        self.eps = eps

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x.device.type, x.dtype)
        gated = (x.to(dtype) * F.silu(z.to(dtype))).unflatten(-1, (-1, self.group_size))
        return F.rms_norm(gated, (self.group_size,), eps=self.eps).flatten(-2) * self.weight.to(dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)). x: (..., d) -> (..., d)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope_inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """RoPE's (head_dim / 2,) rotation frequencies theta^(-2i / head_dim), fp32."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


class RotaryEmbedding(nn.Module):
    """RoPE in the rotate-half convention (as HF Llama/Mistral). Positions are absolute token indices."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        self.register_buffer("inv_freq", rope_inverse_frequencies(head_dim, theta), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (b, H, T, hd); positions: (T,) or per row (b, T), long. Returns x rotated by its positions."""
        return self.rotate(x, positions[:, None] if positions.dim() == 2 else positions)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (..., hd) rotated by `positions` (long, broadcastable to x.shape[:-1]). Rotations add: rotating a key
        already rotated by p by d more gives the key rotated by p + d (to rounding)."""
        angles = positions.float()[..., None] * self.inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin
