"""`lagged` — the simple baseline (docs/design.md §1).

Tokens: e(i_n) + b(a_{n-1}), with a learned start vector in place of b(a_0).
Mask:   plain causal over N tokens; token n holds actions up to a_{n-1} only.
Readout: head(h_n).
Serving: cached are the encoder's keys/values over the N tokens and b(a_N); a candidate is the
        token e(c) + b(a_N) at position N (the start vector for an empty history), which sees
        all N and itself.
"""

from __future__ import annotations

import torch
from torch import nn

from causalgr.batch import Batch
from causalgr.models.base import RankingModel
from causalgr.models.cache import HistoryState
from causalgr.models.config import ModelConfig


class Lagged(RankingModel):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.start = nn.Parameter(torch.zeros(config.dim))
        self.encoder = self.make_encoder(max_tokens=config.max_len)
        self.head = self.make_head(config.dim)

    def forward(self, batch: Batch) -> torch.Tensor:
        B, N = batch.items.shape
        actions = self.embed_actions(batch)  # [B, N, D]
        previous = torch.cat([self.start.expand(B, 1, -1), actions[:, :-1]], dim=1)  # b(a_{n-1}), [B, N, D]
        tokens = self.items(batch.items) + previous
        return self.head(self.encoder(self.input_dropout(tokens), batch.timestamps))  # [B, N, T]

    def serve(self, state: HistoryState | None, events: Batch, candidates: torch.Tensor | None = None,
              timestamp: int | torch.Tensor | None = None) -> tuple[HistoryState, torch.Tensor | None]:
        last = self.start.view(1, 1, -1) if state is None else state.last_action  # b(a) before the new events
        actions = torch.cat([last, self.embed_actions(events)], dim=1)  # [1, 1 + M, D]
        tokens = self.items(events.items) + actions[:, :-1]  # e(i_n) + b(a_{n-1})
        targets = None if candidates is None else self.items(candidates)[None] + actions[:, -1:]  # e(c) + b(a_N), [1, K, D]
        _, encoder, states = self.encoder.serve(tokens, events.timestamps, state and state.encoder, targets=targets,
                                                timestamp=timestamp)
        state = HistoryState(encoder, last_action=actions[:, -1:].clone())  # not a view: the cache counts D floats
        return state, None if states is None else self.head(states[0])  # [K, T]
