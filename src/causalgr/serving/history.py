"""A user's history as the ranker holds it, the checks that make one, and the per-user cache."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from causalgr.errors import CausalgrError
from causalgr.models.cache import HistoryState


class InvalidInput(CausalgrError):
    """A request the ranker refuses; `field` names the argument (and `index` the entry) at fault."""

    def __init__(self, field: str, message: str, index: int | None = None):
        self.field, self.index, self.message = field, index, message
        super().__init__(f"{field}{'' if index is None else f'[{index}]'}: {message}")


@dataclass(frozen=True)
class History:
    """Events oldest first, ids already dense (the unknown item included)."""

    items: np.ndarray  # [N] int64
    timestamps: np.ndarray  # [N] int64, seconds, non-decreasing
    labels: np.ndarray  # [N, T] float32 in {0, 1}
    action_values: np.ndarray  # [N] int64, 0 = none

    @classmethod
    def empty(cls, num_tasks: int) -> History:
        none = np.zeros(0, dtype=np.int64)
        return cls(none, none, np.zeros((0, num_tasks), dtype=np.float32), none)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def nbytes(self) -> int:
        return self.items.nbytes + self.timestamps.nbytes + self.labels.nbytes + self.action_values.nbytes

    def then(self, later: History) -> History:
        """These events followed by `later`; `InvalidInput` if `later` starts before these end."""
        self.check_followed_by(later)
        return History(*(np.concatenate([a, b]) for a, b in zip(self.arrays(), later.arrays())))

    def check_followed_by(self, later: History) -> None:
        """`InvalidInput` if `later` starts before these events end (`then` without the copy)."""
        if len(self) and len(later) and later.timestamps[0] < self.timestamps[-1]:
            raise InvalidInput("timestamps", f"{later.timestamps[0]} is earlier than the last event already "
                               f"in the history ({self.timestamps[-1]}); events must come oldest first", 0)

    def recent(self, count: int) -> History:
        """The last `count` events (all of them when there are fewer)."""
        return self if len(self) <= count else History(*(a[len(self) - count :] for a in self.arrays()))

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.items, self.timestamps, self.labels, self.action_values


def check_timestamps(values: object, field: str = "timestamps") -> np.ndarray:
    """Whole, finite, non-negative, non-decreasing seconds as int64 [N]; `InvalidInput` naming `field` if not.

    Out-of-order events are refused rather than sorted: the caller knows the true order of
    events with equal or swapped times, the ranker does not.
    """
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and (array.dtype.kind not in "iuf")):
        raise InvalidInput(field, "must be a list of whole seconds")
    if array.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(array) | (array != np.floor(array)))
        if bad.size:
            raise InvalidInput(field, f"{array[bad[0]]} is not a whole number of seconds", int(bad[0]))
    if array.size and array.min() < 0:  # the index only for a refused request
        first = int(np.flatnonzero(array < 0)[0])
        raise InvalidInput(field, f"{array[first]} is negative", first)
    if array.size > 1 and (array[1:] < array[:-1]).any():
        n = int(np.flatnonzero(array[1:] < array[:-1])[0]) + 1
        raise InvalidInput(field, f"{array[n]} is earlier than the event before it ({array[n - 1]}); "
                           "events must come oldest first", n)
    return array.astype(np.int64)


def check_timestamp(value: object, history: History) -> int:
    """The request time: whole non-negative seconds, not before the last history event."""
    if type(value) is int and value >= 0:  # the usual case, without numpy (a bool is not an int here)
        timestamp = value
    else:
        try:
            (timestamp,) = check_timestamps([value], "timestamp")
        except InvalidInput as err:
            raise InvalidInput("timestamp", err.message) from None
    if len(history) and timestamp < history.timestamps[-1]:
        raise InvalidInput("timestamp", f"{timestamp} is earlier than the last history event ({history.timestamps[-1]})")
    return int(timestamp)


def check_labels(values: object, length: int, num_tasks: int) -> np.ndarray:
    """Actions as float32 [N, T] in {0, 1}; `InvalidInput("labels", …)` otherwise."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInput("labels", f"must be {length} rows of {num_tasks} values in {{0, 1}}, one per task") from None
    if array.size == 0:
        array = array.reshape(0, num_tasks)
    if array.shape != (length, num_tasks):
        raise InvalidInput("labels", f"must be {length} rows of {num_tasks} values (one per task), got shape {list(array.shape)}")
    bad = np.flatnonzero(((array != 0) & (array != 1)).any(axis=1))
    if bad.size:
        raise InvalidInput("labels", f"{array[bad[0]].tolist()} has a value other than 0 or 1", int(bad[0]))
    return array


def check_action_values(values: object, length: int, vocabulary: int) -> np.ndarray:
    """Action values as int64 [N] in 0..vocabulary - 1 (all 0, or None, when the model has none)."""
    if values is None:
        return np.zeros(length, dtype=np.int64)
    array = np.asarray(values)
    if array.shape != (length,) or (array.size and array.dtype.kind not in "iu"):
        raise InvalidInput("action_values", f"must be {length} whole numbers, one per event")
    bad = np.flatnonzero((array < 0) | (array >= max(vocabulary, 1)))
    if bad.size:
        allowed = f"0..{vocabulary - 1}" if vocabulary > 0 else "0 (the model has no action values)"
        raise InvalidInput("action_values", f"{array[bad[0]]} is outside {allowed}", int(bad[0]))
    return array.astype(np.int64)


@dataclass(frozen=True)
class CachedHistory:
    """One user's cached history: its events (the last max_len − 1) and what the model made of them."""

    events: History
    state: HistoryState  # each layer's keys/values and the formulation's extras (`causalgr.models.cache`)

    @property
    def nbytes(self) -> int:
        return self.events.nbytes + self.state.nbytes


class HistoryCache:
    """Per-user `CachedHistory` bounded in bytes: least recently used users leave first. Thread-safe.

    Entries are never changed, only replaced: a request keeps reading the entry it got while
    another request replaces it.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._users: OrderedDict[str, CachedHistory] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, user: str) -> CachedHistory | None:
        with self._lock:
            entry = self._users.get(user)
            if entry is not None:
                self._users.move_to_end(user)
            return entry

    def replace(self, user: str, old: CachedHistory | None, new: CachedHistory) -> bool:
        """Store `new` for `user` if its entry is still `old` (None: none); False, and nothing
        changed, if another caller replaced or evicted it since. Computing `new` happens outside the
        lock, so concurrent appends for one user retry rather than interleave out of time order.
        The user just written never leaves; others leave, least recently used first, until the
        cache fits its bytes."""
        with self._lock:
            if self._users.get(user) is not old:
                return False
            self._bytes += new.nbytes - (old.nbytes if old is not None else 0)
            self._users[user] = new
            self._users.move_to_end(user)
            while self._bytes > self.max_bytes and len(self._users) > 1:
                _, leaving = self._users.popitem(last=False)
                self._bytes -= leaving.nbytes
            return True

    def __contains__(self, user: str) -> bool:
        """Whether `user` is cached, without making it recently used."""
        with self._lock:
            return user in self._users

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._users)
