"""Benchmark (not a test): time and peak memory to prepare N random events (default 10 million).

The events come straight from numpy (skewed user activity, so some users are truncated), with
three tasks, their "true" probabilities and a 1–5 action value, like a synthetic dataset.

    .venv/bin/python scripts/bench_prepare.py [--events 10000000] [--split user|time]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from causalgr.data.events import EventTable
from causalgr.cli.data import format_stats
from causalgr.data.sequences import PrepareSettings, prepare


def peak_rss_bytes() -> int:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def random_events(num_events: int, num_users: int, num_items: int, seed: int) -> EventTable:
    rng = np.random.default_rng(seed)
    tasks = ("click", "like", "share")
    user_names = rng.choice(2**40, size=num_users, replace=False)  # sparse original ids
    item_names = rng.choice(2**40, size=num_items, replace=False)
    user = (num_users * rng.random(num_events) ** 2).astype(np.int64)  # skewed activity
    item = (num_items * rng.random(num_events) ** 3).astype(np.int64)  # skewed popularity
    columns = {
        "user_id": user_names[user],
        "item_id": item_names[item],
        "timestamp": rng.integers(1_600_000_000, 1_600_000_000 + 365 * 86_400, size=num_events),
    }
    probs = {}
    for t, task in enumerate(tasks):
        p = rng.random(num_events, dtype=np.float64) * (0.6 / (t + 1))
        probs[f"prob_{task}"] = p
        columns[task] = (rng.random(num_events) < p).astype(np.uint8)
    columns["action_value"] = rng.integers(1, 6, size=num_events, dtype=np.int16)
    columns.update(probs)
    frame = pl.DataFrame(columns)
    return EventTable(frame=frame, tasks=tasks, source="bench:random", sha256=f"bench-{num_events}-{seed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=500_000)
    parser.add_argument("--split", choices=["user", "time"], default="user")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder to write (default: a temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    start = time.perf_counter()
    events = random_events(args.events, args.users, args.items, args.seed)
    generate_s = time.perf_counter() - start
    rss_after_generate = peak_rss_bytes()

    settings = PrepareSettings(max_len=args.max_len, split=args.split)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "prepared"
        start = time.perf_counter()
        data = prepare(events, out, settings)
        prepare_s = time.perf_counter() - start
        start = time.perf_counter()
        prepare(events, out, settings)
        cached_s = time.perf_counter() - start
    print(format_stats(data.meta))
    result = {
        "events_in": args.events,
        "events_out": int(len(data.items)),
        "split": args.split,
        "generate_seconds": round(generate_s, 2),
        "prepare_seconds": round(prepare_s, 2),
        "cached_prepare_seconds": round(cached_s, 2),
        "peak_rss_after_generate_bytes": rss_after_generate,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_gib": round(peak_rss_bytes() / 2**30, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
