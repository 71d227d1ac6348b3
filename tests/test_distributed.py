"""Data-parallel training (docs/design.md §7) with real processes on CPU (gloo): the same losses
and metrics as one process, resume on another number of processes, a killed rank that stops the
run with a message naming it, the process-group timeout that ends a hung rank's wait.

Tolerances: two processes see each global batch split in two, so padding, batch shapes and the
order of float sums differ from one process; everything else is the same computation. Losses
and metrics must agree to 1e-5 relative (`REL`); they agree to about 1e-7. Averaging the ranks'
unweighted mean losses instead moves a step's gradient by 5% or more and the first epoch's
training loss by 3e-5; evaluating on rank 0's share alone changes the evaluated events.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from causalgr.data.loader import SequenceLoader
from causalgr.data.prepared import load_prepared
from causalgr.models import build_model
from causalgr.training.config import load_config
from causalgr.training.distributed import Ranks, process_group, split_by_events
from causalgr.training.evaluate import evaluate_run
from causalgr.training.launch import launch
from causalgr.training.rundir import RunDir
from causalgr.training.loss import ranking_loss
from causalgr.training.trainer import train
from data_helpers import tiny_dataset

SRC = Path(__file__).resolve().parents[1] / "src"
REL = 1e-5
EPOCHS = 3
# A global batch of 5 users splits 3 / 2 (unequal loss positions), and 36 users leave a last
# batch of 1, so one rank steps with an empty share.
SETS = ["model.dim=16", "model.heads=2", "model.dropout=0", f"train.epochs={EPOCHS}", "data.batch_size=5",
        "data.eval_batch_size=7", "train.progress=false"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", max_len=32, users=36, items=40, clusters=4, events_mean=18, events_min=6, events_max=30, tasks=("like", "share"), seed=7)


def config(data_dir, *extra):
    return load_config(None, [f"data.path={data_dir}", *SETS, "train.threads=1", *extra])


@pytest.fixture(scope="module")
def one_process(tiny_data, tmp_path_factory):
    """The reference: the same run in this process (its folder and metrics)."""
    out = tmp_path_factory.mktemp("runs") / "one"
    return out, train(config(tiny_data), out).metrics


def env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), **extra}


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_close(a: float, b: float, what: str) -> None:
    assert a == pytest.approx(b, rel=REL, abs=REL), f"{what}: {a} vs {b}"


def assert_resumed_like_one_process(run_dir: Path, result: dict, one_process: tuple[Path, dict]) -> None:
    """A resumed run's training losses per epoch and final metrics equal the one-process run's."""
    reference_dir, reference = one_process
    for a, b in zip(records(run_dir), records(reference_dir)):
        assert_close(a["train_loss"], b["train_loss"], f"epoch {a['epoch']} train loss")
    for split in ("valid", "test"):
        assert_same_metrics(result[split], reference[split], f"resumed {split}")


def assert_same_metrics(mine: dict, reference: dict, what: str) -> None:
    assert mine["events"] == reference["events"], what
    assert_close(mine["loss"], reference["loss"], f"{what} loss")
    for task, metrics in reference["tasks"].items():
        for name, value in metrics.items():
            assert_close(mine["tasks"][task][name], value, f"{what} {task} {name}")


# --- no processes: the sharding rule and the loss weighting ---------------------------------


def test_split_by_events_deals_longest_first_to_the_least_loaded_rank():
    parts = split_by_events(np.array([3, 10, 2, 9, 8, 1]), 2)
    # 10 → r0, 9 → r1, 8 → r1 (9 < 10), 3 → r0, 2 → r0 (13 < 17), 1 → r0 (15 < 17)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 5], [3, 4]]
    assert [p.tolist() for p in split_by_events(np.array([4, 4]), 3)] == [[0], [1], []]
    rng = np.random.default_rng(0)
    for _ in range(50):
        events = rng.integers(1, 500, size=rng.integers(1, 80))
        parts = split_by_events(events, 4)
        assert sorted(np.concatenate(parts).tolist()) == list(range(len(events)))
        loads = [int(events[p].sum()) for p in parts]
        assert max(loads) - min(loads) <= events.max()


def test_the_ranks_scaled_losses_average_to_the_global_mean_gradient(tiny_data, one_thread):
    """What DDP computes — the mean over ranks of each rank's gradient — equals the gradient of the
    loss over the whole global batch, on every batch of an epoch (including the one-user batch)."""
    data = load_prepared(tiny_data)
    model = build_model(config(tiny_data).model_config_for(data))
    loader = SequenceLoader(data, "train", batch_size=5, shuffle=True, seed=0)
    loader.set_epoch(1)

    def gradient(batch, scale=1.0):
        model.zero_grad()
        (ranking_loss(model(batch), batch.labels, batch.loss_mask) * scale).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    world = 2
    shards = [list(Ranks(rank=r, world_size=world).train_batches(loader)) for r in range(world)]
    unequal = 0
    for step, batch in enumerate(loader):
        expected = gradient(batch)
        ddp = sum(gradient(local, share) for local, share in (s[step] for s in shards)) / world
        # Float sums in another order (two batches, other padding): ~1e-7 of the norm. Averaging
        # the ranks' unweighted means instead would be off by 5e-2 or more.
        assert (ddp - expected).norm() <= REL * expected.norm(), f"step {step}"
        unequal += len({int(s[step][0].loss_mask.sum()) for s in shards}) > 1
    assert unequal >= len(loader) // 2  # the shares differed, so the weighting mattered


# --- real processes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_processes(tiny_data, tmp_path_factory):
    """The same run under `torchrun --nproc-per-node 2 -m causalgr.cli train`, threads left at 0."""
    out = tmp_path_factory.mktemp("runs") / "two"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "causalgr.cli", "train", "--data", str(tiny_data), "--out", str(out)]
    for item in SETS:
        args += ["--set", item]
    # torchrun's own default of one OpenMP thread per rank would hide whether the trainer pins them.
    done = subprocess.run(args, env=env(OMP_NUM_THREADS="2"), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_torchrun_runs_the_command_on_two_pinned_ranks(two_processes):
    out, done = two_processes
    result = json.loads((out / "metrics.json").read_text())
    assert result["processes"] == 2
    assert result["torch_threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # not one thread per core each
    assert done.stdout.count("valid loss") == 1  # rank 0 alone prints the summary


def test_two_processes_train_and_evaluate_like_one(two_processes, one_process):
    out, _ = two_processes
    reference_dir, reference_result = one_process
    mine, reference = records(out), records(reference_dir)
    # Rank 0 alone writes: one record per epoch (a second writer would append each twice).
    assert [r["epoch"] for r in mine] == list(range(1, EPOCHS + 1))
    for a, b in zip(mine, reference):
        assert a["train_events"] == b["train_events"]
        assert_close(a["train_loss"], b["train_loss"], f"epoch {a['epoch']} train loss")
        assert_same_metrics(a["valid"], b["valid"], f"epoch {a['epoch']} valid")
    result = json.loads((out / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert_same_metrics(result[split], reference_result[split], f"final {split}")
    # The metrics gathered over the ranks equal one process's evaluation of the same weights.
    assert_same_metrics(evaluate_run(out, "test", device="cpu"), result["test"], "test, evaluated again")


def test_compare_with_nproc_trains_each_run_on_two_processes(tiny_data, one_process, tmp_path):
    out = tmp_path / "cmp"
    sets = [arg for item in [*SETS, "train.threads=1"] for arg in ("--set", item)]
    args = [sys.executable, "-m", "causalgr.cli", "compare", "--data", str(tiny_data), "--formulations", "interleaved",
            "--seeds", "0", "--out", str(out), "--nproc", "2", *sets]
    done = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "runs" / "interleaved-seed0" / "metrics.json").read_text())
    assert result["processes"] == 2
    _, reference = one_process  # the same config (interleaved, seed 0) in one process
    assert_same_metrics(result["test"], reference["test"], "compare --nproc 2 test")
    assert "--nproc 2" in json.loads((out / "results.json").read_text())["command"]


def test_a_two_process_run_resumes_on_two_processes_exactly_and_on_one(tiny_data, two_processes, one_process,
                                                                      tmp_path):
    stopped = launch(2, config(tiny_data), tmp_path / "two", stop_after_epochs=1)
    assert (stopped.finished, stopped.epoch) == (False, 1)
    assert len(records(tmp_path / "two")) == 1 and not (tmp_path / "two" / "metrics.json").exists()
    shutil.copytree(tmp_path / "two", tmp_path / "one")

    # On the same number of processes: the weights of the uninterrupted run, bit for bit.
    assert launch(2, None, tmp_path / "two", resume=True).finished
    uninterrupted, _ = two_processes
    for name in ("best.safetensors", "model.safetensors"):
        a, b = load_file(tmp_path / "two" / "checkpoint" / name), load_file(uninterrupted / "checkpoint" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    # On one process: the checkpoint holds the unwrapped model, and the batches do not depend on P.
    result = train(None, tmp_path / "one", resume=True).metrics
    assert (result["epochs_run"], result["processes"]) == (EPOCHS, 1)
    assert_resumed_like_one_process(tmp_path / "one", result, one_process)


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid`, oldest first."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split() if stat else []
        if fields and int(fields[1]) == pid:
            found.append((int(fields[19]), int(entry.name)))  # start time, pid
    return [p for _, p in sorted(found)]


def _workers(launcher: subprocess.Popen) -> list[int]:
    """The ranks' processes: the launcher's fork server forks them."""
    servers = [p for p in _children(launcher.pid) if b"forkserver" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return [p for server in servers for p in _children(server)]


def test_a_killed_rank_stops_the_run_with_a_message_naming_it(tiny_data, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "causalgr.cli", "train", "--nproc", "2", "--data", str(tiny_data), "--out", str(out)]
    for item in [*SETS, "train.epochs=500", "train.patience=500"]:
        args += ["--set", item]
    launcher = subprocess.Popen(args, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no epoch finished in 120 s"
        time.sleep(0.05)
    workers = _workers(launcher)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)  # in the second epoch (or its validation)
    killed = time.monotonic()
    _, stderr = launcher.communicate(timeout=120)
    # Far below the 600 s the survivor would wait in a collective (train.dist_timeout): the
    # launcher notices the dead rank and stops the other; ~26 s on a loaded 2-core machine.
    assert time.monotonic() - killed < 60, "the launcher took too long to stop"
    assert launcher.returncode == 1
    assert "error: the run failed on a rank; the launcher stopped the others" in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if f"(pid {workers[-1]}) was killed by SIGKILL" in line]
    assert len(lines) == 1 and lines[0].startswith(("rank 0 of 2", "rank 1 of 2")), stderr[-3000:]
    assert not any(Path(f"/proc/{p}").exists() for p in workers)  # the survivor stopped too
    assert not (out / "metrics.json").exists()


def test_the_process_group_waits_at_most_dist_timeout(monkeypatch):
    """A rank whose peer hangs fails after `train.dist_timeout` instead of waiting forever: the
    timeout goes to the process group (gloo on CPU), whose collectives then raise."""
    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: calls.append((backend, timeout)))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroyed"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with process_group(torch.device("cpu"), 7.5) as ranks:
        assert (ranks.rank, ranks.world_size, ranks.is_main, ranks.device) == (1, 2, False, torch.device("cpu"))
    assert calls == [("gloo", timedelta(seconds=7.5)), "destroyed"]
    assert load_config(None, []).train.dist_timeout == 600


def test_a_one_process_run_resumes_on_two_processes(tiny_data, one_process, tmp_path):
    stopped = train(config(tiny_data), tmp_path / "run", stop_after_epochs=1)
    assert (stopped.finished, stopped.epoch) == (False, 1)
    result = launch(2, None, tmp_path / "run", resume=True).metrics
    assert (result["epochs_run"], result["processes"]) == (EPOCHS, 2)
    assert_resumed_like_one_process(tmp_path / "run", result, one_process)


def test_a_sharded_table_without_torchrec_is_a_one_line_config_error(tiny_data, monkeypatch, tmp_path):
    """Before any process starts; evaluating a finished sharded run needs no TorchRec (its table
    comes back dense), so a config naming it is not refused on reading."""
    from causalgr.errors import ConfigError
    from causalgr.models import item_tables

    monkeypatch.setattr(item_tables, "find_spec", lambda name: None)
    for start in (lambda: train(config(tiny_data, "model.item_table=sharded"), tmp_path / "one"),
                  lambda: launch(2, config(tiny_data, "model.item_table=sharded"), tmp_path / "two")):
        with pytest.raises(ConfigError) as err:
            start()
        assert str(err.value) == ("config: model.item_table: 'sharded' needs TorchRec, which is not installed: "
                                  "run `make distributed` (docs/distributed.md)")
    assert not (tmp_path / "two").exists()


# --- writers killed mid-write -------------------------------------------------------------------

# A child process writes a checkpoint over an earlier one, and stops in the middle: after `PARTS`
# of the new file (atomic_write), or with DCP's data written and its `.metadata` not yet
# (save_sharded). The parent kills it there with SIGKILL.
KILLED_WRITER = """
import os, sys, time
from pathlib import Path
import torch
import torch.distributed.checkpoint as dcp
from causalgr.training.distributed import Ranks
from causalgr.training.rundir import atomic_write
from causalgr.training.sharding import save_sharded

target, marker, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def stop_here(*args, **kwargs):
    marker.write_text("mid-write")
    time.sleep(120)

if kind == "file":
    def write(path):
        with open(path, "wb") as f:
            f.write(b"new" * 1000)
            f.flush()
            stop_here()
            f.write(b"rest")
    atomic_write(target, write)
else:
    dcp.FileSystemWriter.finish = stop_here  # the data files are out; the metadata never comes
    save_sharded({"model": {"w": torch.full((4, 3), 2.0)}}, target, Ranks())
"""


def _kill_mid_write(target: Path, kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), str(marker), kind], env=env(),
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.is_file():
        assert writer.poll() is None, writer.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the writer never got going"
        time.sleep(0.02)
    writer.kill()
    writer.wait(timeout=30)


def test_a_writer_killed_mid_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "state.pt"
    target.write_bytes(b"old")
    _kill_mid_write(target, "file", tmp_path)
    assert target.read_bytes() == b"old"
    assert (tmp_path / "state.pt.tmp").read_bytes().startswith(b"new")  # it was killed mid-write indeed


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # one process, no group: meant
def test_a_dcp_save_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    import torch.distributed.checkpoint as dcp

    from causalgr.training.sharding import save_sharded

    run = RunDir(tmp_path / "run")
    save_sharded({"model": {"w": torch.ones(4, 3)}}, run.sharded_state(1), Ranks())
    _kill_mid_write(run.sharded_state(2), "dcp", tmp_path)
    # The new checkpoint never appears under its name; what was written lies in its .tmp folder.
    assert not run.sharded_state(2).exists()
    assert any(p.suffix == ".distcp" for p in run.sharded_state(2).with_name("epoch-0002.tmp").iterdir())
    state = {"model": {"w": torch.zeros(4, 3)}}
    dcp.load(state, checkpoint_id=run.sharded_state(1))
    assert torch.equal(state["model"]["w"], torch.ones(4, 3))
