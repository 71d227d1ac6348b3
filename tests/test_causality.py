"""The causal invariant (docs/design.md §1) for every formulation × backbone × engine, property-based.

Logits at position n may depend on the items and timestamps at positions ≤ n and on the actions
(task labels and action values) at positions < n only. Each input is changed on its own, so a
model that reads one of them wrongly, or ignores one of them, fails here; every test runs with
and without action values.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from causalgr.models import BACKBONES, FORMULATIONS
from model_helpers import NUM_VALUES, later_changes, make_model, other_value, pad_batch, random_batch, row, shared_model

ENGINES = ("auto", "reference")  # the fast engine and the readable one; both exist on every backbone
CASES = list(itertools.product(FORMULATIONS, BACKBONES, ENGINES))
WITH_VALUES = pytest.mark.parametrize("with_values", [True, False], ids=["values", "no-values"])
ATOL = 1e-5  # fast engines reorder float32 sums; a real dependence moves logits far more
CHANGED = 1e-6  # a model that ignores an input computes bit-identical logits
FAST = settings(max_examples=8, deadline=None)


@st.composite
def histories(draw, min_len: int = 1):
    """(lengths, num_tasks, seed, n): a batch shape and a position n of row 0 to probe."""
    lengths = draw(st.lists(st.integers(min_len, 12), min_size=1, max_size=3))
    num_tasks = draw(st.integers(1, 4))
    n = draw(st.integers(0, lengths[0] - 1))
    return lengths, num_tasks, draw(st.integers(0, 2**16)), n


def model_and_batch(formulation, backbone, engine, with_values, lengths, num_tasks, seed, **overrides):
    """A random model and batch; the model has an action-value embedding only if the data has values."""
    model = shared_model(
        formulation, backbone, num_tasks, engine, num_action_values=NUM_VALUES if with_values else 0, **overrides
    )
    return model, random_batch(lengths, num_tasks, seed, with_values)


def assert_same(before: torch.Tensor, after: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(after, before, atol=ATOL, rtol=0, msg=lambda detail: f"{what}\n{detail}")


def assert_moves(before: torch.Tensor, after: torch.Tensor, what: str) -> None:
    assert (after - before).abs().max() > CHANGED, f"{what} left the logits unchanged"


@pytest.mark.parametrize("formulation,backbone,engine", CASES)
@WITH_VALUES
@FAST
@given(case=histories())
def test_later_inputs_do_not_reach_position_n(formulation, backbone, engine, with_values, case):
    """Changing only a_n.. (labels), only the action values from n on, only the items after n or
    only the timestamps after n leaves the logits at positions ≤ n, and of every other row, unchanged.

    Each change does move the logits after n, so the check cannot pass by changing nothing.
    """
    lengths, num_tasks, seed, n = case
    model, batch = model_and_batch(formulation, backbone, engine, with_values, lengths, num_tasks, seed)
    with torch.no_grad():
        before = model(batch)
        for what, changed in later_changes(batch, n, seed).items():
            after = model(changed)
            assert_same(before[0, : n + 1], after[0, : n + 1], f"changing the {what} reached positions <= {n}")
            assert_same(before[1:], after[1:], f"changing the {what} of row 0 reached other rows")
            if n + 1 < lengths[0]:
                assert_moves(before[0, n + 1 : lengths[0]], after[0, n + 1 : lengths[0]], f"changing the {what}")


@st.composite
def earlier_position(draw):
    """(lengths, num_tasks, seed, j, task): row 0 has events after position j; `task` is one of its labels."""
    lengths, num_tasks, seed, _ = draw(histories(min_len=2))
    return lengths, num_tasks, seed, draw(st.integers(0, lengths[0] - 2)), draw(st.integers(0, num_tasks - 1))


@pytest.mark.parametrize("formulation,backbone,engine", CASES)
@WITH_VALUES
@FAST
@given(case=earlier_position())
def test_earlier_label_reaches_later_positions(formulation, backbone, engine, with_values, case):
    """Flipping one task bit of a_j, nothing else, changes the logits at every position after j."""
    lengths, num_tasks, seed, j, task = case
    model, batch = model_and_batch(formulation, backbone, engine, with_values, lengths, num_tasks, seed)
    labels = batch.labels.clone()
    labels[0, j, task] = 1.0 - labels[0, j, task]
    with torch.no_grad():
        before, after = model(batch)[0], model(replace(batch, labels=labels))[0]
    for n in range(j + 1, lengths[0]):
        assert_moves(before[n], after[n], f"flipping label {task} at position {j} (logits at {n})")


@pytest.mark.parametrize("formulation,backbone,engine", CASES)
@FAST
@given(case=earlier_position())
def test_earlier_action_value_reaches_later_positions(formulation, backbone, engine, case):
    """Changing the action value at j, nothing else, changes the logits at every position after j."""
    lengths, num_tasks, seed, j, _ = case
    model, batch = model_and_batch(formulation, backbone, engine, True, lengths, num_tasks, seed)
    values = batch.action_values.clone()
    values[0, j] = other_value(values[0, j])
    with torch.no_grad():
        before, after = model(batch)[0], model(replace(batch, action_values=values))[0]
    for n in range(j + 1, lengths[0]):
        assert_moves(before[n], after[n], f"changing the action value at position {j} (logits at {n})")


@pytest.mark.parametrize("formulation,backbone", list(itertools.product(FORMULATIONS, BACKBONES)))
@FAST
@given(case=histories(), with_values=st.booleans(), extra=st.integers(1, 6))
def test_padding_changes_nothing(formulation, backbone, case, with_values, extra):
    """More padding on the right leaves the logits at valid positions unchanged."""
    lengths, num_tasks, seed, _ = case
    model, batch = model_and_batch(formulation, backbone, "auto", with_values, lengths, num_tasks, seed)
    with torch.no_grad():
        out, out_padded = model(batch), model(pad_batch(batch, extra))
    valid = batch.valid_mask
    assert_same(
        out[valid], out_padded[:, : batch.items.shape[1]][valid], f"{extra} more padding positions changed the logits"
    )


@pytest.mark.parametrize("formulation,backbone", list(itertools.product(FORMULATIONS, BACKBONES)))
@FAST
@given(case=histories(), with_values=st.booleans())
def test_batch_equals_one_by_one(formulation, backbone, case, with_values):
    """Each row's logits are the same in a batch as alone: rows never see each other."""
    lengths, num_tasks, seed, _ = case
    model, batch = model_and_batch(formulation, backbone, "auto", with_values, lengths, num_tasks, seed)
    with torch.no_grad():
        together = model(batch)
        for b, length in enumerate(lengths):
            assert_same(
                together[b, :length], model(row(batch, b))[0], f"row {b} alone differs from row {b} in the batch"
            )


@pytest.mark.parametrize("formulation,backbone", list(itertools.product(FORMULATIONS, BACKBONES)))
@FAST
@given(case=histories(), with_values=st.booleans())
def test_fast_path_equals_reference(formulation, backbone, case, with_values):
    """The fast engine computes the reference engine's logits (same weights)."""
    lengths, num_tasks, seed, _ = case
    fast, batch = model_and_batch(formulation, backbone, "auto", with_values, lengths, num_tasks, seed)
    reference = make_model(
        formulation, backbone, num_tasks, "reference", num_action_values=fast.config.num_action_values
    )
    reference.load_state_dict(fast.state_dict())
    with torch.no_grad():
        valid = batch.valid_mask
        assert_same(reference(batch)[valid], fast(batch)[valid], "the fast engine differs from the reference")


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("engine", ENGINES)
def test_mvp_without_pool_readout_still_causal(backbone, engine):
    """The pure per-layer mvp variant (no pooling readout) keeps the invariant on its own."""
    model, batch = model_and_batch("mvp", backbone, engine, True, [9, 4], 2, seed=3, mvp_pool_readout=False)
    with torch.no_grad():
        before = model(batch)
        for what, changed in later_changes(batch, 4, seed=3).items():
            after = model(changed)
            assert_same(before[0, :5], after[0, :5], f"changing the {what} reached positions <= 4")
            assert_moves(before[0, 5:9], after[0, 5:9], f"changing the {what}")


MVP_BOUND = 1e-6  # mvp's fast correction adds α_nn·u_n and subtracts it again: float32 rounding, ~1e-7


@pytest.mark.parametrize("formulation,backbone,engine", CASES)
@settings(max_examples=4, deadline=None)
@given(case=histories())
def test_exactness_of_the_invariant(formulation, backbone, engine, case):
    """Bit-exact for every formulation and engine but mvp's fast path, whose add-then-subtract
    diagonal correction is held to its documented bound (docs/design.md §1.6)."""
    lengths, num_tasks, seed, n = case
    model, batch = model_and_batch(formulation, backbone, engine, True, lengths, num_tasks, seed)
    with torch.no_grad():
        before = model(batch)[0, : n + 1]
        worst = max((model(changed)[0, : n + 1] - before).abs().max().item() for changed in later_changes(batch, n, seed).values())
    bound = MVP_BOUND if formulation == "mvp" and engine != "reference" else 0.0
    assert worst <= bound, f"logits at ≤ {n} moved by {worst:.2e} (allowed {bound:.0e})"
