"""Real ML-100K, fetched the way `causalgr data fetch ml-100k` does (official archive, else the
recbole wheel from PyPI) into a fresh cache, so the download path itself is exercised."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from causalgr.data import fetch
from causalgr.data.sources import load_source

pytestmark = pytest.mark.integration

EVENTS, USERS, ITEMS = 100_000, 943, 1_682
# Positive counts of the MovieLens tasks over all 100,000 ratings (like ≥ 4, love = 5, dislike ≤ 2).
POSITIVES = {"like": 55_375, "love": 21_201, "dislike": 17_480}
RATES = {"like": 0.55375, "love": 0.21201, "dislike": 0.1748}  # printed to 4 decimals: 0.5537, 0.2120, 0.1748


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def ml100k(cache):
    return fetch.fetch_ml100k(cache)


def test_fetch_gives_a_verified_file_and_the_second_call_stays_offline(ml100k, cache, monkeypatch):
    assert ml100k.parent == cache / "ml-100k"
    assert ml100k.name in ("u.data", "ml-100k.inter")

    def offline(*args, **kwargs):
        raise AssertionError("the second fetch must use the cache")

    monkeypatch.setattr(fetch, "_download_official", offline)
    monkeypatch.setattr(fetch, "_download_wheel", offline)
    assert fetch.fetch_ml100k(cache) == ml100k


def test_ml100k_events_users_items_and_task_rates(ml100k):
    events = load_source("ml-100k", ml100k)
    frame = events.collect()
    assert frame.height == EVENTS
    assert frame["user_id"].n_unique() == USERS
    assert frame["item_id"].n_unique() == ITEMS
    assert events.dropped == {}
    assert sorted(frame["action_value"].unique().to_list()) == [1, 2, 3, 4, 5]
    for task, positives in POSITIVES.items():
        assert int(frame[task].sum()) == positives
        assert float(frame[task].mean()) == pytest.approx(RATES[task], abs=1e-12)


def test_cli_prepare_ml100k_prints_the_counts(cache, ml100k, tmp_path):
    env = {**os.environ, "CAUSALGR_CACHE": str(cache)}
    out = tmp_path / "prepared"
    done = subprocess.run(
        [sys.executable, "-m", "causalgr.cli", "data", "prepare", "ml-100k", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = {" ".join(line.split()[:2]): line.split()[2:] for line in done.stdout.splitlines() if line.split()}
    # The source's counts, then what the default max_len of 512 keeps (556 ratings of the
    # longest histories, up to 737 ratings, are older than a user's 512 most recent).
    assert rows["source users"] == [f"{USERS:,}"]
    assert rows["source items"] == [f"{ITEMS:,}"]
    assert rows["source events"] == [f"{EVENTS:,}"]
    assert rows["kept events"] == [f"{EVENTS - 556:,}"]
    assert "556" in done.stdout.split("dropped rows")[1]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source_sha256"] == hashlib.sha256(ml100k.read_bytes()).hexdigest()
    assert meta["stats"]["source"] == {"events": EVENTS, "users": USERS, "items": ITEMS}
