"""Benchmark (not a test): `Ranker.rank` latency, cold and warm, by formulation, history and K.

Cold: the whole history is given in the call (no cache), so the history goes through the model
and then the K candidates in one pass, O(N² + K·N). Warm: the user's N events were observed
before, and the call gives one new event, so only that event and the candidates run,
O(N + K·N). Untrained models (the speed does not depend on the weights), one torch thread,
CPU unless --device; prints a Markdown table of median seconds per call and candidates/s.
`--exported` adds the `causalgr export` package (torch.export, CPU, always cold: it holds no
cache), exported once per formulation and history length (seconds each).

    .venv/bin/python scripts/bench_serving.py [--lengths 128,512,2048] [--candidates 10,100,1000]
        [--formulations interleaved,lfa,mvp,lagged,summed] [--backbone hstu] [--repeats 5] [--exported]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from causalgr import ModelConfig, build_model
from causalgr.models import BACKBONES, FORMULATIONS
from causalgr.serving import Ranker
from causalgr.serving.export import export_ranker

TASKS = ("click", "like", "share")


def history(length: int, num_items: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return dict(
        items=rng.integers(1, num_items + 1, length).tolist(),
        timestamps=np.cumsum(rng.integers(0, 3_600, length)).tolist(),
        labels=rng.integers(0, 2, (length, len(TASKS))).tolist(),
    )


def median_seconds(call, repeats: int) -> float:
    call()  # warm-up: first-call allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    parser.add_argument("--exported", action="store_true", help="also time the torch.export package (CPU)")
    args = parser.parse_args()
    if args.exported and args.device != "cpu":
        parser.error("--exported runs on the CPU")
    torch.set_num_threads(1)
    lengths = [int(n) for n in args.lengths.split(",")]
    counts = [int(k) for k in args.candidates.split(",")]

    print(f"`Ranker.rank`, {args.backbone}, dim {args.dim}, {args.layers} layers, {args.device}, one torch thread; "
          f"median of {args.repeats} calls")
    print()
    extra = " exported s | exported/cold |" if args.exported else ""
    print(f"| formulation | history N | K | cold s | warm s | cold/warm | candidates/s cold | candidates/s warm |{extra}")
    print("|---|---|---|---|---|---|---|---|" + "---|---|" * args.exported)
    folder = tempfile.TemporaryDirectory()
    for formulation in args.formulations.split(","):
        for length in lengths:
            config = ModelConfig(formulation=formulation, backbone=args.backbone, num_items=args.items, tasks=TASKS,
                                 dim=args.dim, layers=args.layers, max_len=length + 2)
            ranker = Ranker(build_model(config).to(args.device))
            events = history(length + 1, args.items, seed=length)
            cached, new = ({key: values[:length] for key, values in events.items()},
                           {key: values[length:] for key, values in events.items()})
            ranker.observe("user", **cached)
            timestamp = events["timestamps"][-1] + 60
            if args.exported:
                package = export_ranker(ranker, Path(folder.name) / f"{formulation}-{length}.pt2",
                                        max_candidates=max(max(counts), 2)).path
                program = torch.export.load(package).module()
            for k in counts:
                candidates = (np.random.default_rng(k).choice(args.items, k, replace=False) + 1).tolist()  # distinct
                cold = median_seconds(lambda: ranker.rank(**events, candidates=candidates, timestamp=timestamp),
                                      args.repeats)
                warm = median_seconds(lambda: ranker.rank(user="user", **new, candidates=candidates,
                                                          timestamp=timestamp), args.repeats)
                row = (f"| {formulation} | {length} | {k} | {cold:.4f} | {warm:.4f} | {cold / warm:.1f}× "
                       f"| {k / cold:,.0f} | {k / warm:,.0f} |")
                if args.exported:
                    exported = median_seconds(lambda: call(program, events, candidates, timestamp), args.repeats)
                    row += f" {exported:.4f} | {exported / cold:.2f}× |"
                print(row, flush=True)


@torch.inference_mode()
def call(program, events: dict, candidates: list, timestamp: int) -> torch.Tensor:
    """The exported program on one request, given as lists like `Ranker.rank`'s (conversion included)."""
    return program(torch.tensor(events["items"]), torch.tensor(events["timestamps"]),
                   torch.tensor(events["labels"], dtype=torch.float32), torch.zeros(len(events["items"]), dtype=torch.long),
                   torch.tensor(candidates), torch.tensor(timestamp))


if __name__ == "__main__":
    main()
