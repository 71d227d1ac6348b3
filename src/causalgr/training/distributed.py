"""Data-parallel training on several processes (docs/design.md §7): what differs between ranks.

A run on P processes ("ranks") is started by `torchrun --nproc-per-node P -m causalgr.cli train …`
or by `launch.py` (`causalgr train --nproc P`). Every rank runs the same `train`; this module
holds the few places where ranks differ, so the trainer reads the same for any P, and with one
process (`Ranks()`) each method is the plain single-process step:

- **Sharding.** Every rank draws the same global batches — the loader's order from
  `(seed, epoch)`, the same for any P — and takes its share of each. A rank that loaded only its
  own users (`load_prepared(share=…)`, consecutive users balanced by events) takes the batch's
  users it holds; a rank that holds every user takes what `split_by_events` deals it: a batch's
  users longest row first, each to the rank with the fewest events so far. Either way each user
  is in exactly one share. `data.batch_size` stays the global batch (users per optimizer step).
- **Loss.** The loss of a step is the mean over all M loss positions of the global batch. A rank
  holding n_r of them scales its own mean by P·n_r/M before the backward pass, so DDP's average
  of the ranks' gradients, (1/P) Σ_r P·n_r/M · ∇mean_r = ∇(Σ_r sum_r / M), is exactly the
  gradient of the global mean. M needs no communication: every rank knows the global batch.
- **Evaluation.** Each rank evaluates its share of every evaluation batch; the collected
  logits, labels, users (and true probabilities) go to rank 0, which computes the metrics once
  over all positions — AUC and GAUC included, so the reduction is exact — and sends the result
  to every rank, so all make the same early-stopping decision.
- **Randomness.** Model initialisation uses the run's seed on every rank (and DDP broadcasts
  rank 0's weights anyway); dropout draws from a stream seeded by `(seed, epoch, rank)` at each
  epoch start, so ranks draw independent masks and a resumed run draws what an uninterrupted
  one would.
- **Faults.** The process group has a timeout (`train.dist_timeout`): a rank left waiting for a
  dead or hung peer fails with an error within that time instead of hanging.

Only rank 0 writes the run folder (the trainer checks `Ranks.is_main`); every rank reads the
checkpoint when resuming.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from causalgr.batch import Batch
from causalgr.data.loader import SequenceLoader
from causalgr.training.metrics import MetricAccumulator

FAILURE_LINGER_SECONDS = 2.0


def split_by_events(events: np.ndarray, parts: int) -> list[np.ndarray]:
    """Deal the rows of one global batch (`events[i]` = events in row i) out to `parts` ranks.

    Rows go in order of decreasing events (ties: the earlier row first), each to the rank with
    the fewest events so far (ties: the lowest rank): the longest-first greedy rule, whose
    busiest rank holds at most 4/3 of the best possible. Returns each rank's row positions,
    ascending; a rank gets no row only when the batch has fewer rows than ranks.
    """
    owner = np.empty(len(events), dtype=np.int64)
    loads = [(0, part) for part in range(parts)]  # a heap of (events so far, rank)
    for i in np.argsort(-np.asarray(events), kind="stable"):
        load, part = heapq.heappop(loads)
        owner[i] = part
        heapq.heappush(loads, (load + int(events[i]), part))
    return [np.flatnonzero(owner == part) for part in range(parts)]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a run: `rank` of `world_size` processes, `local_world_size` of
    them on this machine, computing on `device`. `Ranks()` is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def threads(self, requested: int) -> int:
        """Torch CPU threads for this process: `requested`, or for 0 ("one per core") in a
        multi-process run the machine's cores shared out over its ranks — one each on two
        cores — since several processes with a thread per core each slow every step many times.
        0 in a single process leaves torch's own default."""
        if requested or not self.distributed:
            return requested
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // self.local_world_size)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` under DistributedDataParallel, which averages gradients over the ranks in the
        backward pass (the model itself in a single process). Train through the wrapper; save,
        load and evaluate the model itself."""
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Seed this rank's dropout stream from `(seed, epoch, rank)` (nothing in a single process,
        whose stream runs on from the seed and is checkpointed)."""
        if self.distributed:
            torch.manual_seed(int(np.random.SeedSequence([seed, epoch, self.rank]).generate_state(1)[0]))

    # --- the batches of this rank ------------------------------------------------------------

    def train_batches(self, loader: SequenceLoader) -> Iterator[tuple[Batch, float]]:
        """This rank's part of each global batch of `loader`'s current epoch, with the factor
        P·n_r/M its mean loss is scaled by (module docstring). One item per global batch on
        every rank, so the ranks' steps pair up in DDP's gradient all-reduce: a rank whose share
        is empty (a batch with fewer users than ranks, or none of the users a rank holds) gets a
        placeholder row with no loss position and factor 0, which adds zero gradients."""
        if not self.distributed:
            for batch in loader:
                yield batch, 1.0
            return
        for rows in loader.batch_users():
            mine = self._share(loader, rows)
            if len(mine) == 0:
                yield _placeholder(loader, rows), 0.0
                continue
            positions = int(loader.loss_counts[rows].sum())
            yield loader.make_batch(mine), self.world_size * int(loader.loss_counts[mine].sum()) / positions

    def eval_batches(self, loader: SequenceLoader) -> Iterator[Batch]:
        """This rank's part of each evaluation batch of `loader`. One item per batch on every rank,
        so that a model whose forward pass is a collective (a sharded item table) runs in step: an
        empty part is a placeholder row with no evaluated position."""
        if not self.distributed:
            yield from loader
            return
        for rows in loader.batch_users():
            mine = self._share(loader, rows)
            if len(mine) == 0:
                yield _placeholder(loader, rows)
                continue
            yield loader.make_batch(mine)

    def _share(self, loader: SequenceLoader, rows: np.ndarray) -> np.ndarray:
        """This rank's rows of the global batch `rows`: those it holds, or when it holds every
        user its part by `split_by_events`."""
        if not loader.data.holds_all:
            return rows[loader.holds(rows)]
        return rows[split_by_events(loader.row_lengths[rows], self.world_size)[self.rank]]

    # --- reductions over the ranks -------------------------------------------------------------

    def step_loss(self, loss: float, positions: int) -> tuple[float, int]:
        """The mean loss over the global batch and its number of loss positions, from this rank's
        mean `loss` over its `positions` (all ranks get the same pair)."""
        if not self.distributed:
            return loss, positions
        totals = torch.tensor([loss * positions, positions], dtype=torch.float64, device=self.device)
        dist.all_reduce(totals)
        total_loss, total_positions = totals.tolist()
        return total_loss / max(total_positions, 1.0), int(total_positions)

    def metrics(self, accumulator: MetricAccumulator) -> dict:
        """`accumulator.compute()` over the positions every rank collected: gathered on rank 0,
        computed once there and sent to all ranks."""
        if not self.distributed:
            return accumulator.compute()
        parts = [None] * self.world_size if self.is_main else None
        dist.gather_object(accumulator.positions(), parts, dst=0)
        result = [None]
        if self.is_main:
            merged = MetricAccumulator(accumulator.tasks)
            for part in parts:
                merged.add_positions(part)
            result = [merged.compute()]
        dist.broadcast_object_list(result, src=0)
        return result[0]

    def barrier(self) -> None:
        """Wait until every rank gets here (e.g. until rank 0 has written a file the others read)."""
        if self.distributed:
            dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)


def is_main_process() -> bool:
    """Whether this process is rank 0 of its run (or not part of a multi-process run)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def process_group(device: torch.device, timeout_seconds: float, alone_too: bool = False) -> Iterator[Ranks]:
    """The `Ranks` of this process for one run on `device` ("cpu" or "cuda").

    Under torchrun (`WORLD_SIZE` > 1 in the environment) this joins the process group — gloo on
    CPU; nccl on CUDA, with local rank r on CUDA device r — with collectives that fail after
    `timeout_seconds`, and leaves it afterwards (a group the caller set up is used and left
    alone). Otherwise it is the single process on `device`, in a process group of its own when
    `alone_too` (TorchRec's sharding needs one even for one rank). A rank that fails waits
    `FAILURE_LINGER_SECONDS` before it leaves, so that the launcher names the first rank to fail.
    """
    world_size = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and alone_too and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timedelta(seconds=timeout_seconds))
        try:
            yield Ranks(device=device)
        finally:
            dist.destroy_process_group()
        return
    if world_size == 1:
        yield Ranks(device=device)
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_seconds))
    try:
        yield Ranks(dist.get_rank(), world_size, int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))), device)
    except Exception:
        # A rank dies, and its peers fail at once in their next collective. The launcher reports
        # the first rank it sees end, so a failing rank lingers: the one that failed first is
        # named, not a peer that merely lost it (the launcher stops the lingering ones).
        time.sleep(FAILURE_LINGER_SECONDS)
        raise
    finally:
        if started:
            dist.destroy_process_group()


__all__ = ["Ranks", "is_main_process", "process_group", "split_by_events"]


def _placeholder(loader: SequenceLoader, rows: np.ndarray) -> Batch:
    """A batch of one row this rank holds (the batch's first, or its own first user) with no loss
    position: what a rank with an empty share runs so that its collectives pair up."""
    held = rows[:1] if loader.data.holds_all else np.array([loader.data.first_user - 1])
    batch = loader.make_batch(held)
    batch.loss_mask[:] = False
    return batch
