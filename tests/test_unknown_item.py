"""The trained unknown item: rare items prepared as one item (`unknown_below`), its row trained,
and serving's answer for ids it does not know taken from that row (docs/serving.md, "Unknown items")."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import polars as pl
import pytest
import torch

from causalgr import Batch
from causalgr.data.cache import cache_key
from causalgr.data.errors import DataError
from causalgr.data.prepared import FORMAT_VERSION, SPLITS, load_prepared
from causalgr.data.sequences import PrepareSettings, build_sequences, prepare
from causalgr.data.stream import prepare_stream
from causalgr.data.synth import SynthSettings, generate, synthetic_events
from causalgr.serving import Ranker
from causalgr.training.config import load_config
from causalgr.training.evaluate import load_run
from causalgr.training.trainer import train
from model_helpers import NUM_ITEMS, make_model
from test_sequences import make_events
from test_stream import assert_same_folder

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-5


def rows() -> list[tuple]:
    """Two users of 10 events each (user split 0.1 / 0.1: the last event test, the one before valid).

    Training events per item: "a" 8, "b" 4, "c" 2, "d" 1, "e" 1; "f" only in valid/test.
    """
    one = ["a", "a", "a", "a", "b", "b", "c", "d", "f", "f"]
    two = ["a", "a", "a", "a", "b", "b", "c", "e", "c", "a"]
    return [(user, item, t, t % 2, 0) for user, items in (("u1", one), ("u2", two)) for t, item in enumerate(items)]


def test_items_with_fewer_training_events_than_the_threshold_become_one_unknown_item():
    data, item_ids, _ = build_sequences(make_events(rows()), PrepareSettings(unknown_below=3))
    assert item_ids["item_id"].to_list() == ["a", "b"] and item_ids["item"].to_list() == [1, 2]
    assert data.num_items == 2 and data.unknown_item
    names = dict(zip(item_ids["item"].to_list(), item_ids["item_id"].to_list())) | {3: "unknown"}
    by_user = [[names[int(i)] for i in data.items[lo:hi]] for lo, hi in zip(data.offsets[:-1], data.offsets[1:])]
    assert by_user == [["a"] * 4 + ["b"] * 2 + ["unknown"] * 4,  # c (2 training events), d, and f in valid and test
                       ["a"] * 4 + ["b"] * 2 + ["unknown"] * 3 + ["a"]]
    assert data.meta["unknown_item"] == {"below": 3, "items": 4, "events": 7}
    assert data.split.tolist()[-2:] == [SPLITS["valid"], SPLITS["test"]]  # the splits are those of the events

    at_one, ids_at_one, _ = build_sequences(make_events(rows()), PrepareSettings(unknown_below=1))
    assert ids_at_one["item_id"].to_list() == ["a", "b", "c", "d", "e"]  # only f was never in training
    assert at_one.meta["unknown_item"] == {"below": 1, "items": 1, "events": 2}
    with pytest.raises(DataError, match="unknown_below 9: no item has that many training events, the most is 8"):
        build_sequences(make_events(rows()), PrepareSettings(unknown_below=9))


def test_off_by_default_the_data_and_the_cache_key_are_those_before_the_setting():
    events = make_events(rows())
    off, item_ids, _ = build_sequences(events, PrepareSettings())
    assert not off.unknown_item and "unknown_item" not in off.meta and len(item_ids) == off.num_items == 6
    settings = PrepareSettings().model_dump(mode="json")
    del settings["unknown_below"]
    before = json.dumps({"source_sha256": events.sha256, "source": events.source, "tasks": list(events.tasks),
                         "task_definitions": events.task_definitions, "read_options": events.read_options,
                         "settings": settings, "format_version": FORMAT_VERSION}, sort_keys=True)
    assert cache_key(events, PrepareSettings()) == hashlib.sha256(before.encode()).hexdigest()
    assert cache_key(events, PrepareSettings(unknown_below=2)) != cache_key(events, PrepareSettings())


def test_streaming_maps_the_rare_items_like_the_in_memory_path(tmp_path, monkeypatch):
    monkeypatch.setattr("causalgr.data.prepared.ROW_GROUP_EVENTS", 64)
    synth = SynthSettings(users=80, items=120, events_mean=25, events_min=5, events_max=60, seed=5)
    settings = PrepareSettings(max_len=40, unknown_below=4)
    memory = prepare(generate(synth), tmp_path / "memory", settings)
    prepare_stream(synthetic_events(synth), tmp_path / "stream", settings, chunk_events=300)
    assert_same_folder(tmp_path / "memory", tmp_path / "stream")
    assert 0 < memory.meta["unknown_item"]["items"] < 120
    assert (memory.items == memory.num_items + 1).sum() == memory.meta["unknown_item"]["events"]


def one_row(items: list[int], timestamps: list[int]) -> Batch:
    n = len(items)
    return Batch(items=torch.tensor([items]), labels=torch.zeros(1, n, 3), action_values=torch.zeros(1, n, dtype=torch.long),
                 timestamps=torch.tensor([timestamps]), lengths=torch.tensor([n]))


@pytest.mark.parametrize("trained", [True, False])
def test_serving_answers_an_unknown_id_with_the_unknown_row(trained):
    model = make_model("lfa", "hstu", 3, unknown_item=trained)
    assert model.items.weight.shape[0] == NUM_ITEMS + 1 + trained
    ranker = Ranker(model)
    got = ranker.rank(items=[3, 5], timestamps=[10, 20], labels=[[1, 0, 0], [0, 1, 1]], candidates=["new", 4],
                      timestamp=30)
    table = model.items.weight.detach()
    unknown = table[NUM_ITEMS + 1] if trained else table[1:].mean(0)
    assert ranker.model.items.weight.shape[0] == NUM_ITEMS + 2  # the trained row is used, no other row added
    np.testing.assert_array_equal(ranker.model.items.weight[NUM_ITEMS + 1].numpy(), unknown.numpy())
    batch = one_row([3, 5, NUM_ITEMS + 1], [10, 20, 30])
    batch.labels[0, :2] = torch.tensor([[1, 0, 0], [0, 1, 1]])
    with torch.no_grad():
        direct = torch.sigmoid(ranker.model(batch)[0, -1]).numpy()
    np.testing.assert_allclose(got[0], direct, atol=ATOL, rtol=0)


def test_a_run_on_data_with_the_unknown_item_trains_its_row_and_serves_it(tmp_path):
    events = generate(SynthSettings(users=30, items=30, clusters=2, events_mean=12, events_min=8, events_max=16,
                                    tasks=("click", "like"), seed=3))
    data = prepare(events, tmp_path / "data", PrepareSettings(max_len=16, unknown_below=6))
    assert data.unknown_item and data.meta["unknown_item"]["events"] > 0
    config = load_config(None, [f"data.path={tmp_path / 'data'}", "model.formulation=lfa", "model.dim=8",
                                "model.layers=1", "train.epochs=1", "data.batch_size=10", "train.progress=false",
                                "train.threads=1", "model.dropout=0"])
    train(config, tmp_path / "run")
    model, _ = load_run(tmp_path / "run", device="cpu")
    assert model.config.unknown_item and model.config.num_items == data.num_items
    torch.manual_seed(config.train.seed)  # the untrained model of the same seed: its first draws are the item table
    untrained = type(model)(model.config)
    unknown = data.num_items + 1
    assert not torch.equal(model.items.weight[unknown], untrained.items.weight[unknown])  # trained, not left at its init

    ranker = Ranker.from_run(tmp_path / "run")
    known = set(pl.read_parquet(tmp_path / "data" / "item_ids.parquet")["item_id"].cast(pl.Utf8))
    rare = set(events.frame["item_id"].cast(pl.Utf8)) - known
    candidates = sorted(rare)[:2] + ["never-seen"]
    result = ranker.rank_with_details(candidates=candidates, timestamp=100)
    assert result.unknown_items == candidates  # a rare item of the source is unknown to the served model
    direct = Ranker(model).rank(candidates=[unknown], timestamp=100)  # the trained row, by its dense id
    np.testing.assert_allclose(result.probabilities, np.repeat(direct, 3, axis=0), atol=ATOL, rtol=0)
    assert load_prepared(tmp_path / "data").unknown_item
