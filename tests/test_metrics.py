"""Metrics against hand-computed values and brute-force definitions (docs/design.md §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from causalgr import Batch
from causalgr.training.loss import ranking_loss
from causalgr.training.metrics import (
    MetricAccumulator,
    auc,
    gauc,
    json_safe,
    log_loss_from_logits,
    log_loss_from_probs,
    normalized_entropy,
    task_metrics,
)


def test_log_loss_and_ne_by_hand():
    probs = np.array([0.8, 0.3, 0.1, 0.4])
    labels = np.array([1, 0, 0, 0])
    loss = -(math.log(0.8) + math.log(0.7) + math.log(0.9) + math.log(0.6)) / 4
    assert log_loss_from_probs(probs, labels) == pytest.approx(loss)
    assert log_loss_from_logits(np.log(probs / (1 - probs)), labels) == pytest.approx(loss)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # positive rate 1/4
    assert normalized_entropy(loss, labels) == pytest.approx(loss / entropy)
    # Predicting the positive rate everywhere scores NE = 1 exactly.
    constant = log_loss_from_probs(np.full(4, 0.25), labels)
    assert normalized_entropy(constant, labels) == pytest.approx(1.0)
    assert math.isnan(normalized_entropy(0.1, np.ones(3)))


def test_log_loss_from_logits_is_stable_for_large_logits():
    assert log_loss_from_logits(np.array([1000.0, -1000.0]), np.array([1, 0])) == pytest.approx(0.0, abs=1e-12)
    assert log_loss_from_logits(np.array([-1000.0]), np.array([1])) == pytest.approx(1000.0)


def test_auc_with_ties_by_hand():
    # positives {0.4, 0.8}, negatives {0.1, 0.4}: pairs 1 + 0.5 (tie) + 1 + 1 = 3.5 of 4
    assert auc(np.array([0.1, 0.4, 0.4, 0.8]), np.array([0, 1, 0, 1])) == pytest.approx(0.875)
    assert auc(np.array([0.5, 0.5, 0.5]), np.array([1, 0, 1])) == pytest.approx(0.5)
    assert auc(np.array([3.0, 2.0, 1.0]), np.array([0, 0, 1])) == 0.0
    assert math.isnan(auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_gauc_weights_by_events_and_skips_one_class_users():
    users = np.array([7, 7, 7, 3, 3, 3, 3, 9, 9])
    scores = np.array([0.9, 0.2, 0.5, 0.3, 0.3, 0.7, 0.1, 0.4, 0.6])
    labels = np.array([1, 0, 0, 1, 0, 0, 1, 1, 1])
    # user 7: AUC 1 over 3 events; user 3: positives {0.3, 0.1} vs negatives {0.3, 0.7}
    # → (0.5 + 0 + 0 + 0) / 4 = 0.125 over 4 events; user 9 has one class and is skipped.
    assert gauc(scores, labels, users) == pytest.approx((3 * 1.0 + 4 * 0.125) / 7)
    assert math.isnan(gauc(np.array([0.1, 0.2]), np.array([1, 0]), np.array([1, 2])))


def brute_auc(scores, labels) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


cases = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 5), min_size=n, max_size=n),  # few distinct scores → many ties
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.integers(0, 3), min_size=n, max_size=n),
    )
)


@settings(max_examples=150, deadline=None)
@given(cases)
def test_auc_and_gauc_match_brute_force(case):
    scores, labels, users = (np.array(x) for x in case)
    scores = scores.astype(np.float64)
    expected = brute_auc(scores, labels)
    assert (math.isnan(expected) and math.isnan(auc(scores, labels))) or auc(scores, labels) == pytest.approx(expected)
    num = den = 0.0
    for u in np.unique(users):
        a = brute_auc(scores[users == u], labels[users == u])
        if not math.isnan(a):
            num += a * np.sum(users == u)
            den += np.sum(users == u)
    got = gauc(scores, labels, users)
    assert (den == 0 and math.isnan(got)) or got == pytest.approx(num / den)


def make_batch(seed: int, with_probs: bool = True) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    B, N, T = 3, 5, 2
    lengths = torch.tensor([5, 3, 4])
    valid = torch.arange(N)[None, :] < lengths[:, None]
    loss_mask = valid & (torch.rand(B, N, generator=gen) < 0.7)
    return Batch(
        items=torch.randint(1, 9, (B, N), generator=gen) * valid,
        labels=(torch.rand(B, N, T, generator=gen) < 0.4).float() * valid[..., None],
        action_values=None,
        timestamps=torch.zeros(B, N, dtype=torch.long),
        lengths=lengths,
        loss_mask=loss_mask,
        users=torch.tensor([1, 2, 3]) + 10 * seed,
        true_probs=torch.rand(B, N, T, generator=gen) * 0.8 + 0.1 if with_probs else None,
    )


def test_accumulator_streams_and_agrees_with_the_training_loss():
    batches = [make_batch(0), make_batch(1)]
    logits = [torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(10 + i)) for i in range(2)]
    accumulator = MetricAccumulator(("like", "share"))
    for lg, b in zip(logits, batches):
        accumulator.update(lg, b)
    result = accumulator.compute()
    events = sum(int(b.loss_mask.sum()) for b in batches)
    assert result["events"] == accumulator.events == events
    assert result["loss"] == pytest.approx(sum(result["tasks"][t]["logloss"] for t in ("like", "share")))
    # The summed eval loss is the (unweighted) training loss over all evaluated positions at once.
    all_logits = torch.cat(logits)
    all_labels = torch.cat([b.labels for b in batches])
    all_mask = torch.cat([b.loss_mask for b in batches])
    assert result["loss"] == pytest.approx(ranking_loss(all_logits, all_labels, all_mask).item(), rel=1e-5)
    # Per task, from the flat selected positions.
    flat_labels = all_labels[all_mask][:, 1].numpy()
    flat_logits = all_logits[all_mask][:, 1].double().numpy()
    assert result["tasks"]["share"]["auc"] == pytest.approx(auc(flat_logits, flat_labels))
    users = torch.cat([b.users[:, None].expand(3, 5) for b in batches])[all_mask].numpy()
    assert result["tasks"]["share"]["gauc"] == pytest.approx(gauc(flat_logits, flat_labels, users))
    probs = torch.cat([b.true_probs for b in batches])[all_mask][:, 0].double().numpy()
    floor = result["bayes_floor"]["tasks"]["like"]
    assert floor["logloss"] == pytest.approx(log_loss_from_probs(probs, all_labels[all_mask][:, 0].numpy()))
    assert result["bayes_floor"]["loss"] == pytest.approx(sum(m["logloss"] for m in result["bayes_floor"]["tasks"].values()))


def test_positions_merged_from_several_accumulators_give_the_same_metrics():
    """What data-parallel evaluation does: each rank collects its batches, rank 0 merges them."""
    batches = [make_batch(seed) for seed in range(3)]
    logits = [torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(20 + i)) for i in range(3)]
    whole = MetricAccumulator(("like", "share"))
    ranks = [MetricAccumulator(("like", "share")) for _ in range(3)]  # the third collects nothing
    for i, (lg, b) in enumerate(zip(logits, batches)):
        whole.update(lg, b)
        ranks[i % 2].update(lg, b)
    merged = MetricAccumulator(("like", "share"))
    for rank in reversed(ranks):
        merged.add_positions(rank.positions())
    def flat(result: dict, prefix: str = "") -> dict:
        items = [flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(prefix + k, v)] for k, v in result.items()]
        return dict(pair for group in items for pair in group)

    assert flat(merged.compute()) == pytest.approx(flat(whole.compute()), rel=1e-12)
    # A rank without true probabilities takes the floor away, as a batch without them does.
    no_probs = MetricAccumulator(("like", "share"))
    no_probs.update(logits[0], make_batch(0, with_probs=False))
    merged.add_positions(no_probs.positions())
    assert "bayes_floor" not in merged.compute()


def test_no_floor_without_true_probs_everywhere():
    accumulator = MetricAccumulator(("like", "share"))
    accumulator.update(torch.zeros(3, 5, 2), make_batch(0))
    accumulator.update(torch.zeros(3, 5, 2), make_batch(1, with_probs=False))
    assert "bayes_floor" not in accumulator.compute()


def test_json_safe():
    assert json_safe({"a": [math.nan, 1.5, np.float64(math.inf)], "b": np.int64(3)}) == {"a": [None, 1.5, None], "b": 3}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_scores_raise_or_are_reported(bad):
    scores = np.array([0.1, bad, 0.3, 0.7])
    labels = np.array([0, 1, 0, 1])
    users = np.array([1, 1, 2, 2])
    for metric in (lambda: auc(scores, labels), lambda: gauc(scores, labels, users)):
        with pytest.raises(ValueError, match="1 of 4 scores are NaN or infinite"):
            metric()
    reported = task_metrics(scores, labels, users)
    assert reported["non_finite_scores"] == 1
    assert all(math.isnan(reported[k]) for k in ("logloss", "ne", "auc", "gauc"))
