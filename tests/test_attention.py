"""Each fast attention path equals its plain reference, in values and in gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from causalgr.models.attention import pointwise_attention, softmax_attention, strict_pooling

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
        lambda *x: softmax_attention(*x, reference=True),
        inputs,
    )


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 1000), mvp=st.booleans())
def test_pointwise_attention(shape, seed, mvp):
    B, H, L, d = shape
    q, k, v, bias, u = _leaves((B, H, L, d), (B, H, L, d), (B, H, L, d), (B, H, L, L), (B, H, L, d), seed=seed)
    inputs = [q, k, v, bias] + ([u] if mvp else [])
    _assert_same(
        lambda *x: pointwise_attention(*x),
        lambda *x: pointwise_attention(*x, reference=True),
        inputs,
    )


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 1000))
def test_strict_pooling(shape, seed):
    B, H, L, d = shape
    inputs = _leaves((B, H, L, d), (B, H, L, d), (B, H, L, d), (H, d), (H, d), seed=seed)
    _assert_same(
        lambda *x: strict_pooling(*x),
        lambda *x: strict_pooling(*x, reference=True),
        inputs,
    )


def test_softmax_diagonal_blocks_agree():
    """The blocked α_nn of the mvp diagonal correction is exact across block boundaries."""
    from causalgr.models.attention import _softmax_diagonal

    q, k = torch.randn(2, 2, 70, 8, dtype=torch.float64), torch.randn(2, 2, 70, 8, dtype=torch.float64)
    scores = (q @ k.transpose(-2, -1)) / 8**0.5
    probs = scores.masked_fill(~torch.ones(70, 70, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    expected = probs.diagonal(dim1=-2, dim2=-1)
    for block in (1, 16, 64, 256):
        torch.testing.assert_close(_softmax_diagonal(q, k, block=block), expected)


@pytest.mark.parametrize("L", [1, 2, 5])
def test_strict_pooling_first_position_is_null(L):
    """At n = 0 only the null slot is visible: the output is the null value."""
    q, k, v = (torch.randn(1, 2, L, 4) for _ in range(3))
    null_k, null_v = torch.randn(2, 4), torch.randn(2, 4)
    out = strict_pooling(q, k, v, null_k, null_v)
    torch.testing.assert_close(out[0, :, 0], null_v)
