"""`mvp` — Attention-based Mixed Value Pooling (AttnMVP, docs/design.md §1).

Tokens: e(i_1..N); every attention layer adds action values u_j = W_a b(a_j):
        o_n = Σ_{j≤n} α_nj v_j + Σ_{j<n} α_nj u_j.
Mask:   causal for item values, strictly causal for action values. Stacking stays leak-free:
        h_j only ever holds actions earlier than j, and u enters position n from j < n only.
Readout: head(h_n), or with `mvp_pool_readout` head([h_n, p_n]) with `lfa`'s strict pooling.
Serving: cached are each layer's keys, values and u_j over the N item tokens (and the pooling's
        keys/values); a candidate is an item token at position N whose every layer sees
        v_j + u_j for all history j and its own v, never its own u.
"""

from __future__ import annotations

import torch

from causalgr.batch import Batch
from causalgr.models.base import RankingModel
from causalgr.models.cache import HistoryState
from causalgr.models.config import ModelConfig
from causalgr.models.heads import ActionPooling


class MixedValuePooling(RankingModel):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.encoder = self.make_encoder(max_tokens=config.max_len, mvp=True)
        self.pooling = (
            ActionPooling(config.dim, config.pool_heads, config.attention)
            if config.mvp_pool_readout
            else None
        )
        self.head = self.make_head(2 * config.dim if self.pooling is not None else config.dim)

    def forward(self, batch: Batch) -> torch.Tensor:
        actions = self.embed_actions(batch)  # [B, N, D]
        h = self.encoder(self.input_dropout(self.items(batch.items)), batch.timestamps, actions)  # [B, N, D]
        if self.pooling is None:
            return self.head(h)  # [B, N, T]
        return self.head(torch.cat([h, self.pooling(h, actions)], dim=-1))

    def serve(self, state: HistoryState | None, events: Batch, candidates: torch.Tensor | None = None,
              timestamp: int | torch.Tensor | None = None) -> tuple[HistoryState, torch.Tensor | None]:
        actions = self.embed_actions(events)  # [1, M, D]
        targets = None if candidates is None else self.items(candidates)[None]  # [1, K, D]
        h, encoder, h_t = self.encoder.serve(self.items(events.items), events.timestamps, state and state.encoder,
                                             actions, targets, timestamp)  # [1, M, D], [1, K, D]
        pooling = None if self.pooling is None else self.pooling.extend(state and state.pooling, h, actions)
        state = HistoryState(encoder, pooling)
        if h_t is None:
            return state, None
        if self.pooling is None:
            return state, self.head(h_t[0])  # [K, T]
        return state, self.head(torch.cat([h_t, self.pooling.targets(h_t, pooling)], dim=-1)[0])
