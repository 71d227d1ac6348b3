"""Streaming evaluation of a model on the validation or test positions (docs/design.md §3–§4)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_model

from causalgr.errors import ConfigError
from causalgr.data.loader import SequenceLoader
from causalgr.data.prepared import PreparedData, load_prepared
from causalgr.models import RankingModel, build_model
from causalgr.training.config import TrainConfig
from causalgr.training.distributed import Ranks
from causalgr.training.rundir import RunDir
from causalgr.training.sharding import load_dense
from causalgr.training.metrics import MetricAccumulator


@torch.no_grad()  # not inference_mode: fbgemm's CPU lookup (a sharded item table) is reached through autograd only
def evaluate(
    model: torch.nn.Module,
    data: PreparedData,
    split: str = "test",
    batch_size: int = 64,
    device: torch.device | str | None = None,
    bayes_floor: bool = True,
    ranks: Ranks | None = None,
) -> dict:
    """Metrics of `model` on the evaluated positions of `split` ("valid" or "test").

    Each user's row holds the full history up to the end of the split, so an evaluated position
    sees every earlier event, including the true actions of earlier evaluated positions. Returns
    `loss` (summed per-task log loss), `events`, `tasks.<task>.{logloss, ne, auc, gauc,
    positive_rate}`, and on synthetic data (with `bayes_floor`) the same for the true
    probabilities under `bayes_floor`. Leaves the model in eval mode.

    In a multi-process run (`ranks`), every rank calls this: each evaluates its share of the
    users, and all get the metrics over every position (`distributed.py`).
    """
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    tasks = data.tasks
    accumulator = MetricAccumulator(tasks)
    ranks = ranks or Ranks()
    for batch in ranks.eval_batches(SequenceLoader(data, split, batch_size=batch_size)):
        if not bayes_floor:
            batch.true_probs = None
        batch = batch.to(device)
        accumulator.update(model(batch).float(), batch)  # logits [B, N, T]
    result = ranks.metrics(accumulator)
    if not bayes_floor:
        result.pop("bayes_floor", None)
    return result


def resolve_device(name: str) -> torch.device:
    """`"auto"` is cuda when available, else cpu; anything else is passed to `torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config: train.device: unknown device {name!r}") from None


def load_run(run: RunDir | Path | str, weights: str = "best", device: str = "auto") -> tuple[RankingModel, TrainConfig]:
    """The model of a training run folder with its `best` or `latest` weights, and the run's config.
    A sharded item table comes back whole, as a dense one, in this one process."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    run.require_trained(weights)
    config = run.read_model_config()
    model = build_model(dataclasses.replace(config, item_table="dense"))
    if config.item_table == "sharded":
        load_dense(model, run.weights(weights))
    else:
        load_model(model, str(run.weights_file(weights)), device="cpu")
    return model.to(resolve_device(device)), run.read_config()


def evaluate_run(run_dir: Path | str, split: str = "test", batch_size: int | None = None, device: str = "auto") -> dict:
    """`evaluate` on the best checkpoint of a training run folder."""
    if split not in ("valid", "test"):
        raise ConfigError(f"evaluate: --split must be 'valid' or 'test', got {split!r}")
    model, config = load_run(run_dir, device=device)
    return evaluate(model, load_prepared(config.data.path), split, batch_size or config.data.eval_batch_size)

