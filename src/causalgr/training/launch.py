"""Starting a data-parallel run on this machine: `causalgr train --nproc P`, or `launch` from Python.

`launch` hands `train` to torch's elastic launcher — what `torchrun --standalone
--nproc-per-node P` runs — with a rendezvous on a free local port and no restarts. Each rank is
a process forked from a fork server that has imported causalgr once, and calls `train` with the
same arguments (`distributed.py` says what each rank then does). If a rank fails (an error, a
crash, a kill), the launcher stops the others and `RankFailed` names the failed rank and why.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import uuid
from pathlib import Path

from causalgr.training.config import TrainConfig
from causalgr.training.rundir import RunDir
from causalgr.training.trainer import TrainResult, config_to_run, train


class RankFailed(RuntimeError):
    """A rank of a multi-process run failed; the message names each failed rank and why, one per line."""


def launch(
    nproc: int,
    config: TrainConfig | None,
    out_dir: Path | str,
    resume: bool = False,
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """`train(config, out_dir, resume, stop_after_epochs)` on `nproc` local processes; rank 0's result.

    The ranks are started by multiprocessing, so a script calling this must do so under
    `if __name__ == "__main__":`.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    run = RunDir(out_dir)
    config_to_run(config, run, resume)  # a config mistake raises here, once, rather than on every rank
    if run.is_finished():
        return train(config, run, resume=resume)
    # A fork server that has imported causalgr once forks the ranks: they start in a fraction of
    # the time that each importing torch and causalgr again takes (spawn), and unlike a plain fork
    # they inherit no threads of this process.
    multiprocessing.get_context("forkserver").set_forkserver_preload([__name__])
    launch_config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="forkserver",
    )
    level = logging.getLogger().getEffectiveLevel()
    try:
        results = elastic_launch(launch_config, _train_on_rank)(config, str(out_dir), resume, stop_after_epochs, level)
    except ChildFailedError as err:
        raise RankFailed(describe_failures(err.failures, nproc)) from None
    return results[0]


def _train_on_rank(config: TrainConfig | None, out_dir: str, resume: bool, stop_after_epochs: int | None,
                   level: int) -> TrainResult:
    """What each launched process runs: `train`, logging at the launcher's level on rank 0 only."""
    rank = int(os.environ["RANK"])
    logging.basicConfig(level=level if rank == 0 else max(level, logging.WARNING), format="%(message)s")
    return train(config, out_dir, resume=resume, stop_after_epochs=stop_after_epochs)


def describe_failures(failures: dict, nproc: int) -> str:
    """One line per failed rank, the first to fail first: its rank, pid and how it ended (a signal,
    or an exit code and the error it raised)."""
    lines = []
    for rank, failure in sorted(failures.items(), key=lambda item: (item[1].timestamp, item[0])):
        if failure.exitcode < 0:
            how = f"was killed by {failure.signal_name()}"
        elif failure.error_file_data.get("message"):  # what the rank raised, from its error file
            message = failure.message
            if isinstance(message, dict):  # {"message": "Type: text", "extraInfo": {…}}
                message = message.get("message", "")
            how = f"exited with code {failure.exitcode}: {message.strip().splitlines()[0] if message.strip() else '?'}"
        else:
            how = f"exited with code {failure.exitcode} (its error is in the log above)"
        lines.append(f"rank {rank} of {nproc} (pid {failure.pid}) {how}")
    return "\n".join(lines)


__all__ = ["RankFailed", "describe_failures", "launch"]
