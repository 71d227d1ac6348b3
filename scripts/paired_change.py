"""Compare variants' comparisons with a base one, paired by formulation and seed, on validation loss,
and say which variant the project's rule adopts.

    python scripts/paired_change.py runs/results/ml-100k-hstu/results.json runs/select/ml-100k/*/results.json
    python scripts/paired_change.py BASE VARIANT... --adopted    # the adopted folder and its --set flags (scripts)

prints, per variant and formulation, `(L_base − L_variant) / L_base` on the validation loss (> 0:
the variant is better) with its 95% interval over the shared seeds, then the rule's verdict. The
rule (README, "Choosing the defaults"): a variant passes when its interval is above zero for a
formulation and below zero for none; of the variants that pass, the one with the largest mean
change over the formulations is adopted — one change per dataset, combinations are not searched.
A variant's change is the `--set` flags its `compare` command has and the base's has not.
`--adopted` prints one line for scripts: the adopted comparison's folder (the base's when no
variant passes), then every `--set KEY=VALUE` of the command that made it.
`--split test` exists for the final report only: choices are made on validation loss.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import numpy as np

from causalgr.training.compare import paired_change


def set_flags(results: dict) -> list[str]:
    """The `--set KEY=VALUE` values of the `compare` command that made `results`."""
    words = shlex.split(results["command"])
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--set"]


def passes(changes: dict) -> bool:
    intervals = [ci for _, ci, _ in changes.values() if ci]
    return any(low > 0 for low, _ in intervals) and not any(high < 0 for _, high in intervals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--split", default="valid", choices=("valid", "test"))
    parser.add_argument("--adopted", action="store_true", help="print only the adopted folder and its --set flags")
    args = parser.parse_args()
    base = json.loads(open(args.base).read())
    passing = {}
    for path in args.variants:
        variant = json.loads(open(path).read())
        change = [flag for flag in set_flags(variant) if flag not in set_flags(base)]
        changes = paired_change(base, variant, args.split)
        if passes(changes):
            passing[path] = float(np.mean([m for m, _, _ in changes.values()]))
        if args.adopted:
            continue
        print(f"{' '.join(change) or '(no change)'} ({path}): {'passes' if passes(changes) else 'does not pass'}")
        for formulation, (mean, ci, seeds) in changes.items():
            interval = f"[{ci[0]:+.2%}, {ci[1]:+.2%}]" if ci else "(one seed: no interval)"
            print(f"  {formulation}: {mean:+.2%} {interval} over {seeds} seeds ({args.split} loss)")
    adopted = max(passing, key=passing.get) if passing else args.base
    if args.adopted:
        flags = set_flags(json.loads(open(adopted).read()))
        print(" ".join([str(Path(adopted).parent), *(f"--set {flag}" for flag in flags)]))
    elif passing:
        print(f"adopted: {adopted} (mean change {passing[adopted]:+.2%})")
    else:
        print("adopted: none (the base stays)")


if __name__ == "__main__":
    main()
