"""`fetch_ml100k` without the network: the downloaders are replaced, the checks are real.

Fake ML-100K files cannot match the real checksums, so the success paths patch the expected
checksum to the fake file's; everything else (zip handling, verification, cache, fallback,
messages) runs as in production. The real download is in test_ml100k_integration.py.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile
from pathlib import Path

import pytest

from causalgr.data import fetch
from causalgr.data.errors import DataError

FAKE_UDATA = b"1\t10\t5\t100\n2\t20\t1\t200\n"
FAKE_INTER = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + FAKE_UDATA


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def fake_wheel(folder: Path, inter: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"recbole-{fetch.RECBOLE_VERSION}-py3-none-any.whl"
    wheel.write_bytes(zipped({fetch.RECBOLE_MEMBER: inter, "recbole/__init__.py": b""}))
    return wheel


def unreachable(*args, **kwargs):
    raise OSError("network is unreachable")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(fetch, "_download_official", unreachable)
    monkeypatch.setattr(fetch, "_download_wheel", unreachable)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CAUSALGR_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("CAUSALGR_CACHE")
    assert fetch.default_cache_dir() == tmp_path / "xdg" / "causalgr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fetch.default_cache_dir() == tmp_path / "home" / ".cache" / "causalgr"


def test_official_archive_is_verified_cached_and_reused_offline(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch, "UDATA_CONTENT_SHA256", hashlib.sha256(FAKE_UDATA).hexdigest())
    # Line endings do not matter: the check is on the parsed content.
    archive = zipped({"ml-100k/u.data": FAKE_UDATA.replace(b"\n", b"\r\n"), "ml-100k/README": b"hi"})
    monkeypatch.setattr(fetch, "_download_official", lambda: archive)
    monkeypatch.setattr(fetch, "_download_wheel", unreachable)
    path = fetch.fetch_ml100k(tmp_path)
    assert path == tmp_path / "ml-100k" / "u.data"
    assert path.read_bytes() == FAKE_UDATA.replace(b"\n", b"\r\n")
    monkeypatch.setattr(fetch, "_download_official", unreachable)
    assert fetch.fetch_ml100k(tmp_path) == path


def test_wheel_fallback_reads_the_inter_file_out_of_the_wheel(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch, "RECBOLE_INTER_SHA256", hashlib.sha256(FAKE_INTER).hexdigest())
    wheels = tmp_path / "wheels"
    fake_wheel(wheels, FAKE_INTER)
    seen = []
    monkeypatch.setattr(fetch, "_download_official", unreachable)
    monkeypatch.setattr(fetch, "_download_wheel", lambda dest: seen.append(dest) or next(dest.glob("*.whl")))
    path = fetch.fetch_ml100k(tmp_path)
    assert seen == [wheels]
    assert path == tmp_path / "ml-100k" / "ml-100k.inter"
    assert path.read_bytes() == FAKE_INTER
    monkeypatch.setattr(fetch, "_download_wheel", unreachable)
    assert fetch.fetch_ml100k(tmp_path) == path


def test_wrong_content_is_rejected_and_both_failures_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch, "_download_official", lambda: zipped({"ml-100k/u.data": FAKE_UDATA}))
    monkeypatch.setattr(fetch, "_download_wheel", lambda dest: fake_wheel(dest, FAKE_INTER))
    with pytest.raises(DataError) as info:
        fetch.fetch_ml100k(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("could not fetch ml-100k (official archive: u.data content differs from ML-100K (2 rows")
    assert f"recbole=={fetch.RECBOLE_VERSION} wheel: recbole-{fetch.RECBOLE_VERSION}-py3-none-any.whl: ml-100k.inter has sha256" in message
    assert message.endswith("download it by hand and pass --path u.data")
    assert not (tmp_path / "ml-100k").exists()


def test_corrupt_cache_is_fetched_again(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch, "RECBOLE_INTER_SHA256", hashlib.sha256(FAKE_INTER).hexdigest())
    cached = tmp_path / "ml-100k" / "ml-100k.inter"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(FAKE_INTER[:-5])
    monkeypatch.setattr(fetch, "_download_official", unreachable)
    monkeypatch.setattr(fetch, "_download_wheel", lambda dest: fake_wheel(dest, FAKE_INTER))
    assert fetch.fetch_ml100k(tmp_path) == cached
    assert cached.read_bytes() == FAKE_INTER


def test_no_network_and_no_cache(offline, tmp_path):
    with pytest.raises(DataError, match=r"^could not fetch ml-100k \(official archive: network is unreachable; "):
        fetch.fetch_ml100k(tmp_path)


def test_archive_without_udata(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch, "_download_official", lambda: zipped({"other.txt": b""}))
    monkeypatch.setattr(fetch, "_download_wheel", unreachable)
    with pytest.raises(DataError, match="official archive: the archive holds no u.data"):
        fetch.fetch_ml100k(tmp_path)


def test_pip_download_runs_this_interpreters_pip_and_reports_its_error(monkeypatch, tmp_path):
    calls = []

    def failing_pip(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "Looking in indexes\nERROR: No matching distribution found for recbole==1.2.1\n")

    monkeypatch.setattr(fetch.subprocess, "run", failing_pip)
    with pytest.raises(DataError, match=r"^pip download failed: ERROR: No matching distribution found for recbole==1.2.1$"):
        fetch._download_wheel(tmp_path / "wheels")
    command = calls[0]
    assert command[:4] == [fetch.sys.executable, "-m", "pip", "download"]
    assert "recbole==1.2.1" in command and "--no-deps" in command
    assert command[command.index("--dest") + 1] == str(tmp_path / "wheels")


def test_pip_is_not_run_when_the_wheel_is_already_cached(monkeypatch, tmp_path):
    wheel = fake_wheel(tmp_path / "wheels", FAKE_INTER)
    monkeypatch.setattr(fetch.subprocess, "run", unreachable)
    assert fetch._download_wheel(tmp_path / "wheels") == wheel
