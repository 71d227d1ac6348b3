"""Our Triton kernel for HSTU's pointwise attention forward (CUDA; `TRITON_INTERPRET=1` on CPU).

One program computes one block of queries of one (batch row, head): it walks the key blocks
up to the diagonal (the blocks above it are skipped), builds the relative-position and
time-gap bias in registers from the two small tables and the timestamps, and accumulates

    out_n = Σ_j A_nj x_j − A_nn y_n,   A_nj = SiLU(q_n·k_j/√d + rab_nj) / (n + 1), j ≤ n (j < n if STRICT)

exactly as `blocked.blocked_forward` does; the backward is the blocked PyTorch one. The
time bucket counts the bucket edges θ_k ≤ gap (`bias.bucket_edges`), which reproduces
`timegaps.log_bucket` exactly, float32 rounding included.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from causalgr.models.kernels.bias import BiasTables, bucket_edges
from causalgr.models.kernels.blocked import blocked_forward


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
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_ql + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    t_rows = tl.load(TS + b * stride_sb + rows * stride_sl, mask=row_ok, other=0)
    inv_count = 1.0 / (rows + 1).to(tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    diagonal = tl.zeros((BLOCK_M,), dtype=tl.float32)
    last = tl.minimum((pid_m + 1) * BLOCK_M, L)  # keys past the block's last query are never seen
    for start in range(0, last, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < L
        k = tl.load(K + b * stride_kb + h * stride_kh + cols[:, None] * stride_kl + dims[None, :],
                    mask=col_ok[:, None] & dim_ok[None, :], other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [BLOCK_M, BLOCK_N]
        distance = tl.minimum(tl.maximum(rows[:, None] - cols[None, :], 0), P - 1)
        scores += tl.load(POS + distance * stride_pp + h * stride_ph)
        t_cols = tl.load(TS + b * stride_sb + cols * stride_sl, mask=col_ok, other=0)
        gap = t_rows[:, None] - t_cols[None, :]
        bucket = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for edge in tl.static_range(TB - 1):  # bucket = #{k : gap ≥ θ_k}
            bucket += (gap >= tl.load(EDGES + edge)).to(tl.int32)
        scores += tl.load(TIME + bucket * stride_tt + h * stride_th)
        if STRICT:
            allowed = cols[None, :] < rows[:, None]
        else:
            allowed = cols[None, :] <= rows[:, None]
        weights = tl.where(allowed & col_ok[None, :], scores * tl.sigmoid(scores), 0.0) * inv_count[:, None]
        x = tl.load(X + b * stride_xb + h * stride_xh + cols[:, None] * stride_xl + dims[None, :],
                    mask=col_ok[:, None] & dim_ok[None, :], other=0.0)
        acc += tl.dot(weights.to(x.dtype), x, input_precision=PRECISION)
        if HAS_Y:
            diagonal += tl.sum(tl.where(cols[None, :] == rows[:, None], weights, 0.0), axis=1)
    if HAS_Y:
        y = tl.load(Y + b * stride_yb + h * stride_yh + rows[:, None] * stride_yl + dims[None, :],
                    mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
        acc -= diagonal[:, None] * y.to(tl.float32)
    tl.store(OUT + b * stride_ob + h * stride_oh + rows[:, None] * stride_ol + dims[None, :],
             acc.to(OUT.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


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
