"""Summary numbers of a prepared dataset, stored as its `meta["stats"]` (docs/design.md §3)."""

from __future__ import annotations

import math

import numpy as np

from causalgr.data.prepared import SPLITS, PreparedData
from causalgr.training.metrics import log_loss_from_probs


def compute_stats(data: PreparedData) -> dict:
    """Summary numbers of a prepared dataset (strict JSON: no NaN).

    Keys: `users`, `items`, `events`, `split_events` ({split: events}), `length` (min, p50, p90,
    p99, max, mean of the per-user sequence length; quantiles are actual lengths, numpy's
    "lower" method), `positive_rate` ({"all"|split: {task: rate}}, null for an empty split), and
    on data with true probabilities `bayes_floor_loss` ({"all"|split: {"loss": the task-summed
    log loss of the true probabilities, "tasks": {task: log loss}}}, the log loss being the one
    evaluation reports, `causalgr.training.metrics.log_loss_from_probs`).
    """
    split_events = np.bincount(data.split, minlength=len(SPLITS)).astype(np.int64)
    lengths = data.lengths
    stats: dict = {
        "users": data.num_users,
        "items": data.num_items,
        "events": len(data.items),
        "split_events": {name: int(split_events[code]) for name, code in SPLITS.items()},
    }
    if len(lengths):
        q = np.quantile(lengths, [0.5, 0.9, 0.99], method="lower")
        stats["length"] = {
            "min": int(lengths.min()), "p50": int(q[0]), "p90": int(q[1]), "p99": int(q[2]),
            "max": int(lengths.max()), "mean": float(lengths.mean()),
        }  # fmt: skip

    # The events of "all" and of each split; an empty selection has no rate and no loss.
    selections = {"all": slice(None), **{name: data.split == code for name, code in SPLITS.items()}}
    counts = {"all": stats["events"], **stats["split_events"]}
    stats["positive_rate"] = {
        key: {task: float(data.labels[rows, t].mean()) if counts[key] else None for t, task in enumerate(data.tasks)}
        for key, rows in selections.items()
    }
    if data.true_probs is not None:
        floor = {}
        for key, rows in selections.items():
            per_task = {
                task: _finite_or_none(log_loss_from_probs(data.true_probs[rows, t], data.labels[rows, t]))
                for t, task in enumerate(data.tasks)
            }
            total = None if None in per_task.values() else float(sum(per_task.values()))
            floor[key] = {"loss": total, "tasks": per_task}
        stats["bayes_floor_loss"] = floor
    return stats


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
