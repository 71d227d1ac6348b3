"""`causalgr data …` commands: fetch, prepare, stats and synth (each one import away)."""

from __future__ import annotations

import inspect
import io
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import pydantic
import typer
from pydantic.fields import FieldInfo
from rich import box
from rich.console import Console
from rich.table import Table

from causalgr.data.errors import DataError
from causalgr.data.fetch import fetch_ml100k
from causalgr.data.prepared import SPLITS, load_prepared
from causalgr.data.sequences import PrepareSettings
from causalgr.data.sources import KUAIRAND_TASKS, SOURCES, load_source
from causalgr.data.stream import prepare_stream
from causalgr.data.synth import SynthSettings, synthetic_events
from causalgr.errors import ConfigError, format_validation_error

app = typer.Typer(no_args_is_help=True, add_completion=False)

_DEFAULTS = {name: field.default for name, field in PrepareSettings.model_fields.items()}


class Split(str, Enum):
    user = "user"
    time = "time"


@app.command()
def fetch(
    dataset: str = typer.Argument(..., help="the dataset to download: ml-100k"),
) -> None:
    """Download a dataset into the cache (verified by checksum) and print its path."""
    if dataset != "ml-100k":
        raise DataError(f"cannot fetch {dataset!r}: only ml-100k is downloadable; other sources take --path")
    typer.echo(str(fetch_ml100k()))


@app.command("prepare")
def prepare_command(
    source: str = typer.Argument(..., help=f"one of: {', '.join(SOURCES)}"),
    out: Path = typer.Option(..., "--out", help="folder for the prepared dataset"),
    path: Optional[Path] = typer.Option(
        None, "--path", help="the source's file or folder (ml-100k is fetched when left out)"
    ),
    max_len: int = typer.Option(_DEFAULTS["max_len"], "--max-len", help="keep each user's most recent events"),
    split: Split = typer.Option(Split.user, "--split", help="user: last events of each user; time: global cut-offs"),
    valid_frac: float = typer.Option(_DEFAULTS["valid_frac"], "--valid-frac", help="user split: validation share"),
    test_frac: float = typer.Option(_DEFAULTS["test_frac"], "--test-frac", help="user split: test share"),
    valid_start: Optional[int] = typer.Option(
        None, "--valid-start", help="time split: first validation timestamp (default: the 0.8 quantile)"
    ),
    test_start: Optional[int] = typer.Option(
        None, "--test-start", help="time split: first test timestamp (default: the 0.9 quantile)"
    ),
    unknown_below: int = typer.Option(
        _DEFAULTS["unknown_below"], "--unknown-below", help=PrepareSettings.model_fields["unknown_below"].description
    ),
    task: Optional[List[str]] = typer.Option(
        None,
        "--task",
        help="NAME=COLUMN (0/1 column) or NAME=COLUMN>=X (also > <= < == !=); repeat per task. "
        "Defaults: MovieLens like=rating>=4, love=rating==5, dislike=rating<=2; KuaiRand its eight 0/1 columns "
        f"({', '.join(KUAIRAND_TASKS)})",
    ),
    user_col: Optional[str] = typer.Option(None, "--user-col", help="recbole:/table: user column (default: user_id)"),
    item_col: Optional[str] = typer.Option(None, "--item-col", help="recbole:/table: item column (default: item_id)"),
    time_col: Optional[str] = typer.Option(
        None, "--time-col", help="recbole:/table: timestamp column (default: timestamp)"
    ),
    action_value_col: Optional[str] = typer.Option(
        None, "--action-value-col", help="recbole:/table: small-integer action value column (e.g. a rating)"
    ),
    time_format: Optional[str] = typer.Option(
        None, "--time-format", help="recbole:/table: strftime format of date-time strings (default: inferred)"
    ),
    include_random: bool = typer.Option(
        False, "--include-random", help="KuaiRand: add the log_random_* files to log_standard_*"
    ),
) -> None:
    """Read SOURCE into events, build per-user sequences in OUT and print their statistics."""
    try:
        settings = PrepareSettings(
            max_len=max_len,
            split=split.value,
            valid_frac=valid_frac,
            test_frac=test_frac,
            valid_start=valid_start,
            test_start=test_start,
            unknown_below=unknown_below,
        )
    except pydantic.ValidationError as err:
        raise ConfigError(format_validation_error(err, "data prepare")) from None
    events = load_source(
        source,
        path,
        tasks=task or None,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        action_value_col=action_value_col,
        time_format=time_format,
        include_random=include_random,
    )
    typer.echo(format_stats(prepare_stream(events, out, settings)))


@app.command()
def stats(
    directory: Path = typer.Argument(..., metavar="DIR", help="a prepared dataset folder"),
) -> None:
    """Print the statistics of a prepared dataset."""
    typer.echo(format_stats(load_prepared(directory).meta))


def synth_command(out: Path, max_len: int, **given: Any) -> None:
    """Generate synthetic events with a planted causal chain and prepare them into OUT."""
    try:
        settings = SynthSettings(**{name: value for name, value in given.items() if value is not None})
    except pydantic.ValidationError as err:
        raise ConfigError(format_validation_error(err, "data synth")) from None
    typer.echo(format_stats(prepare_stream(synthetic_events(settings), out, PrepareSettings(max_len=max_len))))


def _synth_option(name: str, field: FieldInfo) -> inspect.Parameter:
    """`--name` for one `SynthSettings` field; unset (None) leaves the field's default.

    Per-task lists (tuple fields) arrive as text, "a,b,c", which `SynthSettings` splits.
    """
    if field.default == ():  # per-task values whose default the description gives
        help_text = f"{field.description}; one value or one per task, comma-separated"
    else:
        default = ",".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
        help_text = f"{field.description} (default {default})"
    kind = str if isinstance(field.default, tuple) else field.annotation
    option = typer.Option(None, f"--{name.replace('_', '-')}", help=help_text, show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind | None)


# The signature typer reads: OUT and --max-len, then one option per generator setting, so a new
# setting is one new field of `SynthSettings` and nothing else.
synth_command.__signature__ = inspect.Signature(
    [
        inspect.Parameter(
            "out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
            default=typer.Option(..., "--out", help="folder for the prepared dataset"),
        ),
        inspect.Parameter(
            "max_len", inspect.Parameter.KEYWORD_ONLY, annotation=int,
            default=typer.Option(_DEFAULTS["max_len"], "--max-len", help="keep each user's most recent events"),
        ),
        *(_synth_option(name, field) for name, field in SynthSettings.model_fields.items()),
    ]
)
app.command("synth")(synth_command)


def format_stats(meta: dict) -> str:
    """A plain-text report of a prepared dataset's `meta` (counts, splits, rates, drops)."""
    stats = meta.get("stats", {})
    tasks = list(meta.get("tasks", []))
    split_names = list(SPLITS)

    def num(value, digits: int = 4) -> str:
        if value is None:
            return "-"
        return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"

    overview = Table(title=f"prepared dataset: {meta.get('source', '?')}", box=box.SIMPLE, show_header=False)
    overview.add_column("what")
    overview.add_column("value", justify="right")
    source = stats.get("source", {})
    for key in ("events", "users", "items"):
        overview.add_row(f"source {key}", num(source.get(key)))
    for key in ("events", "users", "items"):
        overview.add_row(f"kept {key}", num(stats.get(key)))
    definitions = meta.get("task_definitions") or {}
    overview.add_row("tasks", ", ".join(f"{t}={definitions[t]}" if t in definitions else t for t in tasks))
    if meta.get("read_options"):
        overview.add_row("read with", ", ".join(f"{k}={v}" for k, v in meta["read_options"].items()))
    overview.add_row("max_len", num(meta.get("max_len")))
    split = meta.get("split", {})
    overview.add_row("split", ", ".join(f"{k}={v}" for k, v in split.items()))
    if "unknown_item" in meta:
        unknown = meta["unknown_item"]
        overview.add_row(f"unknown item (< {unknown['below']} training events)",
                         f"{unknown['items']:,} items, {unknown['events']:,} events")
    if "length" in stats:
        ln = stats["length"]
        overview.add_row(
            "sequence length",
            f"min {ln['min']}, p50 {ln['p50']}, p90 {ln['p90']}, p99 {ln['p99']}, max {ln['max']}, mean {ln['mean']:.1f}",
        )

    per_split = Table(title="per split (positive rate per task)", box=box.SIMPLE)
    per_split.add_column("split")
    per_split.add_column("events", justify="right")
    for task in tasks:
        per_split.add_column(task, justify="right")
    floor = stats.get("bayes_floor_loss")
    if floor:
        per_split.add_column("bayes floor loss", justify="right")
    split_events = stats.get("split_events", {})
    rates = stats.get("positive_rate", {})
    for key in ["all", *split_names]:
        events = stats.get("events") if key == "all" else split_events.get(key)
        row = [key, num(events)] + [num(rates.get(key, {}).get(task)) for task in tasks]
        if floor:
            row.append(num(floor.get(key, {}).get("loss")))
        per_split.add_row(*row)

    drops = Table(title="dropped rows", box=box.SIMPLE)
    drops.add_column("reason")
    drops.add_column("rows", justify="right")
    dropped = meta.get("dropped", {})
    for reason, rows in sorted(dropped.items(), key=lambda kv: -kv[1]):
        drops.add_row(reason, num(rows))
    if not dropped:
        drops.add_row("none", "0")
    for reason, users in stats.get("dropped_users", {}).items():
        drops.add_row(f"(users dropped: {reason})", num(users))

    console = Console(file=io.StringIO(), width=110, color_system=None, force_terminal=False)
    for table in (overview, per_split, drops):
        console.print(table)
    return console.file.getvalue()
