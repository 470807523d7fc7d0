"""Pure tensor functions (each with a reference twin where it has a fast form), below `bmojo.layers`."""

import torch


def compute_dtype(device_type: str, default: torch.dtype) -> torch.dtype:
    """The dtype a bandwidth-bound op should compute in: the autocast dtype while autocast is on for
    `device_type` (its inputs come from matmuls in that dtype), else `default`."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else default
