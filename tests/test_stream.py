"""Streaming preparation equals the in-memory one; a rank reads its own row groups only."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import causalgr.data.prepared as prepared
import causalgr.data.sources as sources
from causalgr.data.errors import DataError
from causalgr.data.events import EventTable
from causalgr.data.loader import SequenceLoader
from causalgr.data.prepared import EVENTS, ITEM_IDS, META, USER_EVENTS, USER_IDS, load_prepared, rank_users
from causalgr.data.sequences import PrepareSettings, prepare
from causalgr.data.sources import load_source
from causalgr.data.stream import prepare_stream
from causalgr.data.synth import SynthSettings, generate, synthetic_events
from source_cases import CASES, EXPECTED, digest, prepare_case, write_sources

FILES = (EVENTS, ITEM_IDS, USER_IDS, USER_EVENTS)


def assert_same_folder(a, b):
    """Every file of two prepared folders holds the same data (and events.parquet the same row groups)."""
    assert (a / META).read_text() == (b / META).read_text()
    for name in FILES:
        left, right = pl.read_parquet(a / name), pl.read_parquet(b / name)
        assert left.schema == right.schema, name
        assert left.equals(right), name
    groups = [pq.ParquetFile(folder / EVENTS).metadata for folder in (a, b)]
    assert [g.row_group(i).num_rows for g in groups for i in range(g.num_row_groups)][: groups[0].num_row_groups] == [
        groups[1].row_group(i).num_rows for i in range(groups[1].num_row_groups)
    ]


@pytest.fixture
def small_row_groups(monkeypatch):
    monkeypatch.setattr(prepared, "ROW_GROUP_EVENTS", 200)


@pytest.mark.parametrize("split", ["user", "time"])
@pytest.mark.parametrize("chunk_events", [97, 100_000])
def test_streaming_equals_in_memory_on_synthetic_data(tmp_path, small_row_groups, split, chunk_events):
    settings = SynthSettings(users=120, items=150, events_mean=40, events_min=5, events_max=120, seed=4)
    prepare_settings = PrepareSettings(max_len=50, split=split)
    prepare(generate(settings), tmp_path / "memory", prepare_settings)
    prepare_stream(synthetic_events(settings), tmp_path / "stream", prepare_settings, chunk_events=chunk_events)
    assert_same_folder(tmp_path / "memory", tmp_path / "stream")
    assert pq.ParquetFile(tmp_path / "stream" / EVENTS).metadata.num_row_groups > 10


def _udata(path, rng):
    """A GroupLens u.data file: ties, truncated users, an item seen only in dropped rows, a duplicate."""
    rows = []
    for user in rng.permutation(40):
        for _ in range(int(rng.integers(1, 30))):
            rows.append((user * 7 + 3, int(rng.integers(1, 60)), int(rng.integers(1, 6)), int(rng.integers(0, 50))))
    rows.append(rows[5])
    path.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    return path


@pytest.mark.parametrize("split", ["user", "time"])
def test_streaming_equals_in_memory_on_real_formats(tmp_path, small_row_groups, split):
    rng = np.random.default_rng(0)
    udata = _udata(tmp_path / "u.data", rng)
    events = load_source("ml-100k", udata)
    settings = PrepareSettings(max_len=12, split=split)
    prepare(events, tmp_path / "memory", settings)
    prepare_stream(events, tmp_path / "stream", settings, chunk_events=50)
    assert_same_folder(tmp_path / "memory", tmp_path / "stream")
    assert json.loads((tmp_path / "stream" / META).read_text())["dropped"]["duplicate row"] == 1

    # string tokens (table: CSV) and a Parquet table
    frame = pl.read_csv(udata, separator="\t", has_header=False, new_columns=["user_id", "item_id", "rating", "timestamp"])
    frame = frame.unique(maintain_order=True).with_columns(("u" + pl.col("user_id").cast(pl.String)).alias("user_id"))
    frame.write_csv(tmp_path / "log.csv")
    frame.write_parquet(tmp_path / "log.parquet")
    for name in ("log.csv", "log.parquet"):
        events = load_source(f"table:{tmp_path / name}", tasks=["like=rating>=4"], action_value_col="rating")
        prepare(events, tmp_path / f"memory-{name}", settings)
        prepare_stream(events, tmp_path / f"stream-{name}", settings, chunk_events=64)
        assert_same_folder(tmp_path / f"memory-{name}", tmp_path / f"stream-{name}")


@pytest.fixture(scope="module")
def source_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    write_sources(folder)
    return folder


@pytest.mark.parametrize("reading", ["batches", "small batches", "in memory"])
@pytest.mark.parametrize("case", CASES)
def test_each_source_format_prepares_as_the_whole_file_reader_did(source_files, tmp_path, monkeypatch, case, reading):
    """Same Parquet contents, meta.json (statistics, drops, cache key) and row groups as the reader
    that held the whole file: read in its batches, in batches of a few rows (every decision of
    the first rows carried over, copies of a row in other batches and runs), or collected whole."""
    monkeypatch.chdir(source_files)
    if reading == "small batches":
        monkeypatch.setattr(sources, "BLOCK_BYTES", 300)  # 3 to 10 lines
        monkeypatch.setattr(sources, "BATCH_ROWS", 7)
    if reading == "in memory":
        source, path, options, settings = CASES[case]
        prepare(load_source(source, path, **options), tmp_path, PrepareSettings(**settings))
        got = digest(tmp_path)
    else:
        got = prepare_case(case, tmp_path)
    assert_as_expected(got, case, source_files)


def assert_as_expected(got: dict, case: str, source_files: Path) -> None:
    """`got` equals the whole-file reader's digest of `case`. A Parquet source's bytes name the
    library version that wrote it, and so do its checksum and the cache key made from it: for such
    a source the checksum must be the file's own, and the cache key is left to
    `test_streaming_equals_in_memory_on_real_formats`, which compares the two readers in one run."""
    want = json.loads(EXPECTED.read_text())[case]
    source, name = CASES[case][:2]
    path = source_files / (name or source.partition(":")[2])
    if path.suffix == ".parquet":
        assert got["meta"]["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        for meta in (got["meta"], want["meta"]):
            del meta["source_sha256"], meta["cache_key"]
    assert got == want


def _allocated_while_reading(events: EventTable) -> list[int]:
    """pyarrow's allocated bytes after each chunk of `events` is read, above those before."""
    before, held = pa.total_allocated_bytes(), []
    for chunk in events.chunks():
        held.append(pa.total_allocated_bytes() - before)
        del chunk
    return held


def test_a_source_is_read_holding_a_bounded_part_of_it(tmp_path, monkeypatch):
    """The reader holds the batch it reads and a bounded readahead, not the file: pyarrow's
    Parquet reader with its default pre-buffering would hold every row group read."""
    rng = np.random.default_rng(0)
    rows = 400_000
    frame = pl.DataFrame({"userId": rng.integers(0, 2**62, rows), "movieId": rng.integers(0, 2**62, rows),
                          "rating": rng.integers(1, 6, rows) / 1.0, "timestamp": rng.integers(0, 2**62, rows)})  # fmt: skip
    frame.write_csv(tmp_path / "ratings.csv")
    monkeypatch.setattr(sources, "BLOCK_BYTES", 1 << 16)
    held = _allocated_while_reading(load_source("ml-20m", tmp_path / "ratings.csv"))
    size = (tmp_path / "ratings.csv").stat().st_size
    assert size > 300 * sources.BLOCK_BYTES
    assert max(held) < 48 * sources.BLOCK_BYTES < size / 6, [round(h / sources.BLOCK_BYTES, 1) for h in held]

    table = frame.rename({"userId": "user_id", "movieId": "item_id"}).with_columns(y=pl.lit(1)).to_arrow()
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=10_000)
    monkeypatch.setattr(sources, "BATCH_ROWS", 10_000)
    held = _allocated_while_reading(load_source(f"table:{tmp_path / 't.parquet'}", tasks=["y"]))
    group_bytes = table.nbytes // 40
    assert len(held) == 40 and max(held) < 8 * group_bytes, [round(h / group_bytes, 1) for h in held]


def test_streaming_reuses_its_cache(tmp_path):
    settings = SynthSettings(users=30, items=40, seed=1)
    first = prepare_stream(synthetic_events(settings), tmp_path, PrepareSettings(max_len=20))
    written = (tmp_path / EVENTS).stat().st_mtime_ns
    assert prepare_stream(synthetic_events(settings), tmp_path, PrepareSettings(max_len=20)) == first
    assert (tmp_path / EVENTS).stat().st_mtime_ns == written
    assert prepare_stream(synthetic_events(settings), tmp_path, PrepareSettings(max_len=10))["max_len"] == 10
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_a_bad_row_in_a_later_chunk_names_its_row(tmp_path):
    frame = pl.DataFrame({"user_id": [1, 1, 2, 2, 3], "item_id": [1, 2, 1, 2, 1], "timestamp": [0, 1, 2, 3, 4],
                          "like": pl.Series([0, 1, 1, 2, 0], dtype=pl.UInt8)})  # fmt: skip
    events = EventTable(frame=frame, tasks=("like",), source="test", sha256="x")
    with pytest.raises(DataError, match=r"^test: event row 3, column 'like': label 2 is not 0 or 1$"):
        prepare_stream(events, tmp_path, chunk_events=2)


@pytest.mark.parametrize("ranks", [2, 3])
def test_a_rank_reads_its_row_groups_only_and_the_ranks_make_the_whole(tmp_path, small_row_groups, monkeypatch, ranks):
    synth = SynthSettings(users=150, items=100, events_mean=30, events_min=5, events_max=90, seed=2)
    prepare_stream(synthetic_events(synth), tmp_path, PrepareSettings(max_len=64))
    whole = load_prepared(tmp_path)
    file = pq.ParquetFile(tmp_path / EVENTS)
    groups = file.metadata.num_row_groups
    read: list[list[int]] = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", lambda self, ids, **kw: read.append(list(ids)) or real(self, ids, **kw))

    shares = [load_prepared(tmp_path, share=(rank, ranks)) for rank in range(ranks)]
    # Each rank read only the row groups holding its users: about 1/ranks of them, plus one at an edge.
    assert all(len(ids) <= groups // ranks + 2 for ids in read), (read, groups)
    assert sum(len(ids) for ids in read) <= groups + ranks - 1
    for share, ids in zip(shares, read):
        first, last = share.first_user, share.first_user + len(share.offsets) - 2
        user = pl.read_parquet(tmp_path / EVENTS)["user"].to_numpy()
        starts = np.concatenate([[0], np.cumsum([file.metadata.row_group(g).num_rows for g in range(groups)])])
        holding = {g for g in range(groups) if np.any((user[starts[g] : starts[g + 1]] >= first) & (user[starts[g] : starts[g + 1]] <= last))}
        assert set(ids) == holding
    # Balanced by events: each rank within one user's events of an equal split.
    events = [len(share.items) for share in shares]
    assert max(events) - min(events) <= 2 * whole.lengths.max()
    # The union is the whole dataset, array for array.
    for name in ("items", "timestamps", "labels", "split", "true_probs"):
        np.testing.assert_array_equal(np.concatenate([getattr(s, name) for s in shares]), getattr(whole, name), err_msg=name)
    assert [s.num_users for s in shares] == [whole.num_users] * ranks
    # Every batch of the whole loader is the union of the ranks' parts, row for row.
    loaders = [SequenceLoader(s, "valid", batch_size=16, shuffle=True, seed=3) for s in shares]
    full = SequenceLoader(whole, "valid", batch_size=16, shuffle=True, seed=3)
    for loader in (*loaders, full):
        loader.set_epoch(2)
    for rows, *parts in zip(full.batch_users(), *(loader.batch_users() for loader in loaders)):
        assert all(np.array_equal(rows, part) for part in parts)
        owned = [rows[loader.holds(rows)] for loader in loaders]
        assert sorted(np.concatenate(owned).tolist()) == sorted(rows.tolist())
        for loader, mine in zip(loaders, owned):
            if len(mine):
                a, b = loader.make_batch(mine), full.make_batch(mine)
                for field in ("items", "labels", "timestamps", "lengths", "loss_mask", "users", "true_probs"):
                    assert torch_equal(getattr(a, field), getattr(b, field)), field


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_rank_users_cut_consecutive_users_by_events():
    events = np.array([3, 10, 2, 9, 8, 1])
    assert [rank_users(events, r, 2) for r in range(2)] == [(1, 3), (4, 6)]
    assert rank_users(events, 0, 1) == (1, 6)
    assert rank_users(np.array([5]), 0, 2) == (1, 0)  # an empty share …
    assert rank_users(np.array([5]), 1, 2) == (1, 1)


def test_a_rank_without_users_is_a_data_error(tmp_path):
    prepare_stream(synthetic_events(SynthSettings(users=1, items=10, clusters=2, seed=0)), tmp_path)
    with pytest.raises(DataError, match="no users for rank 0 of 2"):
        load_prepared(tmp_path, share=(0, 2))


def test_the_prepare_benchmark_reads_its_file_one_batch_at_a_time(tmp_path, monkeypatch):
    """scripts/bench_prepare.py's peak memory stands for `prepare_stream`'s only while its reader
    holds one batch: pyarrow's default pre-buffering keeps every row group read until the end."""
    spec = importlib.util.spec_from_file_location("bench_prepare", Path(__file__).parents[1] / "scripts" / "bench_prepare.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    rows, groups = 10_000, 32
    table = pa.table({name: rng.integers(0, 2**62, rows * groups) for name in ("a", "b", "c")})  # incompressible
    pq.write_table(table, tmp_path / "events.parquet", row_group_size=rows)
    monkeypatch.setattr(bench, "_CHUNK", rows)
    before, held = pa.total_allocated_bytes(), []
    for chunk in bench.parquet_chunks(tmp_path / "events.parquet"):
        held.append(pa.total_allocated_bytes() - before)
        del chunk
    group_bytes = table.nbytes // groups
    assert len(held) == groups and max(held) < 8 * group_bytes, [round(h / group_bytes, 1) for h in held]
