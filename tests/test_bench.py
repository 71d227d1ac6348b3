"""`causalgr bench`: what it measures (the trainer's step, one row per formulation × backbone ×
length, the median step), its ratios, its memory probe and the command's docs/design.md §5 contract."""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys

import pytest
import torch
from typer.testing import CliRunner

import causalgr.training.step as training
from causalgr import cli
from causalgr.bench import (
    Case,
    add_ratios,
    make_batch,
    make_model,
    measure_peak_memory,
    run_bench,
    time_cases,
    training_step,
)
from causalgr.models import BASELINE
from causalgr.training.config import OptimSection

TINY = Case(batch_events=64, threads=1).with_model(dim=16, layers=1, heads=2, max_len=16)
HAS_MEMORY_PROBE = torch.cuda.is_available() or os.path.exists("/proc/self/clear_refs")
CONTRACT = {"formulation", "backbone", "length", "train_events_per_second", "infer_events_per_second", "peak_memory_bytes"}


@pytest.fixture
def loss_calls(monkeypatch):
    """The loss masks the trainer's step (`causalgr.training.step.train_step`) computes its loss on."""
    masks = []
    real = training.ranking_loss

    def counting(logits, labels, mask, task_weights=None):
        masks.append(mask)
        return real(logits, labels, mask, task_weights)

    monkeypatch.setattr(training, "ranking_loss", counting)
    return masks


def test_one_row_per_formulation_backbone_length_with_the_median_step():
    result = run_bench([BASELINE, "lfa"], ["hstu", "softmax"], [8, 16], TINY, warmup=0, repeats=3, memory=False)
    rows = result["rows"]
    assert [(r["backbone"], r["length"], r["formulation"]) for r in rows] == [
        (b, n, f) for b in ("hstu", "softmax") for n in (8, 16) for f in (BASELINE, "lfa")
    ]
    assert result["device"] and result["memory_method"] is None
    assert result["settings"]["dim"] == 16 and result["settings"]["repeats"] == 3
    for row in rows:
        assert CONTRACT <= row.keys()
        assert row["batch_size"] == 64 // row["length"] and row["events_per_step"] == row["batch_size"] * row["length"]
        for kind in ("train", "infer"):
            seconds = row[f"{kind}_step_seconds"]
            assert len(seconds) == 3 and min(seconds) > 0
            assert row[f"{kind}_events_per_second"] == row["events_per_step"] / statistics.median(seconds)
        assert row["peak_memory_bytes"] is None and row[f"memory_vs_{BASELINE}"] is None
        if row["formulation"] == BASELINE:
            assert row[f"train_speedup_vs_{BASELINE}"] == row[f"infer_speedup_vs_{BASELINE}"] == 1.0


def test_ratios_divide_by_the_baseline_of_the_same_backbone_and_length():
    def row(formulation, backbone, length, train, infer, memory):
        return {"formulation": formulation, "backbone": backbone, "length": length, "train_events_per_second": train,
                "infer_events_per_second": infer, "peak_memory_bytes": memory}

    rows = [
        row(BASELINE, "hstu", 8, 100.0, 1000.0, 400), row("lfa", "hstu", 8, 250.0, 1500.0, 200),
        row(BASELINE, "hstu", 16, 50.0, 300.0, 800), row("lfa", "hstu", 16, 200.0, 900.0, None),
        row(BASELINE, "softmax", 8, 400.0, 3000.0, 100), row("lfa", "softmax", 8, 400.0, 1500.0, 300),
        row("lfa", "softmax", 16, 10.0, 10.0, 10),  # no baseline row at this backbone and length
    ]
    add_ratios(rows)
    got = [(r[f"train_speedup_vs_{BASELINE}"], r[f"infer_speedup_vs_{BASELINE}"], r[f"memory_vs_{BASELINE}"]) for r in rows]
    assert got == [
        (1.0, 1.0, 1.0), (2.5, 1.5, 0.5),
        (1.0, 1.0, 1.0), (4.0, 3.0, None),
        (1.0, 1.0, 1.0), (1.0, 0.5, 3.0),
        (None, None, None),
    ]


def test_the_timed_training_step_is_the_trainers(loss_calls):
    cases = [TINY.with_model(formulation=f) for f in (BASELINE, "mvp")]
    seconds = time_cases(cases, warmup=1, repeats=2)
    assert all(len(s["train"]) == len(s["infer"]) == 2 for s in seconds.values())
    assert len(loss_calls) == 2 * (1 + 2)  # training steps only: inference computes no loss
    B, N = TINY.batch_size, TINY.length
    assert all(mask.shape == (B, N) and mask.dtype == torch.bool and mask.all() for mask in loss_calls)


def test_a_training_step_moves_the_weights_as_the_trainer_does():
    case = TINY.with_model(formulation="lfa", dropout=0.0)
    model, optimizer = make_model(case, total_steps=10)
    theirs = copy.deepcopy(model)
    their_optimizer = training.Optimizer(theirs, OptimSection(), 10)
    before = [p.detach().clone() for p in model.parameters()]
    batch = make_batch(case)
    for _ in range(2):
        training_step(case, model, optimizer, batch)
        training.train_step(theirs, their_optimizer, batch, [1.0] * len(case.model.tasks))
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), theirs.parameters()))
    assert optimizer.lr == their_optimizer.lr


@pytest.mark.skipif(not HAS_MEMORY_PROBE, reason="peak memory needs Linux /proc or CUDA")
def test_the_memory_step_is_the_trainers(loss_calls):
    measure_peak_memory(TINY)  # in this process only to count the steps: its figure needs the subprocess's malloc setting
    assert len(loss_calls) == 2  # one warm-up step, one measured step
    assert all(mask.all() for mask in loss_calls)


@pytest.mark.skipif(not HAS_MEMORY_PROBE, reason="peak memory needs Linux /proc or CUDA")
def test_peak_memory_is_measured_per_case_and_grows_with_the_batch():
    """The probe sees the training step's tensors: 8× the events must cost clearly more."""
    small, large = (
        run_bench([BASELINE], ["hstu"], [256], Case(batch_events=events, threads=1).with_model(dim=32),
                  warmup=0, repeats=1)["rows"][0]
        for events in (256, 2048)
    )
    assert 0 < small["peak_memory_bytes"] and large["peak_memory_bytes"] > 3 * small["peak_memory_bytes"]
    assert small[f"memory_vs_{BASELINE}"] == 1.0


def test_a_case_survives_the_trip_to_the_memory_subprocess():
    case = TINY.with_model(formulation="mvp", backbone="softmax", attention="sdpa")
    assert Case.from_dict(json.loads(json.dumps(case.to_dict()))) == case


def test_cli_writes_json_table_and_plot(tmp_path):
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    result = CliRunner().invoke(cli.app, [
        "bench", "--formulations", f"{BASELINE},mvp", "--backbone", "hstu", "--lengths", "8,16", "--dim", "16",
        "--layers", "1", "--batch-events", "32", "--repeats", "1", "--warmup", "0", "--device", "cpu",
        "--threads", "1", "--no-memory", "--out", str(out), "--plot", str(plot),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert {"device", "settings", "memory_method", "rows"} <= data.keys()
    assert data["settings"]["dim"] == 16 and data["settings"]["layers"] == 1 and data["settings"]["batch_events"] == 32
    assert [(r["formulation"], r["length"]) for r in data["rows"]] == [(BASELINE, 8), ("mvp", 8), (BASELINE, 16), ("mvp", 16)]
    assert all(CONTRACT <= row.keys() for row in data["rows"])
    assert plot.stat().st_size > 0
    assert "mvp" in result.output


@pytest.mark.parametrize("args, message", [
    (["--formulations", f"{BASELINE},nope"], "error: --formulations: unknown value 'nope'"),
    (["--lengths", "128,x"], "error: --lengths: cannot read '128,x'"),
    (["--lengths", "0,8"], "error: --lengths: every length must be >= 1"),
    (["--backbone", "softmax,hstu", "--attention", "blocked"], "error: --attention: 'blocked' is not an engine of the softmax"),
    (["--dim", "10", "--heads", "3"], "error: bench: dim 10 must be divisible by heads 3"),
])
def test_cli_bad_options_are_one_line_errors(tmp_path, monkeypatch, capsys, args, message):
    out = tmp_path / "x.json"
    tiny = ["--lengths", "8", "--dim", "16", "--layers", "1", "--batch-events", "16", "--repeats", "1", "--warmup", "0",
            "--device", "cpu", "--no-memory"]  # should a check be missed, the run stays short (the last option wins)
    monkeypatch.setattr(sys, "argv", ["causalgr", "bench", *tiny, *args, "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
    assert not out.exists()
