"""Getting ML-100K without a browser (docs/design.md §3).

`fetch_ml100k()` returns a verified local copy, trying in turn:

1. the cache (`default_cache_dir()/ml-100k/`), checked again on every call, so a second call needs no
   network;
2. the official GroupLens archive (10 s timeout); its `u.data` is checked by content: parsed, it
   must be exactly the 100,000 ratings that RecBole's `ml-100k.inter` holds, in the same order
   (`UDATA_CONTENT_SHA256` is the sha256 of that file's data lines, i.e. without its header);
3. the copy inside the `recbole==1.2.1` wheel, downloaded with pip into the cache and read
   straight out of the wheel (`RECBOLE_INTER_SHA256`, the file's sha256).

When none works, one `DataError` line says what each attempt ran into.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import polars as pl

from causalgr.data.errors import DataError

log = logging.getLogger(__name__)

OFFICIAL_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
OFFICIAL_TIMEOUT_S = 10
RECBOLE_VERSION = "1.2.1"
RECBOLE_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
RECBOLE_INTER_SHA256 = "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
UDATA_CONTENT_SHA256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
PIP_TIMEOUT_S = 300


def default_cache_dir() -> Path:
    """`$CAUSALGR_CACHE`, else `$XDG_CACHE_HOME/causalgr`, else `~/.cache/causalgr`."""
    if os.environ.get("CAUSALGR_CACHE"):
        return Path(os.environ["CAUSALGR_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "causalgr"
    return Path.home() / ".cache" / "causalgr"


def fetch_ml100k(cache_dir: Path | str | None = None) -> Path:
    """Path of a verified ML-100K ratings file: `u.data` (official) or `ml-100k.inter` (RecBole)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = root / "ml-100k"
    udata, inter = folder / "u.data", folder / "ml-100k.inter"
    if udata.is_file() and _udata_problem(udata.read_bytes()) is None:
        return udata
    if inter.is_file() and _inter_problem(inter.read_bytes()) is None:
        return inter

    problems = []
    try:
        log.info("ml-100k: downloading %s", OFFICIAL_URL)
        data = _udata_from_zip(_download_official())
        problem = _udata_problem(data)
        if problem is not None:
            raise DataError(problem)
        _write(udata, data)
        return udata
    except (OSError, http.client.HTTPException, DataError, zipfile.BadZipFile) as err:
        problems.append(f"official archive: {_one_line(err)}")
        log.info("ml-100k: official archive failed (%s); trying the recbole wheel", _one_line(err))

    try:
        wheel = _download_wheel(root / "wheels")
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(RECBOLE_MEMBER)
        problem = _inter_problem(data)
        if problem is not None:
            raise DataError(f"{wheel.name}: {problem}")
        _write(inter, data)
        return inter
    except (OSError, DataError, zipfile.BadZipFile, KeyError) as err:
        problems.append(f"recbole=={RECBOLE_VERSION} wheel: {_one_line(err)}")
    raise DataError(
        "could not fetch ml-100k (" + "; ".join(problems) + "); download it by hand and pass --path u.data"
    )


def _download_official() -> bytes:
    with urllib.request.urlopen(OFFICIAL_URL, timeout=OFFICIAL_TIMEOUT_S) as response:
        return response.read()


def _download_wheel(dest: Path) -> Path:
    """The recbole wheel in `dest`, downloaded with this interpreter's pip unless already there."""
    pattern = f"recbole-{RECBOLE_VERSION}-*.whl"
    found = sorted(dest.glob(pattern))
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        log.info("ml-100k: pip download recbole==%s into %s", RECBOLE_VERSION, dest)
        command = [
            sys.executable, "-m", "pip", "download", f"recbole=={RECBOLE_VERSION}",
            "--no-deps", "--only-binary=:all:", "--dest", str(dest),
            "--quiet", "--disable-pip-version-check",
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise DataError(f"pip download took more than {PIP_TIMEOUT_S} s") from None
        found = sorted(dest.glob(pattern))
        if done.returncode != 0 or not found:
            lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
            errors = [line for line in lines if "error" in line.lower()] or lines
            raise DataError(f"pip download failed: {errors[-1].strip() if errors else f'exit code {done.returncode}'}")
    return found[-1]


def _udata_from_zip(archive_bytes: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        names = [n for n in archive.namelist() if n.endswith("/u.data") or n == "u.data"]
        if not names:
            raise DataError("the archive holds no u.data")
        return archive.read(names[0])


def _udata_problem(data: bytes) -> str | None:
    """None when `data` is the real `u.data` (same ratings, same order), else what is wrong."""
    try:
        frame = pl.read_csv(
            io.BytesIO(data),
            separator="\t",
            has_header=False,
            quote_char=None,
            schema={"user": pl.Int64, "item": pl.Int64, "rating": pl.Int64, "timestamp": pl.Int64},
        )
    except (pl.exceptions.PolarsError, OSError) as err:
        return f"u.data does not parse: {_one_line(err)}"
    if frame.null_count().sum_horizontal().item():
        return "u.data has empty fields"
    canonical = frame.write_csv(separator="\t", include_header=False, line_terminator="\n").encode()
    if hashlib.sha256(canonical).hexdigest() != UDATA_CONTENT_SHA256:
        return (
            f"u.data content differs from ML-100K ({frame.height} rows, {frame['user'].n_unique()} users, "
            f"{frame['item'].n_unique()} items; expected 100000, 943, 1682)"
        )
    return None


def _inter_problem(data: bytes) -> str | None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != RECBOLE_INTER_SHA256:
        return f"{Path(RECBOLE_MEMBER).name} has sha256 {digest}, expected {RECBOLE_INTER_SHA256}"
    return None


def _write(path: Path, data: bytes) -> None:
    """Write through a temporary file, so an interrupted fetch never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__
