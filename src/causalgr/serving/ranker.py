"""`Ranker`: P(task) for K candidate items after a user's history, exactly as the model says (docs/design.md §6).

The answer for candidate c is the trained model's prediction at position N + 1 of the sequence
`history + (c, t)`. The history goes through the model once (`RankingModel.serve`: each layer's
keys and values, and the formulation's extras, kept per user by `observe`); the K candidates go
through in one target-aware pass, beside the events given in the call: each sees the history and
itself, never another candidate, so an answer does not depend on the other candidates or their
order. Cost O(N² + K·N) cold, O(K·N + new events · N) warm. `Ranker(model, compile=True)` runs
warm calls as AOTInductor programs (`serving.compiled`; docs/serving.md, "The compiled warm path").
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors import SafetensorError

from causalgr.batch import Batch
from causalgr.data.errors import DataError
from causalgr.data.prepared import ITEM_IDS
from causalgr.errors import CausalgrError
from causalgr.models import RankingModel
from causalgr.models.cache import HistoryState
from causalgr.serving.compiled import WarmPath
from causalgr.serving.history import (
    CachedHistory,
    History,
    HistoryCache,
    InvalidInput,
    check_action_values,
    check_labels,
    check_timestamp,
    check_timestamps,
)
from causalgr.serving.items import ItemIndex, with_unknown_item
from causalgr.training.evaluate import load_run
from causalgr.training.rundir import RunDir

CANDIDATES_PER_PASS = 256  # bounds a pass's attention slab at candidates × history tokens × heads
CACHE_BYTES = 256 << 20


@dataclass(frozen=True)
class Ranking:
    probabilities: np.ndarray  # [K, T] float32, row k for candidates[k]
    unknown_items: list  # ids of this request (history and candidates) the model does not know, each once


class Ranker:
    """Ranks candidates for one user's history with a `RankingModel`.

    `Ranker(model)` takes ids as the model's dense indices; `Ranker.from_run(dir)` takes the
    source's original ids. An id the model does not know is answered as the unknown item
    (`causalgr.serving.items`) and listed in `rank_with_details(...).unknown_items`. Histories
    are cut to their last `max_len - 1` events so that history + candidate fits the model.
    `observe` keeps each user's events and the model's state of them (`cache`, bounded by
    `cache_bytes`). Safe to call from several threads.

    `compile=True` (CPU only; needs a C++ compiler) compiles the warm call — a cached user's
    history of 2 or more tokens, 2 or more candidates, at most `COMPILED_EVENTS` events in the
    call — at construction, with torch.export and AOTInductor (`serving.compiled.WarmPath`): three
    programs (no event in the call, one, several), a minute or two in all. The same answers within float32
    rounding; every other call runs eager.
    """

    def __init__(self, model: RankingModel, items: ItemIndex | None = None, *,
                 cache_bytes: int = CACHE_BYTES, candidates_per_pass: int = CANDIDATES_PER_PASS,
                 compile: bool = False):
        self.config = model.config
        self.model = with_unknown_item(model)
        self.items = items if items is not None else ItemIndex(model.config.num_items)
        self.cache = HistoryCache(cache_bytes)
        self.candidates_per_pass = candidates_per_pass
        self.max_history = model.config.max_len - 1
        self.device = next(self.model.parameters()).device
        self._model_lock = threading.Lock()  # one forward at a time: torch already uses every core
        self.run: Path | None = None  # the run folder, when made by `from_run`
        self._warm: WarmPath | None = None  # compile=True: the compiled warm calls
        if compile:
            self._compile()

    @classmethod
    def from_run(cls, run: RunDir | Path | str, *, data: Path | str | None = None, weights: str = "best",
                 device: str = "cpu", **options) -> Ranker:
        """The ranker of a `causalgr train` run folder: its `weights`, and the item ids it keeps
        (`item_ids.parquet`), or those of the prepared data folder `data` when given (or of the
        run's `data.path`, for a run that keeps none). `DataError` naming the file when the run
        or the ids cannot be read."""
        run = run if isinstance(run, RunDir) else RunDir(run)
        try:
            model, config = load_run(run, weights, device)
        except CausalgrError:
            raise
        except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as err:
            raise DataError(f"{run.path}: cannot load the run: {_first_line(err)}") from None
        if data is not None:
            ids = Path(data) / ITEM_IDS
        elif run.item_ids_file.is_file():
            ids = run.item_ids_file
        else:  # a run trained before runs kept their item ids
            ids = Path(config.data.path) / ITEM_IDS
        items = read_item_index(ids, model.config.num_items)
        ranker = cls(model, items, **options)
        ranker.run = run.path
        return ranker

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.config.tasks

    def rank(self, items: Sequence | None = None, timestamps: Sequence | None = None, labels: Sequence | None = None,
             action_values: Sequence | None = None, *, candidates: Sequence, timestamp: int,
             user: str | int | None = None) -> np.ndarray:
        """probs float32 [K, T]: probs[k] == sigmoid(model(history + (candidates[k], timestamp)))[N].

        The history is `user`'s cached events (see `observe`), then the events given here
        (oldest first, not cached: the cached state is extended for this call only).
        `InvalidInput` (a `ValueError`) names the field at fault.
        """
        return self.rank_with_details(items, timestamps, labels, action_values, candidates=candidates,
                                      timestamp=timestamp, user=user).probabilities

    def rank_with_details(self, items: Sequence | None = None, timestamps: Sequence | None = None,
                          labels: Sequence | None = None, action_values: Sequence | None = None, *,
                          candidates: Sequence, timestamp: int, user: str | int | None = None) -> Ranking:
        """`rank`'s probabilities and the ids of this request the model does not know."""
        given, unknown = self._events(items, timestamps, labels, action_values)
        cached = self.cache.get(_user_key(user)) if user is not None else None
        past = self._cached_events(cached)
        past.check_followed_by(given)
        timestamp = check_timestamp(timestamp, given if len(given) else past)
        if _count(candidates, "candidates") == 0:
            raise InvalidInput("candidates", "must list at least one item")
        dense, unknown_candidates = self.items.lookup(candidates)
        probabilities = self._score(*self._continued(cached, past, given), dense, timestamp)
        return Ranking(probabilities, list(dict.fromkeys(unknown + unknown_candidates)))

    def observe(self, user: str | int, items: Sequence, timestamps: Sequence, labels: Sequence,
                action_values: Sequence | None = None) -> list:
        """Append events (oldest first, not before the user's last one) to `user`'s cached history.

        Keeps the last `max_len - 1` events and the model's state of them: the new events are
        run against the cached state (O(new events · N)), unless the window slides past its
        oldest events, which rebuilds it (O(N²)). Returns the ids the model does not know. On
        `InvalidInput` nothing is cached.
        """
        key = _user_key(user)
        events, unknown = self._events(items, timestamps, labels, action_values)
        while True:  # another call may replace this user's entry meanwhile: then start again from it
            cached = self.cache.get(key)
            updated = self._updated(cached, self._cached_events(cached), events)
            if self.cache.replace(key, cached, updated):
                return unknown

    def _events(self, items, timestamps, labels, action_values) -> tuple[History, list]:
        if items is None:
            if any(x is not None for x in (timestamps, labels, action_values)):
                raise InvalidInput("items", "missing: timestamps, labels or action values were given without items")
            return History.empty(len(self.tasks)), []
        length = _count(items, "items")
        for name, values in (("timestamps", timestamps), ("labels", labels), ("action_values", action_values)):
            if values is not None and _count(values, name) != length:
                raise InvalidInput(name, f"has {len(values)} entries but items has {length}")
        if timestamps is None or labels is None:
            raise InvalidInput("timestamps" if timestamps is None else "labels", "missing: every event needs one")
        dense, unknown = self.items.lookup(items)
        history = History(
            items=dense,
            timestamps=check_timestamps(timestamps),
            labels=check_labels(labels, length, len(self.tasks)),
            action_values=check_action_values(action_values, length, self.config.num_action_values),
        )
        return history, unknown

    def _cached_events(self, cached: CachedHistory | None) -> History:
        return History.empty(len(self.tasks)) if cached is None else cached.events

    def _continued(self, cached: CachedHistory | None, past: History, new: History) -> tuple[HistoryState | None, History]:
        """The state to go on from and the events to run through it, for the history `past` (the
        cached events) then `new`. While it fits in the window: the cached state and the new events
        alone. Past it, the window slides: no state and the last max_len − 1 events, since every
        cached key and value depends on the events that left."""
        if cached is not None and len(past) + len(new) <= self.max_history:
            return cached.state, new
        return None, past.then(new).recent(self.max_history)

    def _updated(self, cached: CachedHistory | None, past: History, new: History) -> CachedHistory:
        """The cached events `past`, then `new`, in the window, and their model state."""
        state, events = self._continued(cached, past, new)
        history = past.then(new).recent(self.max_history)
        return CachedHistory(history, state if state is not None and not len(events) else self._extend(state, events))

    @torch.inference_mode()
    def _extend(self, state: HistoryState | None, events: History) -> HistoryState:
        batch = history_batch(events, self.device)
        with self._model_lock:
            return self.model.serve(state, batch)[0]

    def _score(self, state: HistoryState | None, events: History, candidates: np.ndarray, timestamp: int) -> np.ndarray:
        """P(task) [K, T] for the candidates after `state` extended by `events` (not kept). One pass
        runs the events with the candidates; more passes run the events first, once."""
        distinct, where = np.unique(candidates, return_inverse=True)  # each distinct candidate scored once
        if len(distinct) > self.candidates_per_pass:
            state, events = self._extend(state, events), History.empty(len(self.tasks))
        parts = [self._rank(state, events, distinct[i : i + self.candidates_per_pass], timestamp)
                 for i in range(0, len(distinct), self.candidates_per_pass)]
        return np.concatenate(parts)[where.reshape(-1)]

    @torch.inference_mode()
    def _rank(self, state: HistoryState | None, events: History, candidates: np.ndarray, timestamp: int) -> np.ndarray:
        batch, candidates = history_batch(events, self.device), torch.as_tensor(candidates, device=self.device)
        with self._model_lock:
            logits = self._warm(state, batch, candidates, timestamp) if self._warm is not None else None
            if logits is None:
                _, logits = self.model.serve(state, batch, candidates, timestamp)  # [K, T]
        return torch.sigmoid(logits.float()).cpu().numpy()

    def _compile(self) -> None:
        """Compile the warm calls now, on a made-up user, rather than at the first requests."""
        if self.device.type != "cpu":
            raise CausalgrError(f"compile: the compiled warm path runs on the CPU only, not {self.device}")
        length = min(9, self.max_history - 4)  # sizes apart from K = 5 and M = 3, so that none is taken for another
        if length < 2:
            raise CausalgrError(f"compile: the model's max_len ({self.config.max_len}) leaves no room for a warm call")
        made_up = functools.partial(_made_up_events, num_items=self.config.num_items, num_tasks=len(self.tasks))
        try:
            self._warm = WarmPath(self.model, self._extend(None, made_up(0, length)), history_batch(made_up(length, 3)),
                                  self.candidates_per_pass)
        except Exception as err:  # torch.export's and AOTInductor's failures (no C++ compiler, …) come in many types
            raise CausalgrError(f"compile: cannot compile the warm path: {_first_line(err)}") from err


def _made_up_events(start: int, count: int, num_items: int, num_tasks: int) -> History:
    """Events start … start + count − 1 of a made-up user, to compile with: event n is item
    n + 1 (mod num_items) at minute n, with no action."""
    n = np.arange(start, start + count)
    return History(items=n % num_items + 1, timestamps=n * 60, labels=np.zeros((count, num_tasks), dtype=np.float32),
                   action_values=np.zeros(count, dtype=np.int64))


def history_batch(history: History, device: torch.device | str = "cpu") -> Batch:
    """The history as a batch of one row [1, N] on `device` (on the CPU: the arrays' own memory)."""
    items, timestamps, labels, action_values = (torch.as_tensor(a, device=device)[None] for a in history.arrays())
    return Batch(items=items, labels=labels, action_values=action_values, timestamps=timestamps,
                 lengths=torch.tensor([len(history)], device=device))


def read_item_index(path: Path, num_items: int) -> ItemIndex:
    """The original ↔ dense item ids in `path` (a run's or a prepared dataset's item_ids.parquet);
    `DataError` if missing or not the model's."""
    if not path.is_file():
        raise DataError(f"{path}: not found; a run keeps its item ids, or names its prepared data "
                        "(config.yaml data.path, or --data)")
    try:
        table = pl.read_parquet(path, columns=["item", "item_id"])
    except (OSError, pl.exceptions.PolarsError) as err:
        raise DataError(f"{path}: cannot read the item ids: {_first_line(err)}") from None
    dense = table["item"].to_numpy()
    if len(table) != num_items or (len(dense) and (dense.min() < 1 or dense.max() > num_items)):
        raise DataError(f"{path}: holds {len(table)} items, the model was trained on {num_items}")
    return ItemIndex.from_table(dense.tolist(), table["item_id"].to_list(), num_items)


def _count(values: object, field: str) -> int:
    """len(values) of a list-like argument; `InvalidInput` naming `field` for a string or a scalar."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise InvalidInput(field, f"must be a list, got {type(values).__name__}")
    return len(values)


def _user_key(user: object) -> str:
    if isinstance(user, bool) or not isinstance(user, (str, int)) or user == "":
        raise InvalidInput("user", f"must be a non-empty string or an integer, got {user!r}")
    return str(user)


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
