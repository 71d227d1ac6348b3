"""Event table → prepared sequences: order, truncation, remapping, splits, stats, cache."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from fractions import Fraction

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from causalgr.data import sequences
from causalgr.data.cache import cache_key, load_cached
from causalgr.data.errors import DataError
from causalgr.data.events import EventTable
from causalgr.data.prepared import SPLITS, load_prepared
from causalgr.data.sequences import (
    DROP_NO_TRAIN,
    DROP_TRUNCATED,
    PrepareSettings,
    build_sequences,
    prepare,
)
from causalgr.data.stats import compute_stats

TASKS = ("like", "share")


def make_events(rows: list[tuple], tasks=TASKS, probs=None, values=None, dropped=None, sha="abc") -> EventTable:
    """rows: (user_id, item_id, timestamp, *labels) in source order."""
    columns = {
        "user_id": [r[0] for r in rows],
        "item_id": [r[1] for r in rows],
        "timestamp": pl.Series([r[2] for r in rows], dtype=pl.Int64),
    }
    for t, task in enumerate(tasks):
        columns[task] = pl.Series([r[3 + t] for r in rows], dtype=pl.UInt8)
    if values is not None:
        columns["action_value"] = pl.Series(values, dtype=pl.Int16)
    if probs is not None:
        for t, task in enumerate(tasks):
            columns[f"prob_{task}"] = pl.Series([p[t] for p in probs], dtype=pl.Float64)
    return EventTable(frame=pl.DataFrame(columns), tasks=tasks, source="test", sha256=sha, dropped=dict(dropped or {}))


def decoded(data, item_ids: pl.DataFrame, user_ids: pl.DataFrame) -> dict:
    """{original user: [(original item, timestamp, labels, split name), …]} from prepared data."""
    item_of = dict(zip(item_ids["item"].to_list(), item_ids["item_id"].to_list()))
    user_of = dict(zip(user_ids["user"].to_list(), user_ids["user_id"].to_list()))
    names = {code: name for name, code in SPLITS.items()}
    out = {}
    for u in range(data.num_users):
        lo, hi = data.offsets[u], data.offsets[u + 1]
        out[user_of[u + 1]] = [
            (item_of[int(data.items[e])], int(data.timestamps[e]), tuple(int(x) for x in data.labels[e]), names[int(data.split[e])])
            for e in range(lo, hi)
        ]
    return out


def reference(rows, cfg: PrepareSettings, valid_start=None, test_start=None) -> tuple[dict, int, int]:
    """The same preparation written as plain loops: (expected sequences, truncated rows, orphan rows)."""
    by_user = defaultdict(list)
    for row_number, row in enumerate(rows):
        by_user[row[0]].append((row[2], row_number, row))
    expected, truncated, orphan = {}, 0, 0
    for user, events in by_user.items():
        events.sort(key=lambda e: (e[0], e[1]))
        kept = events[-cfg.max_len :]
        truncated += len(events) - len(kept)
        n = len(kept)
        if cfg.split == "user":
            n_test = math.floor(Fraction(str(cfg.test_frac)) * n)
            n_valid = math.floor(Fraction(str(cfg.valid_frac)) * n)
            names = ["train"] * (n - n_test - n_valid) + ["valid"] * n_valid + ["test"] * n_test
        else:
            names = ["train" if ts < valid_start else "valid" if ts < test_start else "test" for ts, _, _ in kept]
            if "train" not in names:
                orphan += n
                continue
        expected[user] = [(r[1], r[2], tuple(r[3:]), name) for (_, _, r), name in zip(kept, names)]
    return expected, truncated, orphan


def check_invariants(data, max_len: int) -> None:
    for u in range(data.num_users):
        lo, hi = data.offsets[u], data.offsets[u + 1]
        split, ts = data.split[lo:hi], data.timestamps[lo:hi]
        assert 1 <= hi - lo <= max_len
        assert np.all(np.diff(ts) >= 0), "time order"
        assert np.all(np.diff(split) >= 0), "train, then valid, then test"
        assert split[0] == SPLITS["train"], "every user keeps a training event"
        train, evaluated = ts[split == SPLITS["train"]], ts[split != SPLITS["train"]]
        if len(evaluated):
            assert evaluated.min() >= train.max(), "evaluated events are not earlier than training events"
    assert data.items.min() >= 1 and data.items.max() == data.num_items
    assert set(np.unique(data.items)) == set(range(1, data.num_items + 1)), "dense item ids"


row_lists = st.lists(
    st.tuples(
        st.integers(0, 6).map(lambda u: 1000 - 7 * u),  # sparse, non-monotone user ids
        st.integers(0, 12).map(lambda i: 3 * i + 5),
        st.integers(0, 5),  # few timestamps: many ties
        st.integers(0, 1),
        st.integers(0, 1),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=80, deadline=None)
@given(
    rows=row_lists,
    max_len=st.integers(1, 12),
    fracs=st.sampled_from([(0.1, 0.1), (0.2, 0.1), (0.25, 0.25), (0.0, 0.3), (0.3, 0.0), (0.29, 0.4)]),
    string_ids=st.booleans(),
)
def test_user_split_matches_reference(rows, max_len, fracs, string_ids):
    if string_ids:
        rows = [(f"u{r[0]}", f"i{r[1]}", *r[2:]) for r in rows]
    cfg = PrepareSettings(max_len=max_len, valid_frac=fracs[0], test_frac=fracs[1])
    data, item_ids, user_ids = build_sequences(make_events(rows), cfg)
    expected, truncated, _ = reference(rows, cfg)
    assert decoded(data, item_ids, user_ids) == expected
    check_invariants(data, max_len)
    # dense ids in ascending original-id order; every kept id and only those
    assert user_ids["user_id"].to_list() == sorted(expected)
    assert item_ids["item_id"].to_list() == sorted({e[0] for seq in expected.values() for e in seq})
    assert data.meta["dropped"].get(DROP_TRUNCATED, 0) == truncated
    assert len(data.items) + truncated == len(rows)


@settings(max_examples=80, deadline=None)
@given(rows=row_lists, max_len=st.integers(1, 12), cuts=st.tuples(st.integers(0, 6), st.integers(0, 6)))
def test_time_split_matches_reference(rows, max_len, cuts):
    valid_start, test_start = sorted(cuts)
    cfg = PrepareSettings(max_len=max_len, split="time", valid_start=valid_start, test_start=test_start)
    expected, truncated, orphan = reference(rows, cfg, valid_start, test_start)
    if not expected:
        with pytest.raises(DataError, match="no events left"):
            build_sequences(make_events(rows), cfg)
        return
    data, item_ids, user_ids = build_sequences(make_events(rows), cfg)
    assert decoded(data, item_ids, user_ids) == expected
    check_invariants(data, max_len)
    ts, split = data.timestamps, data.split
    assert np.all(ts[split == 0] < valid_start)
    assert np.all((ts[split == 1] >= valid_start) & (ts[split == 1] < test_start))
    assert np.all(ts[split == 2] >= test_start)
    assert data.meta["dropped"].get(DROP_TRUNCATED, 0) == truncated
    assert data.meta["dropped"].get(DROP_NO_TRAIN, 0) == orphan
    assert data.meta["split"] == {"kind": "time", "valid_start": valid_start, "test_start": test_start}


def test_ties_keep_source_order_and_truncation_keeps_most_recent():
    rows = [
        (1, 10, 5, 0, 0),
        (1, 11, 3, 0, 0),
        (1, 12, 5, 1, 0),  # same time as item 10, later in the source
        (1, 13, 1, 0, 0),  # oldest: truncated
        (1, 14, 4, 0, 1),
        (2, 20, 9, 1, 1),
    ]
    data, item_ids, user_ids = build_sequences(make_events(rows), PrepareSettings(max_len=4, valid_frac=0.0, test_frac=0.0))
    seq = decoded(data, item_ids, user_ids)
    assert [e[0] for e in seq[1]] == [11, 14, 10, 12]
    assert [e[0] for e in seq[2]] == [20]
    assert data.meta["dropped"] == {DROP_TRUNCATED: 1}
    assert 13 not in item_ids["item_id"].to_list(), "an item seen only in dropped rows gets no id"
    assert data.num_items == 5 and data.num_users == 2


def test_user_split_sizes():
    rows = [(7, i, i, 0, 0) for i in range(20)] + [(8, 0, 0, 1, 1)]
    data, _, _ = build_sequences(make_events(rows), PrepareSettings(valid_frac=0.1, test_frac=0.2))
    assert data.split[:20].tolist() == [0] * 14 + [1] * 2 + [2] * 4
    assert data.split[20:].tolist() == [0]  # a one-event user is all training
    # 0.29 * 100 is 28.999… in floating point; the split still takes 29 test events
    data, _, _ = build_sequences(make_events([(7, i, i, 0, 0) for i in range(100)]), PrepareSettings(valid_frac=0.1, test_frac=0.29))
    assert np.bincount(data.split).tolist() == [61, 10, 29]


def test_time_split_default_cutoffs_and_orphan_users():
    # timestamps 0..9 over user 1; user 2 only acts at the end (no training event)
    rows = [(1, 1, t, 0, 0) for t in range(10)] + [(2, 2, 9, 1, 0), (2, 3, 9, 0, 0)]
    events = make_events(rows, dropped={"bad rating": 3})
    data, item_ids, user_ids = build_sequences(events, PrepareSettings(split="time"))
    vs, ts_ = data.meta["split"]["valid_start"], data.meta["split"]["test_start"]
    all_ts = np.array([r[2] for r in rows])
    assert vs == int(np.quantile(all_ts, 0.8, method="nearest")) and ts_ == int(np.quantile(all_ts, 0.9, method="nearest"))
    assert user_ids["user_id"].to_list() == [1]
    assert item_ids["item_id"].to_list() == [1], "items of dropped users get no id"
    assert data.meta["dropped"] == {"bad rating": 3, DROP_NO_TRAIN: 2}
    assert data.meta["stats"]["dropped_users"] == {DROP_NO_TRAIN: 1}


def test_meta_keys_action_values_and_probs():
    rows = [(1, 5, 1, 1, 0), (1, 6, 2, 0, 1), (2, 5, 3, 1, 1)]
    events = make_events(rows, values=[4, 0, 2], probs=[(0.5, 0.5)] * 3, dropped={"x": 1, DROP_TRUNCATED: 2})
    data, _, _ = build_sequences(events, PrepareSettings(max_len=1))
    # user 1 keeps only its last event (item 6, value 0); user 2 its one event
    assert data.action_values.tolist() == [0, 2]
    assert data.meta["num_action_values"] == 3
    assert data.true_probs.shape == (2, 2) and data.true_probs.dtype == np.float64
    assert data.meta["dropped"] == {"x": 1, DROP_TRUNCATED: 3}, "the loader's drops are merged with ours"
    for key in ["format_version", "source", "tasks", "task_definitions", "read_options", "num_users", "num_items",
                "num_action_values",
                "max_len", "split", "source_sha256", "cache_key", "dropped", "stats"]:
        assert key in data.meta
    no_values, _, _ = build_sequences(make_events(rows), PrepareSettings())
    assert no_values.action_values is None and no_values.true_probs is None
    assert no_values.meta["num_action_values"] == 0


def test_stats_on_hand_made_table():
    # user 10: 10 events, user 20: 1 event, user 30: 5 events; split 0.2 valid / 0.2 test
    rows = [(10, 1, t, int(t < 5), int(t == 0)) for t in range(10)]
    rows += [(20, 2, 0, 1, 1)]
    rows += [(30, 3, t, 0, int(t == 4)) for t in range(5)]
    probs = [(0.5, 0.25)] * len(rows)
    data, _, _ = build_sequences(make_events(rows, probs=probs), PrepareSettings(valid_frac=0.2, test_frac=0.2))
    stats = data.meta["stats"]
    assert stats == compute_stats(data) | {"dropped_users": {}, "source": {"events": 16, "users": 3, "items": 3}}
    assert (stats["users"], stats["items"], stats["events"]) == (3, 3, 16)
    # user 10: 6 train, 2 valid, 2 test; user 20: 1 train; user 30: 3 train, 1 valid, 1 test
    assert stats["split_events"] == {"train": 10, "valid": 3, "test": 3}
    assert stats["length"] == {"min": 1, "p50": 5, "p90": 5, "p99": 5, "max": 10, "mean": 16 / 3}
    like, share = stats["positive_rate"]["all"]["like"], stats["positive_rate"]["all"]["share"]
    assert like == pytest.approx(6 / 16) and share == pytest.approx(3 / 16)
    # train: user 10 times 0..5 (like at 0..4, share at 0), user 20 (like, share), user 30 times 0..2
    assert stats["positive_rate"]["train"] == pytest.approx({"like": 6 / 10, "share": 2 / 10})
    assert stats["positive_rate"]["valid"] == pytest.approx({"like": 0.0, "share": 0.0})
    assert stats["positive_rate"]["test"] == pytest.approx({"like": 0.0, "share": 1 / 3})
    # with p = 0.5 every like costs log 2; share: -log 0.25 if 1 else -log 0.75
    floor = stats["bayes_floor_loss"]
    share_test = (-math.log(0.25) - 2 * math.log(0.75)) / 3
    assert floor["test"]["tasks"]["like"] == pytest.approx(math.log(2))
    assert floor["test"]["tasks"]["share"] == pytest.approx(share_test)
    assert floor["test"]["loss"] == pytest.approx(math.log(2) + share_test)
    share_all = (-3 * math.log(0.25) - 13 * math.log(0.75)) / 16
    assert floor["all"]["loss"] == pytest.approx(math.log(2) + share_all)
    json.dumps(stats, allow_nan=False)  # stats must be strict JSON


def test_stats_empty_split_is_null():
    data, _, _ = build_sequences(make_events([(1, 1, 0, 1, 0)]), PrepareSettings())
    assert data.meta["stats"]["positive_rate"]["test"] == {"like": None, "share": None}
    json.dumps(data.meta["stats"], allow_nan=False)


def test_prepare_reuses_cache_and_rebuilds_on_new_settings(tmp_path, monkeypatch, caplog):
    events = make_events([(1, 1, 0, 1, 0), (1, 2, 1, 0, 1), (2, 1, 2, 1, 1)])
    calls = []
    real_build = sequences.build_sequences

    def counting_build(*args, **kwargs):
        calls.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(sequences, "build_sequences", counting_build)
    first = prepare(events, tmp_path, PrepareSettings(max_len=8))
    caplog.set_level("INFO", logger="causalgr.data.sequences")
    second = prepare(events, tmp_path, PrepareSettings(max_len=8))
    assert len(calls) == 1, "same source and settings: loaded from the cache"
    assert "cached" in caplog.text
    np.testing.assert_array_equal(first.items, second.items)
    prepare(events, tmp_path, PrepareSettings(max_len=1))
    assert len(calls) == 2, "new settings rebuild"
    assert load_prepared(tmp_path).meta["max_len"] == 1
    prepare(make_events([(1, 1, 0, 1, 0)], sha="other"), tmp_path, PrepareSettings(max_len=1))
    assert len(calls) == 3, "new source checksum rebuilds"


def test_task_definitions_and_read_options_are_recorded_and_key_the_cache(tmp_path):
    rows = [(1, 1, 0, 1, 0), (1, 2, 1, 0, 1), (2, 1, 2, 1, 1)]
    events = make_events(rows)
    events.task_definitions = {"like": "rating>=4", "share": "shared"}
    events.read_options = {"user_col": "uid"}
    settings = PrepareSettings()
    prepare(events, tmp_path, settings)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["task_definitions"] == {"like": "rating>=4", "share": "shared"}
    assert meta["read_options"] == {"user_col": "uid"}
    assert meta["cache_key"] == cache_key(events, settings)

    lower = make_events(rows)  # the same file and tasks, another threshold
    lower.task_definitions, lower.read_options = {"like": "rating>=3", "share": "shared"}, events.read_options
    assert cache_key(lower, settings) != cache_key(events, settings)
    assert load_cached(tmp_path, cache_key(lower, settings)) is None  # not reused …
    assert not (tmp_path / "meta.json").exists()  # … and no longer claims the old key
    remapped = make_events(rows)
    remapped.task_definitions, remapped.read_options = events.task_definitions, {"user_col": "user"}
    assert cache_key(remapped, settings) != cache_key(events, settings)


def test_save_load_round_trip(tmp_path):
    rows = [(u, (u * 7 + t) % 5, t, (u + t) % 2, t % 2) for u in range(4) for t in range(u + 3)]
    events = make_events(rows, values=[1 + i % 5 for i in range(len(rows))], probs=[(0.3, 0.6)] * len(rows))
    built = prepare(events, tmp_path)
    loaded = load_prepared(tmp_path)
    for name in ["offsets", "items", "timestamps", "labels", "action_values", "split", "true_probs"]:
        np.testing.assert_array_equal(getattr(built, name), getattr(loaded, name), err_msg=name)
    assert loaded.meta == json.loads(json.dumps(built.meta))
    assert pl.read_parquet(tmp_path / "item_ids.parquet").columns == ["item", "item_id"]
    assert pl.read_parquet(tmp_path / "user_ids.parquet").columns == ["user", "user_id"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.with_columns(pl.Series("like", [0, 2, 1], dtype=pl.UInt8)), r"event row 1, column 'like'.*not 0 or 1"),
        (lambda f: f.drop("share"), r"no column 'share'"),
        (lambda f: f.with_columns(pl.Series("item_id", [1, None, 3])), r"event row 1, column 'item_id': missing"),
        (lambda f: f.with_columns(pl.col("timestamp").cast(pl.Float64)), r"'timestamp' must hold integer"),
        (lambda f: f.head(0), r"no events"),
        (lambda f: f.with_columns(pl.Series("action_value", [1, -1, 2], dtype=pl.Int16)), r"event row 1, column 'action_value'"),
    ],
)
def test_bad_input_is_a_one_line_data_error(change, message):
    events = make_events([(1, 1, 0, 1, 0), (1, 2, 1, 0, 1), (2, 3, 2, 1, 1)])
    events.frame = change(events.frame)
    with pytest.raises(DataError, match=message) as err:
        build_sequences(events, PrepareSettings())
    assert "\n" not in str(err.value) and str(err.value).startswith("test: ")


def test_settings_are_checked():
    with pytest.raises(ValidationError):
        PrepareSettings(valid_frac=0.5, test_frac=0.5)
    with pytest.raises(ValidationError):
        PrepareSettings(max_len=0)
    with pytest.raises(ValidationError):
        PrepareSettings(maxlen=5)
    with pytest.raises(ValidationError):
        PrepareSettings(split="time", valid_start=10, test_start=5)
    events = make_events([(1, 1, t, 0, 0) for t in range(10)])
    with pytest.raises(DataError, match="valid_start <= test_start"):
        build_sequences(events, PrepareSettings(split="time", valid_start=100))
