"""Small files in every source format, and what preparing each one gave before sources were read
in batches (`tests/expected/prepared_sources.json`, written by the whole-file reader of commit
aa9d86b: `load_source` then `prepare_stream`).

The files hold what makes reading hard: ties in time, users longer than `max_len`, an item seen
only in dropped rows, exact duplicates far apart in the file, blank lines, missing labels, string
tokens, fractional seconds, date-time strings, KuaiRand events in one second but distinct
milliseconds. They are written with relative paths (run from the folder holding them), so that
`source` and the cache key do not depend on where the test runs.

    PYTHONPATH=src .venv/bin/python tests/source_cases.py   # rewrites the expectations
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

EXPECTED = Path(__file__).parent / "expected" / "prepared_sources.json"
KUAIRAND_HEADER = (
    "user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
    "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab"
)
# name → (source, path, load_source options, PrepareSettings fields)
CASES = {
    "udata-user": ("ml-100k", "u.data", {}, {"max_len": 12}),
    "udata-time": ("ml-100k", "u.data", {}, {"max_len": 12, "split": "time"}),
    "udata-unknown": ("ml-100k", "u.data", {}, {"max_len": 12, "unknown_below": 3}),
    "ml100k-inter": ("ml-100k", "ml-100k.inter", {}, {"max_len": 12}),
    "ml1m-dat": ("ml-1m", "ratings.dat", {}, {"max_len": 12, "split": "time"}),
    "ml20m-csv": ("ml-20m", "ratings.csv", {}, {"max_len": 12}),
    "kuairand": ("kuairand-1k", "KuaiRand-1K", {"include_random": True}, {"max_len": 10}),
    "recbole-tokens": ("recbole:x.inter", None, {"tasks": ["click=clicked", "long=watch>=30"]}, {"max_len": 8}),
    "table-csv-dates": ("table:t.csv", None, {"user_col": "uid", "item_col": "movie", "time_col": "when",
                        "tasks": ["like=stars>=4", "share=shared"], "action_value_col": "stars"},
                        {"max_len": 8, "split": "time"}),  # fmt: skip
    "table-tsv-seconds": ("table:s.tsv", None, {"tasks": ["y"]}, {"max_len": 8}),
    "table-parquet": ("table:t.parquet", None, {"tasks": ["click=clicked", "good=score>0.5"]}, {"max_len": 8}),
}


def write_sources(folder: Path) -> None:
    """Every case's source file(s) in `folder`."""
    rng = np.random.default_rng(12)
    ratings = _ratings(rng, users=40, items=60)
    (folder / "u.data").write_text(_lines(ratings[:70], "\t") + "\n" + _lines(ratings[70:], "\t"))  # a blank line
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (folder / "ml-100k.inter").write_text(inter + _lines(ratings, "\t"))
    (folder / "ratings.dat").write_text(_lines(ratings, "::"))
    half = [(u, i, r - 0.5 * (t % 2), t) for u, i, r, t in ratings]
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + _lines(half, ","))

    data = folder / "KuaiRand-1K" / "data"
    data.mkdir(parents=True)
    for name, part in (("log_standard_4_08_to_4_21_1k.csv", 0), ("log_standard_4_22_to_5_08_1k.csv", 1),
                       ("log_random_4_22_to_5_08_1k.csv", 2)):  # fmt: skip
        lines = [KUAIRAND_HEADER]
        for k in range(90):
            user, video = int(rng.integers(0, 12)), int(rng.integers(0, 30))
            time_ms = 1_649_412_000_000 + 1000 * int(rng.integers(0, 40)) + int(rng.integers(0, 3))
            flags = rng.integers(0, 2, size=8)
            lines.append(f"{user},{video},20220422,1200,{time_ms},{flags[0]},{flags[1]},{flags[2]},{flags[3]},"
                         f"{flags[4]},{flags[5]},{flags[6]},5000,10000,0,0,{flags[7]},{int(part == 2)},1")  # fmt: skip
            if k % 17 == 3:
                lines.append(lines[-1])
        lines.insert(60, lines[5])  # a duplicate far from its first copy
        (data / name).write_text("\n".join(lines) + "\n")

    rows = []
    for _ in range(160):
        user, item = f"u{int(rng.integers(0, 25))}", f"{int(rng.integers(0, 30)):03d}"
        rows.append(f"s\t{user}\t{item}\t{int(rng.integers(0, 2))}\t{rng.uniform(0, 60):.1f}\t{rng.uniform(1e6, 1e6 + 500):.2f}")
    rows.insert(120, rows[7])
    (folder / "x.inter").write_text(
        "session:token\tuser_id:token\titem_id:token\tclicked:float\twatch:float\ttimestamp:float\n" + "\n".join(rows) + "\n"
    )

    start = dt.datetime(2024, 5, 1, 12)
    lines = ["uid,movie,when,stars,shared"]
    for k in range(180):
        when = start + dt.timedelta(minutes=int(rng.integers(0, 300)))
        shared = "" if k % 41 == 5 else str(int(rng.integers(0, 2)))  # a missing label now and then
        lines.append(f"a{int(rng.integers(0, 20))},m{int(rng.integers(0, 40))},{when:%Y-%m-%d %H:%M:%S},{int(rng.integers(1, 6))},{shared}")
        if k == 90:
            lines.append("")
    lines.insert(150, lines[3])
    (folder / "t.csv").write_text("\n".join(lines) + "\n")

    lines = ["user_id\titem_id\ttimestamp\ty"]
    for _ in range(150):
        lines.append(f"{int(rng.integers(0, 20))}\t{int(rng.integers(0, 30))}\t{rng.uniform(0, 1000):.3f}\t{int(rng.integers(0, 2))}")
    lines.insert(100, lines[2])
    (folder / "s.tsv").write_text("\n".join(lines) + "\n")

    n = 200
    frame = pl.DataFrame({
        "user_id": rng.integers(0, 25, n), "item_id": rng.integers(100, 140, n),
        "timestamp": [start + dt.timedelta(seconds=int(s)) for s in rng.integers(0, 5000, n)],
        "clicked": rng.random(n) < 0.4, "score": rng.random(n),
    })  # fmt: skip
    pl.concat([frame, frame.slice(10, 3)]).write_parquet(folder / "t.parquet", row_group_size=50)


def _ratings(rng: np.random.Generator, users: int, items: int) -> list[tuple[int, int, int, int]]:
    rows = []
    for user in rng.permutation(users):
        for _ in range(int(rng.integers(1, 30))):
            rows.append((int(user) * 7 + 3, int(rng.integers(1, items)), int(rng.integers(1, 6)), int(rng.integers(0, 50))))
    rows.insert(len(rows) - 20, rows[5])  # the same event twice, far apart
    return rows


def _lines(rows, separator: str) -> str:
    return "".join(separator.join(str(v) for v in row) + "\n" for row in rows)


def digest(folder: Path) -> dict:
    """What a prepared folder holds: `meta.json`, each Parquet file's schema and rows (sha256 of
    their CSV text), and the row-group sizes of `events.parquet`."""
    from causalgr.data.prepared import EVENTS, ITEM_IDS, META, USER_EVENTS, USER_IDS

    files = {}
    for name in (EVENTS, ITEM_IDS, USER_IDS, USER_EVENTS):
        frame = pl.read_parquet(folder / name)
        files[name] = hashlib.sha256((str(frame.schema) + frame.write_csv()).encode()).hexdigest()
    metadata = pq.ParquetFile(folder / EVENTS).metadata
    groups = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
    return {"meta": json.loads((folder / META).read_text()), "files": files, "row_groups": groups}


def prepare_case(name: str, out: Path) -> dict:
    """Prepare case `name` (from the folder holding the sources) into `out`, as `causalgr data prepare` does."""
    from causalgr.data.sequences import PrepareSettings
    from causalgr.data.sources import load_source
    from causalgr.data.stream import prepare_stream

    source, path, options, settings = CASES[name]
    prepare_stream(load_source(source, path, **options), out, PrepareSettings(**settings), chunk_events=64)
    return digest(out)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        write_sources(Path(tmp))
        expected = {name: prepare_case(name, Path(tmp) / "out" / name) for name in CASES}
    EXPECTED.parent.mkdir(exist_ok=True)
    EXPECTED.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(expected)} cases to {EXPECTED}", file=sys.stderr)


if __name__ == "__main__":
    main()
