"""`interleaved` — the HSTU ranker baseline (docs/design.md §1).

Tokens: e(i_1), b(a_1), e(i_2), b(a_2), … — 2N tokens through one causal encoder.
Mask:   plain causal over the 2N tokens. The item token of event n sits at 2n (0-based), its
        action at 2n + 1, so it sees actions a_j only for j < n.
Readout: head(state at the item token of i_n); action tokens carry no loss.
Serving: the 2N history tokens are cached (each layer's keys/values, action tokens included);
        a candidate is an item token at position 2N that sees all 2N and itself.
"""

from __future__ import annotations

import torch

from causalgr.batch import Batch
from causalgr.models.base import RankingModel
from causalgr.models.cache import HistoryState
from causalgr.models.config import ModelConfig


class Interleaved(RankingModel):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.encoder = self.make_encoder(max_tokens=2 * config.max_len)
        self.head = self.make_head(config.dim)

    def forward(self, batch: Batch) -> torch.Tensor:
        B, N = batch.items.shape
        items = self.items(batch.items)  # [B, N, D]
        actions = self.embed_actions(batch)  # [B, N, D]
        tokens = torch.stack([items, actions], dim=2).reshape(B, 2 * N, -1)  # [B, 2N, D]
        times = batch.timestamps.repeat_interleave(2, dim=1)  # [B, 2N]: both tokens of an event share t_n
        states = self.encoder(self.input_dropout(tokens), times)  # [B, 2N, D]
        return self.head(states[:, 0::2])  # item tokens → [B, N, T]

    def serve(self, state: HistoryState | None, events: Batch, candidates: torch.Tensor | None = None,
              timestamp: int | torch.Tensor | None = None) -> tuple[HistoryState, torch.Tensor | None]:
        M = events.items.shape[1]
        items, actions = self.items(events.items), self.embed_actions(events)  # [1, M, D]
        tokens = torch.stack([items, actions], dim=2).reshape(1, 2 * M, self.config.dim)  # [1, 2M, D]
        times = events.timestamps.repeat_interleave(2, dim=1)  # [1, 2M]
        targets = None if candidates is None else self.items(candidates)[None]  # item tokens [1, K, D]
        _, encoder, states = self.encoder.serve(tokens, times, state and state.encoder, targets=targets,
                                                timestamp=timestamp)  # [1, 2(N + M)] tokens cached; [1, K, D]
        return HistoryState(encoder), None if states is None else self.head(states[0])  # [K, T]
