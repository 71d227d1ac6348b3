"""One optimizer step of training — the step `causalgr train` takes and `causalgr bench` times.

AdamW with weight decay on matrices and embedding tables, a linear warm-up then a cosine /
linear / constant schedule, the task-weighted loss of docs/design.md §4, gradient clipping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from causalgr.batch import Batch
from causalgr.training.config import OptimSection
from causalgr.training.loss import ranking_loss


def lr_factor(step: int, total_steps: int, warmup: float, schedule: str, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warm-up, then decay."""
    warmup_steps = math.ceil(warmup * total_steps)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)


class Optimizer:
    """AdamW and its lr schedule over `total_steps` steps, as `optim` describes them."""

    def __init__(self, model: torch.nn.Module, optim: OptimSection, total_steps: int):
        decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        self.adamw = torch.optim.AdamW(
            [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=optim.lr, betas=optim.betas, eps=optim.eps,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.adamw, lambda step: lr_factor(step, total_steps, optim.warmup, optim.schedule, optim.min_lr_ratio)
        )
        self.grad_clip = optim.grad_clip

    @property
    def lr(self) -> float:
        return self.adamw.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"optimizer": self.adamw.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.adamw.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def train_step(
    model: torch.nn.Module, optimizer: Optimizer, batch: Batch, task_weights: Sequence[float], loss_scale: float = 1.0
) -> torch.Tensor:
    """Forward, loss, backward, clipping, optimizer and schedule step on `batch`; returns the loss (detached).

    The backward pass runs on `loss_scale` × the loss: under data parallelism, a rank's share of
    the global batch (`distributed.Ranks.train_batches`); the returned loss is not scaled.
    """
    logits = model(batch)  # [B, N, T]
    loss = ranking_loss(logits, batch.labels, batch.loss_mask, task_weights)
    optimizer.adamw.zero_grad(set_to_none=True)
    (loss * loss_scale).backward()
    if optimizer.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), optimizer.grad_clip)
    optimizer.adamw.step()
    optimizer.scheduler.step()
    return loss.detach()
