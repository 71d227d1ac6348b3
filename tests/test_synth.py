"""Synthetic data: sizes, reproducibility, calibrated labels, and the planted causal chain."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import polars as pl
import pydantic
import pytest
from typer.testing import CliRunner

from causalgr.cli import app
from causalgr.data.synth import SynthSettings, generate, make_world, reference_probabilities
from causalgr.errors import ConfigError

SMALL = dict(users=60, items=80, clusters=6, latent_dim=8, events_mean=30, events_min=5, events_max=60)


def _user_rows(frame: pl.DataFrame, user_id: int) -> pl.DataFrame:
    return frame.filter(pl.col("user_id") == user_id)


def _arrays(rows: pl.DataFrame, settings: SynthSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    items = rows["item_id"].to_numpy() - 1
    labels = rows.select(list(settings.tasks)).to_numpy().astype(np.float64)
    probs = rows.select([f"prob_{t}" for t in settings.tasks]).to_numpy()
    return items, labels, probs


def _bce(p: np.ndarray, y: np.ndarray) -> float:
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def test_sizes_columns_and_time_order():
    settings = SynthSettings(**SMALL)
    events = generate(settings)
    frame = events.frame
    assert events.source == "synthetic"
    assert events.tasks == ("click", "like", "share")
    assert events.sha256 == hashlib.sha256(settings.model_dump_json().encode()).hexdigest()
    assert frame.columns == ["user_id", "item_id", "timestamp", "click", "like", "share",
                             "prob_click", "prob_like", "prob_share"]
    assert frame["user_id"].dtype == pl.Int64 and frame["timestamp"].dtype == pl.Int64
    assert frame["click"].dtype == pl.UInt8 and frame["prob_click"].dtype == pl.Float64
    lengths = frame.group_by("user_id").len()
    assert sorted(lengths["user_id"].to_list()) == list(range(1, settings.users + 1))
    assert lengths["len"].min() >= settings.events_min and lengths["len"].max() <= settings.events_max
    assert frame["item_id"].min() >= 1 and frame["item_id"].max() <= settings.items
    # Rows are user-major with strictly increasing timestamps inside each user.
    users = frame["user_id"].to_numpy()
    assert np.all(np.diff(users) >= 0)
    steps = np.diff(frame["timestamp"].to_numpy())[np.diff(users) == 0]
    assert steps.min() >= 1


def test_length_distribution_follows_settings():
    settings = SynthSettings(users=3000, items=50, clusters=5, events_mean=40, events_sigma=0.3,
                             events_min=10, events_max=200)
    lengths = generate(settings).frame.group_by("user_id").len()["len"].to_numpy()
    assert abs(lengths.mean() - 40) < 2
    assert lengths.std() > 5  # a distribution, not a constant


def test_reproducible_for_a_seed_and_different_across_seeds():
    first = generate(SynthSettings(**SMALL, seed=3))
    again = generate(SynthSettings(**SMALL, seed=3))
    other = generate(SynthSettings(**SMALL, seed=4))
    assert first.frame.equals(again.frame)
    assert first.sha256 == again.sha256
    assert other.sha256 != first.sha256
    assert not (first.frame.height == other.frame.height and first.frame.equals(other.frame))


def test_probabilities_in_open_interval_and_labels_drawn_from_them():
    settings = SynthSettings(**{**SMALL, "users": 500})
    frame = generate(settings).frame
    for task in settings.tasks:
        p = frame[f"prob_{task}"].to_numpy()
        y = frame[task].to_numpy().astype(np.float64)
        assert np.all((p > 0) & (p < 1))
        assert set(np.unique(y)) <= {0.0, 1.0}
        # Calibration in prob deciles: each bin's label rate matches its mean probability.
        edges = np.quantile(p, np.linspace(0, 1, 11))
        bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
        for b in range(10):
            sel = bins == b
            if sel.sum() < 200:
                continue
            sd = np.sqrt((p[sel] * (1 - p[sel])).sum()) / sel.sum()
            assert abs(y[sel].mean() - p[sel].mean()) < 5 * sd + 1e-3, (task, b)


def test_generator_matches_the_reference_definition():
    settings = SynthSettings(**SMALL, seed=7)
    frame = generate(settings).frame
    world = make_world(settings)
    for user_id in (1, 17, 60):
        items, labels, probs = _arrays(_user_rows(frame, user_id), settings)
        expected = reference_probabilities(settings, world, user_id - 1, items, labels)
        np.testing.assert_allclose(probs, expected, atol=2e-5)


def test_flipping_an_earlier_action_moves_every_later_probability():
    settings = SynthSettings(**SMALL, seed=1)
    world = make_world(settings)
    items, labels, _ = _arrays(_user_rows(generate(settings).frame, 5), settings)
    k, task = 3, 1
    low, high = labels.copy(), labels.copy()
    low[k, task], high[k, task] = 0.0, 1.0
    p_low = reference_probabilities(settings, world, 4, items, low)
    p_high = reference_probabilities(settings, world, 4, items, high)
    # Nothing at or before k can see a_k; every later p of that task rises (the kernel is > 0);
    # the other tasks' probabilities pool their own actions only.
    np.testing.assert_array_equal(p_low[: k + 1], p_high[: k + 1])
    assert np.all(p_high[k + 1 :, task] > p_low[k + 1 :, task])
    np.testing.assert_array_equal(np.delete(p_low, task, axis=1), np.delete(p_high, task, axis=1))


def test_without_gamma_actions_do_not_matter():
    settings = SynthSettings(**SMALL, gamma=0.0, seed=1)
    world = make_world(settings)
    items, labels, probs = _arrays(_user_rows(generate(settings).frame, 5), settings)
    rng = np.random.default_rng(0)
    other_labels = rng.integers(0, 2, size=labels.shape).astype(np.float64)
    np.testing.assert_allclose(reference_probabilities(settings, world, 4, items, other_labels), probs, atol=2e-5)


def test_bayes_floor_beats_constant_and_action_history_carries_signal():
    settings = SynthSettings(**{**SMALL, "users": 400})
    frame = generate(settings).frame
    flat = generate(SynthSettings(**{**SMALL, "users": 400}, gamma=0.0)).frame
    for task in settings.tasks:
        y = frame[task].to_numpy().astype(np.float64)
        p = frame[f"prob_{task}"].to_numpy()
        constant = _bce(np.full_like(p, y.mean()), y)
        assert _bce(p, y) < constant - 0.01
        # The planted chain spreads the probabilities: same world, γ=0 gives a narrower spread.
        assert p.std() > flat[f"prob_{task}"].to_numpy().std()


def test_settings_parse_lists_counts_and_broadcast():
    s = SynthSettings(tasks="a,b", gamma="2", beta=[0.5, -1])
    assert s.tasks == ("a", "b") and s.gamma == (2.0, 2.0) and s.beta == (0.5, -1.0)
    assert s.alpha == (0.7, 0.7)
    four = SynthSettings(tasks="4")
    assert four.tasks == ("task0", "task1", "task2", "task3")
    assert four.beta == (0.0, -1.5, -3.0, -4.5)
    assert SynthSettings.model_validate(json.loads(s.model_dump_json())) == s
    for bad in (dict(tasks="a,b", alpha=[1, 2, 3]), dict(nonsense=1), dict(events_min=50, events_max=10),
                dict(tasks="a,a"), dict(items=3, clusters=5), dict(users=0)):
        with pytest.raises(pydantic.ValidationError):
            SynthSettings(**bad)


def test_every_setting_has_a_cli_flag():
    result = CliRunner().invoke(app, ["data", "synth", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for name in [*SynthSettings.model_fields, "out", "max_len"]:
        assert f"--{name.replace('_', '-')} " in result.output, name


def test_cli_generates_and_prepares(tmp_path):
    result = CliRunner().invoke(
        app,
        ["data", "synth", "--out", str(tmp_path / "syn"), "--users", "40", "--items", "50", "--clusters", "5",
         "--events-mean", "20", "--events-min", "5", "--events-max", "40", "--tasks", "click,like",
         "--gamma", "1.0,2.0", "--latent-dim", "4", "--session-gap-median", "3600", "--seed", "2",
         "--max-len", "30"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "syn" / "meta.json").read_text())
    assert meta["tasks"] == ["click", "like"] and meta["max_len"] == 30
    assert meta["source"] == "synthetic"
    # Every flag reached its setting: the data were generated from exactly these settings.
    asked = SynthSettings(users=40, items=50, clusters=5, events_mean=20, events_min=5, events_max=40,
                          tasks=("click", "like"), gamma=(1.0, 2.0), latent_dim=4, session_gap_median=3600, seed=2)
    assert meta["source_sha256"] == asked.sha256()
    assert "users" in result.output and "40" in result.output


def test_cli_rejects_bad_settings_with_one_config_error(tmp_path):
    synth = ["data", "synth", "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(app, [*synth, "--tasks", "a,b", "--alpha", "1,2,3"])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == "data synth: settings: alpha has 3 values for 2 tasks"
    result = CliRunner().invoke(app, [*synth, "--gamma", "1,x"])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception).startswith("data synth: gamma.1: ")
    assert not (tmp_path / "x").exists()


def test_bad_settings_give_one_error_line_and_exit_code_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "causalgr.cli", "data", "synth", "--out", str(tmp_path / "x"), "--users", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    expected = "error: data synth: users: Input should be greater than or equal to 1 (got 0)"
    assert done.stderr.strip().splitlines() == [expected]
