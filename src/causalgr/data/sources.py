"""Source files → the canonical event table (docs/design.md §3).

`load_source(source, path)` reads one supported format and returns an `EventTable` whose rows
keep the file's original order. Sources:

- `ml-100k`: GroupLens `u.data` (tab-separated `user item rating timestamp`, no header) or RecBole
  `ml-100k.inter`; with no path it is fetched (`causalgr.data.fetch.fetch_ml100k`).
- `ml-1m`: GroupLens `ratings.dat` (`UserID::MovieID::Rating::Timestamp`).
- `ml-20m`: GroupLens `ratings.csv` (`userId,movieId,rating,timestamp`, half-star ratings).
- `kuairand-1k`, `kuairand-pure`, `kuairand-27k`: a KuaiRand directory (or its `data/` folder, or
  one log file) with `log_standard_*.csv`; `log_random_*.csv` only with `include_random=True`.
- `recbole:<path>`: any RecBole atomic `.inter` file (header `name:type`, tab-separated).
- `table:<path>`: a `.csv`, `.tsv` or `.parquet` table with a column mapping.

A MovieLens path may be the file itself, the folder holding it, or the RecBole atomic `.inter`
version of it (recognised by its `name:type` header).

Tasks are written `NAME=COLUMN` (a 0/1 label column; `COLUMN` alone names the task after the
column) or `NAME=COLUMN>=X` (a threshold on a numeric column; also `>`, `<=`, `<`, `==`, `!=`).
MovieLens defaults to `like=rating>=4`, `love=rating==5`, `dislike=rating<=2` and
`action_value` = rating; on `ml-20m` ratings are half stars (0.5–5.0), so `action_value` =
2 × rating (1–10) while the task thresholds stay on the star scale. KuaiRand defaults to its
eight 0/1 columns (`KUAIRAND_TASKS`) and `timestamp = time_ms // 1000`; it has no action value.
The event table records each task's definition (`task_definitions`, e.g. `{"like": "rating>=4"}`)
and the options it was read with beyond the defaults (`read_options`: column mapping,
`time_format`, `include_random`).

Timestamps are integer seconds. `recbole:`/`table:` sources may also hold fractional seconds
(floored) or date-time strings (format inferred, or `time_format`, strftime style), read as
UTC unless they carry an offset; Parquet date/datetime columns are taken as they are.

Ids: MovieLens and KuaiRand ids must be integers. `recbole:`/`table:` ids are tokens: they stay
strings unless every value is a plain integer (then int64).

Bad input raises `DataError` with one line naming the file, the place and the column. The place
is `line N` — the 1-based line of a text file, header included, assuming one record per line —
or `row N` — the 1-based row of a Parquet file. Rows are dropped only for these reasons, each
counted in `EventTable.dropped`:

- `blank line` (`empty row` in Parquet): every used column empty;
- `missing <column>`: no value in a task's column — the event has no known outcome to learn;
- `duplicate row`: the same user, item, source timestamp, labels and action value as an earlier
  row — one event logged twice, which would otherwise let the copy see its own label.

A missing or malformed id or timestamp is an error, not a drop: the event cannot be placed.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import polars as pl

from causalgr.data import fetch
from causalgr.data.errors import DataError
from causalgr.data.events import EventTable

MOVIELENS_TASKS = ("like=rating>=4", "love=rating==5", "dislike=rating<=2")
KUAIRAND_TASKS = (
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "is_profile_enter",
)
_RESERVED = {"user_id", "item_id", "timestamp", "action_value"}
_TASK_RE = re.compile(
    r"^\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*)?(?P<column>[^<>=!]+?)\s*"
    r"(?:(?P<op>>=|<=|==|!=|>|<)\s*(?P<threshold>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))?\s*$"
)
_COMPARE = {
    ">=": lambda v, x: v >= x,
    ">": lambda v, x: v > x,
    "<=": lambda v, x: v <= x,
    "<": lambda v, x: v < x,
    "==": lambda v, x: v == x,
    "!=": lambda v, x: v != x,
}
_INT16_MAX = 32767


@dataclass(frozen=True)
class TaskSpec:
    """One task: the label is `column` itself (0/1), or `column op threshold`."""

    name: str
    column: str
    op: str | None = None
    threshold: float | None = None

    @classmethod
    def parse(cls, text: str) -> TaskSpec:
        """Read `NAME=COLUMN`, `COLUMN` or `NAME=COLUMN>=X` (ops `>= > <= < == !=`)."""
        match = _TASK_RE.match(text)
        if match is None:
            raise DataError(
                f"task {text!r}: write NAME=COLUMN for a 0/1 column or NAME=COLUMN>=X for a threshold"
            )
        column = match["column"]
        name = match["name"] or column
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise DataError(f"task {text!r}: task name {name!r} must be a plain identifier")
        if name in _RESERVED or name.startswith("prob_"):
            raise DataError(f"task {text!r}: task name {name!r} is reserved; choose another")
        threshold = float(match["threshold"]) if match["threshold"] is not None else None
        return cls(name=name, column=column, op=match["op"], threshold=threshold)

    @property
    def definition(self) -> str:
        """How the label is read: `rating>=4`, or `is_click` for a 0/1 column."""
        return self.column + (f"{self.op}{self.threshold:g}" if self.op else "")

    def __str__(self) -> str:
        return f"{self.name}={self.definition}"


@dataclass(frozen=True)
class _Layout:
    """Which columns of a read file hold what, and how to read them."""

    user: str
    item: str
    time: str
    tasks: tuple[TaskSpec, ...] = ()
    action_value: str | None = None
    action_scale: int = 1  # action_value = action_scale × value (2 on ml-20m's half stars)
    integer_ids: bool = True
    time_ms: bool = False  # the time column holds milliseconds
    flexible_time: bool = False  # fractional seconds and date-time strings allowed
    time_format: str | None = None

    @property
    def columns(self) -> list[str]:
        wanted = [self.user, self.item, self.time, *(t.column for t in self.tasks)]
        if self.action_value is not None:
            wanted.append(self.action_value)
        return list(dict.fromkeys(wanted))


@dataclass
class _Raw:
    """The used columns of one file, under their layout names, plus `_row` (0-based data row)."""

    frame: pl.DataFrame
    file: Path
    first_line: int | None  # file line of data row 0 (text files); None for Parquet
    labels: dict[str, str]  # column name → how messages call it

    def where(self, position: int, column: str) -> str:
        row = int(self.frame["_row"][position])
        place = f"line {self.first_line + row}" if self.first_line is not None else f"row {row + 1}"
        return f"{self.file}: {place}, column {self.labels.get(column, repr(column))}"

    def fail(self, mask: pl.Series, column: str, problem: str) -> None:
        """Raise for the first row where `mask` is true; `{value}` in `problem` is that row's value."""
        if not mask.any():
            return
        position = int(mask.arg_true()[0])
        value = self.frame[column][position]
        raise DataError(f"{self.where(position, column)}: {problem.format(value=repr(value))}")


@dataclass(frozen=True)
class _Source:
    """How one source is read: its entry in `_SOURCES` is all a new source needs."""

    layout: _Layout  # its columns; the tasks come from the caller or `default_tasks`
    default_tasks: tuple[str, ...]  # empty: the caller must name the tasks
    find: Callable[[Path, bool], list[Path]]  # (path, include_random) → the files to read
    read: Callable[[Path, _Layout], _Raw]  # one file
    fetch: Callable[[], Path] | None = None  # where a copy comes from when no path is given
    path_hint: str = ""  # what the path should be, for the error when none is given
    mapped: bool = False  # named "name:<path>", read with the caller's column mapping (`_MAPPING_OPTIONS`)
    random_logs: bool = False  # has KuaiRand's log_random_* files (`include_random`)


# load_source's column-mapping options → the `_Layout` field each one sets (mapped sources only).
_MAPPING_OPTIONS = {
    "user_col": "user",
    "item_col": "item",
    "time_col": "time",
    "action_value_col": "action_value",
    "time_format": "time_format",
}


# ---------------------------------------------------------------------------------------------
# The entry point


def load_source(
    source: str,
    path: str | Path | None = None,
    *,
    tasks: Sequence[str] | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    action_value_col: str | None = None,
    time_format: str | None = None,
    include_random: bool = False,
) -> EventTable:
    """Read `source` into the canonical `EventTable` (original row order, drops counted).

    `path` is the file or folder of a named source (`ml-100k` is fetched when it is None);
    `recbole:` and `table:` carry their path in the name. `tasks` overrides a named source's
    tasks and is required for `recbole:`/`table:`, whose column mapping (`user_col`, `item_col`,
    `time_col`, default `user_id`, `item_id`, `timestamp`; optional `action_value_col`,
    `time_format`) the named sources do not take. `include_random` adds KuaiRand's
    `log_random_*` files. Bad input raises `DataError`.
    """
    mapping = {
        "user_col": user_col,
        "item_col": item_col,
        "time_col": time_col,
        "action_value_col": action_value_col,
        "time_format": time_format,
    }
    given = {option: value for option, value in mapping.items() if value is not None}
    name, _, embedded = source.partition(":")
    entry = _SOURCES.get(name)
    if entry is None or entry.mapped != bool(embedded):
        raise DataError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")
    if entry.mapped:
        if path is not None:
            raise DataError(f"source {source!r} already names its file; drop the separate path")
        path = embedded
    elif given:
        raise DataError(f"{next(iter(given))} applies to recbole:/table: sources only; {source} has a fixed layout")
    if include_random and not entry.random_logs:
        raise DataError("include_random applies to KuaiRand sources only")
    if path is None and entry.fetch is None:
        raise DataError(f"source {source} needs a path {entry.path_hint}")
    specs = _task_specs(tasks, entry.default_tasks, source)
    layout = replace(entry.layout, tasks=specs, **{_MAPPING_OPTIONS[option]: value for option, value in given.items()})
    if path is None:
        path = entry.fetch()
    files = entry.find(Path(path), include_random)
    read_options = {**given, **({"include_random": True} if include_random else {})}
    return _finish([entry.read(file, layout) for file in files], layout, source, files, read_options)


def _task_specs(tasks: Sequence[str] | None, default: Sequence[str] | None, source: str) -> tuple[TaskSpec, ...]:
    texts = list(tasks) if tasks else list(default or ())
    if not texts:
        raise DataError(f"source {source}: give at least one task (NAME=COLUMN or NAME=COLUMN>=X)")
    specs = tuple(TaskSpec.parse(text) for text in texts)
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"source {source}: task {duplicates[0]!r} is defined twice")
    return specs


# ---------------------------------------------------------------------------------------------
# Finding files


def _existing_file(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    return path


def _one_file(path: Path, include_random: bool) -> list[Path]:
    return [_existing_file(path)]


def _file_in(path: Path, include_random: bool, *, names: tuple[str, ...]) -> list[Path]:
    """`path` itself, or the first of `names` in the folder `path`."""
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return [path / name]
        raise DataError(f"{path}: no {' or '.join(names)} in this folder")
    return [_existing_file(path)]


def _kuairand_files(path: Path, include_random: bool) -> list[Path]:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        return [path]
    patterns = ["log_standard_*.csv", *(["log_random_*.csv"] if include_random else [])]
    for folder in (path, path / "data"):
        files = sorted({f for pattern in patterns for f in folder.glob(pattern) if f.is_file()}, key=lambda f: f.name)
        if any(f.name.startswith("log_standard_") for f in files):
            return files
    raise DataError(f"{path}: no log_standard_*.csv here or in {path / 'data'}")


def _sha256(files: Sequence[Path]) -> str:
    """sha256 of the files' bytes, concatenated in name order."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.name):
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading files: every text file is read as strings, so a bad value can be traced to its line


def _movielens(read: Callable[[Path, _Layout], _Raw]) -> Callable[[Path, _Layout], _Raw]:
    """`read`, or for the RecBole atomic version of the file (a `name:type` header) `_read_atomic`."""
    return lambda file, layout: _read_atomic(file, layout) if _looks_atomic(file) else read(file, layout)


def _read_udata(file: Path, layout: _Layout) -> _Raw:
    fields = ["user_id", "item_id", "rating", "timestamp"]
    return _read_text(file, layout, separator="\t", quote_char=None, names=fields)


def _read_ratings_csv(file: Path, layout: _Layout) -> _Raw:
    header = {"userId": "user_id", "movieId": "item_id", "rating": "rating", "timestamp": "timestamp"}
    return _read_text(file, layout, separator=",", quote_char='"', rename=header)


def _read_ratings_dat(file: Path, layout: _Layout) -> _Raw:
    # ratings.dat separates fields by "::"; read on ":" and every second field must stay empty.
    spaced = ["user_id", "_sep1", "item_id", "_sep2", "rating", "_sep3", "timestamp"]
    raw = _read_text(file, layout, separator=":", quote_char=None, names=spaced, keep=["_sep1", "_sep2", "_sep3"])
    for k in (1, 3, 5):
        raw.labels[spaced[k]] = f"{k + 1} (between {spaced[k - 1]} and {spaced[k + 1]})"
    for sep in ("_sep1", "_sep2", "_sep3"):
        raw.fail(raw.frame[sep].is_not_null(), sep, "expected UserID::MovieID::Rating::Timestamp, found a single ':'")
    raw.frame = raw.frame.drop("_sep1", "_sep2", "_sep3")
    return raw


def _looks_atomic(file: Path) -> bool:
    """A RecBole atomic file starts with a `name:type` header."""
    with open(file, "rb") as handle:
        first = handle.readline().decode("utf-8", "replace").rstrip("\r\n")
    fields = first.split("\t")
    return bool(first) and all(re.fullmatch(r"[^:]+:[a-z_]+", f) for f in fields)


def _read_atomic(file: Path, layout: _Layout) -> _Raw:
    header = _header(file, separator="\t", quote_char=None)
    rename = {}
    for position, field in enumerate(header, start=1):
        name, colon, kind = field.partition(":")
        if not colon or not name or not kind:
            raise DataError(f"{file}: line 1, column {position}: {field!r} is not a RecBole header field (name:type)")
        if name in rename.values():
            raise DataError(f"{file}: line 1: column {name!r} appears twice")
        rename[field] = name
    return _read_text(file, layout, separator="\t", quote_char=None, rename=rename, header=header)


def _read_table(file: Path, layout: _Layout) -> _Raw:
    suffix = file.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return _read_parquet(file, layout)
    if suffix in (".csv", ".tsv", ".txt"):
        separator = "\t" if suffix == ".tsv" else ","
        return _read_text(file, layout, separator=separator, quote_char='"', rename={})
    raise DataError(f"{file}: unsupported table format {suffix or '(none)'}; use .csv, .tsv or .parquet")


def _header(file: Path, *, separator: str, quote_char: str | None) -> list[str]:
    try:
        return pl.read_csv(
            file, separator=separator, quote_char=quote_char, n_rows=0, infer_schema=False, encoding="utf8-lossy"
        ).columns
    except pl.exceptions.NoDataError:
        raise DataError(f"{file}: empty file") from None
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"{file}: cannot read the header: {_first_line(err)}") from None


def _missing_column(file: Path, column: str, found: Sequence[str]) -> DataError:
    return DataError(f"{file}: missing column {column!r} (found: {', '.join(found) or 'none'})")


def _read_text(
    file: Path,
    layout: _Layout,
    *,
    separator: str,
    quote_char: str | None,
    names: list[str] | None = None,
    rename: dict[str, str] | None = None,
    header: list[str] | None = None,
    keep: Sequence[str] = (),
) -> _Raw:
    """Read the used columns of a delimited text file as strings.

    Headerless files give `names` (every field, in order); files with a header give `rename`
    (file name → layout name; absent names are kept as they are).
    """
    if file.stat().st_size == 0:
        raise DataError(f"{file}: empty file")
    wanted = layout.columns
    if names is not None:
        labels = {name: f"{i} ({name})" for i, name in enumerate(names, start=1)}
        options = dict(has_header=False, new_columns=names)
        first_line = 1
    else:
        header = header if header is not None else _header(file, separator=separator, quote_char=quote_char)
        to_layout = {field: (rename or {}).get(field, field) for field in header}
        in_file = {name: field for field, name in to_layout.items()}
        for column in wanted:
            if column not in in_file:
                expected = {name: field for field, name in (rename or {}).items()}.get(column, column)
                raise _missing_column(file, expected, header)
        chosen = [field for field, name in to_layout.items() if name in wanted]
        labels = {to_layout[field]: repr(field) for field in chosen}
        options = dict(has_header=True, columns=chosen)
        first_line = 2
    try:
        frame = pl.read_csv(
            file,
            separator=separator,
            quote_char=quote_char,
            infer_schema=False,
            encoding="utf8-lossy",
            **options,
        )
    except pl.exceptions.NoDataError:
        raise DataError(f"{file}: empty file") from None
    except (pl.exceptions.PolarsError, OSError) as err:
        fields = len(names) if names is not None else len(header or [])
        line = _ragged_line(file, separator, fields, skip=first_line - 1)
        if line is not None:
            raise DataError(f"{file}: line {line[0]}: {line[1]} fields, expected {fields}") from None
        raise DataError(f"{file}: cannot read: {_first_line(err)}") from None
    if names is None:
        frame = frame.rename({field: to_layout[field] for field in frame.columns})
    else:
        frame = frame.select([name for name in names if name in wanted or name in keep])
    if frame.height == 0:
        raise DataError(f"{file}: no data rows")
    return _Raw(frame=frame.with_row_index("_row"), file=file, first_line=first_line, labels=labels)


def _read_parquet(file: Path, layout: _Layout) -> _Raw:
    try:
        found = list(pl.read_parquet_schema(file))
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"{file}: not a readable Parquet file: {_first_line(err)}") from None
    for column in layout.columns:
        if column not in found:
            raise _missing_column(file, column, found)
    try:
        frame = pl.read_parquet(file, columns=layout.columns)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"{file}: cannot read: {_first_line(err)}") from None
    if frame.height == 0:
        raise DataError(f"{file}: no data rows")
    labels = {c: repr(c) for c in frame.columns}
    return _Raw(frame=frame.with_row_index("_row"), file=file, first_line=None, labels=labels)


def _ragged_line(file: Path, separator: str, fields: int, skip: int) -> tuple[int, int] | None:
    """The first line with more fields than `fields` (only read when polars refused the file)."""
    sep = separator.encode()
    with open(file, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if number > skip and line.count(sep) + 1 > fields:
                return number, line.count(sep) + 1
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------------
# The sources: one entry each

_MOVIELENS = _Layout(user="user_id", item="item_id", time="timestamp", action_value="rating")
_MOVIELENS_HINT = "(its ratings file or folder); only ml-100k can be fetched"
_KUAIRAND = _Source(
    layout=_Layout(user="user_id", item="video_id", time="time_ms", time_ms=True),
    default_tasks=KUAIRAND_TASKS,
    find=_kuairand_files,
    read=partial(_read_text, separator=",", quote_char='"'),
    path_hint="(the KuaiRand folder holding log_standard_*.csv)",
    random_logs=True,
)
_MAPPED = _Layout(user="user_id", item="item_id", time="timestamp", integer_ids=False, flexible_time=True)

_SOURCES = {
    "ml-100k": _Source(
        _MOVIELENS, MOVIELENS_TASKS, partial(_file_in, names=("u.data", "ml-100k.inter")), _movielens(_read_udata),
        # Looked up when called, so a replaced `fetch.fetch_ml100k` is the one used.
        fetch=lambda: fetch.fetch_ml100k(),
    ),
    "ml-1m": _Source(
        _MOVIELENS, MOVIELENS_TASKS, partial(_file_in, names=("ratings.dat", "ml-1m.inter")),
        _movielens(_read_ratings_dat), path_hint=_MOVIELENS_HINT,
    ),
    # Half stars: action_value = 2 × rating (1–10); the task thresholds stay on the star scale.
    "ml-20m": _Source(
        replace(_MOVIELENS, action_scale=2), MOVIELENS_TASKS, partial(_file_in, names=("ratings.csv", "ml-20m.inter")),
        _movielens(_read_ratings_csv), path_hint=_MOVIELENS_HINT,
    ),
    "kuairand-1k": _KUAIRAND,
    "kuairand-pure": _KUAIRAND,
    "kuairand-27k": _KUAIRAND,
    "recbole": _Source(_MAPPED, (), _one_file, _read_atomic, mapped=True),
    "table": _Source(_MAPPED, (), _one_file, _read_table, mapped=True),
}
SOURCES = tuple(f"{name}:<path>" if entry.mapped else name for name, entry in _SOURCES.items())


# ---------------------------------------------------------------------------------------------
# Raw columns → canonical columns


def _finish(
    raws: list[_Raw], layout: _Layout, source: str, files: Sequence[Path], read_options: dict[str, str | bool]
) -> EventTable:
    dropped: Counter[str] = Counter()
    frames = [_events(raw, layout, dropped) for raw in raws]
    frame = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
    first = _first_occurrences(frame.drop("timestamp"))
    if first is not None:
        dropped["duplicate row"] += frame.height - int(first.sum())
        frame = frame.filter(first)
    frame = frame.drop("_time_raw")
    if frame.height == 0:
        reasons = ", ".join(f"{n} {r}" for r, n in dropped.items())
        raise DataError(f"{', '.join(str(f) for f in files)}: no events left ({reasons})")
    return EventTable(
        frame=frame,
        tasks=tuple(t.name for t in layout.tasks),
        source=source,
        sha256=_sha256(files),
        dropped=dict(dropped),
        task_definitions={t.name: t.definition for t in layout.tasks},
        read_options=read_options,
    )


def _first_occurrences(frame: pl.DataFrame) -> pl.Series | None:
    """True at each row's first exact occurrence, or None when no row repeats.

    Row hashes find the candidates cheaply (a sort of 10M u64 takes well under a second); only
    rows whose hash repeats are compared in full, so hash collisions never drop a row.
    """
    if frame.height < 2:
        return None
    hashes = frame.hash_rows()
    ordered = hashes.sort()
    later = ordered.slice(1)
    repeated = later.filter(later == ordered.slice(0, len(ordered) - 1))
    if repeated.is_empty():
        return None
    candidates = hashes.is_in(repeated.unique().implode())
    subset = frame.filter(candidates)
    distinct = subset.select(pl.struct(pl.all()).is_first_distinct()).to_series()
    if distinct.all():
        return None
    first = pl.repeat(True, frame.height, eager=True)
    return first.scatter(candidates.arg_true().filter(~distinct), False)


def _events(raw: _Raw, layout: _Layout, dropped: Counter[str]) -> pl.DataFrame:
    """Validate one file's rows and map them to canonical columns (plus `_time_raw` for dedup)."""
    used = layout.columns
    blank = raw.frame.select(pl.all_horizontal(pl.col(used).is_null())).to_series()
    if blank.any():
        dropped["blank line" if raw.first_line is not None else "empty row"] += int(blank.sum())
        raw.frame = raw.frame.filter(~blank)

    value_columns = [t.column for t in layout.tasks] + ([layout.action_value] if layout.action_value else [])
    numbers = {column: _numbers(raw, column) for column in dict.fromkeys(value_columns)}  # each parsed once

    # Rows with no outcome are dropped (counted under the first empty task column).
    keep = pl.repeat(True, raw.frame.height, eager=True)
    for column in dict.fromkeys(t.column for t in layout.tasks):
        empty = numbers[column].is_null() & keep
        if empty.any():
            dropped[f"missing {column}"] += int(empty.sum())
            keep = keep & ~empty
    if not keep.all():
        raw.frame = raw.frame.filter(keep)
        numbers = {column: values.filter(keep) for column, values in numbers.items()}

    time_raw = _timestamps(raw, layout)
    columns = {
        "user_id": _ids(raw, layout.user, layout.integer_ids),
        "item_id": _ids(raw, layout.item, layout.integer_ids),
        "timestamp": time_raw // 1000 if layout.time_ms else time_raw,
    }
    for task in layout.tasks:
        columns[task.name] = _label(raw, task, numbers[task.column])
    if layout.action_value is not None:
        columns["action_value"] = _action_values(raw, layout, numbers[layout.action_value])
    columns["_time_raw"] = time_raw
    return pl.DataFrame(columns)


def _ids(raw: _Raw, column: str, integer: bool) -> pl.Series:
    values = raw.frame[column]
    raw.fail(values.is_null(), column, "missing id")
    dtype = values.dtype
    if dtype.is_integer():
        return values.cast(pl.Int64)
    if dtype.is_float():
        raw.fail(~values.is_finite() | (values.floor() != values), column, "{value} is not an integer id")
        return values.cast(pl.Int64)
    if dtype != pl.String:
        raw.fail(pl.repeat(True, len(values), eager=True), column, f"a {dtype} column cannot hold ids")
    as_int = values.cast(pl.Int64, strict=False)
    if integer:
        raw.fail(as_int.is_null(), column, "{value} is not an integer id")
        return as_int
    # Tokens become integers only when that loses nothing ("007" stays a string token).
    if as_int.null_count() == 0 and (as_int.cast(pl.String) == values).all():
        return as_int
    return values


def _timestamps(raw: _Raw, layout: _Layout) -> pl.Series:
    """Seconds (or milliseconds, for `time_ms` layouts) as int64; errors name the first bad row."""
    column = layout.time
    values = raw.frame[column]
    raw.fail(values.is_null(), column, "missing timestamp")
    dtype = values.dtype
    if dtype.is_integer():
        return values.cast(pl.Int64)
    if isinstance(dtype, (pl.Datetime, pl.Date)):
        return values.cast(pl.Datetime("us")).dt.epoch("s") if dtype == pl.Date else values.dt.epoch("s")
    if dtype.is_float() and layout.flexible_time:
        raw.fail(~values.is_finite(), column, "{value} is not a timestamp")
        return values.floor().cast(pl.Int64)
    if dtype != pl.String:
        raw.fail(pl.repeat(True, len(values), eager=True), column, f"a {dtype} column cannot hold timestamps")
    unit = "milliseconds" if layout.time_ms else "seconds"
    if layout.time_format is None:
        as_int = values.cast(pl.Int64, strict=False)
        if not layout.flexible_time or as_int.null_count() == 0:
            raw.fail(as_int.is_null(), column, f"{{value}} is not a timestamp (integer {unit})")
            return as_int
        as_float = values.cast(pl.Float64, strict=False)
        if as_float[0] is not None:  # the first row decides: numbers, or date-time strings
            bad = as_float.is_null() | ~as_float.is_finite()
            raw.fail(bad, column, "{value} is not a timestamp (seconds, like the first row)")
            return as_float.floor().cast(pl.Int64)
    try:
        parsed = values.str.to_datetime(format=layout.time_format, strict=False, time_unit="us")
    except pl.exceptions.PolarsError:
        parsed = pl.repeat(None, len(values), dtype=pl.Datetime("us"), eager=True)
    expected = f"a date-time in the format {layout.time_format!r}" if layout.time_format else (
        "integer seconds or a date-time such as 2024-05-01 12:00:00"
    )
    raw.fail(parsed.is_null(), column, f"{{value}} is not a timestamp ({expected})")
    return parsed.dt.epoch("s")


def _numbers(raw: _Raw, column: str) -> pl.Series:
    """A label or value column as Float64 (null where the row has no value)."""
    values = raw.frame[column]
    dtype = values.dtype
    if dtype == pl.Boolean or dtype.is_integer():
        return values.cast(pl.Float64)
    if dtype.is_float():
        raw.fail(values.is_nan(), column, "{value} is not a number")
        return values.cast(pl.Float64)
    if dtype != pl.String:
        raw.fail(pl.repeat(True, len(values), eager=True), column, f"a {dtype} column cannot hold labels or values")
    parsed = values.cast(pl.Float64, strict=False)
    raw.fail((parsed.is_null() & values.is_not_null()) | parsed.is_nan(), column, "{value} is not a number")
    return parsed


def _label(raw: _Raw, task: TaskSpec, values: pl.Series) -> pl.Series:
    if task.op is None:
        raw.fail(~values.is_in([0.0, 1.0]), task.column, f"{{value}} is not a 0/1 label (task {task.name})")
        return values.cast(pl.UInt8)
    return _COMPARE[task.op](values, task.threshold).cast(pl.UInt8)


def _action_values(raw: _Raw, layout: _Layout, values: pl.Series) -> pl.Series:
    """Small non-negative integers (0 where a generic table has none); MovieLens ratings × scale."""
    scaled = values * layout.action_scale
    bad = (scaled != scaled.round(0)) | (scaled < 0) | (scaled > _INT16_MAX)
    scale = f" (× {layout.action_scale})" if layout.action_scale != 1 else ""
    raw.fail(bad.fill_null(False), layout.action_value, f"{{value}}{scale} is not an action value (an integer 0–{_INT16_MAX})")
    return scaled.fill_null(0).round(0).cast(pl.Int16)
