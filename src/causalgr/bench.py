"""Training / inference throughput and peak memory per formulation × backbone × length
(`causalgr bench`, whose options are in `causalgr.cli.bench`).

An event is one (item, action) pair whatever the token count, so `interleaved` (2N tokens)
and the N-token formulations are compared on the same work. Per length, every formulation
gets the same batch (batch_events // length rows of full-length histories); after warm-up the
formulations are timed in turns, one step each per round, so that load from other processes
falls on all of them alike, and the median step over the rounds is reported. Ratios to
`BASELINE` come from the same run.

A training step is the trainer's own (`causalgr.training.step.train_step`: forward, the
task-weighted ranking loss on every position, backward, gradient clipping, AdamW with the
trainer's weight-decay groups and lr schedule); an inference step is a `no_grad` forward.

Peak memory is measured for each case in a fresh subprocess, for one training step after one
warm-up step:
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
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from causalgr.batch import Batch
from causalgr.models import BASELINE, ModelConfig, build_model
from causalgr.training.config import OptimSection
from causalgr.training.step import Optimizer, train_step

# ModelConfig's defaults on the random batch's vocabulary: items 1..2000, three tasks, ratings 1..5.
MODEL = ModelConfig(num_items=2000, tasks=("like", "love", "dislike"), num_action_values=6)
MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated during one training step, minus the allocation before it",
    "cpu": "peak RSS (VmHWM after resetting it via /proc/self/clear_refs) during one training step minus the RSS "
    "before it, in a fresh subprocess per case, MALLOC_MMAP_THRESHOLD_=65536",
}


@dataclass(frozen=True, kw_only=True)
class Case:
    """One benchmarked model and how it is run. The histories are full length, so the sequence
    length is the model's `max_len`; everything else about the model is in `model`."""

    model: ModelConfig = MODEL
    batch_events: int = 8192
    device: str = "cpu"
    compile: bool = False
    bf16: bool = False
    threads: int | None = None  # CPU threads for torch; None = torch's default

    @property
    def length(self) -> int:
        return self.model.max_len

    @property
    def batch_size(self) -> int:
        return max(1, self.batch_events // self.length)

    @property
    def events_per_step(self) -> int:
        return self.batch_size * self.length

    def with_model(self, **settings) -> Case:
        """This case with some model settings changed, e.g. `with_model(formulation="lfa", max_len=512)`."""
        return replace(self, model=replace(self.model, **settings))

    def to_dict(self) -> dict:
        """JSON-able; `Case.from_dict` rebuilds it (the memory subprocess gets it this way)."""
        return {**asdict(self), "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, settings: dict) -> Case:
        return cls(**{**settings, "model": ModelConfig(**settings["model"])})


def make_batch(case: Case, seed: int = 0) -> Batch:
    """Full-length random histories: [batch_size, length] events, every one carrying loss."""
    gen = torch.Generator().manual_seed(seed)
    B, N, model = case.batch_size, case.length, case.model
    batch = Batch(
        items=torch.randint(1, model.num_items + 1, (B, N), generator=gen),
        labels=(torch.rand(B, N, len(model.tasks), generator=gen) < 0.3).float(),  # [B, N, T]
        action_values=torch.randint(1, model.num_action_values, (B, N), generator=gen) if model.num_action_values else None,
        timestamps=torch.cumsum(torch.randint(0, 86_400, (B, N), generator=gen), dim=1),
        lengths=torch.full((B,), N),
        loss_mask=torch.ones(B, N, dtype=torch.bool),
    )
    return batch.to(case.device)


def make_model(case: Case, total_steps: int) -> tuple[torch.nn.Module, Optimizer]:
    """The case's model (compiled if asked) and the trainer's optimizer, its schedule planned over `total_steps`."""
    if case.threads is not None:
        torch.set_num_threads(case.threads)
    torch.manual_seed(0)
    model = build_model(case.model).to(case.device)
    optimizer = Optimizer(model, OptimSection(), total_steps)
    return (torch.compile(model) if case.compile else model), optimizer


def _autocast(case: Case):
    return torch.autocast(torch.device(case.device).type, dtype=torch.bfloat16) if case.bf16 else nullcontext()


def training_step(case: Case, model: torch.nn.Module, optimizer: Optimizer, batch: Batch) -> None:
    """The trainer's step, with every task weighted 1, under bf16 autocast if the case asks."""
    model.train()
    with _autocast(case):
        train_step(model, optimizer, batch, [1.0] * len(case.model.tasks))


def inference_step(case: Case, model: torch.nn.Module, optimizer: Optimizer, batch: Batch) -> None:
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
    built = {case: make_model(case, total_steps=warmup + repeats) for case in cases}
    seconds = {case: {"train": [], "infer": []} for case in cases}
    for kind, step in (("train", training_step), ("infer", inference_step)):
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
    model, optimizer = make_model(case, total_steps=2)
    batch = make_batch(case)
    training_step(case, model, optimizer, batch)  # warm-up: optimizer state, lazy initialisation, compilation
    if case.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        training_step(case, model, optimizer, batch)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    before = _read_status_kib("VmRSS")
    training_step(case, model, optimizer, batch)
    return (_read_status_kib("VmHWM") - before) * 1024


def peak_memory_in_subprocess(case: Case) -> int | None:
    """`measure_peak_memory` in a fresh interpreter; None where the platform cannot measure it."""
    if not case.device.startswith("cuda") and not Path("/proc/self/clear_refs").exists():
        return None
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    code = "import sys; from causalgr.bench import _memory_main; _memory_main(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(case.to_dict())], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement failed for {case}:\n{done.stderr[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1])


def _memory_main(case_json: str) -> None:
    print(measure_peak_memory(Case.from_dict(json.loads(case_json))))


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
    warmup: int = 2, repeats: int = 5, memory: bool = True, progress: Callable[[dict], None] | None = None,
) -> dict:
    """The bench as a dict: `device`, `settings`, `memory_method` and one row per formulation × backbone × length.

    Each case is `template` with the row's formulation, backbone and length (`max_len`);
    `progress`, if given, is called with each row as it is measured.
    """
    rows = []
    for backbone in backbones:
        for length in lengths:
            cases = [template.with_model(formulation=f, backbone=backbone, max_len=length) for f in formulations]
            seconds = time_cases(cases, warmup, repeats)
            for case in cases:
                train, infer = statistics.median(seconds[case]["train"]), statistics.median(seconds[case]["infer"])
                rows.append({
                    "formulation": case.model.formulation, "backbone": backbone, "length": length,
                    "batch_size": case.batch_size, "events_per_step": case.events_per_step,
                    "train_events_per_second": case.events_per_step / train,
                    "infer_events_per_second": case.events_per_step / infer,
                    "peak_memory_bytes": peak_memory_in_subprocess(case) if memory else None,
                    "train_step_seconds": seconds[case]["train"], "infer_step_seconds": seconds[case]["infer"],
                })
                if progress is not None:
                    progress(rows[-1])
    add_ratios(rows)
    settings = template.to_dict()
    model = {k: v for k, v in settings.pop("model").items() if k not in ("formulation", "backbone", "max_len")}
    return {
        "device": device_description(template.device),
        "settings": {**model, **settings, "warmup": warmup, "repeats": repeats, "statistic": "median step time"},
        "memory_method": MEMORY_METHOD[torch.device(template.device).type] if memory else None,
        "rows": rows,
    }


def add_ratios(rows: list[dict]) -> None:
    """Each row's train / infer throughput and memory relative to `BASELINE`'s row at the same
    backbone and length (None where there is no such row or no memory figure)."""
    baseline = {(r["backbone"], r["length"]): r for r in rows if r["formulation"] == BASELINE}
    for row in rows:
        base = baseline.get((row["backbone"], row["length"]))
        for kind in ("train", "infer"):
            ratio = None if base is None else row[f"{kind}_events_per_second"] / base[f"{kind}_events_per_second"]
            row[f"{kind}_speedup_vs_{BASELINE}"] = ratio
        has_memory = base is not None and row["peak_memory_bytes"] and base["peak_memory_bytes"]
        row[f"memory_vs_{BASELINE}"] = row["peak_memory_bytes"] / base["peak_memory_bytes"] if has_memory else None


VS = f"vs {BASELINE}"
COLUMNS = ("backbone", "length", "formulation", "train ev/s", VS, "infer ev/s", VS, "peak MiB", VS)


def table_rows(result: dict) -> list[list[str]]:
    """The cells of the result table, one list per row, in COLUMNS order."""
    ratio = lambda x: "" if x is None else f"{x:.2f}×"
    rows = []
    for r in result["rows"]:
        memory = r["peak_memory_bytes"]
        rows.append([
            r["backbone"], str(r["length"]), r["formulation"],
            f"{r['train_events_per_second']:,.0f}", ratio(r[f"train_speedup_vs_{BASELINE}"]),
            f"{r['infer_events_per_second']:,.0f}", ratio(r[f"infer_speedup_vs_{BASELINE}"]),
            "" if memory is None else f"{memory / 2**20:,.1f}", ratio(r[f"memory_vs_{BASELINE}"]),
        ])
    return rows


def markdown_table(result: dict) -> str:
    """The result table in Markdown, as docs/benchmarks.md shows it."""
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
