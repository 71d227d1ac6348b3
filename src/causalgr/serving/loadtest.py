"""Load test of a running `causalgr serve`: N seeded `/v1/rank` requests from C concurrent workers.

    result = run_loadtest(LoadTest(url="http://127.0.0.1:8000", requests=200, concurrency=4))
    result.percentile(95), result.requests_per_s, result.errors

The requests are built from the server's `GET /v1/model` (tasks, items, action values, limits):
H history events in time order and K candidates each, drawn with `seed`. Item ids come from
the run's prepared data when `run` is given, else they are "1".."num_items" — ids the model may
not know, which the server answers as the unknown item. With `check` > 0, that many responses,
drawn at random, are compared with a local `Ranker.from_run(run)`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

from causalgr.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
CHECK_ATOL = 1e-5  # the serving guarantee (docs/serving.md): float32, within 1e-5 of the model


@dataclass(frozen=True)
class LoadTest:
    url: str
    requests: int = 100
    concurrency: int = 4
    candidates: int = 20
    history: int = 20
    seed: int = 0
    check: int = 0  # responses compared with a local ranker of `run`
    run: Path | str | None = None  # the served run: its item ids, and the ranker `check` compares with
    timeout_s: float = 60.0  # for the whole test; requests not sent by then are not counted


@dataclass
class LoadResult:
    sent: int  # requests that got an answer or failed; `requested - sent` ran out of time
    requested: int
    wall_s: float
    latencies_ms: np.ndarray  # [sent], in the order answers came
    errors: dict[str, int] = field(default_factory=dict)  # HTTP status or exception name → count
    checked: int = 0
    max_abs_diff: float | None = None  # over the checked responses' probabilities

    @property
    def requests_per_s(self) -> float:
        return self.sent / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    @property
    def check_passed(self) -> bool:
        return self.max_abs_diff is None or self.max_abs_diff <= CHECK_ATOL

    @property
    def passed(self) -> bool:
        """Every request was sent and answered 200, and the checked answers equal the local ranker's."""
        return self.sent == self.requested and not self.errors and self.check_passed

    def summary(self) -> dict:
        return {"requested": self.requested, "sent": self.sent, "wall_s": self.wall_s,
                "requests_per_s": self.requests_per_s, "p50_ms": self.percentile(50),
                "p95_ms": self.percentile(95), "p99_ms": self.percentile(99), "errors": dict(self.errors),
                "checked": self.checked, "max_abs_diff": self.max_abs_diff}


def run_loadtest(settings: LoadTest) -> LoadResult:
    """Send `settings.requests` rank requests and measure them; `ConfigError` in one line for a
    URL that is not on this machine, a server that does not answer `/v1/model`, or a bad setting."""
    base = check_url(settings.url)
    if min(settings.requests, settings.concurrency, settings.candidates) < 1 or settings.history < 0:
        raise ConfigError("requests, concurrency and candidates must be at least 1, history at least 0")
    if settings.check and settings.run is None:
        raise ConfigError("check: needs the served run (--run DIR) to compare answers with")
    if settings.check > settings.requests:
        raise ConfigError(f"check: {settings.check} responses to check but only {settings.requests} requests")
    info = _model_info(base)
    if settings.candidates > info["limits"]["max_candidates"]:
        raise ConfigError(f"candidates: {settings.candidates} is over the server's limit of "
                          f"{info['limits']['max_candidates']:,} (causalgr serve --max-candidates)")
    ranker, ids = None, [str(i) for i in range(1, info["num_items"] + 1)]
    if settings.run is not None:
        from causalgr.serving.ranker import Ranker

        ranker = Ranker.from_run(settings.run)
        ids = sorted(ranker.items.ids)  # a run's ranker always has its data's original ids
    rng = np.random.default_rng(settings.seed)
    bodies = [make_request(rng, ids, info, settings.history, settings.candidates) for _ in range(settings.requests)]
    sampled = set(rng.choice(settings.requests, settings.check, replace=False).tolist()) if settings.check else set()
    result, answers = asyncio.run(_send(base, bodies, settings.concurrency, settings.timeout_s, sampled))
    if ranker is not None and sampled:
        result.checked, result.max_abs_diff = _compare(ranker, bodies, answers)
    return result


def check_url(url: str) -> str:
    """`url` without a trailing slash; `ConfigError` unless it is http(s) on a loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK:
        raise ConfigError(f"url: {url!r} is not on this machine; the load test only sends to "
                          f"http://{{127.0.0.1, localhost, [::1]}}:PORT")
    return url.rstrip("/")


def make_request(rng: np.random.Generator, ids: list[str], info: dict, history: int, candidates: int) -> dict:
    """A valid `/v1/rank` body: `history` events oldest first with random actions, `candidates` ids."""
    times = np.sort(rng.integers(1_600_000_000, 1_600_000_000 + 86_400 * 30, size=history))
    values = info["num_action_values"]
    events = [{"item": ids[i], "timestamp": int(t),
               "actions": {task: int(a) for task, a in zip(info["tasks"], rng.integers(0, 2, len(info["tasks"])))},
               "action_value": int(rng.integers(0, values)) if values > 1 else 0}
              for i, t in zip(rng.integers(0, len(ids), history), times)]
    chosen = rng.choice(len(ids), candidates, replace=candidates > len(ids))
    last = int(times[-1]) if history else 1_600_000_000
    return {"history": events, "candidates": [ids[i] for i in chosen], "timestamp": last + int(rng.integers(0, 3_600))}


def _model_info(base: str) -> dict:
    try:
        response = httpx.get(f"{base}/v1/model", timeout=10)
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError) as err:
        raise ConfigError(f"url: {base}/v1/model did not answer: {type(err).__name__}: {err}") from None


async def _send(base: str, bodies: list[dict], concurrency: int, timeout_s: float,
                sampled: set[int]) -> tuple[LoadResult, dict[int, dict]]:
    """C workers take the next request until all are sent or `timeout_s` is over. The bodies are
    encoded before the clock starts: a latency is the server's answer and the round trip, not the
    client's JSON encoding (which runs on the same machine)."""
    encoded = [json.dumps(body).encode() for body in bodies]
    headers = {"content-type": "application/json"}
    latencies, errors, answers = [], {}, {}
    queue = iter(range(len(bodies)))  # shared: each worker takes the next index
    start = time.perf_counter()
    deadline = start + timeout_s

    async def worker(client: httpx.AsyncClient) -> None:
        for n in queue:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            sent = time.perf_counter()
            try:
                response = await client.post(f"{base}/v1/rank", content=encoded[n], headers=headers, timeout=left)
                status = None if response.status_code == 200 else str(response.status_code)
            except httpx.HTTPError as err:
                status = type(err).__name__
            latencies.append((time.perf_counter() - sent) * 1e3)
            if status is not None:
                errors[status] = errors.get(status, 0) + 1
            elif n in sampled:
                answers[n] = response.json()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return LoadResult(len(latencies), len(bodies), wall, np.array(latencies), errors), answers


def _compare(ranker, bodies: list[dict], answers: dict[int, dict]) -> tuple[int, float]:
    """(responses compared, max |served − local| over their probabilities)."""
    worst = 0.0
    for n, answer in answers.items():
        body = bodies[n]
        events = body["history"]
        history = dict(items=[e["item"] for e in events], timestamps=[e["timestamp"] for e in events],
                       labels=[[e["actions"][t] for t in ranker.tasks] for e in events],
                       action_values=[e["action_value"] for e in events]) if events else {}
        local = ranker.rank(**history, candidates=body["candidates"], timestamp=body["timestamp"])
        served = np.array([[c["probabilities"][t] for t in ranker.tasks] for c in answer["candidates"]])
        worst = max(worst, float(np.abs(served - local).max()))
    return len(answers), worst
