"""The attention kernels every formulation is built from, each with its plain reference.

Four masks appear in causalgr (positions are 0-based, n = query, j = key):

- causal   — j ≤ n: the item encoder.
- strict   — j < n: anything that reads actions, since a_n must never reach position n.
- mvp      — values v_j for j ≤ n plus action values u_j for j < n, in one attention.
- target-aware — `summed`'s 2N tokens, N history tokens then N target tokens: history n sees
             history j ≤ n; target n sees history j < n and itself, never another target.

Serving (docs/serving.md) runs the same kernels in two more shapes, forward only: a
*continuation*, whose queries are the last Lq of the L positions (new events after a cached
history, which they see in full), and targets *after* the history (`after=True`): K candidates
at position L, each seeing every history key and itself, never another candidate. A warm
request runs both at once (`warm_pointwise_attention`): a few new tokens, then the candidates.

Each kernel takes the attention engine (`ModelConfig.attention`): "reference" is the readable
version that materialises its masks; every other engine is an efficient one (SDPA's causal flag, the shift trick, the diagonal
correction, HSTU's blocked/Triton kernels in `kernels/`) and never builds an [L, L] tensor;
the tests hold it equal to the reference. Tensors are [B, H, L, dh]; inputs
are right-padded, so under a causal mask a valid query never sees a padded key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from causalgr.models.kernels import (
    BiasTables,
    blocked_after_forward,
    fast_pointwise_attention,
    softmax_diagonal,
    warm_forward,
)
from causalgr.models.kernels.bias import own_key_bias
from causalgr.models.kernels.blocked import block_rows
from causalgr.models.timegaps import log_bucket


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """[L, L] bool, True where key j ≤ query n."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def strict_mask(length: int, device: torch.device) -> torch.Tensor:
    """[L, L] bool, True where key j < query n."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril(-1)


def target_aware_mask(events: int, device: torch.device) -> torch.Tensor:
    """[2N, 2N] bool over N history tokens then N target tokens (the M-FALCON mask)."""
    history_to_history = causal_mask(events, device)  # j ≤ n
    target_to_history = strict_mask(events, device)  # j < n: history token j holds a_j
    target_to_target = torch.eye(events, dtype=torch.bool, device=device)  # itself only
    never = torch.zeros(events, events, dtype=torch.bool, device=device)  # history never sees a target
    return torch.cat([torch.cat([history_to_history, never], 1), torch.cat([target_to_history, target_to_target], 1)])


def softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor | None = None, *, engine: str = "auto"
) -> torch.Tensor:
    """Causal softmax attention; with `u`, the mvp form Σ_{j≤n} α_nj v_j + Σ_{j<n} α_nj u_j.

    q may hold only the last Lq of the L positions of k, v, u: a continuation (see above).
    """
    Lq, L = q.shape[-2], k.shape[-2]
    if engine == "reference":
        rows = slice(L - Lq, L)  # the queries' positions
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # [B, H, Lq, L]
        probs = scores.masked_fill(~causal_mask(L, q.device)[rows], float("-inf")).softmax(-1)
        out = probs @ v
        if u is not None:
            out = out + (probs * strict_mask(L, q.device)[rows]) @ u
        return out
    if Lq < L:
        return _continued_softmax_attention(q, k, v, u)
    if u is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # One flash call on v + u, then remove the diagonal term α_nn·u_n that j < n forbids. α_nn =
    # exp(s_nn − logsumexp_n): PyTorch's CPU flash kernel returns the logsumexp (its output stays
    # differentiable); elsewhere `softmax_diagonal` computes it blockwise. O(L) memory either way.
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v + u, 0.0, True)
        return out - softmax_diagonal(q, k, lse)[..., None] * u
    out = F.scaled_dot_product_attention(q, k, v + u, is_causal=True)
    return out - softmax_diagonal(q, k)[..., None] * u


def _continued_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor | None
) -> torch.Tensor:
    """`softmax_attention` for queries at the last Lq < L positions, a block of query rows at a time:
    one [B, H, rows, L] slab at most, never [Lq, L]. Forward only (serving). The blocks follow the
    query rows; under torch.export or torch.compile one block, so that L and Lq stay symbolic."""
    Lq, L, dh = q.shape[-2], k.shape[-2], q.shape[-1]
    first, block = L - Lq, block_rows(q, None, L)
    x = v if u is None else v + u  # mvp: one pass over v + u, minus the diagonal α_nn·u_n
    out = x.new_empty(*q.shape[:-1], x.shape[-1])  # [B, H, Lq, dh]
    blocks = [slice(0, Lq)] if torch.compiler.is_compiling() else [
        slice(row, min(row + block, Lq)) for row in range(0, Lq, block)]
    for rows in blocks:
        start, stop = first + rows.start, first + rows.stop
        allowed = torch.arange(stop, device=q.device)[None, :] <= torch.arange(start, stop, device=q.device)[:, None]
        scores = (q[:, :, rows] @ k[:, :, :stop].transpose(-2, -1)).mul_(1.0 / math.sqrt(dh))  # [B, H, rows, stop]
        probs = scores.masked_fill_(~allowed, float("-inf")).softmax(-1)
        out[:, :, rows] = probs @ x[:, :, :stop]
        if u is not None:
            out[:, :, rows] -= probs[..., start:stop].diagonal(dim1=-2, dim2=-1)[..., None] * u[:, :, start:stop]
    return out


def relative_bias(tables: BiasTables, positions: torch.Tensor | None = None) -> torch.Tensor:
    """HSTU's rab, materialised: [B, H, L, L] (entries above the diagonal are never used).

    `positions` [L]: each token's event position, 0..L − 1 unless given (summed's twins share n).
    """
    L = tables.timestamps.shape[1]
    pos = torch.arange(L, device=tables.timestamps.device) if positions is None else positions
    distance = (pos[:, None] - pos[None, :]).clamp(0, tables.position.shape[0] - 1)  # [L, L]
    gaps = tables.timestamps[:, :, None] - tables.timestamps[:, None, :]  # [B, L, L]
    bias = tables.position[distance][None] + tables.time[log_bucket(gaps, tables.time.shape[0])]  # [B, L, L, H]
    return bias.permute(0, 3, 1, 2)


def pointwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: BiasTables,
    u: torch.Tensor | None = None,
    *,
    strict: bool = False,
    engine: str = "auto",
) -> torch.Tensor:
    """HSTU's attention: A_nj = SiLU(q_n·k_j/√d + rab_nj) / (n + 1) over j ≤ n; with `u`, mvp mixing.

    `strict` sees j < n only (same 1/(n + 1) normaliser). Dividing by n + 1 rather than the
    padded or total length keeps position n independent of padding and of the events after it.
    The fast path never builds the [L, L] bias or weights: it makes them a block of queries at a
    time from the tables (blocked PyTorch on CPU, our Triton kernel on CUDA, `kernels/`).
    q may hold only the last Lq of the L positions of k, v, u, bias: a continuation (see above).
    """
    if engine == "reference":
        Lq, L = q.shape[-2], k.shape[-2]
        rows = slice(L - Lq, L)  # the queries' positions
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]) + relative_bias(bias)[..., rows, :]  # [B, H, Lq, L]
        count = torch.arange(L - Lq + 1, L + 1, device=q.device, dtype=q.dtype)[:, None]  # [Lq, 1]
        mask = (strict_mask(L, q.device) if strict else causal_mask(L, q.device))[rows]
        weights = F.silu(scores) * mask / count
        out = weights @ v
        if u is not None:
            out = out + (weights * strict_mask(L, q.device)[rows]) @ u
        return out
    # mvp: one pass over v + u, minus the forbidden diagonal term A_nn·u_n (in the kernel).
    return fast_pointwise_attention(q, k, v, bias, u, strict=strict, engine=None if engine == "auto" else engine)


def target_aware_softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, engine: str = "auto"
) -> torch.Tensor:
    """`summed`'s softmax attention over [history; targets]: q, k, v, out [B, H, 2N, dh].

    History n: softmax over history j ≤ n. Target n: softmax over history j < n and itself.
    """
    N, dh = q.shape[-2] // 2, q.shape[-1]
    if engine == "reference":
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(dh)  # [B, H, 2N, 2N]
        return scores.masked_fill(~target_aware_mask(N, q.device), float("-inf")).softmax(-1) @ v
    (q_h, q_t), (k_h, k_t), (v_h, v_t) = (x.split(N, dim=2) for x in (q, k, v))
    history = F.scaled_dot_product_attention(q_h, k_h, v_h, is_causal=True)  # [B, H, N, dh]
    return torch.cat([history, target_softmax_attention(q_t, k_t, v_t, k_h, v_h, engine=engine)], dim=2)


def target_softmax_attention(
    q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, k_h: torch.Tensor, v_h: torch.Tensor,
    *, after: bool = False, engine: str = "auto",
) -> torch.Tensor:
    """Softmax attention of target tokens over history tokens and themselves, never over another
    target: q_t, k_t, v_t [B, H, K, dh]; k_h, v_h [B, H, L, dh] → [B, H, K, dh].

    Staggered (`summed` in training, K = L): target n sees history j < n. `after` (serving's
    candidates, any K): every target comes after the whole history and sees all of it.
    """
    K, L, dh = q_t.shape[-2], k_h.shape[-2], q_t.shape[-1]
    if engine == "reference":
        visible = torch.ones(K, L, dtype=torch.bool, device=q_t.device) if after else strict_mask(L, q_t.device)
        allowed = torch.cat([visible, torch.eye(K, dtype=torch.bool, device=q_t.device)], dim=1)  # [K, L + K]
        scores = (q_t @ torch.cat([k_h, k_t], dim=2).transpose(-2, -1)) / math.sqrt(dh)  # [B, H, K, L + K]
        return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ torch.cat([v_h, v_t], dim=2)
    # A slot key stands for each target's own key: one extra head dim makes its score per query
    # (q'_n = [q_n, q_n·k_n], slot key = [0, 1]), and its value [0, 1] returns the slot's weight
    # α_nn in that dim, so the own value v_t_n is added outside. Staggered targets use lfa's shift
    # trick: the slot before history keys 0..L−2, so the inclusive causal mask at query n sees the
    # slot and history j < n; targets after the history see the slot and every key, unmasked.
    # Exact, one flash-capable call; zero dims pad the width to a multiple of 8.
    width = -(-(dh + 1) // 8) * 8
    slot = q_t.new_zeros(*q_t.shape[:2], 1, width)  # [B, H, 1, width]
    slot[..., dh] = 1.0
    own = (q_t * k_t).sum(-1, keepdim=True)  # q_t_n·k_t_n, [B, H, K, 1]
    queries = F.pad(torch.cat([q_t, own], dim=-1), (0, width - dh - 1))  # [B, H, K, width]
    seen = slice(None) if after else slice(None, -1)  # history keys behind the slot
    keys = torch.cat([slot, F.pad(k_h[:, :, seen], (0, width - dh))], dim=2)  # [B, H, 1 + L (− 1), width]
    values = torch.cat([slot, F.pad(v_h[:, :, seen], (0, width - dh))], dim=2)
    out = F.scaled_dot_product_attention(queries, keys, values, is_causal=not after, scale=1 / math.sqrt(dh))
    return out[..., :dh] + out[..., dh : dh + 1] * v_t  # Σ_j α_nj v_h_j + α_nn v_t_n


def target_aware_pointwise_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: BiasTables, *, engine: str = "auto"
) -> torch.Tensor:
    """`summed`'s HSTU attention over [history; targets]: q, k, v, out [B, H, 2N, dh]; bias over N events.

    History n: Σ_{j≤n} A_nj v_j over history, as `pointwise_attention`. Target n: Σ_{j<n} A(q_t_n,
    k_h_j) v_h_j + A(q_t_n, k_t_n) v_t_n. Target n's row has n history keys and itself, so it keeps
    the 1/(n + 1) normaliser; both twins of event n sit at position n and time t_n, so the own
    key's bias is that of distance 0 and time gap 0.
    """
    N = q.shape[-2] // 2
    if engine == "reference":
        positions = torch.arange(N, device=q.device).repeat(2)  # [2N]
        twins = bias._replace(timestamps=bias.timestamps.repeat(1, 2))  # [B, 2N]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]) + relative_bias(twins, positions)  # [B, H, 2N, 2N]
        count = (positions + 1).to(q.dtype)[:, None]  # [2N, 1]
        return (F.silu(scores) * target_aware_mask(N, q.device) / count) @ v
    (q_h, q_t), (k_h, k_t), (v_h, v_t) = (x.split(N, dim=2) for x in (q, k, v))
    history = pointwise_attention(q_h, k_h, v_h, bias, engine=engine)  # [B, H, N, dh]
    return torch.cat([history, target_pointwise_attention(q_t, k_t, v_t, k_h, v_h, bias, engine=engine)], dim=2)


def target_pointwise_attention(
    q_t: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, k_h: torch.Tensor, v_h: torch.Tensor,
    bias: BiasTables, *, after: bool = False, engine: str = "auto",
) -> torch.Tensor:
    """HSTU's attention of target tokens over history tokens and themselves, never over another
    target: q_t, k_t, v_t [B, H, K, dh]; k_h, v_h [B, H, L, dh] → [B, H, K, dh].

    Target n at position p_n: Σ_{visible j} A(q_t_n, k_h_j) v_h_j + A(q_t_n, k_t_n) v_t_n, with
    the 1/(p_n + 1) normaliser of a query that sees p_n history keys and itself; its own key has
    the bias of distance 0 and time gap 0. Staggered (`summed` in training, K = L; bias.timestamps
    [B, L]): target n is the twin of history token n, at position n and time t_n, and sees history
    j < n. `after` (serving's candidates, any K; bias.timestamps [B, L + 1]): every target is at
    position L and time bias.timestamps[:, L], and sees the whole history.
    """
    K, L, dh = q_t.shape[-2], k_h.shape[-2], q_t.shape[-1]
    if engine == "reference":
        history_times = bias.timestamps[:, :L]
        target_positions = torch.full((K,), L, device=q_t.device) if after else torch.arange(L, device=q_t.device)
        target_times = bias.timestamps[:, L:].expand(-1, K) if after else history_times  # [B, K]
        positions = torch.cat([torch.arange(L, device=q_t.device), target_positions])  # [L + K]
        tables = bias._replace(timestamps=torch.cat([history_times, target_times], dim=1))  # [B, L + K]
        keys, values = torch.cat([k_h, k_t], dim=2), torch.cat([v_h, v_t], dim=2)  # [B, H, L + K, dh]
        scores = (q_t @ keys.transpose(-2, -1)) / math.sqrt(dh) + relative_bias(tables, positions)[..., L:, :]  # [B, H, K, L + K]
        visible = torch.ones(K, L, dtype=torch.bool, device=q_t.device) if after else strict_mask(L, q_t.device)
        allowed = torch.cat([visible, torch.eye(K, dtype=torch.bool, device=q_t.device)], dim=1)  # [K, L + K]
        count = (target_positions + 1).to(q_t.dtype)[:, None]  # [K, 1]
        return (F.silu(scores) * allowed / count) @ values
    # The history part is the strict kernel (staggered: the target-aware mask is a causal mask
    # plus a diagonal swap) or one shared bias row (after); the own term is O(K·dh).
    if after:
        history = blocked_after_forward(q_t, k_h, v_h, bias)  # [B, H, K, dh]
        count = torch.full((K,), L + 1, device=q_t.device, dtype=q_t.dtype)
    else:
        history = pointwise_attention(q_t, k_h, v_h, bias, strict=True, engine=engine)
        count = torch.arange(1, L + 1, device=q_t.device, dtype=q_t.dtype)
    own_bias = own_key_bias(bias)  # [H]
    own = F.silu((q_t * k_t).sum(-1) / math.sqrt(dh) + own_bias[:, None])  # [B, H, K]
    return history + (own / count)[..., None] * v_t


def warm_pointwise_attention(
    q: torch.Tensor, k_t: torch.Tensor, v_t: torch.Tensor, k: torch.Tensor, v: torch.Tensor, u: torch.Tensor | None,
    bias: BiasTables, new: int, *, engine: str = "auto",
) -> torch.Tensor:
    """A warm request in one call: M = `new` tokens continuing a history, then K targets after them.

    q [B, H, M + K, dh]: the new tokens' queries (positions L..L + M − 1), then the targets'
    (position L + M); k, v (, mvp's u) [B, H, L + M, dh]: the cached tokens', then the new ones';
    k_t, v_t [B, H, K, dh]: the targets' own; bias.timestamps [B, L + M + 1], the targets' time last.
    Exactly `pointwise_attention` for the new tokens (a continuation) followed by
    `target_pointwise_attention(after=True)` for the targets, which see every key — mvp: with its
    action value — and themselves. The fast engine is one call per layer (`kernels.warm_forward`).
    """
    if engine == "reference":
        S = k.shape[-2]
        continued = pointwise_attention(q[:, :, :new], k, v, bias._replace(timestamps=bias.timestamps[:, :S]), u,
                                        engine="reference")
        history = v if u is None else v + u
        after = target_pointwise_attention(q[:, :, new:], k_t, v_t, k, history, bias, after=True, engine="reference")
        return torch.cat([continued, after], dim=2)
    return warm_forward(q, k_t, v_t, k, v if u is None else v + u, None if u is None else u[:, :, k.shape[-2] - new :],
                        bias, new)


def strict_pooling(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    null_k: torch.Tensor,
    null_v: torch.Tensor,
    *,
    after: bool = False,
    engine: str = "auto",
) -> torch.Tensor:
    """Softmax pooling over keys j < n plus a learned null slot (the only key at n = 0).

    q, k, v: [B, H, L, dh]; null_k, null_v: [H, dh]. `after` (serving's candidates): q holds
    any number of queries that all come after the L keys, and each sees every key.
    """
    B, H, L, dh = k.shape
    Lq = q.shape[-2]
    null_k = null_k[None, :, None, :].expand(B, H, 1, dh)
    null_v = null_v[None, :, None, :].expand(B, H, 1, dh)
    if engine == "reference":
        keys = torch.cat([null_k, k], dim=2)  # [B, H, 1 + L, dh]: slot 0 = null, slot j + 1 = event j
        values = torch.cat([null_v, v], dim=2)
        visible = torch.ones(Lq, L, dtype=torch.bool, device=q.device) if after else strict_mask(L, q.device)
        allowed = torch.cat([torch.ones(Lq, 1, dtype=torch.bool, device=q.device), visible], dim=1)  # [Lq, 1 + L]
        scores = (q @ keys.transpose(-2, -1)) / math.sqrt(dh)  # [B, H, Lq, 1 + L]
        return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ values
    if after:
        return F.scaled_dot_product_attention(q, torch.cat([null_k, k], dim=2), torch.cat([null_v, v], dim=2))
    # Shift trick: put the null slot first and drop the last event, so that the plain inclusive
    # causal mask at query n sees slots 0..n = null, events 0..n-1 — exactly j < n.
    keys = torch.cat([null_k, k[:, :, :-1]], dim=2)  # [B, H, L, dh]
    values = torch.cat([null_v, v[:, :, :-1]], dim=2)
    return F.scaled_dot_product_attention(q, keys, values, is_causal=True)
