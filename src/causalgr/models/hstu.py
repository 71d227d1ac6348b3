"""The HSTU backbone: stacked sequential transduction units (docs/design.md §2).

Each layer: U, V, Q, K = split(SiLU(f1(LN(x)))); A = SiLU(QKᵀ/√d + rab) / (n + 1) over j ≤ n;
y = x + f2(LN(A·V) ⊙ U). rab = learned relative-position bias + log-bucketed time-gap bias,
per head. With `mvp=True` every layer also mixes action values u_j = W_a b(a_j) for j < n.
`forward_with_targets` runs the same layers over `summed`'s history and target tokens under
the target-aware mask (`attention.target_aware_pointwise_attention`).

Serving (`extend`, `targets`): the history's per-layer keys and values are kept in an
`EncoderCache`; new tokens continue it, and K target tokens at position L read it. `serve`
does both; a warm request (a few new tokens, then the targets) runs them through each layer
together: one projection and one attention call (`attention.warm_pointwise_attention`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from causalgr.models.attention import (
    pointwise_attention,
    target_aware_pointwise_attention,
    target_pointwise_attention,
    warm_pointwise_attention,
)
from causalgr.models.cache import EncoderCache, LayerCache
from causalgr.models.config import ModelConfig
from causalgr.models.heads import merge_heads, split_heads
from causalgr.models.kernels import BiasTables
from causalgr.models.kernels.bias import weight_memo


WARM_TOKENS = 32  # at most this many new tokens share a pass with the targets; more run blocked (`extend`)


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

    def serving(self, timestamps: torch.Tensor) -> BiasTables:
        """The tables with a `blocks` memo for one serving call (`bias.block_bias`), holding already
        what depends on the weights alone (`bias.weight_memo`: the position + time sums table and
        the position windows), made again only when the weights change. Under
        torch.export or torch.compile no memo (no data pointers to key on, and a block's bounds as
        keys would fix the graph's sizes): each layer makes its own, which the compiler may share."""
        weights = (self.position.weight, self.time.weight)
        if torch.compiler.is_compiling():
            return BiasTables(*weights, timestamps)
        version = tuple((w.data_ptr(), w._version) for w in weights)
        if getattr(self, "_made", (None, None))[0] != version:
            self._made = version, weight_memo(*(w.detach() for w in weights))
        return BiasTables(*weights, timestamps, blocks=dict(self._made[1]))


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
        gate, q, k, v = self.project(x)
        if target_aware:
            attended = target_aware_pointwise_attention(q, k, v, bias, engine=self.engine)
        else:
            attended = pointwise_attention(q, k, v, bias, self.action_values(actions), engine=self.engine)
        return self.output(x, attended, gate)

    def extend(
        self, x: torch.Tensor, bias: BiasTables, cache: LayerCache, actions: torch.Tensor | None
    ) -> tuple[torch.Tensor, LayerCache]:
        """New tokens x [1, M, D] after the cached L: each sees the cached tokens and the new ones
        up to itself (bias over all L + M). Returns their outputs and the cache with them appended."""
        gate, q, k, v = self.project(x)
        cache = cache.append(k, v, self.action_values(actions))
        attended = pointwise_attention(q, cache.keys, cache.values, bias, cache.actions, engine=self.engine)  # [1, H, M, dh]
        return self.output(x, attended, gate), cache

    def targets(self, x: torch.Tensor, bias: BiasTables, cache: LayerCache) -> torch.Tensor:
        """K target tokens x [1, K, D] at position L (bias over the L history tokens and the target
        time): each sees every cached token — mvp: with all its action values — and itself."""
        gate, q, k, v = self.project(x)
        history = cache.values if cache.actions is None else cache.values + cache.actions  # [1, H, L, dh]
        attended = target_pointwise_attention(q, k, v, cache.keys, history, bias, after=True, engine=self.engine)
        return self.output(x, attended, gate)

    def warm(
        self, x: torch.Tensor, bias: BiasTables, cache: LayerCache, actions: torch.Tensor | None, new: int
    ) -> tuple[torch.Tensor, LayerCache]:
        """`extend` of the first `new` tokens of x [1, M + K, D], then `targets` of the K after them,
        in one projection and one attention call. Returns all M + K outputs and the cache with the
        M new tokens appended."""
        gate, q, k, v = self.project(x)
        if new:
            cache = cache.append(k[:, :, :new], v[:, :, :new], self.action_values(actions))
        attended = warm_pointwise_attention(q, k[:, :, new:], v[:, :, new:], cache.keys, cache.values, cache.actions,
                                            bias, new, engine=self.engine)  # [1, H, M + K, dh]
        return self.output(x, attended, gate), cache

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [B, L, D] → gate U [B, L, D] and q, k, v [B, H, L, dh]."""
        gate, v, q, k = F.silu(self.f1(self.norm_in(x))).chunk(4, dim=-1)  # 4 × [B, L, D]
        return (gate, *(split_heads(t, self.heads) for t in (q, k, v)))

    def action_values(self, actions: torch.Tensor | None) -> torch.Tensor | None:
        """mvp's u = W_a b(a), [B, H, L, dh]; None for the other formulations."""
        return None if self.action_value is None else split_heads(self.action_value(actions), self.heads)

    def output(self, x: torch.Tensor, attended: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
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

    def extend(
        self, x: torch.Tensor, timestamps: torch.Tensor, cache: EncoderCache | None = None,
        actions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, EncoderCache]:
        """Serving: M new tokens x [1, M, D] (times [1, M], mvp's b(a) [1, M, D]) after the cached
        ones → their states [1, M, D], exactly `forward`'s at those positions, and the cache with
        them appended. `cache` None starts an empty history."""
        if cache is None:  # not `cache or …`: an EncoderCache of no tokens is falsy (its len)
            cache = EncoderCache.empty(self.layers, x)
        if x.shape[1] == 0:
            return self.norm(x), cache
        times = torch.cat([cache.timestamps, timestamps], dim=1)  # [1, L + M]
        bias = self.bias.serving(times)  # each block's bias made once, for every layer
        layers = []
        for layer, layer_cache in zip(self.layers, cache.layers):
            x, layer_cache = layer.extend(x, bias, layer_cache, actions)
            layers.append(layer_cache)
        return self.norm(x), EncoderCache(tuple(layers), times)

    def serve(
        self, x: torch.Tensor, timestamps: torch.Tensor, cache: EncoderCache | None = None,
        actions: torch.Tensor | None = None, targets: torch.Tensor | None = None,
        timestamp: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, EncoderCache, torch.Tensor | None]:
        """Serving: `extend` by the new tokens x, then — with `targets` [1, K, D] at `timestamp` —
        `targets` after the extended cache: (the new tokens' states [1, M, D], the extended cache,
        the targets' states [1, K, D] or None). With a fast engine and at most WARM_TOKENS new
        tokens, both go through each layer together (`STULayer.warm`); otherwise in turn."""
        M = x.shape[1]
        if self.layers[0].engine == "reference" or targets is None or M > WARM_TOKENS:  # M last: export keeps it symbolic
            h, cache = self.extend(x, timestamps, cache, actions)
            return h, cache, None if targets is None else self.targets(targets, timestamp, cache)
        if cache is None:  # not `cache or …`: an EncoderCache of no tokens is falsy (its len)
            cache = EncoderCache.empty(self.layers, x)
        times = torch.cat([cache.timestamps, timestamps], dim=1) if M else cache.timestamps  # [1, L + M]
        when = torch.as_tensor(timestamp, device=x.device).view(1, 1)
        bias = self.bias.serving(torch.cat([times, when], dim=1))  # [1, L + M + 1]: the targets' time last
        x = torch.cat([x, targets], dim=1)  # [1, M + K, D]
        layers = []
        for layer, layer_cache in zip(self.layers, cache.layers):
            x, layer_cache = layer.warm(x, bias, layer_cache, actions, M)
            layers.append(layer_cache)
        x = self.norm(x)
        return x[:, :M], EncoderCache(tuple(layers), times), x[:, M:]

    def targets(self, x: torch.Tensor, timestamp: int | torch.Tensor, cache: EncoderCache) -> torch.Tensor:
        """Serving: K target tokens x [1, K, D] at position L and time `timestamp` → their states
        [1, K, D]. Each sees the L cached tokens and itself, never another target."""
        when = torch.as_tensor(timestamp, device=x.device).view(1, 1)  # an int, or a 0-d tensor under torch.export
        bias = self.bias.serving(torch.cat([cache.timestamps, when], dim=1))  # [1, L + 1]: the targets' time last
        for layer, layer_cache in zip(self.layers, cache.layers):
            x = layer.targets(x, bias, layer_cache)
        return self.norm(x)

