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
    rating), on synthetic data `prob_<task>` (float64, the true probability of the label), and on
    sources with milliseconds `timestamp_ms` (int64; it tells repeated rows apart, nothing more).

    The same file read with other task definitions or read options is another dataset: both
    are part of the prepared data's cache key and `meta.json`.

    A table too large to hold gives `chunks` instead of `frame`: a function returning its rows
    as frames, in order, each time it is called (sources are read so: `causalgr.data.sources`).
    Such a table counts its `dropped` rows as it is read: they are complete once its chunks have
    been read to the end. Reading Parquet for it, pass `pre_buffer=False` to pyarrow: by default
    it keeps every row group read.

    A read source may hold an event twice (the same row logged again): with `drop_duplicates`
    the preparation keeps the first of rows equal in every column and counts the others as
    `duplicate row`. It does so where each user's events come together, so no step ever needs
    the whole table.
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
    drop_duplicates: bool = False

    def iter_chunks(self, rows: int) -> Iterator[pl.DataFrame]:
        """The rows in order, as frames of `rows` rows (the last may hold fewer), whatever the
        size of the table's own chunks."""
        frames = self.chunks() if self.frame is None else iter([self.frame])
        pending: list[pl.DataFrame] = []
        held = 0
        for frame in frames:
            while frame.height:
                part = frame.slice(0, rows - held)
                pending.append(part)
                held += part.height
                frame = frame.slice(part.height)
                if held == rows:
                    chunk, pending, held = _joined(pending), [], 0  # the parts go before the chunk is used
                    yield chunk
        if held:
            yield _joined(pending)

    def collect(self) -> pl.DataFrame:
        """Every row in one frame (a chunked table is read to the end)."""
        return self.frame if self.frame is not None else pl.concat(list(self.chunks()))


def _joined(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """The frames one after another (a single frame as it is, not copied)."""
    return frames[0] if len(frames) == 1 else pl.concat(frames)
