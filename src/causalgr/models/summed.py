"""`summed` — the production baseline of Meta's DLRMv3 and TorchEasyRec (docs/design.md §1).

Tokens: history tokens e(i_j) + b(a_j), j = 1..N, then target tokens e(i_n) + b_∅, n = 1..N,
        with b_∅ a learned placeholder action: 2N tokens through one encoder.
Mask:   target-aware (M-FALCON): history tokens attend causally among themselves only; target
        n attends to history tokens j < n and to itself, never to another target. So target n
        sees a_j for j < n only, and the history it sees never holds a_n or anything later.
Readout: head(state at target token n), for every n.
Serving: the N history tokens are cached (each layer's keys/values); a candidate is the target
        token e(c) + b_∅ of event N, which sees all N history tokens and itself.
"""

from __future__ import annotations

import torch
from torch import nn

from causalgr.batch import Batch
from causalgr.models.base import RankingModel
from causalgr.models.cache import HistoryState
from causalgr.models.config import ModelConfig


class Summed(RankingModel):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.placeholder = nn.Parameter(torch.zeros(config.dim))  # b_∅
        self.encoder = self.make_encoder(max_tokens=config.max_len)  # the twins of event n share position n
        self.head = self.make_head(config.dim)

    def forward(self, batch: Batch) -> torch.Tensor:
        items = self.items(batch.items)  # [B, N, D]
        history = items + self.embed_actions(batch)  # e(i_j) + b(a_j), [B, N, D]
        targets = items + self.placeholder  # e(i_n) + b_∅, [B, N, D]
        _, states = self.encoder.forward_with_targets(
            self.input_dropout(history), self.input_dropout(targets), batch.timestamps
        )  # [B, N, D] at the target tokens
        return self.head(states)  # [B, N, T]

    def serve(self, state: HistoryState | None, events: Batch, candidates: torch.Tensor | None = None,
              timestamp: int | torch.Tensor | None = None) -> tuple[HistoryState, torch.Tensor | None]:
        history = self.items(events.items) + self.embed_actions(events)  # e(i_j) + b(a_j), [1, M, D]
        targets = None if candidates is None else self.items(candidates)[None] + self.placeholder  # e(c) + b_∅, [1, K, D]
        _, encoder, states = self.encoder.serve(history, events.timestamps, state and state.encoder, targets=targets,
                                                timestamp=timestamp)
        return HistoryState(encoder), None if states is None else self.head(states[0])  # [K, T]
