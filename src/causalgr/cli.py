"""The `causalgr` command: a thin layer over the library (each command is one import away)."""

from __future__ import annotations

import logging
import sys

import typer

from causalgr.data.cli import app as data_app
from causalgr.data.errors import DataError
from causalgr.training.cli import register as register_training

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(data_app, name="data", help="Fetch, prepare, generate and describe datasets.")
register_training(app)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app()
    except DataError as err:
        # Bad input is the user's to fix: one line naming file, row and column, no traceback.
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
