"""The canonical event table every source is mapped to (DESIGN.md §3)."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl


@dataclass
class EventTable:
    """One row per event, in the source's original row order.

    `frame` columns: `user_id` and `item_id` (int64; string tokens allowed for `recbole:`/`table:`
    sources), `timestamp` (int64 seconds), one
    uint8 0/1 column per task named as the task, optional `action_value` (int16, e.g. a 1–5
    rating), and on synthetic data `prob_<task>` (float64, the true probability of the label).
    """

    frame: pl.DataFrame
    tasks: tuple[str, ...]
    source: str  # e.g. "ml-100k", "recbole:path/x.inter", "synthetic"
    sha256: str  # checksum of the source file(s), or of the generator settings
    dropped: dict[str, int] = field(default_factory=dict)  # rows dropped while loading, by reason
