"""Event table → prepared per-user sequences: sort, truncate, split, remap (docs/design.md §3).

`prepare` is the entry point: it reuses a folder prepared under the same cache key
(`causalgr.data.cache`), or builds the sequences with `build_sequences` and saves them. The
steps of `build_sequences`, in order:

1. check the table (required columns, integer timestamps, no nulls, labels in {0, 1}); on a
   table marked `drop_duplicates` (a read source) keep the first of rows equal in every column;
2. sort each user's events by (timestamp, original row order), so ties keep the source order;
3. keep the most recent `max_len` events of every user (older rows are dropped and counted);
4. split: per user by position (`split="user"`), or by two global time cut-offs
   (`split="time"`, users left without a training event are dropped and counted);
5. remap ids densely *after* dropping, so the vocabulary holds exactly the kept ids: users
   1..U and items 1..I in ascending order of their original id (0 is padding); an item seen
   only in dropped rows gets no id;
6. with `unknown_below` = k > 0, items with fewer than k training-split events lose their id:
   every event of theirs (in every split) becomes the *unknown item*, dense id I + 1, where I
   now counts the items that kept theirs. A model trained on it learns that row as "an item we
   know nothing about", and serving uses it for ids it does not know (docs/serving.md).

Everything is vectorised (polars sort, numpy gathers); no Python loop touches users or events.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from collections.abc import Callable
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, Field, model_validator

from causalgr.data.cache import cache_key, load_cached
from causalgr.data.errors import DataError
from causalgr.data.events import EventTable
from causalgr.data.prepared import FORMAT_VERSION, SPLITS, PreparedData, save_prepared
from causalgr.data.stats import compute_stats

log = logging.getLogger(__name__)

DROP_TRUNCATED = "older than the most recent max_len events of the user"
DROP_NO_TRAIN = "user has no training event before valid_start (time split)"
DROP_DUPLICATE = "duplicate row"

# floor(frac * n) computed in floating point can land just below an integer (0.29 * 100 =
# 28.999…); this nudge makes the count the one a reader would compute by hand.
_FLOOR_EPS = 1e-9


class PrepareSettings(BaseModel, extra="forbid"):
    """How an event table becomes prepared sequences."""

    max_len: int = Field(512, ge=1, description="keep the most recent max_len events of each user")
    split: Literal["user", "time"] = "user"
    valid_frac: float = Field(0.1, ge=0.0, lt=1.0, description="user split: share of each user's events for validation")
    test_frac: float = Field(0.1, ge=0.0, lt=1.0, description="user split: share of each user's events for test")
    valid_start: int | None = Field(None, description="time split: first validation timestamp (default: 0.8 quantile)")
    test_start: int | None = Field(None, description="time split: first test timestamp (default: 0.9 quantile)")
    unknown_below: int = Field(
        0, ge=0, description="items with fewer training-split events than this become one trained unknown item "
        "(dense id num_items + 1), the row serving uses for ids it does not know; 0 = off"
    )

    @model_validator(mode="after")
    def _check(self) -> "PrepareSettings":
        if self.valid_frac + self.test_frac >= 1.0:
            raise ValueError(
                f"valid_frac + test_frac must be < 1 so every user keeps a training event, "
                f"got {self.valid_frac} + {self.test_frac}"
            )
        if self.valid_start is not None and self.test_start is not None and self.valid_start > self.test_start:
            raise ValueError(f"valid_start ({self.valid_start}) must be <= test_start ({self.test_start})")
        return self


def prepare(events: EventTable, out: Path | str, settings: PrepareSettings | None = None) -> PreparedData:
    """Build and save the prepared dataset of `events` in `out`, or load it when `out` already
    holds one made under the same cache key (`causalgr.data.cache.cache_key`)."""
    settings = settings or PrepareSettings()
    out = Path(out)
    key = cache_key(events, settings)
    cached = load_cached(out, key)
    if cached is not None:
        log.info("using cached prepared data in %s (cache key %s)", out, key[:12])
        return cached
    start = time.perf_counter()
    data, item_ids, user_ids = build_sequences(events, settings)
    save_prepared(data, out, item_ids, user_ids)
    log.info(
        "prepared %s: %d users, %d items, %d events in %.1f s -> %s",
        events.source, data.num_users, data.num_items, len(data.items), time.perf_counter() - start, out,
    )
    return data


def build_sequences(
    events: EventTable, settings: PrepareSettings | None = None
) -> tuple[PreparedData, pl.DataFrame, pl.DataFrame]:
    """Per-user, time-ordered, truncated and split sequences of `events`.

    Returns `(data, item_ids, user_ids)`: `item_ids` (`item` int32 1..I, `item_id`) and
    `user_ids` (`user` int32 1..U, `user_id`) map dense ids back to the source's ids.
    `data.meta["stats"]` holds `causalgr.data.stats.compute_stats`, plus `dropped_users`
    ({reason: users}) and `source` (events, users and items of the source, before truncation
    and splitting).
    """
    settings = settings or PrepareSettings()
    tasks = tuple(events.tasks)
    frame = checked_frame(events.collect(), events.source, tasks)
    copies: dict[str, int] = {}
    if events.drop_duplicates:
        first = first_copies(frame)
        if first is not None:
            _count(copies, DROP_DUPLICATE, frame.height - int(first.sum()))
            frame = frame.filter(first)
    has_values = "action_value" in frame.columns
    has_probs = all(f"prob_{t}" in frame.columns for t in tasks) and len(tasks) > 0

    # Dense codes over all input ids (ascending original id); compacted after dropping rows.
    frame = frame.with_columns(
        pl.col("user_id").rank("dense").alias("_user"),
        pl.col("item_id").rank("dense").alias("_item"),
    )
    # Stable sort: events of a user with equal timestamps keep their original row order.
    frame = frame.sort(["_user", "timestamp"], maintain_order=True)

    user = frame["_user"].to_numpy().astype(np.int64)  # [E], 1..U0, non-decreasing
    timestamps = frame["timestamp"].to_numpy()
    cutoffs = None
    if settings.split == "time":
        cutoffs = time_cutoffs(settings, events.source, lambda q: int(frame["timestamp"].quantile(q, interpolation="nearest")))
    keep, split, dropped, orphan_users = truncate_and_split(user, timestamps, settings, cutoffs)
    dropped = {**copies, **dropped}
    counts = np.bincount(user)
    if not keep.any():
        raise DataError(f"{events.source}: no events left after truncation and splitting ({dropped})")

    user_ids, new_user = _compact_ids(frame["user_id"], user, keep, "user")
    item_code = frame["_item"].to_numpy()
    item_ids, new_item = _compact_ids(frame["item_id"], item_code, keep, "item")

    items = new_item[item_code[keep]]
    unknown_item = None
    if settings.unknown_below:
        known = known_items(np.bincount(items[split[keep] == SPLITS["train"]], minlength=len(item_ids) + 1)[1:],
                            settings.unknown_below, events.source)
        unknown_item = unknown_item_meta(settings, known, int(np.count_nonzero(~known[items - 1])))
        dense = np.concatenate([[0], np.cumsum(known)])  # [I + 1]: old dense id → new, for known items
        items = np.where(known[items - 1], dense[items], int(dense[-1]) + 1)
        item_ids = item_ids.filter(pl.Series(known)).with_columns(
            pl.int_range(1, int(dense[-1]) + 1, dtype=pl.Int32).alias("item"))

    kept_user = new_user[user[keep]]
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(np.bincount(kept_user, minlength=len(user_ids) + 1)[1:], out=offsets[1:])
    num_events = int(offsets[-1])
    labels = np.empty((num_events, len(tasks)), dtype=np.uint8)
    for t, task in enumerate(tasks):
        labels[:, t] = frame[task].to_numpy()[keep]
    action_values = frame["action_value"].fill_null(0).to_numpy()[keep].astype(np.int16) if has_values else None
    true_probs = None
    if has_probs:
        true_probs = np.empty((num_events, len(tasks)), dtype=np.float64)
        for t, task in enumerate(tasks):
            true_probs[:, t] = frame[f"prob_{task}"].to_numpy()[keep]

    data = PreparedData(
        offsets=offsets,
        items=items.astype(np.int32),
        timestamps=timestamps[keep].astype(np.int64),
        labels=labels,
        action_values=action_values,
        split=split[keep],
        true_probs=true_probs,
        meta=prepared_meta(
            events, settings, cutoffs, dropped,
            num_users=len(user_ids),
            num_items=len(item_ids),
            num_action_values=int(action_values.max()) + 1 if action_values is not None else 0,
            unknown_item=unknown_item,
        ),
    )
    data.meta["stats"] = compute_stats(data)
    data.meta["stats"]["dropped_users"] = orphan_users
    data.meta["stats"]["source"] = {  # what the source held, before truncation and splitting
        "events": len(user),
        "users": len(counts) - 1,
        "items": int(item_code.max()),
    }
    return data, item_ids, user_ids


def first_copies(frame: pl.DataFrame) -> pl.Series | None:
    """True at the first of the rows equal in every column of `frame` (in its order), false at
    their later copies (one event logged twice); None when no row repeats.

    Row hashes find the candidates cheaply (a sort of 10M u64 takes well under a second); only
    rows whose hash repeats are compared in full, so hash collisions never drop a row.
    """
    if frame.height < 2:
        return None
    hashes = frame.hash_rows()
    ordered = hashes.sort()
    later = ordered.slice(1)
    repeated = later.filter(later == ordered.slice(0, len(ordered) - 1))
    if repeated.is_empty():
        return None
    candidates = hashes.is_in(repeated.unique().implode())
    distinct = frame.filter(candidates).select(pl.struct(pl.all()).is_first_distinct()).to_series()
    if distinct.all():
        return None
    first = pl.repeat(True, frame.height, eager=True)
    return first.scatter(candidates.arg_true().filter(~distinct), False)


def truncate_and_split(
    user: np.ndarray, timestamps: np.ndarray, settings: PrepareSettings, cutoffs: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray, dict[str, int], dict[str, int]]:
    """Steps 3 and 4 for events sorted by (user, time): `user` [E] the users' codes, non-decreasing
    (gaps allowed), `cutoffs` `(valid_start, test_start)` for the time split.

    Returns `keep` [E] (bool), `split` [E] (int8, `SPLITS` codes), the dropped rows
    ({reason: rows}) and the dropped users ({reason: users}). A user's result depends on that
    user's events only, so any set of whole users can be done on its own.
    """
    counts = np.bincount(user)  # [U0 + 1]
    starts = np.cumsum(counts) - counts
    # back = 0 for a user's most recent event, 1 for the one before, …
    back = counts[user] - 1 - (np.arange(len(user)) - starts[user])
    keep = back < settings.max_len
    dropped: dict[str, int] = {}
    _count(dropped, DROP_TRUNCATED, int(len(keep) - keep.sum()))
    dropped_users: dict[str, int] = {}
    if settings.split == "user":
        kept_len = np.minimum(counts, settings.max_len)
        n_test = np.floor(settings.test_frac * kept_len + _FLOOR_EPS).astype(np.int64)
        n_eval = n_test + np.floor(settings.valid_frac * kept_len + _FLOOR_EPS).astype(np.int64)
        split = np.where(back < n_test[user], SPLITS["test"], np.where(back < n_eval[user], SPLITS["valid"], SPLITS["train"]))
        split = split.astype(np.int8)
    else:
        valid_start, test_start = cutoffs
        split = np.full(len(user), SPLITS["train"], dtype=np.int8)
        split[timestamps >= valid_start] = SPLITS["valid"]
        split[timestamps >= test_start] = SPLITS["test"]
        has_train = np.bincount(user[keep & (split == SPLITS["train"])], minlength=len(counts)) > 0
        orphan = keep & ~has_train[user]
        _count(dropped, DROP_NO_TRAIN, int(orphan.sum()))
        n_orphan_users = int(np.count_nonzero((counts > 0) & ~has_train))
        if n_orphan_users:
            dropped_users[DROP_NO_TRAIN] = n_orphan_users
        keep &= ~orphan
    return keep, split, dropped, dropped_users


def prepared_meta(
    events: EventTable,
    settings: PrepareSettings,
    cutoffs: tuple[int, int] | None,
    dropped: dict[str, int],
    *,
    num_users: int,
    num_items: int,
    num_action_values: int,
    unknown_item: dict | None = None,
) -> dict:
    """`meta.json` of a prepared dataset, less its `stats`; `unknown_item` (`unknown_item_meta`)
    only when `settings.unknown_below` is on, so that the folders prepared without it stay as they were."""
    if settings.split == "user":
        split_meta = {"kind": "user", "valid_frac": settings.valid_frac, "test_frac": settings.test_frac}
    else:
        split_meta = {"kind": "time", "valid_start": cutoffs[0], "test_start": cutoffs[1]}
    merged = dict(events.dropped)
    for reason, rows in dropped.items():
        _count(merged, reason, rows)
    return {
        "format_version": FORMAT_VERSION,
        "source": events.source,
        "tasks": list(events.tasks),
        "task_definitions": dict(events.task_definitions),
        "read_options": dict(events.read_options),
        "num_users": num_users,
        "num_items": num_items,
        "num_action_values": num_action_values,
        "max_len": settings.max_len,
        "split": split_meta,
        "source_sha256": events.sha256,
        "cache_key": cache_key(events, settings),
        "dropped": merged,
        **({"unknown_item": unknown_item} if unknown_item is not None else {}),
    }


def known_items(train_events: np.ndarray, below: int, source: str) -> np.ndarray:
    """Which items keep their own id (bool [I]) given their training-split events [I]: those with
    at least `below`; the rest become the unknown item. `DataError` if none is left."""
    known = train_events >= below
    if not known.any():
        raise DataError(f"{source}: unknown_below {below}: no item has that many training events, "
                        f"the most is {int(train_events.max(initial=0))}")
    return known


def unknown_item_meta(settings: PrepareSettings, known: np.ndarray, events: int) -> dict:
    """`meta.json`'s record of step 6: the threshold, and the items and events that became the unknown item."""
    return {"below": settings.unknown_below, "items": int(np.count_nonzero(~known)), "events": events}


def checked_frame(frame: pl.DataFrame, source: str, tasks: tuple[str, ...], first_row: int = 0) -> pl.DataFrame:
    """The columns preparation reads, after one-line `DataError`s for anything malformed.

    `frame` holds event rows `first_row`, `first_row + 1`, … of the table (errors name them so).
    """
    required = ["user_id", "item_id", "timestamp", *tasks]
    for column in required:
        if column not in frame.columns:
            raise DataError(f"{source}: event table has no column {column!r}")
    if frame.height == 0:
        raise DataError(f"{source}: no events")
    if not frame.schema["timestamp"].is_integer():
        raise DataError(f"{source}: column 'timestamp' must hold integer seconds, got {frame.schema['timestamp']}")
    optional = ["action_value"] if "action_value" in frame.columns else []
    if tasks and all(f"prob_{t}" in frame.columns for t in tasks):
        optional += [f"prob_{t}" for t in tasks]
    if "timestamp_ms" in frame.columns:
        optional.append("timestamp_ms")
    frame = frame.select(required + optional)
    nulls = frame.null_count().row(0, named=True)
    for column in required + [c for c in optional if c != "action_value"]:
        if nulls[column]:
            row = int(frame[column].is_null().arg_true()[0])
            raise DataError(f"{source}: event row {first_row + row}, column {column!r}: missing value")
    for task in tasks:
        col = frame[task]
        if not (col.dtype.is_integer() or col.dtype == pl.Boolean):
            raise DataError(f"{source}: column {task!r}: labels must be 0/1 integers, got {col.dtype}")
        bad = (col.cast(pl.Int64) < 0) | (col.cast(pl.Int64) > 1)
        if bad.any():
            row = int(bad.arg_true()[0])
            raise DataError(f"{source}: event row {first_row + row}, column {task!r}: label {col[row]} is not 0 or 1")
    if "action_value" in frame.columns:
        lowest = frame["action_value"].min()
        if lowest is not None and lowest < 0:
            row = int(frame["action_value"].arg_min())
            raise DataError(f"{source}: event row {first_row + row}, column 'action_value': negative value {lowest}")
    return frame.with_columns(pl.col("timestamp").cast(pl.Int64), *[pl.col(t).cast(pl.UInt8) for t in tasks])


def time_cutoffs(settings: PrepareSettings, source: str, quantile: Callable[[float], int]) -> tuple[int, int]:
    """(valid_start, test_start): the settings', else `quantile(0.8)` / `quantile(0.9)` of all
    input timestamps (the nearest actual timestamp)."""
    valid_start = settings.valid_start if settings.valid_start is not None else quantile(0.8)
    test_start = settings.test_start if settings.test_start is not None else quantile(0.9)
    if valid_start > test_start:
        raise DataError(
            f"{source}: time split needs valid_start <= test_start, got {valid_start} > {test_start} "
            "(set both explicitly)"
        )
    return int(valid_start), int(test_start)


def _compact_ids(
    original: pl.Series, code: np.ndarray, keep: np.ndarray, name: str
) -> tuple[pl.DataFrame, np.ndarray]:
    """Renumber the codes of kept rows densely 1..K in code order.

    Returns the id table (`name` int32 1..K, `name_id` original) and `new` with
    `new[code] = dense id` for every kept code.
    """
    size = int(code.max()) + 1
    present = np.zeros(size, dtype=bool)
    present[code[keep]] = True
    new = np.cumsum(present).astype(np.int64)
    # Any one row per code names its original id (all rows of a code share it).
    row_of = np.zeros(size, dtype=np.int64)
    row_of[code] = np.arange(len(code))
    kept_codes = np.flatnonzero(present)
    table = pl.DataFrame(
        {
            name: np.arange(1, len(kept_codes) + 1, dtype=np.int32),
            f"{name}_id": original.gather(row_of[kept_codes]),
        }
    )
    return table, new


def _count(counts: dict[str, int], reason: str, rows: int) -> None:
    if rows:
        counts[reason] = counts.get(reason, 0) + rows


__all__ = [
    "PrepareSettings",
    "build_sequences",
    "prepare",
    "DROP_DUPLICATE",
    "DROP_TRUNCATED",
    "DROP_NO_TRAIN",
]
