"""Ranking metrics of docs/design.md §4: per-task log loss, NE, AUC, GAUC, and the Bayes floor.

Evaluation streams over batches: `MetricAccumulator.update` keeps the evaluated positions'
logits, labels and users (and true probabilities on synthetic data), and `compute` turns them
into metrics with numpy at the end. All functions here take flat arrays over the evaluated
positions of one task.

Undefined values (AUC of a one-class set, NE when every label agrees) are `nan`; `json_safe`
turns them into `null` for JSON files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from causalgr.batch import Batch

_PROB_EPS = 1e-12  # keeps log(p) finite for a probability of exactly 0 or 1


def _finite(scores: np.ndarray) -> np.ndarray:
    """`scores` as float64; `ValueError` counting them if any is NaN or ±inf (no metric of them is meaningful)."""
    scores = np.asarray(scores, dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise ValueError(f"{bad} of {scores.size} scores are NaN or infinite")
    return scores


def log_loss_from_logits(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(`logits`) against 0/1 `labels`, computed stably."""
    logits = _finite(logits)
    labels = np.asarray(labels, dtype=np.float64)
    if logits.size == 0:
        return math.nan
    # −[y log σ(x) + (1 − y) log(1 − σ(x))] = log(1 + e^x) − y·x
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


def log_loss_from_probs(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities `probs` against 0/1 `labels`."""
    probs = np.clip(np.asarray(probs, dtype=np.float64), _PROB_EPS, 1.0 - _PROB_EPS)
    labels = np.asarray(labels, dtype=np.float64)
    if probs.size == 0:
        return math.nan
    return float(-np.mean(labels * np.log(probs) + (1.0 - labels) * np.log1p(-probs)))


def binary_entropy(rate: float) -> float:
    """Entropy (nats) of a Bernoulli(`rate`); 0 at rate 0 or 1."""
    if rate <= 0.0 or rate >= 1.0:
        return 0.0
    return -(rate * math.log(rate) + (1.0 - rate) * math.log(1.0 - rate))


def normalized_entropy(log_loss: float, labels: np.ndarray) -> float:
    """NE as torchrec computes it: log loss over the entropy of the labels' positive rate.

    `nan` when the entropy is 0 (all labels equal): no model can be compared to that baseline.
    """
    labels = np.asarray(labels, dtype=np.float64)
    if labels.size == 0:
        return math.nan
    entropy = binary_entropy(float(labels.mean()))
    return log_loss / entropy if entropy > 0.0 else math.nan


def _tie_averaged_ranks(sorted_scores: np.ndarray, group_starts: np.ndarray | None = None) -> np.ndarray:
    """1-based ranks of already sorted scores, ties sharing the mean of their ranks.

    With `group_starts` (bool, True where a new group begins in the sorted order), ranks restart
    at 1 in each group and ties never span two groups.
    """
    n = len(sorted_scores)
    new_value = np.ones(n, dtype=bool)
    new_value[1:] = sorted_scores[1:] != sorted_scores[:-1]
    if group_starts is not None:
        new_value |= group_starts
    run_id = np.cumsum(new_value) - 1  # tie run of each position
    run_start = np.flatnonzero(new_value)
    run_end = np.append(run_start[1:], n)  # exclusive
    mean_position = (run_start + run_end - 1) / 2.0  # 0-based mean position of each run
    ranks = mean_position[run_id] + 1.0
    if group_starts is not None:
        group_id = np.cumsum(group_starts) - 1
        ranks -= np.flatnonzero(group_starts)[group_id]
    return ranks


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U), ties counting one half; `nan` with one class."""
    scores = _finite(scores)
    labels = np.asarray(labels) > 0.5
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="stable")
    ranks = _tie_averaged_ranks(scores[order])
    rank_sum = ranks[labels[order]].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(scores: np.ndarray, labels: np.ndarray, users: np.ndarray) -> float:
    """Per-user AUC averaged with weights = the user's number of evaluated events.

    Users whose evaluated labels are all one class have no AUC and are skipped (neither their AUC
    nor their weight counts); `nan` when no user has both classes.
    """
    scores = _finite(scores)
    labels = np.asarray(labels) > 0.5
    users = np.asarray(users)
    if scores.size == 0:
        return math.nan
    order = np.lexsort((scores, users))  # by user, then score
    s, y, u = scores[order], labels[order], users[order]
    group_starts = np.ones(len(u), dtype=bool)
    group_starts[1:] = u[1:] != u[:-1]
    group_id = np.cumsum(group_starts) - 1
    ranks = _tie_averaged_ranks(s, group_starts)
    count = np.bincount(group_id).astype(np.float64)
    n_pos = np.bincount(group_id, weights=y.astype(np.float64))
    n_neg = count - n_pos
    pos_rank_sum = np.bincount(group_id, weights=np.where(y, ranks, 0.0))
    both = (n_pos > 0) & (n_neg > 0)
    if not both.any():
        return math.nan
    user_auc = (pos_rank_sum[both] - n_pos[both] * (n_pos[both] + 1) / 2.0) / (n_pos[both] * n_neg[both])
    return float(np.sum(user_auc * count[both]) / np.sum(count[both]))


def task_metrics(logits: np.ndarray, labels: np.ndarray, users: np.ndarray) -> dict[str, float]:
    """Log loss, NE, AUC, GAUC and positive rate of one task from logits. If any logit is NaN or
    infinite, every score metric is `nan` and `non_finite_scores` counts them."""
    bad = int(np.count_nonzero(~np.isfinite(np.asarray(logits, dtype=np.float64))))
    if bad:
        positive_rate = float(np.mean(labels)) if len(labels) else math.nan
        return {"logloss": math.nan, "ne": math.nan, "auc": math.nan, "gauc": math.nan,
                "positive_rate": positive_rate, "non_finite_scores": bad}
    return _ranking_metrics(log_loss_from_logits(logits, labels), logits, labels, users)


def floor_task_metrics(probs: np.ndarray, labels: np.ndarray, users: np.ndarray) -> dict[str, float]:
    """The same metrics for true probabilities (the Bayes floor on synthetic data)."""
    return _ranking_metrics(log_loss_from_probs(probs, labels), probs, labels, users)


def _ranking_metrics(loss: float, scores: np.ndarray, labels: np.ndarray, users: np.ndarray) -> dict[str, float]:
    return {
        "logloss": loss,
        "ne": normalized_entropy(loss, labels),
        "auc": auc(scores, labels),
        "gauc": gauc(scores, labels, users),
        "positive_rate": float(np.mean(labels)) if len(labels) else math.nan,
    }


class MetricAccumulator:
    """Collects the evaluated positions of a stream of batches; `compute` gives the metrics dict.

    The result: `loss` (summed per-task log loss, the headline eval loss), `events` (evaluated
    positions), `tasks` ({task: {logloss, ne, auc, gauc, positive_rate}}), and `bayes_floor`
    (the same from the batches' `true_probs`) when every batch carried them.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = tuple(tasks)
        self._logits: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._users: list[np.ndarray] = []
        self._probs: list[np.ndarray] = []
        self._all_have_probs = True
        self._rows_seen = 0

    def update(self, logits: torch.Tensor, batch: Batch) -> None:
        """Add the positions of `batch` where `batch.loss_mask` is True (every valid one without a mask)."""
        mask = batch.loss_mask if batch.loss_mask is not None else batch.valid_mask  # [B, N]
        mask = mask.to(logits.device)
        self._logits.append(logits.detach()[mask].double().cpu().numpy())  # [M, T]
        self._labels.append(batch.labels.to(logits.device)[mask].cpu().numpy().astype(np.float64))
        if batch.users is not None:
            users = batch.users.to(logits.device)[:, None].expand(mask.shape)[mask]
        else:  # without ids, every row counts as its own user
            row = torch.arange(mask.shape[0], device=logits.device)[:, None].expand(mask.shape)[mask]
            users = -(row + self._rows_seen + 1)
        self._rows_seen += mask.shape[0]
        self._users.append(users.cpu().numpy().astype(np.int64))
        if batch.true_probs is None:
            self._all_have_probs = False
        else:
            self._probs.append(batch.true_probs.to(logits.device)[mask].double().cpu().numpy())

    def positions(self) -> dict[str, np.ndarray | None]:
        """What `update` collected: `logits` and `labels` [M, T], `users` [M], and `probs` [M, T]
        (None unless every batch carried true probabilities). Data-parallel evaluation sends this
        to rank 0 (`distributed.py`)."""
        T = len(self.tasks)
        logits = np.concatenate(self._logits) if self._logits else np.zeros((0, T))
        labels = np.concatenate(self._labels) if self._labels else np.zeros((0, T))
        users = np.concatenate(self._users) if self._users else np.zeros(0, dtype=np.int64)
        probs = None
        if self._all_have_probs:
            probs = np.concatenate(self._probs) if self._probs else np.zeros((0, T))
        return {"logits": logits, "labels": labels, "users": users, "probs": probs}

    def add_positions(self, positions: dict[str, np.ndarray | None]) -> None:
        """Add positions another accumulator collected (its `positions()`), e.g. another rank's.
        User ids must be the loader's: rows without ids would be numbered apart per accumulator."""
        if positions["probs"] is None:
            self._all_have_probs = False
        if len(positions["logits"]) == 0:
            return
        self._logits.append(positions["logits"])
        self._labels.append(positions["labels"])
        self._users.append(positions["users"])
        if positions["probs"] is not None:
            self._probs.append(positions["probs"])

    @property
    def events(self) -> int:
        return sum(len(x) for x in self._logits)

    def compute(self) -> dict:
        positions = self.positions()
        logits, labels, users = positions["logits"], positions["labels"], positions["users"]
        tasks = {task: task_metrics(logits[:, t], labels[:, t], users) for t, task in enumerate(self.tasks)}
        result = {
            "loss": float(sum(m["logloss"] for m in tasks.values())),
            "events": int(len(logits)),
            "tasks": tasks,
        }
        if positions["probs"] is not None and self._probs:
            probs = positions["probs"]
            floor = {task: floor_task_metrics(probs[:, t], labels[:, t], users) for t, task in enumerate(self.tasks)}
            result["bayes_floor"] = {"loss": float(sum(m["logloss"] for m in floor.values())), "tasks": floor}
        return result


def json_safe(value):
    """`value` with every non-finite float replaced by None, so `json.dumps` writes strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
