"""What the commands share: reading comma-separated lists, and the console tables print to."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from rich.console import Console

from causalgr.errors import ConfigError

T = TypeVar("T")


def parse_list(text: str, option: str, kind: Callable[[str], T] = str, choices: Sequence[str] | None = None) -> list[T]:
    """`"a,b,c"` → ['a', 'b', 'c'] (or ints with `kind=int`); `ConfigError` naming `option` on an
    empty list, an item `kind` cannot read, an item not in `choices`, or a repeated item."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise ConfigError(f"{option}: names nothing (expected a comma-separated list)")
    try:
        values = [kind(item) for item in items]
    except ValueError:
        raise ConfigError(f"{option}: cannot read {text!r} as a comma-separated list of {kind.__name__}") from None
    bad = [v for v in values if choices is not None and v not in choices]
    if bad:
        raise ConfigError(f"{option}: unknown value '{bad[0]}' (choose from {', '.join(choices)})")
    if len(set(values)) != len(values):
        raise ConfigError(f"{option}: repeats a value in {text!r}")
    return values


def console() -> Console:
    """A rich console; off a terminal (`causalgr … > log`) tables keep their full width instead of
    rich's 80-column default, which squeezes names into `inter…`."""
    return Console() if sys.stdout.isatty() else Console(width=1000)
