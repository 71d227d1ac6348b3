"""What a run reports while it trains: TensorBoard event files and log lines off a terminal."""

from __future__ import annotations

import json
import logging
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from causalgr.training import progress
from causalgr.training import step as step_module
from causalgr.training.config import load_config
from causalgr.training.trainer import train
from data_helpers import tiny_dataset

USERS, BATCH, EPOCHS = 48, 16, 3
STEPS = math.ceil(USERS / BATCH)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", max_len=32, users=USERS, items=40, clusters=4,
                        events_mean=18, events_min=8, events_max=30, tasks=("like", "share"), seed=3)


def tiny_config(data_dir, *overrides):
    return load_config(None, [f"data.path={data_dir}", "model.dim=16", "model.heads=2", f"train.epochs={EPOCHS}",
                              "train.patience=5", f"data.batch_size={BATCH}", "train.threads=1",
                              "model.formulation=lfa", *overrides])


def curves(run_dir) -> dict[str, dict[int, float]]:
    """Every scalar curve of the run's event files: tag → {step: value}, checking no step repeats."""
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    found = {}
    for tag in events.Tags()["scalars"]:
        points = events.Scalars(tag)
        found[tag] = {e.step: e.value for e in points}
        assert len(found[tag]) == len(points), f"{tag}: a step is logged twice"
    return found


def test_event_files_hold_every_step_and_the_epoch_metrics(tiny_data, tmp_path):
    train(tiny_config(tiny_data, "train.progress=false"), tmp_path / "run")
    found = curves(tmp_path / "run")
    assert list(found["train/loss"]) == list(range(1, EPOCHS * STEPS + 1))
    assert all(v > 0 for v in found["train/events_per_second"].values())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert found["valid/loss"] == pytest.approx({r["epoch"] * STEPS: r["valid"]["loss"] for r in records})
    assert found["valid/share/auc"] == pytest.approx({r["epoch"] * STEPS: r["valid"]["tasks"]["share"]["auc"]
                                                      for r in records})
    assert found["epoch/train_loss"] == pytest.approx({r["epoch"] * STEPS: r["train_loss"] for r in records})


def test_a_resumed_run_continues_the_curves_without_the_killed_sessions_steps(tiny_data, tmp_path, monkeypatch):
    config = tiny_config(tiny_data, "train.progress=false")
    train(config, tmp_path / "full")
    real_loss = step_module.ranking_loss
    calls = {"n": 0}

    def perturbed_then_dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == STEPS + 3:
            raise KeyboardInterrupt
        loss = real_loss(*args, **kwargs)
        # Past the checkpoint (epoch 1) the killed session logs losses the resumed one will not have.
        return loss * 2 if calls["n"] > STEPS else loss

    monkeypatch.setattr(step_module, "ranking_loss", perturbed_then_dies)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "killed")
    monkeypatch.setattr(step_module, "ranking_loss", real_loss)
    assert list(curves(tmp_path / "killed")["train/loss"]) == list(range(1, STEPS + 3))
    train(config, tmp_path / "killed", resume=True)
    assert curves(tmp_path / "killed")["train/loss"] == pytest.approx(curves(tmp_path / "full")["train/loss"])


def test_off_a_terminal_progress_is_a_log_line_not_a_bar(tiny_data, tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="causalgr.training.progress"):
        train(tiny_config(tiny_data, "train.progress=true", "train.epochs=1"), tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records if r.name == "causalgr.training.progress"]
    assert [line.split(": ")[1].split()[1] for line in lines] == [f"{s}/{STEPS}" for s in range(1, STEPS + 1)]
    assert all("ev/s" in line for line in lines)
    assert "batch/s" not in capfd.readouterr().err and "it/s" not in capfd.readouterr().err
