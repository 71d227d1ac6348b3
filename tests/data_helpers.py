"""Tiny synthetic datasets for the tests that train."""

from __future__ import annotations

from pathlib import Path

from causalgr.data.sequences import PrepareSettings, prepare
from causalgr.data.synth import SynthSettings, generate


def tiny_dataset(out: Path, *, max_len: int, **synth) -> Path:
    """A prepared synthetic dataset in `out` (the generator's settings as given; small by intent)."""
    prepare(generate(SynthSettings(**synth)), out, PrepareSettings(max_len=max_len))
    return out


def tiny_lfa_run(root: Path) -> Path:
    """A one-epoch lfa run (dim 8, one layer) on tiny synthetic data, in `root / "run"` (its data in
    `root / "data"`; item ids are the generator's ints, tasks click and like): what the serving
    tests serve."""
    from causalgr.training.config import load_config
    from causalgr.training.trainer import train

    tiny_dataset(root / "data", max_len=16, users=30, items=20, clusters=2, events_mean=12, events_min=8,
                 events_max=16, tasks=("click", "like"), seed=3)
    config = load_config(None, [f"data.path={root / 'data'}", "model.formulation=lfa", "model.dim=8", "model.layers=1",
                                "train.epochs=1", "data.batch_size=20", "train.progress=false", "train.threads=1"])
    train(config, root / "run")
    return root / "run"
