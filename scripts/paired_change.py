"""Compare a variant's comparison with a base one, paired by formulation and seed, on validation loss.

    python scripts/paired_change.py runs/variants/base/results.json runs/variants/pool_heads-1/results.json

prints, per formulation, `(L_base − L_variant) / L_base` on the validation loss (> 0: the variant
is better) with its 95% interval over the shared seeds. `--split test` exists for the final report
only: choices are made on validation loss.
"""

from __future__ import annotations

import argparse
import json

from causalgr.training.compare import paired_change

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("base")
parser.add_argument("variant")
parser.add_argument("--split", default="valid", choices=("valid", "test"))
args = parser.parse_args()
base, variant = (json.loads(open(path).read()) for path in (args.base, args.variant))
for formulation, (mean, ci, seeds) in paired_change(base, variant, args.split).items():
    interval = f"[{ci[0]:+.2%}, {ci[1]:+.2%}]" if ci else "(one seed: no interval)"
    print(f"{formulation}: {mean:+.2%} {interval} over {seeds} seeds ({args.split} loss)")
