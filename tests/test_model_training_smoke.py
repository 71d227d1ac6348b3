"""Every formulation × backbone learns: its loss falls on tiny data with a planted action signal."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from causalgr import Batch
from causalgr.models import BACKBONES, FORMULATIONS
from model_helpers import NUM_ITEMS, make_model


def planted_batch(seed: int, B: int = 32, N: int = 24) -> Batch:
    """Task 0 likes even items; task 1 repeats the user's previous task-0 action."""
    gen = torch.Generator().manual_seed(seed)
    items = torch.randint(1, NUM_ITEMS + 1, (B, N), generator=gen)
    like = ((items % 2 == 0).float() * 0.8 + 0.1 > torch.rand(B, N, generator=gen)).float()
    repeat = torch.cat([torch.zeros(B, 1), like[:, :-1]], dim=1)
    labels = torch.stack([like, repeat], dim=-1)  # [B, N, 2]
    timestamps = torch.cumsum(torch.randint(1, 1000, (B, N), generator=gen), dim=1)
    return Batch(items=items, labels=labels, action_values=None, timestamps=timestamps, lengths=torch.full((B,), N))


@pytest.mark.parametrize("formulation,backbone", list(itertools.product(FORMULATIONS, BACKBONES)))
def test_loss_falls(formulation, backbone):
    model = make_model(formulation, backbone, num_tasks=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    eval_batch = planted_batch(seed=999)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = F.binary_cross_entropy_with_logits(model(eval_batch), eval_batch.labels).item()
        model.train()
        return loss

    start = eval_loss()
    for step in range(40):
        batch = planted_batch(seed=step)
        loss = F.binary_cross_entropy_with_logits(model(batch), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = eval_loss()
    assert end < 0.85 * start, f"{formulation}/{backbone}: eval loss {start:.4f} -> {end:.4f}"
