"""The training loss of docs/design.md §4: mean over loss positions of Σ_t w_t · BCE-with-logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def ranking_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    task_weights: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over the positions where `mask` is True of the task-weighted sum of binary cross-entropies.

    `logits`, `labels` are [B, N, T]; `mask` is [B, N] bool; `task_weights` has T entries (all 1 when
    None). With w_t = 1 this is the sum over tasks of each task's mean log loss, the headline eval
    loss. An all-False mask gives 0 (with a gradient), so an empty batch cannot poison the run.
    """
    if logits.shape != labels.shape:
        raise ValueError(f"logits {list(logits.shape)} and labels {list(labels.shape)} must match")
    if mask.shape != logits.shape[:2]:
        raise ValueError(f"mask must be [B, N] = {list(logits.shape[:2])}, got {list(mask.shape)}")
    bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")  # [B, N, T]
    if task_weights is not None:
        weights = torch.as_tensor(task_weights, dtype=bce.dtype, device=bce.device)
        if weights.shape != (bce.shape[-1],):
            raise ValueError(f"task_weights needs {bce.shape[-1]} entries, got {list(weights.shape)}")
        bce = bce * weights
    per_position = bce.sum(dim=-1)  # [B, N]
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp(min=1.0)
