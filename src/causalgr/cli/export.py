"""`causalgr export`: a thin wrapper over `causalgr.serving.export`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from causalgr.serving.limits import Limits


def register(app: typer.Typer) -> None:
    """Add `export` to the top-level `causalgr` app."""

    @app.command("export")
    def export_command(
        run: Path = typer.Option(..., "--run", help="a run folder made by `causalgr train`"),
        out: Path = typer.Option(..., "--out", help="the torch.export package to write, e.g. ranker.pt2"),
        aoti: Optional[Path] = typer.Option(None, "--aoti", help="also compile an AOTInductor package to this path "
                                            "(needs a C++ compiler; takes minutes)"),
        data: Optional[Path] = typer.Option(None, "--data",
                                            help="take the item ids from this prepared data (default: the run's own)"),
        weights: str = typer.Option("best", "--weights", help="best or latest"),
        max_candidates: int = typer.Option(Limits.max_candidates, "--max-candidates", min=2,
                                           help="the most candidates one call of the package takes"),
    ) -> None:
        """Write a run's ranker as a package that torch loads without causalgr and that answers
        like `Ranker.from_run` (docs/serving.md, "Export")."""
        from causalgr.serving.export import export_run

        exported = export_run(run, out, data=data, weights=weights, max_candidates=max_candidates, aoti=aoti)
        typer.echo(f"wrote {exported.path} ({exported.path.stat().st_size:,} bytes, {exported.seconds:.1f} s)")
        if exported.aoti_path is not None:
            typer.echo(f"wrote {exported.aoti_path} ({exported.aoti_path.stat().st_size:,} bytes, "
                       f"{exported.aoti_seconds:.1f} s)")
