"""The item embedding e(i): one table of `num_items + 1` rows, row 0 the zero padding row (§1.2),
and one more, row `num_items + 1`, when the data has a trained unknown item (`unknown_item`).

`model.item_table` picks its form; both map items [B, N] to [B, N, D] with the same numbers:

- `dense`: an `nn.Embedding`, whole on every process (under DDP, a replica on every rank).
- `sharded`: a TorchRec `EmbeddingCollection` with one table, `TABLE`. Alone it is an ordinary
  table; the trainer hands it to TorchRec's `DistributedModelParallel`, which splits its rows
  over the ranks (`training/sharding.py`). TorchRec reads jagged ids, so padding never enters the
  lookup: the valid ids of each row go in, and padded positions get zeros — what row 0 of the
  dense table holds.

Both start from the same draw of the random generator, so a seed gives the same first weights in
either form.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec

import torch
from torch import nn

from causalgr.errors import ConfigError
from causalgr.models.config import ModelConfig

TABLE = "item"  # the EmbeddingCollection's table and feature name


def require_torchrec(item_table: str) -> None:
    """A one-line `ConfigError` when `item_table` is `sharded` and TorchRec is not installed (a
    sharded run's weights read back into a dense table without it)."""
    if item_table == "sharded" and find_spec("torchrec") is None:
        raise ConfigError("config: model.item_table: 'sharded' needs TorchRec, which is not installed: "
                          "run `make distributed` (docs/distributed.md)")


@contextmanager
def quiet_torchrec() -> Iterator[None]:
    """Hold back what TorchRec and fbgemm say while they load and build tables: dozens of INFO lines
    through the root logger (fbgemm's `logging.info`), and deprecation warnings about DDP."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        root.setLevel(level)


def initial_weights(config: ModelConfig) -> torch.Tensor:
    """The starting table [num_items + 1 (+ 1 for the unknown item), D]: normal(0, 0.02), row 0 zero."""
    table = nn.Embedding(config.num_items + 1 + config.unknown_item, config.dim, padding_idx=0)
    nn.init.normal_(table.weight, std=0.02)
    with torch.no_grad():
        table.weight[0].zero_()
    return table.weight.detach()


def make_item_table(config: ModelConfig) -> nn.Module:
    """The item table `config.item_table` names, with the weights of `initial_weights`."""
    weight = initial_weights(config)
    if config.item_table == "sharded":
        return ItemCollection(weight)
    return nn.Embedding.from_pretrained(weight, freeze=False, padding_idx=0)


class ItemCollection(nn.Module):
    """The item table as a TorchRec `EmbeddingCollection` (what `DistributedModelParallel` shards)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        require_torchrec("sharded")
        with quiet_torchrec():
            from torchrec import EmbeddingCollection, EmbeddingConfig

        rows, dim = weight.shape
        with torch.random.fork_rng(devices=[]):  # TorchRec's own initial draw is replaced below: keep the stream
            self.collection = EmbeddingCollection(
                tables=[EmbeddingConfig(name=TABLE, embedding_dim=dim, num_embeddings=rows, feature_names=[TABLE])]
            )
        with torch.no_grad():
            self.collection.embeddings[TABLE].weight.copy_(weight)
        self.dim = dim

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        from torchrec import KeyedJaggedTensor

        valid = items != 0  # [B, N]; right padding, and no real item has id 0
        ids = KeyedJaggedTensor(keys=[TABLE], values=items[valid], lengths=valid.sum(1))
        values = self.collection(ids)[TABLE].values()  # [valid positions, D]
        out = values.new_zeros(*items.shape, self.dim)  # [B, N, D]
        out[valid] = values
        return out
