"""The training loss against hand-computed values (docs/design.md §4)."""

from __future__ import annotations

import math

import pytest
import torch

from causalgr.training.loss import ranking_loss


def bce(logit: float, label: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def test_mean_over_masked_positions_of_weighted_task_sum():
    logits = torch.tensor([[[0.5, -1.0], [2.0, 0.0], [3.0, 3.0]]])  # [1, 3, 2]
    labels = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, True, False]])
    weights = [1.0, 0.5]
    expected = ((bce(0.5, 1) + 0.5 * bce(-1.0, 0)) + (bce(2.0, 0) + 0.5 * bce(0.0, 1))) / 2
    assert ranking_loss(logits, labels, mask, weights).item() == pytest.approx(expected, rel=1e-6)
    unweighted = (bce(0.5, 1) + bce(-1.0, 0) + bce(2.0, 0) + bce(0.0, 1)) / 2
    assert ranking_loss(logits, labels, mask).item() == pytest.approx(unweighted, rel=1e-6)


def test_padding_outside_mask_has_no_effect_and_no_gradient():
    logits = torch.randn(2, 4, 3, requires_grad=True)
    labels = (torch.rand(2, 4, 3) < 0.5).float()
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    loss = ranking_loss(logits, labels, mask)
    loss.backward()
    assert torch.all(logits.grad[~mask] == 0)
    changed = logits.detach().clone()
    changed[~mask] = 100.0
    assert ranking_loss(changed, labels, mask).item() == pytest.approx(loss.item())


def test_empty_mask_gives_zero_and_bad_shapes_raise():
    logits = torch.zeros(1, 2, 1, requires_grad=True)
    assert ranking_loss(logits, torch.ones(1, 2, 1), torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0
    with pytest.raises(ValueError, match="task_weights"):
        ranking_loss(logits, torch.ones(1, 2, 1), torch.ones(1, 2, dtype=torch.bool), [1.0, 2.0])
    with pytest.raises(ValueError, match="mask"):
        ranking_loss(logits, torch.ones(1, 2, 1), torch.ones(2, 1, dtype=torch.bool))
