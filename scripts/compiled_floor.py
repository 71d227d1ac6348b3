"""Benchmark (not a test): what a compiled candidates pass could do to the warm call's floor.

The warm call's floor (docs/serving.md) is a cached user ranked with no new event: only the K
candidates run. In eager PyTorch that is some 60 small ops, each paying the dispatcher and
Python. This script measures, for `lfa` on HSTU (dim 64, 2 layers, history 512, untrained, one
torch thread, CPU), at each K:

- `cold`: `Ranker.rank` with the 512 events in the call (no cache), for the ratios;
- `Ranker.rank(user=…)`: the floor as served (validation, ids, cache lookup, then the model);
- `model.serve(state, no events, candidates)`: the model's part of it;
- `straight`: the same candidates pass written as one straight-line function of the cached
  tensors (the target bias row by `bucketize` and two gathers; no memo, no empty-event work);
- `compiled`: `straight` under `torch.compile(dynamic=True)` with Inductor's C++ wrapper
  (needs a C++ compiler; about 15-30 s to compile);
- `serve compiled`: `model.serve` itself under `torch.compile(dynamic=True)`, Python wrapper
  (what `Ranker(compile=True)` does, without its C++ wrapper and marked sizes).

`straight`, `compiled` and `serve compiled` must equal `model.serve` to 1e-5, or the script stops. Each median is
over --repeats calls; the calls are timed in turn, --rounds times, so that the host's drift hits
them alike. The last column is cold / (Ranker floor − model.serve + compiled): the bound on
cold/warm if the model's part of the floor ran compiled. `straight` is this script's own copy
of the model's candidates pass, for `lfa` on HSTU only: it measures what a compiled path could
gain, it is not a serving path.

    python scripts/compiled_floor.py [--candidates 10,100] [--repeats 200] [--rounds 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from bench_serving import TASKS, history, median_seconds

from causalgr import ModelConfig, build_model
from causalgr.models.cache import HistoryState, PoolingCache
from causalgr.models.kernels.bias import bucket_edges
from causalgr.serving import Ranker
from causalgr.serving.history import History
from causalgr.serving.ranker import history_batch

LENGTH, ITEMS = 512, 10_000


def straight(model, edges: torch.Tensor, keys: list, values: list, pool_keys: torch.Tensor, pool_values: torch.Tensor,
             times: torch.Tensor, candidates: torch.Tensor, timestamp: torch.Tensor) -> torch.Tensor:
    """`lfa`'s candidates pass after a cached history of L tokens, straight-line: logits [K, T]."""
    encoder, bias = model.encoder, model.encoder.bias
    L = times.shape[1]
    x = model.items(candidates)[None]  # [1, K, D]
    distance = (L - torch.arange(L)).clamp(max=bias.position.weight.shape[0] - 1)
    bucket = torch.bucketize(timestamp - times[0], edges, right=True)
    row = (bias.position.weight[distance] + bias.time.weight[bucket]).t()[:, None]  # [H, 1, L]: every target's
    own_bias = (bias.position.weight[0] + bias.time.weight[0])[:, None]  # [H, 1]: distance 0, gap 0
    for layer, k, v in zip(encoder.layers, keys, values):
        gate, q, k_t, v_t = layer.project(x)  # q, k_t, v_t [1, H, K, dh]
        scale = q.shape[-1] ** -0.5
        history_part = F.silu(torch.baddbmm(row, q[0], k[0].transpose(1, 2), alpha=scale)) @ v[0]  # [H, K, dh]
        own = F.silu(own_bias + (q[0] * k_t[0]).sum(-1) * scale)  # [H, K]
        x = layer.output(x, ((history_part + own[..., None] * v_t[0]) / (L + 1))[None], gate)
    h = encoder.norm(x)
    pooled = model.pooling.targets(h, PoolingCache(pool_keys, pool_values))
    return model.head(torch.cat([h, pooled], dim=-1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default="10,100")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ModelConfig(formulation="lfa", backbone="hstu", num_items=ITEMS, tasks=TASKS, dim=64, layers=2,
                         max_len=LENGTH + 2)
    torch.manual_seed(0)
    ranker = Ranker(build_model(config))
    events = history(LENGTH, ITEMS, seed=LENGTH)
    ranker.observe("user", **events)
    state: HistoryState = ranker.cache.get("user").state
    timestamp = events["timestamps"][-1] + 60
    no_events = history_batch(History.empty(len(TASKS)))
    edges = bucket_edges(config.time_buckets, torch.device("cpu"))
    cached = ([layer.keys for layer in state.encoder.layers], [layer.values for layer in state.encoder.layers],
              state.pooling.keys, state.pooling.values, state.encoder.timestamps)
    compiled = torch.compile(straight, dynamic=True, options={"cpp_wrapper": True})
    serve_compiled = torch.compile(ranker.model.serve, dynamic=True)

    print(f"`lfa`, hstu, dim 64, 2 layers, history {LENGTH}, one torch thread; medians of {args.repeats} calls, "
          f"{args.rounds} rounds (ms)\n")
    print("| K | round | cold | Ranker floor | model.serve | straight | compiled | serve compiled | model.serve / compiled "
          "| cold / Ranker floor | cold / compiled floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for k in (int(k) for k in args.candidates.split(",")):
            candidates = np.random.default_rng(k).choice(ITEMS, k, replace=False) + 1
            tensor = torch.as_tensor(candidates)
            want = ranker.model.serve(state, no_events, tensor, timestamp)[1]
            calls = {
                "cold": lambda: ranker.rank(**events, candidates=candidates.tolist(), timestamp=timestamp),
                "Ranker floor": lambda: ranker.rank(user="user", candidates=candidates.tolist(), timestamp=timestamp),
                "model.serve": lambda: ranker.model.serve(state, no_events, tensor, timestamp),
                "straight": lambda: straight(ranker.model, edges, *cached, tensor, torch.tensor(timestamp)),
                "compiled": lambda: compiled(ranker.model, edges, *cached, tensor, torch.tensor(timestamp)),
                "serve compiled": lambda: serve_compiled(state, no_events, tensor, timestamp)[1],
            }
            for name in ("straight", "compiled", "serve compiled"):
                error = (calls[name]() - want).abs().max().item()
                if error > 1e-5:
                    raise SystemExit(f"{name} differs from model.serve by {error:.2e} at K = {k}")
            for r in range(args.rounds):
                ms = {name: 1e3 * median_seconds(call, args.repeats) for name, call in calls.items()}
                compiled_floor = ms["Ranker floor"] - ms["model.serve"] + ms["compiled"]
                print(f"| {k} | {r + 1} | " + " | ".join(f"{ms[name]:.3f}" for name in calls)
                      + f" | {ms['model.serve'] / ms['compiled']:.1f}× | {ms['cold'] / ms['Ranker floor']:.1f}× "
                      f"| {ms['cold'] / compiled_floor:.1f}× |", flush=True)


if __name__ == "__main__":
    main()
