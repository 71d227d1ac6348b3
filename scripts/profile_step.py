"""Profile (not a test): where one training step of `causalgr bench`'s case spends its time.

For each backbone and formulation: the fastest of 3 training steps and of 3 inference steps
(after 2 warm-ups), then, for the HSTU backbone, torch.profiler's table of one training step
sorted by self device time (CUDA) or self CPU time (CPU).

    python scripts/profile_step.py [--length 512] [--device cuda] [--formulations interleaved,lfa]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from causalgr.bench import Case, _timed, inference_step, make_batch, make_model, training_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--formulations", default="interleaved,lfa")
    parser.add_argument("--batch-events", type=int, default=65_536)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda
    for backbone in ("hstu", "softmax"):
        for formulation in args.formulations.split(","):
            case = Case(batch_events=args.batch_events, device=args.device).with_model(
                formulation=formulation, backbone=backbone, max_len=args.length, dim=args.dim)
            model, optimizer = make_model(case, total_steps=10)
            batch = make_batch(case)
            for _ in range(2):
                training_step(case, model, optimizer, batch)
            train = min(_timed(case, training_step, model, optimizer, batch) for _ in range(3))
            infer = min(_timed(case, inference_step, model, optimizer, batch) for _ in range(3))
            print(f"== {backbone} {formulation} L={args.length} B={case.batch_size}: "
                  f"train {train * 1e3:.1f} ms, infer {infer * 1e3:.1f} ms", flush=True)
            if backbone == "hstu":
                with profile(activities=activities) as profiler:
                    training_step(case, model, optimizer, batch)
                    if cuda:
                        torch.cuda.synchronize()
                sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
                print(profiler.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
