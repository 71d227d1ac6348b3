"""`lagged` — the simple baseline (docs/design.md §1).

Tokens: e(i_n) + b(a_{n-1}), with a learned start vector in place of b(a_0).
Mask:   plain causal over N tokens; token n holds actions up to a_{n-1} only.
Readout: head(h_n).
"""

from __future__ import annotations

import torch
from torch import nn

from causalgr.batch import Batch
from causalgr.models.base import RankingModel
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
