"""`causalgr bench`: the DESIGN.md §5 contract on a tiny configuration, and an honest memory probe."""

from __future__ import annotations

import json
import os

import pytest
import torch
import typer
from typer.testing import CliRunner

from causalgr.bench import Case, bench_command, peak_memory_in_subprocess, run_bench

TINY = Case("interleaved", "hstu", 16, dim=16, layers=1, heads=2, batch_events=64, threads=1)


def test_run_bench_rows_and_ratios():
    result = run_bench(["interleaved", "lfa"], ["hstu", "softmax"], [8, 16], TINY, warmup=1, repeats=2, memory=False)
    assert result["device"] and result["settings"]["repeats"] == 2
    rows = {(r["formulation"], r["backbone"], r["length"]): r for r in result["rows"]}
    assert len(rows) == 8
    for (formulation, backbone, length), row in rows.items():
        assert row["events_per_step"] == (64 // length) * length  # events, whatever the token count
        assert row["train_events_per_second"] > 0 and row["infer_events_per_second"] > 0
        assert len(row["train_step_seconds"]) == 2
        base = rows[("interleaved", backbone, length)]
        assert row["train_speedup_vs_interleaved"] == pytest.approx(
            row["train_events_per_second"] / base["train_events_per_second"]
        )
    assert rows[("interleaved", "hstu", 8)]["train_speedup_vs_interleaved"] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available() and not os.path.exists("/proc/self/clear_refs"),
                    reason="peak memory needs Linux /proc or CUDA")
def test_peak_memory_grows_with_the_batch():
    """The probe sees the training step's tensors: 8× the events must cost clearly more."""
    small = peak_memory_in_subprocess(Case("interleaved", "hstu", 256, dim=32, batch_events=256, threads=1))
    large = peak_memory_in_subprocess(Case("interleaved", "hstu", 256, dim=32, batch_events=2048, threads=1))
    assert 0 < small < large and large > 3 * small, (small, large)


def test_cli_writes_json_table_and_plot(tmp_path):
    app = typer.Typer()
    app.command("bench")(bench_command)
    app.callback()(lambda: None)
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    result = CliRunner().invoke(app, [
        "bench", "--formulations", "interleaved,mvp", "--backbone", "hstu", "--lengths", "8,16", "--dim", "16",
        "--layers", "1", "--batch-events", "32", "--repeats", "1", "--warmup", "1", "--device", "cpu",
        "--threads", "1", "--out", str(out), "--plot", str(plot),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert {"device", "settings", "memory_method", "rows"} <= data.keys()
    assert [(r["formulation"], r["length"]) for r in data["rows"]] == [
        ("interleaved", 8), ("mvp", 8), ("interleaved", 16), ("mvp", 16)
    ]
    for row in data["rows"]:
        assert {"train_events_per_second", "infer_events_per_second", "peak_memory_bytes"} <= row.keys()
        assert row["peak_memory_bytes"] is None or row["peak_memory_bytes"] > 0
    assert plot.stat().st_size > 0
    assert "interleaved" in result.output


def test_cli_rejects_unknown_formulation(tmp_path):
    app = typer.Typer()
    app.command("bench")(bench_command)
    app.callback()(lambda: None)
    result = CliRunner().invoke(app, ["bench", "--formulations", "interleaved,nope", "--out", str(tmp_path / "x.json")])
    assert result.exit_code != 0
    assert "nope" in result.output
