"""The `Batch`: padded user histories, the one type every model reads (docs/design.md §5)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Batch:
    """B padded user histories of up to N events, T tasks.

    Position n of row b is event n of that user's time-ordered history; positions at or beyond
    `lengths[b]` are padding (item 0). `labels` are the actions `a_n`; models read them only at
    positions < n when predicting position n (the causal invariant).
    """

    items: torch.Tensor  # [B, N] long, 0 = padding
    labels: torch.Tensor  # [B, N, T] float in {0, 1}
    action_values: torch.Tensor | None  # [B, N] long (e.g. rating), 0 = none
    timestamps: torch.Tensor  # [B, N] long, seconds
    lengths: torch.Tensor  # [B] long
    # Filled by the data loader, ignored by models:
    loss_mask: torch.Tensor | None = None  # [B, N] bool, positions that carry loss / are evaluated
    users: torch.Tensor | None = None  # [B] long, dense user ids (for GAUC)
    true_probs: torch.Tensor | None = None  # [B, N, T] float, synthetic data only

    def __post_init__(self) -> None:
        B, N = self.items.shape
        if self.labels.dim() != 3 or self.labels.shape[:2] != (B, N):
            raise ValueError(f"labels must be [B, N, T] = [{B}, {N}, T], got {list(self.labels.shape)}")
        for name in ("timestamps", "action_values", "loss_mask", "true_probs"):
            value = getattr(self, name)
            if value is not None and value.shape[:2] != (B, N):
                raise ValueError(f"{name} must start with [B, N] = [{B}, {N}], got {list(value.shape)}")
        if self.lengths.shape != (B,):
            raise ValueError(f"lengths must be [B] = [{B}], got {list(self.lengths.shape)}")

    @property
    def valid_mask(self) -> torch.Tensor:
        """[B, N] bool: True at real (non-padding) positions."""
        N = self.items.shape[1]
        return torch.arange(N, device=self.items.device)[None, :] < self.lengths[:, None]

    def to(self, device: torch.device | str) -> "Batch":
        moved = {
            f.name: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return replace(self, **moved)
