"""The fast HSTU kernels (blocked PyTorch, Triton) equal the materialised reference, and stay O(L) in memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from causalgr.models.attention import (
    causal_mask,
    relative_bias,
    pointwise_attention,
    softmax_attention,
    strict_mask,
    target_aware_pointwise_attention,
    target_aware_softmax_attention,
)
from causalgr.models.kernels import BiasTables, blocked, default_engine, fast_pointwise_attention, triton_available
from causalgr.models.kernels.bias import bucket_edges, time_buckets
from causalgr.models.timegaps import log_bucket
from model_helpers import LargestTensor

VARIANTS = ["causal", "strict", "mvp"]
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_inputs(B, H, L, d, seed, dtype=torch.float64, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, u = (torch.randn(B, H, L, d, generator=gen, dtype=dtype) for _ in range(4))
    gaps = torch.randint(0, 10, (B, L), generator=gen) ** torch.randint(0, 8, (B, L), generator=gen)
    tables = BiasTables(
        torch.randn(2 * L, H, generator=gen, dtype=dtype), torch.randn(32, H, generator=gen, dtype=dtype),
        torch.cumsum(gaps, dim=1),
    )
    move = lambda t: t.to(device).requires_grad_(t.is_floating_point())  # noqa: E731
    return [move(t) for t in (q, k, v, u)], BiasTables(*(move(t) for t in tables[:3]))


def run(variant, q, k, v, u, tables, **kwargs):
    """The variant through the fast entry point."""
    mvp = variant == "mvp"
    return fast_pointwise_attention(q, k, v, tables, u if mvp else None, strict=variant == "strict", **kwargs)


def reference(variant, q, k, v, u, tables):
    return pointwise_attention(q, k, v, tables, u if variant == "mvp" else None, strict=variant == "strict", engine="reference")


def values_and_grads(fn, leaves):
    out = fn()
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    return out, torch.autograd.grad((out * weights).sum(), leaves)


def assert_matches_reference(variant, leaves, tables, atol, **kwargs):
    q, k, v, u = leaves
    used = [q, k, v, tables.position, tables.time] + ([u] if variant == "mvp" else [])
    fast, fast_grads = values_and_grads(lambda: run(variant, q, k, v, u, tables, **kwargs), used)
    ref, ref_grads = values_and_grads(lambda: reference(variant, q, k, v, u, tables), used)
    torch.testing.assert_close(fast, ref, atol=atol, rtol=atol)
    for name, a, b in zip(["q", "k", "v", "position", "time", "u"], fast_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=atol, rtol=atol, msg=lambda m: f"grad {name}: {m}")


@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 50), st.sampled_from([4, 8])),
    block=st.sampled_from([1, 3, 16, None]),
    variant=st.sampled_from(VARIANTS),
    seed=st.integers(0, 1000),
)
def test_blocked_equals_reference(shape, block, variant, seed):
    leaves, tables = make_inputs(*shape, seed)
    assert_matches_reference(variant, leaves, tables, atol=1e-10, engine="blocked", block=block)


@settings(max_examples=20, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 50), st.sampled_from([4, 8])),
    block=st.sampled_from([1, 7, 16, None]),
    variant=st.sampled_from(VARIANTS),
    seed=st.integers(0, 1000),
    in_order=st.booleans(),
)
def test_serving_block_memo_equals_reference(shape, block, variant, seed, in_order):
    """Serving's path (tables with a `blocks` memo: each block's bias and mask made once, forward
    only) equals the reference, and a second layer's call with the same memo (reusing every block)
    equals it too. Timestamps in order (a served history) take the runs path, others the gather."""
    (q, k, v, u), tables = make_inputs(*shape, seed)
    q, k, v, u = (t.detach() for t in (q, k, v, u))
    timestamps = tables.timestamps if in_order else tables.timestamps.flip(1)
    tables = BiasTables(*(t.detach() for t in tables[:2]), timestamps, blocks={})
    want = reference(variant, q, k, v, u, tables)
    first = run(variant, q, k, v, u, tables, engine="blocked", block=block)
    assert tables.blocks["in order"] == (in_order or bool((timestamps[:, 1:] == timestamps[:, :-1]).all()))
    made = {key: t for key, t in tables.blocks.items() if isinstance(key, tuple)}
    biases = {key: t for key, t in made.items() if key[0] != "mask"}
    assert biases, "the serving path made no block bias"
    for (start, stop, keys), bias in biases.items():  # bit for bit the reference's rab of the block
        assert torch.equal(bias, relative_bias(tables)[:, :, start:stop, :keys])
    for (_, start, stop, strict), mask in made.items() - biases.items():  # 1/(n + 1) where allowed
        allowed = (strict_mask if strict else causal_mask)(stop, q.device)[start:stop].to(q.dtype)
        assert torch.equal(mask, allowed / torch.arange(start + 1, stop + 1, dtype=q.dtype)[:, None])
    second = run(variant, q.flip(-1), k, v, u, tables, engine="blocked", block=block)  # the next layer's queries
    assert all(tables.blocks[key] is made[key] for key in made) and len(made) == sum(
        isinstance(key, tuple) for key in tables.blocks)
    torch.testing.assert_close(first, want, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(second, reference(variant, q.flip(-1), k, v, u, tables), atol=1e-10, rtol=1e-10)


def test_bucket_edges_reproduce_log_bucket():
    """Counting edges ≤ gap gives `log_bucket`'s bucket exactly, float32 rounding near 2^k included."""
    for buckets in (1, 8, 32, 40):
        edges = bucket_edges(buckets, torch.device("cpu"))
        gaps = torch.cat([edges - 1, edges, edges + 1, torch.tensor([-10**9, -1, 0, 1, 2**40, 2**62])])
        gaps = torch.cat([gaps, torch.randint(0, 2**34, (300,))])
        timestamps = torch.cat([gaps, torch.zeros(1, dtype=torch.long)])[None]  # the last event at t = 0
        M = gaps.numel()
        got = time_buckets(timestamps, 0, M, M + 1, buckets)[0, :, M]  # gap to the last event = gaps
        assert got.dtype == torch.int32
        torch.testing.assert_close(got.long(), log_bucket(gaps, buckets))


@pytest.mark.parametrize("variant", VARIANTS)
def test_blocked_never_builds_an_l_by_l_tensor(variant):
    """Forward and backward of the blocked kernel stay at block × L elements, far below L²."""
    L, block = 512, 32
    (q, k, v, u), tables = make_inputs(1, 1, L, 8, seed=0, dtype=torch.float32)
    with LargestTensor() as seen:
        run(variant, q, k, v, u, tables, engine="blocked", block=block).sum().backward()
    assert seen.largest <= block * L, f"an op returned {seen.largest} elements (L² = {L * L})"


class LiveBytes(TorchDispatchMode):
    """Records the peak of the bytes held by tensors that aten ops returned and that are still alive."""

    def __init__(self):
        super().__init__()
        self.live, self.peak = {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                self.live.setdefault(storage.data_ptr(), (StorageWeakRef(storage), storage.nbytes()))
        self.live = {ptr: ref for ptr, ref in self.live.items() if not ref[0].expired()}
        self.peak = max(self.peak, sum(nbytes for _, nbytes in self.live.values()))
        return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_blocked_backward_working_set(variant):
    """The backward keeps two [B, H, block, L] slabs alive (scores → weights → their gradient; sigmoid →
    SiLU's slope) plus the int32 time buckets, and frees a block's before the next one's: its working
    set is the part of a training step's peak memory that does not grow with the tokens."""
    B, H, L, d, block = 4, 2, 512, 8, 128
    (q, k, v, u), tables = make_inputs(B, H, L, d, seed=0, dtype=torch.float32)
    out = run(variant, q, k, v, u, tables, engine="blocked", block=block)
    grad = torch.randn_like(out)
    with LiveBytes() as seen:
        out.backward(grad)
    slab, per_token = B * H * block * L * 4, B * H * L * d * 4  # bytes of one block of scores; of one q, k, v
    scratch = 4 * block * L * 4  # [block, L] per block, not per (row, head): distances (int64), mask, a head's sum
    # bound: 2.5 slabs, the scratch, and the [B, H, L, d] gradients (q, k, x, y and their sums in autograd)
    assert seen.peak <= 2.5 * slab + scratch + 12 * per_token, f"peak {seen.peak / slab:.2f} slabs"


@pytest.mark.parametrize("mvp", [False, True])
def test_softmax_fast_path_never_builds_an_l_by_l_tensor(mvp):
    """SDPA plus, for mvp, the blocked α_nn: nothing above one 256-row block × L."""
    L = 1024
    q, k, v, u = (torch.randn(1, 1, L, 8, requires_grad=True) for _ in range(4))
    with LargestTensor() as seen:
        softmax_attention(q, k, v, u if mvp else None).sum().backward()
    assert seen.largest <= 256 * L, f"an op returned {seen.largest} elements (L² = {L * L})"


def test_target_aware_fast_paths_never_build_an_n_by_n_tensor(monkeypatch):
    """summed's 2N tokens: the HSTU path (causal + strict blocked kernels, 32 query rows a block) stays
    at block × N, the softmax path (two SDPA calls) at its [B, H, 2N, dh] inputs; forward and backward."""
    N, block = 512, 32
    monkeypatch.setattr(blocked, "SLAB_ELEMENTS", block * N)  # one [1, 1, 32, N] slab per block
    (q, k, v, _), tables = make_inputs(1, 1, 2 * N, 8, seed=0, dtype=torch.float32)
    tables = tables._replace(timestamps=tables.timestamps[:, :N])  # the twins of event n share t_n
    with LargestTensor() as seen:
        target_aware_pointwise_attention(q, k, v, tables).sum().backward()
    assert seen.largest <= block * N, f"an op returned {seen.largest} elements (N² = {N * N})"
    with LargestTensor() as seen:
        target_aware_softmax_attention(q, k, v).sum().backward()
    assert seen.largest <= 2 * N * 16, f"an op returned {seen.largest} elements (N² = {N * N})"


def test_auto_selects_blocked_on_cpu():
    assert default_engine(torch.device("cpu")) == "blocked"


# (L, dh, rows of the position table, query block, key block). The default 64 blocks, then small
# unequal ones, with which L = 70 spans several query and key blocks in both backward kernels and
# tiles straddle the diagonal; a position table shorter than L sends the far distances to its last row.
TRITON_CASES = [
    (1, 8, 2, 64, 64), (37, 8, 74, 64, 64), (70, 32, 140, 64, 64), (70, 32, 24, 16, 32), (70, 8, 140, 32, 16),
]


def check_triton(variant: str) -> None:
    """Our Triton forward and backward kernels match the reference (values, and the gradients of q, k,
    v, u and both bias tables) on small shapes, at the block sizes of TRITON_CASES."""
    from functools import partial
    from unittest import mock

    from causalgr.models.kernels import triton_hstu

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for L, d, positions, block_m, block_n in TRITON_CASES:
        leaves, tables = make_inputs(2, 2, L, d, seed=L + d, dtype=torch.float32, device=device)
        tables = tables._replace(position=tables.position[:positions])
        forward = partial(triton_hstu.triton_forward, block_m=block_m, block_n=block_n)
        backward = partial(triton_hstu.triton_backward, block_m=block_m, block_n=block_n)
        with (
            mock.patch.object(triton_hstu, "triton_forward", side_effect=forward) as fwd,
            mock.patch.object(triton_hstu, "triton_backward", side_effect=backward) as bwd,
        ):
            assert_matches_reference(variant, leaves, tables, atol=2e-5, engine="triton")
        assert fwd.called and bwd.called, "fast_pointwise_attention no longer calls the patched kernels"


def check_target_aware_triton() -> None:
    """summed's HSTU attention on the Triton engine (its causal and strict kernels, plus the own
    term) matches the reference: values and the gradients of q, k, v and both bias tables."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    N = 37
    (q, k, v, _), tables = make_inputs(2, 2, 2 * N, 8, seed=1, dtype=torch.float32, device=device)
    tables = tables._replace(timestamps=tables.timestamps[:, :N])  # the twins of event n share t_n
    leaves = [q, k, v, tables.position, tables.time]
    fast, fast_grads = values_and_grads(
        lambda: target_aware_pointwise_attention(q, k, v, tables, engine="triton"), leaves
    )
    ref, ref_grads = values_and_grads(
        lambda: target_aware_pointwise_attention(q, k, v, tables, engine="reference"), leaves
    )
    for name, a, b in zip(["out", "q", "k", "v", "position", "time"], [fast, *fast_grads], [ref, *ref_grads]):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5, msg=lambda m: f"{name}: {m}")


def in_triton(check: str, *args) -> None:
    """Run the function `check` of this module: on CUDA the compiled kernels here; on CPU Triton's
    interpreter, which must be switched on before triton is first imported — so in a fresh
    interpreter (this process imported it already)."""
    if torch.cuda.is_available():
        globals()[check](*args)
        return
    code = f"import test_kernels; test_kernels.{check}(*{args!r})"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


@needs_triton
@pytest.mark.parametrize("variant", VARIANTS)
def test_triton_kernel_equals_reference(variant):
    in_triton("check_triton", variant)


@needs_triton
def test_triton_target_aware_equals_reference():
    in_triton("check_target_aware_triton")


@needs_cuda
@needs_triton
def test_auto_selects_triton_on_cuda():
    assert default_engine(torch.device("cuda")) == "triton"


@needs_cuda
@needs_triton
@pytest.mark.parametrize("variant", VARIANTS)
def test_triton_long_sequence_on_cuda(variant):
    """A length spanning many key blocks, with the compiled kernel, against the blocked path."""
    (q, k, v, u), tables = make_inputs(2, 2, 1000, 32, seed=5, dtype=torch.float32, device="cuda")
    with torch.no_grad():
        fast = run(variant, q, k, v, u, tables, engine="triton")
        blocked = run(variant, q, k, v, u, tables, engine="blocked")
    torch.testing.assert_close(fast, blocked, atol=1e-4, rtol=1e-4)


@needs_cuda
@needs_triton
@pytest.mark.parametrize("variant", VARIANTS)
def test_triton_long_sequence_backward_on_cuda(variant):
    """The compiled backward over many query and key blocks: values and gradients against the blocked
    engine in float64, each to 1e-4 of its largest entry (float32 sums of up to ~10⁶ terms, in any order)."""
    leaves, tables = make_inputs(2, 2, 1000, 32, seed=6, dtype=torch.float32, device="cuda")
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    tables64 = BiasTables(*(t.detach().double().requires_grad_() if t.is_floating_point() else t for t in tables[:3]))

    def used(leaves, tables):  # as in assert_matches_reference: u only where the variant uses it
        return [*leaves[:3], tables.position, tables.time] + ([leaves[3]] if variant == "mvp" else [])

    fast, fast_grads = values_and_grads(lambda: run(variant, *leaves, tables, engine="triton"), used(leaves, tables))
    exact, exact_grads = values_and_grads(
        lambda: run(variant, *leaves64, tables64, engine="blocked"), used(leaves64, tables64)
    )
    for name, a, b in zip(["out", "q", "k", "v", "position", "time", "u"], [fast, *fast_grads], [exact, *exact_grads]):
        assert a.dtype == torch.float32
        tol = 1e-4 * b.abs().max().item()
        torch.testing.assert_close(a.double(), b, atol=tol, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@needs_cuda
@needs_triton
@pytest.mark.parametrize("variant", VARIANTS)
def test_triton_bfloat16_on_cuda(variant):
    """Under bf16 autocast q, k, v and u reach the kernels in bfloat16 and the bias tables stay
    float32: values and gradients against the blocked engine in float64 on the same (rounded)
    inputs, each to 2% of its largest entry (bfloat16 keeps 8 bits of mantissa)."""
    leaves, tables = make_inputs(2, 2, 300, 32, seed=7, dtype=torch.float32, device="cuda")
    leaves = [t.detach().bfloat16().requires_grad_() for t in leaves]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    tables64 = BiasTables(*(t.detach().double().requires_grad_() if t.is_floating_point() else t for t in tables[:3]))

    def used(leaves, tables):
        return [*leaves[:3], tables.position, tables.time] + ([leaves[3]] if variant == "mvp" else [])

    fast, fast_grads = values_and_grads(lambda: run(variant, *leaves, tables, engine="triton"), used(leaves, tables))
    exact, exact_grads = values_and_grads(
        lambda: run(variant, *leaves64, tables64, engine="blocked"), used(leaves64, tables64)
    )
    assert fast.dtype == torch.bfloat16
    for name, a, b in zip(["out", "q", "k", "v", "position", "time", "u"], [fast, *fast_grads], [exact, *exact_grads]):
        tol = 2e-2 * b.abs().max().item()
        torch.testing.assert_close(a.double(), b, atol=tol, rtol=2e-2, msg=lambda m: f"{name}: {m}")
