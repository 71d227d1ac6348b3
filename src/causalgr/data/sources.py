"""Source files → the canonical event table (docs/design.md §3).

`load_source(source, path)` checks one supported format (the files, their columns) and returns an
`EventTable` that reads it in batches when its chunks are read, rows in the file's original order,
never holding more than a few batches of the file: text files through pyarrow's streaming CSV
reader (blocks of `BLOCK_BYTES`), Parquet through pyarrow's batch reader without pre-buffering
(`BATCH_ROWS` rows). `EventTable.collect()` gives every row in one frame. Sources:

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

**The first rows decide** what the whole file cannot be read for at once: whether a token column
holds integers, and whether a text time column holds numbers or date-times (and, inferred, in
which format) — the first batch of the read, so all of a small file. A later row that contradicts
the decision is an error naming its line, never a silent change of type.

Bad input raises `DataError` with one line naming the file, the place and the column. The place
is `line N` — the 1-based line of a text file, header included, assuming one record per line —
or `row N` — the 1-based row of a Parquet file. Text files must be UTF-8. Rows are dropped only
for these reasons, each counted in `EventTable.dropped` as the file is read:

- `blank line` (`empty row` in Parquet): every used column empty;
- `missing <column>`: no value in a task's column — the event has no known outcome to learn.

A missing or malformed id or timestamp is an error, not a drop: the event cannot be placed. A row
that repeats an earlier one (same user, item, source timestamp, labels and action value) is one
event logged twice, which would otherwise let the copy see its own label: the table is marked
`drop_duplicates`, and the preparation drops the copies where a user's events come together
(counted as `duplicate row`). KuaiRand's rows carry `timestamp_ms` for it: two events in the same
second are two events.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from causalgr.data import fetch
from causalgr.data.errors import DataError
from causalgr.data.events import EventTable

BLOCK_BYTES = 1 << 20  # a text file is read in blocks of this many bytes (pyarrow's default)
BATCH_ROWS = 1 << 16  # a Parquet file in batches of this many rows (pyarrow's default)

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
    """One batch of a read file: its used columns under their layout names, plus `_row` (0-based
    data row of the file)."""

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


# A file checked and ready: called, it reads the file's batches (again at every call).
_Batches = Callable[[], Iterator[_Raw]]


@dataclass
class _Decisions:
    """What the first rows of a read decided for all of it (module docstring); later rows must agree."""

    integer_ids: dict[str, bool] = field(default_factory=dict)  # token column → read as int64
    first_time: str | None = None  # the first text timestamp: numbers or date-times, and their format


@dataclass(frozen=True)
class _Source:
    """How one source is read: its entry in `_SOURCES` is all a new source needs."""

    layout: _Layout  # its columns; the tasks come from the caller or `default_tasks`
    default_tasks: tuple[str, ...]  # empty: the caller must name the tasks
    find: Callable[[Path, bool], list[Path]]  # (path, include_random) → the files to read
    read: Callable[[Path, _Layout], _Batches]  # checks one file, returns its reader
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
    """The canonical `EventTable` of `source`: its files and their columns are checked now, their
    rows read batch by batch whenever its chunks are read (original row order; `dropped` counted
    as they go; repeated rows left to the preparation, `drop_duplicates`).

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
    readers = [entry.read(file, layout) for file in files]  # each file's columns are checked now
    read_options = {**given, **({"include_random": True} if include_random else {})}
    dropped: dict[str, int] = {}
    return EventTable(
        frame=None,
        chunks=partial(_read_events, readers, layout, files, dropped),
        tasks=tuple(t.name for t in layout.tasks),
        source=source,
        sha256=_sha256(files),
        dropped=dropped,
        task_definitions={t.name: t.definition for t in layout.tasks},
        read_options=read_options,
        drop_duplicates=True,
    )


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
# Reading files, batch by batch: every text file is read as strings, so a bad value can be traced
# to its line


def _movielens(read: Callable[[Path, _Layout], _Batches]) -> Callable[[Path, _Layout], _Batches]:
    """`read`, or for the RecBole atomic version of the file (a `name:type` header) `_read_atomic`."""
    return lambda file, layout: _read_atomic(file, layout) if _looks_atomic(file) else read(file, layout)


def _read_udata(file: Path, layout: _Layout) -> _Batches:
    fields = ["user_id", "item_id", "rating", "timestamp"]
    return _read_text(file, layout, separator="\t", quote_char=None, names=fields)


def _read_ratings_csv(file: Path, layout: _Layout) -> _Batches:
    header = {"userId": "user_id", "movieId": "item_id", "rating": "rating", "timestamp": "timestamp"}
    return _read_text(file, layout, separator=",", quote_char='"', rename=header)


_DAT_FIELDS = ["user_id", "_sep1", "item_id", "_sep2", "rating", "_sep3", "timestamp"]
_DAT_RECORD = "UserID::MovieID::Rating::Timestamp"


def _read_ratings_dat(file: Path, layout: _Layout) -> _Batches:
    # ratings.dat separates fields by "::"; read on ":" and every second field must stay empty.
    batches = _read_text(file, layout, separator=":", quote_char=None, names=_DAT_FIELDS, keep=_DAT_FIELDS[1::2],
                         record=_DAT_RECORD)
    return lambda: map(_double_colons, batches())


def _double_colons(raw: _Raw) -> _Raw:
    """A batch of ratings.dat without its empty fields, after an error for any single ':'."""
    for k in (1, 3, 5):
        raw.labels[_DAT_FIELDS[k]] = f"{k + 1} (between {_DAT_FIELDS[k - 1]} and {_DAT_FIELDS[k + 1]})"
    for sep in _DAT_FIELDS[1::2]:
        raw.fail(raw.frame[sep].is_not_null(), sep, f"expected {_DAT_RECORD}, found a single ':'")
    raw.frame = raw.frame.drop(_DAT_FIELDS[1::2])
    return raw


def _looks_atomic(file: Path) -> bool:
    """A RecBole atomic file starts with a `name:type` header."""
    with open(file, "rb") as handle:
        first = handle.readline().decode("utf-8", "replace").rstrip("\r\n")
    fields = first.split("\t")
    return bool(first) and all(re.fullmatch(r"[^:]+:[a-z_]+", f) for f in fields)


def _read_atomic(file: Path, layout: _Layout) -> _Batches:
    header = _header(file, separator="\t", quote_char=None)
    rename = {}
    for position, field_ in enumerate(header, start=1):
        name, colon, kind = field_.partition(":")
        if not colon or not name or not kind:
            raise DataError(f"{file}: line 1, column {position}: {field_!r} is not a RecBole header field (name:type)")
        if name in rename.values():
            raise DataError(f"{file}: line 1: column {name!r} appears twice")
        rename[field_] = name
    return _read_text(file, layout, separator="\t", quote_char=None, rename=rename, header=header)


def _read_table(file: Path, layout: _Layout) -> _Batches:
    suffix = file.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return _read_parquet(file, layout)
    if suffix in (".csv", ".tsv", ".txt"):
        separator = "\t" if suffix == ".tsv" else ","
        return _read_text(file, layout, separator=separator, quote_char='"', rename={})
    raise DataError(f"{file}: unsupported table format {suffix or '(none)'}; use .csv, .tsv or .parquet")


def _header(file: Path, *, separator: str, quote_char: str | None) -> list[str]:
    """The fields of a text file's first line."""
    if file.stat().st_size == 0:
        raise DataError(f"{file}: empty file")
    with open(file, encoding="utf-8-sig", errors="replace", newline="") as handle:
        return next(_fields([handle.readline()], separator, quote_char), [])


def _fields(lines: Iterator[str] | list[str], separator: str, quote_char: str | None) -> Iterator[list[str]]:
    """Each line split into its fields the way the reader splits them (for the header and for errors)."""
    quoting = {"quoting": csv.QUOTE_NONE} if quote_char is None else {"quotechar": quote_char}
    return csv.reader(lines, delimiter=separator, **quoting)


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
    record: str | None = None,
) -> _Batches:
    """Check a delimited text file's columns and return the reader of its used columns, as strings.

    Headerless files give `names` (every field, in order); files with a header give `rename`
    (file name → layout name; absent names are kept as they are). `record` shows a line's layout
    in the error for a line with too few or too many fields (default: the count of fields).
    """
    if file.stat().st_size == 0:
        raise DataError(f"{file}: empty file")
    wanted = layout.columns
    if names is not None:
        labels = {name: f"{i} ({name})" for i, name in enumerate(names, start=1)}
        to_layout = {name: name for name in names if name in wanted or name in keep}
        first_line = 1
    else:
        header = header if header is not None else _header(file, separator=separator, quote_char=quote_char)
        all_names = {field_: (rename or {}).get(field_, field_) for field_ in header}
        in_file = {name: field_ for field_, name in all_names.items()}
        for column in wanted:
            if column not in in_file:
                expected = {name: field_ for field_, name in (rename or {}).items()}.get(column, column)
                raise _missing_column(file, expected, header)
        to_layout = {field_: name for field_, name in all_names.items() if name in wanted}
        labels = {name: repr(field_) for field_, name in to_layout.items()}
        first_line = 2
    fields = len(names) if names is not None else len(header)
    return _TextFile(file, separator, quote_char, names, to_layout, first_line, fields, record, labels).batches


@dataclass(frozen=True)
class _TextFile:
    """A checked delimited text file: how its lines split, and which fields are read as what."""

    file: Path
    separator: str
    quote_char: str | None
    names: list[str] | None  # every field, when the file has no header
    to_layout: dict[str, str]  # file field → layout name, for the fields read
    first_line: int  # the line of data row 0
    fields: int  # fields in a line
    record: str | None  # a line's layout, for the error on a line of other fields
    labels: dict[str, str]  # layout name → how messages call it

    def batches(self) -> Iterator[_Raw]:
        """The fields read, as strings, a block of `BLOCK_BYTES` at a time.

        pyarrow's streaming reader holds a bounded number of blocks, the one being parsed and
        those it has read ahead (about 35 in `tests/test_stream.py`), on one thread: a second one
        made it slower on two cores. Only an empty field is missing (as when the files were read
        whole), and a blank line is a row of missing values, so that rows stay lines.
        """
        columns = list(self.to_layout)
        read = pacsv.ReadOptions(block_size=BLOCK_BYTES, column_names=self.names, use_threads=False)
        parse = pacsv.ParseOptions(delimiter=self.separator, quote_char=self.quote_char or False, ignore_empty_lines=False)
        convert = pacsv.ConvertOptions(
            include_columns=columns, column_types=dict.fromkeys(columns, pa.string()), null_values=[""],
            strings_can_be_null=True, quoted_strings_can_be_null=False,
        )  # fmt: skip
        rows = 0
        try:
            for batch in pacsv.open_csv(self.file, read_options=read, parse_options=parse, convert_options=convert):
                frame = pl.from_arrow(batch).select(pl.col(field_).alias(name) for field_, name in self.to_layout.items())
                yield _Raw(frame.with_row_index("_row", offset=rows), self.file, self.first_line, self.labels)
                rows += batch.num_rows
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"{self.file}: {self.bad_line() or 'cannot read: ' + _first_line(err)}") from None
        if rows == 0:
            raise DataError(f"{self.file}: no data rows")

    def bad_line(self) -> str | None:
        """Where the file leaves its layout of one record per line (looked for only when pyarrow
        refused it): `line N: K fields, expected F` (or `expected <record>`), `line N: not UTF-8 text`."""
        with open(self.file, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError:
                    return f"line {number}: not UTF-8 text"
                if number < self.first_line or not text.strip("\r\n"):
                    continue
                found = len(next(_fields([text], self.separator, self.quote_char)))
                if found != self.fields:
                    return f"line {number}: " + (f"expected {self.record}" if self.record else f"{found} fields, expected {self.fields}")
        return None


def _read_parquet(file: Path, layout: _Layout) -> _Batches:
    """Check a Parquet file's columns and return the reader of its used columns."""
    try:
        found = pq.read_schema(file).names
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{file}: not a readable Parquet file: {_first_line(err)}") from None
    for column in layout.columns:
        if column not in found:
            raise _missing_column(file, column, found)
    return partial(_parquet_batches, file, layout.columns)


def _parquet_batches(file: Path, columns: list[str]) -> Iterator[_Raw]:
    """The `columns` of a Parquet file, `BATCH_ROWS` rows at a time.

    Read without pyarrow's pre-buffering, which reads the row groups' raw bytes ahead and keeps
    them all until the last batch (docs/distributed.md, "Data at scale, measured")."""
    labels = {c: repr(c) for c in columns}
    rows = 0
    try:
        for batch in pq.ParquetFile(file, pre_buffer=False).iter_batches(batch_size=BATCH_ROWS, columns=columns):
            frame = pl.from_arrow(batch).select(columns)
            yield _Raw(frame.with_row_index("_row", offset=rows), file, None, labels)
            rows += batch.num_rows
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{file}: cannot read: {_first_line(err)}") from None
    if rows == 0:
        raise DataError(f"{file}: no data rows")


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


def _read_events(
    readers: list[_Batches], layout: _Layout, files: Sequence[Path], dropped: dict[str, int]
) -> Iterator[pl.DataFrame]:
    """The files' rows in canonical columns, batch by batch in file order; `dropped` counts the
    rows left out (complete once the last batch is read)."""
    dropped.clear()
    decisions = _Decisions()
    events = 0
    for read in readers:
        for raw in read():
            frame = _events(raw, layout, decisions, dropped)
            if frame is not None:
                events += frame.height
                yield frame
    if events == 0:
        reasons = ", ".join(f"{n} {r}" for r, n in dropped.items())
        raise DataError(f"{', '.join(str(f) for f in files)}: no events left ({reasons})")


def _count(dropped: dict[str, int], reason: str, rows: int) -> None:
    if rows:
        dropped[reason] = dropped.get(reason, 0) + rows


def _events(raw: _Raw, layout: _Layout, decisions: _Decisions, dropped: dict[str, int]) -> pl.DataFrame | None:
    """Validate one batch's rows and map them to canonical columns (None when none is left)."""
    used = layout.columns
    blank = raw.frame.select(pl.all_horizontal(pl.col(used).is_null())).to_series()
    _count(dropped, "blank line" if raw.first_line is not None else "empty row", int(blank.sum()))
    raw.frame = raw.frame.filter(~blank)

    value_columns = [t.column for t in layout.tasks] + ([layout.action_value] if layout.action_value else [])
    numbers = {column: _numbers(raw, column) for column in dict.fromkeys(value_columns)}  # each parsed once

    # Rows with no outcome are dropped (counted under the first empty task column).
    keep = pl.repeat(True, raw.frame.height, eager=True)
    for column in dict.fromkeys(t.column for t in layout.tasks):
        empty = numbers[column].is_null() & keep
        _count(dropped, f"missing {column}", int(empty.sum()))
        keep = keep & ~empty
    if not keep.all():
        raw.frame = raw.frame.filter(keep)
        numbers = {column: values.filter(keep) for column, values in numbers.items()}
    if raw.frame.height == 0:
        return None

    time = _timestamps(raw, layout, decisions)
    columns = {
        "user_id": _ids(raw, layout.user, layout.integer_ids, decisions),
        "item_id": _ids(raw, layout.item, layout.integer_ids, decisions),
        "timestamp": time // 1000 if layout.time_ms else time,
    }
    for task in layout.tasks:
        columns[task.name] = _label(raw, task, numbers[task.column])
    if layout.action_value is not None:
        columns["action_value"] = _action_values(raw, layout, numbers[layout.action_value])
    if layout.time_ms:
        columns["timestamp_ms"] = time  # two events in one second stay two (EventTable.drop_duplicates)
    return pl.DataFrame(columns)


def _ids(raw: _Raw, column: str, integer: bool, decisions: _Decisions) -> pl.Series:
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
    # Tokens become integers only when that loses nothing ("007" stays a string token), on the
    # word of the first rows: a later token must not turn the column's ids into strings.
    plain = as_int.is_not_null() & (as_int.cast(pl.String) == values)
    if decisions.integer_ids.setdefault(column, bool(plain.all())):
        raw.fail(~plain, column, "{value} is not an integer id, as the ids of the first rows were "
                                 "(a column's ids are read as integers or as tokens, decided on its first rows)")
        return as_int
    return values


def _timestamps(raw: _Raw, layout: _Layout, decisions: _Decisions) -> pl.Series:
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
    if not layout.flexible_time:
        as_int = values.cast(pl.Int64, strict=False)
        unit = "milliseconds" if layout.time_ms else "seconds"
        raw.fail(as_int.is_null(), column, f"{{value}} is not a timestamp (integer {unit})")
        return as_int
    if decisions.first_time is None:
        decisions.first_time = values[0]
    if layout.time_format is None and pl.Series([decisions.first_time]).cast(pl.Float64, strict=False)[0] is not None:
        # The first row decides: numbers (seconds, fractions floored), or date-time strings.
        as_int = values.cast(pl.Int64, strict=False)
        if as_int.null_count() == 0:
            return as_int
        as_float = values.cast(pl.Float64, strict=False)
        raw.fail(as_float.is_null() | ~as_float.is_finite(), column, "{value} is not a timestamp (seconds, like the first row)")
        return as_float.floor().cast(pl.Int64)
    parsed = _datetimes(values, layout.time_format, decisions.first_time)
    expected = f"a date-time in the format {layout.time_format!r}" if layout.time_format else (
        "integer seconds or a date-time such as 2024-05-01 12:00:00"
    )
    raw.fail(parsed.is_null(), column, f"{{value}} is not a timestamp ({expected})")
    return parsed.dt.epoch("s")


def _datetimes(values: pl.Series, time_format: str | None, first: str) -> pl.Series:
    """Date-time strings parsed (null where one does not parse). With no `time_format` polars
    infers one from the first value, so the read's first timestamp, `first`, goes in front of
    every batch: all batches are read in its format."""
    texts = values if time_format is not None else pl.concat([pl.Series(values.name, [first]), values])
    try:
        parsed = texts.str.to_datetime(format=time_format, strict=False, time_unit="us")
    except pl.exceptions.PolarsError:
        parsed = pl.repeat(None, len(texts), dtype=pl.Datetime("us"), eager=True)
    return parsed if time_format is not None else parsed.slice(1)


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
