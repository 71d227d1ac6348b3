"""HSTU's relative attention bias, as small tables plus timestamps, made one block at a time.

rab[b, h, n, j] = position[min(n − j, P − 1), h] + time[bucket(t_n − t_j), h]. The full
[B, H, L, L] tensor is what the reference materialises (`attention.relative_bias`); the fast
paths only ever build the [B, H, rows, keys] slab of the query block they are working on.

Training adds a block's bias into its scores head by head (`add_block_bias`), as it goes: no
second slab. Serving (forward only, one user) gives the tables a `blocks` dict: each block's
bias and mask are then made once per call (`block_bias`, `block_mask`) and every layer uses the
same tensors — the layers share one `RelativeBias`, so the bias does not change between them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from causalgr.models.timegaps import log_bucket


SERVING_ROWS = 128  # serving's query rows per block (one user): small blocks skip most of the masked upper triangle


class BiasTables(NamedTuple):
    position: torch.Tensor  # [P, H] bias per distance n − j (clamped to P − 1)
    time: torch.Tensor  # [Tb, H] bias per log-bucketed time gap t_n − t_j
    timestamps: torch.Tensor  # [B, L] long, seconds
    blocks: dict | None = None  # serving: (start, stop, keys) → that block's bias, shared by the layers (`block_bias`)


@torch.compiler.assume_constant_result
def bucket_edges(buckets: int, device: torch.device) -> torch.Tensor:
    """θ_k = the smallest gap that `log_bucket` puts in bucket ≥ k, k = 1..buckets − 1: [buckets − 1] long.

    `log_bucket` is non-decreasing in the gap, so bucket(gap) = #{k : gap ≥ θ_k}. Found once per
    bucket count and device by a binary search on `log_bucket` itself, so the thresholds inherit
    its float32 rounding exactly. A constant of the model's settings: torch.compile takes the
    result as it is rather than tracing the search, whose data-dependent loop would break the graph.
    """
    return _searched_edges(buckets, device)


@functools.lru_cache(maxsize=None)
def _searched_edges(buckets: int, device: torch.device) -> torch.Tensor:
    k = torch.arange(1, buckets)
    lo, hi = torch.zeros_like(k), torch.full_like(k, 2**62)
    while bool((lo < hi).any()):
        mid = (lo + hi) // 2
        reached = log_bucket(mid, buckets) >= k
        hi, lo = torch.where(reached, mid, hi), torch.where(reached, lo, mid + 1)
    return lo.to(device)


def time_buckets(timestamps: torch.Tensor, start: int, stop: int, keys: int, buckets: int) -> torch.Tensor:
    """`log_bucket(t_n − t_j)` for queries [start, stop) × keys [0, keys): [B, rows, keys] int32.

    Two passes over the block (a subtraction and a binary search among the bucket edges)
    instead of the eight of the float32 formula. int32 rather than int64 halves the index,
    which lives through a whole block of the backward.
    """
    gaps = timestamps[:, start:stop, None] - timestamps[:, None, :keys]  # [B, rows, keys]
    return torch.bucketize(gaps, bucket_edges(buckets, timestamps.device), right=True, out_int32=True)


def distances(start: int, stop: int, keys: int, positions: int, device: torch.device) -> torch.Tensor:
    """min(n − j, P − 1) clamped at 0 for queries [start, stop) × keys [0, keys): [rows, keys] long."""
    rows = torch.arange(start, stop, device=device)
    return (rows[:, None] - torch.arange(keys, device=device)[None, :]).clamp_(0, positions - 1)


def add_block_bias(scores: torch.Tensor, tables: BiasTables, distance: torch.Tensor, bucket: torch.Tensor) -> None:
    """scores [B, H, rows, keys] += rab of the block, one head at a time (a 1-D table lookup is cheap)."""
    for h in range(scores.shape[1]):
        scores[:, h] += tables.position[:, h][distance]  # [rows, keys], broadcast over B
        scores[:, h] += tables.time[:, h][bucket]  # [B, rows, keys]


def block_bias(tables: BiasTables, start: int, stop: int, keys: int) -> torch.Tensor:
    """rab of queries [start, stop) × keys [0, keys), materialised: [B, H, rows, keys], contiguous.
    Made once per call and block when `tables.blocks` is a dict (serving), else each time.

    Equal bit for bit to the reference's position[distance] + time[bucket]. When every row's
    timestamps are in order (a served history always is; checked once per call), by runs
    (`_bias_in_order`); otherwise one gather per block from a table of every position + time
    sum (P·Tb rows, made once per call).
    """
    if tables.blocks is None:  # no memo: training, and torch.compile (a block's bounds as keys would fix the graph's sizes)
        return _made_block_bias(tables, start, stop, keys, {})
    if (start, stop, keys) not in tables.blocks:
        tables.blocks[(start, stop, keys)] = _made_block_bias(tables, start, stop, keys, tables.blocks)
    return tables.blocks[(start, stop, keys)]


def _made_block_bias(tables: BiasTables, start: int, stop: int, keys: int, memo: dict) -> torch.Tensor:
    if _in_order(tables, memo):
        return _bias_in_order(tables, start, stop, keys, memo)
    (P, H), buckets = tables.position.shape, tables.time.shape[0]
    if "sums" not in memo:
        memo["sums"] = sums_table(tables.position, tables.time)
    distance = distances(start, stop, keys, P, tables.timestamps.device)  # [rows, keys]
    bucket = time_buckets(tables.timestamps, start, stop, keys, buckets)  # [B, rows, keys]
    return memo["sums"][:, distance * buckets + bucket].transpose(0, 1).contiguous()  # [B, H, rows, keys]


def weight_memo(position: torch.Tensor, time: torch.Tensor) -> dict:
    """The part of a serving memo that depends on the weights alone, for a caller to keep between
    calls (`RelativeBias.serving`): the sums table (`block_bias`'s gather) and the position
    windows (`_bias_in_order`), under the keys those read. A memo without them makes each when needed."""
    return {"sums": sums_table(position, time), "positions": position_windows(position, SERVING_ROWS)}


def own_key_bias(tables: BiasTables) -> torch.Tensor:
    """rab of a query's own key — distance 0, time gap 0 (bucket 0) — [H]: what a target token adds
    for itself (`attention.target_pointwise_attention`, `blocked.warm_forward`)."""
    return tables.position[0] + tables.time[0]


def sums_table(position: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
    """[H, P·Tb]: position[d] + time[b] at column d·Tb + b, every sum the bias can take."""
    (P, H), buckets = position.shape, time.shape[0]
    return (position[:, None] + time[None]).view(P * buckets, H).t()


def _in_order(tables: BiasTables, memo: dict) -> bool:
    """Whether every row's timestamps are non-decreasing, decided once per call (memo "in order").
    Under torch.compile or torch.export: False, the general path, which needs no data-dependent branch."""
    if "in order" not in memo:
        times = tables.timestamps
        memo["in order"] = not torch.compiler.is_compiling() and bool((times[:, 1:] >= times[:, :-1]).all())
    return memo["in order"]


def _bias_in_order(tables: BiasTables, start: int, stop: int, keys: int, memo: dict) -> torch.Tensor:
    """`block_bias` for timestamps in order, with no per-element search or gather.

    Time: row n's gap to key j shrinks as j grows, so its bucket falls from Tb − 1 to 0 in runs:
    key j is in bucket ≥ k while j < c_nk = #{j : t_j ≤ t_n − θ_k} (`bucket_edges`; one binary
    search per row and edge, over every timestamp of the call: θ_1 = 1, so no key j ≥ n counts).
    Each bucket's bias is repeated over its run. Position: a window of
    `position_windows`, made once per model (`RelativeBias.serving`) or call (`memo`).
    """
    (P, H), buckets = tables.position.shape, tables.time.shape[0]
    times = tables.timestamps
    B, rows = times.shape[0], stop - start
    edges = bucket_edges(buckets, times.device).flip(0)  # θ_k for k = Tb − 1 down to 1
    cuts = torch.searchsorted(times, (times[:, start:stop, None] - edges).view(B, -1), right=True)
    cuts = cuts.view(B, rows, buckets - 1)  # c_nk, ascending
    runs = torch.diff(cuts, dim=2, prepend=cuts.new_zeros(B, rows, 1), append=cuts.new_full((B, rows, 1), keys))
    values = tables.time.t().flip(-1)[None, :, None].expand(B, H, rows, buckets)  # buckets Tb − 1, …, 0, as the runs
    bias = values.reshape(-1).repeat_interleave(runs[:, None].expand(B, H, rows, buckets).reshape(-1),
                                                output_size=B * H * rows * keys).view(B, H, rows, keys)
    if "positions" not in memo:
        memo["positions"] = position_windows(tables.position, SERVING_ROWS)
    windows, offset = memo["positions"], P  # [H, SERVING_ROWS, P + SERVING_ROWS]
    if rows > windows.shape[1] or start > offset or keys - start > windows.shape[1]:  # past serving's blocks
        windows, offset = position_windows(tables.position, rows, offset=start, width=keys), start  # this block's own
    return bias.add_(windows[:, :rows, offset - start : offset - start + keys])  # time + position, as the reference adds


def position_windows(position: torch.Tensor, rows: int, offset: int | None = None, width: int | None = None) -> torch.Tensor:
    """W [H, rows, width], W[h, r, c] = position[clamp(r − c + offset, 0, P − 1), h]; offset P and width
    P + rows unless given. For queries [start, start + rows) × keys [0, keys) with start ≤ offset and
    keys − start ≤ width − offset, W[:, :rows, offset − start : offset − start + keys] is their position
    bias (there r − c + offset = n − j): one view for every such block, of any call."""
    P = position.shape[0]
    offset = P if offset is None else offset
    width = P + rows if width is None else width
    r, c = torch.arange(rows, device=position.device), torch.arange(width, device=position.device)
    return position.t()[:, (r[:, None] - c[None, :] + offset).clamp_(0, P - 1)]


def block_mask(tables: BiasTables, start: int, stop: int, strict: bool) -> torch.Tensor:
    """[rows, stop]: 1/(n + 1) where key j may be seen by query n (j ≤ n, or j < n when `strict`),
    else 0 — mask and normaliser in one. Made once per call and block when `tables.blocks` is a dict."""
    made = functools.partial(allowed_over_count, start, stop, strict, tables.position.dtype, tables.position.device)
    if tables.blocks is None:  # as in `block_bias`
        return made()
    if ("mask", start, stop, strict) not in tables.blocks:
        tables.blocks[("mask", start, stop, strict)] = made()
    return tables.blocks[("mask", start, stop, strict)]


def allowed_over_count(start: int, stop: int, strict: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[rows, stop]: 1/(n + 1) where key j may be seen by query n, else 0 — mask and normaliser in one."""
    rows = torch.arange(start, stop, device=device)[:, None]
    cols = torch.arange(stop, device=device)[None, :]
    allowed = cols < rows if strict else cols <= rows
    return allowed.to(dtype) / (rows + 1).to(dtype)


def bias_table_grads(
    grad_scores: torch.Tensor, distance: torch.Tensor, bucket: torch.Tensor, position: torch.Tensor, time: torch.Tensor
) -> None:
    """Accumulate ∂loss/∂rab of one block (grad_scores [B, H, rows, keys], contiguous) into the table
    grads [P, H], [Tb, H]. One (row, head) at a time, so every operand is a view: no copy of the block
    and no int64 copy of the buckets."""
    B, H = grad_scores.shape[:2]
    for h in range(H):
        position[:, h].index_add_(0, distance.view(-1), grad_scores[:, h].sum(0).view(-1).to(position.dtype))
        for b in range(B):
            time[:, h].index_add_(0, bucket[b].view(-1), grad_scores[b, h].view(-1).to(time.dtype))
