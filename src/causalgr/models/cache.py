"""What a user's history contributes to every later token, kept so that serving computes it once.

A causal model's history tokens never depend on what comes after them, so their keys and
values (per layer), and the keys and values that `lfa`'s pooling reads, stay valid while
events are appended: new tokens and candidates attend to them without recomputing the history
(docs/serving.md, "Cached history"). Tensors are never changed in place — appending makes new
ones — so a state may be read by one request while another extends it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch


class LayerCache(NamedTuple):
    """One attention layer's view of the history tokens (batch of one user)."""

    keys: torch.Tensor  # [1, H, L, dh]
    values: torch.Tensor  # [1, H, L, dh]
    actions: torch.Tensor | None  # mvp: u_j = W_a b(a_j), [1, H, L, dh]; None otherwise

    def append(self, keys: torch.Tensor, values: torch.Tensor, actions: torch.Tensor | None) -> LayerCache:
        """These tokens, then new ones [1, H, M, dh] (new tensors: this cache is left as it is)."""
        return LayerCache(*(None if new is None else torch.cat([old, new], dim=2)
                            for old, new in zip(self, (keys, values, actions))))


@dataclass(frozen=True)
class EncoderCache:
    """Every layer's keys and values for the L history tokens, and the tokens' times."""

    layers: tuple[LayerCache, ...]
    timestamps: torch.Tensor  # [1, L] long, the time of each token

    def __len__(self) -> int:
        return self.timestamps.shape[1]

    @classmethod
    def empty(cls, layers: Sequence, like: torch.Tensor) -> EncoderCache:
        """The cache of an empty history for an encoder's attention `layers` (each with `heads`,
        and `action_value` set for mvp), on `like`'s device and dtype (`like` [.., D])."""
        heads, mvp = layers[0].heads, layers[0].action_value is not None
        none = like.new_zeros(1, heads, 0, like.shape[-1] // heads)  # [1, H, 0, dh]
        return cls(tuple(LayerCache(none, none, none if mvp else None) for _ in layers),
                   torch.zeros(1, 0, dtype=torch.long, device=like.device))


class PoolingCache(NamedTuple):
    """`lfa`'s action pooling (also `mvp`'s readout): k(h_j) and W_v b(a_j) for every history event."""

    keys: torch.Tensor  # [1, Hp, N, dh]
    values: torch.Tensor  # [1, Hp, N, dh]


@dataclass(frozen=True)
class HistoryState:
    """A formulation's cached history: what `RankingModel.extend_history` returns and
    `RankingModel.rank_candidates` reads. Fields a formulation does not use stay None."""

    encoder: EncoderCache
    pooling: PoolingCache | None = None  # lfa, mvp with its pooling readout
    last_action: torch.Tensor | None = None  # lagged: b(a_N), the next token's lagged action, [1, 1, D]

    @property
    def nbytes(self) -> int:
        return sum(t.nelement() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the state by a name."""
        named = {"timestamps": self.encoder.timestamps, "last_action": self.last_action}
        for i, layer in enumerate(self.encoder.layers):
            named.update({f"layer{i}.{name}": t for name, t in layer._asdict().items()})
        if self.pooling is not None:
            named.update({f"pooling.{name}": t for name, t in self.pooling._asdict().items()})
        return {name: t for name, t in named.items() if t is not None}

    @classmethod
    def from_tensors(cls, named: dict[str, torch.Tensor]) -> HistoryState:
        """The state whose `tensors()` are `named` (the names as `tensors()` writes them)."""
        count = sum(name.startswith("layer") and name.endswith(".keys") for name in named)
        layers = tuple(LayerCache(*(named.get(f"layer{i}.{field}") for field in LayerCache._fields)) for i in range(count))
        pooling = PoolingCache(*(named[f"pooling.{field}"] for field in PoolingCache._fields)) if "pooling.keys" in named else None
        return cls(EncoderCache(layers, named["timestamps"]), pooling, named.get("last_action"))
