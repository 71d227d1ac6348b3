"""The errors a user can fix: one line each, printed by the command line as `error: …` (exit 2).

`CausalgrError` is the base; `DataError` (bad input data: names file, row and column) and
`ConfigError` (a bad setting: names the key) say which kind it is.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import pydantic


class CausalgrError(ValueError):
    """A mistake in what the user gave. `str(err)` is one line fit to show as is."""


class ConfigError(CausalgrError):
    """A bad setting (config file, `--set` override, command-line option); names the key."""


def format_validation_error(err: pydantic.ValidationError, where: str, known_keys: Sequence[str] = ()) -> str:
    """The first problem of a pydantic validation error as one line: `where: key: problem (got …)`.

    An unknown key gets a "did you mean" from `known_keys`; further problems are counted.
    """
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, list(known_keys), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        message = f"{where}: unknown key '{key}'{hint}"
    else:
        got = first.get("input")
        detail = first["msg"].removeprefix("Value error, ")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        message = f"{where}: {key or 'settings'}: {detail}{shown}"
    more = len(err.errors()) - 1
    return message + (f"; and {more} more problem{'s' * (more > 1)}" if more else "")
