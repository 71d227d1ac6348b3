"""Prepared sequences → padded batches: padding, loss positions per split, bucketing, shuffling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from causalgr.data.loader import SequenceLoader
from causalgr.data.prepared import SPLITS, PreparedData


def make_data(lengths, num_tasks=2, seed=0, values=True, probs=True, fracs=(0.1, 0.1)) -> PreparedData:
    """Prepared data with the given per-user lengths and a per-user temporal split."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    E = int(offsets[-1])
    split = np.zeros(E, dtype=np.int8)
    for u, n in enumerate(lengths):
        n_test, n_valid = int(fracs[1] * n), int(fracs[0] * n)
        lo = offsets[u]
        split[lo + n - n_test - n_valid : lo + n - n_test] = SPLITS["valid"]
        split[lo + n - n_test : lo + n] = SPLITS["test"]
    tasks = [f"t{i}" for i in range(num_tasks)]
    return PreparedData(
        offsets=offsets,
        items=rng.integers(1, 50, size=E).astype(np.int32),
        timestamps=np.arange(E, dtype=np.int64) * 10 + 1,
        labels=rng.integers(0, 2, size=(E, num_tasks)).astype(np.uint8),
        action_values=rng.integers(1, 6, size=E).astype(np.int16) if values else None,
        split=split,
        true_probs=rng.random((E, num_tasks)) if probs else None,
        meta={"tasks": tasks, "num_items": 49, "num_action_values": 6 if values else 0},
    )


def loss_events(data: PreparedData, b) -> np.ndarray:
    """Global event indices of the loss positions of a batch."""
    rows, cols = np.nonzero(b.loss_mask.numpy())
    return data.offsets[b.users.numpy()[rows] - 1] + cols


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_batches_pad_and_mark_the_split(split):
    data = make_data([3, 25, 10, 1, 40, 7, 12, 2])
    loader = SequenceLoader(data, split, batch_size=3)
    code = SPLITS[split]
    seen = []
    for b in loader:
        B, N = b.items.shape
        assert b.items.dtype == torch.long and b.timestamps.dtype == torch.long and b.lengths.dtype == torch.long
        assert b.labels.dtype == torch.float32 and b.action_values.dtype == torch.long
        assert b.loss_mask.dtype == torch.bool and b.true_probs.shape == (B, N, 2)
        assert int(b.lengths.max()) == N, "padded only to the batch's longest row"
        pad = ~b.valid_mask
        assert torch.all(b.items[pad] == 0) and torch.all(b.labels[pad] == 0) and torch.all(b.timestamps[pad] == 0)
        assert torch.all(b.action_values[pad] == 0) and not torch.any(b.loss_mask[pad])
        for r in range(B):
            u = int(b.users[r]) - 1
            lo, hi = data.offsets[u], data.offsets[u + 1]
            n = int(b.lengths[r])
            user_split = data.split[lo:hi]
            # train: the training prefix; valid: through the validation events; test: everything
            assert n == int(np.sum(user_split <= code))
            np.testing.assert_array_equal(b.items[r, :n].numpy(), data.items[lo : lo + n])
            np.testing.assert_array_equal(b.timestamps[r, :n].numpy(), data.timestamps[lo : lo + n])
            np.testing.assert_array_equal(b.labels[r, :n].numpy(), data.labels[lo : lo + n])
            np.testing.assert_array_equal(b.action_values[r, :n].numpy(), data.action_values[lo : lo + n])
            np.testing.assert_allclose(b.true_probs[r, :n].numpy(), data.true_probs[lo : lo + n], rtol=1e-6)
            np.testing.assert_array_equal(b.loss_mask[r, :n].numpy(), user_split[:n] == code)
        seen.append(loss_events(data, b))
    seen = np.sort(np.concatenate(seen))
    np.testing.assert_array_equal(seen, np.flatnonzero(data.split == code), "each loss event exactly once")
    assert loader.num_events == len(seen)


def test_users_without_loss_positions_are_skipped():
    data = make_data([1, 2, 30, 9, 10])  # with 10%/10%, only users of length >= 10 have valid/test events
    for split, users in [("train", [1, 2, 3, 4, 5]), ("valid", [3, 5]), ("test", [3, 5])]:
        loader = SequenceLoader(data, split, batch_size=2)
        got = sorted(int(u) for b in loader for u in b.users)
        assert got == users
        assert len(loader) == -(-len(users) // 2) == len(list(loader))


def test_no_action_values_or_probs():
    data = make_data([4, 6], values=False, probs=False)
    b = next(iter(SequenceLoader(data, "train")))
    assert b.action_values is None and b.true_probs is None


def test_bucketing_reduces_padding():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 200, size=300)
    data = make_data(lengths)
    loader = SequenceLoader(data, "test", batch_size=16)
    bucketed = sum(b.items.numel() for b in loader)
    row_lengths = lengths  # the test split uses full sequences
    order = rng.permutation(len(lengths))
    unbucketed = sum(
        len(chunk) * row_lengths[chunk].max() for chunk in np.array_split(order, range(16, len(order), 16))
    )
    assert bucketed == sum(int(b.lengths.max()) * len(b.lengths) for b in loader)
    assert bucketed < 0.7 * unbucketed
    assert bucketed - int(np.sum(lengths)) < 0.05 * int(np.sum(lengths)), "little padding left"


def test_shuffling_is_reproducible_and_changes_per_epoch():
    data = make_data(np.random.default_rng(2).integers(1, 20, size=100))

    def order(seed, epoch, shuffle=True):
        loader = SequenceLoader(data, "train", batch_size=8, shuffle=shuffle, seed=seed)
        loader.set_epoch(epoch)
        return [b.users.tolist() for b in loader]

    assert order(0, 0) == order(0, 0)
    assert order(0, 1) == order(0, 1)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    assert order(0, 0, shuffle=False) == order(5, 3, shuffle=False)
    for users in (order(0, 0), order(3, 7)):
        assert sorted(u for batch in users for u in batch) == list(range(1, 101))
    loader = SequenceLoader(data, "train", batch_size=8, shuffle=True, seed=4)
    loader.set_epoch(2)
    for b in loader:  # still bucketed: a batch spans a narrow range of lengths
        assert int(b.lengths.max() - b.lengths.min()) <= 2


def test_split_going_backwards_is_rejected():
    data = make_data([5])
    data.split[:] = [0, 2, 1, 0, 0]
    with pytest.raises(ValueError, match="backwards"):
        SequenceLoader(data, "train")


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=25),
    batch_size=st.integers(1, 9),
    split=st.sampled_from(["train", "valid", "test"]),
    fracs=st.sampled_from([(0.1, 0.1), (0.3, 0.2), (0.0, 0.5)]),
    seed=st.integers(0, 3),
)
def test_every_loss_event_once_per_epoch(lengths, batch_size, split, fracs, seed):
    data = make_data(lengths, fracs=fracs, seed=seed)
    loader = SequenceLoader(data, split, batch_size=batch_size, shuffle=True, seed=seed)
    expected = np.flatnonzero(data.split == SPLITS[split])
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader)
        got = np.concatenate([loss_events(data, b) for b in batches]) if batches else np.array([], dtype=np.int64)
        np.testing.assert_array_equal(np.sort(got), expected)
        assert loader.num_events == len(expected)
