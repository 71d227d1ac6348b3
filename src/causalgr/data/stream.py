"""Event table → prepared folder in bounded memory, for tables too large to hold (docs/design.md §3).

`prepare_stream` writes the folder that `causalgr.data.sequences.prepare` writes, byte for byte
the same content, reading the events chunk by chunk and never holding more than about
`chunk_events` of them, plus at most ~150 bytes per user and 60 per item (docs/distributed.md,
"Data at scale, measured"). Three passes, each over chunks:

1. **Runs.** Each chunk of the table is checked (the same one-line `DataError`s), sorted by
   (user id, timestamp, row) and written to a temporary Parquet "run"; the events per user id
   and the set of item ids are counted on the way.
2. **Users.** The user ids, in ascending order, are cut into consecutive ranges of at most
   `chunk_events` events (a larger user is a range of its own). For each range the runs' rows of
   those users are read (Parquet row-group statistics skip the rest), then truncated and split
   by the same function as the in-memory path (`truncate_and_split`: a user's result depends on
   its own events only). The kept rows go to a temporary file per range.
3. **Ids.** The kept item ids get their dense ids (ascending original id, as in memory); each
   range's rows are renumbered and appended to `events.parquet` in row groups of whole users,
   and the statistics are summed chunk by chunk (`StatsAccumulator`, the same numbers).

The time split's default cut-offs (0.8 / 0.9 quantiles of all timestamps) are found by counting
timestamps in ever narrower bins over the runs: a few passes over one column, exact.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from causalgr.data.cache import cache_key, cached_meta
from causalgr.data.errors import DataError
from causalgr.data.events import EventTable
from causalgr.data.prepared import EVENTS, SPLITS, EventsWriter, write_index
from causalgr.data.sequences import (
    DROP_DUPLICATE,
    PrepareSettings,
    checked_frame,
    first_copies,
    known_items,
    prepared_meta,
    time_cutoffs,
    truncate_and_split,
    unknown_item_meta,
)
from causalgr.data.stats import StatsAccumulator

log = logging.getLogger(__name__)

CHUNK_EVENTS = 1 << 21  # events per run and per user range: what bounds the memory
_RUN_ROW_GROUP = 1 << 14  # rows per row group of a run, the granularity of a range's reads
_QUANTILE_BINS = 1 << 12


def prepare_stream(
    events: EventTable, out: Path | str, settings: PrepareSettings | None = None, chunk_events: int = CHUNK_EVENTS
) -> dict:
    """Write the prepared dataset of `events` in `out` (the folder `prepare` writes) and return its
    `meta.json`; when `out` already holds one made under the same cache key, return that one's."""
    settings = settings or PrepareSettings()
    out = Path(out)
    key = cache_key(events, settings)
    meta = cached_meta(out, key)
    if meta is not None:
        log.info("using cached prepared data in %s (cache key %s)", out, key[:12])
        return meta
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".prepare-") as tmp:
        runs = _write_runs(events, Path(tmp), chunk_events)
        meta = _write_prepared(events, runs, out, Path(tmp), settings, chunk_events)
    log.info(
        "prepared %s: %d users, %d items, %d events in %.1f s -> %s",
        events.source, meta["num_users"], meta["num_items"], meta["stats"]["events"], time.perf_counter() - start, out,
    )
    return meta


class _Runs:
    """Pass 1's result: the run files and what was counted on the way."""

    def __init__(self) -> None:
        self.files: list[Path] = []
        self.rows = 0
        self.user_events: pl.DataFrame | None = None  # user_id, events; ascending user_id
        self.item_ids: pl.Series | None = None  # distinct item ids
        self.columns: list[str] = []


def _write_runs(events: EventTable, tmp: Path, chunk_events: int) -> _Runs:
    runs = _Runs()
    tasks = tuple(events.tasks)
    for chunk in events.iter_chunks(chunk_events):
        if chunk.height == 0:
            continue
        frame = checked_frame(chunk, events.source, tasks, first_row=runs.rows)
        frame = frame.with_columns(pl.int_range(runs.rows, runs.rows + frame.height, dtype=pl.Int64).alias("_row"))
        runs.columns = frame.columns
        path = tmp / f"run{len(runs.files):05d}.parquet"
        frame.sort(["user_id", "timestamp", "_row"]).write_parquet(path, row_group_size=_RUN_ROW_GROUP, statistics=True)
        runs.files.append(path)
        runs.rows += frame.height
        counts = frame.group_by("user_id").len("events")
        if runs.user_events is not None:
            counts = pl.concat([runs.user_events, counts]).group_by("user_id").agg(pl.col("events").sum())
        runs.user_events = counts
        items = frame["item_id"].unique()
        runs.item_ids = items if runs.item_ids is None else pl.concat([runs.item_ids, items]).unique()
    if not runs.files:
        raise DataError(f"{events.source}: no events")
    runs.user_events = runs.user_events.sort("user_id")
    return runs


def _write_prepared(
    events: EventTable, runs: _Runs, out: Path, tmp: Path, settings: PrepareSettings, chunk_events: int
) -> dict:
    tasks = tuple(events.tasks)
    has_values = "action_value" in runs.columns
    has_probs = len(tasks) > 0 and all(f"prob_{t}" in runs.columns for t in tasks)

    # Pass 2: truncate and split each range of users (without the copies of repeated rows).
    copies: dict[str, int] = {}
    frames = _user_frames(runs, chunk_events, events.drop_duplicates, copies)
    cutoffs = None
    if settings.split == "time":
        # The default cut-offs are quantiles of the events less their copies: the ranges go to
        # files first, and the quantiles are counted over those.
        spilled = _spill(frames, tmp)
        rows = runs.rows - copies.get(DROP_DUPLICATE, 0)
        cutoffs = time_cutoffs(settings, events.source, lambda q: _quantile_nearest(spilled, rows, q))
        frames = map(pl.read_parquet, spilled)
    parts: list[Path] = []
    kept_users: list[pl.Series] = []
    kept_items: pl.Series | None = None
    train_events: pl.DataFrame | None = None  # item_id, events: each kept item's training events (unknown_below)
    dropped: dict[str, int] = {}
    dropped_users: dict[str, int] = {}
    largest_value = -1
    for frame in frames:
        user = frame["user_id"].rank("dense").to_numpy().astype(np.int64)  # [e], 1..users of the range
        keep, split, range_dropped, range_users = truncate_and_split(
            user, frame["timestamp"].to_numpy(), settings, cutoffs
        )
        for totals, counts in ((dropped, range_dropped), (dropped_users, range_users)):
            for reason, n in counts.items():
                totals[reason] = totals.get(reason, 0) + n
        kept = frame.with_columns(pl.Series("split", split)).filter(pl.Series(keep)).drop("_row")
        if kept.height == 0:
            continue
        if has_values:
            kept = kept.with_columns(pl.col("action_value").fill_null(0).cast(pl.Int16))
            largest_value = max(largest_value, int(kept["action_value"].max()))
        kept_users.append(kept["user_id"].unique(maintain_order=True))
        items = kept["item_id"].unique()
        kept_items = items if kept_items is None else pl.concat([kept_items, items]).unique()
        if settings.unknown_below:
            counts = kept.filter(pl.col("split") == SPLITS["train"]).group_by("item_id").len("events")
            if train_events is not None:
                counts = pl.concat([train_events, counts]).group_by("item_id").agg(pl.col("events").sum())
            train_events = counts
        parts.append(tmp / f"range{len(parts):05d}.parquet")
        kept.write_parquet(parts[-1])
    if not parts:
        raise DataError(f"{events.source}: no events left after truncation and splitting ({dropped})")
    dropped = {**copies, **dropped}

    # Pass 3: dense ids, events.parquet, statistics.
    item_ids = pl.DataFrame({"item_id": kept_items.sort()})
    known, unknown_events = None, 0
    if settings.unknown_below:
        counts = item_ids.join(train_events, on="item_id", how="left")["events"].fill_null(0).to_numpy()
        known = known_items(counts, settings.unknown_below, events.source)
        item_ids = item_ids.filter(pl.Series(known))
    item_ids = item_ids.with_row_index("item", offset=1)
    item_ids = item_ids.with_columns(pl.col("item").cast(pl.Int32)).select("item", "item_id")
    unknown = len(item_ids) + 1  # the dense id of every item that lost its own (unknown_below)
    all_users = pl.concat(kept_users)
    user_ids_table = pl.DataFrame(
        {"user": np.arange(1, len(all_users) + 1, dtype=np.int32), "user_id": all_users}
    )
    stats = StatsAccumulator(tasks, with_probs=has_probs)
    lengths: list[np.ndarray] = []
    split_events: list[np.ndarray] = []
    first_user = 1
    with EventsWriter(out / EVENTS) as writer:
        for part in parts:
            kept = pl.read_parquet(part)
            user = kept["user_id"].rank("dense").to_numpy().astype(np.int64)  # 1..users of the range
            counts = np.zeros((int(user[-1]), len(SPLITS)), dtype=np.int64)
            np.add.at(counts, (user - 1, kept["split"].to_numpy().astype(np.int64)), 1)
            columns = [
                pl.Series("user", (user + first_user - 1).astype(np.int32)),
                kept["item_id"].replace_strict(item_ids["item_id"], item_ids["item"], default=unknown,
                                               return_dtype=pl.Int32).alias("item"),
                kept["timestamp"],
                *[kept[task].cast(pl.UInt8).alias(f"label_{task}") for task in tasks],
                *([kept["action_value"]] if has_values else []),
                kept["split"].cast(pl.Int8),
                *([kept[f"prob_{task}"].cast(pl.Float64) for task in tasks] if has_probs else []),
            ]
            frame = pl.DataFrame(columns)
            unknown_events += int((frame["item"] == unknown).sum())
            writer.write(frame)
            labels = np.stack([frame[f"label_{t}"].to_numpy() for t in tasks], axis=1) if tasks else np.zeros((frame.height, 0), np.uint8)
            probs = np.stack([frame[f"prob_{t}"].to_numpy() for t in tasks], axis=1) if has_probs else None
            stats.add(frame["split"].to_numpy(), labels, probs)
            lengths.append(counts.sum(axis=1))
            split_events.append(counts)
            first_user += len(counts)

    meta = prepared_meta(
        events, settings, cutoffs, dropped,
        num_users=len(user_ids_table),
        num_items=len(item_ids),
        num_action_values=largest_value + 1 if has_values else 0,
        unknown_item=unknown_item_meta(settings, known, unknown_events) if known is not None else None,
    )
    meta["stats"] = stats.result(np.concatenate(lengths), len(item_ids))
    meta["stats"]["dropped_users"] = dropped_users
    meta["stats"]["source"] = {"events": runs.rows - copies.get(DROP_DUPLICATE, 0), "users": len(runs.user_events), "items": len(runs.item_ids)}
    write_index(out, meta, item_ids, user_ids_table, np.concatenate(split_events))
    return meta


def _user_ranges(events: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Consecutive ranges `(first, last)` (inclusive positions) of users with at most `limit`
    events each; a user with more is a range of its own."""
    ranges, first, total = [], 0, 0
    for u, n in enumerate(events.tolist()):
        if total and total + n > limit:
            ranges.append((first, u - 1))
            first, total = u, 0
        total += n
    ranges.append((first, len(events) - 1))
    return ranges


def _user_frames(runs: _Runs, chunk_events: int, drop_duplicates: bool, copies: dict[str, int]) -> Iterator[pl.DataFrame]:
    """The events of each range of users, sorted by (user id, timestamp, row); with
    `drop_duplicates` only the first of rows equal in every column (a user's copies all lie in its
    range, side by side), the others counted in `copies`."""
    user_ids = runs.user_events["user_id"]
    for lo, hi in _user_ranges(runs.user_events["events"].to_numpy(), chunk_events):
        frame = (
            pl.scan_parquet(runs.files)
            .filter(pl.col("user_id").is_between(pl.lit(user_ids[lo]), pl.lit(user_ids[hi])))
            .collect()
            .sort(["user_id", "timestamp", "_row"])
        )
        if drop_duplicates:
            first = first_copies(frame.drop("_row"))
            if first is not None:
                copies[DROP_DUPLICATE] = copies.get(DROP_DUPLICATE, 0) + frame.height - int(first.sum())
                frame = frame.filter(first)
        yield frame.drop("timestamp_ms", strict=False)


def _spill(frames: Iterator[pl.DataFrame], tmp: Path) -> list[Path]:
    """Each frame in a Parquet file of its own in `tmp`, for the passes that read them again."""
    files: list[Path] = []
    for frame in frames:
        files.append(tmp / f"users{len(files):05d}.parquet")
        frame.write_parquet(files[-1])
    return files


def _quantile_nearest(files: list[Path], rows: int, q: float) -> int:
    """polars' `quantile(q, interpolation="nearest")` of the timestamps of the `rows` events in
    `files`, found by counting them in `_QUANTILE_BINS` ever narrower bins (a few passes, one
    column each)."""
    k = int(np.floor(q * (rows - 1) + 0.5))  # the k-th smallest (0-based) is the answer
    bounds = pl.scan_parquet(files).select(pl.col("timestamp").min().alias("lo"), pl.col("timestamp").max().alias("hi"))
    lo, hi = bounds.collect().row(0)
    while lo < hi:
        width = -(-(hi - lo + 1) // _QUANTILE_BINS)
        counts = np.zeros(_QUANTILE_BINS, dtype=np.int64)
        below = 0
        for file in files:
            t = pl.read_parquet(file, columns=["timestamp"])["timestamp"].to_numpy()
            below += int(np.count_nonzero(t < lo))
            inside = t[(t >= lo) & (t <= hi)]
            counts += np.bincount((inside - lo) // width, minlength=_QUANTILE_BINS)
        b = int(np.searchsorted(below + np.cumsum(counts), k, side="right"))
        lo, hi = lo + b * width, min(hi, lo + (b + 1) * width - 1)
    return int(lo)


__all__ = ["CHUNK_EVENTS", "prepare_stream"]
