"""The autograd entry of the fast HSTU attention: Triton forward on CUDA, blocked PyTorch on CPU.

Both engines compute the same thing (see `blocked.py`) and share the blocked backward, which
recomputes scores per query block from q, k and the bias tables.
"""

from __future__ import annotations

import torch

from causalgr.models.kernels.bias import BiasTables
from causalgr.models.kernels.blocked import blocked_backward, blocked_forward


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
    @staticmethod
    def forward(ctx, q, k, x, y, position, time, timestamps, strict: bool, engine: str, block: int):
        tables = BiasTables(position, time, timestamps)
        if engine == "triton":
            from causalgr.models.kernels.triton_hstu import triton_forward

            out = triton_forward(q, k, x, y, tables, strict)
        else:
            out = blocked_forward(q, k, x, y, tables, strict, block)
        ctx.save_for_backward(q, k, x, y, position, time, timestamps)
        ctx.strict, ctx.block = strict, block
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, x, y, position, time, timestamps = ctx.saved_tensors
        grads = blocked_backward(
            grad_out.contiguous(), q, k, x, y, BiasTables(position, time, timestamps), ctx.strict, ctx.block
        )
        return (*grads, None, None, None, None)


@torch.compiler.disable  # runs as written under torch.compile: its loops would unroll into huge graphs
def fast_pointwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor | None,
    tables: BiasTables,
    *,
    strict: bool = False,
    engine: str | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """out_n = Σ_{j≤n} A_nj x_j − A_nn y_n (j < n with `strict`), [B, H, L, dh], without an [L, L] tensor."""
    engine = engine or default_engine(q.device)
    if engine not in ("triton", "blocked"):
        raise ValueError(f"engine must be 'triton' or 'blocked', got {engine!r}")
    if strict and y is not None:
        raise ValueError("the diagonal correction y only applies to the inclusive (j ≤ n) mask")
    return _PointwiseAttention.apply(q, k, x, y, tables.position, tables.time, tables.timestamps, strict, engine, block)
