"""Log-bucketed time gaps, the time signal both backbones use."""

import torch


def log_bucket(gaps: torch.Tensor, buckets: int) -> torch.Tensor:
    """Gaps in seconds (≥ 0) → bucket ids floor(log2(gap + 1)), clipped to [0, buckets - 1]."""
    return torch.log2(gaps.clamp(min=0).float() + 1.0).floor().long().clamp(0, buckets - 1)
