"""Print a `causalgr bench` JSON file as the Markdown table used in docs/benchmarks.md.

    python scripts/bench_table.py hstu.json
"""

from __future__ import annotations

import json
import sys

from causalgr.bench import markdown_table

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/bench_table.py BENCH.json")
    print(markdown_table(json.loads(open(sys.argv[1], encoding="utf-8").read())))
