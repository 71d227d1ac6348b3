"""Synthetic event data with a planted item→action causal chain (docs/design.md §3).

The generative story, per user u with events n = 1..N:

- Items belong to `clusters`; item i has a unit latent vector `v_i` near its cluster's centre.
- User u has a taste vector `w_u` (norm √D, so the *affinity* `x_ui = w_u · v_i` is roughly
  standard normal over items) and a hidden per-cluster offset `δ_uc` that never touches which
  items u sees: only u's own past actions reveal it.
- The next item is drawn i.i.d. from `softmax_i(exposure_weight · x_ui + log popularity_i)`.
- Task t's label is drawn with probability

      p_nt = σ(α_t · (x_{u i_n} − x̄_u + δ_{u c(i_n)}) + β_t + γ_t · s_nt),

  with x̄_u the mean affinity of what u is shown (so positive rates stay near σ(β_t)), and
  `s_nt` the planted causal term: a similarity-weighted average of u's earlier
  centred actions of task t,

      s_nt = Σ_{j<n} K(c_n, c_j) · z_jt / (Σ_{j<n} K(c_n, c_j) + prior_weight),
      z_jt = (a_jt − r_t) / √(r_t (1 − r_t)),  r_t = σ(β_t),
      K(c, c') = exp(similarity_sharpness · (cos(centre_c, centre_c') − 1)),

  so `s_n1 = 0` and the prior weight acts as a "no evidence" slot. This is exactly softmax
  attention over past actions with a null key, the structure `lfa`/`mvp` model directly.

The stored `prob_<task>` is p_nt, so the Bayes floor (the loss of the true probabilities) is
known. `reference_probabilities` recomputes p from the definition, one event at a time; the
vectorised generator is tested against it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pydantic
from pydantic import Field

from causalgr.data.events import EventTable

_DAY = 86_400
# Exposure sampling holds a [users, items] float64 CDF per block; this bounds it to 32 MB.
_EXPOSURE_BLOCK_ELEMENTS = 1 << 22
# The action roll-out holds [users, clusters, tasks + 1] running sums and [users, events, tasks]
# draws, probabilities and labels per block; this bounds each to 32 MB of float32.
_ROLLOUT_BLOCK_ELEMENTS = 1 << 23
_PROB_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] so every label has finite loss


class SynthSettings(pydantic.BaseModel, extra="forbid"):
    """Every knob of the synthetic generator; `causalgr data synth` has a flag for each."""

    users: int = Field(2000, ge=1, description="number of users")
    items: int = Field(1000, ge=1, description="number of items")
    clusters: int = Field(20, ge=1, description="number of item clusters")
    latent_dim: int = Field(16, ge=1, description="dimension of item and taste vectors")
    item_spread: float = Field(0.2, ge=0, description="spread of item vectors around their cluster centre")
    events_mean: float = Field(100.0, gt=0, description="mean events per user (lognormal before clipping)")
    events_sigma: float = Field(0.5, ge=0, description="sigma of the lognormal events-per-user distribution")
    events_min: int = Field(20, ge=1, description="fewest events per user")
    events_max: int = Field(300, ge=1, description="most events per user")
    tasks: tuple[str, ...] = Field(
        ("click", "like", "share"), description='task names ("click,like,share") or a count'
    )
    alpha: tuple[float, ...] = Field((), description="per-task weight of the affinity (default 0.7)")
    beta: tuple[float, ...] = Field((), description="per-task bias; sets the positive rates (default -1.5·t)")
    gamma: tuple[float, ...] = Field((), description="per-task weight of the causal term s_n (default 1.5)")
    exposure_weight: float = Field(2.0, description="how strongly affinity drives which items a user sees")
    popularity_skew: float = Field(0.8, ge=0, description="Zipf exponent of item popularity")
    taste_offset: float = Field(
        0.2, ge=0, description="std of the hidden per-user, per-cluster offset that only actions reveal"
    )
    similarity_sharpness: float = Field(
        5.0, ge=0, description="kernel exp(k·(cos−1)) between cluster centres that weights past actions"
    )
    prior_weight: float = Field(1.0, gt=0, description="weight of the 'no evidence' slot in s_n")
    gap_median: float = Field(120.0, gt=0, description="median seconds between events in a session")
    gap_sigma: float = Field(1.0, ge=0, description="lognormal sigma of the gaps")
    session_prob: float = Field(0.1, ge=0, le=1, description="probability that a gap is a session break")
    session_gap_median: float = Field(float(_DAY), gt=0, description="median seconds of a session break")
    start_time: int = Field(1_600_000_000, ge=0, description="earliest first timestamp (seconds)")
    seed: int = Field(0, ge=0, description="random seed")

    @pydantic.field_validator("tasks", "alpha", "beta", "gamma", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """Accept "a,b,c" (the command line passes text) and a single number beside a list."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (int, float)):
            return [value]
        return value

    @pydantic.field_validator("tasks")
    @classmethod
    def _task_count(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        """A single number names that many tasks: "4" → task0..task3."""
        if len(tasks) == 1 and tasks[0].isdigit():
            return tuple(f"task{t}" for t in range(int(tasks[0])))
        return tasks

    @pydantic.model_validator(mode="after")
    def _check(self) -> SynthSettings:
        if not self.tasks:
            raise ValueError("at least one task is needed")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"task names must be distinct, got {','.join(self.tasks)}")
        count = len(self.tasks)
        defaults = {"alpha": (0.7,) * count, "beta": tuple(-1.5 * t for t in range(count)), "gamma": (1.5,) * count}
        for name, default in defaults.items():
            values = getattr(self, name)
            if not values:
                setattr(self, name, default)
            elif len(values) == 1 and count > 1:  # one value stands for every task
                setattr(self, name, values * count)
            elif len(values) != count:
                raise ValueError(f"{name} has {len(values)} values for {count} tasks")
        if self.events_min > self.events_max:
            raise ValueError(f"events_min {self.events_min} > events_max {self.events_max}")
        if self.clusters > self.items:
            raise ValueError(f"clusters {self.clusters} > items {self.items}: every cluster needs an item")
        return self

    def sha256(self) -> str:
        """Checksum of the settings: identical settings generate identical data."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


@dataclass
class SynthWorld:
    """The latent structure behind the events; fixed by the settings' seed."""

    item_vectors: np.ndarray  # [I, D] float32, unit norm
    item_cluster: np.ndarray  # [I] int64
    log_popularity: np.ndarray  # [I] float32
    cluster_kernel: np.ndarray  # [C, C] float32, K(c, c'), 1 on the diagonal
    taste: np.ndarray  # [U, D] float32, norm √D
    offset: np.ndarray  # [U, C] float32, hidden per-cluster preference


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def make_world(settings: SynthSettings) -> SynthWorld:
    """Draw clusters, items, popularity and users from the seed (its own stream, independent of events)."""
    s = settings
    rng = np.random.default_rng([s.seed, 0])
    dim = s.latent_dim
    centres = _unit(rng.standard_normal((s.clusters, dim)))
    # Every cluster gets items: a shuffled round-robin assignment.
    item_cluster = rng.permutation(np.arange(s.items) % s.clusters)
    noise = rng.standard_normal((s.items, dim)) / math.sqrt(dim)
    item_vectors = _unit(centres[item_cluster] + s.item_spread * noise)
    ranks = rng.permutation(s.items) + 1
    log_popularity = -s.popularity_skew * np.log(ranks)
    cluster_kernel = np.exp(s.similarity_sharpness * (centres @ centres.T - 1.0))
    np.fill_diagonal(cluster_kernel, 1.0)
    taste = math.sqrt(dim) * _unit(rng.standard_normal((s.users, dim)))
    offset = s.taste_offset * rng.standard_normal((s.users, s.clusters))
    return SynthWorld(
        item_vectors=item_vectors.astype(np.float32),
        item_cluster=item_cluster.astype(np.int64),
        log_popularity=log_popularity.astype(np.float32),
        cluster_kernel=cluster_kernel.astype(np.float32),
        taste=taste.astype(np.float32),
        offset=offset.astype(np.float32),
    )


def _task_constants(settings: SynthSettings) -> tuple[np.ndarray, ...]:
    """α, β, γ [T] and the centring rate r_t and scale √(r_t(1−r_t)) of actions in s_n."""
    alpha = np.asarray(settings.alpha, dtype=np.float32)
    beta = np.asarray(settings.beta, dtype=np.float32)
    gamma = np.asarray(settings.gamma, dtype=np.float32)
    rate = 1.0 / (1.0 + np.exp(-beta))
    scale = np.sqrt(rate * (1.0 - rate))
    return alpha, beta, gamma, rate.astype(np.float32), scale.astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def reference_probabilities(
    settings: SynthSettings, world: SynthWorld, user: int, items: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """p_nt for one user's sequence (0-based `user`, 0-based `items` [N], `labels` [N, T]), by the definition.

    Plain O(N²) loops: the test oracle for `generate`, and the way to ask "what if an earlier
    label had been different" (labels are taken as given, not drawn).
    """
    alpha, beta, gamma, rate, scale = (c.astype(np.float64) for c in _task_constants(settings))
    clusters = world.item_cluster[items]
    x, exposure = _exposure(settings, world, np.array([user]))
    centred_affinity = x[0] - _mean_shown_affinity(x, exposure)[0]
    probs = np.zeros((len(items), len(settings.tasks)))
    for n, item in enumerate(items):
        c = clusters[n]
        affinity = float(centred_affinity[item]) + world.offset[user, c]
        weights = world.cluster_kernel[c, clusters[:n]].astype(np.float64)  # j < n only
        centred = (labels[:n] - rate) / scale  # [n, T]
        s = weights @ centred / (weights.sum() + settings.prior_weight)
        logit = alpha * affinity + beta + gamma * s
        probs[n] = np.clip(_sigmoid(logit), _PROB_EPS, 1.0 - _PROB_EPS)
    return probs


def _sample_lengths(settings: SynthSettings, rng: np.random.Generator) -> np.ndarray:
    s = settings
    mu = math.log(s.events_mean) - s.events_sigma**2 / 2  # so the unclipped mean is events_mean
    raw = np.exp(mu + s.events_sigma * rng.standard_normal(s.users))
    return np.clip(np.rint(raw), s.events_min, s.events_max).astype(np.int64)


def _exposure(settings: SynthSettings, world: SynthWorld, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Affinity x [b, I] of `users` to every item, and each user's exposure distribution [b, I] (float64)."""
    x = world.taste[users] @ world.item_vectors.T  # [b, I]
    logits = settings.exposure_weight * x + world.log_popularity
    weights = np.exp(logits - logits.max(axis=1, keepdims=True), dtype=np.float64)
    return x, weights / weights.sum(axis=1, keepdims=True)


def _mean_shown_affinity(x: np.ndarray, exposure: np.ndarray) -> np.ndarray:
    """Each user's mean affinity over what they are shown [b]; the action logit uses x minus it.

    Exposure favours liked items, so raw x of shown items sits well above 0; centring keeps
    the positive rate of task t near σ(β_t) whatever `exposure_weight` is.
    """
    return np.einsum("bi,bi->b", exposure, x).astype(np.float32)


def _sample_items(
    settings: SynthSettings, world: SynthWorld, users: np.ndarray, lengths: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Items [b, max length] drawn i.i.d. per user from the exposure distribution, and their centred affinity.

    `users` come sorted by `lengths`, longest first, so each sub-block draws only as many
    items as its longest user needs; positions past a user's length are left 0.
    """
    num_items = settings.items
    steps = int(lengths[0])
    items = np.zeros((len(users), steps), dtype=np.int64)
    affinity = np.zeros((len(users), steps), dtype=np.float32)
    block = max(1, _EXPOSURE_BLOCK_ELEMENTS // num_items)
    for lo in range(0, len(users), block):
        rows = users[lo : lo + block]
        width = int(lengths[lo])
        x, exposure = _exposure(settings, world, rows)
        cdf = np.cumsum(exposure, axis=1)
        cdf /= cdf[:, -1:]
        # One searchsorted for the whole sub-block: shift row r's CDF (and its draws) up by r;
        # sorted queries search faster, and the order is restored afterwards.
        shift = np.arange(len(rows), dtype=np.float64)[:, None]
        draws = rng.random((len(rows), width)) + shift
        order = np.argsort(draws, axis=1)
        found = np.searchsorted((cdf + shift).ravel(), np.take_along_axis(draws, order, axis=1).ravel())
        found = found.reshape(len(rows), width) - shift.astype(np.int64) * num_items
        picked = np.empty_like(found)
        np.put_along_axis(picked, order, np.clip(found, 0, num_items - 1), axis=1)
        items[lo : lo + len(rows), :width] = picked
        shown = np.take_along_axis(x, picked, axis=1) - _mean_shown_affinity(x, exposure)[:, None]
        affinity[lo : lo + len(rows), :width] = shown
    return items, affinity


def _roll_out(
    settings: SynthSettings,
    world: SynthWorld,
    users: np.ndarray,
    items: np.ndarray,
    affinity: np.ndarray,
    lengths: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw labels position by position for a block of users sorted by length (longest first).

    Keeps running per-(user, cluster) sums of centred actions and event counts over j < n, so
    s_n = Σ_c K(c_n, c) · sums[u, c] / (Σ_c K(c_n, c) · counts[u, c] + prior_weight).
    """
    alpha, beta, gamma, rate, scale = _task_constants(settings)
    num_tasks = len(settings.tasks)
    b, steps = items.shape
    clusters = world.item_cluster[items]  # [b, N]
    affinity = affinity + world.offset[users[:, None], clusters]  # hidden offset joins here
    # [b, C, T + 1]: per task the sum of centred actions, and last the number of events.
    history = np.zeros((b, settings.clusters, num_tasks + 1), dtype=np.float32)
    probs = np.zeros((b, steps, num_tasks), dtype=np.float32)  # [b, N, T]
    labels = np.zeros((b, steps, num_tasks), dtype=np.uint8)
    draws = rng.random((b, steps, num_tasks), dtype=np.float32)
    active_counts = (lengths[None, :] > np.arange(steps)[:, None]).sum(axis=1)
    for n in range(steps):
        m = int(active_counts[n])  # users are sorted by length: the first m are still going
        rows = np.arange(m)
        c = clusters[:m, n]
        pooled = np.matmul(world.cluster_kernel[c][:, None, :], history[:m])[:, 0]  # [m, T + 1]
        s = pooled[:, :num_tasks] / (pooled[:, num_tasks:] + settings.prior_weight)  # [m, T]
        logit = alpha * affinity[:m, n, None] + beta + gamma * s
        p = np.clip(_sigmoid(logit), _PROB_EPS, 1.0 - _PROB_EPS).astype(np.float32)
        a = draws[:m, n] < p
        probs[:m, n] = p
        labels[:m, n] = a
        history[rows, c, :num_tasks] += (a - rate) / scale
        history[rows, c, num_tasks] += 1.0
    return probs, labels


def _sample_timestamps(settings: SynthSettings, b: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """[b, steps] int64 seconds, strictly increasing along each row."""
    s = settings
    start = s.start_time + rng.integers(0, 30 * _DAY, size=(b, 1))
    median = np.where(rng.random((b, steps)) < s.session_prob, s.session_gap_median, s.gap_median)
    gaps = np.maximum(1, np.rint(median * np.exp(s.gap_sigma * rng.standard_normal((b, steps)))))
    gaps[:, 0] = 0
    return start + np.cumsum(gaps.astype(np.int64), axis=1)


def generate(settings: SynthSettings) -> EventTable:
    """Draw the synthetic event table; `prob_<task>` holds the probability each label was drawn with.

    Rows are user-major and time-ordered; `user_id` is 1..users, `item_id` 1..items (items never
    drawn are absent). Deterministic for given settings; memory is bounded by processing users
    in blocks. `synthetic_events` gives the same rows block by block, never all at once.
    """
    # Blocks stay separate chunks: a rechunk would briefly hold the table twice.
    frame = pl.concat(list(_blocks(settings)), rechunk=False)
    return EventTable(frame=frame, tasks=tuple(settings.tasks), source="synthetic", sha256=settings.sha256())


def synthetic_events(settings: SynthSettings) -> EventTable:
    """`generate`'s table as chunks (one per block of users), drawn when read."""
    return EventTable(
        frame=None, chunks=lambda: _blocks(settings), tasks=tuple(settings.tasks), source="synthetic",
        sha256=settings.sha256(),
    )


def _blocks(settings: SynthSettings) -> Iterator[pl.DataFrame]:
    """The rows of the synthetic table, one frame per block of users."""
    world = make_world(settings)
    rng = np.random.default_rng([settings.seed, 1])
    lengths = _sample_lengths(settings, rng)
    tasks = settings.tasks
    block = max(
        64,
        min(
            _ROLLOUT_BLOCK_ELEMENTS // (settings.clusters * (len(tasks) + 1)),
            _ROLLOUT_BLOCK_ELEMENTS // (settings.events_max * (len(tasks) + 1)),
        ),
    )
    for lo in range(0, settings.users, block):
        order = lo + np.argsort(-lengths[lo : lo + block], kind="stable")  # longest first
        block_lengths = lengths[order]
        steps = int(block_lengths[0])
        items, affinity = _sample_items(settings, world, order, block_lengths, rng)
        probs, labels = _roll_out(settings, world, order, items, affinity, block_lengths, rng)
        timestamps = _sample_timestamps(settings, len(order), steps, rng)
        back = np.argsort(order)  # rows back to user order
        valid = np.arange(steps)[None, :] < block_lengths[back][:, None]  # [b, N]
        labels, probs = labels[back][valid], probs[back][valid]  # [events, T]
        part = {
            "user_id": np.repeat(order[back] + 1, block_lengths[back]).astype(np.int64),
            "item_id": items[back][valid] + 1,
            "timestamp": timestamps[back][valid],
            **{task: labels[:, t] for t, task in enumerate(tasks)},
            **{f"prob_{task}": probs[:, t].astype(np.float64) for t, task in enumerate(tasks)},
        }
        yield pl.DataFrame(part)
