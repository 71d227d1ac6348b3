"""`summed` (DLRMv3-style history + target tokens, target-aware mask) on both backbones: the fast
path equals the materialised reference, padding changes nothing, the causal invariant holds, and
a target sees history j < n and itself but never another target."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from causalgr.models import BACKBONES
from causalgr.models.attention import target_aware_pointwise_attention, target_aware_softmax_attention
from causalgr.models.kernels import BiasTables
from model_helpers import NUM_ITEMS, NUM_VALUES, make_model, pad_batch, random_batch

ENGINES = ["auto", "reference"]
FAST = settings(max_examples=10, deadline=None)


@st.composite
def histories(draw, min_len: int = 1):
    """(lengths, num_tasks, seed, n): a right-padded batch shape and a position n of row 0."""
    lengths = draw(st.lists(st.integers(min_len, 14), min_size=1, max_size=3))
    n = draw(st.integers(0, lengths[0] - 1))
    return lengths, draw(st.integers(1, 3)), draw(st.integers(0, 2**16)), n


def change_from(batch, n: int, seed: int):
    """Row 0 with a_n and every action, action value, item and time after n redrawn."""
    gen = torch.Generator().manual_seed(seed + 1)
    items, labels = batch.items.clone(), batch.labels.clone()
    values, times = batch.action_values.clone(), batch.timestamps.clone()
    length = int(batch.lengths[0])
    labels[0, n:length] = 1.0 - labels[0, n:length]
    values[0, n:length] = values[0, n:length] % (NUM_VALUES - 1) + 1
    items[0, n + 1 : length] = torch.randint(1, NUM_ITEMS + 1, (length - n - 1,), generator=gen)
    times[0, n + 1 : length] += torch.randint(1, 10**6, (length - n - 1,), generator=gen)
    return replace(batch, items=items, labels=labels, action_values=values, timestamps=times)


def logits_and_grads(model, batch):
    """Logits at the valid positions and the gradient of a fixed weighting of them for every parameter."""
    logits = model(batch)[batch.valid_mask]  # [valid, T]
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).reshape(logits.shape)
    return logits, torch.autograd.grad((logits * weights).sum(), list(model.parameters()), allow_unused=True)


@pytest.mark.parametrize("backbone", BACKBONES)
@FAST
@given(case=histories(), extra=st.integers(0, 4))
def test_fast_path_equals_reference(backbone, case, extra):
    """Values and gradients (every parameter, float64) of the fast engine and the materialised
    2N × 2N mask agree at the valid positions of a right-padded batch."""
    lengths, num_tasks, seed, _ = case
    fast = make_model("summed", backbone, num_tasks).double()
    reference = make_model("summed", backbone, num_tasks, attention="reference").double()
    reference.load_state_dict(fast.state_dict())
    batch = pad_batch(random_batch(lengths, num_tasks, seed), extra)
    fast_logits, fast_grads = logits_and_grads(fast, batch)
    reference_logits, reference_grads = logits_and_grads(reference, batch)
    torch.testing.assert_close(fast_logits, reference_logits, atol=1e-10, rtol=1e-8)
    for (name, _), a, b in zip(fast.named_parameters(), fast_grads, reference_grads):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("engine", ENGINES)
@FAST
@given(case=histories(), extra=st.integers(1, 5))
def test_padding_changes_nothing(backbone, engine, case, extra):
    """In float64, so that the rounding of the longer matrix products (~1e-8 in float32) cannot hide
    a leak of padding into a valid position."""
    lengths, num_tasks, seed, _ = case
    model = make_model("summed", backbone, num_tasks, attention=engine).double()
    batch = random_batch(lengths, num_tasks, seed)
    with torch.no_grad():
        out, out_padded = model(batch), model(pad_batch(batch, extra))
    valid = batch.valid_mask
    torch.testing.assert_close(out_padded[:, : batch.items.shape[1]][valid], out[valid], atol=1e-12, rtol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("engine", ENGINES)
@FAST
@given(case=histories())
def test_current_and_future_do_not_reach_position_n(backbone, engine, case):
    """Changing a_n and everything after n leaves the logits at 0..n bit for bit unchanged.

    Tolerance 0, not float noise: a forbidden key gets an exact zero weight (SiLU · 0 mask in
    HSTU, exp(−inf) in softmax), adding exact zeros leaves a float sum unchanged, and every
    operation outside the attention is per token, so any difference at all is a leak.
    """
    lengths, num_tasks, seed, n = case
    model = make_model("summed", backbone, num_tasks, attention=engine)
    batch = random_batch(lengths, num_tasks, seed)
    with torch.no_grad():
        before, after = model(batch), model(change_from(batch, n, seed))
    torch.testing.assert_close(after[0, : n + 1], before[0, : n + 1], atol=0, rtol=0)
    torch.testing.assert_close(after[1:], before[1:], atol=0, rtol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("engine", ENGINES)
@FAST
@given(case=histories(min_len=2))
def test_earlier_actions_reach_position_n(backbone, engine, case):
    lengths, num_tasks, seed, n = case
    n = max(n, 1)
    model = make_model("summed", backbone, num_tasks, attention=engine)
    batch = random_batch(lengths, num_tasks, seed)
    labels, values = batch.labels.clone(), batch.action_values.clone()
    labels[0, n - 1] = 1.0 - labels[0, n - 1]  # only a_{n-1}, the latest action target n may see
    values[0, n - 1] = values[0, n - 1] % (NUM_VALUES - 1) + 1
    with torch.no_grad():
        before = model(batch)[0, n]
        after = model(replace(batch, labels=labels, action_values=values))[0, n]
    assert (after - before).abs().max() > 1e-6, "logits at n ignore a_{n-1}"


def _attention(backbone: str, engine: str, N: int, seed: int):
    """(q, k, v [1, 2, 2N, 8] over [history; targets], f(q, k, v) → out [1, 2, 2N, 8]) of one backbone."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, 2 * N, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    if backbone == "softmax":
        return (q, k, v), lambda q, k, v: target_aware_softmax_attention(q, k, v, engine=engine)
    tables = BiasTables(
        torch.randn(N, 2, generator=gen, dtype=torch.float64), torch.randn(32, 2, generator=gen, dtype=torch.float64),
        torch.cumsum(torch.randint(0, 10**5, (1, N), generator=gen), dim=1),
    )
    return (q, k, v), lambda q, k, v: target_aware_pointwise_attention(q, k, v, tables, engine=engine)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("m", [0, 3, 6])
def test_a_target_sees_no_other_target(backbone, engine, m):
    """Redrawing target m's query, key and value changes target m's output only: no history token
    and no other target sees it."""
    N = 7
    (q, k, v), attend = _attention(backbone, engine, N, seed=m)
    out = attend(q, k, v)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, :, N + m] = torch.randn_like(x[:, :, N + m])
    changed = (attend(q2, k2, v2) - out).abs().amax(dim=(0, 1, 3))  # [2N]
    others = [i for i in range(2 * N) if i != N + m]
    assert changed[others].max() == 0, f"tokens {[i for i in others if changed[i] > 0]} saw target {m}"
    assert changed[N + m] > 1e-3, "a target must see its own token"


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("j", [0, 3, 6])
def test_history_j_reaches_targets_after_j_only(backbone, engine, j):
    """Redrawing history token j's key and value changes history n ≥ j and targets n > j, never target j."""
    N = 7
    (q, k, v), attend = _attention(backbone, engine, N, seed=10 + j)
    out = attend(q, k, v)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, j], v2[:, :, j] = torch.randn_like(k[:, :, j]), torch.randn_like(v[:, :, j])
    changed = (attend(q, k2, v2) - out).abs().amax(dim=(0, 1, 3)) > 0  # [2N]
    n = torch.arange(N)
    torch.testing.assert_close(changed[:N], n >= j)  # history n sees history j ≤ n
    torch.testing.assert_close(changed[N:], n > j)  # target n sees history j < n


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("engine", ENGINES)
def test_encoder_keeps_targets_apart(backbone, engine):
    """Through stacked layers: redrawing target token m's input leaves every history state and every
    other target's state bit for bit unchanged."""
    model = make_model("summed", backbone, 2, attention=engine)
    gen = torch.Generator().manual_seed(0)
    history, targets = torch.randn(2, 9, 16, generator=gen), torch.randn(2, 9, 16, generator=gen)
    timestamps = torch.cumsum(torch.randint(0, 10**5, (2, 9), generator=gen), dim=1)
    m = 4
    moved = targets.clone()
    moved[:, m] = torch.randn(2, 16, generator=gen)
    with torch.no_grad():
        h1, t1 = model.encoder.forward_with_targets(history, targets, timestamps)
        h2, t2 = model.encoder.forward_with_targets(history, moved, timestamps)
    torch.testing.assert_close(h2, h1, atol=0, rtol=0)
    others = [n for n in range(9) if n != m]
    torch.testing.assert_close(t2[:, others], t1[:, others], atol=0, rtol=0)
    assert (t2[:, m] - t1[:, m]).abs().max() > 1e-4
