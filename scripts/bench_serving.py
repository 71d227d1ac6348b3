"""Benchmark (not a test): `Ranker.rank` latency, cold and warm, by formulation, history and K.

Cold: the whole history is given in the call (no cache), so the history goes through the model
and then the K candidates in one pass, O(N² + K·N). Warm: the user's N events were observed
before, and the call gives one new event, so only that event and the candidates run,
O(N + K·N). Untrained models (the speed does not depend on the weights), one torch thread,
CPU unless --device; prints a Markdown table of median and 99th-percentile seconds per call
(over --repeats calls after one warm-up: below 100 calls the 99th percentile is interpolated
between the slowest ones) and candidates/s at the median. `--floor` adds the warm call's floor:
the same user ranked with no new event, so only the candidates run (their own work against the
cached history, the head and the call's overhead); cold/floor bounds what cold/warm can reach.
`--exported` adds the `causalgr export` package (torch.export, CPU, always cold: it holds no
cache), exported once per formulation and history length (seconds each); `--aoti` also its
AOTInductor compilation (minutes each; needs a C++ compiler). `--http` serves the same model with `causalgr serve`'s
app (uvicorn in a process of its own, 127.0.0.1, one torch thread) and sends it --repeats cold
requests at concurrency 1 with the load test's client: p50 and p99 of the HTTP round trip; then the
production-shaped warm requests: the user's N events posted once to `/v1/users/{user}/events`, then
--repeats `/v1/rank` requests naming that user with one new event in `history` (concurrency 1,
one kept-alive connection). `--compile` builds every ranker (and the HTTP server's) with
`Ranker(model, compile=True)`: warm calls and the floor run compiled, cold calls eager; the
compilation (about a minute per model) is not timed.

    .venv/bin/python scripts/bench_serving.py [--lengths 128,512,2048] [--candidates 10,100,1000]
        [--formulations interleaved,lfa,mvp,lagged,summed] [--backbone hstu] [--repeats 5] [--floor]
        [--exported [--aoti]] [--http] [--compile]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from causalgr import ModelConfig, build_model
from causalgr.models import BACKBONES, FORMULATIONS
from causalgr.serving import Ranker
from causalgr.serving.export import export_ranker
from causalgr.serving.loadtest import LoadTest, make_request, run_loadtest

TASKS = ("click", "like", "share")


def history(length: int, num_items: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return dict(
        items=rng.integers(1, num_items + 1, length).tolist(),
        timestamps=np.cumsum(rng.integers(0, 3_600, length)).tolist(),
        labels=rng.integers(0, 2, (length, len(TASKS))).tolist(),
    )


def call_seconds(call, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls, after one warm-up call (first-call allocations)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(call, repeats: int) -> float:
    return statistics.median(call_seconds(call, repeats))


def median_p99(call, repeats: int) -> tuple[float, float]:
    times = call_seconds(call, repeats)
    return statistics.median(times), float(np.percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="128,512,2048", help="history events N")
    parser.add_argument("--candidates", default="10,100,1000", help="candidates K per call")
    parser.add_argument("--formulations", default=",".join(FORMULATIONS))
    parser.add_argument("--backbone", default="hstu", choices=tuple(BACKBONES))
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--floor", action="store_true", help="also time a warm call with no new event")
    parser.add_argument("--exported", action="store_true", help="also time the torch.export package (CPU)")
    parser.add_argument("--aoti", action="store_true", help="with --exported: also its AOTInductor package")
    parser.add_argument("--http", action="store_true", help="also time cold requests to a `causalgr serve` app")
    parser.add_argument("--compile", action="store_true", help="rankers compile their warm calls (Ranker(compile=True))")
    args = parser.parse_args()
    if args.exported and args.device != "cpu":
        parser.error("--exported runs on the CPU")
    if args.aoti and not args.exported:
        parser.error("--aoti needs --exported")
    torch.set_num_threads(1)
    lengths = [int(n) for n in args.lengths.split(",")]
    counts = [int(k) for k in args.candidates.split(",")]

    print(f"`Ranker.rank`, {args.backbone}, dim {args.dim}, {args.layers} layers, {args.device}, one torch thread; "
          f"median of {args.repeats} calls")
    print()
    extra = (" floor s | cold/floor |" * args.floor + " exported s | exported/cold |" * args.exported
             + " AOTInductor s | AOTInductor/cold |" * args.aoti + " HTTP p50 s | HTTP p99 s | HTTP warm p50 s | HTTP warm p99 s |" * args.http)
    print(f"| formulation | history N | K | cold s | cold p99 s | warm s | warm p99 s | cold/warm | candidates/s cold "
          f"| candidates/s warm |{extra}")
    print("|---|---|---|---|---|---|---|---|---|---|" + "---|---|" * (args.floor + args.exported + args.aoti + 2 * args.http))
    folder = tempfile.TemporaryDirectory()
    for formulation in args.formulations.split(","):
        for length in lengths:
            config = ModelConfig(formulation=formulation, backbone=args.backbone, num_items=args.items, tasks=TASKS,
                                 dim=args.dim, layers=args.layers, max_len=length + 2)
            torch.manual_seed(0)
            ranker = Ranker(build_model(config).to(args.device), compile=args.compile)
            events = history(length + 1, args.items, seed=length)
            cached, new = ({key: values[:length] for key, values in events.items()},
                           {key: values[length:] for key, values in events.items()})
            ranker.observe("user", **cached)
            timestamp = events["timestamps"][-1] + 60
            program = compiled = server = None
            if args.http:
                server = HTTPServer(config, args.compile)
            if args.exported:
                name = Path(folder.name) / f"{formulation}-{length}"
                package = export_ranker(ranker, name.with_suffix(".pt2"), max_candidates=max(max(counts), 2),
                                        aoti=name.with_suffix(".aoti.pt2") if args.aoti else None)
                program = torch.export.load(package.path).module()
                compiled = aoti_load_package(str(package.aoti_path)) if args.aoti else None
            for k in counts:
                candidates = (np.random.default_rng(k).choice(args.items, k, replace=False) + 1).tolist()  # distinct
                cold, cold_p99 = median_p99(lambda: ranker.rank(**events, candidates=candidates, timestamp=timestamp),
                                            args.repeats)
                warm, warm_p99 = median_p99(lambda: ranker.rank(user="user", **new, candidates=candidates,
                                                                timestamp=timestamp), args.repeats)
                row = (f"| {formulation} | {length} | {k} | {cold:.4f} | {cold_p99:.4f} | {warm:.4f} | {warm_p99:.4f} "
                       f"| {cold / warm:.1f}× | {k / cold:,.0f} | {k / warm:,.0f} |")
                if args.floor:
                    floor = median_seconds(lambda: ranker.rank(user="user", candidates=candidates, timestamp=timestamp),
                                           args.repeats)
                    row += f" {floor:.4f} | {cold / floor:.1f}× |"
                for program_or_package in (program, compiled)[: args.exported + args.aoti]:
                    seconds = median_seconds(lambda: call(program_or_package, events, candidates, timestamp), args.repeats)
                    row += f" {seconds:.4f} | {seconds / cold:.2f}× |"
                if server is not None:
                    p50, p99 = server.latency(length, k, args.repeats)
                    warm_p50, warm_p99 = server.warm_latency(length, k, args.repeats)
                    row += f" {p50:.4f} | {p99:.4f} | {warm_p50:.4f} | {warm_p99:.4f} |"
                print(row, flush=True)
            if server is not None:
                server.close()


@torch.inference_mode()
def call(program, events: dict, candidates: list, timestamp: int) -> torch.Tensor:
    """The exported program (or its AOTInductor package) on one request, given as lists like
    `Ranker.rank`'s (conversion included)."""
    return program(torch.tensor(events["items"]), torch.tensor(events["timestamps"]),
                   torch.tensor(events["labels"], dtype=torch.float32), torch.zeros(len(events["items"]), dtype=torch.long),
                   torch.tensor(candidates), torch.tensor(timestamp))


class HTTPServer:
    """`causalgr serve`'s app for `config`'s untrained model (seed 0: the same weights as the ranker
    timed beside it) in a process of its own on a free loopback port."""

    def __init__(self, config: ModelConfig, compile: bool = False):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = multiprocessing.get_context("spawn").Process(target=_serve, args=(config, self.port, compile))
        self.process.start()
        deadline = time.monotonic() + (600 if compile else 120)  # compiling takes a minute or more
        while True:
            try:
                httpx.get(f"{self.url}/healthz", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline or not self.process.is_alive():
                    self.close()
                    raise SystemExit("the HTTP server did not start") from None
                time.sleep(0.2)

    def latency(self, history: int, candidates: int, requests: int) -> tuple[float, float]:
        """p50 and p99 seconds of `requests` cold requests (after one warm-up), concurrency 1."""
        settings = LoadTest(url=self.url, requests=requests + 1, concurrency=1, candidates=candidates,
                            history=history, timeout_s=600)
        result = run_loadtest(settings)
        if not result.passed:
            raise SystemExit(f"HTTP load test failed: {result.summary()}")
        times = result.latencies_ms[1:] / 1000
        return float(np.percentile(times, 50)), float(np.percentile(times, 99))

    def warm_latency(self, history: int, candidates: int, requests: int) -> tuple[float, float]:
        """p50 and p99 seconds of `requests` warm requests (after one warm-up), concurrency 1: a user's
        `history` events observed once, then each request names the user and brings one new event."""
        info = httpx.get(f"{self.url}/v1/model", timeout=10).json()
        ids = [str(i) for i in range(1, info["num_items"] + 1)]  # the load test's ids
        body = make_request(np.random.default_rng(history + candidates), ids, info, history + 1, candidates)
        user = f"warm-{history}-{candidates}"
        with httpx.Client(base_url=self.url, timeout=60) as client:
            client.post(f"/v1/users/{user}/events", json={"events": body["history"][:-1]}).raise_for_status()
            request = json.dumps({"user": user, "history": body["history"][-1:], "candidates": body["candidates"],
                                  "timestamp": body["timestamp"]}).encode()  # encoded once, as the load test does
            headers = {"content-type": "application/json"}
            times = call_seconds(lambda: client.post("/v1/rank", content=request, headers=headers).raise_for_status(),
                                 requests)
        return float(np.percentile(times, 50)), float(np.percentile(times, 99))

    def close(self) -> None:
        self.process.terminate()
        self.process.join()


def _serve(config: ModelConfig, port: int, compile: bool) -> None:
    import uvicorn

    from causalgr.serving.http import create_app
    from causalgr.serving.items import ItemIndex

    torch.set_num_threads(1)
    torch.manual_seed(0)
    items = ItemIndex(config.num_items, {str(i): i for i in range(1, config.num_items + 1)})  # the load test's ids
    ranker = Ranker(build_model(config), items, compile=compile)
    uvicorn.run(create_app(ranker), host="127.0.0.1", port=port, log_level="warning")


def aoti_load_package(path: str):
    from torch._inductor import aoti_load_package  # imports inductor: seconds, so only when asked

    return aoti_load_package(path)


if __name__ == "__main__":
    main()
