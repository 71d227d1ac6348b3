"""A prepared dataset: per-user, time-ordered, split sequences on disk (docs/design.md §3).

This is the contract between data preparation (`causalgr data prepare`, `causalgr data synth`)
and everything that trains or evaluates. A prepared dataset is a folder:

- `events.parquet`, one row per kept event, sorted by (`user`, time, original order):
  `user` (int32, dense 1..U), `item` (int32, dense 1..I; 0 is padding), `timestamp` (int64
  seconds), `label_<task>` (uint8 0/1) per task, `action_value` (int16, only when the source
  has one; 0 = none), `split` (int8: 0 train, 1 valid, 2 test), `prob_<task>` (float64, the true
  label probability, synthetic data only).
- `meta.json`: `format_version`, `source`, `tasks`, `task_definitions` ({task: how its label
  was read, e.g. "rating>=4"}), `read_options` (column mapping and other reading options
  beyond the source's defaults), `num_users`, `num_items`,
  `num_action_values` (largest action value + 1, or 0 without action values), `max_len`,
  `split` (the split settings), `source_sha256`, `cache_key`, `dropped` ({reason: rows}),
  `stats` (see `causalgr.data.stats.compute_stats`).
- `item_ids.parquet` (`item`, `item_id`) and `user_ids.parquet` (`user`, `user_id`): dense id
  to original id, so every prediction can be traced back to the source.
- `user_events.parquet`: one row per user, `user`, `train`, `valid`, `test` (int32, the user's
  events in each split) — what a rank needs to know of the users it does not read.

`events.parquet` is written in row groups of whole users, at most `ROW_GROUP_EVENTS` events each
(or one user, if that user alone has more): its footer's statistics give each row group's user
range and row count, so a rank of a multi-process run reads only the row groups of its own users
(`load_prepared(path, share=(rank, ranks))`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from causalgr.data.errors import DataError

FORMAT_VERSION = 1
# The files of a prepared-dataset folder (the module docstring describes each).
EVENTS, META, ITEM_IDS, USER_IDS = "events.parquet", "meta.json", "item_ids.parquet", "user_ids.parquet"
USER_EVENTS = "user_events.parquet"
SPLITS = {"train": 0, "valid": 1, "test": 2}
ROW_GROUP_EVENTS = 1 << 17  # events per row group of events.parquet (whole users)


@dataclass
class PreparedData:
    """A prepared dataset in memory, in CSR layout: user u's events are rows offsets[u-1]:offsets[u]."""

    offsets: np.ndarray  # [U + 1] int64
    items: np.ndarray  # [E] int32
    timestamps: np.ndarray  # [E] int64
    labels: np.ndarray  # [E, T] uint8
    action_values: np.ndarray | None  # [E] int16
    split: np.ndarray  # [E] int8
    true_probs: np.ndarray | None  # [E, T] float64, synthetic data only
    meta: dict
    # A rank's share (`load_prepared(share=…)`) holds users first_user..first_user + len(offsets) - 2
    # only, and `user_split_events` [U, len(SPLITS)] (int64) gives every user's events per split.
    first_user: int = 1
    user_split_events: np.ndarray | None = None

    @property
    def holds_all(self) -> bool:
        """Whether every user's events are here (not a rank's share)."""
        return self.user_split_events is None

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.meta["tasks"])

    @property
    def num_users(self) -> int:
        """Users of the dataset (of every rank, for a share)."""
        return len(self.offsets) - 1 if self.holds_all else len(self.user_split_events)

    @property
    def num_items(self) -> int:
        return int(self.meta["num_items"])

    @property
    def unknown_item(self) -> bool:
        """Whether rare items were prepared as one unknown item, dense id num_items + 1 (`unknown_below`)."""
        return "unknown_item" in self.meta

    @property
    def max_len(self) -> int:
        return int(self.meta["max_len"])

    @property
    def num_action_values(self) -> int:
        return int(self.meta.get("num_action_values", 0))

    @property
    def lengths(self) -> np.ndarray:
        """Events of each user held here."""
        return np.diff(self.offsets)


def split_events_per_user(data: PreparedData) -> np.ndarray:
    """[U, len(SPLITS)] int64: each user's events in each split (`data` holding all users)."""
    user = np.repeat(np.arange(data.num_users), data.lengths)
    counts = np.zeros((data.num_users, len(SPLITS)), dtype=np.int64)
    np.add.at(counts, (user, data.split.astype(np.int64)), 1)
    return counts


def events_frame(data: PreparedData) -> pl.DataFrame:
    """The `events.parquet` table of `data`."""
    users = np.repeat(np.arange(1, data.num_users + 1, dtype=np.int32), data.lengths)
    columns: dict[str, np.ndarray] = {
        "user": users,
        "item": data.items.astype(np.int32),
        "timestamp": data.timestamps.astype(np.int64),
    }
    for t, task in enumerate(data.tasks):
        columns[f"label_{task}"] = data.labels[:, t].astype(np.uint8)
    if data.action_values is not None:
        columns["action_value"] = data.action_values.astype(np.int16)
    columns["split"] = data.split.astype(np.int8)
    if data.true_probs is not None:
        for t, task in enumerate(data.tasks):
            columns[f"prob_{task}"] = data.true_probs[:, t].astype(np.float64)
    return pl.DataFrame(columns)


def save_prepared(
    data: PreparedData, out: Path, item_ids: pl.DataFrame, user_ids: pl.DataFrame
) -> None:
    """Write `data` as a prepared-dataset folder; `item_ids`/`user_ids` map dense to original ids."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with EventsWriter(out / EVENTS) as writer:
        writer.write(events_frame(data))
    write_index(out, data.meta, item_ids, user_ids, split_events_per_user(data))


def write_index(
    out: Path, meta: dict, item_ids: pl.DataFrame, user_ids: pl.DataFrame, user_split_events: np.ndarray
) -> None:
    """Everything of a prepared folder but `events.parquet`; `meta.json` last, so a folder with
    one is complete."""
    item_ids.write_parquet(out / ITEM_IDS)
    user_ids.write_parquet(out / USER_IDS)
    columns = {"user": np.arange(1, len(user_split_events) + 1, dtype=np.int32)}
    columns.update({name: user_split_events[:, code].astype(np.int32) for name, code in SPLITS.items()})
    pl.DataFrame(columns).write_parquet(out / USER_EVENTS)
    meta = {"format_version": FORMAT_VERSION, **meta}
    (out / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


class EventsWriter:
    """Writes `events.parquet` from frames of its rows in order, in row groups of whole users with
    at most `row_group_events` events each (one user alone may exceed it)."""

    def __init__(self, path: Path, row_group_events: int | None = None) -> None:
        self.path = path
        self.row_group_events = row_group_events or ROW_GROUP_EVENTS
        self.pending: list[pl.DataFrame] = []
        self.pending_rows = 0
        self.writer: pq.ParquetWriter | None = None

    def write(self, frame: pl.DataFrame) -> None:
        self.pending.append(frame)
        self.pending_rows += frame.height
        while self.pending_rows > self.row_group_events:
            rows = pl.concat(self.pending)
            users = rows["user"].to_numpy()
            cut = int(np.searchsorted(users, users[self.row_group_events], side="left"))
            if cut == 0:  # the first user alone fills the row group
                cut = int(np.searchsorted(users, users[0], side="right"))
            self._row_group(rows.slice(0, cut))
            self.pending, self.pending_rows = [rows.slice(cut)], rows.height - cut

    def _row_group(self, rows: pl.DataFrame) -> None:
        table = rows.to_arrow()
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table, row_group_size=max(1, table.num_rows))

    def close(self) -> None:
        if self.pending_rows or self.writer is None:
            self._row_group(pl.concat(self.pending))
        self.writer.close()

    def __enter__(self) -> EventsWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        elif self.writer is not None:
            self.writer.close()


def load_prepared(path: Path | str, share: tuple[int, int] | None = None) -> PreparedData:
    """Read a prepared-dataset folder; a clear `DataError` if it is not one.

    `share=(rank, ranks)` reads only rank `rank`'s users (`rank_users`), from the row groups of
    `events.parquet` that hold them; a folder without `user_events.parquet` (prepared before
    there was one) is read whole.
    """
    path = Path(path)
    meta_path, events_path = path / META, path / EVENTS
    if not meta_path.is_file() or not events_path.is_file():
        raise DataError(
            f"{path}: not a prepared dataset (no meta.json / events.parquet); "
            "run `causalgr data prepare` or `causalgr data synth` first"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{meta_path}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}; prepare it again")
    first_user, user_split_events = 1, None
    if share is not None and share[1] > 1 and (path / USER_EVENTS).is_file():
        user_split_events = pl.read_parquet(path / USER_EVENTS).select(list(SPLITS)).to_numpy().astype(np.int64)
        first_user, last_user = rank_users(user_split_events.sum(axis=1), *share)
        if last_user < first_user:
            raise DataError(f"{path}: no users for rank {share[0]} of {share[1]}: the dataset has too few; use fewer processes")
        frame = _read_users(events_path, first_user, last_user)
        num_users = last_user - first_user + 1
    else:
        frame = pl.read_parquet(events_path)
        num_users = meta["num_users"]
    tasks = meta["tasks"]
    users = frame["user"].to_numpy() - (first_user - 1)
    counts = np.bincount(users, minlength=num_users + 1)[1:]
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    has_probs = all(f"prob_{t}" in frame.columns for t in tasks)
    return PreparedData(
        offsets=offsets,
        items=frame["item"].to_numpy().astype(np.int32),
        timestamps=frame["timestamp"].to_numpy().astype(np.int64),
        labels=np.stack([frame[f"label_{t}"].to_numpy() for t in tasks], axis=1).astype(np.uint8),
        action_values=frame["action_value"].to_numpy().astype(np.int16) if "action_value" in frame.columns else None,
        split=frame["split"].to_numpy().astype(np.int8),
        true_probs=np.stack([frame[f"prob_{t}"].to_numpy() for t in tasks], axis=1) if has_probs else None,
        meta=meta,
        first_user=first_user,
        user_split_events=user_split_events,
    )


def rank_users(events: np.ndarray, rank: int, ranks: int) -> tuple[int, int]:
    """The dense user ids `(first, last)` that rank `rank` of `ranks` holds, `events[u]` being
    user u + 1's events: consecutive users, each to the rank whose equal slice of all events
    holds the middle of the user's events. So the ranks' events differ from an equal split by
    at most one user's, ranks read few row groups, and every P gives one fixed partition.
    An empty share is `(first, first - 1)`."""
    cum = np.cumsum(events)
    middle = (cum - events / 2) * ranks / max(int(cum[-1]), 1)  # [U]
    owner = np.minimum(middle.astype(np.int64), ranks - 1)  # non-decreasing
    first = int(np.searchsorted(owner, rank, side="left")) + 1
    last = int(np.searchsorted(owner, rank, side="right"))
    return first, last


def _read_users(path: Path, first: int, last: int) -> pl.DataFrame:
    """The events of users first..last from the row groups of `path` that hold them."""
    file = pq.ParquetFile(path)
    column = file.schema_arrow.get_field_index("user")
    groups = []
    for g in range(file.metadata.num_row_groups):
        stats = file.metadata.row_group(g).column(column).statistics
        if stats is None or not stats.has_min_max or (stats.max >= first and stats.min <= last):
            groups.append(g)
    frame = pl.from_arrow(file.read_row_groups(groups) if groups else file.schema_arrow.empty_table())
    return frame.filter(pl.col("user").is_between(first, last))
