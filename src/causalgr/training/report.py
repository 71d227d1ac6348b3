"""`report.md` and the PNG plots of a comparison's `results.json`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from causalgr.models import BASELINE, PRODUCTION_PEER

PLOTS = ("valid_curves.png", "rel_improvement.png", "ne_per_task.png", "time_throughput.png")


# --- number formatting -----------------------------------------------------------------------


def format_number(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}"


def plus_minus(mean, ci, digits: int = 4) -> str:
    """`mean ± half-width` of a 95% interval (just the mean without one)."""
    if ci is None:
        return format_number(mean, digits)
    return f"{format_number(mean, digits)} ± {format_number((ci[1] - ci[0]) / 2, digits)}"


def _pct(x, signed: bool = True) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{100 * x:+.2f}%" if signed else f"{100 * x:.2f}%"


def percent_ci(mean, ci) -> str:
    if mean is None:
        return "—"
    if ci is None:
        return _pct(mean)
    return f"{_pct(mean)} [{_pct(ci[0])}, {_pct(ci[1])}]"


def ratio_ci(mean, ci) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f}×" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci is not None else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- report.md -------------------------------------------------------------------------------


def render_markdown(results: dict) -> str:
    """The comparison report as Markdown (tables, plots, definitions, the producing command)."""
    data, config, summary = results["data"], results["config"], results["summary"]
    tasks = data["tasks"]
    floor = results.get("bayes_floor")
    m, o, t = config["model"], config["optim"], config["train"]
    seeds = results["seeds"]
    out = [f"# Formulation comparison on `{data['source']}` ({results['backbone']} backbone)", ""]
    if results.get("command"):
        out += ["Produced by:", "", "```", results["command"], "```", ""]
    stats = data.get("stats") or {}
    events = stats.get("events")
    out += [
        f"- data: `{data['path']}` — {data['num_users']:,} users, {data['num_items']:,} items"
        + (f", {events:,} events" if isinstance(events, int) else "")
        + f"; tasks: {', '.join(tasks)}",
        f"- seeds: {', '.join(map(str, seeds))} ({len(seeds)} per formulation); intervals are 95% Student-t over seeds",
        f"- same budget for every formulation: dim {m['dim']}, {m['layers']} layers, {m['heads']} heads, "
        f"dropout {m['dropout']}, AdamW lr {o['lr']:g} ({o['schedule']}, warm-up {o['warmup']:g}), "
        f"weight decay {o['weight_decay']:g}, batch {config['data']['batch_size']} users, "
        f"at most {t['epochs']} epochs, early stopping after {t['patience']} epochs without a better validation loss",
        f"- device: {results['device']}, {results['torch_threads']} torch threads",
        "",
        "## Test eval loss",
        "",
        "Summed log loss over the tasks on the test positions (streaming evaluation). Relative improvement is "
        "`(L_interleaved − L_model) / L_interleaved`, paired by seed; positive is better (against `summed`, the "
        "production peer, the same with `L_summed`). Choices between "
        "configurations are made on the validation columns; the test columns report the final one.",
        "",
    ]
    peer = PRODUCTION_PEER in results["formulations"]  # then a column vs the production peer too
    rows = [
        [
            f"`{s['formulation']}`",
            plus_minus(s["loss_mean"], s["loss_ci95"]),
            "(baseline)" if s["formulation"] == BASELINE else percent_ci(s["rel_improvement_mean"], s["rel_improvement_ci95"]),
            *([] if not peer else ["(peer)" if s["formulation"] == PRODUCTION_PEER else
                                   percent_ci(s["rel_improvement_vs_summed_mean"], s["rel_improvement_vs_summed_ci95"])]),
            format_number(s["valid_loss_mean"]),
            "(baseline)" if s["formulation"] == BASELINE else percent_ci(s["valid_rel_improvement_mean"],
                                                                         s["valid_rel_improvement_ci95"]),
            format_number(s["best_epoch_mean"], 1),
            f"{s['num_parameters']:,} ({s['num_parameters_without_items']:,})",
        ]
        for s in summary
    ]
    if floor:
        rows.append(["Bayes floor (true probabilities)", format_number(floor["loss"]), *["—"] * (5 + peer)])
    out += [
        _table(["formulation", "test loss", f"rel. improvement vs {BASELINE}",
                *[f"rel. improvement vs {PRODUCTION_PEER}"] * peer, "valid loss",
                f"valid rel. improvement vs {BASELINE}", "best epoch", "parameters (w/o item table)"], rows),
        "",
        "## NE per task (test)",
        "",
        "Normalized entropy: log loss divided by the entropy of the task's positive rate on the evaluated labels.",
        "",
    ]
    rows = [[f"`{s['formulation']}`"] + [plus_minus(s["tasks"][k]["ne_mean"], s["tasks"][k]["ne_ci95"]) for k in tasks]
            for s in summary]
    if floor:
        rows.append(["Bayes floor"] + [format_number(floor["tasks"][k]["ne"]) for k in tasks])
    out += [_table(["formulation"] + tasks, rows), "", "## AUC and GAUC per task (test)", "",
            "GAUC: per-user AUC weighted by the user's evaluated events; users with one class skipped.", ""]
    header = ["formulation"] + [f"{k} {metric}" for k in tasks for metric in ("AUC", "GAUC")]
    rows = [[f"`{s['formulation']}`"] + [format_number(s["tasks"][k][f"{metric}_mean"]) for k in tasks for metric in ("auc", "gauc")]
            for s in summary]
    if floor:
        rows.append(["Bayes floor"] + [format_number(floor["tasks"][k][metric]) for k in tasks for metric in ("auc", "gauc")])
    out += [_table(header, rows), "", "## Training time and throughput", "",
            "Events are loss-carrying (item, action) pairs, whatever the token count. Speedup is the ratio of the "
            f"runs' median per-epoch throughput vs `{BASELINE}` (= ratio of training-step seconds per epoch), paired "
            "by seed; time reduction is on total wall-clock training seconds (validation and early stopping "
            "included).", ""]
    disturbed = [run for s in summary for run in s["disturbed_runs"]]
    if disturbed:
        out += [f"Disturbed by other load on the machine (see `disturbed` below): {', '.join(disturbed)}. "
                "The medians keep a disturbed epoch from moving the speedup; total seconds are not protected.", ""]
    rows = [
        [
            f"`{s['formulation']}`",
            format_number(s["train_seconds_mean"], 1),
            format_number(s["seconds_to_best_mean"], 1),
            format_number(s["seconds_per_epoch_mean"], 2),
            f"{s['median_events_per_second_median']:,.0f}",
            *(["(baseline)"] * 2 if s["formulation"] == BASELINE else [
                ratio_ci(s["speedup_mean"], s["speedup_ci95"]),
                percent_ci(s["train_time_reduction_mean"], s["train_time_reduction_ci95"]),
            ]),
        ]
        for s in summary
    ]
    out += [_table(["formulation", "train s (total)", "s to best epoch", "s per epoch (steps)", "events/s (median)",
                    f"speedup vs {BASELINE}", f"time reduction vs {BASELINE}"], rows), "",
            "## Every run", ""]
    rows = [
        [r["run_dir"], str(r["seed"]), format_number(r["test"]["loss"]), format_number(r["valid"]["loss"]),
         f"{r['best_epoch']}/{r['epochs_run']}", format_number(r["train_seconds"], 1),
         f"{r['median_events_per_second']:,.0f}", ", ".join(map(str, r["disturbed_epochs"])) or "—"]
        for r in results["runs"]
    ]
    out += [_table(["run", "seed", "test loss", "valid loss", "best/epochs", "train s", "median events/s",
                    "disturbed epochs"], rows), "",
            "## Plots", ""]
    out += [f"![{name[:-4].replace('_', ' ')}]({name})" for name in PLOTS]
    out += ["", "## Definitions", ""]
    out += [f"- `{key}`: {text}" for key, text in results["definitions"].items()]
    return "\n".join(out) + "\n"


# --- plots -----------------------------------------------------------------------------------


def _colors(formulations: list[str]) -> dict[str, str]:
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
    return {f: palette[i % len(palette)] for i, f in enumerate(formulations)}


def _err(mean, ci):
    if mean is None or ci is None:
        return 0.0
    return [[mean - ci[0]], [ci[1] - mean]]


def write_plots(results: dict, out: Path) -> list[Path]:
    """The four PNG figures of a comparison, into `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    formulations = results["formulations"]
    colors = _colors(formulations)
    summary = {s["formulation"]: s for s in results["summary"]}
    tasks = results["data"]["tasks"]
    floor = results.get("bayes_floor")
    title = f"{results['data']['source']} · {results['backbone']} · {len(results['seeds'])} seeds"
    paths = []

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for f in formulations:
        curves = [r["valid_curve"] for r in results["runs"] if r["formulation"] == f]
        for curve in curves:
            ax.plot(range(1, len(curve) + 1), curve, color=colors[f], alpha=0.25, linewidth=0.8)
        longest = max(len(c) for c in curves)
        mean = [np.mean([c[e] for c in curves if len(c) > e]) for e in range(longest)]
        ax.plot(range(1, longest + 1), mean, color=colors[f], linewidth=2, label=f, marker="o", markersize=3)
    valid_floor = results.get("bayes_floor_valid")
    if valid_floor:
        ax.axhline(valid_floor["loss"], color="black", linestyle="--", linewidth=1, label="Bayes floor")
    ax.set(xlabel="epoch", ylabel="validation loss (summed log loss)", title=f"Validation loss · {title}")
    ax.legend()
    paths.append(_save(fig, out / "valid_curves.png"))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    others = [f for f in formulations if summary[f]["rel_improvement_mean"] is not None and f != BASELINE]
    for x, f in enumerate(others):
        s = summary[f]
        ax.bar(x, 100 * s["rel_improvement_mean"], color=colors[f],
               yerr=np.asarray(_err(s["rel_improvement_mean"], s["rel_improvement_ci95"])) * 100, capsize=6)
        base = {r["seed"]: r["test"]["loss"] for r in results["runs"] if r["formulation"] == BASELINE}
        points = [100 * (base[r["seed"]] - r["test"]["loss"]) / base[r["seed"]]
                  for r in results["runs"] if r["formulation"] == f and r["seed"] in base]
        ax.scatter([x] * len(points), points, color="black", s=12, zorder=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(others)), others)
    ax.set(ylabel=f"test loss improvement vs {BASELINE} (%)", title=f"Relative improvement, 95% CI · {title}")
    paths.append(_save(fig, out / "rel_improvement.png"))

    fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * len(tasks) + 2), 4.2))
    width = 0.8 / len(formulations)
    for i, f in enumerate(formulations):
        s = summary[f]
        xs = np.arange(len(tasks)) + (i - (len(formulations) - 1) / 2) * width
        means = [s["tasks"][k]["ne_mean"] for k in tasks]
        errs = np.hstack([np.asarray(_err(s["tasks"][k]["ne_mean"], s["tasks"][k]["ne_ci95"])).reshape(2, 1)
                          if s["tasks"][k]["ne_ci95"] else np.zeros((2, 1)) for k in tasks])
        ax.bar(xs, [np.nan if v is None else v for v in means], width, color=colors[f], label=f, yerr=errs, capsize=3)
    if floor:
        for x, k in enumerate(tasks):
            if floor["tasks"][k]["ne"] is not None:
                ax.hlines(floor["tasks"][k]["ne"], x - 0.45, x + 0.45, color="black", linestyle="--",
                          label="Bayes floor" if x == 0 else None)
    ax.set_xticks(range(len(tasks)), tasks)
    lows = [summary[f]["tasks"][k]["ne_mean"] for f in formulations for k in tasks]
    lows = [v for v in lows if v is not None] + ([floor["tasks"][k]["ne"] for k in tasks] if floor else [])
    lows = [v for v in lows if v is not None]
    if lows:
        ax.set_ylim(max(0.0, min(lows) - 0.05), max(lows) + 0.05)
    ax.set(ylabel="NE (test)", title=f"NE per task · {title}")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "ne_per_task.png"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    xs = np.arange(len(formulations))
    left.bar(xs, [summary[f]["train_seconds_mean"] for f in formulations],
             color=[colors[f] for f in formulations], alpha=0.5, label="total")
    left.bar(xs, [summary[f]["seconds_to_best_mean"] for f in formulations],
             color=[colors[f] for f in formulations], label="to best epoch")
    left.set_xticks(xs, formulations)
    left.set(ylabel="seconds", title="Training time (mean over seeds)")
    left.legend()
    rates = {f: [r["train_events_per_second"] for r in results["runs"] if r["formulation"] == f] for f in formulations}
    right.bar(xs, [np.mean(rates[f]) for f in formulations], color=[colors[f] for f in formulations],
              yerr=[np.std(rates[f]) for f in formulations], capsize=6)
    right.set_xticks(xs, formulations)
    right.set(ylabel="training events / s", title="Throughput (mean ± sd over seeds)")
    fig.suptitle(title)
    paths.append(_save(fig, out / "time_throughput.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_run_curves(history: list[dict], path: Path, title: str) -> Path:
    """Training and validation loss per epoch of one training run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(epochs, [r["train_loss"] for r in history], marker="o", markersize=3, label="train")
    ax.plot(epochs, [r["valid"]["loss"] for r in history], marker="o", markersize=3, label="validation")
    best = [r["epoch"] for r in history if r.get("best")]
    if best:
        ax.axvline(best[-1], color="grey", linestyle=":", label=f"best epoch {best[-1]}")
    ax.set(xlabel="epoch", ylabel="loss (summed log loss over tasks)", title=title)
    ax.legend()
    return _save(fig, path)


def write_report(results: dict, out: Path | str) -> None:
    """`report.md` and the plots of `results` into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_plots(results, out)
    (out / "report.md").write_text(render_markdown(results))
