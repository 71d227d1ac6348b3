"""The compiled warm path: a cached user's warm call as AOTInductor programs (docs/serving.md, "The compiled warm path").

A warm call — a cached history of L ≥ 2 tokens, M ≤ `COMPILED_EVENTS` new events given in the
call, K ≥ 2 candidates — runs `model.serve` on the same tensors every time; only their sizes
change. `WarmPath` exports it once (`torch.export`, L and K dynamic) and compiles it ahead of
time with AOTInductor into a shared library, one per kind of M: none, one, and 2..COMPILED_EVENTS
(the tracer fixes sizes 0 and 1). A call then costs the library's kernels and a flat list of
tensors: no guards and no Python per operation, which at K = 10 were most of a warm call.

The libraries hold no weights: they read the model's own tensors (AOTInductor's user-managed
constants), so nothing is copied and a change to the weights reaches them.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from causalgr.batch import Batch
from causalgr.errors import CausalgrError
from causalgr.models import RankingModel
from causalgr.models.cache import HistoryState

COMPILED_EVENTS = 8  # a warm call bringing at most this many events runs compiled


class WarmCall(nn.Module):
    """What is compiled: `model.serve` of a cached history, M new events and K candidates.

    forward(state (`HistoryState.tensors()`: the history's L tokens), items [1, M], timestamps
    [1, M], labels [1, M, T], action_values [1, M], candidates [K], timestamp [] int64) → logits
    [K, T], exactly `model.serve(...)[1]`.
    """

    def __init__(self, model: RankingModel):
        super().__init__()
        self.model = model

    def forward(self, state: dict[str, torch.Tensor], items: torch.Tensor, timestamps: torch.Tensor,
                labels: torch.Tensor, action_values: torch.Tensor, candidates: torch.Tensor,
                timestamp: torch.Tensor) -> torch.Tensor:
        events = Batch(items=items, labels=labels, action_values=action_values, timestamps=timestamps,
                       lengths=items.new_full((1,), items.shape[1]))
        return self.model.serve(HistoryState.from_tensors(state), events, candidates, timestamp)[1]


class WarmPath:
    """The compiled programs of `model`'s warm calls (CPU; needs a C++ compiler), built at
    construction from `state`, a cached history of 2 or more tokens, and `events`, a made-up
    continuation of it (at least 3 events): a minute or more. Call it as `model.serve` with
    candidates; it answers None for a call none of its programs takes."""

    def __init__(self, model: RankingModel, state: HistoryState, events: Batch, max_candidates: int):
        if len(state.encoder) < 2 or events.items.shape[1] < 3 or max_candidates < 2:
            raise CausalgrError("compile: a warm call needs 2 cached tokens, 3 events to compile with and 2 candidates")
        self.max_candidates = max_candidates
        state = HistoryState.from_tensors({name: t.clone() for name, t in state.tensors().items()})  # not inference tensors
        events = _first(events, events.items.shape[1], clone=True)
        self._folder = tempfile.TemporaryDirectory(prefix="causalgr-warm-")
        module = WarmCall(model).eval()
        self._weights = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        candidates = torch.arange(5, device=events.items.device) % model.config.num_items + 1
        when = int(events.timestamps[0, -1]) + 60
        self.programs = [self._compiled(module, state, _first(events, new), candidates, when, Path(self._folder.name) / f"{new}.pt2")
                         for new in (0, 1, 3)]  # none, one, several: sizes apart from L and K = 5

    def __call__(self, state: HistoryState | None, events: Batch, candidates: torch.Tensor,
                 timestamp: int) -> torch.Tensor | None:
        new = events.items.shape[1]
        if state is None or len(state.encoder) < 2 or not 2 <= len(candidates) <= self.max_candidates or new > COMPILED_EVENTS:
            return None
        return self.programs[min(new, 2)].boxed_run(_flat_inputs(state, events, candidates, timestamp))[0]

    def _compiled(self, module: WarmCall, state: HistoryState, events: Batch, candidates: torch.Tensor, timestamp: int,
                  path: Path):
        from torch._inductor import aoti_compile_and_package, aoti_load_package  # imports inductor: seconds

        history, count = Dim("history", min=2), Dim("candidates", min=2, max=self.max_candidates)
        along = {name: None if name == "last_action" else {1 if name == "timestamps" else 2: history}  # [1, 1, D]
                 for name in state.tensors()}
        new = events.items.shape[1]
        per_event = {1: Dim("events", min=2, max=COMPILED_EVENTS)} if new >= 2 else None
        with torch.no_grad():
            exported = torch.export.export(
                module, _inputs(state, events, candidates, timestamp),
                dynamic_shapes=(along, per_event, per_event, per_event, per_event, {0: count}, None))
        program = aoti_load_package(aoti_compile_and_package(
            exported, package_path=str(path), inductor_configs={"aot_inductor.package_constants_in_so": False}))
        program.load_constants(self._constants(program.get_constant_fqns(), exported), check_full_update=True,
                               user_managed=True)
        with torch.no_grad():  # constants and inputs are matched by order: a wrong match shows here
            answer = program.loader.boxed_run(_flat_inputs(state, events, candidates, timestamp))[0]
            if not torch.allclose(answer, module(*_inputs(state, events, candidates, timestamp)), atol=1e-5, rtol=0):
                raise CausalgrError(f"compile: the program of {new} events does not answer as the model")
        return program.loader

    def _constants(self, names: list[str], exported: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
        """The program's constants: the module's weights by name, and the tensors that tracing
        lifted (the time buckets' edges), which AOTInductor renames `_tensor_constant<i>` in their
        order, except 0-d ones (softmax's scalars), which it writes into the code."""
        lifted = sorted((name for name in names if name not in self._weights), key=_index)
        traced = [t for _, t in sorted(exported.constants.items(), key=lambda item: _index(item[0])) if t.dim() > 0]
        if len(lifted) != len(traced):
            raise CausalgrError(f"compile: the program names constants {lifted}, the export holds {list(exported.constants)}")
        return {name: self._weights[name] for name in names if name in self._weights} | dict(zip(lifted, traced))


def _inputs(state: HistoryState, events: Batch, candidates: torch.Tensor, timestamp: int) -> tuple:
    """`WarmCall`'s arguments, contiguous as the programs were traced."""
    flat, names = _flat_inputs(state, events, candidates, timestamp), list(state.tensors())
    return dict(zip(names, flat)), *flat[len(names):]


def _flat_inputs(state: HistoryState, events: Batch, candidates: torch.Tensor, timestamp: int) -> list[torch.Tensor]:
    """`_inputs` flat, in the order torch.export flattened them: what a program's loader runs on
    (`boxed_run`), without the pytree walk and call-spec parsing of `aoti_load_package`'s wrapper
    on every call."""
    tensors = (*state.tensors().values(), events.items, events.timestamps, events.labels, events.action_values, candidates)
    return [*(t.contiguous() for t in tensors), torch.tensor(timestamp, device=candidates.device)]


def _index(name: str) -> int:
    """The number a lifted constant's name ends with."""
    return int(re.search(r"\d+$", name).group())


def _first(events: Batch, count: int, clone: bool = False) -> Batch:
    """The first `count` events of a batch of one row (copies, with `clone`)."""
    items, labels, action_values, timestamps = (t[:, :count].clone() if clone else t[:, :count] for t in
                                                (events.items, events.labels, events.action_values, events.timestamps))
    return Batch(items=items, labels=labels, action_values=action_values, timestamps=timestamps,
                 lengths=events.lengths.new_full((1,), count))
