"""`Ranker.from_run` and the HTTP server on a tiny trained run: the source's ids, the routes of
docs/design.md §6, 4xx answers that name the field, and a real `causalgr serve` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

import causalgr
from causalgr.cli import main
from causalgr.data.errors import DataError
from causalgr.errors import ConfigError
from causalgr.serving import Ranker
from causalgr.serving.http import create_app
from causalgr.serving.limits import Limits
from causalgr.serving.loadtest import LoadTest, run_loadtest
from causalgr.training.evaluate import load_run
from data_helpers import tiny_lfa_run
from model_helpers import make_model

TASKS = ("click", "like")
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A one-epoch lfa run on tiny synthetic data (its item ids are the generator's ints)."""
    return tiny_lfa_run(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def item_ids(run) -> dict[str, int]:
    """original id (str) → dense id, as the prepared data wrote them."""
    table = pl.read_parquet(run.parent / "data" / "item_ids.parquet")
    return {str(o): int(d) for d, o in zip(table["item"], table["item_id"])}


class InProcess:
    """Real HTTP requests to an app in this process (httpx's ASGI transport, no socket)."""

    def __init__(self, app):
        self.app = app

    def request(self, method: str, url: str, **options) -> httpx.Response:
        async def send():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://serving") as c:
                return await c.request(method, url, **options)

        return anyio.run(send)

    def get(self, url: str, **options) -> httpx.Response:
        return self.request("GET", url, **options)

    def post(self, url: str, **options) -> httpx.Response:
        return self.request("POST", url, **options)


@pytest.fixture(scope="module")
def client(run) -> InProcess:
    return InProcess(create_app(Ranker.from_run(run), Limits(max_candidates=50, max_body_bytes=20_000)))


def rank_body(item_ids: dict[str, int], **changes) -> dict:
    known = sorted(item_ids)
    body = {
        "history": [{"item": known[0], "timestamp": 1_000, "actions": {"click": 1}},
                    {"item": known[1], "timestamp": 1_060, "actions": {"click": 0, "like": 1}, "action_value": 0}],
        "candidates": [known[2], "no-such-item", known[3], known[2]],
        "timestamp": 1_100,
    }
    return {**body, **changes}


def test_from_run_takes_the_sources_ids_and_answers_like_the_model(run, item_ids):
    ranker = Ranker.from_run(run)
    dense = Ranker(load_run(run, device="cpu")[0])
    originals = sorted(item_ids)[:5]
    history = dict(timestamps=[10, 20], labels=[[1, 0], [0, 1]])
    by_original = ranker.rank_with_details(items=originals[:2], **history, candidates=originals[2:] + ["nope"],
                                           timestamp=30)
    by_dense = dense.rank(items=[item_ids[o] for o in originals[:2]], **history,
                          candidates=[item_ids[o] for o in originals[2:]], timestamp=30)
    np.testing.assert_allclose(by_original.probabilities[:3], by_dense, atol=ATOL, rtol=0)
    assert by_original.unknown_items == ["nope"]
    as_ints = ranker.rank(items=[int(o) for o in originals[:2]], **history, candidates=[int(originals[2])], timestamp=30)
    np.testing.assert_array_equal(as_ints[0], by_original.probabilities[0])


def test_rank_answers_in_request_order_with_the_unknown_items(client, run, item_ids):
    body = rank_body(item_ids)
    response = client.post("/v1/rank", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [c["item"] for c in answer["candidates"]] == body["candidates"]
    assert answer["unknown_items"] == ["no-such-item"]
    expected = Ranker.from_run(run).rank(
        items=[e["item"] for e in body["history"]], timestamps=[1_000, 1_060], labels=[[1, 0], [0, 1]],
        candidates=body["candidates"], timestamp=1_100,
    )
    got = np.array([[c["probabilities"][t] for t in TASKS] for c in answer["candidates"]])
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_events_posted_for_a_user_are_the_history_of_their_next_rank(client, item_ids):
    body = rank_body(item_ids)
    response = client.post("/v1/users/u7/events", json={"events": body["history"]})
    assert response.status_code == 200 and response.json() == {"user": "u7", "unknown_items": []}
    by_user = client.post("/v1/rank", json={**body, "history": [], "user": "u7"}).json()
    given = client.post("/v1/rank", json=body).json()
    assert by_user == given


@pytest.mark.parametrize("change,location", [
    ({"candidates": []}, ["body", "candidates"]),
    ({"candidates": None}, ["body", "candidates"]),
    ({"timestamp": "soon"}, ["body", "timestamp"]),
    ({"timestamp": 1_059}, ["body", "timestamp"]),
    ({"colour": "red"}, ["body", "colour"]),
    ({"history": [{"item": "1", "timestamp": 5, "actions": {"clicked": 1}}]}, ["body", "history", 0, "actions", "clicked"]),
    ({"history": [{"item": "1", "timestamp": 5, "actions": {"click": 2}}]}, ["body", "history", 0, "actions"]),
    ({"history": [{"item": "1", "timestamp": 5}, {"item": "2", "timestamp": 4}]}, ["body", "history", 1, "timestamp"]),
    ({"history": [{"item": "1", "timestamp": -5}]}, ["body", "history", 0, "timestamp"]),
    ({"history": [{"item": "1", "timestamp": 5, "action_value": 3}]}, ["body", "history", 0, "action_value"]),
    ({"candidates": ["1"] * 51}, ["body", "candidates"]),
])
def test_a_bad_rank_request_is_a_422_naming_the_field(client, item_ids, change, location):
    response = client.post("/v1/rank", json=rank_body(item_ids, **change))
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][: len(location)] == location
    assert response.json()["message"].startswith(".".join(map(str, location)))


def test_a_malformed_body_is_one_422_at_the_body_that_does_not_echo_it(client):
    for route in ("/v1/rank", "/v1/users/u9/events"):
        response = client.post(route, content=b'{"candidates": ["secret", ', headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["type"] == "json_invalid" and error["loc"] == ["body"] and "secret" not in response.text


def test_a_refused_event_post_is_a_422_and_caches_nothing(client, item_ids):
    events = [{"item": "1", "timestamp": 10}, {"item": "2", "timestamp": 5}]
    response = client.post("/v1/users/u8/events", json={"events": events})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "events", 1, "timestamp"]
    assert client.post("/v1/users/u8/events", json={"events": []}).status_code == 422
    history = client.post("/v1/rank", json=rank_body(item_ids, history=[], user="u8")).json()
    cold = client.post("/v1/rank", json=rank_body(item_ids, history=[])).json()
    assert history == cold


def test_action_values_reach_the_model_and_are_checked():
    client = InProcess(create_app(Ranker(make_model("mvp", "softmax", 2))))
    event = {"item": 3, "timestamp": 10, "actions": {"task1": 1}}
    bodies = [{"history": [{**event, "action_value": value}], "candidates": [4], "timestamp": 20} for value in (1, 2)]
    answers = [client.post("/v1/rank", json=b).json()["candidates"][0]["probabilities"] for b in bodies]
    assert answers[0] != answers[1]
    too_big = {**bodies[0], "history": [{**event, "action_value": 6}]}
    assert client.post("/v1/rank", json=too_big).json()["detail"][0]["loc"] == ["body", "history", 0, "action_value"]


def test_a_body_over_the_limit_is_a_413(client, item_ids):
    response = client.post("/v1/rank", json=rank_body(item_ids, candidates=["x" * 30_000]))
    assert response.status_code == 413 and "20,000 bytes" in response.json()["message"]

    async def chunks():  # no Content-Length: the limit counts what arrives
        for _ in range(30):
            yield b" " * 1_000

    response = client.post("/v1/rank", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "content-length" not in response.request.headers


def test_health_model_and_metrics(client, item_ids):
    assert client.post("/v1/rank", json=rank_body(item_ids)).status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert (info["formulation"], info["tasks"], info["max_history"]) == ("lfa", list(TASKS), 15)
    assert info["limits"]["max_candidates"] == 50
    text = client.get("/metrics").text
    assert 'causalgr_requests_total{route="/v1/rank",status="200"}' in text
    assert "causalgr_request_seconds_bucket" in text and "causalgr_cache_users" in text


def test_metrics_split_each_request_into_ranker_time_and_the_rest(run, item_ids):
    app = InProcess(create_app(Ranker.from_run(run)))
    for _ in range(3):
        assert app.post("/v1/rank", json=rank_body(item_ids)).status_code == 200
    assert app.post("/v1/rank", json=rank_body(item_ids, timestamp=1)).status_code == 422  # refused by the ranker
    assert app.post("/v1/rank", json={"candidates": []}).status_code == 422  # refused before it
    assert app.post("/v1/users/u1/events", json={"events": rank_body(item_ids)["history"]}).status_code == 200
    samples = {(s.name, s.labels.get("route")): s.value for family in text_string_to_metric_families(app.get("/metrics").text)
               for s in family.samples}
    assert samples[("causalgr_request_seconds_count", "/v1/rank")] == 5
    assert samples[("causalgr_ranker_seconds_count", "/v1/rank")] == 4  # a refusal by the ranker counts, by pydantic not
    assert 0 < samples[("causalgr_ranker_seconds_sum", "/v1/rank")] < samples[("causalgr_request_seconds_sum", "/v1/rank")]
    assert samples[("causalgr_ranker_seconds_count", "/v1/users/{user}/events")] == 1  # the route, not the user


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run, tmp_path_factory) -> Iterator[str]:
    """The base URL of a real `causalgr serve` process on a free loopback port, serving `run`."""
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(causalgr.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "causalgr.cli", "serve", "--run", str(run), "--host", "127.0.0.1",
               "--port", str(port), "--threads", "1"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the server exited: {log.read_text()}"
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no /healthz in 60 s: {log.read_text()}"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_real_server_process_answers_like_the_ranker(server, run, item_ids):
    base = server
    body = rank_body(item_ids)
    answer = httpx.post(f"{base}/v1/rank", json=body, timeout=30).json()
    expected = Ranker.from_run(run).rank(
        items=[e["item"] for e in body["history"]], timestamps=[1_000, 1_060], labels=[[1, 0], [0, 1]],
        candidates=body["candidates"], timestamp=1_100,
    )
    got = np.array([[c["probabilities"][t] for t in TASKS] for c in answer["candidates"]])
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    bad = httpx.post(f"{base}/v1/rank", json={**body, "timestamp": "later"}, timeout=30)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "timestamp"]
    broken = httpx.post(f"{base}/v1/rank", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200  # still up


def rank_requests_served(base: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith('causalgr_requests_total{route="/v1/rank",status="200"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_load_test_of_the_real_server_answers_every_request_like_the_ranker(server, run):
    served_before = rank_requests_served(server)
    result = run_loadtest(LoadTest(url=server, requests=60, concurrency=4, candidates=8, history=6, seed=1, check=5,
                                   run=run, timeout_s=30))
    assert result.errors == {} and result.sent == result.requested == 60 and result.passed
    assert result.checked == 5 and result.max_abs_diff is not None and result.max_abs_diff <= ATOL
    assert 0 < result.percentile(50) <= result.percentile(95) <= result.percentile(99) <= result.latencies_ms.max()
    assert result.requests_per_s > 0 and result.summary()["p95_ms"] == result.percentile(95)
    assert rank_requests_served(server) - served_before == 60


def test_the_load_test_check_sees_a_wrong_answer(server, run, monkeypatch):
    rank = Ranker.rank
    monkeypatch.setattr(Ranker, "rank", lambda self, *a, **k: rank(self, *a, **k) + 1e-3)
    result = run_loadtest(LoadTest(url=server, requests=6, concurrency=2, candidates=3, history=2, check=3, run=run))
    assert result.errors == {} and result.checked == 3
    assert result.max_abs_diff == pytest.approx(1e-3, abs=1e-5) and not result.check_passed and not result.passed


def test_a_load_test_stops_at_its_time_limit_and_fails(server):
    result = run_loadtest(LoadTest(url=server, requests=100, concurrency=2, timeout_s=0.001))
    assert result.sent <= 2 < result.requested and not result.passed


def test_the_loadtest_command_prints_its_table_and_exits_0(server, run, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["causalgr", "loadtest", "--url", server, "--requests", "8", "--concurrency", "2",
                                      "--candidates", "4", "--history", "0", "--check", "2", "--run", str(run)])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr().out
    assert exit_.value.code == 0, out
    assert "p99 latency" in out and "8 of 8" in out and "(equal)" in out


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://example.com", "http://127.0.0.1.example.com:80",
                                 "ftp://127.0.0.1:8000", "127.0.0.1:8000"])
def test_the_load_test_refuses_a_url_off_this_machine_in_one_line(url, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="not on this machine"):
        run_loadtest(LoadTest(url=url))
    monkeypatch.setattr(sys, "argv", ["causalgr", "loadtest", "--url", url])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: url: ") and err.count("\n") == 1, err


def test_a_run_folder_serves_alone_with_the_item_ids_it_keeps(run, item_ids, tmp_path):
    import shutil

    alone = tmp_path / "copied-run"
    shutil.copytree(run, alone)
    config = alone / "config.yaml"
    config.write_text(config.read_text().replace(str(run.parent / "data"), str(tmp_path / "no-such-data")))
    assert str(tmp_path / "no-such-data") in config.read_text()
    originals = sorted(item_ids)[:3]
    history = dict(items=originals[:2], timestamps=[10, 20], labels=[[1, 0], [0, 1]])
    kept = Ranker.from_run(alone).rank_with_details(**history, candidates=originals[2:], timestamp=30)
    np.testing.assert_array_equal(kept.probabilities, Ranker.from_run(run).rank(**history, candidates=originals[2:],
                                                                                timestamp=30))
    assert kept.unknown_items == []
    (alone / "item_ids.parquet").unlink()  # and without them: the missing data folder, in one line
    with pytest.raises(DataError, match="no-such-data.*not found"):
        Ranker.from_run(alone)


def test_the_load_test_check_needs_the_run():
    with pytest.raises(ConfigError, match="--run"):
        run_loadtest(LoadTest(url="http://127.0.0.1:9", check=1))


@pytest.mark.parametrize("damage", ["missing", "corrupt weights", "no item ids"])
def test_serve_refuses_a_bad_run_folder_in_one_line(run, tmp_path, monkeypatch, capsys, damage):
    import shutil

    target = tmp_path / "run"
    if damage != "missing":
        shutil.copytree(run, target)
    if damage == "corrupt weights":
        (target / "checkpoint" / "best.safetensors").write_bytes(b"not weights")
    data = []
    if damage == "no item ids":
        shutil.copytree(run.parent / "data", tmp_path / "data")
        (tmp_path / "data" / "item_ids.parquet").unlink()
        data = ["--data", str(tmp_path / "data")]
    monkeypatch.setattr(sys, "argv", ["causalgr", "serve", "--run", str(target), *data])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
