"""`causalgr bench`: training / inference throughput and peak memory per formulation × backbone × length.

An event is one (item, action) pair whatever the token count, so `interleaved` (2N tokens)
and the N-token formulations are compared on the same work. Per length, every formulation
gets the same batch (batch_events // length rows of full-length histories); after warm-up the
formulations are timed in turns, one step each per round, so that load from other processes
falls on all of them alike, and the median step over the rounds is reported. Ratios to
`interleaved` come from the same run.

Peak memory is measured for each case in a fresh subprocess, for one training step (forward,
loss, backward, optimizer step) after one warm-up step:
- CUDA: `torch.cuda.max_memory_allocated()` minus the allocation before the step.
- CPU: the process's peak resident set (Linux `VmHWM`, reset through `/proc/self/clear_refs`)
  minus the resident set before the step, with glibc told to serve every allocation above
  64 KiB by mmap (`MALLOC_MMAP_THRESHOLD_`), so freed tensors leave the resident set at once
  and the peak follows the live tensors rather than the allocator's caching. Checked against
  the peak of the bytes held by live tensors (a dispatch-mode tracker, docs/benchmarks.md):
  the two agree to within about 2 MiB, so the figure is the step's tensors, not glibc arenas
  or library workspaces.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import typer

from causalgr.batch import Batch
from causalgr.models import BACKBONES, FORMULATIONS, ModelConfig, build_model

TASKS = ("like", "love", "dislike")
NUM_ITEMS = 2000
MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated during one training step, minus the allocation before it",
    "cpu": "peak RSS (VmHWM after resetting it via /proc/self/clear_refs) during one training step minus the RSS "
    "before it, in a fresh subprocess per case, MALLOC_MMAP_THRESHOLD_=65536",
}


@dataclass(frozen=True)
class Case:
    """One benchmarked model: a formulation on a backbone at one sequence length."""

    formulation: str
    backbone: str
    length: int
    dim: int = 64
    layers: int = 2
    heads: int = 2
    batch_events: int = 8192
    device: str = "cpu"
    attention: str = "auto"
    compile: bool = False
    bf16: bool = False
    threads: int | None = None  # CPU threads for torch; None = torch's default

    @property
    def batch_size(self) -> int:
        return max(1, self.batch_events // self.length)

    @property
    def events_per_step(self) -> int:
        return self.batch_size * self.length


def make_batch(case: Case, seed: int = 0) -> Batch:
    """Full-length random histories: [batch_size, length] events with three tasks and ratings."""
    gen = torch.Generator().manual_seed(seed)
    B, N = case.batch_size, case.length
    batch = Batch(
        items=torch.randint(1, NUM_ITEMS + 1, (B, N), generator=gen),
        labels=(torch.rand(B, N, len(TASKS), generator=gen) < 0.3).float(),
        action_values=torch.randint(1, 6, (B, N), generator=gen),
        timestamps=torch.cumsum(torch.randint(0, 86_400, (B, N), generator=gen), dim=1),
        lengths=torch.full((B,), N),
    )
    return batch.to(case.device)


def make_model(case: Case) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    if case.threads is not None:
        torch.set_num_threads(case.threads)
    torch.manual_seed(0)
    config = ModelConfig(
        formulation=case.formulation, backbone=case.backbone, num_items=NUM_ITEMS, tasks=TASKS, dim=case.dim,
        layers=case.layers, heads=case.heads, max_len=case.length, num_action_values=6, attention=case.attention,
    )
    model = build_model(config).to(case.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return (torch.compile(model) if case.compile else model), optimizer


def _autocast(case: Case):
    return torch.autocast(torch.device(case.device).type, dtype=torch.bfloat16) if case.bf16 else nullcontext()


def train_step(case: Case, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    model.train()
    with _autocast(case):
        loss = F.binary_cross_entropy_with_logits(model(batch).float(), batch.labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def infer_step(case: Case, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    model.eval()
    with torch.no_grad(), _autocast(case):
        model(batch)


def _timed(case: Case, step, *args) -> float:
    if case.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    step(case, *args)
    if case.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_cases(cases: list[Case], warmup: int, repeats: int) -> dict[Case, dict[str, list[float]]]:
    """Step seconds per case, the cases of one length taken in turns (one step each per round)."""
    batch = make_batch(cases[0])
    built = {case: make_model(case) for case in cases}
    seconds = {case: {"train": [], "infer": []} for case in cases}
    for kind, step in (("train", train_step), ("infer", infer_step)):
        for case, (model, optimizer) in built.items():
            for _ in range(warmup):
                step(case, model, optimizer, batch)
        for _ in range(repeats):
            for case, (model, optimizer) in built.items():
                seconds[case][kind].append(_timed(case, step, model, optimizer, batch))
    return seconds


def _read_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def measure_peak_memory(case: Case) -> int:
    """Peak bytes one training step adds (see the module docstring); run it in a fresh process."""
    model, optimizer = make_model(case)
    batch = make_batch(case)
    train_step(case, model, optimizer, batch)  # warm-up: optimizer state, lazy initialisation, compilation
    if case.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        train_step(case, model, optimizer, batch)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    before = _read_status_kib("VmRSS")
    train_step(case, model, optimizer, batch)
    return (_read_status_kib("VmHWM") - before) * 1024


def peak_memory_in_subprocess(case: Case) -> int | None:
    """`measure_peak_memory` in a fresh interpreter; None where the platform cannot measure it."""
    if not case.device.startswith("cuda") and not Path("/proc/self/clear_refs").exists():
        return None
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    code = "import json, sys; from causalgr.bench import _memory_main; _memory_main(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(asdict(case))], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement failed for {case}:\n{done.stderr[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1])


def _memory_main(case_json: str) -> None:
    print(measure_peak_memory(Case(**json.loads(case_json))))


def device_description(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (torch {torch.__version__})"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {torch.get_num_threads()} torch threads, {os.cpu_count()} logical CPUs (torch {torch.__version__})"


def run_bench(
    formulations: list[str], backbones: list[str], lengths: list[int], template: Case,
    warmup: int = 2, repeats: int = 5, memory: bool = True, progress=None,
) -> dict:
    """The bench as a dict: `device`, `settings`, `memory_method` and one row per formulation × backbone × length."""
    rows = []
    for backbone in backbones:
        for length in lengths:
            cases = [replace(template, formulation=f, backbone=backbone, length=length) for f in formulations]
            seconds = time_cases(cases, warmup, repeats)
            for case in cases:
                train, infer = statistics.median(seconds[case]["train"]), statistics.median(seconds[case]["infer"])
                rows.append({
                    "formulation": case.formulation, "backbone": backbone, "length": length,
                    "batch_size": case.batch_size, "events_per_step": case.events_per_step,
                    "train_events_per_second": case.events_per_step / train,
                    "infer_events_per_second": case.events_per_step / infer,
                    "peak_memory_bytes": peak_memory_in_subprocess(case) if memory else None,
                    "train_step_seconds": seconds[case]["train"], "infer_step_seconds": seconds[case]["infer"],
                })
                if progress is not None:
                    progress(rows[-1])
    _add_ratios(rows)
    device_type = torch.device(template.device).type
    return {
        "device": device_description(template.device),
        "settings": {**{k: v for k, v in asdict(template).items() if k not in ("formulation", "backbone", "length")},
                     "warmup": warmup, "repeats": repeats, "statistic": "median step time"},
        "memory_method": MEMORY_METHOD[device_type] if memory else None,
        "rows": rows,
    }


def _add_ratios(rows: list[dict]) -> None:
    """Each row's train / infer throughput and memory relative to `interleaved` at the same backbone and length."""
    baseline = {(r["backbone"], r["length"]): r for r in rows if r["formulation"] == "interleaved"}
    for row in rows:
        base = baseline.get((row["backbone"], row["length"]))
        for kind in ("train", "infer"):
            ratio = None if base is None else row[f"{kind}_events_per_second"] / base[f"{kind}_events_per_second"]
            row[f"{kind}_speedup_vs_interleaved"] = ratio
        has_memory = base is not None and row["peak_memory_bytes"] and base["peak_memory_bytes"]
        row["memory_vs_interleaved"] = row["peak_memory_bytes"] / base["peak_memory_bytes"] if has_memory else None


COLUMNS = ("backbone", "length", "formulation", "train ev/s", "vs il.", "infer ev/s", "vs il.", "peak MiB", "vs il.")


def table_rows(result: dict) -> list[list[str]]:
    """The cells of the result table, one list per row, in COLUMNS order."""
    ratio = lambda x: "" if x is None else f"{x:.2f}×"  # noqa: E731
    rows = []
    for r in result["rows"]:
        memory = r["peak_memory_bytes"]
        rows.append([
            r["backbone"], str(r["length"]), r["formulation"],
            f"{r['train_events_per_second']:,.0f}", ratio(r["train_speedup_vs_interleaved"]),
            f"{r['infer_events_per_second']:,.0f}", ratio(r["infer_speedup_vs_interleaved"]),
            "" if memory is None else f"{memory / 2**20:,.1f}", ratio(r["memory_vs_interleaved"]),
        ])
    return rows


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"causalgr bench — {result['device']}")
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in ("backbone", "formulation") else "right")
    for row in table_rows(result):
        table.add_row(*row)
    Console(width=max(Console().width, 120)).print(table)


def markdown_table(result: dict) -> str:
    """The same table in Markdown, as docs/benchmarks.md shows it."""
    align = ["---" if name in ("backbone", "formulation") else "---:" for name in COLUMNS]
    lines = [f"device: {result['device']}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    return "\n".join(lines)


def plot_throughput(result: dict, path: Path) -> None:
    """Train and inference events/s against sequence length, one line per formulation × backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    series = sorted({(r["formulation"], r["backbone"]) for r in result["rows"]})
    for ax, kind in zip(axes, ("train", "infer")):
        for formulation, backbone in series:
            rows = sorted((r for r in result["rows"] if (r["formulation"], r["backbone"]) == (formulation, backbone)),
                          key=lambda r: r["length"])
            ax.plot([r["length"] for r in rows], [r[f"{kind}_events_per_second"] for r in rows], marker="o",
                    label=f"{formulation} ({backbone})")
        ax.set(xscale="log", yscale="log", xlabel="events per sequence", ylabel="events / s", title=kind)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(result["device"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _split(value: str, allowed: tuple[str, ...] | None = None, kind=str) -> list:
    items = [kind(v.strip()) for v in value.split(",") if v.strip()]
    bad = [v for v in items if allowed is not None and v not in allowed]
    if not items or bad:
        raise typer.BadParameter(f"expected a comma-separated list of {allowed or kind.__name__}, got {value!r}")
    return items


def bench_command(
    formulations: str = typer.Option(",".join(FORMULATIONS), help="Comma-separated formulations."),
    backbone: str = typer.Option("hstu", help="Backbone, or a comma-separated list of them."),
    lengths: str = typer.Option("128,512,2048", help="Comma-separated sequence lengths in events."),
    dim: int = 64,
    layers: int = 2,
    heads: int = 2,
    batch_events: int = typer.Option(8192, help="Events per batch; batch size = batch_events // length."),
    repeats: int = typer.Option(5, help="Timed steps per case (the median is reported)."),
    warmup: int = typer.Option(2, help="Untimed steps per case before timing."),
    device: str = typer.Option("auto", help="auto (cuda if available), cpu or cuda[:i]."),
    attention: str = typer.Option("auto", help="auto (fast kernels) or reference (materialised masks)."),
    out: Path = typer.Option(..., help="JSON file to write."),
    plot: Path | None = typer.Option(None, help="PNG plot of throughput against length."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile every model."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 autocast in forward and loss."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Measure peak training memory (subprocess per case)."),
    threads: int | None = typer.Option(None, help="CPU threads for torch (default: torch's choice)."),
) -> None:
    """Training and inference events/s and peak training memory, per formulation × backbone × length."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    template = Case("interleaved", "hstu", 1, dim=dim, layers=layers, heads=heads, batch_events=batch_events,
                    device=device, attention=attention, compile=compile, bf16=bf16, threads=threads)
    if threads is not None:
        torch.set_num_threads(threads)
    result = run_bench(
        _split(formulations, FORMULATIONS), _split(backbone, BACKBONES), _split(lengths, kind=int), template,
        warmup=warmup, repeats=repeats, memory=memory,
        progress=lambda r: typer.echo(
            f"{r['backbone']} L={r['length']} {r['formulation']}: train {r['train_events_per_second']:,.0f} ev/s", err=True
        ),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    if plot is not None:
        plot_throughput(result, plot)
