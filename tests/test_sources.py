"""Sources → canonical event table: every format on small files written in the real layout,
and every kind of bad input (one-line `DataError` naming file, line/row and column)."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import causalgr.data.sources as sources
from causalgr.data.errors import DataError
from causalgr.data.sequences import PrepareSettings, build_sequences
from causalgr.data.sources import KUAIRAND_TASKS, TaskSpec, load_source

UDATA = "196\t242\t3\t881250949\n186\t302\t5\t891717742\n22\t377\t1\t878887116\n244\t51\t4\t880606923\n"
ML_ROWS = [(196, 242, 3, 881250949), (186, 302, 5, 891717742), (22, 377, 1, 878887116), (244, 51, 4, 880606923)]
KUAIRAND_HEADER = (
    "user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
    "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def kuairand_line(user, video, time_ms, click, like=0, follow=0, comment=0, forward=0, hate=0, long_view=0,
                  profile=0, is_rand=0) -> str:  # fmt: skip
    return (
        f"{user},{video},20220422,1200,{time_ms},{click},{like},{follow},{comment},{forward},{hate},"
        f"{long_view},5000,10000,0,0,{profile},{is_rand},1"
    )


def error_of(*args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_source(*args, **kwargs).collect()
    message = str(info.value)
    assert "\n" not in message
    return message


# --- MovieLens ----------------------------------------------------------------------------------


def test_ml100k_udata_maps_ratings_to_tasks_and_keeps_row_order(tmp_path):
    path = write(tmp_path / "u.data", UDATA)
    events = load_source("ml-100k", path)
    frame = events.collect()
    assert events.tasks == ("like", "love", "dislike")
    assert events.source == "ml-100k"
    assert events.task_definitions == {"like": "rating>=4", "love": "rating==5", "dislike": "rating<=2"}
    assert events.read_options == {}
    assert events.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert events.dropped == {}
    assert frame.schema == pl.Schema(
        {"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64, "like": pl.UInt8, "love": pl.UInt8,
         "dislike": pl.UInt8, "action_value": pl.Int16}
    )  # fmt: skip
    assert frame.select("user_id", "item_id", "action_value", "timestamp").rows() == ML_ROWS
    ratings = [r[2] for r in ML_ROWS]
    assert frame["like"].to_list() == [int(r >= 4) for r in ratings]
    assert frame["love"].to_list() == [int(r == 5) for r in ratings]
    assert frame["dislike"].to_list() == [int(r <= 2) for r in ratings]


def test_ml100k_recbole_inter_and_folder_give_the_same_events(tmp_path):
    inter = write(tmp_path / "rb" / "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + UDATA)
    write(tmp_path / "gl" / "u.data", UDATA)
    from_inter = load_source("ml-100k", inter)
    from_folder = load_source("ml-100k", tmp_path / "gl")
    assert from_inter.collect().equals(from_folder.collect())
    assert from_inter.sha256 == hashlib.sha256(inter.read_bytes()).hexdigest()
    assert load_source("ml-100k", tmp_path / "rb").collect().equals(from_inter.collect())


def test_ml1m_ratings_dat(tmp_path):
    text = "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ML_ROWS)
    events = load_source("ml-1m", write(tmp_path / "ratings.dat", text))
    assert events.collect().select("user_id", "item_id", "action_value", "timestamp").rows() == ML_ROWS
    assert events.collect()["like"].to_list() == [0, 1, 0, 1]
    assert load_source("ml-1m", tmp_path).collect().equals(events.collect())


def test_ml20m_half_stars_double_into_action_values_while_tasks_use_stars(tmp_path):
    text = "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,4.0,1112484676\n2,3,5.0,1112484819\n2,4,2.5,1\n2,5,2.0,2\n3,6,0.5,3\n"
    events = load_source("ml-20m", write(tmp_path / "ratings.csv", text))
    frame = events.collect()
    assert frame["action_value"].to_list() == [7, 8, 10, 5, 4, 1]
    assert frame["like"].to_list() == [0, 1, 1, 0, 0, 0]
    assert frame["love"].to_list() == [0, 0, 1, 0, 0, 0]
    assert frame["dislike"].to_list() == [0, 0, 0, 0, 1, 1]
    assert frame["timestamp"].to_list() == [1112486027, 1112484676, 1112484819, 1, 2, 3]


def test_movielens_tasks_can_be_redefined_and_that_shows_in_the_source(tmp_path):
    events = load_source("ml-100k", write(tmp_path / "u.data", UDATA), tasks=["good=rating>=3", "bad=rating<2"])
    assert events.tasks == ("good", "bad")
    assert events.collect()["good"].to_list() == [1, 1, 0, 1]
    assert events.collect()["bad"].to_list() == [0, 0, 1, 0]
    # The definitions are recorded (and key the preparation cache, so caches never mix them).
    assert events.source == "ml-100k"
    assert events.task_definitions == {"good": "rating>=3", "bad": "rating<2"}


# --- KuaiRand -----------------------------------------------------------------------------------


def kuairand_folder(root: Path) -> Path:
    data = root / "KuaiRand-1K" / "data"
    write(data / "log_standard_4_08_to_4_21_1k.csv", "\n".join([
        KUAIRAND_HEADER,
        kuairand_line(0, 10, 1649412000123, 1, like=1),
        kuairand_line(1, 11, 1649412001999, 0, hate=1),
    ]) + "\n")  # fmt: skip
    write(data / "log_standard_4_22_to_5_08_1k.csv", "\n".join([
        KUAIRAND_HEADER,
        kuairand_line(0, 12, 1650585600500, 1, follow=1, comment=1, forward=1, long_view=1, profile=1),
    ]) + "\n")  # fmt: skip
    write(data / "log_random_4_22_to_5_08_1k.csv", "\n".join([
        KUAIRAND_HEADER,
        kuairand_line(1, 99, 1650585601000, 1, is_rand=1),
    ]) + "\n")  # fmt: skip
    return root / "KuaiRand-1K"


def test_kuairand_reads_standard_logs_in_name_order_with_all_eight_tasks(tmp_path):
    folder = kuairand_folder(tmp_path)
    events = load_source("kuairand-1k", folder)
    frame = events.collect()
    assert events.tasks == KUAIRAND_TASKS
    assert frame["user_id"].to_list() == [0, 1, 0]
    assert frame["item_id"].to_list() == [10, 11, 12]
    assert frame["timestamp"].to_list() == [1649412000, 1649412001, 1650585600]  # time_ms // 1000
    assert frame["is_click"].to_list() == [1, 0, 1]
    assert frame["is_like"].to_list() == [1, 0, 0]
    assert frame["is_hate"].to_list() == [0, 1, 0]
    for task in ("is_follow", "is_comment", "is_forward", "long_view", "is_profile_enter"):
        assert frame[task].to_list() == [0, 0, 1], task
    assert "action_value" not in frame.columns
    standard = sorted((folder / "data").glob("log_standard_*.csv"))
    assert events.sha256 == hashlib.sha256(b"".join(f.read_bytes() for f in standard)).hexdigest()


def test_kuairand_random_logs_only_on_request(tmp_path):
    folder = kuairand_folder(tmp_path)
    events = load_source("kuairand-1k", folder / "data", include_random=True)
    # Files in name order: log_random_* sorts before log_standard_*.
    assert events.collect()["item_id"].to_list() == [99, 10, 11, 12]
    assert events.source == "kuairand-1k"
    assert events.read_options == {"include_random": True}
    all_files = sorted((folder / "data").glob("log_*.csv"))
    assert events.sha256 == hashlib.sha256(b"".join(f.read_bytes() for f in all_files)).hexdigest()


def test_kuairand_task_subset(tmp_path):
    events = load_source("kuairand-pure", kuairand_folder(tmp_path), tasks=["click=is_click", "long_view"])
    assert events.tasks == ("click", "long_view")
    assert events.collect().columns == ["user_id", "item_id", "timestamp", "click", "long_view", "timestamp_ms"]


# --- RecBole atomic files and generic tables ----------------------------------------------------


def test_recbole_inter_with_tokens_labels_and_thresholds(tmp_path):
    text = (
        "session:token\tuser_id:token\titem_id:token\tclicked:float\twatch:float\ttimestamp:float\n"
        "s\tu1\t007\t1\t30.5\t100.9\n"
        "s\tu2\t7\t0\t5\t101\n"
    )
    path = write(tmp_path / "x.inter", text)
    events = load_source(f"recbole:{path}", tasks=["click=clicked", "long=watch>=30"])
    frame = events.collect()
    assert frame["user_id"].to_list() == ["u1", "u2"]
    assert frame["item_id"].to_list() == ["007", "7"]  # tokens stay tokens: "007" is not 7
    assert frame["timestamp"].to_list() == [100, 101]  # fractional seconds floored
    assert frame["click"].to_list() == [1, 0]
    assert frame["long"].to_list() == [1, 0]
    assert events.source == f"recbole:{path}"
    assert events.task_definitions == {"click": "clicked", "long": "watch>=30"}


def test_recbole_integer_tokens_become_int64_ids(tmp_path):
    path = write(tmp_path / "x.inter", "user_id:token\titem_id:token\tlabel:float\ttimestamp:float\n3\t4\t1\t5\n")
    frame = load_source(f"recbole:{path}", tasks=["label"]).collect()
    assert frame.schema["user_id"] == pl.Int64 and frame.schema["item_id"] == pl.Int64


def test_csv_table_with_mapping_datetimes_and_action_value(tmp_path):
    text = (
        "uid,movie,when,stars,shared\n"
        "a,m1,2024-05-01 12:00:00,4,0\n"
        "b,m2,2024-05-01 12:00:01,2,1\n"
    )
    path = write(tmp_path / "t.csv", text)
    events = load_source(
        f"table:{path}", user_col="uid", item_col="movie", time_col="when",
        tasks=["like=stars>=4", "share=shared"], action_value_col="stars",
    )  # fmt: skip
    frame = events.collect()
    start = int(dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc).timestamp())
    assert frame["timestamp"].to_list() == [start, start + 1]
    assert frame["like"].to_list() == [1, 0]
    assert frame["share"].to_list() == [0, 1]
    assert frame["action_value"].to_list() == [4, 2]
    assert frame["user_id"].to_list() == ["a", "b"]
    assert events.source == f"table:{path}"
    assert events.task_definitions == {"like": "stars>=4", "share": "shared"}
    assert events.read_options == {
        "user_col": "uid", "item_col": "movie", "time_col": "when", "action_value_col": "stars",
    }  # fmt: skip


def test_table_time_format_and_utc_offsets(tmp_path):
    path = write(tmp_path / "t.tsv", "user_id\titem_id\ttimestamp\tlabel\n1\t2\t01/05/2024 12:00\t1\n")
    frame = load_source(f"table:{path}", tasks=["label"], time_format="%d/%m/%Y %H:%M").collect()
    assert frame["timestamp"].to_list() == [int(dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc).timestamp())]
    path = write(tmp_path / "z.csv", "user_id,item_id,timestamp,label\n1,2,2024-05-01T14:00:00+02:00,1\n")
    frame = load_source(f"table:{path}", tasks=["label"]).collect()
    assert frame["timestamp"].to_list() == [int(dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc).timestamp())]


def test_parquet_table_with_native_types(tmp_path):
    path = tmp_path / "t.parquet"
    pl.DataFrame({
        "user_id": [5, 6], "item_id": [7, 8],
        "timestamp": [dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)],
        "clicked": [True, False], "score": [0.9, 0.1],
    }).write_parquet(path)  # fmt: skip
    frame = load_source(f"table:{path}", tasks=["click=clicked", "good=score>0.5"]).collect()
    assert frame["timestamp"].to_list() == [1704067200, 1704153600]
    assert frame["click"].to_list() == [1, 0] and frame["good"].to_list() == [1, 0]
    assert frame.schema["user_id"] == pl.Int64


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(0, 2**40), st.integers(0, 1), st.integers(1, 5)),
        min_size=1,
        max_size=30,
    )
)
def test_csv_and_parquet_tables_round_trip_in_order(tmp_path, rows):
    frame = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp", "click", "stars"], orient="row")
    frame.write_csv(tmp_path / "t.csv")
    frame.write_parquet(tmp_path / "t.parquet")
    copies = len(rows) - len(set(rows))
    for name in ("t.csv", "t.parquet"):
        events = load_source(f"table:{tmp_path / name}", tasks=["click", "high=stars>=4"], action_value_col="stars")
        got = events.collect().select("user_id", "item_id", "timestamp", "click", "action_value").rows()
        assert got == rows
        assert events.collect()["high"].to_list() == [int(r[4] >= 4) for r in rows]
        assert events.dropped == {}
        # The preparation keeps the first of exact copies.
        data, _, _ = build_sequences(events, PrepareSettings(max_len=64, valid_frac=0.0, test_frac=0.0))
        assert data.meta["dropped"] == ({"duplicate row": copies} if copies else {})
        assert len(data.items) == len(set(rows))


# --- Drops: counted, never silent ---------------------------------------------------------------


def test_duplicates_blank_lines_and_missing_labels_are_dropped_and_counted(tmp_path):
    text = (
        "user_id,item_id,timestamp,click\n"
        "1,2,10,1\n"
        "\n"
        "1,2,10,1\n"  # exact copy of line 2
        "1,2,11,1\n"  # same event later: kept
        "2,3,12,\n"  # no label
    )
    events = load_source(f"table:{write(tmp_path / 't.csv', text)}", tasks=["click"])
    assert events.collect().select("user_id", "timestamp").rows() == [(1, 10), (1, 10), (1, 11)]
    assert events.dropped == {"blank line": 1, "missing click": 1}
    # The copy goes where the user's events come together: in the preparation.
    data, _, _ = build_sequences(events, PrepareSettings(valid_frac=0.0, test_frac=0.0))
    assert data.timestamps.tolist() == [10, 11]
    assert data.meta["dropped"] == {"blank line": 1, "duplicate row": 1, "missing click": 1}


def test_kuairand_duplicates_compare_milliseconds(tmp_path):
    lines = [KUAIRAND_HEADER, kuairand_line(0, 1, 5000, 1), kuairand_line(0, 1, 5001, 1), kuairand_line(0, 1, 5000, 1)]
    write(tmp_path / "log_standard_x.csv", "\n".join(lines) + "\n")
    events = load_source("kuairand-27k", tmp_path)
    assert events.collect()["timestamp_ms"].to_list() == [5000, 5001, 5000]
    data, _, _ = build_sequences(events, PrepareSettings(valid_frac=0.0, test_frac=0.0))
    assert data.timestamps.tolist() == [5, 5]  # same second, distinct milliseconds: both kept
    assert data.meta["dropped"] == {"duplicate row": 1}


def test_line_numbers_stay_right_after_blank_lines(tmp_path):
    path = write(tmp_path / "u.data", "1\t2\t3\t4\n\n\n1\tx\t3\t4\n")
    assert error_of("ml-100k", path) == f"{path}: line 4, column 2 (item_id): 'x' is not an integer id"


# --- Bad input: one line naming file, line/row and column ---------------------------------------


def test_non_integer_ids(tmp_path):
    path = write(tmp_path / "u.data", "1\t2\t3\t4\n1.5\t2\t3\t4\n")
    assert error_of("ml-100k", path) == f"{path}: line 2, column 1 (user_id): '1.5' is not an integer id"
    lines = [KUAIRAND_HEADER, kuairand_line(0, 1, 5000, 1), kuairand_line(0, "v9", 5001, 1)]
    write(tmp_path / "kr" / "log_standard_a.csv", "\n".join(lines) + "\n")
    message = error_of("kuairand-1k", tmp_path / "kr")
    assert message == f"{tmp_path / 'kr' / 'log_standard_a.csv'}: line 3, column 'video_id': 'v9' is not an integer id"


def test_timestamps_that_do_not_parse(tmp_path):
    path = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.0,100\n1,3,4.0,yesterday\n")
    message = error_of("ml-20m", path)
    assert message.startswith(f"{path}: line 3, column 'timestamp': 'yesterday' is not a timestamp")
    path = write(tmp_path / "t.csv", "user_id,item_id,timestamp,y\n1,2,2024-01-01 10:00:00,1\n1,2,noon,0\n")
    message = error_of(f"table:{path}", tasks=["y"])
    assert message.startswith(f"{path}: line 3, column 'timestamp': 'noon' is not a timestamp")
    path = write(tmp_path / "m.csv", "user_id,item_id,timestamp,y\n1,2,100,1\n1,2,2024-01-01,0\n")
    assert error_of(f"table:{path}", tasks=["y"]).startswith(f"{path}: line 3, column 'timestamp': '2024-01-01'")
    path = write(tmp_path / "e.csv", "user_id,item_id,timestamp,y\n1,2,,1\n")
    assert error_of(f"table:{path}", tasks=["y"]) == f"{path}: line 2, column 'timestamp': missing timestamp"


def test_labels_not_in_0_1(tmp_path):
    lines = [KUAIRAND_HEADER, kuairand_line(0, 1, 5000, 1), kuairand_line(0, 2, 6000, 1, like=2)]
    path = write(tmp_path / "log_standard_a.csv", "\n".join(lines) + "\n")
    message = error_of("kuairand-1k", tmp_path)
    assert message == f"{path}: line 3, column 'is_like': '2' is not a 0/1 label (task is_like)"
    table = write(tmp_path / "t.csv", "user_id,item_id,timestamp,y\n1,2,3,yes\n")
    assert error_of(f"table:{table}", tasks=["y"]) == f"{table}: line 2, column 'y': 'yes' is not a number"
    parquet = tmp_path / "t.parquet"
    pl.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "timestamp": [1, 2], "y": [0.0, 0.5]}).write_parquet(parquet)
    assert error_of(f"table:{parquet}", tasks=["y"]) == f"{parquet}: row 2, column 'y': 0.5 is not a 0/1 label (task y)"


def test_missing_columns(tmp_path):
    path = write(tmp_path / "ratings.csv", "userId,movieId,timestamp\n1,2,3\n")
    no_user = write(tmp_path / "b" / "ratings.csv", "user,movieId,rating,timestamp\n1,2,3,4\n")
    assert error_of("ml-20m", no_user) == f"{no_user}: missing column 'userId' (found: user, movieId, rating, timestamp)"
    assert error_of("ml-20m", path) == f"{path}: missing column 'rating' (found: userId, movieId, timestamp)"
    lines = [KUAIRAND_HEADER.replace(",is_hate", ""), "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17"]
    write(tmp_path / "kr" / "log_standard_a.csv", "\n".join(lines) + "\n")
    assert "missing column 'is_hate'" in error_of("kuairand-1k", tmp_path / "kr")
    table = write(tmp_path / "t.csv", "user,item_id,timestamp,y\n1,2,3,1\n")
    assert error_of(f"table:{table}", tasks=["y"]).startswith(f"{table}: missing column 'user_id' (found: user, ")
    parquet = tmp_path / "t.parquet"
    pl.DataFrame({"user_id": [1], "item_id": [1], "timestamp": [1]}).write_parquet(parquet)
    assert error_of(f"table:{parquet}", tasks=["y"]).startswith(f"{parquet}: missing column 'y'")


def test_empty_files_and_files_without_rows(tmp_path):
    empty = write(tmp_path / "u.data", "")
    assert error_of("ml-100k", empty) == f"{empty}: empty file"
    header_only = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n")
    assert error_of("ml-20m", header_only) == f"{header_only}: no data rows"
    table = write(tmp_path / "t.csv", "")
    assert error_of(f"table:{table}", tasks=["y"]) == f"{table}: empty file"
    unlabelled = write(tmp_path / "n.csv", "user_id,item_id,timestamp,y\n1,2,3,\n")
    assert error_of(f"table:{unlabelled}", tasks=["y"]) == f"{unlabelled}: no events left (1 missing y)"


def test_unknown_sources_and_missing_files(tmp_path):
    message = error_of("ml-50k", tmp_path)
    assert message.startswith("unknown source 'ml-50k'; expected one of ml-100k, ml-1m, ml-20m")
    assert "table:<path>" in message
    assert error_of("ml-1m", tmp_path / "nope.dat") == f"{tmp_path / 'nope.dat'}: no such file"
    assert error_of("ml-1m", tmp_path) == f"{tmp_path}: no ratings.dat or ml-1m.inter in this folder"
    assert error_of(f"table:{tmp_path / 'gone.csv'}", tasks=["y"]) == f"{tmp_path / 'gone.csv'}: no such file"
    assert error_of("kuairand-1k", tmp_path).startswith(f"{tmp_path}: no log_standard_*.csv here")
    assert "needs a path" in error_of("ml-20m")


def test_malformed_lines(tmp_path):
    ragged = write(tmp_path / "u.data", "1\t2\t3\t4\n1\t2\t3\t4\t5\n")
    assert error_of("ml-100k", ragged) == f"{ragged}: line 2: 5 fields, expected 4"
    short = write(tmp_path / "s" / "u.data", "1\t2\t3\t4\n1\t2\t3\n")
    assert error_of("ml-100k", short) == f"{short}: line 2: 3 fields, expected 4"
    dat = write(tmp_path / "ratings.dat", "1::2::3::4\n1:2::3::4\n")
    assert error_of("ml-1m", dat) == f"{dat}: line 2: expected UserID::MovieID::Rating::Timestamp"
    dat = write(tmp_path / "d" / "ratings.dat", "1::2::3::4\n1:2:::3::4\n")  # a single ':' where '::' belongs
    assert error_of("ml-1m", dat).startswith(f"{dat}: line 2, column 2 (between user_id and item_id): expected UserID::MovieID::Rating::Timestamp")
    half = write(tmp_path / "h" / "u.data", "1\t2\t3.5\t4\n")
    assert error_of("ml-100k", half) == f"{half}: line 1, column 3 (rating): '3.5' is not an action value (an integer 0–32767)"
    header = write(tmp_path / "x.inter", "user_id:token\titem_id\n1\t2\n")
    assert error_of(f"recbole:{header}", tasks=["y"]).startswith(f"{header}: line 1, column 2: 'item_id' is not a RecBole header")


def test_bad_options_are_one_line_errors(tmp_path):
    path = write(tmp_path / "u.data", UDATA)
    assert error_of("ml-100k", path, user_col="u").startswith("user_col applies to recbole:/table: sources only")
    assert "give at least one task" in error_of(f"table:{path}")
    assert "NAME=COLUMN>=X" in error_of("ml-100k", path, tasks=["like=rating>=four"])
    assert "reserved" in error_of("ml-100k", path, tasks=["timestamp=rating>=4"])
    assert "defined twice" in error_of("ml-100k", path, tasks=["a=rating>=4", "a=rating>=3"])
    assert "unsupported table format .json" in error_of(f"table:{write(tmp_path / 'x.json', '{}')}", tasks=["y"])
    assert "include_random applies to KuaiRand" in error_of("ml-100k", path, include_random=True)


def test_task_specs_parse():
    assert TaskSpec.parse("like=rating>=4") == TaskSpec("like", "rating", ">=", 4.0)
    assert TaskSpec.parse("is_click") == TaskSpec("is_click", "is_click")
    assert TaskSpec.parse("long = play_time_ms > 1.5e4") == TaskSpec("long", "play_time_ms", ">", 15000.0)
    assert TaskSpec.parse("neg=score<-0.5") == TaskSpec("neg", "score", "<", -0.5)
    assert str(TaskSpec.parse("love=rating==5")) == "love=rating==5"
    assert TaskSpec.parse("long = play_time_ms > 1.5e4").definition == "play_time_ms>15000"


# --- Read in batches: the first rows decide, later rows must agree -----------------------------


def test_a_later_batch_that_contradicts_the_first_rows_is_an_error_naming_its_line(tmp_path, monkeypatch):
    lines = ["user_id,item_id,timestamp,y", *(f"{u},{u + 1},{100 + u},1" for u in range(40))]
    ids = write(tmp_path / "ids.csv", "\n".join([*lines, "u7,3,200,1"]) + "\n")
    numbers = write(tmp_path / "numbers.csv", "\n".join([*lines, "7,3,2024-01-01 10:00:00,1"]) + "\n")
    formats = tmp_path / "formats.parquet"  # a batch of its own starts with another date-time format
    pl.DataFrame({"user_id": range(41), "item_id": range(41), "y": [1] * 41,
                  "timestamp": [f"2024-05-01 12:{u:02d}:00" for u in range(40)] + ["01/05/2024 12:00"]}).write_parquet(formats)
    # Whole, the file of ids is read as tokens; in batches, its first rows made them integers.
    assert load_source(f"table:{ids}", tasks=["y"]).collect()["user_id"][-1] == "u7"
    whole = error_of(f"table:{formats}", tasks=["y"])
    assert whole.startswith(f"{formats}: row 41, column 'timestamp': '01/05/2024 12:00' is not a timestamp")
    monkeypatch.setattr(sources, "BLOCK_BYTES", 200)
    monkeypatch.setattr(sources, "BATCH_ROWS", 40)
    assert error_of(f"table:{ids}", tasks=["y"]) == (
        f"{ids}: line 42, column 'user_id': 'u7' is not an integer id, as the ids of the first rows were "
        "(a column's ids are read as integers or as tokens, decided on its first rows)"
    )
    assert error_of(f"table:{numbers}", tasks=["y"]) == (
        f"{numbers}: line 42, column 'timestamp': '2024-01-01 10:00:00' is not a timestamp (seconds, like the first row)"
    )
    # Every batch is read in the date-time format inferred from the first row, as the whole file was.
    assert error_of(f"table:{formats}", tasks=["y"]) == whole


def test_batches_keep_line_numbers_and_drops(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "BLOCK_BYTES", 64)
    text = "".join(f"{u}\t{u}\t3\t{u}\n" + ("\n" if u % 7 == 0 else "") for u in range(30)) + "1\tx\t3\t4\n"
    path = write(tmp_path / "u.data", text)
    assert error_of("ml-100k", path) == f"{path}: line 36, column 2 (item_id): 'x' is not an integer id"
    events = load_source("ml-100k", write(tmp_path / "ok" / "u.data", text.rsplit("1\tx", 1)[0]))
    assert events.collect()["user_id"].to_list() == list(range(30))
    assert events.dropped == {"blank line": 5}
