"""Benchmark (not a test): the share of a data-parallel training step spent on synchronisation.

Run under torchrun, one torch thread per rank:

    torchrun --standalone --nproc-per-node 2 scripts/bench_ddp_comm.py --data DIR [--steps 20]

Every rank reads its own users (`load_prepared(share=…)`) and takes the trainer's batches and
step (`Ranks.train_batches`, `train_step`). Each batch is stepped twice: once as in training (DDP
all-reduces the gradients during the backward pass and waits for the slower rank), once under
`no_sync()` (no all-reduce, no wait). The synchronisation share is 1 − median(no_sync) /
median(sync): the all-reduce time DDP does not hide behind the backward pass, plus the wait for
the other rank. Rank 0 prints one line per rank.
"""

from __future__ import annotations

import argparse
import statistics
import time
from itertools import islice

import torch
import torch.distributed as dist

from causalgr.data.loader import SequenceLoader
from causalgr.data.prepared import load_prepared
from causalgr.models import build_model
from causalgr.training.config import load_config
from causalgr.training.distributed import process_group
from causalgr.training.step import Optimizer, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="config override, as `causalgr train --set`")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(None, [f"data.path={args.data}", *args.set])
    with process_group(torch.device("cpu"), 600.0) as ranks:
        data = load_prepared(args.data, share=(ranks.rank, ranks.world_size))
        model = build_model(config.model_config_for(data))
        train_model = ranks.wrap(model)
        loader = SequenceLoader(data, "train", batch_size=config.data.batch_size, shuffle=True, seed=0)
        optimizer = Optimizer(model, config.optim, total_steps=len(loader))
        weights = [1.0] * len(data.tasks)
        batches = list(islice(ranks.train_batches(loader), args.warmup + args.steps))
        timings: dict[str, list[float]] = {"sync": [], "no_sync": []}
        for i, (batch, share) in enumerate(batches):
            for mode in ("sync", "no_sync"):
                dist.barrier()  # both ranks start the step together
                start = time.perf_counter()
                if mode == "sync":
                    train_step(train_model, optimizer, batch, weights, share)
                else:
                    with train_model.no_sync():
                        train_step(train_model, optimizer, batch, weights, share)
                if i >= args.warmup:
                    timings[mode].append(time.perf_counter() - start)
        sync, alone = statistics.median(timings["sync"]), statistics.median(timings["no_sync"])
        lines = [None] * ranks.world_size
        dist.all_gather_object(lines, f"rank {ranks.rank}: step {sync * 1e3:.1f} ms with DDP's all-reduce, "
                                      f"{alone * 1e3:.1f} ms without; synchronisation {1 - alone / sync:.1%} of a step "
                                      f"(median of {args.steps} steps, {model.num_parameters():,} parameters)")
        if ranks.is_main:
            print("\n".join(lines))


if __name__ == "__main__":
    main()
