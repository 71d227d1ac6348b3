"""One training run: AdamW, warm-up + decay, early stopping, checkpoints, exact resume (docs/design.md §4).

A run folder (`RunDir`, `rundir.py`, lists its files) holds the resolved config, the model's
config, one metrics record per finished epoch, the checkpoint written atomically after every
epoch (resume reads `checkpoint/state.pt` alone, so a kill between two writes cannot mix epochs),
the best epoch's weights and, when the run is done, `metrics.json`.

Everything random is seeded and its state checkpointed at epoch ends, so a run stopped at any
point and continued with `resume=True` ends with the same metrics as an uninterrupted one.

The same loop runs on every rank of a multi-process run (docs/design.md §7): `distributed.py`
shares out the batches and reduces losses and metrics over the ranks, and only rank 0 writes
the run folder — but for a sharded item table (`sharding.py`), whose checkpoint every rank writes
its part of, through `torch.distributed.checkpoint`, before rank 0 commits it in `state.pt`.

Timing definitions: `train_seconds` is wall-clock time of the epochs (training steps and the
per-epoch validation), summed over resumed sessions; `seconds_to_best` the same up to the end of
the best epoch; `train_events_per_second` the loss-carrying events (one (item, action) pair each,
whatever the token count) per second of the training passes alone (batching, forward, backward,
optimizer; validation excluded); `seconds_per_epoch` the mean seconds of one training pass.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from causalgr.data.loader import SequenceLoader
from causalgr.data.prepared import PreparedData, load_prepared
from causalgr.models import build_model
from causalgr.models.item_tables import require_torchrec
from causalgr.errors import CausalgrError, ConfigError
from causalgr.training.config import TrainConfig
from causalgr.training.distributed import Ranks, process_group
from causalgr.training.evaluate import evaluate, resolve_device
from causalgr.training.progress import TrainLog
from causalgr.training.report import plot_run_curves
from causalgr.training.rundir import RunDir, atomic_write
from causalgr.training.sharding import load_sharded, remove_other_states, save_sharded, shard_model, sharded_state
from causalgr.training.step import Optimizer, adagrad_items, train_step

log = logging.getLogger(__name__)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def _torch_settings(threads: int, deterministic: bool):
    """Thread count and determinism for the run, restored afterwards (they are process-wide)."""
    old_threads = torch.get_num_threads()
    old_deterministic = torch.are_deterministic_algorithms_enabled()
    old_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if threads:
        torch.set_num_threads(threads)
    if deterministic:  # cuBLAS needs this to be deterministic; harmless on CPU
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_deterministic, warn_only=old_warn_only)


def config_to_run(config: TrainConfig | None, run: RunDir, resume: bool) -> TrainConfig:
    """Check `run` against `resume` and return the config to run (the saved one when resuming)."""
    config = _config_to_run(config, run, resume)
    require_torchrec(config.model.item_table)
    return config


def _config_to_run(config: TrainConfig | None, run: RunDir, resume: bool) -> TrainConfig:
    if not resume:
        if run.is_started():
            raise ConfigError(f"{run.path}: already holds a training run; pass --resume to continue it or choose a new --out")
        if config is None:
            raise ConfigError("train: a config is needed to start a new run")
        return config
    if not run.config_file.is_file():
        if config is None:
            raise ConfigError(f"{run.path}: nothing to resume (no config.yaml)")
        return config
    saved = run.read_config()
    if config is not None:
        mine, theirs = _flat(config.to_dict()), _flat(saved.to_dict())
        ignored = {"train.progress", "train.dist_timeout"}
        changed = sorted(k for k in mine.keys() | theirs.keys() if k not in ignored and mine.get(k) != theirs.get(k))
        if changed:
            key = changed[0]
            raise ConfigError(
                f"{run.path}: --resume with a different config ({key}: {theirs.get(key)!r} in the run, {mine.get(key)!r} now)"
            )
        saved = saved.model_copy(update={"train": saved.train.model_copy(update={"progress": config.train.progress})})
    return saved


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


class TrainingDiverged(CausalgrError):
    """The loss became NaN or infinite: one line naming the epoch and step, and what to try."""


@dataclass(frozen=True)
class TrainResult:
    """What `train` did: the run folder, the epochs finished so far, and the final metrics
    (`metrics.json`) when the run is done — None when `stop_after_epochs` ended the call first."""

    run: RunDir
    epoch: int
    metrics: dict | None

    @property
    def finished(self) -> bool:
        return self.metrics is not None


def train(
    config: TrainConfig | None,
    out_dir: RunDir | Path | str,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    data: PreparedData | None = None,
) -> TrainResult:
    """Train the model `config` describes into the run folder `out_dir`.

    `resume=True` continues the run there from its last finished epoch (or starts it when there
    is none; `config` may then be None to reuse the saved one); a finished run is returned as it
    is. `stop_after_epochs` ends this call after that many epochs, leaving a resumable checkpoint
    and no `metrics.json`. `data` skips loading the prepared dataset named in the config (it
    must be that dataset).

    Under torchrun every rank calls this with the same arguments, and each gets the result.
    """
    run = out_dir if isinstance(out_dir, RunDir) else RunDir(out_dir)
    config = config_to_run(config, run, resume)
    if run.is_finished():
        metrics = run.read_metrics()
        return TrainResult(run, metrics["epochs_run"], metrics)
    if data is None and config.data.path is None:
        raise ConfigError("config: data.path is required (a folder made by `causalgr data prepare` or `data synth`)")
    t = config.train
    with process_group(resolve_device(t.device), t.dist_timeout, alone_too=config.model.item_table == "sharded") as ranks:
        if data is None:  # each rank reads its own users only
            data = load_prepared(config.data.path, share=(ranks.rank, ranks.world_size))
        unknown = sorted(set(config.train.task_weights) - set(data.tasks))
        if unknown:
            raise ConfigError(f"config: train.task_weights: unknown task '{unknown[0]}' (the data has {', '.join(data.tasks)})")
        if ranks.is_main:
            run.create()
            run.write_config(config)
            run.keep_item_ids(config.data.path)
        with _torch_settings(ranks.threads(t.threads), t.deterministic):
            session = _Run(config, data, run, ranks)
            try:
                return session.fit(stop_after_epochs)
            finally:
                session.close()  # inside the process group: see `_Run.close`


class _Run:
    """The state of one training run between epochs."""

    def __init__(self, config: TrainConfig, data: PreparedData, run: RunDir, ranks: Ranks) -> None:
        self.config, self.data, self.run, self.ranks = config, data, run, ranks
        self.device = ranks.device
        t = config.train
        if config.data.batch_size < ranks.world_size:
            raise ConfigError(f"config: data.batch_size {config.data.batch_size} is the global batch: "
                              f"it needs at least one user for each of the {ranks.world_size} processes")
        _seed_everything(t.seed)
        self.model_config = config.model_config_for(data)
        self.model = build_model(self.model_config).to(self.device)
        self.num_parameters = {"num_parameters": self.model.num_parameters(),
                               "num_parameters_without_items": self.model.num_parameters(include_items=False)}
        if ranks.is_main:
            run.write_model_config(self.model_config)
        self.train_loader = SequenceLoader(data, "train", batch_size=config.data.batch_size, shuffle=True, seed=t.seed)
        if self.train_loader.num_events == 0:
            raise ConfigError(f"{config.data.path}: the training split has no events")
        # What the training steps run; the weights are self.model's (a sharded table's rows in place).
        self.sharded = self.model_config.item_table == "sharded"
        if self.sharded:
            self.train_model, items = shard_model(self.model, ranks, config.optim)
        else:
            self.train_model = ranks.wrap(self.model)
            items = adagrad_items(self.model.items, config.optim) if config.optim.item_optimizer == "adagrad" else None
        self.optimizer = Optimizer(self.model, config.optim, total_steps=t.epochs * len(self.train_loader), items=items)
        self.task_weights = [t.task_weights.get(task, 1.0) for task in data.tasks]
        self.epoch = 0
        self.best_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.stopped_early = False
        self.elapsed = 0.0  # wall seconds of finished epochs, over all sessions
        self.step_seconds = 0.0  # seconds of training steps only
        self.train_events = 0
        self.seconds_to_best = 0.0
        self.history: list[dict] = []
        if run.state_file.is_file():
            self._load_checkpoint()
        self.log = TrainLog(run, ranks.is_main, t.progress, len(self.train_loader), t.epochs, resume_epoch=self.epoch)

    def close(self) -> None:
        """Close the event files and free the DDP (or DMP) wrapper while the process group still
        exists. Freed later, its gradient reducer would hold the last reference to the gloo group
        and destroy it while holding the GIL, joining a gloo thread that waits for the GIL: a hang
        seen at the end of a 2-process run."""
        self.log.close()
        self.train_model = None
        gc.collect()  # DDP's hooks form reference cycles: free them now, not at some later collection

    # --- checkpoints -------------------------------------------------------------------------

    def _state(self) -> dict:
        return {
            # The weights again, so that state.pt alone is consistent if a kill lands between two writes;
            # a sharded run's are in the DCP folders state.pt names by "epoch" and "best_epoch".
            **({"sharded": True} if self.sharded else {"model": self.model.state_dict()}),
            **self.optimizer.state_dict(),  # "optimizer" and "scheduler" (and "item_optimizer")
            "rng": _rng_state(),
            "epoch": self.epoch,
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "elapsed": self.elapsed,
            "step_seconds": self.step_seconds,
            "train_events": self.train_events,
            "seconds_to_best": self.seconds_to_best,
        }

    def _save_checkpoint(self, improved: bool) -> None:
        """Called on every rank. state.pt goes last: it commits the epoch."""
        run = self.run
        if self.sharded:
            save_sharded(sharded_state(self.train_model, self.optimizer.items), run.sharded_state(self.epoch), self.ranks)
            if self.ranks.is_main:
                atomic_write(run.state_file, lambda p: torch.save(self._state(), p))
                remove_other_states(run.sharded_states, {run.sharded_state(e).name for e in (self.epoch, self.best_epoch)})
            return
        if not self.ranks.is_main:
            return
        if improved:
            atomic_write(run.weights_file("best"), lambda p: save_model(self.model, str(p)))
        atomic_write(run.weights_file("latest"), lambda p: save_model(self.model, str(p)))
        atomic_write(run.state_file, lambda p: torch.save(self._state(), p))

    def _load_checkpoint(self) -> None:
        state = torch.load(self.run.state_file, map_location="cpu", weights_only=False)
        if self.sharded:
            saved = sharded_state(self.train_model, self.optimizer.items)
            load_sharded(saved, self.run.sharded_state(state["epoch"]))  # in place, any number of ranks
            # DCP has already read into the fused kernel's state (TorchRec 1.9 hands out views of
            # it); TorchRec's documented way in, in case a later version hands out copies.
            self.optimizer.items.load_state_dict(saved["item_optimizer"])
        else:
            self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state)
        _set_rng_state(state["rng"])
        for key in ("epoch", "best_loss", "best_epoch", "bad_epochs", "stopped_early", "elapsed",
                    "step_seconds", "train_events", "seconds_to_best"):
            setattr(self, key, state[key])
        self.history = self.run.read_history(last_epoch=self.epoch)
        if self.ranks.is_main:
            self.run.write_history(self.history)
        log.info("%s: resuming after epoch %d (best valid loss %.5f at epoch %d)",
                 self.run.path, self.epoch, self.best_loss, self.best_epoch)

    # --- the loop ------------------------------------------------------------------------------

    def _train_epoch(self) -> tuple[float, int, float]:
        """One pass over the training split: (mean loss per event, events, step seconds), over all ranks."""
        model, t, ranks = self.train_model, self.config.train, self.ranks
        model.train()
        self.train_loader.set_epoch(self.epoch)
        ranks.seed_epoch(t.seed, self.epoch)
        loss_sum, events, seconds = 0.0, 0, 0.0
        start = time.perf_counter()
        for step, (batch, share) in enumerate(self.log.epoch_steps(ranks.train_batches(self.train_loader), self.epoch), start=1):
            batch = batch.to(self.device)
            lr = self.optimizer.lr
            loss = train_step(model, self.optimizer, batch, self.task_weights, share).item()  # syncs: the time is real on GPU
            loss, n = ranks.step_loss(loss, int(batch.loss_mask.sum()))  # over the global batch
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"train: the training loss became {loss} at epoch {self.epoch}, step {step} of "
                    f"{len(self.train_loader)} (lr {lr:.3g}); try a lower learning rate, e.g. --set optim.lr={self.config.optim.lr / 4:.2g}"
                )
            loss_sum += loss * n
            seconds = time.perf_counter() - start  # batching, forward, backward and optimizer steps
            events += n
            self.log.step(step, loss, loss_sum / max(events, 1), lr, events / max(seconds, 1e-9))
        return loss_sum / max(events, 1), events, seconds

    def fit(self, stop_after_epochs: int | None) -> TrainResult:
        t = self.config.train
        epochs_this_call = 0
        while not self.stopped_early and self.epoch < t.epochs:
            if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                return TrainResult(self.run, self.epoch, None)
            epoch_start = time.perf_counter()
            self.epoch += 1
            lr = self.optimizer.lr
            train_loss, events, step_seconds = self._train_epoch()
            valid = evaluate(self.model, self.data, "valid", self.config.data.eval_batch_size, self.device,
                             bayes_floor=False, ranks=self.ranks)
            self.model.train()
            epoch_seconds = time.perf_counter() - epoch_start
            self.elapsed += epoch_seconds
            self.step_seconds += step_seconds
            self.train_events += events
            if not math.isfinite(valid["loss"]):
                raise TrainingDiverged(
                    f"train: the validation loss became {valid['loss']} after epoch {self.epoch} (lr {lr:.3g}); "
                    f"try a lower learning rate, e.g. --set optim.lr={self.config.optim.lr / 4:.2g}"
                )
            improved = valid["loss"] < self.best_loss - t.min_delta
            if improved:
                self.best_loss, self.best_epoch, self.bad_epochs = valid["loss"], self.epoch, 0
                self.seconds_to_best = self.elapsed
            else:
                self.bad_epochs += 1
                self.stopped_early = self.bad_epochs >= t.patience
            record = {
                "epoch": self.epoch,
                "lr": lr,
                "train_loss": train_loss,
                "train_events": events,
                "train_step_seconds": step_seconds,
                "train_events_per_second": events / max(step_seconds, 1e-9),
                "epoch_seconds": epoch_seconds,
                "elapsed_seconds": self.elapsed,
                "valid": valid,
                "best": improved,
            }
            self.history.append(record)
            self.log.end_epoch(record)
            if self.ranks.is_main:
                # The record goes first: a resume drops records past the checkpoint's epoch, never misses one.
                self.run.append_history(record)
            self._save_checkpoint(improved)
            log.info(
                "%s epoch %d: train %.5f  valid %.5f%s  %.1f s  %.0f ev/s",
                self.run.name, self.epoch, train_loss, valid["loss"], " *" if improved else "",
                epoch_seconds, record["train_events_per_second"],
            )
            epochs_this_call += 1
        return TrainResult(self.run, self.epoch, self._finish())

    def _finish(self) -> dict:
        self.ranks.barrier()  # rank 0 has written the best weights
        if self.sharded:
            load_sharded({"model": self.train_model.state_dict()}, self.run.sharded_state(self.best_epoch))
        else:
            load_model(self.model, str(self.run.weights_file("best")), device=str(self.device))
        batch_size = self.config.data.eval_batch_size
        valid = evaluate(self.model, self.data, "valid", batch_size, self.device, ranks=self.ranks)
        test = evaluate(self.model, self.data, "test", batch_size, self.device, ranks=self.ranks)
        epochs_run = self.epoch
        result = {
            "formulation": self.model_config.formulation,
            "backbone": self.model_config.backbone,
            "seed": self.config.train.seed,
            "best_epoch": self.best_epoch,
            "epochs_run": epochs_run,
            "stopped_early": self.stopped_early,
            "valid": valid,
            "test": test,
            "train_seconds": self.elapsed,
            "seconds_to_best": self.seconds_to_best,
            "train_events_per_second": self.train_events / max(self.step_seconds, 1e-9),
            "seconds_per_epoch": self.step_seconds / max(epochs_run, 1),
            "train_events_per_epoch": self.train_loader.num_events,
            **self.num_parameters,
            "device": str(self.device),
            "processes": self.ranks.world_size,
            "torch_threads": torch.get_num_threads(),
            "data": {
                "path": self.config.data.path,
                "source": self.data.meta.get("source"),
                "num_users": self.data.num_users,
                "num_items": self.data.num_items,
                "tasks": list(self.data.tasks),
            },
            "model": self.model_config.to_dict(),
        }
        if self.ranks.is_main:
            self.run.write_metrics(result)
            plot_run_curves(self.history, self.run.curves_file,
                            f"{self.model_config.formulation} · {self.model_config.backbone} · seed {self.config.train.seed}")
        self.ranks.barrier()
        return self.run.read_metrics()  # what callers get is exactly what the file says
