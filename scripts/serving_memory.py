"""Benchmark (not a test): the resident memory of a running `causalgr serve` over many requests
that fill its per-user history cache past its bound.

Request n posts `--events` events for user `u{n mod --users}` (`POST /v1/users/{user}/events`)
and ranks `--candidates` items for that user (`POST /v1/rank`), one request after the other; the
server's resident set size (VmRSS of `--pid`, read from /proc, so Linux only) and its
`causalgr_cache_bytes` are printed every `--every` requests. Loopback only.

    .venv/bin/python scripts/serving_memory.py --url http://127.0.0.1:8000 --pid PID --run runs/lfa \
        [--requests 20000] [--users 5000] [--events 5] [--candidates 20] [--every 2000]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import httpx
import numpy as np

from causalgr.serving.loadtest import check_url
from causalgr.serving.ranker import read_item_index
from causalgr.training.rundir import RunDir


def resident_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def cache_bytes(client: httpx.Client, base: str) -> int:
    text = client.get(f"{base}/metrics").text
    return int(float(re.search(r"^causalgr_cache_bytes (\S+)$", text, re.M).group(1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server's process id")
    parser.add_argument("--run", required=True, help="the served run (its item ids)")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--events", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--every", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = check_url(args.url)
    with httpx.Client(timeout=60) as client:
        info = client.get(f"{base}/v1/model").json()
        data = RunDir(args.run).read_config().data.path
        ids = list(read_item_index(Path(data), info["num_items"]).ids)
        rng = np.random.default_rng(args.seed)
        clock = {}  # user → the time of their last event
        print("| requests | resident MiB | cache MiB | errors |")
        print("|---|---|---|---|")
        errors = 0
        for n in range(args.requests + 1):
            if n % args.every == 0:
                print(f"| {n:,} | {resident_mib(args.pid):.1f} | {cache_bytes(client, base) / 2**20:.1f} | {errors} |",
                      flush=True)
            if n == args.requests:
                break
            user = f"u{n % args.users}"
            start = clock.get(user, 1_600_000_000)
            times = start + np.cumsum(rng.integers(0, 600, args.events))
            clock[user] = int(times[-1])
            events = [{"item": ids[i], "timestamp": int(t),
                       "actions": {task: int(a) for task, a in zip(info["tasks"], rng.integers(0, 2, len(info["tasks"])))}}
                      for i, t in zip(rng.integers(0, len(ids), args.events), times)]
            posted = client.post(f"{base}/v1/users/{user}/events", json={"events": events})
            ranked = client.post(f"{base}/v1/rank", json={"user": user, "timestamp": clock[user] + 60,
                                                          "candidates": [ids[i] for i in rng.integers(0, len(ids), args.candidates)]})
            errors += (posted.status_code != 200) + (ranked.status_code != 200)


if __name__ == "__main__":
    main()
