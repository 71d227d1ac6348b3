"""Benchmark (not a test): time and peak memory of streaming preparation and of one rank's loader.

Each step runs in a process of its own, so its peak RSS is its own (`os.wait4`):

- `generate`: N random events (skewed user activity, so some users are truncated; three tasks,
  their "true" probabilities, a 1–5 action value) written to a Parquet file chunk by chunk, so
  the generator never holds them all;
- `prepare`: that file, read in Arrow record batches, through `prepare_stream` (what
  `causalgr data prepare` runs after reading a source);
- `table`: `causalgr data prepare table:<that file>` (tasks click, like, share; action value),
  the command itself reading the source;
- `ml20m`: the events as an ml-20m `ratings.csv` (written in the step `ratings`; half stars:
  rating = action value − click / 2), through `causalgr data prepare ml-20m`;
- `synth`: `causalgr data synth` with about N events (users × --events-mean);
- `loader`: rank 0 of --ranks reading its share of the `prepare` output
  (`load_prepared(share=…)`) and building every training batch of one epoch.

    .venv/bin/python scripts/bench_prepare.py --events 10000000 --work /tmp/bench [--steps generate,prepare,table,ratings,ml20m,synth,loader]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import polars as pl

TASKS = ("click", "like", "share")
_CHUNK = 1 << 20


def write_random_events(path: Path, num_events: int, num_users: int, num_items: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    user_names = rng.choice(2**40, size=num_users, replace=False)  # sparse original ids
    item_names = rng.choice(2**40, size=num_items, replace=False)
    with pq.ParquetWriter(path, _schema()) as writer:
        for start in range(0, num_events, _CHUNK):
            n = min(_CHUNK, num_events - start)
            user = (num_users * rng.random(n) ** 2).astype(np.int64)  # skewed activity
            item = (num_items * rng.random(n) ** 3).astype(np.int64)  # skewed popularity
            columns = {
                "user_id": user_names[user],
                "item_id": item_names[item],
                "timestamp": rng.integers(1_600_000_000, 1_600_000_000 + 365 * 86_400, size=n),
            }
            probs = {f"prob_{task}": rng.random(n) * (0.6 / (t + 1)) for t, task in enumerate(TASKS)}
            for task in TASKS:
                columns[task] = (rng.random(n) < probs[f"prob_{task}"]).astype(np.uint8)
            columns["action_value"] = rng.integers(1, 6, size=n, dtype=np.int16)
            columns.update(probs)
            writer.write_table(pa.table(columns, schema=_schema()))


def _schema() -> pa.Schema:
    fields = [("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64())]
    fields += [(task, pa.uint8()) for task in TASKS] + [("action_value", pa.int16())]
    fields += [(f"prob_{task}", pa.float64()) for task in TASKS]
    return pa.schema(fields)


def step_prepare(events_file: Path, out: Path, max_len: int, split: str, chunk_events: int) -> None:
    from causalgr.data.events import EventTable
    from causalgr.data.sequences import PrepareSettings
    from causalgr.data.stream import CHUNK_EVENTS, prepare_stream

    events = EventTable(
        frame=None, chunks=lambda: parquet_chunks(events_file), tasks=TASKS, source="bench:random", sha256=events_file.name
    )
    prepare_stream(events, out, PrepareSettings(max_len=max_len, split=split), chunk_events=chunk_events or CHUNK_EVENTS)


def write_ratings_csv(events_file: Path, path: Path) -> None:
    """The events as GroupLens ml-20m `ratings.csv`, written chunk by chunk."""
    import polars as pl

    with open(path, "w") as out:
        out.write("userId,movieId,rating,timestamp\n")
        for chunk in parquet_chunks(events_file):
            ratings = chunk.select(
                pl.col("user_id").alias("userId"), pl.col("item_id").alias("movieId"),
                (pl.col("action_value") - pl.col("click") / 2).alias("rating"), "timestamp",
            )  # fmt: skip
            ratings.write_csv(out, include_header=False)


def parquet_chunks(path: Path) -> Iterator[pl.DataFrame]:
    """The rows of a Parquet file as frames of at most `_CHUNK` rows, holding one at a time.

    Without `pre_buffer=False`, pyarrow reads the row groups' raw bytes ahead and keeps them all
    until the last batch: a reader as large as the file (1.3 GiB of 2.7 at 30M events)."""
    import polars as pl

    for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=_CHUNK):
        yield pl.from_arrow(batch)


def step_loader(prepared: Path, rank: int, ranks: int) -> dict:
    from causalgr.data.loader import SequenceLoader
    from causalgr.data.prepared import load_prepared

    data = load_prepared(prepared, share=(rank, ranks))
    loader = SequenceLoader(data, "train", batch_size=64, shuffle=True)
    rows = 0
    for users in loader.batch_users():
        mine = users[loader.holds(users)]
        if len(mine):
            rows += len(loader.make_batch(mine).lengths)
    return {"events_held": int(len(data.items)), "users_held": rows, "users": data.num_users}


def run_step(argv: list[str]) -> dict:
    """Run one step in a fresh process: its wall time, CPU time and peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"step failed: {' '.join(argv)}")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: kilobytes on Linux
    result = {
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),  # not stretched by other jobs
        "peak_rss_gib": round(usage.ru_maxrss * scale / 2**30, 2),
    }
    lines = output.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        result.update(json.loads(lines[-1]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=0, help="default: events / 50")
    parser.add_argument("--items", type=int, default=500_000)
    parser.add_argument("--split", choices=["user", "time"], default="user")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--chunk-events", type=int, default=0, help="prepare_stream's chunk; default CHUNK_EVENTS")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, required=True, help="folder for the data (deleted afterwards)")
    parser.add_argument("--steps", default="generate,prepare,synth,loader")
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)  # one step, in its own process
    args = parser.parse_args()
    users = args.users or max(1, args.events // 50)
    events_file, prepared, synth = args.work / "events.parquet", args.work / "prepared", args.work / "synth"
    ratings = args.work / "ratings.csv"

    if args.step == "generate":
        write_random_events(events_file, args.events, users, args.items, args.seed)
        return
    if args.step == "prepare":
        step_prepare(events_file, prepared, args.max_len, args.split, args.chunk_events)
        return
    if args.step == "ratings":
        write_ratings_csv(events_file, ratings)
        return
    if args.step == "loader":
        print(json.dumps(step_loader(prepared, 0, args.ranks)))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, __file__, "--events", str(args.events), "--users", str(users), "--items", str(args.items),
          "--split", args.split, "--max-len", str(args.max_len),
          "--chunk-events", str(args.chunk_events), "--ranks", str(args.ranks), "--seed", str(args.seed),
          "--work", str(args.work)]  # fmt: skip
    results: dict = {"events": args.events, "users": users, "split": args.split, "max_len": args.max_len,
                     "chunk_events": args.chunk_events}
    steps = args.steps.split(",")
    prepare = [sys.executable, "-m", "causalgr.cli", "data", "prepare", "--max-len", str(args.max_len), "--split", args.split]
    sources = {
        "table": [f"table:{events_file}", *(f"--task={task}" for task in TASKS), "--action-value-col", "action_value"],
        "ml20m": ["ml-20m", "--path", str(ratings)],
    }
    try:
        for step in steps:
            if step in sources:  # `causalgr data prepare` reading the source itself
                out = args.work / f"prepared-{step}"
                results[step] = run_step([*prepare, *sources[step], "--out", str(out)])
                shutil.rmtree(out, ignore_errors=True)
            elif step == "synth":
                mean = args.events / users
                argv = [sys.executable, "-m", "causalgr.cli", "data", "synth", "--out", str(synth),
                        "--users", str(users), "--items", str(min(args.items, 20_000)), "--events-mean", str(mean),
                        "--events-min", "5", "--events-max", str(int(4 * mean)), "--max-len", str(args.max_len)]  # fmt: skip
                results["synth"] = run_step(argv)
                shutil.rmtree(synth, ignore_errors=True)
            else:
                results[step] = run_step([*me, "--step", step])
            print(json.dumps({step: results[step]}), flush=True)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
