"""The softmax backbone: a pre-norm Transformer (docs/design.md §2).

Position and time-gap information are added to the inputs, so the attention itself needs no
bias and stays on the flash/efficient `scaled_dot_product_attention` path. With `mvp=True`
every layer also mixes action values u_j = W_a b(a_j) for j < n. `forward_with_targets` runs
the same layers over `summed`'s history and target tokens under the target-aware mask
(`attention.target_aware_softmax_attention`).
"""

from __future__ import annotations

import torch
from torch import nn

from causalgr.models.attention import softmax_attention, target_aware_softmax_attention
from causalgr.models.config import ModelConfig
from causalgr.models.heads import merge_heads, split_heads
from causalgr.models.timegaps import log_bucket


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, mvp: bool, engine: str):
        super().__init__()
        self.heads, self.engine = heads, engine
        self.norm_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.action_value = nn.Linear(dim, dim) if mvp else None  # W_a of this layer
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, actions: torch.Tensor | None, target_aware: bool = False) -> torch.Tensor:
        """x [B, L, D]; with `target_aware`, L = 2N: history tokens, then target tokens (`summed`)."""
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(self.norm_attn(x)).chunk(3, dim=-1))  # [B, H, L, dh]
        if target_aware:
            attended = target_aware_softmax_attention(q, k, v, engine=self.engine)
        else:
            u = None if self.action_value is None else split_heads(self.action_value(actions), self.heads)
            attended = softmax_attention(q, k, v, u, engine=self.engine)
        x = x + self.dropout(self.proj(merge_heads(attended)))
        return x + self.dropout(self.mlp(self.norm_mlp(x)))


class SoftmaxEncoder(nn.Module):
    """[B, L, D] inputs (+ timestamps, + b(a) for mvp) → [B, L, D] causal states."""

    def __init__(self, config: ModelConfig, max_tokens: int, mvp: bool = False):
        super().__init__()
        self.time_buckets = config.time_buckets
        self.position = nn.Embedding(max_tokens, config.dim)
        self.time_gap = nn.Embedding(config.time_buckets, config.dim)  # gap to the previous token
        nn.init.normal_(self.position.weight, std=0.02)
        nn.init.normal_(self.time_gap.weight, std=0.02)
        self.layers = nn.ModuleList(
            TransformerLayer(config.dim, config.heads, config.dropout, mvp, config.attention) for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, x: torch.Tensor, timestamps: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.where_and_when(timestamps)
        for layer in self.layers:
            x = layer(x, actions)
        return self.norm(x)

    def forward_with_targets(
        self, history: torch.Tensor, targets: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`summed`: history and target tokens [B, N, D] → their states [B, N, D] each. One stack of
        layers over the 2N tokens: history n sees history j ≤ n; target n sees history j < n and itself."""
        where_and_when = self.where_and_when(timestamps)  # both twins of event n: position n, gap to t_{n-1}
        x = torch.cat([history + where_and_when, targets + where_and_when], dim=1)  # [B, 2N, D]
        for layer in self.layers:
            x = layer(x, None, target_aware=True)
        return self.norm(x).chunk(2, dim=1)

    def where_and_when(self, timestamps: torch.Tensor) -> torch.Tensor:
        """Position and time-gap embedding of each token, [B, L, D] from timestamps [B, L]."""
        L = timestamps.shape[1]
        previous = torch.cat([timestamps[:, :1], timestamps[:, :-1]], dim=1)
        gaps = timestamps - previous  # [B, L], 0 at the first token
        positions = self.position(torch.arange(L, device=timestamps.device))  # [L, D]
        return positions + self.time_gap(log_bucket(gaps, self.time_buckets))
