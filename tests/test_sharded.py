"""The sharded item table (`model.item_table=sharded`, docs/distributed.md) with real processes on
CPU (gloo), one torch thread each: TorchRec's row-wise sharding computes what a dense table with
the same optimizer (exact Adagrad) computes, step by step and over whole runs; its DCP checkpoints
resume a killed run to the uninterrupted one's result, and load on another number of processes.

Tolerances as in `test_distributed.py` (`REL` = 1e-5; the runs agree to about 1e-7): a rank's
share is a smaller batch with other padding, the table's gradient arrives through an all-to-all,
and fbgemm keeps its learning rate in float32.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torchrec", reason="the sharded item table needs TorchRec: make distributed")

from causalgr.training.evaluate import evaluate_run, load_run  # noqa: E402
from causalgr.training.launch import launch  # noqa: E402
from causalgr.training.rundir import RunDir  # noqa: E402
from causalgr.training.trainer import train  # noqa: E402
from data_helpers import tiny_dataset  # noqa: E402
from test_distributed import EPOCHS, REL, SETS, assert_close, assert_same_metrics, config, env, records  # noqa: E402

TESTS = Path(__file__).resolve().parent
SHARDED = "model.item_table=sharded"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    # The dataset of test_distributed.py: shares of 3 and 2 users, and a last batch of one user.
    return tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", max_len=32, users=36, items=40, clusters=4, events_mean=18, events_min=6, events_max=30, tasks=("like", "share"), seed=7)


@pytest.fixture(scope="module")
def dense_adagrad(tiny_data, tmp_path_factory):
    """The reference: one process, a dense table updated by exact Adagrad (what TorchRec runs)."""
    out = tmp_path_factory.mktemp("runs") / "dense"
    return out, train(config(tiny_data, "optim.item_optimizer=adagrad"), out).metrics


@pytest.fixture(scope="module")
def two_sharded(tiny_data, tmp_path_factory):
    """`torchrun --nproc-per-node 2 -m causalgr.cli train --set model.item_table=sharded`."""
    out = tmp_path_factory.mktemp("runs") / "sharded"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "causalgr.cli", "train", "--data", str(tiny_data), "--out", str(out)]
    for item in [*SETS, "train.threads=1", SHARDED]:
        args += ["--set", item]
    done = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def assert_same_run(run_dir: Path, reference_dir: Path, result: dict, reference: dict, what: str) -> None:
    """Per epoch: training loss and validation metrics; then the final validation and test metrics."""
    mine, theirs = records(run_dir), records(reference_dir)
    assert [r["epoch"] for r in mine] == [r["epoch"] for r in theirs] == list(range(1, EPOCHS + 1)), what
    for a, b in zip(mine, theirs):
        assert a["train_events"] == b["train_events"]
        assert_close(a["train_loss"], b["train_loss"], f"{what}: epoch {a['epoch']} train loss")
        assert_same_metrics(a["valid"], b["valid"], f"{what}: epoch {a['epoch']} valid")
    for split in ("valid", "test"):
        assert_same_metrics(result[split], reference[split], f"{what}: final {split}")


def test_a_sharded_step_equals_a_dense_one(tiny_data, tmp_path):
    """Every step of an epoch on 2 processes: the forward pass on a rank's share, the global loss,
    and every weight after the backward pass and the optimizer step (the rank's rows of the table,
    and the rest) equal a dense table's on the whole global batch, clipping and schedule included."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            str(TESTS / "sharded_step.py"), str(tiny_data), str(tmp_path)]
    done = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [sum(r[0]["table_rows"] for r in reports)] == [41]  # 40 items + padding, split over the ranks
    assert min(r[0]["table_rows"] for r in reports) > 0
    assert len(reports[0]) == 8  # 36 users in batches of 5
    for report in reports:
        for step in report:
            for what in ("logits", "loss", "weights"):
                assert step[what] <= REL, f"step {step['step']}: {what} differ by {step[what]}"
    # The steps moved the weights: equal weights are not equal by standing still.
    assert reports[0][0]["dense_loss"] != reports[0][-1]["dense_loss"]


def test_two_processes_with_a_sharded_table_train_like_one_with_a_dense_table(two_sharded, dense_adagrad):
    reference_dir, reference = dense_adagrad
    result = json.loads((two_sharded / "metrics.json").read_text())
    assert (result["processes"], result["model"]["item_table"]) == (2, "sharded")
    assert_same_run(two_sharded, reference_dir, result, reference, "2 sharded vs 1 dense")
    # The DCP checkpoint comes back whole in one process, as a dense table, for evaluation and serving.
    assert RunDir(two_sharded).weights("best") == RunDir(two_sharded).sharded_state(result["best_epoch"])
    assert_same_metrics(evaluate_run(two_sharded, "test", device="cpu"), result["test"], "test, evaluated again")
    model, _ = load_run(two_sharded)
    assert model.items.weight.shape == (41, 16) and not model.items.weight[0].any()


def _wait_for_epoch(out: Path, launcher: subprocess.Popen, epoch: int) -> None:
    deadline = time.monotonic() + 120
    while not (out / "checkpoint" / "state.pt").is_file() or len(records(out) if (out / "metrics.jsonl").is_file() else []) < epoch:
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"epoch {epoch} did not finish in 120 s"
        time.sleep(0.02)


def test_a_killed_sharded_run_resumes_to_the_uninterrupted_result(tiny_data, two_sharded, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "causalgr.cli", "train", "--nproc", "2", "--data", str(tiny_data), "--out", str(out)]
    for item in [*SETS, "train.threads=1", SHARDED]:
        args += ["--set", item]
    launcher = subprocess.Popen(args, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    _wait_for_epoch(out, launcher, 1)
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
    launcher.communicate(timeout=60)
    assert not (out / "metrics.json").exists()
    resumed = launch(2, None, out, resume=True)
    assert resumed.finished
    uninterrupted = json.loads((two_sharded / "metrics.json").read_text())
    # The same processes, batches and arithmetic: the same numbers, not merely close ones.
    for split in ("valid", "test"):
        assert resumed.metrics[split]["loss"] == uninterrupted[split]["loss"], split
    assert [r["train_loss"] for r in records(out)] == [r["train_loss"] for r in records(two_sharded)]
    # The checkpoint keeps the last and the best epoch's folders; the killed run's leftovers are gone.
    kept = {p.name for p in RunDir(out).sharded_states.iterdir()}
    assert kept == {RunDir(out).sharded_state(e).name for e in (EPOCHS, resumed.metrics["best_epoch"])}


def test_a_sharded_checkpoint_resumes_on_another_number_of_processes(tiny_data, dense_adagrad, tmp_path):
    """2 → 1 and 1 → 2: DCP reads the table's rows into however many ranks the run now has (one
    process runs the same sharded code in a process group of its own)."""
    reference_dir, reference = dense_adagrad
    stopped = launch(2, config(tiny_data, SHARDED), tmp_path / "two", stop_after_epochs=1)
    assert (stopped.finished, stopped.epoch) == (False, 1)
    result = train(None, tmp_path / "two", resume=True).metrics
    assert result["processes"] == 1
    assert_same_run(tmp_path / "two", reference_dir, result, reference, "2 → 1")

    stopped = train(config(tiny_data, SHARDED), tmp_path / "one", stop_after_epochs=1)
    assert (stopped.finished, stopped.epoch) == (False, 1)
    result = launch(2, None, tmp_path / "one", resume=True).metrics
    assert result["processes"] == 2
    assert_same_run(tmp_path / "one", reference_dir, result, reference, "1 → 2")


def test_adamw_on_a_sharded_table_is_a_config_error():
    from causalgr.errors import ConfigError
    from causalgr.training.config import load_config

    with pytest.raises(ConfigError, match="item_optimizer 'adamw' cannot update a sharded item table"):
        load_config(None, [SHARDED, "optim.item_optimizer=adamw"])
