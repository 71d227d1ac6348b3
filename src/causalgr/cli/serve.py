"""`causalgr serve`: a thin wrapper over `causalgr.serving` (Ranker.from_run + the HTTP app)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from causalgr.serving.limits import Limits
from causalgr.serving.ranker import CACHE_BYTES


def register(app: typer.Typer) -> None:
    """Add `serve` to the top-level `causalgr` app."""

    @app.command("serve")
    def serve_command(
        run: Path = typer.Option(..., "--run", help="a run folder made by `causalgr train`"),
        host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
        port: int = typer.Option(8000, "--port", min=1, max=65535),
        data: Optional[Path] = typer.Option(None, "--data",
                                            help="take the item ids from this prepared data (default: the run's own)"),
        weights: str = typer.Option("best", "--weights", help="best or latest"),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda, auto, …"),
        threads: int = typer.Option(0, "--threads", min=0, help="torch CPU threads; 0 = one per core"),
        max_candidates: int = typer.Option(Limits.max_candidates, "--max-candidates", min=1),
        max_history_events: int = typer.Option(Limits.max_history_events, "--max-history-events", min=0),
        max_body_bytes: int = typer.Option(Limits.max_body_bytes, "--max-body-bytes", min=1),
        cache_bytes: int = typer.Option(CACHE_BYTES, "--cache-bytes", min=0, help="bound of the per-user history cache"),
        compile: bool = typer.Option(False, "--compile", help="compile the warm calls at start-up (CPU; a minute or "
                                     "more; needs a C++ compiler): docs/serving.md, \"The compiled warm path\""),
    ) -> None:
        """Rank candidates over HTTP: POST /v1/rank, POST /v1/users/{user}/events, GET /healthz,
        /v1/model, /metrics (docs/serving.md)."""
        import torch
        import uvicorn

        from causalgr.serving import Ranker
        from causalgr.serving.http import create_app

        if threads:
            torch.set_num_threads(threads)
        if compile:
            typer.echo("compiling the warm path (a minute or more)…", err=True)
        ranker = Ranker.from_run(run, data=data, weights=weights, device=device, cache_bytes=cache_bytes, compile=compile)
        limits = Limits(max_candidates, max_history_events, max_body_bytes)
        uvicorn.run(create_app(ranker, limits), host=host, port=port, log_level="info")
