"""The softmax backbone: a pre-norm Transformer (docs/design.md §2).

Position and time-gap information are added to the inputs, so the attention itself needs no
bias and stays on the flash/efficient `scaled_dot_product_attention` path. With `mvp=True`
every layer also mixes action values u_j = W_a b(a_j) for j < n. `forward_with_targets` runs
the same layers over `summed`'s history and target tokens under the target-aware mask
(`attention.target_aware_softmax_attention`).

Serving (`extend`, `targets`, and `serve`, which runs both through each layer together): the
history's per-layer keys and values are kept in an `EncoderCache`; new tokens continue it, and
K target tokens at position L read it.
"""

from __future__ import annotations

import torch
from torch import nn

from causalgr.models.attention import softmax_attention, target_aware_softmax_attention, target_softmax_attention
from causalgr.models.cache import EncoderCache, LayerCache
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
        q, k, v = self.project(x)
        if target_aware:
            attended = target_aware_softmax_attention(q, k, v, engine=self.engine)
        else:
            attended = softmax_attention(q, k, v, self.action_values(actions), engine=self.engine)
        return self.output(x, attended)

    def extend(self, x: torch.Tensor, cache: LayerCache, actions: torch.Tensor | None) -> tuple[torch.Tensor, LayerCache]:
        """New tokens x [1, M, D] after the cached L: each sees the cached tokens and the new ones
        up to itself. Returns their outputs and the cache with them appended."""
        q, k, v = self.project(x)
        cache = cache.append(k, v, self.action_values(actions))
        attended = softmax_attention(q, cache.keys, cache.values, cache.actions, engine=self.engine)  # [1, H, M, dh]
        return self.output(x, attended), cache

    def targets(self, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """K target tokens x [1, K, D] at position L: each sees every cached token — mvp: with all
        its action values — and itself."""
        q, k, v = self.project(x)
        history = cache.values if cache.actions is None else cache.values + cache.actions  # [1, H, L, dh]
        return self.output(x, target_softmax_attention(q, k, v, cache.keys, history, after=True, engine=self.engine))

    def warm(
        self, x: torch.Tensor, cache: LayerCache, actions: torch.Tensor | None, new: int
    ) -> tuple[torch.Tensor, LayerCache]:
        """`extend` of the first `new` tokens of x [1, M + K, D], then `targets` of the K after them,
        with one projection and one output pass for all M + K. Returns all M + K outputs and the
        cache with the M new tokens appended."""
        q, k, v = self.project(x)
        if new:
            cache = cache.append(k[:, :, :new], v[:, :, :new], self.action_values(actions))
        history = cache.values if cache.actions is None else cache.values + cache.actions  # [1, H, L + M, dh]
        attended = target_softmax_attention(q[:, :, new:], k[:, :, new:], v[:, :, new:], cache.keys, history,
                                            after=True, engine=self.engine)  # [1, H, K, dh]
        if new:
            continued = softmax_attention(q[:, :, :new], cache.keys, cache.values, cache.actions, engine=self.engine)
            attended = torch.cat([continued, attended], dim=2)  # [1, H, M + K, dh]
        return self.output(x, attended), cache

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x [B, L, D] → q, k, v [B, H, L, dh]."""
        return tuple(split_heads(t, self.heads) for t in self.qkv(self.norm_attn(x)).chunk(3, dim=-1))

    def action_values(self, actions: torch.Tensor | None) -> torch.Tensor | None:
        """mvp's u = W_a b(a), [B, H, L, dh]; None for the other formulations."""
        return None if self.action_value is None else split_heads(self.action_value(actions), self.heads)

    def output(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
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
        x = x + self.where_and_when(timestamps, cache.timestamps)
        layers = []
        for layer, layer_cache in zip(self.layers, cache.layers):
            x, layer_cache = layer.extend(x, layer_cache, actions)
            layers.append(layer_cache)
        return self.norm(x), EncoderCache(tuple(layers), torch.cat([cache.timestamps, timestamps], dim=1))

    def serve(
        self, x: torch.Tensor, timestamps: torch.Tensor, cache: EncoderCache | None = None,
        actions: torch.Tensor | None = None, targets: torch.Tensor | None = None,
        timestamp: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, EncoderCache, torch.Tensor | None]:
        """Serving: `extend` by the new tokens x, then — with `targets` [1, K, D] at `timestamp` —
        `targets` after the extended cache: (the new tokens' states [1, M, D], the extended cache,
        the targets' states [1, K, D] or None). With a fast engine both go through each layer
        together (`TransformerLayer.warm`); otherwise in turn."""
        if self.layers[0].engine == "reference" or targets is None:
            h, cache = self.extend(x, timestamps, cache, actions)
            return h, cache, None if targets is None else self.targets(targets, timestamp, cache)
        if cache is None:  # not `cache or …`: an EncoderCache of no tokens is falsy (its len)
            cache = EncoderCache.empty(self.layers, x)
        M = x.shape[1]
        if M:
            x = x + self.where_and_when(timestamps, cache.timestamps)
        times = torch.cat([cache.timestamps, timestamps], dim=1) if M else cache.timestamps  # [1, L + M]
        when = torch.as_tensor(timestamp, device=x.device).view(1, 1)
        x = torch.cat([x, targets + self.where_and_when(when, times)], dim=1)  # [1, M + K, D]
        layers = []
        for layer, layer_cache in zip(self.layers, cache.layers):
            x, layer_cache = layer.warm(x, layer_cache, actions, M)
            layers.append(layer_cache)
        x = self.norm(x)
        return x[:, :M], EncoderCache(tuple(layers), times), x[:, M:]

    def targets(self, x: torch.Tensor, timestamp: int | torch.Tensor, cache: EncoderCache) -> torch.Tensor:
        """Serving: K target tokens x [1, K, D] at position L and time `timestamp` → their states
        [1, K, D]. Each sees the L cached tokens and itself, never another target."""
        when = torch.as_tensor(timestamp, device=x.device).view(1, 1)  # an int, or a 0-d tensor under torch.export
        x = x + self.where_and_when(when, cache.timestamps)  # position L, gap to the last history token
        for layer, layer_cache in zip(self.layers, cache.layers):
            x = layer.targets(x, layer_cache)
        return self.norm(x)


    def where_and_when(self, timestamps: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        """Position and time-gap embedding of each token, [B, L, D] from timestamps [B, L]; with
        `past` [B, P], the tokens come after P earlier ones (positions from P, gap from the last)."""
        start, L = 0 if past is None else past.shape[1], timestamps.shape[1]
        # t_{n-1} for each token; the very first token of a history is its own previous (gap 0).
        # Written without a branch on P or a slice before the cat, so torch.export traces one
        # graph for every P ≥ 0 and L ≥ 1 (causalgr.serving.export).
        before = timestamps[:, :1] if past is None else torch.cat([timestamps[:, :1], past], dim=1)[:, -1:]
        previous = torch.cat([before, timestamps], dim=1)[:, :-1]  # [B, L]
        gaps = timestamps - previous  # [B, L]
        positions = self.position(torch.arange(start, start + L, device=timestamps.device))  # [L, D]
        return positions + self.time_gap(log_bucket(gaps, self.time_buckets))
