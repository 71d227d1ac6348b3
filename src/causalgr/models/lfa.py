"""`lfa` — Attention-based Late Fusion for Actions (AttnLFA, docs/design.md §1).

Tokens: e(i_1..N) only; the causal encoder never sees an action: h_n = Enc(e(i_≤n)).
Mask:   causal (j ≤ n) in the encoder; strictly causal (j < n, plus a learned null slot) in
        the pooling p_n = Σ_{j<n} α_nj W_v b(a_j), α_nj from q(h_n)·k(h_j).
Readout: head([h_n, p_n]).
Serving: cached are the encoder's keys/values over the N item tokens and the pooling's k(h_j),
        W_v b(a_j); a candidate is an item token at position N (sees all N and itself) whose
        pooling sees every history action: j < N + 1.
"""

from __future__ import annotations

import torch

from causalgr.batch import Batch
from causalgr.models.base import RankingModel
from causalgr.models.cache import HistoryState
from causalgr.models.config import ModelConfig
from causalgr.models.heads import ActionPooling


class LateFusion(RankingModel):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.encoder = self.make_encoder(max_tokens=config.max_len)
        self.pooling = ActionPooling(config.dim, config.pool_heads, config.attention)
        self.head = self.make_head(2 * config.dim)

    def forward(self, batch: Batch) -> torch.Tensor:
        h = self.encoder(self.input_dropout(self.items(batch.items)), batch.timestamps)  # [B, N, D]
        pooled = self.pooling(h, self.embed_actions(batch))  # [B, N, D], actions j < n only
        return self.head(torch.cat([h, pooled], dim=-1))  # [B, N, T]

    def serve(self, state: HistoryState | None, events: Batch, candidates: torch.Tensor | None = None,
              timestamp: int | torch.Tensor | None = None) -> tuple[HistoryState, torch.Tensor | None]:
        targets = None if candidates is None else self.items(candidates)[None]  # [1, K, D]
        h, encoder, h_t = self.encoder.serve(self.items(events.items), events.timestamps, state and state.encoder,
                                             targets=targets, timestamp=timestamp)  # [1, M, D], [1, K, D]
        state = HistoryState(encoder, self.pooling.extend(state and state.pooling, h, self.embed_actions(events)))
        if h_t is None:
            return state, None
        pooled = self.pooling.targets(h_t, state.pooling)  # [1, K, D], every history action
        return state, self.head(torch.cat([h_t, pooled], dim=-1)[0])  # [K, T]
