"""The numbers behind docs/distributed.md's multi-node plan: per formulation, what one
data-parallel step communicates, and the item-table size at which sharding becomes necessary.

    .venv/bin/python scripts/plan_scaleout.py [--items 10000000] [--dim 256] [--layers 8] [--heads 4]
        [--events-per-gpu 65536] [--gpu-gib 80] [--table-share 0.5] [--link-gbs 50] [--step-ms 200]

Parameter counts come from the models themselves (`build_model`, as `causalgr params`); the rest
is arithmetic on the stated assumptions (fp32 weights and gradients, AdamW's two moments, ring
all-reduce, row-wise sharded table) — nothing here is measured.
"""

from __future__ import annotations

import argparse

import torch

from causalgr.models import FORMULATIONS, ModelConfig, build_model

FP32 = 4
ADAMW_BYTES_PER_PARAM = 4 * FP32  # weight, gradient, two moments


def dense_parameters(formulation: str, args: argparse.Namespace) -> int:
    """Parameters outside the item table (counted on a 2-item model: the table's size is separate)."""
    config = ModelConfig(formulation=formulation, backbone=args.backbone, num_items=2, tasks=("a", "b", "c"),
                         dim=args.dim, layers=args.layers, heads=args.heads, max_len=args.max_len)
    with torch.device("meta"):
        return build_model(config).num_parameters(include_items=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--backbone", default="hstu")
    parser.add_argument("--events-per-gpu", type=int, default=65_536, help="events per GPU per step (32 users × 2048)")
    parser.add_argument("--gpu-gib", type=float, default=80.0)
    parser.add_argument("--table-share", type=float, default=0.5, help="share of GPU memory the table may take")
    parser.add_argument("--link-gbs", type=float, default=50.0, help="per-GPU inter-node bandwidth, GB/s (400 Gb/s IB)")
    parser.add_argument("--step-ms", type=float, default=200.0, help="compute time of one step, for the shares")
    args = parser.parse_args()

    gb = 1e9
    table_bytes = args.items * args.dim * FP32
    ring = 2  # a ring all-reduce sends and receives ~2 × the buffer per GPU for large P
    lookups = args.events_per_gpu * args.dim * FP32 * 2  # rows fetched forward + gradients sent back
    print(f"size: dim {args.dim}, {args.layers} layers, {args.heads} heads, {args.backbone}, {args.items:,} items; "
          f"{args.events_per_gpu:,} events per GPU per step; links {args.link_gbs:g} GB/s per GPU\n")
    print("| formulation | dense params | dense all-reduce / step | time at link | share of a "
          f"{args.step_ms:g} ms step |")
    print("|---|---:|---:|---:|---:|")
    for formulation in FORMULATIONS:
        dense = dense_parameters(formulation, args)
        volume = ring * dense * FP32
        seconds = volume / (args.link_gbs * gb)
        print(f"| `{formulation}` | {dense:,} | {volume / 1e6:.1f} MB | {seconds * 1e3:.2f} ms | "
              f"{seconds * 1e3 / args.step_ms:.1%} |")
    print()
    budget = args.gpu_gib * 2**30 * args.table_share
    rows_memory = budget / (ADAMW_BYTES_PER_PARAM * args.dim)
    rows_comm = 0.1 * args.step_ms / 1e3 * args.link_gbs * gb / (ring * args.dim * FP32)
    print(f"item table: {table_bytes / gb:.2f} GB of fp32 weights, {args.items * args.dim * ADAMW_BYTES_PER_PARAM / gb:.1f} GB "
          "with its gradient and AdamW moments")
    print(f"- a dense (replicated) table all-reduces {ring * table_bytes / gb:.2f} GB per step: "
          f"{ring * table_bytes / (args.link_gbs * gb):.2f} s at the link")
    print(f"- sharding is needed for memory above {rows_memory / 1e6:.1f}M rows ({args.table_share:.0%} of "
          f"{args.gpu_gib:g} GiB, 16 bytes per weight)")
    print(f"- and for communication above {rows_comm / 1e6:.2f}M rows (a replicated table's all-reduce past "
          f"10% of a {args.step_ms:g} ms step)")
    print(f"- row-wise sharded: an all-to-all of the looked-up rows, {lookups / 1e6:.0f} MB per GPU per step "
          f"({lookups / (args.link_gbs * gb) * 1e3:.1f} ms at the link), the same for every formulation "
          "(each looks up one item row per event; `interleaved`'s action tokens use the small action table)")


if __name__ == "__main__":
    main()
