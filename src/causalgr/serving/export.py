"""A `Ranker` as a `torch.export` package: the same numbers, served without causalgr (docs/serving.md, "Export").

The package holds one program, `RankingProgram`: the history's tensors, the candidates' dense
ids and the request time → the probabilities [K, T]. It is the ranker's own one-pass path —
`model.extend_history` once over the N events, then `model.rank_candidates` for the K
candidates, each seeing the history and itself — traced with the *reference* attention engine
(`EXPORT_ENGINE` says why), whose materialised masks trace to one graph for every N and K.
Cost: the history's attention is materialised, O(N²) memory (O((N + K)²) for hstu's bias over
history and candidates); fine at max_len ≤ 2048.

What a caller needs besides the program travels inside the same archive, as the extra file
`METADATA` (JSON): the task names, max_len, the original → dense item ids and the unknown item.
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from causalgr.batch import Batch
from causalgr.errors import ConfigError
from causalgr.models import RankingModel, build_model
from causalgr.serving.items import with_unknown_item
from causalgr.serving.limits import Limits
from causalgr.serving.ranker import Ranker

METADATA = "causalgr-ranker.json"  # the extra file of the .pt2 archive: `torch.export.load(path, extra_files={METADATA: ""})`
FORMAT_VERSION = 1
# The attention engine the program is traced with, for both backbones: the reference, whose
# materialised masks trace to one graph for every N and K. hstu's fast kernels loop over blocks
# whose number depends on N and K (and search its time buckets in a data-dependent loop);
# softmax's fast engine traces, but mvp's CPU flash call in it dies of SIGFPE on an empty history.
EXPORT_ENGINE = "reference"
INPUTS = ("items", "timestamps", "labels", "action_values", "candidates", "timestamp")


class RankingProgram(nn.Module):
    """What is exported: a served model (with its unknown-item row) on plain tensors.

    forward(items [N] int64, timestamps [N] int64, labels [N, T] float32, action_values [N] int64,
    candidates [K] int64, timestamp [] int64) → probabilities [K, T] float32, row k =
    sigmoid(model(history + (candidates[k], timestamp)))[N]. Ids are dense; any id outside
    1..num_items is answered as the unknown item, num_items + 1. N may be 0 (no history).
    """

    def __init__(self, model: RankingModel):
        super().__init__()
        self.model = model
        self.num_items = model.config.num_items

    def forward(self, items: torch.Tensor, timestamps: torch.Tensor, labels: torch.Tensor, action_values: torch.Tensor,
                candidates: torch.Tensor, timestamp: torch.Tensor) -> torch.Tensor:
        events = Batch(items=self.known(items)[None], labels=labels[None], action_values=action_values[None],
                       timestamps=timestamps[None], lengths=items.new_full((1,), items.shape[0]))  # one row [1, N]
        state = self.model.extend_history(None, events)
        logits = self.model.rank_candidates(state, self.known(candidates), timestamp)  # [K, T]
        return torch.sigmoid(logits.float())

    def known(self, ids: torch.Tensor) -> torch.Tensor:
        """Dense ids with everything outside 1..num_items replaced by the unknown item."""
        return torch.where((ids >= 1) & (ids <= self.num_items), ids, self.num_items + 1)


@dataclass(frozen=True)
class ExportedRanker:
    path: Path  # the torch.export package
    seconds: float  # torch.export + save
    aoti_path: Path | None = None  # the AOTInductor package, when asked for
    aoti_seconds: float | None = None


def export_ranker(ranker: Ranker, out: Path | str, *, max_candidates: int = Limits.max_candidates,
                  aoti: Path | str | None = None) -> ExportedRanker:
    """Write `ranker` to `out` as a `torch.export` package (dynamic N in 0..max_len − 1 and K in
    1..`max_candidates`), with `METADATA` inside; and, with `aoti`, an AOTInductor package there
    (a compiled shared library: needs a C++ compiler; the same metadata inside)."""
    out = Path(out)
    for path in (out, aoti):
        if path is not None and not Path(path).parent.is_dir():
            raise ConfigError(f"{path}: the folder {Path(path).parent} does not exist")
    if ranker.max_history < 2 or max_candidates < 2:
        raise ConfigError("export needs max_len >= 3 and max_candidates >= 2 (torch.export fixes sizes 0 and 1)")
    program = RankingProgram(_traceable(ranker.model)).eval()
    events, candidates = Dim("events", min=0, max=ranker.max_history), Dim("candidates", min=1, max=max_candidates)
    start = time.perf_counter()
    with torch.no_grad():
        exported = torch.export.export(
            program, example_inputs(ranker, events=2, candidates=3),
            dynamic_shapes=({0: events}, {0: events}, {0: events}, {0: events}, {0: candidates}, None),
        )
    metadata = json.dumps(package_metadata(ranker, max_candidates))
    torch.export.save(exported, out, extra_files={METADATA: metadata})
    result = ExportedRanker(out, time.perf_counter() - start)
    if aoti is None:
        return result
    aoti, start = Path(aoti), time.perf_counter()
    from torch._inductor import aoti_compile_and_package  # imports inductor: seconds, so only when asked

    aoti_compile_and_package(exported, package_path=str(aoti))
    with zipfile.ZipFile(aoti, "a") as archive:  # beside the compiled model, where torch.export.save puts extra files
        archive.writestr(f"{aoti.stem}/extra/{METADATA}", metadata)
    return ExportedRanker(out, result.seconds, aoti, time.perf_counter() - start)


def export_run(run: Path | str, out: Path | str, *, data: Path | str | None = None, weights: str = "best",
               max_candidates: int = Limits.max_candidates, aoti: Path | str | None = None) -> ExportedRanker:
    """`export_ranker` of `Ranker.from_run(run)`: ids in the metadata are the source's original ids."""
    return export_ranker(Ranker.from_run(run, data=data, weights=weights, device="cpu"), out,
                         max_candidates=max_candidates, aoti=aoti)


def package_metadata(ranker: Ranker, max_candidates: int) -> dict:
    """What a caller without causalgr needs to build the program's inputs and read its output."""
    config = ranker.config
    return {
        "format_version": FORMAT_VERSION,
        "inputs": list(INPUTS),
        "tasks": list(config.tasks),  # the columns of labels and of the output
        "formulation": config.formulation,
        "backbone": config.backbone,
        "num_items": config.num_items,
        "unknown_item": ranker.items.unknown,
        "num_action_values": config.num_action_values,
        "max_len": config.max_len,
        "max_history": ranker.max_history,  # keep the last max_history events; the program refuses more
        "max_candidates": max_candidates,
        # original id (a string) → dense id; null when the ranker's ids are the dense ones. An id
        # not listed is the unknown item; so is any dense id outside 1..num_items.
        "item_ids": ranker.items.ids,
        "model": config.to_dict(),
    }


def example_inputs(ranker: Ranker, *, events: int, candidates: int) -> tuple[torch.Tensor, ...]:
    """Inputs of `RankingProgram` for `events` history events and `candidates` candidates."""
    tasks = len(ranker.tasks)
    return (
        torch.arange(1, events + 1) % ranker.config.num_items + 1,  # items [N]
        torch.arange(events) * 60,  # timestamps [N]
        torch.zeros(events, tasks),  # labels [N, T]
        torch.zeros(events, dtype=torch.long),  # action_values [N]
        torch.arange(candidates) % ranker.config.num_items + 1,  # candidates [K]
        torch.tensor(events * 60),  # timestamp []
    )


def _traceable(model: RankingModel) -> RankingModel:
    """A CPU copy of the served `model` (unknown item included) that runs `EXPORT_ENGINE`."""
    traceable = with_unknown_item(build_model(replace(model.config, attention=EXPORT_ENGINE)))
    traceable.load_state_dict(model.state_dict())
    return traceable
