"""`causalgr train`, `evaluate`, `compare` and `bench`."""

import typer


def register(app: typer.Typer) -> None:
    """Add the training commands to the top-level `causalgr` app."""
