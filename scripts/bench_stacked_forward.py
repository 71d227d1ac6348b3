"""Benchmark (not a test): what stacking B requests' histories into one forward pass could save.

Micro-batching cold `/v1/rank` requests by stacking their histories would turn B one-row passes
into one B-row pass. This times exactly that for the model's forward over `--length` events
(equal lengths, so no padding: the best case for stacking): B one-row calls against one B-row
call, one torch thread, CPU. The ratio bounds what stacking could gain on the history pass
(docs/serving.md, "Micro-batching").

    .venv/bin/python scripts/bench_stacked_forward.py [--formulation lfa] [--length 513] [--batches 1,4,16]
"""

from __future__ import annotations

import argparse

import torch

from bench_serving import median_seconds  # scripts/ is on the path when this runs as a script
from causalgr import Batch, ModelConfig, build_model


def rows(count: int, length: int, num_items: int) -> Batch:
    gen = torch.Generator().manual_seed(0)
    return Batch(items=torch.randint(1, num_items + 1, (count, length), generator=gen),
                 labels=torch.randint(0, 2, (count, length, 3), generator=gen).float(),
                 action_values=torch.zeros(count, length, dtype=torch.long),
                 timestamps=torch.cumsum(torch.randint(0, 100, (count, length), generator=gen), 1),
                 lengths=torch.full((count,), length))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formulation", default="lfa")
    parser.add_argument("--length", type=int, default=513, help="events per row (history 512 + the candidate)")
    parser.add_argument("--batches", default="1,4,16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ModelConfig(formulation=args.formulation, num_items=1682, tasks=("like", "love", "dislike"), dim=64,
                         layers=2, max_len=args.length)
    model = build_model(config).eval()
    one = rows(1, args.length, config.num_items)
    print(f"{args.formulation}, dim 64, 2 layers, {args.length} events per row, one torch thread; median of {args.repeats}")
    print()
    print("| B | B one-row passes s | one B-row pass s | ratio |")
    print("|---|---|---|---|")
    with torch.inference_mode():
        for count in (int(b) for b in args.batches.split(",")):
            stacked = rows(count, args.length, config.num_items)
            apart = median_seconds(lambda: [model(one) for _ in range(count)], args.repeats)
            together = median_seconds(lambda: model(stacked), args.repeats)
            print(f"| {count} | {apart:.3f} | {together:.3f} | {apart / together:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
