"""`causalgr export`: the package answers like the `Ranker` in a process that cannot import causalgr.

Every formulation on both backbones is exported once (a small untrained model), and so is a tiny
trained run through the command line; then one fresh Python process — where any import of
causalgr fails — loads every package with plain torch, maps ids with the package's own metadata
and answers calls with different history lengths (0 included) and candidate counts than the
export traced with, so the shapes are dynamic. The models have one layer: tracing costs seconds
per layer, and a second layer runs the same code (tests/test_serving.py holds the ranker itself
to the model with two). The AOTInductor package is compiled only with
CAUSALGR_TEST_AOTI=1 (minutes on a small CPU) and needs a C++ compiler.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from causalgr.cli import main
from causalgr.models import BACKBONES, FORMULATIONS
from causalgr.serving import Ranker
from causalgr.serving.export import METADATA, example_inputs, export_ranker
from data_helpers import tiny_lfa_run
from model_helpers import NUM_ITEMS, NUM_VALUES, make_model

ATOL = 1e-5
TASKS = 3
CALLS = ((5, 4), (31, 40), (0, 4))  # (history events, candidates): none is the (2, 3) that export traces with

# The caller's side, as docs/serving.md shows it: torch alone, ids mapped with the package's metadata.
CHILD = textwrap.dedent(f"""
    import json, sys, torch

    class NoCausalgr:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "causalgr":
                raise ImportError("this process must serve without causalgr")

    sys.meta_path.insert(0, NoCausalgr())

    def dense(ids, meta):
        if meta["item_ids"] is None:  # a package of Ranker(model): ids are already dense
            return torch.tensor(ids, dtype=torch.long)
        return torch.tensor([meta["item_ids"].get(str(i), meta["unknown_item"]) for i in ids], dtype=torch.long)

    answers = {{}}
    for name, case in torch.load(sys.argv[1]).items():
        extra = {{"{METADATA}": ""}}
        program = torch.export.load(case["package"], extra_files=extra).module()
        meta = json.loads(extra["{METADATA}"])
        answers[name] = {{"tasks": meta["tasks"], "probabilities": [
            program(dense(c["items"], meta), torch.tensor(c["timestamps"], dtype=torch.long),
                    torch.tensor(c["labels"], dtype=torch.float32).reshape(-1, len(meta["tasks"])),
                    torch.tensor(c["action_values"], dtype=torch.long), dense(c["candidates"], meta),
                    torch.tensor(c["timestamp"]))
            for c in case["calls"]]}}
    imported = sorted(m for m in sys.modules if m.split(".")[0] == "causalgr")
    torch.save({{"answers": answers, "imported": imported}}, sys.argv[2])
""")

pytestmark = pytest.mark.usefixtures("one_thread")


def request(rng: np.random.Generator, events: int, candidates: int, items: list, tasks: int, values: int) -> dict:
    """A ranker call: random known items, one unknown id among the history and the candidates."""
    unknown = ["unseen"] if isinstance(items[0], str) else [0, NUM_ITEMS + 5]
    history = [*rng.choice(items, events - 1).tolist(), unknown[0]] if events else []
    return dict(
        items=history,
        timestamps=np.cumsum(rng.integers(0, 50_000, events)).tolist(),
        labels=rng.integers(0, 2, (events, tasks)).tolist(),
        action_values=rng.integers(0, max(values, 1), events).tolist(),
        candidates=[*rng.choice(items, candidates - 1).tolist(), unknown[-1]],
        timestamp=10**7,
    )


def expected(ranker: Ranker, call: dict) -> np.ndarray:
    return ranker.rank(call["items"], call["timestamps"], call["labels"], call["action_values"],
                       candidates=call["candidates"], timestamp=call["timestamp"])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A one-epoch lfa run on tiny synthetic data (original ids are the generator's ints)."""
    return tiny_lfa_run(tmp_path_factory.mktemp("export-run"))


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained_run) -> dict:
    """Every package's calls, the ranker's answers, and what the fresh process answered."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    cases, rankers = {}, {}
    for formulation in FORMULATIONS:
        for backbone in BACKBONES:
            name = f"{formulation}-{backbone}"
            rankers[name] = Ranker(make_model(formulation, backbone, TASKS, layers=1))  # one layer: half the tracing
            export_ranker(rankers[name], root / f"{name}.pt2")
            calls = [request(rng, n, k, list(range(1, NUM_ITEMS + 1)), TASKS, NUM_VALUES) for n, k in CALLS]
            cases[name] = {"package": str(root / f"{name}.pt2"), "calls": calls}
    # The trained run goes through the command line, with the source's ids.
    package = root / "run.pt2"
    argv, sys.argv = sys.argv, ["causalgr", "export", "--run", str(trained_run), "--out", str(package)]
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
    finally:
        sys.argv = argv
    assert exit_.value.code in (0, None)
    rankers["run"] = Ranker.from_run(trained_run)
    items = sorted(rankers["run"].items.ids)
    cases["run"] = {"package": str(package), "calls": [request(rng, n, k, items, 2, 0) for n, k in ((3, 2), (15, 9), (0, 2))]}
    torch.save(cases, root / "cases.pt")
    child = subprocess.run([sys.executable, "-c", CHILD, str(root / "cases.pt"), str(root / "answers.pt")],
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-2000:]
    return {"cases": cases, "rankers": rankers, **torch.load(root / "answers.pt")}


def test_the_packages_load_in_a_process_that_cannot_import_causalgr(served):
    assert served["imported"] == []
    assert set(served["answers"]) == set(served["cases"])


@pytest.mark.parametrize("name", [*(f"{f}-{b}" for f in FORMULATIONS for b in BACKBONES), "run"])
def test_the_package_answers_like_the_ranker_for_any_history_length_and_candidate_count(served, name):
    ranker, calls, answers = served["rankers"][name], served["cases"][name]["calls"], served["answers"][name]
    assert answers["tasks"] == list(ranker.tasks)
    for call, got in zip(calls, answers["probabilities"], strict=True):
        want = expected(ranker, call)
        assert got.shape == want.shape == (len(call["candidates"]), len(ranker.tasks))
        diff = np.abs(got.numpy() - want).max()
        assert diff <= ATOL, f"{name}, N={len(call['items'])}, K={len(call['candidates'])}: max |Δp| {diff:.2e}"


def test_the_package_carries_the_ids_and_the_rules(served, trained_run):
    extra = {METADATA: ""}
    torch.export.load(served["cases"]["run"]["package"], extra_files=extra)
    meta, ranker = json.loads(extra[METADATA]), served["rankers"]["run"]
    assert meta["item_ids"] == ranker.items.ids and meta["unknown_item"] == ranker.config.num_items + 1
    assert (meta["max_len"], meta["max_history"]) == (ranker.config.max_len, ranker.config.max_len - 1)
    assert meta["formulation"] == "lfa" and meta["tasks"] == ["click", "like"]


def test_the_package_refuses_a_history_longer_than_the_model_saw(served):
    ranker = served["rankers"]["lfa-hstu"]
    program = torch.export.load(served["cases"]["lfa-hstu"]["package"]).module()
    assert program(*example_inputs(ranker, events=ranker.max_history, candidates=2)).shape == (2, TASKS)
    with pytest.raises(Exception, match="events|size|range"):
        program(*example_inputs(ranker, events=ranker.max_history + 1, candidates=2))


@pytest.mark.parametrize("damage", ["missing", "no weights", "no folder for --out"])
def test_export_refuses_a_bad_run_folder_in_one_line(trained_run, tmp_path, monkeypatch, capsys, damage):
    target = trained_run if damage == "no folder for --out" else tmp_path / "run"
    if damage == "no weights":
        shutil.copytree(trained_run, target)
        (target / "checkpoint" / "best.safetensors").unlink()
    out = tmp_path / ("nowhere" if damage == "no folder for --out" else "") / "r.pt2"
    monkeypatch.setattr(sys, "argv", ["causalgr", "export", "--run", str(target), "--out", str(out)])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CAUSALGR_TEST_AOTI") != "1" or shutil.which("c++") is None,
                    reason="compiles C++ for minutes: set CAUSALGR_TEST_AOTI=1 (needs a C++ compiler)")
def test_the_aoti_package_answers_like_the_ranker(tmp_path):
    ranker = Ranker(make_model("lfa", "hstu", TASKS))
    exported = export_ranker(ranker, tmp_path / "r.pt2", aoti=tmp_path / "r-aoti.pt2")
    compiled = torch._inductor.aoti_load_package(str(exported.aoti_path))
    rng = np.random.default_rng(1)
    for n, k in CALLS:
        call = request(rng, n, k, list(range(1, NUM_ITEMS + 1)), TASKS, NUM_VALUES)
        inputs = (torch.tensor(call["items"], dtype=torch.long), torch.tensor(call["timestamps"], dtype=torch.long),
                  torch.tensor(call["labels"], dtype=torch.float32).reshape(-1, TASKS),
                  torch.tensor(call["action_values"], dtype=torch.long), torch.tensor(call["candidates"]),
                  torch.tensor(call["timestamp"]))
        assert np.abs(compiled(*inputs).numpy() - expected(ranker, call)).max() <= ATOL
