"""Item ids at the serving boundary: the caller's ids → the model's dense ids, and the unknown item.

A served model answers for every id it is given. An id the model never saw (not in the run's
`item_ids.parquet`, or outside 1..num_items for a bare model) becomes the *unknown item*, dense
id `num_items + 1`. A model trained on data prepared with `unknown_below` (`ModelConfig.unknown_item`)
has that row, trained on the rare items mapped to it; any other model gets one extra row holding
the mean of the real items' embeddings. Row 0 stays padding — it is never used for a real event.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from causalgr.models import RankingModel


class ItemIndex:
    """Maps a caller's item ids to dense ids 1..num_items, and anything else to `unknown`.

    Without `ids` the caller's ids are the dense ids themselves (ints 1..num_items). With `ids`
    (original id → dense id) they are the source's original ids, compared as strings so that
    `242` and `"242"` are the same item.
    """

    def __init__(self, num_items: int, ids: Mapping[str, int] | None = None):
        self.num_items = num_items
        self.unknown = num_items + 1
        self.ids = None if ids is None else dict(ids)

    @classmethod
    def from_table(cls, dense: Sequence[int], original: Sequence[object], num_items: int) -> ItemIndex:
        """From the `item` and `item_id` columns of a prepared dataset's `item_ids.parquet`."""
        return cls(num_items, {str(o): int(d) for d, o in zip(dense, original)})

    def lookup(self, items: Iterable[object]) -> tuple[np.ndarray, list[object]]:
        """(dense ids int64 [N], the unknown ids in the order given, repeats kept once)."""
        items = list(items)
        dense = self._dense(items)
        unknown = dict.fromkeys(_listable(items[i]) for i in np.flatnonzero(dense == self.unknown))
        return dense, list(unknown)

    def _dense(self, items: list) -> np.ndarray:
        """Dense ids of `items`; the usual requests (ints for a bare model, strings or ints with
        `ids`) without a Python call per id."""
        types = set(map(type, items))
        if self.ids is None and types <= {int}:
            try:
                array = np.array(items, dtype=np.int64)
            except OverflowError:  # past int64: unknown, as `_one` says
                pass
            else:
                return np.where((array >= 1) & (array <= self.num_items), array, self.unknown)
        if self.ids is not None and types <= {str, int}:
            keys = map(str, items)  # the original ids, compared as strings
            return np.fromiter(map(self.ids.get, keys, itertools.repeat(self.unknown)), dtype=np.int64, count=len(items))
        return np.fromiter(map(self._one, items), dtype=np.int64, count=len(items))

    def _one(self, item: object) -> int:
        if self.ids is not None:
            if type(item) is str:  # the usual case first
                return self.ids.get(item, self.unknown)
            key = str(item) if isinstance(item, (str, int, np.integer)) and not isinstance(item, bool) else None
            return self.ids.get(key, self.unknown) if key is not None else self.unknown
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool) and 1 <= item <= self.num_items:
            return int(item)
        return self.unknown


def _listable(item: object) -> object:
    """`item` itself where it can be listed once (hashable), else its repr."""
    try:
        hash(item)
    except TypeError:
        return repr(item)
    return item


def with_unknown_item(model: RankingModel) -> RankingModel:
    """A frozen eval-mode copy of `model` whose item table has row `num_items + 1`, the unknown
    item: the trained one when `model.config.unknown_item`, else a new row, the mean of rows
    1..num_items. Every other weight is copied unchanged, so known items get exactly the trained
    model's answers; `model` itself is not touched."""
    if model.config.unknown_item:
        return copy.deepcopy(model).eval().requires_grad_(False)
    weight = model.items.weight.detach()  # [num_items + 1, D], row 0 = padding
    table = nn.Embedding(weight.shape[0] + 1, weight.shape[1], padding_idx=0, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        table.weight.copy_(torch.cat([weight, weight[1:].mean(0, keepdim=True)]))
    # The memo makes deepcopy put the new table where the old one was instead of copying it.
    served = copy.deepcopy(model, memo={id(model.items): table})
    return served.eval().requires_grad_(False)
