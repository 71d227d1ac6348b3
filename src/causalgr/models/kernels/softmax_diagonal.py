"""α_nn = exp(s_nn − logsumexp_{j≤n} s_nj) of causal softmax attention, without an [L, L] tensor.

mvp's diagonal correction on the softmax backbone needs the weight each query puts on its own
key. The forward needs only the row logsumexp (from the flash kernel where it returns one,
else a blocked pass here); the backward recomputes the probabilities a block of queries at a
time:  ∂α_nn/∂s_nj = α_nn (δ_nj − p_nj).
"""

from __future__ import annotations

import math

import torch

BLOCK = 256


def _block_probs(q_block: torch.Tensor, k: torch.Tensor, start: int, stop: int, lse: torch.Tensor | None):
    """Causal scores (lse None) or probabilities of queries [start, stop) over keys [0, stop)."""
    scores = (q_block @ k[:, :, :stop].transpose(-2, -1)).mul_(1.0 / math.sqrt(q_block.shape[-1]))
    allowed = torch.arange(stop, device=q_block.device)[None, :] <= torch.arange(start, stop, device=q_block.device)[:, None]
    scores.masked_fill_(~allowed, float("-inf"))
    return scores if lse is None else scores.sub_(lse[..., None]).exp_()


class _SoftmaxDiagonal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, lse, block: int):
        L = q.shape[-2]
        if lse is None:
            lse = torch.empty(q.shape[:-1], dtype=q.dtype, device=q.device)  # [B, H, L]
            for start in range(0, L, block):
                stop = min(start + block, L)
                lse[..., start:stop] = _block_probs(q[:, :, start:stop], k, start, stop, None).logsumexp(-1)
        lse = lse.to(q.dtype)
        alpha = torch.exp((q * k).sum(-1) / math.sqrt(q.shape[-1]) - lse)
        ctx.save_for_backward(q, k, lse, alpha)
        ctx.block = block
        return alpha

    @staticmethod
    def backward(ctx, grad_alpha):
        q, k, lse, alpha = ctx.saved_tensors
        L, scale = q.shape[-2], 1.0 / math.sqrt(q.shape[-1])
        w = (grad_alpha * alpha)[..., None]  # ∂loss/∂s_nj = w_n (δ_nj − p_nj), [B, H, L, 1]
        grad_q = w * k * scale  # the δ_nj terms
        grad_k = w * q * scale
        for start in range(0, L, ctx.block):
            stop = min(start + ctx.block, L)
            probs = _block_probs(q[:, :, start:stop], k, start, stop, lse[..., start:stop])  # [B, H, rows, stop]
            grad_q[:, :, start:stop] -= (probs @ k[:, :, :stop]) * (w[:, :, start:stop] * scale)
            grad_k[:, :, :stop] -= probs.transpose(-2, -1) @ (w[:, :, start:stop] * q[:, :, start:stop]) * scale
        return grad_q, grad_k, None, None


@torch.compiler.disable  # runs as written under torch.compile, like the HSTU kernels
def softmax_diagonal(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor | None = None, block: int = BLOCK
) -> torch.Tensor:
    """α_nn [B, H, L] of causal softmax attention over q, k [B, H, L, dh]; differentiable, memory O(block · L).

    `lse` [B, H, L]: the rows' logsumexp, where a flash kernel already returned it (a function of
    q and k, so it is not differentiated separately: the backward covers it); else computed here.
    """
    return _SoftmaxDiagonal.apply(q, k, None if lse is None else lse.detach(), block)
