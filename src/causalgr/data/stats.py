"""Summary numbers of a prepared dataset, stored as its `meta["stats"]` (docs/design.md §3)."""

from __future__ import annotations

import math

import numpy as np

from causalgr.data.prepared import SPLITS, PreparedData
from causalgr.training.metrics import _PROB_EPS

# The Bayes floor's log-loss terms are summed in blocks of this many events in file order, and
# the block sums exactly: the figure then does not depend on how the events arrived (all at
# once, or chunk by chunk while a large dataset streams to disk).
_FLOOR_BLOCK = 1 << 16


def compute_stats(data: PreparedData) -> dict:
    """Summary numbers of a prepared dataset (strict JSON: no NaN).

    Keys: `users`, `items`, `events`, `split_events` ({split: events}), `length` (min, p50, p90,
    p99, max, mean of the per-user sequence length; quantiles are actual lengths, numpy's
    "lower" method), `positive_rate` ({"all"|split: {task: rate}}, null for an empty split), and
    on data with true probabilities `bayes_floor_loss` ({"all"|split: {"loss": the task-summed
    log loss of the true probabilities, "tasks": {task: log loss}}}, the log loss being the one
    evaluation reports, `causalgr.training.metrics.log_loss_from_probs`, summed as
    `_FLOOR_BLOCK` says).
    """
    stats = StatsAccumulator(data.tasks, with_probs=data.true_probs is not None)
    stats.add(data.split, data.labels, data.true_probs)
    return stats.result(data.lengths, data.num_items)


class StatsAccumulator:
    """`compute_stats` over events that arrive in chunks, in file order: the same numbers, bit
    for bit, whatever the chunks."""

    def __init__(self, tasks: tuple[str, ...], with_probs: bool) -> None:
        self.tasks = tuple(tasks)
        self.keys = ["all", *SPLITS]
        self.events = dict.fromkeys(self.keys, 0)
        self.positives = {key: np.zeros(len(tasks), dtype=np.int64) for key in self.keys}
        self.floor = {key: [_BlockSum() for _ in tasks] for key in self.keys} if with_probs else None

    def add(self, split: np.ndarray, labels: np.ndarray, true_probs: np.ndarray | None) -> None:
        """The next events in file order: `split` [E], `labels` [E, T], `true_probs` [E, T] or None."""
        for key in self.keys:
            rows = slice(None) if key == "all" else split == SPLITS[key]
            chosen = labels[rows]  # [e, T]
            self.events[key] += len(chosen)
            self.positives[key] += chosen.sum(axis=0, dtype=np.int64)
            if self.floor is not None:
                probs = np.clip(true_probs[rows].astype(np.float64), _PROB_EPS, 1.0 - _PROB_EPS)  # [e, T]
                terms = np.where(chosen == 1, np.log(probs), np.log1p(-probs))  # [e, T]
                for t, block_sum in enumerate(self.floor[key]):
                    block_sum.add(terms[:, t])

    def result(self, lengths: np.ndarray, num_items: int) -> dict:
        """The stats dict, given every user's sequence length (in user order) and the item count."""
        stats: dict = {
            "users": len(lengths),
            "items": num_items,
            "events": self.events["all"],
            "split_events": {name: self.events[name] for name in SPLITS},
        }
        if len(lengths):
            q = np.quantile(lengths, [0.5, 0.9, 0.99], method="lower")
            stats["length"] = {
                "min": int(lengths.min()), "p50": int(q[0]), "p90": int(q[1]), "p99": int(q[2]),
                "max": int(lengths.max()), "mean": float(lengths.mean()),
            }  # fmt: skip
        # An empty selection has no rate and no loss.
        stats["positive_rate"] = {
            key: {
                task: int(self.positives[key][t]) / self.events[key] if self.events[key] else None
                for t, task in enumerate(self.tasks)
            }
            for key in self.keys
        }
        if self.floor is not None:
            floor = {}
            for key in self.keys:
                count = self.events[key]
                per_task = {
                    task: _finite_or_none(-block_sum.total() / count) if count else None
                    for task, block_sum in zip(self.tasks, self.floor[key])
                }
                total = None if None in per_task.values() else float(sum(per_task.values()))
                floor[key] = {"loss": total, "tasks": per_task}
            stats["bayes_floor_loss"] = floor
        return stats


class _BlockSum:
    """The sum of a stream of float64 terms: numpy sums of consecutive blocks of `_FLOOR_BLOCK`
    terms, then an exact sum (`math.fsum`) of the block sums — the same for any chunking."""

    def __init__(self) -> None:
        self.blocks: list[float] = []
        self.tail = np.zeros(0, dtype=np.float64)

    def add(self, terms: np.ndarray) -> None:
        terms = np.concatenate([self.tail, terms])
        full = len(terms) // _FLOOR_BLOCK * _FLOOR_BLOCK
        self.blocks += [float(np.sum(terms[i : i + _FLOOR_BLOCK])) for i in range(0, full, _FLOOR_BLOCK)]
        self.tail = terms[full:]

    def total(self) -> float:
        return math.fsum([*self.blocks, float(np.sum(self.tail))])


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
