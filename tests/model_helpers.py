"""Random models and batches for the model tests."""

from __future__ import annotations

import torch

from causalgr import Batch, ModelConfig, build_model

NUM_ITEMS = 40
NUM_VALUES = 6


def make_model(formulation: str, backbone: str, num_tasks: int, attention: str = "auto", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = ModelConfig(
        formulation=formulation,
        backbone=backbone,
        num_items=NUM_ITEMS,
        tasks=tuple(f"task{t}" for t in range(num_tasks)),
        dim=16,
        layers=2,
        heads=2,
        max_len=32,
        num_action_values=NUM_VALUES,
        attention=attention,
        **overrides,
    )
    return build_model(config).eval()


def random_batch(lengths: list[int], num_tasks: int, seed: int) -> Batch:
    """Right-padded batch of random histories with the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    B, N = len(lengths), max(lengths)
    items = torch.randint(1, NUM_ITEMS + 1, (B, N), generator=gen)
    labels = (torch.rand(B, N, num_tasks, generator=gen) < 0.5).float()
    values = torch.randint(1, NUM_VALUES, (B, N), generator=gen)
    timestamps = torch.cumsum(torch.randint(0, 100_000, (B, N), generator=gen), dim=1)
    lengths_t = torch.tensor(lengths)
    pad = torch.arange(N)[None, :] >= lengths_t[:, None]
    return Batch(
        items=items.masked_fill(pad, 0),
        labels=labels.masked_fill(pad[..., None], 0.0),
        action_values=values.masked_fill(pad, 0),
        timestamps=timestamps.masked_fill(pad, 0),
        lengths=lengths_t,
    )


def pad_batch(batch: Batch, extra: int) -> Batch:
    """The same batch with `extra` more padding positions on the right."""
    pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, extra) if x.dim() == 3 else (0, extra))  # noqa: E731
    return Batch(
        items=pad(batch.items),
        labels=pad(batch.labels),
        action_values=pad(batch.action_values),
        timestamps=pad(batch.timestamps),
        lengths=batch.lengths,
    )
