"""The sharded item table (`model.item_table: sharded`, docs/distributed.md): TorchRec and DCP.

`shard_model` hands the model to TorchRec's `DistributedModelParallel` (DMP): the item table — an
`EmbeddingCollection` (`models/item_tables.py`) — is split row-wise over the ranks, rank r
holding a contiguous block of about (num_items + 1) / P rows, and the rest of the model is
wrapped in DDP as in a dense run. A lookup sends each id to the rank that owns its row and the
embedding back (all-to-all); the backward pass sends the gradients of the rows to their owners,
divided by P like DDP's average, and TorchRec's fused kernel (fbgemm) updates the rows there at
once with exact Adagrad — the only adaptive optimizer its CPU kernels have. So the table's rows
are updated in the backward pass, by their owner only, and are never whole in one process.

Checkpoints of a sharded run go through `torch.distributed.checkpoint` (DCP): every rank writes
its rows and the table optimizer's state for them; the other weights are written once. DCP
records where each block of rows lies, so a checkpoint written by P ranks loads on any number of
ranks, and into a dense table in one process (`load_dense`, for evaluation and serving).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from causalgr.models import RankingModel
from causalgr.models.item_tables import TABLE, quiet_torchrec
from causalgr.training.config import OptimSection
from causalgr.training.distributed import Ranks
from causalgr.training.step import ItemOptimizer

DENSE_KEY = "items.weight"  # the item table in a dense model's state_dict
SHARDED_KEY = f"items.collection.embeddings.{TABLE}.weight"  # the same table in a sharded one


def shard_model(model: RankingModel, ranks: Ranks, optim: OptimSection) -> tuple[nn.Module, ItemOptimizer]:
    """`model` under DMP, its item table row-wise over the ranks of the default process group
    (which may be a group of one), and the table's fused Adagrad. DMP shards `model` in place:
    train through the wrapper, evaluate `model` itself (a lookup is a collective: every rank calls
    it the same number of times)."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.embedding_types import EmbeddingComputeKernel
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan, row_wise
    from torchrec.distributed.types import ShardingEnv, ShardingPlan

    # The lr here is a placeholder: `Optimizer` sets the scheduled one before the first step.
    sharder = EmbeddingCollectionSharder(
        fused_params={"optimizer": EmbOptimType.EXACT_ADAGRAD, "learning_rate": optim.lr, "eps": optim.eps}
    )
    # Row-wise: rank r owns a contiguous block of rows. The fused kernel is the one TorchRec allows
    # for row-wise tables (its plain "dense" kernel is for data-parallel tables only).
    table_plan = construct_module_sharding_plan(
        model.items.collection, {TABLE: row_wise(compute_kernel=EmbeddingComputeKernel.FUSED.value)}, sharder=sharder,
        local_size=ranks.local_world_size, world_size=dist.get_world_size(), device_type=ranks.device.type,
    )
    plan = ShardingPlan({"items.collection": table_plan})
    with torch.random.fork_rng(devices=[]), quiet_torchrec():  # the seeded stream (dropout) stays a dense run's
        wrapped = DistributedModelParallel(
            model, env=ShardingEnv.from_process_group(dist.group.WORLD), device=ranks.device, plan=plan, sharders=[sharder]
        )
    return wrapped, ItemOptimizer(wrapped.fused_optimizer, tuple(model.items.parameters()), fused=True)


def sharded_state(wrapped: nn.Module, items: ItemOptimizer) -> dict:
    """What a sharded run's DCP checkpoint holds: every weight (the table's in blocks of rows, as
    `ShardedTensor`) and the table optimizer's state, sharded the same way."""
    return {"model": wrapped.state_dict(), "item_optimizer": items.state_dict()}


def save_sharded(state: dict, folder: Path, ranks: Ranks) -> None:
    """Write `state` (`sharded_state`) as a DCP checkpoint into `folder`, from every rank at once.

    The ranks write into `folder.tmp`, which rank 0 renames to `folder` when DCP has finished (its
    `.metadata` is written last, after every rank's data): `folder` is never half written. An
    earlier `folder` is replaced — the caller's commit record (`state.pt`) does not name it yet.
    """
    tmp = folder.with_name(folder.name + ".tmp")
    if ranks.is_main:
        for stale in (tmp, folder):
            shutil.rmtree(stale, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
    ranks.barrier()
    with warnings.catch_warnings():  # DCP's "use DTensor instead of ShardedTensor": TorchRec's choice
        warnings.simplefilter("ignore", FutureWarning)
        dcp.save(state, checkpoint_id=tmp)
    ranks.barrier()
    if ranks.is_main:
        os.replace(tmp, folder)
    ranks.barrier()


def load_sharded(state: dict, folder: Path) -> None:
    """Read the DCP checkpoint `folder` into `state` (`sharded_state` of a model sharded over any
    number of ranks), in place; every rank calls this."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        dcp.load(state, checkpoint_id=folder)


def load_dense(model: RankingModel, folder: Path) -> None:
    """Read the weights of the DCP checkpoint `folder` of a sharded run into `model`, a model of
    the same config with a dense item table, in one process: the whole table comes together."""
    state = model.state_dict()
    state[SHARDED_KEY] = state.pop(DENSE_KEY)
    with warnings.catch_warnings():  # "no process group: loading in a single process" is the intent
        warnings.simplefilter("ignore", UserWarning)
        dcp.load({"model": state}, checkpoint_id=folder)  # into the model's own tensors


def remove_other_states(parent: Path, keep: set[str]) -> None:
    """Delete the checkpoint folders under `parent` whose names are not in `keep` (older epochs,
    and what a killed save left behind)."""
    for folder in parent.iterdir() if parent.is_dir() else ():
        if folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)


__all__ = ["load_dense", "load_sharded", "remove_other_states", "save_sharded", "shard_model", "sharded_state"]
