"""Each fast attention path equals its plain reference, in values and in gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from causalgr.models.attention import (
    pointwise_attention,
    softmax_attention,
    strict_pooling,
    target_aware_pointwise_attention,
    target_aware_softmax_attention,
    target_pointwise_attention,
    target_softmax_attention,
    warm_pointwise_attention,
)
from causalgr.models.kernels import BiasTables, softmax_diagonal

shapes = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 40), st.sampled_from([4, 8]))


def _leaves(*shapes_, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes_]


def _assert_same(fast_fn, reference_fn, inputs):
    fast = fast_fn(*inputs)
    fast_grads = torch.autograd.grad(fast.square().sum(), inputs)
    reference = reference_fn(*inputs)
    reference_grads = torch.autograd.grad(reference.square().sum(), inputs)
    torch.testing.assert_close(fast, reference, atol=1e-9, rtol=1e-7)
    for a, b in zip(fast_grads, reference_grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 1000), mvp=st.booleans())
def test_softmax_attention(shape, seed, mvp):
    B, H, L, d = shape
    inputs = _leaves(*[(B, H, L, d)] * (4 if mvp else 3), seed=seed)
    _assert_same(
        lambda *x: softmax_attention(*x),
        lambda *x: softmax_attention(*x, engine="reference"),
        inputs,
    )


def random_tables(B: int, H: int, L: int, seed: int, positions: int = 48) -> BiasTables:
    """Random bias tables (the model starts them at zero, which would hide their gradients) and
    timestamps with gaps spread over many buckets, some equal (a gap of 0)."""
    gen = torch.Generator().manual_seed(seed + 7)
    gaps = torch.randint(0, 10, (B, L), generator=gen) ** torch.randint(0, 7, (B, L), generator=gen)
    return BiasTables(
        torch.randn(positions, H, generator=gen, dtype=torch.float64).requires_grad_(),
        torch.randn(32, H, generator=gen, dtype=torch.float64).requires_grad_(),
        torch.cumsum(gaps, dim=1),
    )


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 1000), variant=st.sampled_from(["causal", "strict", "mvp"]))
def test_pointwise_attention(shape, seed, variant):
    B, H, L, d = shape
    q, k, v, u = _leaves(*[(B, H, L, d)] * 4, seed=seed)
    tables = random_tables(B, H, L, seed)
    inputs = [q, k, v, tables.position, tables.time] + ([u] if variant == "mvp" else [])

    def attention(q, k, v, position, time, u=None, engine="auto"):
        bias = BiasTables(position, time, tables.timestamps)
        return pointwise_attention(q, k, v, bias, u, strict=variant == "strict", engine=engine)

    _assert_same(attention, lambda *x: attention(*x, engine="reference"), inputs)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 1000))
def test_target_aware_softmax_attention(shape, seed):
    """summed's [history; targets] softmax: the shifted call with the own-key slot equals the 2N × 2N mask."""
    B, H, N, d = shape
    _assert_same(
        lambda *x: target_aware_softmax_attention(*x),
        lambda *x: target_aware_softmax_attention(*x, engine="reference"),
        _leaves(*[(B, H, 2 * N, d)] * 3, seed=seed),
    )


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 1000))
def test_target_aware_pointwise_attention(shape, seed):
    """summed's [history; targets] HSTU attention: causal + strict kernels plus the own term equal
    the 2N × 2N mask, with the twins of event n at position n and time t_n in the reference's bias."""
    B, H, N, d = shape
    tables = random_tables(B, H, N, seed)

    def attention(q, k, v, position, time, engine="auto"):
        return target_aware_pointwise_attention(q, k, v, BiasTables(position, time, tables.timestamps), engine=engine)

    inputs = _leaves(*[(B, H, 2 * N, d)] * 3, seed=seed) + [tables.position, tables.time]
    _assert_same(attention, lambda *x: attention(*x, engine="reference"), inputs)


def test_pointwise_strict_excludes_the_diagonal():
    """strict = the causal attention minus each query's own key (a 1-event history sees nothing)."""
    q, k, v = _leaves(*[(1, 2, 6, 4)] * 3, seed=3)
    tables = random_tables(1, 2, 6, seed=3)
    strict = pointwise_attention(q, k, v, tables, strict=True, engine="reference")
    assert strict[:, :, 0].abs().max() == 0
    causal = pointwise_attention(q, k, v, tables, engine="reference")
    assert (causal - strict).abs().max() > 1e-3


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 1000))
def test_strict_pooling(shape, seed):
    B, H, L, d = shape
    inputs = _leaves((B, H, L, d), (B, H, L, d), (B, H, L, d), (H, d), (H, d), seed=seed)
    _assert_same(
        lambda *x: strict_pooling(*x),
        lambda *x: strict_pooling(*x, engine="reference"),
        inputs,
    )


@pytest.mark.parametrize("block", [1, 16, 64, 256])
def test_softmax_diagonal_blocks_agree(block):
    """The blocked α_nn of the mvp diagonal correction is exact across block boundaries, gradients included."""
    q, k = _leaves((2, 2, 70, 8), (2, 2, 70, 8), seed=block)
    weights = torch.randn(2, 2, 70, dtype=torch.float64)

    def materialised(q, k):
        scores = (q @ k.transpose(-2, -1)) / 8**0.5
        probs = scores.masked_fill(~torch.ones(70, 70, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        return probs.diagonal(dim1=-2, dim2=-1)

    _assert_same(lambda q, k: softmax_diagonal(q, k, block=block) * weights, lambda q, k: materialised(q, k) * weights, [q, k])


@pytest.mark.parametrize("L", [1, 2, 5])
def test_strict_pooling_first_position_is_null(L):
    """At n = 0 only the null slot is visible: the output is the null value."""
    q, k, v = (torch.randn(1, 2, L, 4) for _ in range(3))
    null_k, null_v = torch.randn(2, 4), torch.randn(2, 4)
    out = strict_pooling(q, k, v, null_k, null_v)
    torch.testing.assert_close(out[0, :, 0], null_v)


# Serving's shapes (forward only): a continuation after cached keys, and K targets after the history.

serving_shapes = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(0, 30), st.integers(1, 12), st.sampled_from([4, 8]))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


@settings(max_examples=25, deadline=None)
@given(shape=serving_shapes, seed=st.integers(0, 1000), mvp=st.booleans())
def test_softmax_continuation(shape, seed, mvp):
    """Queries at the last M positions after L cached keys: the blocked path equals the reference,
    which equals the last M rows of the attention over all L + M tokens."""
    B, H, L, M, d = shape
    q, k, v, u = _leaves(*[(B, H, L + M, d)] * 4, seed=seed)
    u = u if mvp else None
    reference = softmax_attention(q[:, :, L:], k, v, u, engine="reference")
    _close(softmax_attention(q[:, :, L:], k, v, u), reference)
    _close(reference, softmax_attention(q, k, v, u, engine="reference")[:, :, L:])


@settings(max_examples=25, deadline=None)
@given(shape=serving_shapes, seed=st.integers(0, 1000), variant=st.sampled_from(["causal", "strict", "mvp"]))
def test_pointwise_continuation(shape, seed, variant):
    """HSTU's continuation: the blocked path equals the reference, which equals the last M rows of
    the attention over all L + M tokens (positions and time gaps counted from the first token)."""
    B, H, L, M, d = shape
    q, k, v, u = _leaves(*[(B, H, L + M, d)] * 4, seed=seed)
    tables = random_tables(B, H, L + M, seed)
    u, strict = (u if variant == "mvp" else None), variant == "strict"
    reference = pointwise_attention(q[:, :, L:], k, v, tables, u, strict=strict, engine="reference")
    _close(pointwise_attention(q[:, :, L:], k, v, tables, u, strict=strict), reference)
    _close(reference, pointwise_attention(q, k, v, tables, u, strict=strict, engine="reference")[:, :, L:])


def _one_target_each(attend, q_t, k_t, v_t, k_h, v_h):
    """Target k alone, as the last token of a causal sequence [history; target k], for every k."""
    rows = [attend(q_t[:, :, i : i + 1], torch.cat([k_h, k_t[:, :, i : i + 1]], 2), torch.cat([v_h, v_t[:, :, i : i + 1]], 2))
            for i in range(q_t.shape[2])]
    return torch.cat(rows, dim=2)


@settings(max_examples=25, deadline=None)
@given(shape=serving_shapes, seed=st.integers(0, 1000))
def test_target_softmax_attention_after_the_history(shape, seed):
    """K targets after L history tokens: the own-slot SDPA path equals the [K, L + K] mask, and each
    target gets what it would get alone as token L of a causal sequence (so none sees another)."""
    B, H, L, K, d = shape
    q_t, k_t, v_t = _leaves(*[(B, H, K, d)] * 3, seed=seed)
    k_h, v_h = _leaves(*[(B, H, L, d)] * 2, seed=seed + 1)
    reference = target_softmax_attention(q_t, k_t, v_t, k_h, v_h, after=True, engine="reference")
    _close(target_softmax_attention(q_t, k_t, v_t, k_h, v_h, after=True), reference)
    alone = _one_target_each(lambda q, k, v: softmax_attention(q, k, v, engine="reference"), q_t, k_t, v_t, k_h, v_h)
    _close(reference, alone)


@settings(max_examples=25, deadline=None)
@given(shape=serving_shapes, seed=st.integers(0, 1000), wait=st.integers(0, 10**6))
def test_target_pointwise_attention_after_the_history(shape, seed, wait):
    """HSTU's K targets at position L and time t: the blocked path (one shared bias row) equals the
    materialised mask, and each target gets what it would get alone as token L of a causal sequence."""
    B, H, L, K, d = shape
    q_t, k_t, v_t = _leaves(*[(B, H, K, d)] * 3, seed=seed)
    k_h, v_h = _leaves(*[(B, H, L, d)] * 2, seed=seed + 1)
    tables = random_tables(B, H, L + 1, seed)  # timestamps [B, L + 1]: the history's, then the targets'
    tables.timestamps[:, L] += wait
    reference = target_pointwise_attention(q_t, k_t, v_t, k_h, v_h, tables, after=True, engine="reference")
    _close(target_pointwise_attention(q_t, k_t, v_t, k_h, v_h, tables, after=True), reference)
    alone = _one_target_each(lambda q, k, v: pointwise_attention(q, k, v, tables, engine="reference"), q_t, k_t, v_t, k_h, v_h)
    _close(reference, alone)


@settings(max_examples=25, deadline=None)
@given(shape=serving_shapes, seed=st.integers(0, 1000))
def test_strict_pooling_after_the_keys(shape, seed):
    """K queries after L keys see the null slot and every key: fast equals reference, and each
    query gets what strict pooling gives at position L of a sequence of L + 1."""
    B, H, L, K, d = shape
    q = _leaves((B, H, K, d), seed=seed)[0]
    k, v = _leaves(*[(B, H, L + 1, d)] * 2, seed=seed + 1)  # key L is the query's own: never seen
    null_k, null_v = _leaves((H, d), (H, d), seed=seed + 2)
    reference = strict_pooling(q, k[:, :, :L], v[:, :, :L], null_k, null_v, after=True, engine="reference")
    _close(strict_pooling(q, k[:, :, :L], v[:, :, :L], null_k, null_v, after=True), reference)
    for i in range(K):
        queries = torch.cat([torch.zeros(B, H, L, d, dtype=q.dtype), q[:, :, i : i + 1]], dim=2)  # query i at L
        _close(reference[:, :, i], strict_pooling(queries, k, v, null_k, null_v, engine="reference")[:, :, L])


@settings(max_examples=40, deadline=None)
@given(shape=serving_shapes, new=st.integers(0, 4), seed=st.integers(0, 1000), mvp=st.booleans(),
       wait=st.integers(0, 10**6))
def test_warm_pointwise_attention(shape, new, seed, mvp, wait):
    """A warm request's one slab (M new tokens after L cached, then K targets) equals its reference,
    which is the continuation of the M new tokens followed by the K targets after all L + M keys —
    with the new tokens' memo made and then reused, as a second layer does."""
    B, H, L, K, d = shape
    q = _leaves((B, H, new + K, d), seed=seed)[0].detach()
    k, v, u = (t.detach() for t in _leaves(*[(B, H, L + new, d)] * 3, seed=seed + 1))
    k_t, v_t = (t.detach() for t in _leaves(*[(B, H, K, d)] * 2, seed=seed + 2))
    u = u if mvp else None
    drawn = random_tables(B, H, L + new + 1, seed)  # the history's and new tokens' times, then the targets'
    drawn.timestamps[:, -1] += wait
    tables = BiasTables(drawn.position.detach(), drawn.time.detach(), drawn.timestamps, blocks={})
    reference = warm_pointwise_attention(q, k_t, v_t, k, v, u, tables, new, engine="reference")
    continued = pointwise_attention(q[:, :, :new], k, v, tables._replace(timestamps=tables.timestamps[:, :-1]), u,
                                    engine="reference")
    after = target_pointwise_attention(q[:, :, new:], k_t, v_t, k, v if u is None else v + u, tables, after=True,
                                       engine="reference")
    _close(reference, torch.cat([continued, after], dim=2))
    _close(warm_pointwise_attention(q, k_t, v_t, k, v, u, tables, new), reference)
    _close(warm_pointwise_attention(q.flip(-1), k_t, v_t, k, v, u, tables, new),  # the next layer: memo reused
           warm_pointwise_attention(q.flip(-1), k_t, v_t, k, v, u, tables, new, engine="reference"))
