"""HSTU pointwise attention a block of queries at a time: memory O(block · L), never O(L²).

    out_n = Σ_j A_nj x_j − A_nn y_n,   A_nj = SiLU(q_n·k_j/√d + rab_nj) / (n + 1) over j ≤ n
                                        (j < n with `strict`)

`y` is the diagonal correction: mvp passes x = v + u, y = u, so that the action values reach
position n from j < n only. A query block [start, stop) needs keys [0, stop) — the blocks
above the diagonal are never computed. The backward recomputes each block's scores from q, k
and the bias tables instead of storing them, so training memory stays linear in L too.

Serving (one user, forward only) has three shapes: `serving_forward`, a history or the last Lq
of its L positions (new events continuing a cached history); `blocked_after_forward`, K target
queries that all sit at position L, after every key (the ranker's candidates); `warm_forward`,
a few new tokens and the targets after them (a warm request: one pass per layer).
Serving's tables carry a `blocks` memo (`bias.block_bias`, `bias.block_mask`): each block's
bias and mask are made once per call, for every layer, and each block's scores are one batched
matmul with the bias as its addend (`_weights`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from causalgr.models.kernels.bias import (
    SERVING_ROWS,
    BiasTables,
    add_block_bias,
    allowed_over_count,
    bias_table_grads,
    block_bias,
    block_mask,
    distances,
    own_key_bias,
    time_buckets,
)

SLAB_ELEMENTS = 2**21  # 8 MB of float32 scores per block
MIN_ROWS = 16


def _scores(q_block: torch.Tensor, k: torch.Tensor, tables: BiasTables, start: int, stop: int):
    """Scores of queries [start, stop) against keys [0, stop), [B, H, rows, stop], and the bias indices."""
    scores = q_block @ k[:, :, :stop].transpose(-2, -1)  # [B, H, rows, stop]
    scores.mul_(1.0 / math.sqrt(q_block.shape[-1]))
    distance = distances(start, stop, stop, tables.position.shape[0], q_block.device)
    bucket = time_buckets(tables.timestamps, start, stop, stop, tables.time.shape[0])
    add_block_bias(scores, tables, distance, bucket)
    return scores, distance, bucket


def block_rows(q: torch.Tensor, block: int | None, keys: int | None = None) -> int:
    """Query rows per block: `block`, or as many as keep one [B, H, rows, keys] slab near SLAB_ELEMENTS
    (`keys` defaults to the number of queries).

    Small slabs matter on CPU: a fresh multi-MB tensor costs its page faults on every block.
    """
    if block is not None:
        return block
    B, H, L, _ = q.shape
    return max(MIN_ROWS, min(L, SLAB_ELEMENTS // (B * H * max(keys or L, 1))))


def blocked_forward(
    q: torch.Tensor, k: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None, tables: BiasTables,
    strict: bool = False, block: int | None = None,
) -> torch.Tensor:
    """out [B, H, L, dh] (see the module docstring); q, k, x, y [B, H, L, dh]."""
    L, block = k.shape[-2], block_rows(q, block)
    out = torch.empty_like(x)
    for start in range(0, L, block):
        stop = min(start + block, L)
        scores, _, _ = _scores(q[:, :, start:stop], k, tables, start, stop)
        weights = F.silu(scores, inplace=True).mul_(allowed_over_count(start, stop, strict, q.dtype, q.device))
        out[:, :, start:stop] = weights @ x[:, :, :stop]
        if y is not None:
            diagonal = weights[..., start:stop].diagonal(dim1=-2, dim2=-1)  # A_nn, [B, H, rows]
            out[:, :, start:stop] -= diagonal[..., None] * y[:, :, start:stop]
        del scores, weights  # before the next block's slab is made
    return out


def serving_forward(
    q: torch.Tensor, k: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None, tables: BiasTables,
    strict: bool = False, block: int = SERVING_ROWS,
) -> torch.Tensor:
    """`blocked_forward` of one serving call, forward only: k, x [B, H, L, dh]; q, y [B, H, Lq, dh]
    at the last Lq ≤ L positions (Lq < L continues after cached keys). Each block's bias and mask
    are made once per call and shared by the layers (`tables.blocks`), and its scores are one
    batched matmul with the bias as its addend (`_weights`)."""
    L = k.shape[-2]
    first = L - q.shape[-2]  # positions [first, L) are the queries
    out = x.new_empty(*q.shape[:-1], x.shape[-1])
    for start in range(first, L, block):
        stop = min(start + block, L)
        rows = slice(start - first, stop - first)
        bias = block_bias(tables, start, stop, stop).flatten(0, 1)  # [B·H, rows, stop]
        weights = _weights(q[:, :, rows], k[:, :, :stop], bias, block_mask(tables, start, stop, strict))
        out[:, :, rows] = weights @ x[:, :, :stop]
        if y is not None:
            diagonal = weights[..., start:stop].diagonal(dim1=-2, dim2=-1)  # A_nn, [B, H, rows]
            out[:, :, rows] -= diagonal[..., None] * y[:, :, rows]
    return out


def _weights(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, over_count: torch.Tensor | None = None) -> torch.Tensor:
    """Serving's SiLU(q·kᵀ/√d + rab) ⊙ over_count for q [B, H, R, dh] over k [B, H, S, dh]:
    [B, H, R, S]. bias [B·H, R, S] (or a row to broadcast) is the batched matmul's addend. Without
    `over_count` (every row sees every key) the caller divides by the count after the matmul with
    the values, on [R, dh] rather than on this slab."""
    B, H, R, dh = q.shape
    S = k.shape[-2]
    scores = torch.baddbmm(bias, q.reshape(B * H, R, dh), k.reshape(B * H, S, dh).transpose(1, 2), alpha=dh**-0.5)
    weights = F.silu(scores, inplace=True)
    return (weights if over_count is None else weights.mul_(over_count)).view(B, H, R, S)


def blocked_after_forward(
    q: torch.Tensor, k: torch.Tensor, x: torch.Tensor, tables: BiasTables, block: int | None = None
) -> torch.Tensor:
    """K target queries q [B, H, K, dh], all at position L and time tables.timestamps[:, L], over every
    key k, x [B, H, L, dh] (tables.timestamps [B, L + 1]): Σ_j SiLU(q·k_j/√d + rab_Lj) / (L + 1) · x_j.

    Every target shares one bias row, so a block of targets is one [B, H, rows, L] slab.
    """
    K, L = q.shape[-2], k.shape[-2]
    block = block_rows(q, block, L)
    bias = block_bias(tables, L, L + 1, L).flatten(0, 1)  # [B·H, 1, L]: the one row every target shares
    out = x.new_empty(*q.shape[:-1], x.shape[-1])
    for start in range(0, K, block):
        stop = min(start + block, K)
        out[:, :, start:stop] = _weights(q[:, :, start:stop], k, bias) @ x
    return out.div_(L + 1)


def warm_forward(
    q: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, k: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None,
    tables: BiasTables, new: int,
) -> torch.Tensor:
    """A warm request, one layer: q [B, H, M + K, dh] holds M new tokens at positions L..L + M − 1,
    then K targets at position L + M; k, x [B, H, L + M, dh] the cached keys and values followed
    by the new tokens' (mvp: x = v + u, y [B, H, M, dh] the new tokens' u); k_t, v_t [B, H, K, dh]
    the targets' own key and value; tables.timestamps [B, L + M + 1], the targets' time last. New
    token n sees keys j ≤ n (u_j for j < n); a target sees every key and itself. Equals
    `blocked_forward` for the new tokens, then `blocked_after_forward` plus the own term
    (`attention.target_pointwise_attention`) for the targets: [B, H, M + K, dh].

    The M rows and the K target rows are a slab each: the targets share one bias row (broadcast
    as the matmul's addend) and one count, applied after the matmul with the values. The bias
    and mask rows are made once per call and shared by the layers (`bias.block_bias`).
    """
    S, dh = k.shape[-2], q.shape[-1]
    rows = block_bias(tables, S - new, S + 1, S).flatten(0, 1)  # [B·H, M + 1, S]: the new tokens', then the targets'
    own_bias = own_key_bias(tables)[:, None]  # [H, 1]
    own = F.silu(torch.add(own_bias, (q[:, :, new:] * k_t).sum(-1), alpha=dh**-0.5))  # [B, H, K]
    targets = (_weights(q[:, :, new:], k, rows[:, new:]) @ x).addcmul_(own[..., None], v_t).div_(S + 1)
    if not new:
        return targets
    weights = _weights(q[:, :, :new], k, rows[:, :new], block_mask(tables, S - new, S, False))  # [B, H, M, S]
    continued = weights @ x
    if y is not None:  # the new tokens' own action values: A_nn·u_n, which j < n forbids
        continued -= weights[..., S - new :].diagonal(dim1=-2, dim2=-1)[..., None] * y
    return torch.cat([continued, targets], dim=2)


def _matmul_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b [B, H, m, n] written into `out` (contiguous, same shape), so no new slab is made."""
    B, H, m, n = out.shape
    torch.bmm(a.reshape(B * H, m, -1), b.reshape(B * H, -1, n), out=out.view(B * H, m, n))
    return out


def blocked_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None,
    tables: BiasTables, strict: bool = False, block: int | None = None,
):
    """Gradients (q, k, x, y, position table, time table) of `blocked_forward`, one recomputed block at a time."""
    L, scale, block = q.shape[-2], 1.0 / math.sqrt(q.shape[-1]), block_rows(q, block)
    grad_q, grad_k, grad_x = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(x)
    diagonal = None if y is None else q.new_empty(q.shape[:-1])  # A_nn, [B, H, L]: grad_y = −A_nn·g_n after the loop
    grad_position, grad_time = torch.zeros_like(tables.position), torch.zeros_like(tables.time)
    for start in range(0, L, block):
        stop = min(start + block, L)
        q_block, grad_block = q[:, :, start:stop], grad_out[:, :, start:stop]  # [B, H, rows, dh]
        # Two [B, H, rows, stop] slabs are alive at once (plus the int32 time buckets), and both are
        # dropped before the next block's: this working set is the part of a training step's peak
        # memory that does not grow with the number of tokens. Slab 1 holds the scores, then the
        # weights, then their gradient; slab 2 the sigmoid, then SiLU's slope.
        scores, distance, bucket = _scores(q_block, k, tables, start, stop)
        slope = torch.sigmoid(scores)  # σ(s) for now
        weights = scores.mul_(slope)  # SiLU(s) = s·σ, over the scores
        slope.addcmul_(weights, slope, value=-1.0).add_(weights)  # SiLU'(s) = σ + SiLU(s)·(1 − σ), over σ
        mask = allowed_over_count(start, stop, strict, q.dtype, q.device)
        weights.mul_(mask)  # A, [B, H, rows, stop]
        grad_x[:, :, :stop] += weights.transpose(-2, -1) @ grad_block
        if y is not None:
            diagonal[..., start:stop] = weights[..., start:stop].diagonal(dim1=-2, dim2=-1)
        grad_weights = _matmul_into(weights, grad_block, x[:, :, :stop].transpose(-2, -1))  # ∂/∂A, over A
        if y is not None:
            grad_weights[..., start:stop].diagonal(dim1=-2, dim2=-1).sub_((grad_block * y[:, :, start:stop]).sum(-1))
        grad_scores = grad_weights.mul_(slope).mul_(mask)
        del slope
        grad_q[:, :, start:stop] = (grad_scores @ k[:, :, :stop]) * scale
        grad_k[:, :, :stop] += (grad_scores.transpose(-2, -1) @ q_block) * scale
        bias_table_grads(grad_scores, distance, bucket, grad_position, grad_time)
        del scores, weights, grad_weights, grad_scores, bucket
    grad_y = None if y is None else -diagonal[..., None] * grad_out
    return grad_q, grad_k, grad_x, grad_y, grad_position, grad_time
