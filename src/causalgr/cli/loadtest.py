"""`causalgr loadtest`: a thin wrapper over `causalgr.serving.loadtest`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from causalgr.serving.loadtest import CHECK_ATOL, LoadTest


def register(app: typer.Typer) -> None:
    """Add `loadtest` to the top-level `causalgr` app."""

    @app.command("loadtest")
    def loadtest_command(
        url: str = typer.Option(..., "--url", help="a running `causalgr serve`, on this machine (loopback only)"),
        requests: int = typer.Option(LoadTest.requests, "--requests", min=1),
        concurrency: int = typer.Option(LoadTest.concurrency, "--concurrency", min=1, help="requests in flight at once"),
        candidates: int = typer.Option(LoadTest.candidates, "--candidates", min=1, help="candidates per request"),
        history: int = typer.Option(LoadTest.history, "--history", min=0, help="history events per request"),
        seed: int = typer.Option(LoadTest.seed, "--seed"),
        check: int = typer.Option(LoadTest.check, "--check", min=0,
                                  help=f"compare this many answers with a local ranker of --run (within {CHECK_ATOL:g})"),
        run: Optional[Path] = typer.Option(None, "--run", help="the served run: its item ids, and the ranker --check uses"),
        timeout_s: float = typer.Option(LoadTest.timeout_s, "--timeout-s", min=0.1, help="for the whole test"),
    ) -> None:
        """Send seeded /v1/rank requests to a server and print latency percentiles, requests/s and
        errors; exit 1 if a request failed or ran out of time, or a checked answer differs."""
        import torch
        from rich.table import Table

        from causalgr.cli.common import console
        from causalgr.serving.loadtest import run_loadtest

        torch.set_num_threads(1)  # the local check ranker shares the machine with the server
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not one log line per request
        result = run_loadtest(LoadTest(url, requests, concurrency, candidates, history, seed, check, run, timeout_s))
        table = Table(title=f"loadtest {url}")
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_row("requests", f"{candidates} candidates, {history} history events, concurrency {concurrency}")
        table.add_row("answered", f"{result.sent:,} of {result.requested:,} in {result.wall_s:.2f} s")
        table.add_row("requests/s", f"{result.requests_per_s:.1f}")
        for q in (50, 95, 99):
            table.add_row(f"p{q} latency", f"{result.percentile(q):.1f} ms")
        table.add_row("errors", ", ".join(f"{k}: {v}" for k, v in sorted(result.errors.items())) or "none")
        if result.max_abs_diff is not None:
            verdict = "equal" if result.check_passed else "DIFFERENT"
            table.add_row("check", f"{result.checked} answers, max |Δp| {result.max_abs_diff:.2e} ({verdict})")
        console().print(table)
        if not result.passed:
            raise typer.Exit(1)
