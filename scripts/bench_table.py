"""Print a `causalgr bench` JSON file as the Markdown table used in docs/benchmarks.md.

    python scripts/bench_table.py hstu.json
"""

from __future__ import annotations

import json
import sys


def ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def main(path: str) -> None:
    result = json.loads(open(path, encoding="utf-8").read())
    print(f"device: {result['device']}\n")
    print("| backbone | length | formulation | train ev/s | × il. | infer ev/s | × il. | peak train MiB | × il. |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in result["rows"]:
        memory = row["peak_memory_bytes"]
        print(
            f"| {row['backbone']} | {row['length']} | {row['formulation']} "
            f"| {row['train_events_per_second']:,.0f} | {ratio(row['train_speedup_vs_interleaved'])} "
            f"| {row['infer_events_per_second']:,.0f} | {ratio(row['infer_speedup_vs_interleaved'])} "
            f"| {'–' if memory is None else f'{memory / 2**20:,.1f}'} | {ratio(row['memory_vs_interleaved'])} |"
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/bench_table.py BENCH.json")
    main(sys.argv[1])
