"""The `causalgr` command: a thin layer over the library (each command is one import away)."""

from __future__ import annotations

import logging
import sys

import typer

from causalgr.cli.bench import bench_command
from causalgr.cli.data import app as data_app
from causalgr.cli.train import register as register_training
from causalgr.errors import CausalgrError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(data_app, name="data", help="Fetch, prepare, generate and describe datasets.")
register_training(app)
app.command("bench")(bench_command)


@app.command()
def params(
    num_items: int = typer.Option(1682, help="Item vocabulary (ML-100K has 1,682)."),
    tasks: int = typer.Option(3, help="Number of tasks."),
    dim: int = 64,
    layers: int = 2,
    heads: int = 2,
    max_len: int = 512,
    num_action_values: int = typer.Option(6, help="Action value vocabulary (ratings 1..5 → 6)."),
) -> None:
    """Parameter counts of every formulation × backbone at the same size, so comparisons are seen to be fair."""
    from rich.console import Console
    from rich.table import Table

    from causalgr.models import BACKBONES, FORMULATIONS, ModelConfig, build_model

    table = Table(title=f"parameters (num_items={num_items}, dim={dim}, layers={layers}, heads={heads}, max_len={max_len})")
    table.add_column("formulation")
    for backbone in BACKBONES:
        table.add_column(backbone, justify="right")
        table.add_column(f"{backbone} w/o item table", justify="right")
    for formulation in FORMULATIONS:
        row = [formulation]
        for backbone in BACKBONES:
            config = ModelConfig(
                formulation=formulation, backbone=backbone, num_items=num_items,
                tasks=tuple(f"task{t}" for t in range(tasks)), dim=dim, layers=layers, heads=heads,
                max_len=max_len, num_action_values=num_action_values,
            )
            model = build_model(config)
            row += [f"{model.num_parameters():,}", f"{model.num_parameters(include_items=False):,}"]
        table.add_row(*row)
    Console().print(table)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app()
    except CausalgrError as err:
        # Bad input is the user's to fix: one line naming file, row and column, no traceback.
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)

