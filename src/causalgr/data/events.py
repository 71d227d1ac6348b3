"""The canonical event table every source is mapped to (docs/design.md §3)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import polars as pl


@dataclass
class EventTable:
    """One row per event, in the source's original row order.

    `frame` columns: `user_id` and `item_id` (int64; string tokens allowed for `recbole:`/`table:`
    sources), `timestamp` (int64 seconds), one
    uint8 0/1 column per task named as the task, optional `action_value` (int16, e.g. a 1–5
    rating), and on synthetic data `prob_<task>` (float64, the true probability of the label).

    The same file read with other task definitions or read options is another dataset: both
    are part of the prepared data's cache key and `meta.json`.

    A table too large to hold gives `chunks` instead of `frame`: a function returning its rows
    as frames, in order (`causalgr.data.stream.prepare_stream` reads it once). Reading Parquet
    for it, pass `pre_buffer=False` to pyarrow: by default it keeps every row group read.
    """

    frame: pl.DataFrame | None
    tasks: tuple[str, ...]
    source: str  # e.g. "ml-100k", "recbole:path/x.inter", "synthetic"
    sha256: str  # checksum of the source file(s), or of the generator settings
    dropped: dict[str, int] = field(default_factory=dict)  # rows dropped while loading, by reason
    # How each task's label was read from the source: {"like": "rating>=4", "click": "is_click"};
    # empty when the task columns are the labels as given (synthetic data).
    task_definitions: dict[str, str] = field(default_factory=dict)
    # The options the source was read with beyond its defaults: the column mapping of
    # recbole:/table: sources (`user_col`, `time_format`, …) and `include_random`.
    read_options: dict[str, str | bool] = field(default_factory=dict)
    chunks: Callable[[], Iterator[pl.DataFrame]] | None = None

    def iter_chunks(self, rows: int) -> Iterator[pl.DataFrame]:
        """The rows in order, as frames of at most `rows` rows (a source's own chunks may be smaller)."""
        frames = self.chunks() if self.frame is None else iter([self.frame])
        for frame in frames:
            for start in range(0, frame.height, rows):
                yield frame.slice(start, rows)
