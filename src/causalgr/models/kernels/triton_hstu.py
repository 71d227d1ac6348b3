"""Our Triton kernels for HSTU's pointwise attention, forward and backward (CUDA; `TRITON_INTERPRET=1` on CPU).

Forward: one program computes one block of queries of one (batch row, head): it walks the key
blocks up to the diagonal (the blocks above it are skipped), builds the relative-position and
time-gap bias in registers from the two small tables and the timestamps, and accumulates

    out_n = Σ_j A_nj x_j − A_nn y_n,   A_nj = SiLU(s_nj) / (n + 1), j ≤ n (j < n if STRICT),
    s_nj = q_n·k_j/√d + rab_nj

exactly as `blocked.blocked_forward` does. The time bucket counts the bucket edges θ_k ≤ gap
(`bias.bucket_edges`), which reproduces `timegaps.log_bucket` exactly, float32 rounding included.

Backward (FlashAttention-2 style, as `blocked.blocked_backward`): no [L, L] tensor is stored;
each tile's s and A are recomputed from q, k and the tables. With g = ∂loss/∂out,

    ∂A_nj = g_n·x_j − [n = j] g_n·y_n,   ∂s_nj = ∂A_nj · SiLU'(s_nj) / (n + 1) over the mask,
    SiLU'(s) = σ(s)(1 + s − s·σ(s)).

One kernel runs one program per key block (walking the query blocks from that block's diagonal
down): grad_x_j = Σ_n A_nj g_n, grad_k_j = Σ_n ∂s_nj q_n/√d, and ∂s atomically added into the
position and time tables' gradients. A second runs one program per query block (walking the key
blocks up to the diagonal, like the forward): grad_q_n = Σ_j ∂s_nj k_j/√d and grad_y_n = −A_nn g_n.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from causalgr.models.kernels.bias import BiasTables, bucket_edges
from causalgr.models.kernels.blocked import blocked_backward, blocked_forward


@triton.jit
def _load_tile(BASE, b, h, stride_b, stride_h, stride_l, positions, position_ok, dims, dim_ok):
    """The [positions, dims] tile of one (batch row, head) of a [B, H, L, dh] tensor; zeros outside."""
    return tl.load(BASE + b * stride_b + h * stride_h + positions[:, None] * stride_l + dims[None, :],
                   mask=position_ok[:, None] & dim_ok[None, :], other=0.0)


@triton.jit
def _store_tile(BASE, b, h, stride_b, stride_h, stride_l, positions, position_ok, dims, dim_ok, value):
    tl.store(BASE + b * stride_b + h * stride_h + positions[:, None] * stride_l + dims[None, :],
             value.to(BASE.dtype.element_ty), mask=position_ok[:, None] & dim_ok[None, :])


@triton.jit
def _allowed(rows, cols, STRICT: tl.constexpr):
    """The mask of a tile: key j ≤ query n, or j < n when STRICT."""
    if STRICT:
        return cols[None, :] < rows[:, None]
    return cols[None, :] <= rows[:, None]


@triton.jit
def _tile_scores(q, k, rows, cols, t_rows, t_cols, POS, TIME, EDGES, h,
                 stride_pp, stride_ph, stride_tt, stride_th, P, scale,
                 TB: tl.constexpr, PRECISION: tl.constexpr):
    """s = q·kᵀ/√d + rab of one [BLOCK_M, BLOCK_N] tile, and its distance and time-bucket indices."""
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    distance = tl.minimum(tl.maximum(rows[:, None] - cols[None, :], 0), P - 1)
    scores += tl.load(POS + distance * stride_pp + h * stride_ph)
    gap = t_rows[:, None] - t_cols[None, :]
    bucket = tl.zeros(scores.shape, dtype=tl.int32)
    for edge in tl.static_range(TB - 1):  # bucket = #{k : gap ≥ θ_k}
        bucket += (gap >= tl.load(EDGES + edge)).to(tl.int32)
    scores += tl.load(TIME + bucket * stride_tt + h * stride_th)
    return scores, distance, bucket


@triton.jit
def _hstu_forward_kernel(
    Q, K, X, Y, OUT, POS, TIME, TS, EDGES,
    stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
    stride_xb, stride_xh, stride_xl, stride_yb, stride_yh, stride_yl,
    stride_ob, stride_oh, stride_ol, stride_pp, stride_ph, stride_tt, stride_th, stride_sb, stride_sl,
    H, L, P, scale,
    TB: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    STRICT: tl.constexpr, HAS_Y: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < L
    dim_ok = dims < HEAD_DIM
    q = _load_tile(Q, b, h, stride_qb, stride_qh, stride_ql, rows, row_ok, dims, dim_ok)
    t_rows = tl.load(TS + b * stride_sb + rows * stride_sl, mask=row_ok, other=0)
    inv_count = 1.0 / (rows + 1).to(tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    diagonal = tl.zeros((BLOCK_M,), dtype=tl.float32)
    last = tl.minimum((pid_m + 1) * BLOCK_M, L)  # keys past the block's last query are never seen
    for start in range(0, last, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < L
        k = _load_tile(K, b, h, stride_kb, stride_kh, stride_kl, cols, col_ok, dims, dim_ok)
        t_cols = tl.load(TS + b * stride_sb + cols * stride_sl, mask=col_ok, other=0)
        scores, _, _ = _tile_scores(q, k, rows, cols, t_rows, t_cols, POS, TIME, EDGES, h,
                                    stride_pp, stride_ph, stride_tt, stride_th, P, scale, TB, PRECISION)
        allowed = _allowed(rows, cols, STRICT)
        weights = tl.where(allowed & col_ok[None, :], scores * tl.sigmoid(scores), 0.0) * inv_count[:, None]
        x = _load_tile(X, b, h, stride_xb, stride_xh, stride_xl, cols, col_ok, dims, dim_ok)
        acc += tl.dot(weights.to(x.dtype), x, input_precision=PRECISION)
        if HAS_Y:
            diagonal += tl.sum(tl.where(cols[None, :] == rows[:, None], weights, 0.0), axis=1)
    if HAS_Y:
        y = _load_tile(Y, b, h, stride_yb, stride_yh, stride_yl, rows, row_ok, dims, dim_ok)
        acc -= diagonal[:, None] * y.to(tl.float32)
    _store_tile(OUT, b, h, stride_ob, stride_oh, stride_ol, rows, row_ok, dims, dim_ok, acc)


def triton_forward(
    q: torch.Tensor, k: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None, tables: BiasTables,
    strict: bool = False, block_m: int = 64, block_n: int = 64,
) -> torch.Tensor:
    """The kernel on q, k, x, y [B, H, L, dh]; float64 inputs go to the blocked PyTorch forward."""
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return blocked_forward(q, k, x, y, tables, strict)
    B, H, L, dh = q.shape
    q, k, x = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, x))
    y_arg = x if y is None else (y if y.stride(-1) == 1 else y.contiguous())  # any valid pointer when unused
    position = tables.position.to(torch.float32)
    time = tables.time.to(torch.float32)
    out = torch.empty(B, H, L, dh, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(L, block_m), B * H)
    _hstu_forward_kernel[grid](
        q, k, x, y_arg, out, position, time, tables.timestamps, bucket_edges(time.shape[0], q.device),
        *q.stride()[:3], *k.stride()[:3], *x.stride()[:3], *y_arg.stride()[:3], *out.stride()[:3],
        *position.stride(), *time.stride(), *tables.timestamps.stride(),
        H, L, position.shape[0], 1.0 / math.sqrt(dh),
        TB=time.shape[0], HEAD_DIM=dh, BLOCK_D=max(16, triton.next_power_of_2(dh)), BLOCK_M=block_m, BLOCK_N=block_n,
        STRICT=strict, HAS_Y=y is not None, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return out


@triton.jit
def _hstu_backward_keys_kernel(
    Q, K, X, Y, GRAD, DK, DX, DPOS, DTIME, POS, TIME, TS, EDGES,
    stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
    stride_xb, stride_xh, stride_xl, stride_yb, stride_yh, stride_yl,
    stride_gb, stride_gh, stride_gl, stride_dkb, stride_dkh, stride_dkl, stride_dxb, stride_dxh, stride_dxl,
    stride_pp, stride_ph, stride_tt, stride_th, stride_sb, stride_sl,
    H, L, P, scale,
    TB: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    STRICT: tl.constexpr, HAS_Y: tl.constexpr, PRECISION: tl.constexpr,
):
    # grad_k, grad_x of one key block, and its share of the bias-table gradients: atomics, as
    # every tile of every (batch row, head) adds into the same [P, H] and [Tb, H] entries.
    pid_n = tl.program_id(0)
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    col_ok = cols < L
    dim_ok = dims < HEAD_DIM
    k = _load_tile(K, b, h, stride_kb, stride_kh, stride_kl, cols, col_ok, dims, dim_ok)
    x = _load_tile(X, b, h, stride_xb, stride_xh, stride_xl, cols, col_ok, dims, dim_ok)
    t_cols = tl.load(TS + b * stride_sb + cols * stride_sl, mask=col_ok, other=0)
    grad_k = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    grad_x = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    first = (pid_n * BLOCK_N) // BLOCK_M * BLOCK_M  # queries before the block's first key never see it
    for start in range(first, L, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < L
        q = _load_tile(Q, b, h, stride_qb, stride_qh, stride_ql, rows, row_ok, dims, dim_ok)
        g = _load_tile(GRAD, b, h, stride_gb, stride_gh, stride_gl, rows, row_ok, dims, dim_ok)
        # The scores and weights of the tile, recomputed exactly as the forward does.
        t_rows = tl.load(TS + b * stride_sb + rows * stride_sl, mask=row_ok, other=0)
        scores, distance, bucket = _tile_scores(q, k, rows, cols, t_rows, t_cols, POS, TIME, EDGES, h,
                                                stride_pp, stride_ph, stride_tt, stride_th, P, scale, TB, PRECISION)
        allowed = _allowed(rows, cols, STRICT)
        allowed = allowed & row_ok[:, None]  # cols ≤ rows < L: the keys are in range too
        inv_count = 1.0 / (rows + 1).to(tl.float32)
        gate = tl.sigmoid(scores)
        weights = tl.where(allowed, scores * gate, 0.0) * inv_count[:, None]
        grad_x += tl.dot(tl.trans(weights).to(g.dtype), g, input_precision=PRECISION)
        # ∂/∂A_nj = g_n·x_j, minus g_n·y_n on the diagonal; then through SiLU'(s) = σ(s)(1 + s − s·σ(s)).
        grad_weights = tl.dot(g, tl.trans(x), input_precision=PRECISION)
        if HAS_Y:
            y = _load_tile(Y, b, h, stride_yb, stride_yh, stride_yl, rows, row_ok, dims, dim_ok)
            g_dot_y = tl.sum(g.to(tl.float32) * y.to(tl.float32), axis=1)
            grad_weights -= tl.where(cols[None, :] == rows[:, None], g_dot_y[:, None], 0.0)
        grad_scores = tl.where(allowed, grad_weights * gate * (1.0 + scores - scores * gate), 0.0) * inv_count[:, None]
        grad_k += tl.dot(tl.trans(grad_scores).to(q.dtype), q, input_precision=PRECISION)
        tl.atomic_add(DPOS + distance * stride_pp + h * stride_ph, grad_scores, mask=allowed, sem="relaxed")
        tl.atomic_add(DTIME + bucket * stride_tt + h * stride_th, grad_scores, mask=allowed, sem="relaxed")
    _store_tile(DK, b, h, stride_dkb, stride_dkh, stride_dkl, cols, col_ok, dims, dim_ok, grad_k * scale)
    _store_tile(DX, b, h, stride_dxb, stride_dxh, stride_dxl, cols, col_ok, dims, dim_ok, grad_x)


@triton.jit
def _hstu_backward_queries_kernel(
    Q, K, X, Y, GRAD, DQ, DY, POS, TIME, TS, EDGES,
    stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
    stride_xb, stride_xh, stride_xl, stride_yb, stride_yh, stride_yl,
    stride_gb, stride_gh, stride_gl, stride_dqb, stride_dqh, stride_dql, stride_dyb, stride_dyh, stride_dyl,
    stride_pp, stride_ph, stride_tt, stride_th, stride_sb, stride_sl,
    H, L, P, scale,
    TB: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    STRICT: tl.constexpr, HAS_Y: tl.constexpr, PRECISION: tl.constexpr,
):
    # grad_q (and grad_y = −A_nn g_n) of one query block, walking the key blocks as the forward does.
    pid_m = tl.program_id(0)
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < L
    dim_ok = dims < HEAD_DIM
    q = _load_tile(Q, b, h, stride_qb, stride_qh, stride_ql, rows, row_ok, dims, dim_ok)
    g = _load_tile(GRAD, b, h, stride_gb, stride_gh, stride_gl, rows, row_ok, dims, dim_ok)
    if HAS_Y:
        y = _load_tile(Y, b, h, stride_yb, stride_yh, stride_yl, rows, row_ok, dims, dim_ok)
        g_dot_y = tl.sum(g.to(tl.float32) * y.to(tl.float32), axis=1)
    t_rows = tl.load(TS + b * stride_sb + rows * stride_sl, mask=row_ok, other=0)
    inv_count = 1.0 / (rows + 1).to(tl.float32)
    grad_q = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    diagonal = tl.zeros((BLOCK_M,), dtype=tl.float32)
    last = tl.minimum((pid_m + 1) * BLOCK_M, L)  # keys past the block's last query are never seen
    for start in range(0, last, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < L
        k = _load_tile(K, b, h, stride_kb, stride_kh, stride_kl, cols, col_ok, dims, dim_ok)
        t_cols = tl.load(TS + b * stride_sb + cols * stride_sl, mask=col_ok, other=0)
        scores, _, _ = _tile_scores(q, k, rows, cols, t_rows, t_cols, POS, TIME, EDGES, h,
                                    stride_pp, stride_ph, stride_tt, stride_th, P, scale, TB, PRECISION)
        allowed = _allowed(rows, cols, STRICT)
        allowed = allowed & col_ok[None, :]
        gate = tl.sigmoid(scores)
        x = _load_tile(X, b, h, stride_xb, stride_xh, stride_xl, cols, col_ok, dims, dim_ok)
        grad_weights = tl.dot(g, tl.trans(x), input_precision=PRECISION)  # as in the keys kernel
        if HAS_Y:
            on_diagonal = cols[None, :] == rows[:, None]
            grad_weights -= tl.where(on_diagonal, g_dot_y[:, None], 0.0)
            weights = tl.where(allowed, scores * gate, 0.0) * inv_count[:, None]
            diagonal += tl.sum(tl.where(on_diagonal, weights, 0.0), axis=1)
        grad_scores = tl.where(allowed, grad_weights * gate * (1.0 + scores - scores * gate), 0.0) * inv_count[:, None]
        grad_q += tl.dot(grad_scores.to(k.dtype), k, input_precision=PRECISION)
    _store_tile(DQ, b, h, stride_dqb, stride_dqh, stride_dql, rows, row_ok, dims, dim_ok, grad_q * scale)
    if HAS_Y:
        grad_y = -diagonal[:, None] * g.to(tl.float32)
        _store_tile(DY, b, h, stride_dyb, stride_dyh, stride_dyl, rows, row_ok, dims, dim_ok, grad_y)


def triton_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None,
    tables: BiasTables, strict: bool = False, block_m: int = 64, block_n: int = 64,
):
    """Gradients (q, k, x, y, position table, time table) of `triton_forward`, as `blocked.blocked_backward`
    returns them; float64 inputs go to that blocked PyTorch backward."""
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return blocked_backward(grad_out, q, k, x, y, tables, strict)
    B, H, L, dh = q.shape
    grad_out, q, k, x = (t if t.stride(-1) == 1 else t.contiguous() for t in (grad_out, q, k, x))
    y_arg = x if y is None else (y if y.stride(-1) == 1 else y.contiguous())  # any valid pointer when unused
    position = tables.position.to(torch.float32)
    time = tables.time.to(torch.float32)
    grad_q, grad_k, grad_x = torch.empty_like(q), torch.empty_like(k), torch.empty_like(x)
    grad_y = None if y is None else torch.empty_like(y_arg)
    grad_y_arg = grad_q if grad_y is None else grad_y  # any valid pointer when unused
    grad_position, grad_time = torch.zeros_like(position), torch.zeros_like(time)  # float32 atomics
    edges = bucket_edges(time.shape[0], q.device)
    common = (
        *q.stride()[:3], *k.stride()[:3], *x.stride()[:3], *y_arg.stride()[:3], *grad_out.stride()[:3],
    )
    tails = (
        *position.stride(), *time.stride(), *tables.timestamps.stride(),
        H, L, position.shape[0], 1.0 / math.sqrt(dh),
    )
    meta = dict(
        TB=time.shape[0], HEAD_DIM=dh, BLOCK_D=max(16, triton.next_power_of_2(dh)), BLOCK_M=block_m, BLOCK_N=block_n,
        STRICT=strict, HAS_Y=y is not None, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    _hstu_backward_keys_kernel[(triton.cdiv(L, block_n), B * H)](
        q, k, x, y_arg, grad_out, grad_k, grad_x, grad_position, grad_time, position, time, tables.timestamps, edges,
        *common, *grad_k.stride()[:3], *grad_x.stride()[:3], *tails, **meta,
    )
    _hstu_backward_queries_kernel[(triton.cdiv(L, block_m), B * H)](
        q, k, x, y_arg, grad_out, grad_q, grad_y_arg, position, time, tables.timestamps, edges,
        *common, *grad_q.stride()[:3], *grad_y_arg.stride()[:3], *tails, **meta,
    )
    return grad_q, grad_k, grad_x, grad_y, grad_position.to(tables.position.dtype), grad_time.to(tables.time.dtype)
