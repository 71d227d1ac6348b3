"""`causalgr train`, `evaluate` and `compare`: thin wrappers over `causalgr.training`."""

from __future__ import annotations

import json
import logging
import os
import shlex
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from causalgr.cli.common import console
from causalgr.errors import ConfigError
from causalgr.models import BACKBONES, BASELINE, FORMULATIONS
from causalgr.training.report import format_number, percent_ci, plus_minus, ratio_ci

_SET_HELP = "override one config key, e.g. --set optim.lr=3e-3 (repeatable; the value is read as YAML)"


def _metrics_table(title: str, result: dict):
    """A rich table of one evaluation result (and its Bayes floor on synthetic data)."""
    table = Table(title=title)
    for column in ("task", "log loss", "NE", "AUC", "GAUC", "positive rate"):
        table.add_column(column, justify="left" if column == "task" else "right")
    rows = [("", result)]
    if result.get("bayes_floor"):
        rows.append(("Bayes floor · ", result["bayes_floor"]))
    for prefix, part in rows:
        for task, m in part["tasks"].items():
            table.add_row(prefix + task, format_number(m["logloss"]), format_number(m["ne"]), format_number(m["auc"]), format_number(m["gauc"]),
                          format_number(m["positive_rate"]))
        table.add_row(prefix + "sum (eval loss)", format_number(part["loss"]), "", "", "", "", end_section=True)
    return table


def register(app: typer.Typer) -> None:
    """Add the training commands to the top-level `causalgr` app."""

    @app.command("train")
    def train_command(
        out: Path = typer.Option(..., "--out", help="run folder: config, metrics, checkpoints"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: built-in defaults)"),
        overrides: List[str] = typer.Option([], "--set", help=_SET_HELP),
        data: Optional[Path] = typer.Option(None, "--data", help="prepared dataset folder (same as --set data.path=…)"),
        resume: bool = typer.Option(False, "--resume", help="continue the interrupted run in OUT (its saved config)"),
        nproc: int = typer.Option(
            1, "--nproc", min=1, help="data-parallel processes on this machine (started as torchrun would); "
            "data.batch_size stays the global batch"
        ),
    ) -> None:
        """Train one model; writes OUT/config.yaml, metrics.jsonl, metrics.json and checkpoint/.

        Also runs under `torchrun --nproc-per-node P -m causalgr.cli train …` (docs/design.md §7).
        """
        from causalgr.training.config import load_config
        from causalgr.training.distributed import is_main_process
        from causalgr.training.launch import RankFailed, launch
        from causalgr.training.trainer import train

        overrides = list(overrides) + ([f"data.path={data}"] if data is not None else [])
        resolved = None if resume and config is None and not overrides else load_config(config, overrides)
        if nproc > 1:
            if "WORLD_SIZE" in os.environ:
                raise ConfigError("train: --nproc starts its own processes; under torchrun leave it out")
            try:
                result = launch(nproc, resolved, out, resume=resume).metrics
            except RankFailed as err:
                typer.echo(f"error: the run failed on a rank; the launcher stopped the others\n{err}", err=True)
                raise typer.Exit(1) from None
        else:
            if not is_main_process():  # a rank under torchrun: rank 0 alone logs and prints
                logging.getLogger("causalgr").setLevel(logging.WARNING)
            result = train(resolved, out, resume=resume).metrics
            if not is_main_process():
                return
        screen = console()
        screen.print(_metrics_table(f"test (best epoch {result['best_epoch']} of {result['epochs_run']})", result["test"]))
        screen.print(
            f"valid loss {result['valid']['loss']:.5f} · test loss {result['test']['loss']:.5f} · "
            f"{result['train_seconds']:.1f} s ({result['seconds_to_best']:.1f} s to best) · "
            f"{result['train_events_per_second']:,.0f} events/s → {out / 'metrics.json'}"
        )

    @app.command("evaluate")
    def evaluate_command(
        run: Path = typer.Option(..., "--run", help="a run folder made by `causalgr train`"),
        split: str = typer.Option("test", "--split", help="valid or test"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="users per batch (default: the run's)"),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, …"),
        json_out: Optional[Path] = typer.Option(None, "--json", help="also write the metrics to this JSON file"),
    ) -> None:
        """Streaming evaluation of a run's best checkpoint on the validation or test positions."""
        from causalgr.training.evaluate import evaluate_run
        from causalgr.training.metrics import json_safe

        result = json_safe(evaluate_run(run, split, batch_size, device))
        console().print(_metrics_table(f"{run} · {split} · {result['events']:,} events", result))
        if json_out is not None:
            json_out.write_text(json.dumps(result, indent=2) + "\n")

    @app.command("compare")
    def compare_command(
        data: Path = typer.Option(..., "--data", help="prepared dataset folder"),
        out: Path = typer.Option(..., "--out", help="comparison folder: runs/, results.json, report.md, plots"),
        formulations: str = typer.Option(",".join(FORMULATIONS), "--formulations", help="comma-separated"),
        backbone: Optional[str] = typer.Option(
            None, "--backbone", help=f"{' or '.join(BACKBONES)} (same as --set model.backbone=…; default: the config's)"
        ),
        seeds: str = typer.Option("0,1,2", "--seeds", help="comma-separated seeds (≥ 2 for intervals)"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="base YAML config shared by every run"),
        overrides: List[str] = typer.Option([], "--set", help=_SET_HELP),
        nproc: int = typer.Option(1, "--nproc", min=1, help="data-parallel processes per run (as in `train --nproc`)"),
    ) -> None:
        """Every formulation × seed with the same budget, then results.json, report.md and plots.

        Finished runs in OUT are skipped and an interrupted one is resumed, so a stopped compare
        continues where it left off.
        """
        from causalgr.cli.common import parse_list
        from causalgr.training.compare import compare
        from causalgr.training.config import load_config, read_config_file
        from causalgr.training.launch import RankFailed

        if backbone is not None and config is not None:
            in_file = read_config_file(config).get("model", {}).get("backbone")
            if in_file not in (None, backbone):
                raise ConfigError(f"compare: --backbone {backbone} contradicts model.backbone: {in_file} in {config}")
        sets = list(overrides) + ([f"model.backbone={backbone}"] if backbone is not None else [])
        base = load_config(config, sets)
        words = ["causalgr", "compare", "--data", str(data), "--formulations", formulations]
        words += ["--backbone", backbone] if backbone is not None else []
        words += ["--seeds", seeds, "--out", str(out)] + (["--nproc", str(nproc)] if nproc > 1 else [])
        if config is not None:
            words += ["--config", str(config)]
        for item in reversed(dict.fromkeys(reversed(overrides))):  # a repeated --set once, where it last counts
            words += ["--set", item]
        if nproc > 1 and "WORLD_SIZE" in os.environ:
            raise ConfigError("compare: --nproc starts its own processes; under torchrun leave it out")
        try:
            results = compare(data, parse_list(formulations, "--formulations", choices=tuple(FORMULATIONS)),
                              parse_list(seeds, "--seeds", int), out, base, command=shlex.join(words), nproc=nproc)
        except RankFailed as err:
            typer.echo(f"error: a run failed on a rank; the launcher stopped the others\n{err}", err=True)
            raise typer.Exit(1) from None
        print_summary(results)
        typer.echo(f"results: {out / 'results.json'} · report: {out / 'report.md'}")


def print_summary(results: dict, out: Console | None = None) -> None:
    """The headline table of a comparison on the terminal (rich)."""
    out = out or console()
    tasks = results["data"]["tasks"]
    floor = results.get("bayes_floor")
    table = Table(title=f"{results['data']['source']} · {results['backbone']} · seeds {results['seeds']}")
    for column in ["formulation", "test loss", f"vs {BASELINE} (95% CI)"] + [f"NE {k}" for k in tasks] + [
        "speedup", "train s", "events/s"
    ]:
        table.add_column(column, justify="left" if column == "formulation" else "right")
    for s in results["summary"]:
        table.add_row(
            s["formulation"], plus_minus(s["loss_mean"], s["loss_ci95"]),
            percent_ci(s["rel_improvement_mean"], s["rel_improvement_ci95"]),
            *[format_number(s["tasks"][k]["ne_mean"]) for k in tasks],
            ratio_ci(s["speedup_mean"], None), format_number(s["train_seconds_mean"], 1),
            f"{s['train_events_per_second_mean']:,.0f}",
        )
    if floor:
        table.add_row("Bayes floor", format_number(floor["loss"]), "—", *[format_number(floor["tasks"][k]["ne"]) for k in tasks],
                      "—", "—", "—")
    out.print(table)
