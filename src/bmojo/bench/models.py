"""Model configurations at matched parameter count, and their analytic FLOPs per token.

Matching: every preset uses the same width (hidden size, heads, SSM sizes, window and memory sizes
are the presets' defaults), and the number of layers is chosen per preset so that its non-embedding
parameter count is the closest to that of the anchor (`bmojo` with `anchor_layers` layers). With
d = 256 this gives transformer/swa 6 layers, mamba 12, hybrid 6, bmojo_f/bmojo 4 (all within 10%).

FLOPs ("model FLOPs", for model-FLOP utilization): per token, forward, counting a multiply-add as 2:
  matmuls: 2 x the weights applied to the token (every Linear, LM head included; B'MOJO's fading k/v
           projections are applied to m_f SSM outputs per chunk of w, so they count m_f / w times, or to every
           output with a per-query fading span);
  attention: 4 x (query-key width) x (keys the token attends to): L/2 on average for causal, about w for
           sliding window, w + m_f + m_e (+ s, the fading span) for B'MOJO;
  SSD (chunked algorithm, chunk Q): 2 Q (g n + h p) within the chunk + 4 h p n for the chunk states, plus
           2 K conv_dim for the short convolution.
A training step is 3x the forward. Elementwise work (norms, exp, softmax) is not counted.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.bmojo import BMojoMixer
from ..models.configuration import BMojoConfig
from ..models.modeling import BMojoBlock

MAX_LAYERS = 48


def _block_params(config: BMojoConfig, i: int) -> int:
    """Parameters of layer i of a model built from `config` (on the meta device)."""
    with torch.device("meta"):
        return sum(p.numel() for p in BMojoBlock(config, i).parameters())


def non_embedding_params(config: BMojoConfig) -> int:
    """Parameters of all blocks and the final norm (the embedding, tied with the LM head, is excluded)."""
    return sum(_block_params(config, i) for i in range(config.num_hidden_layers)) + config.hidden_size


def matched_configs(presets: list[str], anchor_layers: int = 4, **width) -> dict[str, BMojoConfig]:
    """One config per preset, its layer count chosen to match the parameters of `bmojo` x `anchor_layers`."""
    target = non_embedding_params(BMojoConfig.from_preset("bmojo", num_hidden_layers=anchor_layers, **width))
    out = {}
    for name in presets:
        best = None
        for n in range(1, MAX_LAYERS + 1):
            cfg = BMojoConfig.from_preset(name, num_hidden_layers=n, **width)
            err = abs(non_embedding_params(cfg) - target)
            if best is None or err < best[0]:
                best = (err, cfg)
            elif non_embedding_params(cfg) > target:
                break
        out[name] = best[1]
    return out


def _linear_flops(module: nn.Module) -> int:
    """Forward FLOPs per token of a module's Linear layers (see the module docstring)."""
    flops = 0
    for m in module.modules():
        if isinstance(m, nn.Linear):
            flops += 2 * m.in_features * m.out_features
        if isinstance(m, BMojoMixer):  # fading k/v projections: the m_f outputs read per chunk, or every output
            per_token = 2 * 2 * m.attn.k_proj.in_features * m.attn.k_proj.out_features  # with a per-query span
            flops += per_token * (1 if m.fading_span else m.num_fading / m.window) - (0 if m.tied else per_token)
    return flops


def forward_flops_per_token(config: BMojoConfig, seq_len: int) -> float:
    """Analytic forward FLOPs per token (see the module docstring) at sequence length `seq_len`."""
    c = config
    with torch.device("meta"):
        linear = sum(_linear_flops(BMojoBlock(c, i)) for i in range(c.num_hidden_layers))
    linear += 2 * c.hidden_size * c.vocab_size  # LM head
    head_dim = c.hidden_size // c.num_attention_heads
    qk_width = c.num_attention_heads * head_dim
    w = c.window_size
    avg_window = sum(min(t + 1, w) for t in range(seq_len)) / seq_len if seq_len <= 65536 else w
    inner = c.ssm_expand * c.hidden_size
    heads = inner // c.ssm_head_dim
    ssd = (2 * c.ssm_chunk_size * (c.ssm_n_groups * c.ssm_state_size + heads * c.ssm_head_dim)
           + 4 * heads * c.ssm_head_dim * c.ssm_state_size
           + 2 * c.ssm_conv_kernel * (inner + 2 * c.ssm_n_groups * c.ssm_state_size))
    mixing = 0.0
    for i, kind in enumerate(c.layer_pattern):
        if kind == "attn":
            mixing += 4 * qk_width * (seq_len + 1) / 2
        elif kind == "swa":
            mixing += 4 * qk_width * avg_window
        elif kind == "ssm":
            mixing += ssd
        else:  # bmojo_f / bmojo
            memory = c.num_fading_tokens + c.eidetic_tokens(i) + c.fading_span
            mixing += ssd + 4 * qk_width * (avg_window + memory)
    return linear + mixing


def train_flops_per_token(config: BMojoConfig, seq_len: int) -> float:
    """Analytic training FLOPs per token: 3 x the forward."""
    return 3 * forward_flops_per_token(config, seq_len)


__all__ = ["matched_configs", "non_embedding_params", "forward_flops_per_token", "train_flops_per_token"]
