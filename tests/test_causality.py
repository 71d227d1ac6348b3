"""The causal invariant (DESIGN.md §1) for every formulation × backbone, property-based.

Logits at position n may depend on items and times up to n and on actions before n only.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from causalgr.models import BACKBONES, FORMULATIONS
from model_helpers import NUM_ITEMS, NUM_VALUES, make_model, pad_batch, random_batch

CASES = list(itertools.product(FORMULATIONS, BACKBONES))
ATOL = 1e-5
FAST = settings(max_examples=12, deadline=None)


@st.composite
def histories(draw, min_len: int = 1):
    """(lengths, num_tasks, seed, n): a batch shape and a position n of row 0 to probe."""
    lengths = draw(st.lists(st.integers(min_len, 12), min_size=1, max_size=3))
    num_tasks = draw(st.integers(1, 4))
    n = draw(st.integers(0, lengths[0] - 1))
    return lengths, num_tasks, draw(st.integers(0, 2**16)), n


def change_from(batch, n: int, seed: int):
    """Row 0 with a_n, action values from n on, and items and times after n all redrawn."""
    gen = torch.Generator().manual_seed(seed + 1)
    items, labels = batch.items.clone(), batch.labels.clone()
    values, times = batch.action_values.clone(), batch.timestamps.clone()
    length = int(batch.lengths[0])
    labels[0, n:length] = 1.0 - labels[0, n:length]  # every action from n on flips
    values[0, n:length] = torch.randint(1, NUM_VALUES, (length - n,), generator=gen)
    items[0, n + 1 : length] = torch.randint(1, NUM_ITEMS + 1, (length - n - 1,), generator=gen)
    times[0, n + 1 : length] = times[0, n + 1 : length] + torch.randint(1, 10**6, (length - n - 1,), generator=gen)
    return replace(batch, items=items, labels=labels, action_values=values, timestamps=times)


@pytest.mark.parametrize("formulation,backbone", CASES)
@FAST
@given(case=histories())
def test_future_and_current_action_do_not_reach_position_n(formulation, backbone, case):
    lengths, num_tasks, seed, n = case
    model = make_model(formulation, backbone, num_tasks)
    batch = random_batch(lengths, num_tasks, seed)
    with torch.no_grad():
        before, after = model(batch), model(change_from(batch, n, seed))
    torch.testing.assert_close(after[0, : n + 1], before[0, : n + 1], atol=ATOL, rtol=0)
    torch.testing.assert_close(after[1:], before[1:], atol=ATOL, rtol=0)  # other rows untouched


@pytest.mark.parametrize("formulation,backbone", CASES)
@FAST
@given(case=histories(min_len=2))
def test_earlier_actions_reach_position_n(formulation, backbone, case):
    lengths, num_tasks, seed, n = case
    n = max(n, 1)
    model = make_model(formulation, backbone, num_tasks)
    batch = random_batch(lengths, num_tasks, seed)
    labels, values = batch.labels.clone(), batch.action_values.clone()
    labels[0, :n] = 1.0 - labels[0, :n]
    values[0, :n] = values[0, :n] % (NUM_VALUES - 1) + 1  # a different rating everywhere before n
    with torch.no_grad():
        before = model(batch)[0, n]
        after = model(replace(batch, labels=labels, action_values=values))[0, n]
    # A model that ignores actions computes bit-identical logits; float32 noise is far below 1e-6.
    assert (after - before).abs().max() > 1e-6, "logits at n ignore the actions before n"


@pytest.mark.parametrize("formulation,backbone", CASES)
@FAST
@given(case=histories(), extra=st.integers(1, 6))
def test_padding_changes_nothing(formulation, backbone, case, extra):
    lengths, num_tasks, seed, _ = case
    model = make_model(formulation, backbone, num_tasks)
    batch = random_batch(lengths, num_tasks, seed)
    padded = pad_batch(batch, extra)
    with torch.no_grad():
        out, out_padded = model(batch), model(padded)
    valid = batch.valid_mask
    torch.testing.assert_close(out_padded[:, : batch.items.shape[1]][valid], out[valid], atol=ATOL, rtol=0)


@pytest.mark.parametrize("formulation,backbone", CASES)
@FAST
@given(case=histories())
def test_batch_equals_one_by_one(formulation, backbone, case):
    lengths, num_tasks, seed, _ = case
    model = make_model(formulation, backbone, num_tasks)
    batch = random_batch(lengths, num_tasks, seed)
    with torch.no_grad():
        together = model(batch)
        for b, length in enumerate(lengths):
            row = replace(
                batch,
                items=batch.items[b : b + 1, :length],
                labels=batch.labels[b : b + 1, :length],
                action_values=batch.action_values[b : b + 1, :length],
                timestamps=batch.timestamps[b : b + 1, :length],
                lengths=batch.lengths[b : b + 1],
            )
            torch.testing.assert_close(model(row)[0], together[b, :length], atol=ATOL, rtol=0)


@pytest.mark.parametrize("formulation,backbone", CASES)
@FAST
@given(case=histories())
def test_fast_path_equals_reference(formulation, backbone, case):
    lengths, num_tasks, seed, _ = case
    fast = make_model(formulation, backbone, num_tasks)
    reference = make_model(formulation, backbone, num_tasks, attention="reference")
    reference.load_state_dict(fast.state_dict())
    batch = random_batch(lengths, num_tasks, seed)
    with torch.no_grad():
        valid = batch.valid_mask
        torch.testing.assert_close(fast(batch)[valid], reference(batch)[valid], atol=ATOL, rtol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_mvp_without_pool_readout_still_causal(backbone):
    """The pure per-layer mvp variant (no pooling readout) keeps the invariant on its own."""
    model = make_model("mvp", backbone, 2, mvp_pool_readout=False)
    batch = random_batch([9, 4], 2, seed=3)
    with torch.no_grad():
        before, after = model(batch), model(change_from(batch, 4, seed=3))
    torch.testing.assert_close(after[0, :5], before[0, :5], atol=ATOL, rtol=0)
    assert (after[0, 5:9] - before[0, 5:9]).abs().max() > 1e-6
