"""b(a): the action embedding every formulation shares (docs/design.md §1)."""

from __future__ import annotations

import torch
from torch import nn


class ActionEncoder(nn.Module):
    """b(a_n) = base + Σ_t a_{n,t}·w_t (+ an embedding of the categorical action value).

    The learned `base` keeps b(a) informative even when no task bit is set (a skip, a 3-star
    rating), so "seen, no action" differs from padding.
    """

    def __init__(self, num_tasks: int, dim: int, num_action_values: int = 0, norm: bool = True):
        super().__init__()
        self.base = nn.Parameter(torch.zeros(dim))
        self.task_vectors = nn.Parameter(torch.randn(num_tasks, dim) * 0.02)  # [T, D]
        self.value_embedding = nn.Embedding(num_action_values, dim) if num_action_values > 0 else None
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, labels: torch.Tensor, action_values: torch.Tensor | None) -> torch.Tensor:
        """labels [B, N, T] in {0, 1}, action_values [B, N] or None → [B, N, D]."""
        out = self.base + labels @ self.task_vectors
        if self.value_embedding is not None and action_values is not None:
            out = out + self.value_embedding(action_values.clamp(0, self.value_embedding.num_embeddings - 1))
        return self.norm(out)
