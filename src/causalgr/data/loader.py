"""Prepared sequences → padded `Batch`es, bucketed by length, with the split's loss positions.

What a row holds for each split (every split's events form a contiguous block of a user's
time-ordered sequence: train, then valid, then test):

- `"train"`: the user's training events; loss at every one of them.
- `"valid"`: the training events followed by the validation events; loss at the validation
  events only.
- `"test"`: the full sequence; loss at the test events only. Evaluation is streaming: an
  evaluated position sees its whole history, including the true actions of earlier evaluated
  positions.

Users with no loss position in the split are skipped.

A loader over a rank's share of the data (`load_prepared(share=…)`) draws the same batches as one
over all of it — the order depends on every user's split sizes, which a share knows — and builds
batches of the users it holds (`holds`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from causalgr.batch import Batch
from causalgr.data.prepared import SPLITS, PreparedData


class SequenceLoader:
    """Iterates over `Batch`es of one split of `data`, one row per user.

    Users are sorted by row length and cut into batches of `batch_size`, and each batch is padded
    only to its own longest row, so padding stays small. With `shuffle`, users of equal length
    are permuted and the batch order is shuffled, from `(seed, epoch)`: call `set_epoch` before
    each epoch to get a new, reproducible order (without it every pass repeats epoch 0).
    """

    def __init__(
        self,
        data: PreparedData,
        split: str,
        batch_size: int = 64,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data = data
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

        code = SPLITS[split]
        offsets = data.offsets
        if len(data.split):
            # The prefix rules below rely on splits never going backwards inside a user.
            step_back = np.flatnonzero(np.diff(data.split.astype(np.int16)) < 0) + 1
            if np.any(~np.isin(step_back, offsets)):
                raise ValueError("prepared data has a user whose split goes backwards in time; prepare it again")
        if data.holds_all:
            # Events per user in each split, from cumulative counts at the CSR offsets.
            per_split = []
            for s in range(len(SPLITS)):
                cum = np.concatenate([[0], np.cumsum(data.split == s)])
                per_split.append(cum[offsets[1:]] - cum[offsets[:-1]])
        else:
            per_split = list(data.user_split_events.T)
        self.loss_counts = per_split[code]  # [U]: loss positions of each 0-based user row
        self.row_lengths = sum(per_split[: code + 1])  # [U]: events in each row (the prefix through this split)
        self._users = np.flatnonzero(self.loss_counts > 0)  # 0-based user rows with loss
        self.num_events = int(self.loss_counts.sum())
        self._code = code

    def __len__(self) -> int:
        return -(-len(self._users) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffled order of the next pass (no effect without `shuffle`)."""
        self.epoch = epoch

    def batch_users(self) -> list[np.ndarray]:
        """The 0-based user rows of each batch of the current epoch, in iteration order."""
        users = self._users
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        if rng is not None:
            users = rng.permutation(users)
        # Stable sort: ties keep the (permuted) order, so equal-length users mix across epochs.
        users = users[np.argsort(self.row_lengths[users], kind="stable")]
        batches = [users[i : i + self.batch_size] for i in range(0, len(users), self.batch_size)]
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[Batch]:
        for rows in self.batch_users():
            yield self.make_batch(rows)

    def holds(self, rows: np.ndarray) -> np.ndarray:
        """Which of these 0-based user rows have their events here (all, unless a rank's share)."""
        first = self.data.first_user - 1
        return (rows >= first) & (rows < first + len(self.data.offsets) - 1)

    def make_batch(self, rows: np.ndarray) -> Batch:
        """The padded `Batch` of these 0-based user rows (held here), in this order."""
        data = self.data
        lengths = self.row_lengths[rows]  # [B]
        N = int(lengths.max())
        valid = np.arange(N)[None, :] < lengths[:, None]  # [B, N]
        if not data.holds_all and not self.holds(rows).all():
            raise ValueError(f"rows {rows[~self.holds(rows)].tolist()} are not in this share of the users")
        starts = data.offsets[rows - (data.first_user - 1)]  # [B]
        index = np.where(valid, starts[:, None] + np.arange(N)[None, :], 0)  # [B, N] into events
        items = np.where(valid, data.items[index], 0)
        timestamps = np.where(valid, data.timestamps[index], 0)
        labels = data.labels[index] * valid[:, :, None]  # [B, N, T]
        loss_mask = valid & (data.split[index] == self._code)
        action_values = None
        if data.action_values is not None:
            action_values = torch.from_numpy(np.where(valid, data.action_values[index], 0).astype(np.int64))
        true_probs = None
        if data.true_probs is not None:
            true_probs = torch.from_numpy((data.true_probs[index] * valid[:, :, None]).astype(np.float32))
        return Batch(
            items=torch.from_numpy(items.astype(np.int64)),
            labels=torch.from_numpy(labels.astype(np.float32)),
            action_values=action_values,
            timestamps=torch.from_numpy(timestamps.astype(np.int64)),
            lengths=torch.from_numpy(lengths.astype(np.int64)),
            loss_mask=torch.from_numpy(loss_mask),
            users=torch.from_numpy((rows + 1).astype(np.int64)),
            true_probs=true_probs,
        )


__all__ = ["SequenceLoader"]
