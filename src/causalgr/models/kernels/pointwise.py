"""The autograd entry of the fast HSTU attention: our Triton kernels on CUDA, blocked PyTorch on CPU.

Both engines compute the same thing (see `blocked.py`); both backwards recompute the scores
per block from q, k and the bias tables instead of storing them.
"""

from __future__ import annotations

import torch

from causalgr.models.kernels.bias import BiasTables
from causalgr.models.kernels.blocked import SERVING_ROWS, blocked_backward, blocked_forward, serving_forward


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def default_engine(device: torch.device) -> str:
    """"triton" on CUDA when Triton is installed, otherwise "blocked"."""
    return "triton" if device.type == "cuda" and triton_available() else "blocked"


class _PointwiseAttention(torch.autograd.Function):
    """mvp passes u: the kernels run on x = v + u with the diagonal correction y = u. Only v and u
    are saved (v is a view of the layer's f1 output, kept anyway); x is rebuilt in the backward,
    so mvp keeps one extra [B, L, D] tensor per layer (u) instead of two."""

    @staticmethod
    def forward(ctx, q, k, v, u, position, time, timestamps, strict: bool, engine: str, block: int):
        tables = BiasTables(position, time, timestamps)
        x = v if u is None else v + u
        if engine == "triton":
            from causalgr.models.kernels.triton_hstu import triton_forward

            out = triton_forward(q, k, x, u, tables, strict)
        else:
            out = blocked_forward(q, k, x, u, tables, strict, block)
        ctx.save_for_backward(q, k, v, u, position, time, timestamps)
        ctx.strict, ctx.block, ctx.engine = strict, block, engine
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, u, position, time, timestamps = ctx.saved_tensors
        tables = BiasTables(position, time, timestamps)
        x = v if u is None else v + u
        if ctx.engine == "triton":
            from causalgr.models.kernels.triton_hstu import triton_backward

            grads = triton_backward(grad_out, q, k, x, u, tables, ctx.strict)
        else:
            grads = blocked_backward(grad_out, q, k, x, u, tables, ctx.strict, ctx.block)
        grad_q, grad_k, grad_x, grad_y, grad_position, grad_time = grads
        grad_u = None if u is None else grad_y.add_(grad_x)  # x = v + u and y = u both depend on u
        return grad_q, grad_k, grad_x, grad_u, grad_position, grad_time, None, None, None, None


@torch.compiler.disable  # runs as written under torch.compile: its loops would unroll into huge graphs
def fast_pointwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tables: BiasTables,
    u: torch.Tensor | None = None,
    *,
    strict: bool = False,
    engine: str | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """HSTU attention [B, H, Lq, dh] without an [L, L] tensor: Σ_{j≤n} A_nj v_j (j < n with `strict`),
    and with mvp's action values u also Σ_{j<n} A_nj u_j. q may hold only the last Lq < L positions
    (serving continuing a cached history): that runs blocked on any device, forward only, as does
    serving's cold history on the CPU (tables with a `blocks` memo)."""
    engine = engine or default_engine(q.device)
    if engine not in ("triton", "blocked"):
        raise ValueError(f"engine must be 'triton' or 'blocked', got {engine!r}")
    if strict and u is not None:
        raise ValueError("mvp mixing (u) uses the inclusive mask for v; strict does not apply")
    if q.shape[-2] < k.shape[-2] or (tables.blocks is not None and engine == "blocked"):  # serving: forward only
        x, y = (v, None) if u is None else (v + u, u[:, :, k.shape[-2] - q.shape[-2] :])
        return serving_forward(q, k, x, y, tables, strict, block or SERVING_ROWS)
    return _PointwiseAttention.apply(q, k, v, u, tables.position, tables.time, tables.timestamps, strict, engine, block)
