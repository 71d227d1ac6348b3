"""What every formulation shares: item and action embeddings, the backbone, the head."""

from __future__ import annotations

import torch
from torch import nn

from causalgr.batch import Batch
from causalgr.models.action_encoder import ActionEncoder
from causalgr.models.cache import HistoryState
from causalgr.models.config import ModelConfig
from causalgr.models.heads import MultiTaskHead
from causalgr.models.hstu import HSTUEncoder
from causalgr.models.item_tables import make_item_table
from causalgr.models.softmax import SoftmaxEncoder

BACKBONES = {"hstu": HSTUEncoder, "softmax": SoftmaxEncoder}  # name → encoder class; registry.py re-exports it


class RankingModel(nn.Module):
    """Base of the formulations: `model(batch) -> logits [B, N, T]` obeying the causal invariant."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.items = make_item_table(config)  # items [B, N] → e(i) [B, N, D]; zeros at padding
        self.actions = ActionEncoder(len(config.tasks), config.dim, config.num_action_values, config.action_norm)
        self.input_dropout = nn.Dropout(config.dropout)
        self.register_forward_pre_hook(_check_length)

    def make_encoder(self, max_tokens: int, mvp: bool = False) -> nn.Module:
        return BACKBONES[self.config.backbone](self.config, max_tokens, mvp)

    def make_head(self, in_dim: int) -> MultiTaskHead:
        return MultiTaskHead(in_dim, self.config.dim, len(self.config.tasks), self.config.dropout)

    def embed_actions(self, batch: Batch) -> torch.Tensor:
        """b(a_n) at every position, [B, N, D]. Callers must only let it reach positions > n."""
        return self.actions(batch.labels.to(self.actions.base.dtype), batch.action_values)

    def forward(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    # Serving (docs/serving.md), eval mode only: the history once, then K candidates in one pass.
    # Together they must give exactly forward's logits at position N of history + (c, t).

    def serve(
        self, state: HistoryState | None, events: Batch, candidates: torch.Tensor | None = None,
        timestamp: int | torch.Tensor | None = None,
    ) -> tuple[HistoryState, torch.Tensor | None]:
        """The cached history after appending `events` (one row, M ≥ 0 events, oldest first, not
        before those of `state`) to `state` (None: an empty history) — `state` is left as it was —
        and, given `candidates` [K] (dense item ids) and `timestamp` (an int or a 0-d long tensor,
        which `causalgr.serving.export` traces as an input), logits [K, T]: row k is forward's at
        position N of history + (candidates[k], timestamp). Candidates never see each other. The
        new events and the candidates share the encoder's pass (its `serve`)."""
        raise NotImplementedError

    def extend_history(self, state: HistoryState | None, events: Batch) -> HistoryState:
        """`serve` without candidates: the cached history after `events`."""
        return self.serve(state, events)[0]

    def rank_candidates(self, state: HistoryState, candidates: torch.Tensor, timestamp: int | torch.Tensor) -> torch.Tensor:
        """`serve` without new events: the candidates' logits [K, T] after the cached history."""
        return self.serve(state, no_events(len(self.config.tasks), candidates.device), candidates, timestamp)[1]

    def num_parameters(self, include_items: bool = True) -> int:
        """Parameter count; without the item table, the part that differs between formulations."""
        total = sum(p.numel() for p in self.parameters())
        return total if include_items else total - sum(p.numel() for p in self.items.parameters())


def no_events(num_tasks: int, device: torch.device) -> Batch:
    """A batch of one row and no events: `serve`'s `events` when a request brings none."""
    none = torch.zeros(1, 0, dtype=torch.long, device=device)
    return Batch(none, torch.zeros(1, 0, num_tasks, device=device), none, none, torch.zeros(1, dtype=torch.long, device=device))


def _check_length(model: RankingModel, args: tuple) -> None:
    """Every formulation's position tables end at `max_len`: a longer batch is the caller's mistake."""
    (batch,) = args
    if batch.items.shape[1] > model.config.max_len:
        raise ValueError(
            f"batch has {batch.items.shape[1]} events per row but the model's max_len is {model.config.max_len}"
        )
