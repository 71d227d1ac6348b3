"""One optimizer step of training — the step `causalgr train` takes and `causalgr bench` times.

AdamW with weight decay on matrices and embedding tables, a linear warm-up then a cosine /
linear / constant schedule, the task-weighted loss of docs/design.md §4, gradient clipping.
The item table may have an optimizer of its own (`optim.item_optimizer`, `ItemOptimizer`):
exact Adagrad at AdamW's current lr, outside the clipping — on a sharded table TorchRec's fused
kernel, which updates the table's rows in the backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ItemOptimizer:
    """The item table's own optimizer: `optimizer` updates `parameters`; a `fused` one (TorchRec's)
    has already updated them in the backward pass, and its `step()` only passes on the lr."""

    optimizer: torch.optim.Optimizer
    parameters: tuple[torch.nn.Parameter, ...]
    fused: bool = False

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


def adagrad_items(table: torch.nn.Module, optim: OptimSection) -> ItemOptimizer:
    """Exact Adagrad on a dense item table: the update a sharded table gets from TorchRec (no weight decay)."""
    parameters = tuple(table.parameters())
    return ItemOptimizer(torch.optim.Adagrad(parameters, lr=optim.lr, eps=optim.eps), parameters)


class Optimizer:
    """AdamW and its lr schedule over `total_steps` steps, as `optim` describes them; the item
    table's parameters go to `items` instead when it is given."""

    def __init__(self, model: torch.nn.Module, optim: OptimSection, total_steps: int, items: ItemOptimizer | None = None):
        own = {id(p) for p in items.parameters} if items else set()
        self.clipped = [p for p in model.parameters() if id(p) not in own]  # what AdamW updates, in model order
        decay = [p for p in self.clipped if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.clipped if p.requires_grad and p.dim() < 2]
        self.items = items
        self.adamw = torch.optim.AdamW(
            [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=optim.lr, betas=optim.betas, eps=optim.eps,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.adamw, lambda step: lr_factor(step, total_steps, optim.warmup, optim.schedule, optim.min_lr_ratio)
        )
        self.grad_clip = optim.grad_clip
        self._set_item_lr()

    @property
    def lr(self) -> float:
        return self.adamw.param_groups[0]["lr"]

    def clip(self) -> None:
        """Clip the gradients AdamW will use to `grad_clip` in global norm (the item table's own
        optimizer is left out: a fused one has no gradient to clip)."""
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.clipped, self.grad_clip)

    def step(self) -> None:
        """Update the weights with the current lr, then move the schedule on by one step."""
        self.adamw.step()
        if self.items and not self.items.fused:
            self.items.optimizer.step()
        self.scheduler.step()
        self._set_item_lr()

    def _set_item_lr(self) -> None:
        """The item table's optimizer follows AdamW's lr; a fused one takes it at its `step()`,
        for the next backward pass."""
        if self.items:
            for group in self.items.optimizer.param_groups:
                group["lr"] = self.lr
            if self.items.fused:
                self.items.optimizer.step()

    def state_dict(self) -> dict:
        """AdamW's and the schedule's state (and a dense item table's optimizer's; a fused one's
        state is sharded like its table and saved with it, `training/sharding.py`)."""
        state = {"optimizer": self.adamw.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.items and not self.items.fused:
            state["item_optimizer"] = self.items.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.adamw.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.items and not self.items.fused:
            self.items.load_state_dict(state["item_optimizer"])
        self._set_item_lr()


def train_step(
    model: torch.nn.Module, optimizer: Optimizer, batch: Batch, task_weights: Sequence[float], loss_scale: float = 1.0
) -> torch.Tensor:
    """Forward, loss, backward, clipping, optimizer and schedule step on `batch`; returns the loss (detached).

    The backward pass runs on `loss_scale` × the loss: under data parallelism, a rank's share of
    the global batch (`distributed.Ranks.train_batches`); the returned loss is not scaled.
    """
    logits = model(batch)  # [B, N, T]
    loss = ranking_loss(logits, batch.labels, batch.loss_mask, task_weights)
    model.zero_grad(set_to_none=True)
    (loss * loss_scale).backward()  # a fused item optimizer updates the table's rows here
    optimizer.clip()
    optimizer.step()
    return loss.detach()
