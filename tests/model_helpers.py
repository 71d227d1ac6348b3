"""Random models and batches for the model tests."""

from __future__ import annotations

import functools
from dataclasses import replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from causalgr import Batch, ModelConfig, build_model

NUM_ITEMS = 40
NUM_VALUES = 6  # action values 1..5, 0 = none


def make_model(
    formulation: str,
    backbone: str,
    num_tasks: int,
    attention: str = "auto",
    seed: int = 0,
    num_action_values: int = NUM_VALUES,
    layers: int = 2,
    max_len: int = 32,
    **overrides,
):
    """A small untrained model in eval mode whose every input visibly reaches its logits.

    Parameters that start at zero (time and position biases, the action base vector, null and
    start slots) get small random values: at zero they would hide their input, and a test that
    changes that input would pass whether or not the model keeps the causal invariant. The task
    vectors of b(a) start 50× smaller than the action-value embeddings; they are drawn at the
    same scale, so that one flipped label moves the logits by far more than float noise.
    """
    torch.manual_seed(seed)
    config = ModelConfig(
        formulation=formulation,
        backbone=backbone,
        num_items=NUM_ITEMS,
        tasks=tuple(f"task{t}" for t in range(num_tasks)),
        dim=16,
        layers=layers,
        heads=2,
        max_len=max_len,
        num_action_values=num_action_values,
        attention=attention,
        **overrides,
    )
    model = build_model(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(std=0.1)
        model.actions.task_vectors.normal_()
    return model.eval()


@functools.cache
def shared_model(formulation: str, backbone: str, num_tasks: int, attention: str = "auto", **kwargs):
    """`make_model`, built once per argument set: for tests that only read the model, never train it."""
    return make_model(formulation, backbone, num_tasks, attention, **kwargs)


def random_batch(lengths: list[int], num_tasks: int, seed: int, with_values: bool = True) -> Batch:
    """Right-padded batch of random histories with the given lengths; no action values unless `with_values`."""
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
        action_values=values.masked_fill(pad, 0) if with_values else None,
        timestamps=timestamps.masked_fill(pad, 0),
        lengths=lengths_t,
    )


def pad_batch(batch: Batch, extra: int) -> Batch:
    """The same batch with `extra` more padding positions on the right."""

    def pad(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else torch.nn.functional.pad(x, (0, 0, 0, extra) if x.dim() == 3 else (0, extra))

    return Batch(
        items=pad(batch.items),
        labels=pad(batch.labels),
        action_values=pad(batch.action_values),
        timestamps=pad(batch.timestamps),
        lengths=batch.lengths,
    )


def row(batch: Batch, b: int) -> Batch:
    """Row b of the batch alone, without its padding."""
    length = int(batch.lengths[b])

    def cut(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x[b : b + 1, :length]

    return replace(
        batch,
        items=cut(batch.items),
        labels=cut(batch.labels),
        action_values=cut(batch.action_values),
        timestamps=cut(batch.timestamps),
        lengths=batch.lengths[b : b + 1],
    )


def later_changes(batch: Batch, n: int, seed: int) -> dict[str, Batch]:
    """Copies of the batch, each with ONE input of row 0 changed at the positions n may not see.

    Keys name what changed: the labels a_n.. (every task bit flipped), the action values from n on
    (each a different value), the items after n (each a different item), the timestamps after n
    (every later time moved ~1 year on, so the gap into n + 1 lands in another time bucket).
    """
    gen = torch.Generator().manual_seed(seed + 1)
    length = int(batch.lengths[0])
    labels, items, times = batch.labels.clone(), batch.items.clone(), batch.timestamps.clone()
    labels[0, n:length] = 1.0 - labels[0, n:length]
    items[0, n + 1 : length] = items[0, n + 1 : length] % NUM_ITEMS + 1
    times[0, n + 1 : length] += 2**25 + torch.cumsum(torch.randint(0, 10**6, (length - n - 1,), generator=gen), dim=0)
    changes = {
        f"labels from position {n} on": replace(batch, labels=labels),
        f"items after position {n}": replace(batch, items=items),
        f"timestamps after position {n}": replace(batch, timestamps=times),
    }
    if batch.action_values is not None:
        values = batch.action_values.clone()
        values[0, n:length] = other_value(values[0, n:length])
        changes[f"action values from position {n} on"] = replace(batch, action_values=values)
    return changes


def other_value(values: torch.Tensor) -> torch.Tensor:
    """A different action value in 1..NUM_VALUES - 1 for each of `values`."""
    return values % (NUM_VALUES - 1) + 1


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out
