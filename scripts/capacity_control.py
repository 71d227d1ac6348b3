"""The capacity control as a table: every formulation of a comparison against parameter-matched
controls (a deeper `interleaved` and `summed`), paired by seed, on test loss.

    python scripts/capacity_control.py runs/select/ml-100k/lr-2e-3/results.json \
        runs/results/ml-100k-hstu-layers-3/results.json

MAIN is the final comparison (its configuration, every formulation); CONTROL is the same
configuration with more layers for the controls only (`scripts/results.sh` runs it as
`results/DATA-hstu-layers-3`). `lfa` and `mvp` carry more parameters than `interleaved` and
`summed` (the pooling readout, the per-layer `W_a`): a control with one more layer has as many,
so a gain that survives against it is not bought by size. Prints a Markdown table: each run
group's layers, parameters besides the item table, test loss (mean ± 95% half-width over seeds)
and `(L_control − L) / L_control` against each control, paired by seed (> 0: better than the
control). The final configuration was chosen on validation loss before this table was made.
"""

from __future__ import annotations

import argparse
import json

from causalgr.training.compare import mean_ci95


def groups(results: dict) -> dict[str, dict[int, dict]]:
    """Runs of a comparison by formulation, then seed."""
    out: dict[str, dict[int, dict]] = {}
    for run in results["runs"]:
        out.setdefault(run["formulation"], {})[run["seed"]] = run
    return out


def change(runs: dict[int, dict], control: dict[int, dict]) -> str:
    seeds = sorted(set(runs) & set(control))
    values = [(control[s]["test"]["loss"] - runs[s]["test"]["loss"]) / control[s]["test"]["loss"] for s in seeds]
    mean, ci = mean_ci95(values)
    return f"{mean:+.2%} [{ci[0]:+.2%}, {ci[1]:+.2%}]" if ci else f"{mean:+.2%} ({len(seeds)} seed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("main", help="results.json of the final comparison")
    parser.add_argument("control", help="results.json of the deeper controls (same configuration otherwise)")
    args = parser.parse_args()
    main_results, control_results = (json.loads(open(path).read()) for path in (args.main, args.control))
    layers = main_results["config"]["model"]["layers"], control_results["config"]["model"]["layers"]
    controls = groups(control_results)
    names = [f"`{f}` ({layers[1]} layers)" for f in controls]
    print(f"| formulation | layers | parameters (w/o items) | test loss | " + " | ".join(f"vs {n}" for n in names) + " |")
    print("|---|---:|---:|---|" + "---|" * len(names))
    rows = [(f, layers[0], runs) for f, runs in groups(main_results).items()]
    rows += [(f, layers[1], runs) for f, runs in controls.items()]
    for formulation, depth, runs in rows:
        mean, ci = mean_ci95([run["test"]["loss"] for run in runs.values()])
        loss = f"{mean:.4f} ± {(ci[1] - mean):.4f}" if ci else f"{mean:.4f}"
        params = next(iter(runs.values()))["num_parameters_without_items"]
        cells = ["(control)" if runs is control else change(runs, control) for control in controls.values()]
        print(f"| `{formulation}` | {depth} | {params:,} | {loss} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
