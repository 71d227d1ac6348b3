"""Run by `test_sharded.py` under torchrun: every training step of one epoch, taken by a sharded
item table on this rank's share and by a dense one (exact Adagrad on its table, as the sharded
one runs) on the whole global batch, in the same process. Writes, per step, the largest
differences of the logits, the global loss and every weight after the step to OUT/rank-R.json.

    torchrun --nproc-per-node 2 tests/sharded_step.py DATA OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from causalgr.data.loader import SequenceLoader
from causalgr.data.prepared import load_prepared
from causalgr.models import build_model
from causalgr.training.config import load_config
from causalgr.training.distributed import process_group
from causalgr.training.sharding import DENSE_KEY, SHARDED_KEY, shard_model
from causalgr.training.step import Optimizer, adagrad_items, train_step


def main(data_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    settings = [f"data.path={data_dir}", "model.dim=16", "model.heads=2", "model.dropout=0"]
    dense_config = load_config(None, [*settings, "optim.item_optimizer=adagrad"])
    sharded_config = load_config(None, [*settings, "model.item_table=sharded"])
    data = load_prepared(data_dir)
    loader = SequenceLoader(data, "train", batch_size=5, shuffle=True, seed=0)
    loader.set_epoch(1)
    steps = len(loader)
    weights = [1.0] * len(data.tasks)
    with process_group(torch.device("cpu"), 60.0, alone_too=True) as ranks:
        torch.manual_seed(0)
        dense = build_model(dense_config.model_config_for(data))
        torch.manual_seed(0)
        sharded = build_model(sharded_config.model_config_for(data))
        dense_optimizer = Optimizer(dense, dense_config.optim, steps, adagrad_items(dense.items, dense_config.optim))
        wrapped, items = shard_model(sharded, ranks, sharded_config.optim)
        sharded_optimizer = Optimizer(sharded, sharded_config.optim, steps, items)
        shares = list(ranks.train_batches(loader))  # this rank's, as the trainer draws them
        report = []
        for step, (batch, (share, factor)) in enumerate(zip(loader, shares)):
            with torch.no_grad():  # the forward pass alone, before either steps
                logits = sharded(share)
            rows = _rows_of(share, batch)
            with torch.no_grad():
                expected_logits = dense(batch)[rows, : share.items.shape[1]]
            valid = share.valid_mask
            dense_loss = train_step(dense, dense_optimizer, batch, weights).item()
            mine = train_step(wrapped, sharded_optimizer, share, weights, factor).item()
            loss, _ = ranks.step_loss(mine, int(share.loss_mask.sum()))
            report.append({
                "step": step,
                "logits": (logits - expected_logits)[valid].abs().max().item(),
                "loss": abs(loss - dense_loss),
                "dense_loss": dense_loss,
                "weights": _weight_difference(wrapped.state_dict(), dense.state_dict()),
                "table_rows": _table_rows(wrapped.state_dict()),
            })
        Path(out, f"rank-{ranks.rank}.json").write_text(json.dumps(report))


def _rows_of(share, batch) -> list[int]:
    """The rows of the global `batch` that this rank's `share` holds (matched by user id)."""
    position = {int(u): i for i, u in enumerate(batch.users)}
    return [position[int(u)] for u in share.users]


def _weight_difference(sharded: dict, dense: dict) -> float:
    """The largest difference of any weight: this rank's rows of the table, and everything else."""
    largest = 0.0
    for key, value in sharded.items():
        if key == SHARDED_KEY:
            for shard in value.local_shards():
                start, rows = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
                largest = max(largest, (shard.tensor - dense[DENSE_KEY][start : start + rows]).abs().max().item())
        else:
            largest = max(largest, (value - dense[key]).abs().max().item())
    return largest


def _table_rows(sharded: dict) -> int:
    return sum(shard.metadata.shard_sizes[0] for shard in sharded[SHARDED_KEY].local_shards())


if __name__ == "__main__":
    main(*sys.argv[1:])
