"""The paper's experiment: formulations × seeds on one dataset, same budget, paired statistics.

Every run gets the same config apart from `model.formulation` and `train.seed`: same model size,
epoch cap, early-stopping rule, learning rate and schedule. Runs live in
`OUT/runs/<formulation>-seed<k>/`; a finished run is skipped and an interrupted one resumed, so
an interrupted `compare` continues where it stopped. `OUT/results.json` follows docs/design.md §5.

Definitions (also written into `results.json` under `definitions`):

- relative improvement of a formulation: `(L_interleaved − L_model) / L_interleaved` on the
  test loss (summed per-task log loss), paired by seed; mean and 95% Student-t interval over
  seeds.
- speedup: the ratio of the runs' median per-epoch training throughput (model / interleaved),
  paired by seed. Every formulation sees the same events per epoch, so this is also the ratio of
  training-step seconds per epoch (validation excluded); the median keeps one epoch slowed by
  other load on the machine from moving it. An epoch below `DISTURBED` × its run's median, or a
  run whose median is below `DISTURBED` × the median of its formulation's runs, is reported as
  disturbed.
- training-time reduction: `(T_interleaved − T_model) / T_interleaved` on total wall-clock
  training seconds (early stopping included), paired by seed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.stats

from causalgr.data.prepared import PreparedData, load_prepared
from causalgr.errors import ConfigError
from causalgr.models import BASELINE, FORMULATIONS, PRODUCTION_PEER
from causalgr.training.config import TrainConfig
from causalgr.training.metrics import json_safe
from causalgr.training.rundir import RunDir
from causalgr.training.trainer import train

log = logging.getLogger(__name__)

DISTURBED = 0.8  # throughput below this share of the typical one counts as disturbed by other load

DEFINITIONS = {
    "loss": "test eval loss: sum over tasks of the mean log loss on the test positions (streaming evaluation)",
    "rel_improvement": "(L_interleaved - L_model) / L_interleaved on test loss, paired by seed; > 0 is better",
    "rel_improvement_vs_summed": "(L_summed - L_model) / L_summed on test loss, paired by seed, when summed (the "
    "production peer) is in the comparison; > 0 is better",
    "valid_rel_improvement": "the same on validation loss: the column choices between configurations are made on",
    "ci95": "mean +- t_{0.975, n-1} * sd / sqrt(n) over seeds (Student t); null with fewer than 2 seeds",
    "speedup": "median_events_per_second(model) / median_events_per_second(interleaved), paired by seed: the ratio "
    "of the runs' median per-epoch training throughput (= ratio of training-step seconds per epoch; validation excluded)",
    "disturbed": f"an epoch below {DISTURBED} x its run's median throughput, or a run whose median is below {DISTURBED} x the median "
    "of its formulation's runs (other load on the machine); speedups use medians so one such epoch does not move them",
    "train_time_reduction": "(T_interleaved - T_model) / T_interleaved on total training wall seconds, paired by seed",
    "train_events_per_second": "loss-carrying (item, action) events per second of training steps, whatever the token count",
    "bayes_floor_loss": "test loss of the true label probabilities (synthetic data only)",
    "config": "the config every run shares; model.formulation, model.backbone and train.seed are set per run",
}


def mean_ci95(values: Sequence[float]) -> tuple[float, list[float] | None]:
    """Mean of `values` and its 95% Student-t interval (None with fewer than 2 values)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return math.nan, None
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None
    half = float(scipy.stats.t.ppf(0.975, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, [mean - half, mean + half]


def run_name(formulation: str, seed: int) -> str:
    return f"{formulation}-seed{seed}"


def run_config(base: TrainConfig, data_dir: Path | str, formulation: str, seed: int) -> TrainConfig:
    """`base` with only what differs between the runs of a comparison set."""
    return base.model_copy(
        update={
            "data": base.data.model_copy(update={"path": str(data_dir)}),
            "model": base.model.model_copy(update={"formulation": formulation}),
            "train": base.train.model_copy(update={"seed": seed}),
        }
    )


def _check_args(formulations: Sequence[str], seeds: Sequence[int]) -> None:
    if not formulations:
        raise ConfigError("compare: --formulations names none")
    bad = [f for f in formulations if f not in FORMULATIONS]
    if bad:
        raise ConfigError(f"compare: unknown formulation '{bad[0]}' (choose from {', '.join(FORMULATIONS)})")
    if len(set(formulations)) != len(formulations):
        raise ConfigError("compare: --formulations repeats a formulation")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(f"compare: --seeds must be distinct non-negative integers, got {list(seeds)}")


def compare(
    data_dir: Path | str,
    formulations: Sequence[str],
    seeds: Sequence[int],
    out: Path | str,
    base: TrainConfig | None = None,
    command: str | None = None,
    nproc: int = 1,
) -> dict:
    """Train every formulation × seed on `data_dir` into `out/runs/`, then write `out/results.json`,
    `out/report.md` and the plots; returns the results dict. Every run is `base` (its backbone,
    size and budget) with only `model.formulation` and `train.seed` set per run. `nproc` > 1
    trains each run data-parallel on that many local processes (`launch`), one run after another."""
    from causalgr.training.launch import launch
    from causalgr.training.report import write_report

    _check_args(formulations, seeds)
    base = base or TrainConfig()
    out = Path(out)
    data = load_prepared(data_dir)
    total = len(formulations) * len(seeds)
    records = []
    for formulation in formulations:
        for seed in seeds:
            run = RunDir(out / "runs" / run_name(formulation, seed))
            log.info("[%d/%d] %s%s", len(records) + 1, total, run.name, " (finished, skipped)" if run.is_finished() else "")
            config = run_config(base, data_dir, formulation, seed)
            if nproc > 1:
                result = launch(nproc, config, run.path, resume=True)
            else:
                result = train(config, run, resume=True, data=data)
            records.append((run.name, result.metrics, run.read_history()))
    results = build_results(records, data, base, formulations, seeds, data_dir, command)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(json_safe(results), indent=2) + "\n")
    write_report(results, out)
    return results


def _run_entry(name: str, metrics: dict, history: list[dict]) -> dict:
    strip = lambda split: {k: v for k, v in metrics[split].items() if k != "bayes_floor"}  # noqa: E731
    rates = [r["train_events_per_second"] for r in history]
    median = float(np.median(rates))
    return {
        "formulation": metrics["formulation"],
        "backbone": metrics["backbone"],
        "seed": metrics["seed"],
        "run_dir": f"runs/{name}",
        "test": strip("test"),
        "valid": strip("valid"),
        "best_epoch": metrics["best_epoch"],
        "epochs_run": metrics["epochs_run"],
        "stopped_early": metrics["stopped_early"],
        "train_seconds": metrics["train_seconds"],
        "seconds_to_best": metrics["seconds_to_best"],
        "train_events_per_second": metrics["train_events_per_second"],
        "epoch_events_per_second": rates,
        "median_events_per_second": median,
        "disturbed_epochs": [r["epoch"] for r in history if r["train_events_per_second"] < DISTURBED * median],
        "seconds_per_epoch": metrics["seconds_per_epoch"],
        "num_parameters": metrics["num_parameters"],
        "num_parameters_without_items": metrics["num_parameters_without_items"],
        "valid_curve": [r["valid"]["loss"] for r in history],
        "train_curve": [r["train_loss"] for r in history],
    }


def _paired(runs: list[dict], formulation: str, key, against: str = BASELINE) -> list[float]:
    """`key(model_run, baseline_run)` for every seed that both have; the baseline is `against`."""
    baseline = {r["seed"]: r for r in runs if r["formulation"] == against}
    return [key(r, baseline[r["seed"]]) for r in runs if r["formulation"] == formulation and r["seed"] in baseline]


def summarize(runs: list[dict], formulations: Sequence[str], tasks: Sequence[str], floor_loss: float | None) -> list[dict]:
    """One summary row per formulation over its seeds (docs/design.md §5 `summary`)."""
    summary = []
    for formulation in formulations:
        mine = [r for r in runs if r["formulation"] == formulation]
        loss_mean, loss_ci = mean_ci95([r["test"]["loss"] for r in mine])
        rel = _paired(runs, formulation, lambda m, b: (b["test"]["loss"] - m["test"]["loss"]) / b["test"]["loss"])
        rel_peer = _paired(runs, formulation, lambda m, b: (b["test"]["loss"] - m["test"]["loss"]) / b["test"]["loss"],
                           against=PRODUCTION_PEER)
        rel_peer_mean, rel_peer_ci = mean_ci95(rel_peer) if rel_peer and formulation != PRODUCTION_PEER else (None, None)
        valid_rel = _paired(runs, formulation, lambda m, b: (b["valid"]["loss"] - m["valid"]["loss"]) / b["valid"]["loss"])
        valid_rel_mean, valid_rel_ci = mean_ci95(valid_rel) if valid_rel else (None, None)
        speed = _paired(runs, formulation, lambda m, b: m["median_events_per_second"] / b["median_events_per_second"])
        typical = float(np.median([r["median_events_per_second"] for r in mine]))
        disturbed = [r["run_dir"] for r in mine if r["disturbed_epochs"] or r["median_events_per_second"] < DISTURBED * typical]
        time_cut = _paired(runs, formulation, lambda m, b: (b["train_seconds"] - m["train_seconds"]) / b["train_seconds"])
        rel_mean, rel_ci = mean_ci95(rel) if rel else (None, None)
        speed_mean, speed_ci = mean_ci95(speed) if speed else (None, None)
        cut_mean, cut_ci = mean_ci95(time_cut) if time_cut else (None, None)
        per_task = {}
        for task in tasks:
            row = {}
            for metric in ("logloss", "ne", "auc", "gauc"):
                mean, ci = mean_ci95([r["test"]["tasks"][task][metric] for r in mine])
                row[f"{metric}_mean"], row[f"{metric}_ci95"] = mean, ci
            per_task[task] = row
        mean_of = lambda key: float(np.mean([r[key] for r in mine]))  # noqa: E731
        summary.append({
            "formulation": formulation,
            "backbone": mine[0]["backbone"],
            "seeds": len(mine),
            "loss_mean": loss_mean,
            "loss_std": float(np.std([r["test"]["loss"] for r in mine], ddof=1)) if len(mine) > 1 else None,
            "loss_ci95": loss_ci,
            "valid_loss_mean": float(np.mean([r["valid"]["loss"] for r in mine])),
            "valid_rel_improvement_mean": valid_rel_mean,
            "valid_rel_improvement_ci95": valid_rel_ci,
            "rel_improvement_mean": rel_mean,
            "rel_improvement_ci95": rel_ci,
            "rel_improvement_vs_summed_mean": rel_peer_mean,
            "rel_improvement_vs_summed_ci95": rel_peer_ci,
            "speedup_mean": speed_mean,
            "speedup_ci95": speed_ci,
            "train_time_reduction_mean": cut_mean,
            "train_time_reduction_ci95": cut_ci,
            "train_seconds_mean": mean_of("train_seconds"),
            "seconds_to_best_mean": mean_of("seconds_to_best"),
            "seconds_per_epoch_mean": mean_of("seconds_per_epoch"),
            "train_events_per_second_mean": mean_of("train_events_per_second"),
            "median_events_per_second_median": typical,
            "disturbed_runs": disturbed,
            "best_epoch_mean": mean_of("best_epoch"),
            "num_parameters": mine[0]["num_parameters"],
            "num_parameters_without_items": mine[0]["num_parameters_without_items"],
            "tasks": per_task,
            "bayes_floor_loss": floor_loss,
        })
    return summary


def build_results(
    records: list[tuple[str, dict, list[dict]]],
    data: PreparedData,
    base: TrainConfig,
    formulations: Sequence[str],
    seeds: Sequence[int],
    data_dir: Path | str,
    command: str | None,
) -> dict:
    """The `results.json` dict from the finished runs' `metrics.json` and `metrics.jsonl`."""
    runs = [_run_entry(name, metrics, history) for name, metrics, history in records]
    floor = records[0][1]["test"].get("bayes_floor") if records else None
    tasks = list(data.tasks)
    first = records[0][1]
    return {
        "command": command,
        "data": {
            "path": str(data_dir),
            "source": data.meta.get("source"),
            "tasks": tasks,
            "num_users": data.num_users,
            "num_items": data.num_items,
            "stats": data.meta.get("stats"),
        },
        "backbone": base.model.backbone,
        "formulations": list(formulations),
        "seeds": list(seeds),
        "config": {**base.to_dict(), "data": {**base.data.model_dump(mode="json"), "path": str(data_dir)}},
        "device": first["device"],
        "torch_threads": first["torch_threads"],
        "bayes_floor": floor,
        "bayes_floor_valid": records[0][1]["valid"].get("bayes_floor") if records else None,
        "definitions": DEFINITIONS,
        "runs": runs,
        "summary": summarize(runs, formulations, tasks, floor["loss"] if floor else None),
    }


def paired_change(base: dict, variant: dict, split: str = "valid") -> dict[str, tuple[float, list[float] | None, int]]:
    """How a variant's loss on `split` compares with the base's, per formulation, paired by seed:
    `(L_base − L_variant) / L_base` (> 0: the variant is better) as mean, 95% interval and the
    number of seeds both have. `base` and `variant` are two `results.json` dicts. Choices
    (defaults, variants, learning rates) are made on `split="valid"`; test loss is for the final
    configuration only."""
    if split not in ("valid", "test"):
        raise ConfigError(f"split must be 'valid' or 'test', got {split!r}")
    theirs = {(r["formulation"], r["seed"]): r[split]["loss"] for r in base["runs"]}
    changes: dict[str, list[float]] = {}
    for r in variant["runs"]:
        key = (r["formulation"], r["seed"])
        if key in theirs:
            changes.setdefault(r["formulation"], []).append((theirs[key] - r[split]["loss"]) / theirs[key])
    return {f: (*mean_ci95(values), len(values)) for f, values in changes.items()}
