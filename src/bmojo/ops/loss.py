"""The one cross-entropy of the project: token-level, on pre-aligned targets, in fp32.

Two conventions name the targets of a sequence `input_ids` (b, T):
- `targets` (nanoGPT's word, what `bmojo.tasks` returns): already aligned, `targets[:, t]` is the token
  position t must predict; `token_cross_entropy(logits, targets)`.
- `labels` (Hugging Face's convention, `BMojoForCausalLM.forward(labels=...)`): unshifted, usually the
  inputs themselves; position t predicts `labels[:, t + 1]`; `next_token_cross_entropy(logits, labels)`.
Both ignore positions whose target is IGNORE_INDEX (-100).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """logits (b, T, V), targets (b, T) aligned with them; cross-entropy in fp32, IGNORE_INDEX skipped.
    reduction: "mean" (over scored positions) or "sum"."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction=reduction)


def next_token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """HF `labels`: logits (b, T, V) at positions 0..T-1 predict labels[:, 1:] (shifted here)."""
    return token_cross_entropy(logits[:, :-1], labels[:, 1:], reduction)
