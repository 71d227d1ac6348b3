"""The HSTU backbone: stacked sequential transduction units (docs/design.md §2).

Each layer: U, V, Q, K = split(SiLU(f1(LN(x)))); A = SiLU(QKᵀ/√d + rab) / (n + 1) over j ≤ n;
y = x + f2(LN(A·V) ⊙ U). rab = learned relative-position bias + log-bucketed time-gap bias,
per head. With `mvp=True` every layer also mixes action values u_j = W_a b(a_j) for j < n.
`forward_with_targets` runs the same layers over `summed`'s history and target tokens under
the target-aware mask (`attention.target_aware_pointwise_attention`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from causalgr.models.attention import pointwise_attention, target_aware_pointwise_attention
from causalgr.models.config import ModelConfig
from causalgr.models.heads import merge_heads, split_heads
from causalgr.models.kernels import BiasTables


class RelativeBias(nn.Module):
    """rab[b, h, n, j] = position_bias[h, n − j] + time_bias[h, bucket(t_n − t_j)], for j ≤ n.

    Returned as its small tables plus the timestamps: the reference materialises [B, H, L, L]
    from them, the fast kernels only the block they are working on.
    """

    def __init__(self, max_tokens: int, heads: int, time_buckets: int):
        super().__init__()
        self.position = nn.Embedding(max_tokens, heads)
        self.time = nn.Embedding(time_buckets, heads)
        nn.init.zeros_(self.position.weight)
        nn.init.zeros_(self.time.weight)

    def forward(self, timestamps: torch.Tensor) -> BiasTables:
        return BiasTables(self.position.weight, self.time.weight, timestamps)


class STULayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, mvp: bool, engine: str):
        super().__init__()
        self.heads, self.engine = heads, engine
        self.norm_in = nn.LayerNorm(dim)
        self.f1 = nn.Linear(dim, 4 * dim)
        self.norm_attn = nn.LayerNorm(dim)
        self.f2 = nn.Linear(dim, dim)
        self.action_value = nn.Linear(dim, dim) if mvp else None  # W_a of this layer
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, bias: BiasTables, actions: torch.Tensor | None, target_aware: bool = False
    ) -> torch.Tensor:
        """x [B, L, D]; with `target_aware`, L = 2N: history tokens, then target tokens (`summed`)."""
        gate, v, q, k = F.silu(self.f1(self.norm_in(x))).chunk(4, dim=-1)  # 4 × [B, L, D]
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))  # [B, H, L, dh]
        if target_aware:
            attended = target_aware_pointwise_attention(q, k, v, bias, engine=self.engine)
        else:
            u = None if self.action_value is None else split_heads(self.action_value(actions), self.heads)
            attended = pointwise_attention(q, k, v, bias, u, engine=self.engine)
        return x + self.dropout(self.f2(self.norm_attn(merge_heads(attended)) * gate))


class HSTUEncoder(nn.Module):
    """[B, L, D] inputs (+ timestamps, + b(a) for mvp) → [B, L, D] causal states."""

    def __init__(self, config: ModelConfig, max_tokens: int, mvp: bool = False):
        super().__init__()
        self.bias = RelativeBias(max_tokens, config.heads, config.time_buckets)
        self.layers = nn.ModuleList(
            STULayer(config.dim, config.heads, config.dropout, mvp, config.attention) for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, x: torch.Tensor, timestamps: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        bias = self.bias(timestamps)
        for layer in self.layers:
            x = layer(x, bias, actions)
        return self.norm(x)

    def forward_with_targets(
        self, history: torch.Tensor, targets: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`summed`: history and target tokens [B, N, D] → their states [B, N, D] each. One stack of
        layers over the 2N tokens: history n sees history j ≤ n; target n sees history j < n and itself."""
        x = torch.cat([history, targets], dim=1)  # [B, 2N, D]
        bias = self.bias(timestamps)  # over the N events: the twins of event n share position n and t_n
        for layer in self.layers:
            x = layer(x, bias, None, target_aware=True)
        return self.norm(x).chunk(2, dim=1)
