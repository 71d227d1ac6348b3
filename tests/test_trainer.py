"""Training runs on tiny synthetic data with the real models and loader: resume, early stopping,
checkpoints, evaluation."""

from __future__ import annotations

import json
import math
import re

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from causalgr.cli import app

from causalgr.data.prepared import load_prepared
from causalgr.errors import ConfigError
from causalgr.training.config import load_config
from causalgr.training.evaluate import evaluate_run
from causalgr.training import step as step_module
from causalgr.training.step import lr_factor
from causalgr.training.trainer import train
from data_helpers import tiny_dataset

TIMING_KEYS = {"train_seconds", "seconds_to_best", "train_events_per_second", "seconds_per_epoch"}
RECORD_TIMING_KEYS = {"train_step_seconds", "train_events_per_second", "epoch_seconds", "elapsed_seconds"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", max_len=32, users=48, items=40, clusters=4, events_mean=18, events_min=8, events_max=30, tasks=("like", "share"), seed=3)


def tiny_config(data_dir, *overrides):
    return load_config(None, [f"data.path={data_dir}", "model.dim=16", "model.heads=2", "train.epochs=3",
                              "data.batch_size=16", "train.progress=false", "train.threads=1", *overrides])


def without_timings(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def history(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in RECORD_TIMING_KEYS} for r in records]


@pytest.mark.parametrize("formulation", ["lfa", "interleaved"])
def test_resume_after_an_epoch_ends_like_an_uninterrupted_run(tiny_data, tmp_path, formulation):
    config = tiny_config(tiny_data, f"model.formulation={formulation}")
    full = train(config, tmp_path / "full").metrics
    stopped = train(config, tmp_path / "split", stop_after_epochs=1)
    assert (stopped.finished, stopped.epoch, stopped.metrics) == (False, 1, None)
    assert not (tmp_path / "split" / "metrics.json").exists()
    resumed = train(None, tmp_path / "split", resume=True).metrics  # the saved config
    assert without_timings(resumed) == without_timings(full)
    assert history(tmp_path / "split") == history(tmp_path / "full")
    assert len(history(tmp_path / "full")) == full["epochs_run"] == 3
    for name in ("best.safetensors", "model.safetensors"):
        a = load_file(tmp_path / "full" / "checkpoint" / name)
        b = load_file(tmp_path / "split" / "checkpoint" / name)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_resume_after_a_kill_in_the_middle_of_an_epoch(tiny_data, tmp_path, monkeypatch):
    config = tiny_config(tiny_data, "model.formulation=mvp")
    full = train(config, tmp_path / "full").metrics

    calls = {"n": 0}
    real_loss = step_module.ranking_loss
    steps_per_epoch = math.ceil(48 / 16)

    def dies_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 2:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(step_module, "ranking_loss", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "killed")
    monkeypatch.setattr(step_module, "ranking_loss", real_loss)
    assert len(history(tmp_path / "killed")) == 1
    resumed = train(config, tmp_path / "killed", resume=True).metrics
    assert without_timings(resumed) == without_timings(full)
    # Resuming a finished run returns its result without training again.
    assert train(config, tmp_path / "killed", resume=True).metrics == resumed


def test_early_stopping_keeps_the_best_epoch(tiny_data, tmp_path):
    # min_delta is so large that no epoch after the first counts as an improvement.
    config = tiny_config(tiny_data, "train.epochs=6", "train.patience=2", "train.min_delta=100")
    result = train(config, tmp_path / "run").metrics
    assert (result["best_epoch"], result["epochs_run"], result["stopped_early"]) == (1, 3, True)
    records = history(tmp_path / "run")
    assert [r["best"] for r in records] == [True, False, False]
    assert result["valid"]["loss"] == pytest.approx(records[0]["valid"]["loss"])
    # The test metrics come from the best (epoch 1) weights, as `evaluate` on the run reproduces.
    again = evaluate_run(tmp_path / "run", "test", device="cpu")
    assert again["loss"] == pytest.approx(result["test"]["loss"])
    for task, metrics in result["test"]["tasks"].items():
        assert again["tasks"][task] == pytest.approx(metrics)
    cli = CliRunner().invoke(app, ["evaluate", "--run", str(tmp_path / "run"), "--split", "valid",
                                   "--device", "cpu", "--json", str(tmp_path / "valid.json")])
    assert cli.exit_code == 0, cli.output
    written = json.loads((tmp_path / "valid.json").read_text())
    assert written["loss"] == pytest.approx(result["valid"]["loss"])
    assert written["bayes_floor"]["loss"] == pytest.approx(result["valid"]["bayes_floor"]["loss"])


def test_run_folder_contents_and_metrics(tiny_data, tmp_path):
    config = tiny_config(tiny_data, "train.epochs=2", "train.task_weights={share: 0.5}")
    result = train(config, tmp_path / "run").metrics
    run = tmp_path / "run"
    for name in ("config.yaml", "item_ids.parquet", "metrics.jsonl", "metrics.json", "checkpoint/model.safetensors",
                 "checkpoint/state.pt", "checkpoint/best.safetensors", "curves.png"):
        assert (run / name).is_file(), name
    assert (run / "item_ids.parquet").read_bytes() == (tiny_data / "item_ids.parquet").read_bytes()
    assert load_config(run / "config.yaml") == config
    assert json.loads((run / "metrics.json").read_text()) == result
    data = load_prepared(tiny_data)
    train_events = int((data.split == 0).sum())
    assert result["train_events_per_epoch"] == train_events
    assert [r["train_events"] for r in history(run)] == [train_events] * 2
    assert result["test"]["events"] == int((data.split == 2).sum())
    for split in ("valid", "test"):
        assert set(result[split]["tasks"]) == {"like", "share"}
        assert set(result[split]["tasks"]["like"]) == {"logloss", "ne", "auc", "gauc", "positive_rate"}
        floor = result[split]["bayes_floor"]
        assert 0 < floor["loss"] < result[split]["loss"] + 0.5
    assert 0 < result["seconds_to_best"] <= result["train_seconds"]
    assert result["train_events_per_second"] > 0
    assert result["num_parameters"] > result["num_parameters_without_items"] > 0


def test_the_train_command_ends_with_the_metrics_table_and_file(tiny_data, tmp_path):
    args = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "run")]
    for item in ["model.dim=16", "model.heads=2", "train.epochs=1", "train.progress=false", "train.threads=1"]:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "test (best epoch 1 of 1)" in result.output
    assert result.output.rstrip().endswith(f"→ {tmp_path / 'run' / 'metrics.json'}")


def test_refuses_to_overwrite_or_resume_with_another_config(tiny_data, tmp_path):
    config = tiny_config(tiny_data, "train.epochs=1")
    train(config, tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(config, tmp_path / "run")
    other = tiny_config(tiny_data, "train.epochs=1", "optim.lr=0.01")
    with pytest.raises(ConfigError, match=r"different config \(optim.lr"):
        train(other, tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match="unknown task 'clicks'"):
        train(tiny_config(tiny_data, "train.task_weights={clicks: 2}"), tmp_path / "other")


def test_lr_schedule():
    total, warmup = 100, 0.1
    cosine = [lr_factor(s, total, warmup, "cosine", 0.1) for s in range(total)]
    assert cosine[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert cosine[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:]))
    assert lr_factor(total, total, warmup, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(55, total, warmup, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(70, total, 0.0, "constant", 0.0) == 1.0


def test_a_diverging_run_stops_with_one_line_naming_epoch_and_step(tiny_data, tmp_path):
    from causalgr.training.trainer import TrainingDiverged

    config = tiny_config(tiny_data, "optim.lr=1e30", "optim.warmup=0", "optim.grad_clip=0")
    with pytest.raises(TrainingDiverged) as err:
        train(config, tmp_path / "run")
    message = str(err.value)
    assert re.match(r"train: the training loss became (nan|inf) at epoch \d+, step \d+ of \d+ \(lr [^)]+\); "
                    r"try a lower learning rate, e\.g\. --set optim\.lr=2\.5e\+29$", message), message
    assert "\n" not in message and not (tmp_path / "run" / "metrics.json").exists()


def test_the_item_tables_own_optimizer_follows_the_schedule_outside_the_clipping():
    """`optim.item_optimizer=adagrad`: the table steps by exact Adagrad at AdamW's lr of the same
    step, with no weight decay, and its gradient is not clipped (a sharded table's is updated in
    the backward pass, before any norm is known)."""
    import torch

    from causalgr.training.config import OptimSection
    from causalgr.training.step import Optimizer, adagrad_items

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(6, 3), torch.nn.Linear(3, 1))
    optim = OptimSection(lr=0.1, warmup=0.5, grad_clip=1e-3)
    table = model[0].weight.detach().clone()
    accumulated = torch.zeros_like(table)
    optimizer = Optimizer(model, optim, total_steps=4, items=adagrad_items(model[0], optim))
    assert optimizer.clipped == list(model[1].parameters())
    for step in range(4):
        lr = optimizer.lr
        assert lr == pytest.approx(0.1 * lr_factor(step, 4, 0.5, "cosine", 0.1))
        model.zero_grad()
        model(torch.tensor([1, 2, 2])).sum().backward()
        gradient = model[0].weight.grad.clone()
        optimizer.clip()
        optimizer.step()
        accumulated += gradient**2
        table -= lr * gradient / (accumulated.sqrt() + optim.eps)  # Adagrad, unclipped, at this step's lr
        assert torch.allclose(model[0].weight, table, atol=1e-7), f"step {step}"
