"""README's paired tables across comparisons, on test loss, paired by seed: the capacity control
and the depth study. Both read the `results.json` of `causalgr compare` runs made by
`scripts/results.sh`; the configuration was chosen on validation loss before either was made.

    python scripts/paired_tables.py capacity runs/select/ml-100k/lr-2e-3/results.json \
        runs/results/ml-100k-hstu-layers-3/results.json
    python scripts/paired_tables.py depth runs/select/ml-100k/lr-2e-3/results.json \
        runs/results/ml-100k-hstu-layers-4/results.json

`capacity MAIN CONTROL`: `lfa` and `mvp` carry more parameters than `interleaved` and `summed`
(the pooling readout, the per-layer `W_a`); CONTROL runs those two with one more layer, as many
parameters, in MAIN's configuration otherwise. Every formulation of MAIN, and the controls, with
`(L_control − L) / L_control` against each control (> 0: better than the control).

`depth SHALLOW DEEP`: the same configuration at two depths, every formulation. Per formulation:
test loss at each depth over the seeds both have, the change with depth `(L_shallow − L_deep) /
L_shallow`, and the improvement over `interleaved` at each depth; then `mvp` against `lfa` at
each depth (the paper puts `mvp`'s per-layer action mixing ahead; does that gain grow with depth?).

Losses are mean ± 95% half-width over seeds; changes are mean [95% interval] over seeds.
"""

from __future__ import annotations

import argparse
import json

from causalgr.training.compare import mean_ci95

Runs = dict[int, dict]  # seed -> run entry of results.json


def groups(results: dict) -> dict[str, Runs]:
    """Runs of a comparison by formulation, then seed."""
    out: dict[str, Runs] = {}
    for run in results["runs"]:
        out.setdefault(run["formulation"], {})[run["seed"]] = run
    return out


def loss(runs: Runs) -> str:
    mean, ci = mean_ci95([run["test"]["loss"] for run in runs.values()])
    return f"{mean:.4f} ± {(ci[1] - mean):.4f}" if ci else f"{mean:.4f}"


def change(runs: Runs, against: Runs) -> str:
    """`(L_against − L_runs) / L_against` paired by seed: > 0 when `runs` is better."""
    seeds = sorted(set(runs) & set(against))
    values = [(against[s]["test"]["loss"] - runs[s]["test"]["loss"]) / against[s]["test"]["loss"] for s in seeds]
    mean, ci = mean_ci95(values)
    return f"{mean:+.2%} [{ci[0]:+.2%}, {ci[1]:+.2%}]" if ci else f"{mean:+.2%} ({len(seeds)} seed)"


def only(runs: Runs, seeds) -> Runs:
    """`runs` of the seeds in `seeds` (a collection of seeds, or another `Runs`)."""
    return {s: r for s, r in runs.items() if s in seeds}


def layers(results: dict) -> int:
    return results["config"]["model"]["layers"]


def capacity(main: dict, control: dict) -> None:
    controls = groups(control)
    names = [f"vs `{f}` ({layers(control)} layers)" for f in controls]
    print("| formulation | layers | parameters (w/o items) | test loss | " + " | ".join(names) + " |")
    print("|---|---:|---:|---|" + "---|" * len(names))
    rows = [(f, layers(main), runs) for f, runs in groups(main).items()]
    rows += [(f, layers(control), runs) for f, runs in controls.items()]
    for formulation, depth, runs in rows:
        params = next(iter(runs.values()))["num_parameters_without_items"]
        cells = ["(control)" if runs is other else change(runs, other) for other in controls.values()]
        print(f"| `{formulation}` | {depth} | {params:,} | {loss(runs)} | " + " | ".join(cells) + " |")


def depth(shallow: dict, deep: dict) -> None:
    few, many = groups(shallow), groups(deep)
    a, b = layers(shallow), layers(deep)
    print(f"| formulation | test loss, {a} layers | test loss, {b} layers | {b} vs {a} layers "
          f"| vs `interleaved`, {a} layers | vs `interleaved`, {b} layers |")
    print("|---|---|---|---|---|---|")
    for formulation, runs in many.items():
        mine = few[formulation]
        baseline = formulation == "interleaved"
        cells = [loss(only(mine, runs)), loss(runs), change(runs, mine),
                 "(baseline)" if baseline else change(only(mine, runs), only(few["interleaved"], runs)),
                 "(baseline)" if baseline else change(runs, many["interleaved"])]
        print(f"| `{formulation}` | " + " | ".join(cells) + " |")
    if "mvp" in many and "lfa" in many:
        seeds = many["mvp"]
        print(f"\n`mvp` vs `lfa`: {change(only(few['mvp'], seeds), only(few['lfa'], seeds))} at {a} layers, "
              f"{change(many['mvp'], many['lfa'])} at {b} layers.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=("capacity", "depth"))
    parser.add_argument("first", help="results.json: MAIN (capacity) or SHALLOW (depth)")
    parser.add_argument("second", help="results.json: CONTROL (capacity) or DEEP (depth)")
    args = parser.parse_args()
    first, second = (json.loads(open(path).read()) for path in (args.first, args.second))
    (capacity if args.table == "capacity" else depth)(first, second)


if __name__ == "__main__":
    main()
