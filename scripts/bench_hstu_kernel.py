"""Benchmark (not a test; CUDA only): our Triton HSTU kernels alone, forward and backward, in
float32 and bfloat16, with the default time table (32 buckets) and with 2 buckets (to see what
the in-register bucket search costs), beside PyTorch's SDPA (flash) on the same shape for scale.
Prints the median of 5 calls after one warm-up, timed with CUDA events.

    python scripts/bench_hstu_kernel.py [--batch 128] [--heads 2] [--length 1024] [--head-dim 64]

The defaults are one layer of the `causalgr bench` HSTU case at dim 128, 65,536 events per step,
for `interleaved` at 512 events (1,024 tokens).
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from causalgr.models.kernels.bias import BiasTables
from causalgr.models.kernels.triton_hstu import triton_backward, triton_forward


def milliseconds(call, repeats: int = 5) -> float:
    call()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--head-dim", type=int, default=64)
    args = parser.parse_args()
    B, H, L, dh = args.batch, args.heads, args.length, args.head_dim
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, x, grad = (torch.randn(B, H, L, dh, device="cuda", generator=gen) for _ in range(4))
    timestamps = torch.cumsum(torch.randint(0, 86_400, (B, L), device="cuda", generator=gen), dim=1)
    print(f"B {B}, heads {H}, L {L}, head dim {dh}: median ms of 5 calls")
    for buckets in (32, 2):
        tables = BiasTables(torch.randn(2 * L, H, device="cuda"), torch.randn(buckets, H, device="cuda"), timestamps)
        for dtype in (torch.float32, torch.bfloat16):
            qd, kd, xd, gd = (t.to(dtype) for t in (q, k, x, grad))
            forward = milliseconds(lambda: triton_forward(qd, kd, xd, None, tables))
            backward = milliseconds(lambda: triton_backward(gd, qd, kd, xd, None, tables))
            print(f"triton, {buckets} time buckets, {dtype}: forward {forward:.2f} ms, backward {backward:.2f} ms",
                  flush=True)
    for dtype in (torch.float32, torch.bfloat16):
        qd, kd, xd = (t.to(dtype) for t in (q, k, x))
        sdpa = milliseconds(lambda: F.scaled_dot_product_attention(qd, kd, xd, is_causal=True))
        print(f"SDPA causal, {dtype}: forward {sdpa:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
