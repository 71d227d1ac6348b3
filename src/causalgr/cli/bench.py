"""`causalgr bench`: a thin layer over `causalgr.bench` (its options, progress lines, the rich table)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table

from causalgr.bench import COLUMNS, MODEL, Case, plot_throughput, run_bench, table_rows
from causalgr.cli.common import parse_list
from causalgr.errors import ConfigError
from causalgr.models import ATTENTION_ENGINES, BACKBONES, FORMULATIONS, ModelConfig

_MODEL_HELP = {f.name: f.metadata["help"] for f in fields(ModelConfig)}
_ENGINES = "; ".join(f"{backbone}: {', '.join(engines)}" for backbone, engines in ATTENTION_ENGINES.items())


def bench_command(
    formulations: str = typer.Option(",".join(FORMULATIONS), help="Comma-separated formulations."),
    backbone: str = typer.Option("hstu", help="Backbone, or a comma-separated list of them."),
    lengths: str = typer.Option("128,512,2048", help="Comma-separated sequence lengths in events."),
    dim: int = typer.Option(MODEL.dim, help=_MODEL_HELP["dim"]),
    layers: int = typer.Option(MODEL.layers, help=_MODEL_HELP["layers"]),
    heads: int = typer.Option(MODEL.heads, help=_MODEL_HELP["heads"]),
    batch_events: int = typer.Option(8192, min=1, help="Events per batch; batch size = batch_events // length."),
    repeats: int = typer.Option(5, min=1, help="Timed steps per case (the median is reported)."),
    warmup: int = typer.Option(2, min=0, help="Untimed steps per case before timing."),
    device: str = typer.Option("auto", help="auto (cuda if available), cpu or cuda[:i]."),
    attention: str = typer.Option(MODEL.attention, help=f"Attention engine ({_ENGINES})."),
    out: Path = typer.Option(..., help="JSON file to write."),
    plot: Path | None = typer.Option(None, help="PNG plot of throughput against length."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile every model."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 autocast in the training and inference steps."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Measure peak training memory (subprocess per case)."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch (default: torch's choice)."),
) -> None:
    """Training and inference events/s and peak training memory, per formulation × backbone × length."""
    formulation_list = parse_list(formulations, "--formulations", choices=tuple(FORMULATIONS))
    backbones = parse_list(backbone, "--backbone", choices=tuple(BACKBONES))
    length_list = parse_list(lengths, "--lengths", int)
    for name in backbones:
        if attention not in ATTENTION_ENGINES[name]:
            raise ConfigError(f"--attention: '{attention}' is not an engine of the {name} backbone "
                              f"(choose from {', '.join(ATTENTION_ENGINES[name])})")
    if min(length_list) < 1:
        raise ConfigError(f"--lengths: every length must be >= 1, got {lengths!r}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    try:
        template = Case(batch_events=batch_events, device=device, compile=compile, bf16=bf16, threads=threads)
        template = template.with_model(dim=dim, layers=layers, heads=heads, attention=attention)
    except ValueError as err:  # ModelConfig's checks, e.g. heads must divide dim
        raise ConfigError(f"bench: {err}") from None
    result = run_bench(
        formulation_list, backbones, length_list, template, warmup=warmup, repeats=repeats, memory=memory,
        progress=lambda r: typer.echo(
            f"{r['backbone']} L={r['length']} {r['formulation']}: train {r['train_events_per_second']:,.0f} ev/s", err=True
        ),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    if plot is not None:
        plot_throughput(result, plot)


def print_table(result: dict) -> None:
    """The result table on the terminal (the same cells as `causalgr.bench.markdown_table`)."""
    table = Table(title=f"causalgr bench — {result['device']}")
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in ("backbone", "formulation") else "right")
    for row in table_rows(result):
        table.add_row(*row)
    Console(width=max(Console().width, 120)).print(table)
