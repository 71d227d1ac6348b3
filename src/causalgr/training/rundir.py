"""`RunDir`: the folder one training run writes and everything else reads (docs/design.md §5).

    config.yaml                  the resolved `TrainConfig`
    model.json                   the full `ModelConfig`: the model can be rebuilt without the data
    item_ids.parquet             the prepared data's item ids (dense ↔ original): serving needs the run alone
    metrics.jsonl                one record per finished epoch
    metrics.json                 when done: best epoch's validation metrics, test metrics, timings
    checkpoint/state.pt          weights, optimizer, scheduler, RNG states, counters (resume reads this alone)
    checkpoint/model.safetensors weights at the end of the last finished epoch
    checkpoint/best.safetensors  weights of the best validation epoch
    checkpoint/sharded/epoch-NNNN/  a sharded item table's run (`model.item_table: sharded`) instead
                                 of the two weight files: a DCP checkpoint of every weight and the
                                 table optimizer's state after epoch NNNN, one for the last epoch
                                 and one for the best; state.pt names them by its epoch counters
    curves.png                   training and validation loss per epoch
    tensorboard/                 TensorBoard event files: per-step and per-epoch curves (`progress.py`)

Every file but the event files is written atomically: a temporary name, then a rename (a DCP
folder as a whole).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from causalgr.data.errors import DataError
from causalgr.data.prepared import ITEM_IDS
from causalgr.models import ModelConfig
from causalgr.training.config import TrainConfig, read_config_file, to_yaml, validate_config
from causalgr.training.metrics import json_safe


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` then rename `tmp` to `path`: a reader never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __init__(self, path: Path | str) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def model_file(self) -> Path:
        return self.path / "model.json"

    @property
    def item_ids_file(self) -> Path:
        return self.path / ITEM_IDS

    @property
    def history_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def state_file(self) -> Path:
        return self.checkpoint / "state.pt"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def curves_file(self) -> Path:
        return self.path / "curves.png"

    def weights_file(self, which: str = "best") -> Path:
        """`best` (best validation epoch) or `latest` (last finished epoch) weights."""
        if which not in ("best", "latest"):
            raise ValueError(f"weights must be 'best' or 'latest', got {which!r}")
        return self.checkpoint / ("best.safetensors" if which == "best" else "model.safetensors")

    @property
    def sharded_states(self) -> Path:
        return self.checkpoint / "sharded"

    def sharded_state(self, epoch: int) -> Path:
        """The DCP checkpoint folder of a sharded run after `epoch` (`training/sharding.py`)."""
        return self.sharded_states / f"epoch-{epoch:04d}"

    def weights(self, which: str = "best") -> Path:
        """Where the `best` or `latest` weights are: `weights_file(which)`, or in a sharded run the
        DCP folder of that epoch, as `state.pt` (the checkpoint's commit record) names it."""
        file = self.weights_file(which)
        if file.is_file() or not self.state_file.is_file():
            return file
        state = torch.load(self.state_file, map_location="cpu", weights_only=False)
        if not state.get("sharded"):
            return file
        return self.sharded_state(state["best_epoch" if which == "best" else "epoch"])

    # --- state of the run -----------------------------------------------------------------------

    def is_started(self) -> bool:
        return self.state_file.is_file() or self.metrics_file.is_file()

    def is_finished(self) -> bool:
        return self.metrics_file.is_file()

    def create(self) -> None:
        self.checkpoint.mkdir(parents=True, exist_ok=True)

    # --- reading and writing ---------------------------------------------------------------------

    def read_config(self) -> TrainConfig:
        return validate_config(read_config_file(self.config_file), str(self.config_file))

    def write_config(self, config: TrainConfig) -> None:
        text = to_yaml(config)
        atomic_write(self.config_file, lambda p: p.write_text(text))

    def read_model_config(self) -> ModelConfig:
        return ModelConfig(**json.loads(self.model_file.read_text()))

    def write_model_config(self, config: ModelConfig) -> None:
        atomic_write(self.model_file, lambda p: p.write_text(json.dumps(config.to_dict(), indent=2) + "\n"))

    def keep_item_ids(self, data: Path | str | None) -> None:
        """A copy of the item ids of the prepared data folder `data`, when it has them and this run
        has none yet: the ranker (`Ranker.from_run`) then needs the run folder alone."""
        source = None if data is None else Path(data) / ITEM_IDS
        if source is not None and source.is_file() and not self.item_ids_file.is_file():
            atomic_write(self.item_ids_file, lambda p: shutil.copyfile(source, p))

    def read_history(self, last_epoch: int | None = None) -> list[dict]:
        """The per-epoch records, up to `last_epoch` (later ones belong to an epoch the checkpoint lost)."""
        if not self.history_file.is_file():
            return []
        records = [json.loads(line) for line in self.history_file.read_text().splitlines() if line.strip()]
        return [r for r in records if last_epoch is None or r["epoch"] <= last_epoch]

    def write_history(self, records: list[dict]) -> None:
        text = "".join(json.dumps(json_safe(r)) + "\n" for r in records)
        atomic_write(self.history_file, lambda p: p.write_text(text))

    def append_history(self, record: dict) -> None:
        with open(self.history_file, "a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")

    def read_metrics(self) -> dict:
        return json.loads(self.metrics_file.read_text())

    def write_metrics(self, metrics: dict) -> None:
        text = json.dumps(json_safe(metrics), indent=2) + "\n"
        atomic_write(self.metrics_file, lambda p: p.write_text(text))

    def require_trained(self, weights: str = "best") -> None:
        """`DataError` unless this folder holds a run's configs and `weights`."""
        needed = (self.config_file, self.model_file, self.weights(weights))
        missing = [f.relative_to(self.path) for f in needed if not f.exists()]
        if missing:
            raise DataError(f"{self.path}: not a training run (no {', '.join(map(str, missing))})")
