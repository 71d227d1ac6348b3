"""What a run reports while it trains, on rank 0 only (docs/design.md §5):

- on a terminal, a progress bar per epoch (loss, events/s);
- off a terminal (a log file, CI), one line every `LOG_EVERY_SECONDS` instead of bar redraws;
- always, TensorBoard event files in the run folder (`RunDir.tensorboard_dir`): per step the
  training loss, learning rate and events/s; per epoch the mean training loss, events/s and the
  validation loss and metrics per task. The x-axis of every curve is the global step, so a
  resumed run purges what a killed session logged past its checkpoint and continues the curves.

`train.progress=false` turns the bar and the lines off; the event files are always written.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from causalgr.training.rundir import RunDir

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 30.0
_T = TypeVar("_T")


class TrainLog:
    def __init__(self, run: RunDir, is_main: bool, show: bool, steps_per_epoch: int, epochs: int, resume_epoch: int):
        self.run, self.is_main, self.steps_per_epoch, self.epochs = run, is_main, steps_per_epoch, epochs
        self.bar = show and is_main and sys.stderr.isatty()
        self.lines = show and is_main and not self.bar
        purge = resume_epoch * steps_per_epoch + 1 if resume_epoch else None  # steps past the checkpoint
        self.writer = SummaryWriter(str(run.tensorboard_dir), purge_step=purge) if is_main else None
        self.epoch = 0
        self._bar: tqdm | None = None
        self._last_line = 0.0

    def global_step(self, step: int) -> int:
        return (self.epoch - 1) * self.steps_per_epoch + step

    def epoch_steps(self, batches: Iterable[_T], epoch: int) -> Iterator[_T]:
        """`batches` with a progress bar around them on a terminal."""
        self.epoch, self._last_line = epoch, time.perf_counter()
        self._bar = tqdm(batches, total=self.steps_per_epoch, desc=f"{self.run.name} epoch {epoch}/{self.epochs}",
                         disable=not self.bar, leave=False, unit="batch", dynamic_ncols=True)
        yield from self._bar

    def step(self, step: int, loss: float, mean_loss: float, lr: float, events_per_second: float) -> None:
        if not self.is_main:
            return
        global_step = self.global_step(step)
        self.writer.add_scalar("train/loss", loss, global_step)
        self.writer.add_scalar("train/lr", lr, global_step)
        self.writer.add_scalar("train/events_per_second", events_per_second, global_step)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{mean_loss:.4f}", ev_s=f"{events_per_second:,.0f}")
        now = time.perf_counter()
        if self.lines and now - self._last_line >= LOG_EVERY_SECONDS:
            self._last_line = now
            log.info("%s epoch %d/%d: step %d/%d  train %.5f  %.0f ev/s", self.run.name, self.epoch, self.epochs,
                     step, self.steps_per_epoch, mean_loss, events_per_second)

    def end_epoch(self, record: dict) -> None:
        """The epoch's record as `metrics.jsonl` has it, at the epoch's last step."""
        if not self.is_main:
            return
        step = self.global_step(self.steps_per_epoch)
        self.writer.add_scalar("epoch/train_loss", record["train_loss"], step)
        self.writer.add_scalar("epoch/train_events_per_second", record["train_events_per_second"], step)
        self.writer.add_scalar("valid/loss", record["valid"]["loss"], step)
        for task, metrics in record["valid"]["tasks"].items():
            for name in ("logloss", "ne", "auc", "gauc"):
                if metrics.get(name) is not None:
                    self.writer.add_scalar(f"valid/{task}/{name}", metrics[name], step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
