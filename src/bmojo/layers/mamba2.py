"""The Mamba-2 (SSD) mixer: fading memory. Parameter names match `transformers`' Mamba2Mixer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.conv import causal_conv_silu
from ..ops.ssd import ssd_chunked, ssd_step
from .common import GatedRMSNorm
from .documents import Documents, copy_into


@dataclass
class SSMState:
    """Decoding state of one Mamba-2 mixer: conv (b, K-1, conv_dim) last conv inputs; ssm (b, h, p, n) fp32."""

    conv: torch.Tensor
    ssm: torch.Tensor


class Mamba2Mixer(nn.Module):
    """in_proj -> (z, xBC, dt); causal depthwise conv + SiLU over xBC; SSD scan per head with decay
    exp(dt A); y + D x; gated RMSNorm with z; out_proj. u: (b, L, d) -> (b, L, d)."""

    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.inner = config.ssm_expand * d
        self.head_dim = config.ssm_head_dim
        self.num_heads = self.inner // self.head_dim
        self.n_groups = config.ssm_n_groups
        self.state_size = config.ssm_state_size
        self.chunk_size = config.ssm_chunk_size
        self.conv_kernel = config.ssm_conv_kernel
        self.conv_dim = self.inner + 2 * self.n_groups * self.state_size
        self.dt_range = (config.ssm_dt_min, config.ssm_dt_max)
        self.in_proj = nn.Linear(d, self.inner + self.conv_dim + self.num_heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.conv_kernel, groups=self.conv_dim, bias=True)
        self.dt_bias = nn.Parameter(torch.zeros(self.num_heads))
        self.A_log = nn.Parameter(torch.zeros(self.num_heads))
        self.D = nn.Parameter(torch.ones(self.num_heads))
        self.norm = GatedRMSNorm(self.inner, self.inner // self.n_groups, eps=config.rms_norm_eps)
        self.out_proj = nn.Linear(self.inner, d, bias=False)

    def init_state(self, batch_size: int, device, dtype) -> SSMState:
        return SSMState(
            conv=torch.zeros(batch_size, self.conv_kernel - 1, self.conv_dim, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.num_heads, self.head_dim, self.state_size, device=device,
                            dtype=torch.float32),
        )

    def static_step(self, u: torch.Tensor, state: SSMState, pos: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """The one-token recurrence with `state` updated in place (the static decode step, bmojo.models.static).
        u: (b, 1, d) -> (b, 1, d); pos and count are part of the contract, unused."""
        y, new = self(u, state)
        copy_into(state, new)
        return y

    def forward(self, u: torch.Tensor, state: SSMState | None = None, start: int = 0,
                docs: Documents | None = None) -> tuple[torch.Tensor, SSMState | None]:
        """u: (b, L, d). With `state`, continues from it and returns the state after the last token
        (L == 1 uses the one-step recurrence); without, returns (y, None). `start` (the position of u[:, 0])
        is part of the mixer contract; the SSM does not depend on it. With `docs`, the conv and the scan
        restart at every document boundary inside u (the state belongs to u[:, 0]'s document)."""
        L = u.shape[1]
        seq_idx = None if docs is None else docs.seq_idx
        z, xBC, dt = self.in_proj(u).split([self.inner, self.conv_dim, self.num_heads], dim=-1)
        xBC, conv_state = causal_conv_silu(xBC, self.conv1d.weight[:, 0], self.conv1d.bias,
                                           state.conv if state is not None else None, seq_idx)
        gn = self.n_groups * self.state_size
        x, B, C = xBC.split([self.inner, gn, gn], dim=-1)
        x = x.unflatten(-1, (self.num_heads, self.head_dim))
        B = B.unflatten(-1, (self.n_groups, self.state_size))
        C = C.unflatten(-1, (self.n_groups, self.state_size))
        dt = F.softplus(dt.float() + self.dt_bias.float())
        A = -torch.exp(self.A_log.float())
        if state is not None and L == 1:
            y, ssm = ssd_step(state.ssm, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
            y = y[:, None]
        else:
            y, ssm = ssd_chunked(x, dt, A, B, C, self.chunk_size, state.ssm if state is not None else None,
                                 seq_idx=seq_idx, final_state=state is not None)
        y = y + x * self.D.to(y.dtype)[:, None]
        y = self.norm(y.flatten(-2), z)
        new_state = None
        if state is not None:
            new_state = SSMState(conv=conv_state, ssm=ssm)
        return self.out_proj(y), new_state
