"""The attention kernels every formulation is built from, each with its plain reference.

Three masks appear in causalgr (positions are 0-based, n = query, j = key):

- causal   — j ≤ n: the item encoder.
- strict   — j < n: anything that reads actions, since a_n must never reach position n.
- mvp      — values v_j for j ≤ n plus action values u_j for j < n, in one attention.

Each kernel takes `reference=True` for the readable version that materialises its masks; the
default path is the efficient one (SDPA's causal flag, the shift trick, the diagonal
correction) and the tests hold it equal to the reference. Tensors are [B, H, L, dh]; inputs
are right-padded, so under a causal mask a valid query never sees a padded key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """[L, L] bool, True where key j ≤ query n."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def strict_mask(length: int, device: torch.device) -> torch.Tensor:
    """[L, L] bool, True where key j < query n."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril(-1)


def softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor | None = None, *, reference: bool = False
) -> torch.Tensor:
    """Causal softmax attention; with `u`, the mvp form Σ_{j≤n} α_nj v_j + Σ_{j<n} α_nj u_j."""
    L = q.shape[-2]
    if reference:
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # [B, H, L, L]
        probs = scores.masked_fill(~causal_mask(L, q.device), float("-inf")).softmax(-1)
        out = probs @ v
        if u is not None:
            out = out + (probs * strict_mask(L, q.device)) @ u
        return out
    if u is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # One flash-capable call on v + u, then remove the diagonal term α_nn·u_n that j < n forbids.
    out = F.scaled_dot_product_attention(q, k, v + u, is_causal=True)
    return out - _softmax_diagonal(q, k)[..., None] * u


def _softmax_diagonal(q: torch.Tensor, k: torch.Tensor, block: int = 256) -> torch.Tensor:
    """α_nn = exp(s_nn − logsumexp_{j≤n} s_nj), [B, H, L], computed a block of queries at a time."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    diag = (q * k).sum(-1) * scale  # [B, H, L]
    lse = []
    for start in range(0, q.shape[-2], block):
        stop = min(start + block, q.shape[-2])
        scores = (q[..., start:stop, :] @ k[..., :stop, :].transpose(-2, -1)) * scale  # [B, H, b, stop]
        allowed = torch.arange(stop, device=q.device)[None, :] <= torch.arange(start, stop, device=q.device)[:, None]
        lse.append(scores.masked_fill(~allowed, float("-inf")).logsumexp(-1))
    return torch.exp(diag - torch.cat(lse, dim=-1))


def pointwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    reference: bool = False,
) -> torch.Tensor:
    """HSTU's attention: A_nj = SiLU(q_n·k_j/√d + bias_nj) / (n + 1) over j ≤ n; with `u`, mvp mixing.

    Dividing by the number of attended positions (n + 1) rather than the padded or total length
    keeps position n independent of padding and of how many events follow it.
    """
    L = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]) + bias  # [B, H, L, L]
    count = torch.arange(1, L + 1, device=q.device, dtype=q.dtype)[:, None]  # [L, 1]
    if reference:
        weights = F.silu(scores) * causal_mask(L, q.device) / count
        out = weights @ v
        if u is not None:
            out = out + (weights * strict_mask(L, q.device)) @ u
        return out
    weights = F.silu(scores).tril() / count
    if u is None:
        return weights @ v
    # Diagonal correction: one product with v + u, minus the forbidden A_nn·u_n.
    return weights @ (v + u) - weights.diagonal(dim1=-2, dim2=-1)[..., None] * u


def strict_pooling(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    null_k: torch.Tensor,
    null_v: torch.Tensor,
    *,
    reference: bool = False,
) -> torch.Tensor:
    """Softmax pooling over keys j < n plus a learned null slot (the only key at n = 0).

    q, k, v: [B, H, L, dh]; null_k, null_v: [H, dh].
    """
    B, H, L, dh = q.shape
    null_k = null_k[None, :, None, :].expand(B, H, 1, dh)
    null_v = null_v[None, :, None, :].expand(B, H, 1, dh)
    if reference:
        keys = torch.cat([null_k, k], dim=2)  # [B, H, 1 + L, dh]: slot 0 = null, slot j + 1 = event j
        values = torch.cat([null_v, v], dim=2)
        allowed = torch.cat([torch.ones(L, 1, dtype=torch.bool, device=q.device), strict_mask(L, q.device)], dim=1)
        scores = (q @ keys.transpose(-2, -1)) / math.sqrt(dh)  # [B, H, L, 1 + L]
        return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ values
    # Shift trick: put the null slot first and drop the last event, so that the plain inclusive
    # causal mask at query n sees slots 0..n = null, events 0..n-1 — exactly j < n.
    keys = torch.cat([null_k, k[:, :, :-1]], dim=2)  # [B, H, L, dh]
    values = torch.cat([null_v, v[:, :, :-1]], dim=2)
    return F.scaled_dot_product_attention(q, keys, values, is_causal=True)
