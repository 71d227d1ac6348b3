"""The `causalgr` command: a thin layer over the library (each command is one import away)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from causalgr.cli.bench import bench_command
from causalgr.cli.data import app as data_app
from causalgr.cli.export import register as register_export
from causalgr.cli.loadtest import register as register_loadtest
from causalgr.cli.serve import register as register_serving
from causalgr.cli.train import register as register_training
from causalgr.errors import CausalgrError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(data_app, name="data", help="Fetch, prepare, generate and describe datasets.")
register_training(app)
register_serving(app)
register_export(app)
register_loadtest(app)
app.command("bench")(bench_command)


@app.command("config")
def config_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="a YAML config to resolve (default: none)"),
    overrides: List[str] = typer.Option([], "--set", help="override one key, e.g. --set model.dim=128 (repeatable)"),
) -> None:
    """Print the resolved training config as YAML with every key's description: the built-in
    defaults, then FILE, then the overrides. `causalgr config > my.yaml` starts a config file."""
    from causalgr.training.config import load_config, to_yaml

    typer.echo(to_yaml(load_config(config, overrides), with_help=True), nl=False)


@app.command()
def params(
    num_items: int = typer.Option(1682, help="Item vocabulary (ML-100K has 1,682)."),
    tasks: int = typer.Option(3, help="Number of tasks."),
    max_len: int = typer.Option(512, help="Longest history in events."),
    num_action_values: int = typer.Option(6, help="Action value vocabulary (ratings 1..5 → 6)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config whose model section to count"),
    overrides: List[str] = typer.Option([], "--set", help="override one key, e.g. --set model.dim=128 (repeatable)"),
) -> None:
    """Parameter counts of every formulation × backbone at the same size, so comparisons are seen to be fair."""
    from rich.table import Table

    from causalgr.cli.common import console

    from causalgr.models import BACKBONES, FORMULATIONS, build_model
    from causalgr.training.config import load_config

    section = load_config(config, overrides).model
    sizes = dict(num_items=num_items, tasks=[f"task{t}" for t in range(tasks)], num_action_values=num_action_values,
                 max_len=section.max_len or max_len)
    table = Table(title=f"parameters (num_items={num_items}, dim={section.dim}, layers={section.layers}, "
                        f"heads={section.heads}, max_len={sizes['max_len']})")
    table.add_column("formulation")
    for backbone in BACKBONES:
        table.add_column(backbone, justify="right")
        table.add_column(f"{backbone} w/o item table", justify="right")
    for formulation in FORMULATIONS:
        row = [formulation]
        for backbone in BACKBONES:
            settings = section.model_copy(update={"formulation": formulation, "backbone": backbone, "attention": "auto"})
            model = build_model(settings.to_model_config(**sizes))
            row += [f"{model.num_parameters():,}", f"{model.num_parameters(include_items=False):,}"]
        table.add_row(*row)
    console().print(table)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app()
    except CausalgrError as err:
        # Bad input is the user's to fix: one line naming file, row and column, no traceback.
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)

