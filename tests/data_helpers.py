"""Tiny synthetic datasets for the tests that train."""

from __future__ import annotations

from pathlib import Path

from causalgr.data.sequences import PrepareSettings, prepare
from causalgr.data.synth import SynthSettings, generate


def tiny_dataset(out: Path, *, max_len: int, **synth) -> Path:
    """A prepared synthetic dataset in `out` (the generator's settings as given; small by intent)."""
    prepare(generate(SynthSettings(**synth)), out, PrepareSettings(max_len=max_len))
    return out
