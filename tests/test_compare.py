"""`causalgr compare` end to end on tiny synthetic data, and the paired statistics behind it."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from causalgr.cli import app
from causalgr.errors import ConfigError
from causalgr.training.compare import compare, mean_ci95, summarize
from causalgr.training.report import PLOTS
from data_helpers import tiny_dataset

TASKS = ("like", "share")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", max_len=24, users=40, items=30, clusters=3, events_mean=15, events_min=8, events_max=24, tasks=TASKS, seed=5)


SETS = ["model.dim=8", "model.layers=1", "train.epochs=2", "data.batch_size=20", "train.threads=1"]


def test_compare_end_to_end_writes_the_contract(tiny_data, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "--data", str(tiny_data), "--formulations", "interleaved,lfa", "--backbone", "hstu",
            "--seeds", "0,1", "--out", str(out)]
    for item in SETS:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Bayes" in result.output
    # Off a terminal (a log file): the summary table at full width, no progress-bar redraws.
    assert "│ interleaved │" in result.output and "…" not in result.output and "\r" not in result.output

    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert sorted((r["formulation"], r["seed"]) for r in runs) == [
        ("interleaved", 0), ("interleaved", 1), ("lfa", 0), ("lfa", 1)
    ]
    for r in runs:
        assert r["backbone"] == "hstu"
        assert isinstance(r["test"]["loss"], float) and r["test"]["loss"] > 0
        for task in TASKS:
            assert set(r["test"]["tasks"][task]) >= {"logloss", "ne", "auc", "gauc"}
        assert r["train_seconds"] > 0 and r["train_events_per_second"] > 0
        assert len(r["valid_curve"]) == r["epochs_run"] <= 2
        assert (out / r["run_dir"] / "metrics.json").is_file()
        # The run's own metrics.json agrees with what results.json reports.
        own = json.loads((out / r["run_dir"] / "metrics.json").read_text())
        assert own["test"]["loss"] == r["test"]["loss"] and own["model"]["dim"] == 8

    summary = {s["formulation"]: s for s in results["summary"]}
    assert set(summary) == {"interleaved", "lfa"}
    floor = results["bayes_floor"]["loss"]
    by = {(r["formulation"], r["seed"]): r for r in runs}
    rel = [(by["interleaved", s]["test"]["loss"] - by["lfa", s]["test"]["loss"]) / by["interleaved", s]["test"]["loss"]
           for s in (0, 1)]
    speed = [by["lfa", s]["median_events_per_second"] / by["interleaved", s]["median_events_per_second"] for s in (0, 1)]
    for name, s in summary.items():
        for key in ("loss_mean", "rel_improvement_mean", "rel_improvement_ci95", "speedup_mean", "bayes_floor_loss"):
            assert key in s, key
        assert s["bayes_floor_loss"] == floor
        assert s["loss_mean"] == pytest.approx(sum(by[name, k]["test"]["loss"] for k in (0, 1)) / 2)
    assert summary["interleaved"]["rel_improvement_mean"] == 0.0 and summary["interleaved"]["speedup_mean"] == 1.0
    lfa = summary["lfa"]
    assert lfa["rel_improvement_mean"] == pytest.approx(sum(rel) / 2)
    low, high = lfa["rel_improvement_ci95"]
    assert low < lfa["rel_improvement_mean"] < high
    assert lfa["speedup_mean"] == pytest.approx(sum(speed) / 2)

    report = (out / "report.md").read_text()
    assert report.count("Bayes floor") >= 2 and "causalgr compare --data" in report
    for name in PLOTS:
        path = out / name
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in report

    # Running it again skips the finished runs (their files stay untouched) and gives the same table.
    stamps = {r["run_dir"]: (out / r["run_dir"] / "metrics.json").stat().st_mtime_ns for r in runs}
    # A repeated --set (scripts pass flags on) is written once in the reproducing command.
    again = CliRunner().invoke(app, args + ["--set", "model.dim=8"])
    assert again.exit_code == 0, again.output
    assert {d: (out / d / "metrics.json").stat().st_mtime_ns for d in stamps} == stamps
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["summary"] == results["summary"] and rerun["command"].count("--set model.dim=8") == 1


def test_compare_continues_an_interrupted_run_and_rejects_a_changed_budget(tiny_data, tmp_path):
    from causalgr.training.config import load_config
    from causalgr.training.trainer import train

    base = load_config(None, SETS)
    out = tmp_path / "cmp"
    # A compare that was stopped inside its only run, after one of two epochs.
    from causalgr.training.compare import run_config

    base = load_config(None, SETS + ["model.backbone=softmax"])
    train(run_config(base, tiny_data, "lagged", 0), out / "runs" / "lagged-seed0", stop_after_epochs=1)
    results = compare(tiny_data, ["lagged"], [0], out, base)
    (run,) = results["runs"]
    assert run["epochs_run"] == 2 and run["backbone"] == "softmax"
    summary = results["summary"][0]
    assert summary["rel_improvement_mean"] is None and summary["rel_improvement_ci95"] is None  # no baseline
    assert summary["loss_ci95"] is None  # one seed: no interval
    changed = load_config(None, SETS + ["model.backbone=softmax", "optim.lr=0.01"])
    with pytest.raises(ConfigError, match="different config"):
        compare(tiny_data, ["lagged"], [0], out, changed)


@pytest.mark.parametrize(
    "formulations,seeds,message",
    [
        (["interleaved", "bert"], [0], "unknown formulation 'bert'"),
        (["lfa", "lfa"], [0], "repeats"),
        (["lfa"], [], "--seeds"),
    ],
)
def test_bad_arguments(tiny_data, tmp_path, formulations, seeds, message):
    with pytest.raises(ConfigError, match=message):
        compare(tiny_data, formulations, seeds, tmp_path / "cmp")


def test_backbone_option_sets_the_config_and_refuses_a_contradiction(tiny_data, tmp_path):
    config = tmp_path / "softmax.yaml"
    config.write_text("model:\n  backbone: softmax\n")
    args = ["compare", "--data", str(tiny_data), "--formulations", "lagged", "--seeds", "0", "--config", str(config),
            "--out", str(tmp_path / "cmp")] + [word for item in SETS for word in ("--set", item)]
    result = CliRunner().invoke(app, args + ["--backbone", "hstu"])
    assert result.exit_code != 0 and "contradicts model.backbone: softmax" in str(result.exception)
    result = CliRunner().invoke(app, args)  # the config's backbone, no --backbone
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["runs"][0]["backbone"] == "softmax"


def test_mean_ci95_and_paired_summary_by_hand():
    mean, ci = mean_ci95([1.0, 2.0, 3.0])  # sd 1, t_{0.975, 2} = 4.3027
    assert mean == 2.0 and ci == pytest.approx([2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)], abs=1e-3)
    assert mean_ci95([5.0]) == (5.0, None)

    def run(formulation, seed, loss, rate, seconds):
        tasks = {t: {"logloss": loss / 2, "ne": 0.9, "auc": 0.7, "gauc": 0.6} for t in TASKS}
        return {"formulation": formulation, "backbone": "hstu", "seed": seed, "test": {"loss": loss, "tasks": tasks},
                "valid": {"loss": loss}, "train_events_per_second": rate, "median_events_per_second": rate,
                "disturbed_epochs": [], "run_dir": f"runs/{formulation}-seed{seed}", "train_seconds": seconds,
                "seconds_to_best": seconds, "seconds_per_epoch": seconds / 4, "best_epoch": 3,
                "num_parameters": 10, "num_parameters_without_items": 5}

    runs = [run("interleaved", 0, 1.0, 100.0, 10.0), run("interleaved", 1, 2.0, 200.0, 20.0),
            run("mvp", 1, 1.5, 300.0, 10.0), run("mvp", 0, 0.9, 150.0, 8.0)]
    (base, mvp) = summarize(runs, ["interleaved", "mvp"], TASKS, None)
    assert mvp["rel_improvement_mean"] == pytest.approx((0.1 + 0.25) / 2)  # paired by seed, not by order
    assert mvp["speedup_mean"] == pytest.approx(1.5)
    assert mvp["train_time_reduction_mean"] == pytest.approx((0.2 + 0.5) / 2)
    assert base["rel_improvement_mean"] == 0.0 and mvp["bayes_floor_loss"] is None
    assert mvp["tasks"]["like"]["ne_mean"] == pytest.approx(0.9)
    assert mvp["rel_improvement_vs_summed_mean"] is None  # no summed in this comparison

    runs += [run("summed", 0, 1.2, 100.0, 10.0), run("summed", 1, 1.0, 100.0, 10.0)]
    base, mvp, summed = summarize(runs, ["interleaved", "mvp", "summed"], TASKS, None)
    assert mvp["rel_improvement_vs_summed_mean"] == pytest.approx((0.3 / 1.2 + -0.5 / 1.0) / 2)  # paired by seed
    assert mvp["rel_improvement_mean"] == pytest.approx((0.1 + 0.25) / 2)  # vs interleaved, unchanged
    assert summed["rel_improvement_vs_summed_mean"] is None and base["rel_improvement_vs_summed_ci95"] is not None


def test_speedup_is_the_ratio_of_per_run_medians_and_disturbed_epochs_are_named():
    from causalgr.training.compare import _run_entry

    def entry(formulation, seed, rates):
        metrics = {"formulation": formulation, "backbone": "hstu", "seed": seed, "best_epoch": 1,
                   "epochs_run": len(rates), "stopped_early": False, "train_seconds": 10.0, "seconds_to_best": 5.0,
                   "train_events_per_second": sum(rates) / len(rates), "seconds_per_epoch": 2.5,
                   "num_parameters": 10, "num_parameters_without_items": 5,
                   "test": {"loss": 1.0, "tasks": {t: {"logloss": 0.5, "ne": 0.9, "auc": 0.7, "gauc": 0.6} for t in TASKS}},
                   "valid": {"loss": 1.0}}
        history = [{"epoch": e + 1, "train_events_per_second": r, "train_loss": 1.0, "valid": {"loss": 1.0}}
                   for e, r in enumerate(rates)]
        return _run_entry(f"{formulation}-seed{seed}", metrics, history)

    runs = [entry("interleaved", 0, [100.0, 100.0, 20.0, 100.0]),  # one epoch slowed by other load
            entry("interleaved", 1, [100.0, 100.0, 100.0]),
            entry("lfa", 0, [200.0, 200.0, 200.0]),
            entry("lfa", 1, [100.0, 100.0, 100.0])]  # a whole run slowed: half its formulation's typical speed
    assert runs[0]["median_events_per_second"] == 100.0 and runs[0]["disturbed_epochs"] == [3]
    base, lfa = summarize(runs, ["interleaved", "lfa"], TASKS, None)
    assert lfa["speedup_mean"] == pytest.approx((2.0 + 1.0) / 2)  # medians, not the disturbed means
    assert base["disturbed_runs"] == ["runs/interleaved-seed0"]
    assert lfa["disturbed_runs"] == ["runs/lfa-seed1"]


def test_paired_change_is_paired_by_formulation_and_seed_on_validation_loss():
    from causalgr.training.compare import paired_change

    def results(losses):
        return {"runs": [{"formulation": f, "seed": seed, "valid": {"loss": valid}, "test": {"loss": 9.0}}
                         for (f, seed), valid in losses.items()]}

    base = results({("lfa", 0): 1.0, ("lfa", 1): 2.0, ("mvp", 0): 1.0})
    variant = results({("lfa", 1): 1.0, ("lfa", 0): 0.9, ("mvp", 5): 0.5})  # mvp shares no seed
    changes = paired_change(base, variant)
    mean, ci, seeds = changes["lfa"]
    assert seeds == 2 and mean == pytest.approx((0.1 + 0.5) / 2) and ci[0] < mean < ci[1]
    assert "mvp" not in changes
    assert paired_change(base, variant, "test")["lfa"][0] == 0.0  # the test loss is another column


def test_paired_tables_pair_across_comparisons_by_seed(tmp_path):
    """scripts/paired_tables.py: the capacity control pairs a formulation with another comparison's
    control seed by seed; the depth study pairs each formulation with itself at the other depth."""
    import subprocess
    import sys
    from pathlib import Path

    def results(path, layers, losses):
        runs = [{"formulation": f, "seed": seed, "test": {"loss": loss}, "num_parameters_without_items": 10 * layers}
                for (f, seed), loss in losses.items()]
        path.write_text(json.dumps({"config": {"model": {"layers": layers}}, "runs": runs}))
        return str(path)

    main = results(tmp_path / "main.json", 2, {("interleaved", 0): 1.0, ("interleaved", 1): 1.0,
                                               ("lfa", 0): 0.9, ("lfa", 1): 0.8, ("lfa", 2): 0.1})
    deep = results(tmp_path / "deep.json", 3, {("interleaved", 1): 2.0, ("interleaved", 0): 1.0,
                                               ("lfa", 0): 0.5, ("lfa", 1): 1.0})
    script = Path(__file__).parents[1] / "scripts" / "paired_tables.py"

    def row(table, start):
        done = subprocess.run([sys.executable, str(script), table, main, deep], capture_output=True, text=True, check=True)
        return next(line for line in done.stdout.splitlines() if line.startswith(start))

    mean, ci = mean_ci95([0.1, 0.6])  # lfa vs the 3-layer interleaved: (1 − 0.9) / 1, (2 − 0.8) / 2
    assert f"+{mean:.2%} [{ci[0]:+.2%}, {ci[1]:+.2%}]" in row("capacity", "| `lfa` | 2 |")
    assert "(control)" in row("capacity", "| `interleaved` | 3 |")
    mean, ci = mean_ci95([0.4 / 0.9, -0.25])  # lfa 2 → 3 layers: (0.9 − 0.5) / 0.9, (0.8 − 1) / 0.8; seed 2 unpaired
    assert f"{mean:+.2%} [{ci[0]:+.2%}, {ci[1]:+.2%}]" in row("depth", "| `lfa` |")
