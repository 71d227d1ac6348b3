"""Every formulation × backbone learns from actions: a signal that only earlier actions carry."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from causalgr import Batch
from causalgr.models import BACKBONES, FORMULATIONS
from model_helpers import NUM_ITEMS, make_model

NUM_TASKS = 2


def planted_batch(seed: int, B: int = 32, N: int = 24) -> Batch:
    """Each user has, per task, a fixed propensity of 0.1 or 0.9 (a fair coin) to act.

    Items and timestamps are drawn independently of it, so they say nothing about the labels:
    only the user's earlier actions reveal the propensity. A model that ignores actions can do no
    better than the entropy of the label rate (≈ ln 2); one that reads them nears H(0.1) ≈ 0.33.
    """
    gen = torch.Generator().manual_seed(seed)
    propensity = torch.where(torch.rand(B, 1, NUM_TASKS, generator=gen) < 0.5, 0.1, 0.9)  # [B, 1, T]
    labels = (torch.rand(B, N, NUM_TASKS, generator=gen) < propensity).float()  # [B, N, T]
    items = torch.randint(1, NUM_ITEMS + 1, (B, N), generator=gen)
    timestamps = torch.cumsum(torch.randint(1, 1000, (B, N), generator=gen), dim=1)
    return Batch(items=items, labels=labels, action_values=None, timestamps=timestamps, lengths=torch.full((B,), N))


def action_blind_loss(labels: torch.Tensor) -> float:
    """The log loss of the best prediction made without the actions: each task's positive rate."""
    rate = labels.mean(dim=(0, 1))  # [T]
    return F.binary_cross_entropy(rate.expand_as(labels), labels).item()


@pytest.mark.parametrize("formulation,backbone", list(itertools.product(FORMULATIONS, BACKBONES)))
def test_learns_a_signal_only_actions_carry(formulation, backbone):
    """After 40 small steps the eval loss is well below what any model blind to actions can reach."""
    model = make_model(formulation, backbone, num_tasks=NUM_TASKS).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    eval_batch = planted_batch(seed=999)
    for step in range(40):
        batch = planted_batch(seed=step)
        loss = F.binary_cross_entropy_with_logits(model(batch), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        end = F.binary_cross_entropy_with_logits(model(eval_batch), eval_batch.labels).item()
    blind = action_blind_loss(eval_batch.labels)
    assert end < 0.8 * blind, f"{formulation}/{backbone}: eval loss {end:.4f}, action-blind best {blind:.4f}"
