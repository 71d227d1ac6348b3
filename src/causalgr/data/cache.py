"""Reusing a prepared folder: its cache key, and the lookup that trusts a folder only under that key."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from causalgr.data.errors import DataError
from causalgr.data.events import EventTable
from causalgr.data.prepared import EVENTS, FORMAT_VERSION, META, PreparedData, load_prepared

if TYPE_CHECKING:
    from causalgr.data.sequences import PrepareSettings

log = logging.getLogger(__name__)


def cache_key(events: EventTable, settings: PrepareSettings) -> str:
    """The key a prepared folder is reused under: what was read (source, checksum, tasks, task
    definitions, read options), the preparation settings and the format version. `unknown_below`
    enters it only when on, so that folders prepared before that setting existed keep their key
    (they hold the same data)."""
    off = {"unknown_below"} if not settings.unknown_below else None
    payload = json.dumps(
        {
            "source_sha256": events.sha256,
            "source": events.source,
            "tasks": list(events.tasks),
            "task_definitions": events.task_definitions,
            "read_options": events.read_options,
            "settings": settings.model_dump(mode="json", exclude=off),
            "format_version": FORMAT_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def load_cached(out: Path, key: str) -> PreparedData | None:
    """The prepared data in `out` when its `meta.json` holds `key` and it loads, else None.

    A `meta.json` that is not reused is deleted, so a rebuild interrupted half-way never leaves
    a folder that looks prepared under the old key.
    """
    meta_path = out / META
    if not meta_path.is_file():
        return None
    try:
        cached_key = json.loads(meta_path.read_text()).get("cache_key")
    except (json.JSONDecodeError, OSError, AttributeError):
        cached_key = None
    if cached_key == key:
        try:
            return load_prepared(out)
        except (DataError, OSError, pl.exceptions.PolarsError, KeyError) as err:
            log.info("cached prepared data in %s is unreadable (%s); rebuilding", out, err)
    meta_path.unlink()
    return None


def cached_meta(out: Path, key: str) -> dict | None:
    """`meta.json` of the prepared data in `out` when it holds `key` and its files are there
    (without reading the events), else None; a `meta.json` not reused is deleted, as by
    `load_cached`."""
    meta_path = out / META
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        cached_key = meta.get("cache_key")
    except (json.JSONDecodeError, OSError, AttributeError):
        meta, cached_key = None, None
    if cached_key == key and meta.get("format_version") == FORMAT_VERSION:
        try:
            pq.read_metadata(out / EVENTS)
            return meta
        except (OSError, pa.ArrowException) as err:
            log.info("cached prepared data in %s is unreadable (%s); rebuilding", out, err)
    meta_path.unlink()
    return None
