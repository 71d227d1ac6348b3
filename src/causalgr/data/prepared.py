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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from causalgr.data.errors import DataError

FORMAT_VERSION = 1
# The files of a prepared-dataset folder (the module docstring describes each).
EVENTS, META, ITEM_IDS, USER_IDS = "events.parquet", "meta.json", "item_ids.parquet", "user_ids.parquet"
SPLITS = {"train": 0, "valid": 1, "test": 2}


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

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.meta["tasks"])

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_items(self) -> int:
        return int(self.meta["num_items"])

    @property
    def max_len(self) -> int:
        return int(self.meta["max_len"])

    @property
    def num_action_values(self) -> int:
        return int(self.meta.get("num_action_values", 0))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


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
    events_frame(data).write_parquet(out / EVENTS)
    item_ids.write_parquet(out / ITEM_IDS)
    user_ids.write_parquet(out / USER_IDS)
    meta = {"format_version": FORMAT_VERSION, **data.meta}
    (out / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_prepared(path: Path | str) -> PreparedData:
    """Read a prepared-dataset folder; a clear `DataError` if it is not one."""
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
    frame = pl.read_parquet(events_path)
    tasks = meta["tasks"]
    users = frame["user"].to_numpy()
    counts = np.bincount(users, minlength=meta["num_users"] + 1)[1:]
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
    )
