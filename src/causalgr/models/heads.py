"""Readouts shared by the formulations: the multi-task head and `lfa`'s action pooling."""

from __future__ import annotations

import torch
from torch import nn

from causalgr.models.attention import strict_pooling
from causalgr.models.cache import PoolingCache


class MultiTaskHead(nn.Module):
    """[B, N, in_dim] → [B, N, T] logits, one per task."""

    def __init__(self, in_dim: int, dim: int, num_tasks: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, dim), nn.SiLU(), nn.Dropout(dropout), nn.Linear(dim, num_tasks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ActionPooling(nn.Module):
    """AttnLFA's pooling: p_n = Σ_{j<n} α_nj W_v b(a_j) (+ α_n,null v_null), α from q(h_n)·k(h_j).

    Strictly causal: the action of event n never reaches p_n. The learned null slot gives
    n = 0 a defined softmax and lets the model put weight on "no evidence".
    """

    def __init__(self, dim: int, heads: int, engine: str):
        super().__init__()
        self.heads, self.engine = heads, engine
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.null_key = nn.Parameter(torch.randn(heads, dim // heads) * 0.02)
        self.null_value = nn.Parameter(torch.zeros(heads, dim // heads))

    def forward(self, h: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """h [B, N, D] item states, actions [B, N, D] = b(a) → p [B, N, D]."""
        q, k, v = (split_heads(x, self.heads) for x in (self.query(h), self.key(h), self.value(actions)))
        pooled = strict_pooling(q, k, v, self.null_key, self.null_value, engine=self.engine)
        return self.out(merge_heads(pooled))

    def extend(self, cache: PoolingCache | None, h: torch.Tensor, actions: torch.Tensor) -> PoolingCache:
        """Serving: the keys k(h_j) and values W_v b(a_j) of new events (h, actions [1, M, D])
        appended to those of the cached ones."""
        if cache is not None and h.shape[1] == 0:
            return cache
        k, v = (split_heads(x, self.heads) for x in (self.key(h), self.value(actions)))  # [1, Hp, M, dh]
        return PoolingCache(k, v) if cache is None else PoolingCache(*(torch.cat(p, dim=2) for p in zip(cache, (k, v))))

    def targets(self, h: torch.Tensor, cache: PoolingCache) -> torch.Tensor:
        """Serving: p for K candidates h [1, K, D] after the whole history, which holds no action of
        theirs: every cached action (and the null slot) is visible → [1, K, D]."""
        q = split_heads(self.query(h), self.heads)  # [1, Hp, K, dh]
        pooled = strict_pooling(q, cache.keys, cache.values, self.null_key, self.null_value, after=True, engine=self.engine)
        return self.out(merge_heads(pooled))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    B, L, D = x.shape
    return x.view(B, L, heads, D // heads).transpose(1, 2)  # [B, H, L, dh]


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    B, H, L, dh = x.shape
    return x.transpose(1, 2).reshape(B, L, H * dh)  # [B, L, D]
