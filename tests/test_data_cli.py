"""`causalgr data …`: fetch, prepare, stats (in-process through typer, plus the real entry point
for the error path: `error: …` on stderr and exit code 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from causalgr.cli import app
from causalgr.cli import data as data_cli
from causalgr.data import fetch
from causalgr.data.errors import DataError
from causalgr.data.sequences import DROP_TRUNCATED
from causalgr.errors import ConfigError

runner = CliRunner()

# 3 users, 4 items, 10 ratings
UDATA = "".join(
    f"{u}\t{i}\t{r}\t{t}\n"
    for u, i, r, t in [
        (1, 10, 5, 100), (1, 11, 4, 101), (1, 12, 1, 102), (1, 13, 3, 103), (2, 10, 2, 200),
        (2, 11, 5, 201), (2, 12, 4, 202), (3, 13, 4, 300), (3, 10, 3, 301), (3, 11, 1, 302),
    ]
)  # fmt: skip


@pytest.fixture
def udata(tmp_path) -> Path:
    path = tmp_path / "u.data"
    path.write_text(UDATA)
    return path


def invoke(*args: str):
    return runner.invoke(app, ["data", *args])


def test_prepare_prints_stats_and_writes_the_dataset(tmp_path, udata):
    out = tmp_path / "prepared"
    result = invoke("prepare", "ml-100k", "--path", str(udata), "--out", str(out))
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["num_users"], meta["num_items"], meta["stats"]["events"]) == (3, 4, 10)
    assert meta["tasks"] == ["like", "love", "dislike"]
    assert meta["source"] == "ml-100k"
    assert "prepared dataset: ml-100k" in result.output
    lines = {line.split()[0]: line.split()[1:] for line in result.output.splitlines() if line.split()}
    pairs = {" ".join(line.split()[:2]): line.split()[2:] for line in result.output.splitlines() if line.split()}
    assert pairs["kept users"] == ["3"] and pairs["kept items"] == ["4"] and pairs["kept events"] == ["10"]
    assert pairs["source events"] == ["10"]
    assert lines["all"][:2] == ["10", "0.5000"]  # 10 events, like rate 5/10

    again = invoke("stats", str(out))
    assert again.exit_code == 0
    # Same report (the split settings line may list its keys in another order once reloaded).
    report = [line for line in result.output.splitlines() if not line.strip().startswith("split ")]
    assert [line for line in again.output.splitlines() if not line.strip().startswith("split ")] == report


def test_report_counts_splits_and_drops(tmp_path):
    udata = tmp_path / "u.data"
    udata.write_text(UDATA.replace("\n", "\n\n", 1))  # a blank line after the first rating
    result = invoke("prepare", "ml-100k", "--path", str(udata), "--out", str(tmp_path / "p"), "--max-len", "2")
    assert result.exit_code == 0, result.output
    # {what the row names: its last cell}
    rows = {line.rsplit(maxsplit=1)[0].strip(): line.split()[-1] for line in result.output.splitlines() if line.strip()}
    assert rows["kept events"] == "6" and rows["max_len"] == "2"
    assert rows[DROP_TRUNCATED] == "4"  # users with 4, 3 and 3 ratings keep 2 each
    assert rows["blank line"] == "1"
    lines = {line.split()[0]: line.split()[1:] for line in result.output.splitlines() if line.split()}
    assert lines["train"][0] == "6" and lines["test"][0] == "0"


def test_prepare_passes_split_truncation_and_tasks(tmp_path, udata):
    out = tmp_path / "p"
    result = invoke(
        "prepare", "ml-100k", "--path", str(udata), "--out", str(out), "--max-len", "2",
        "--split", "time", "--valid-start", "200", "--test-start", "300", "--task", "good=rating>=3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tasks"] == ["good"]
    assert meta["max_len"] == 2
    assert meta["split"] == {"kind": "time", "valid_start": 200, "test_start": 300}
    assert meta["source"] == "ml-100k"
    assert meta["task_definitions"] == {"good": "rating>=3"}
    assert sum(meta["dropped"].values()) > 0  # truncation to 2 events per user
    assert "good=rating>=3" in result.output


def test_a_new_task_threshold_is_a_new_dataset(tmp_path, udata):
    out = tmp_path / "p"
    args = ["prepare", "ml-100k", "--path", str(udata), "--out", str(out)]
    assert invoke(*args, "--task", "good=rating>=3").exit_code == 0
    first = json.loads((out / "meta.json").read_text())
    result = invoke(*args, "--task", "good=rating>=4")
    assert result.exit_code == 0, result.output
    second = json.loads((out / "meta.json").read_text())
    assert second["task_definitions"] == {"good": "rating>=4"}
    assert second["cache_key"] != first["cache_key"]
    assert second["stats"]["positive_rate"]["all"]["good"] == 0.5  # 5 of 10 ratings are >= 4 (7 are >= 3)


def test_prepare_table_with_column_mapping(tmp_path):
    table = tmp_path / "log.csv"
    table.write_text("uid,vid,ts,click,stars\na,x,2024-01-01 00:00:00,1,5\na,y,2024-01-02 00:00:00,0,2\nb,x,2024-01-03 00:00:00,1,4\n")
    out = tmp_path / "p"
    result = invoke(
        "prepare", f"table:{table}", "--out", str(out), "--user-col", "uid", "--item-col", "vid",
        "--time-col", "ts", "--task", "click", "--task", "like=stars>=4", "--action-value-col", "stars",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tasks"] == ["click", "like"]
    assert meta["task_definitions"] == {"click": "click", "like": "stars>=4"}
    assert meta["read_options"] == {"user_col": "uid", "item_col": "vid", "time_col": "ts", "action_value_col": "stars"}
    assert meta["num_action_values"] == 6
    assert (meta["num_users"], meta["num_items"]) == (2, 2)


def test_prepare_ml100k_without_path_fetches(monkeypatch, tmp_path, udata):
    monkeypatch.setattr(fetch, "fetch_ml100k", lambda cache_dir=None: udata)
    result = invoke("prepare", "ml-100k", "--out", str(tmp_path / "p"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p" / "meta.json").read_text())["stats"]["events"] == 10


def test_fetch_prints_the_path(monkeypatch, tmp_path):
    monkeypatch.setattr(data_cli, "fetch_ml100k", lambda: tmp_path / "ml-100k" / "u.data")
    result = invoke("fetch", "ml-100k")
    assert result.exit_code == 0
    assert result.output.strip() == str(tmp_path / "ml-100k" / "u.data")
    result = invoke("fetch", "ml-1m")
    assert isinstance(result.exception, DataError)
    assert "only ml-100k is downloadable" in str(result.exception)


def test_bad_settings_are_config_errors(tmp_path, udata):
    result = invoke("prepare", "ml-100k", "--path", str(udata), "--out", str(tmp_path / "p"), "--split", "random")
    assert result.exit_code == 2
    result = invoke("prepare", "ml-100k", "--path", str(udata), "--out", str(tmp_path / "p"), "--valid-frac", "0.6", "--test-frac", "0.5")
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception).startswith("data prepare: settings: valid_frac + test_frac must be < 1")
    assert not (tmp_path / "p").exists()


def test_stats_of_a_folder_that_is_not_prepared(tmp_path):
    result = invoke("stats", str(tmp_path))
    assert isinstance(result.exception, DataError)


def test_synth_is_registered():
    result = invoke("synth", "--help")
    assert result.exit_code == 0
    assert "--out" in result.output


def test_bad_data_gives_one_error_line_and_exit_code_2(tmp_path):
    bad = tmp_path / "u.data"
    bad.write_text("1\t10\t5\t100\n1\tten\t4\t101\n")
    done = subprocess.run(
        [sys.executable, "-m", "causalgr.cli", "data", "prepare", "ml-100k", "--path", str(bad), "--out", str(tmp_path / "p")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {bad}: line 2, column 2 (item_id): 'ten' is not an integer id"]
    assert "Traceback" not in done.stderr


def test_a_bad_row_past_the_first_block_gives_one_error_line_and_exit_code_2(tmp_path):
    """The source is read while preparing, block by block: a row that contradicts the first rows'
    integer ids, 100,000 lines (1.5 MB, past pyarrow's first block) in, is still one line naming it."""
    table = tmp_path / "t.csv"
    table.write_text("user_id,item_id,timestamp,y\n" + "".join(f"{k % 97},{k % 13},{k},1\n" for k in range(100_000)) + "u7,3,1,0\n")
    out = tmp_path / "p"
    done = subprocess.run(
        [sys.executable, "-m", "causalgr.cli", "data", "prepare", f"table:{table}", "--task", "y", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {table}: line 100002, column 'user_id': 'u7' is not an integer id, as the ids of the first rows were "
        "(a column's ids are read as integers or as tokens, decided on its first rows)"
    ]
    assert list(out.iterdir()) == []  # nothing half-written
