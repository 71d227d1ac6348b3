"""The extension points of docs/design.md §8, each exercised once: a new formulation is one class
and one registry line; a new model setting is one `ModelConfig` field; a run folder round-trips."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from causalgr.batch import Batch
from causalgr.errors import ConfigError
from causalgr.models import ModelConfig, RankingModel, build_model, registry
from causalgr.models.config import _setting
from causalgr.training.compare import compare
from causalgr.training.config import load_config, model_section
from causalgr.training.evaluate import load_run
from causalgr.training.rundir import RunDir
from causalgr.training.trainer import train
from data_helpers import tiny_dataset

SETS = ["model.dim=8", "model.layers=1", "train.epochs=1", "data.batch_size=20", "train.progress=false",
        "train.threads=1"]


class ItemsOnly(RankingModel):
    """`items_only` — a formulation that ignores actions (a test of the extension point only).

    Tokens: e(i_1..N). Mask: causal. Readout: head(h_n).
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.encoder = self.make_encoder(max_tokens=config.max_len)
        self.head = self.make_head(config.dim)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(self.encoder(self.input_dropout(self.items(batch.items)), batch.timestamps))  # [B, N, T]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data") / "tiny", max_len=16, users=30, items=20, clusters=2, events_mean=12, events_min=8, events_max=16, tasks=("click", "like"), seed=3)


def test_a_new_formulation_is_one_class_and_one_registry_line(tiny_data, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="model.formulation: Input should be one of"):
        load_config(None, ["model.formulation=items_only"])
    monkeypatch.setitem(registry.FORMULATIONS, "items_only", ItemsOnly)  # the one registry line
    base = load_config(None, SETS)
    results = compare(tiny_data, ["interleaved", "items_only"], [0], tmp_path / "cmp", base)
    assert [s["formulation"] for s in results["summary"]] == ["interleaved", "items_only"]
    assert results["summary"][1]["rel_improvement_mean"] is not None  # paired against the baseline


def test_a_new_model_setting_is_one_field():
    @dataclass(frozen=True, kw_only=True)
    class Wider(ModelConfig):
        mlp_ratio: int = _setting(4, "feed-forward width as a multiple of dim")

    section = model_section(Wider)
    assert section.model_fields["mlp_ratio"].default == 4
    assert section.model_fields["mlp_ratio"].description == "feed-forward width as a multiple of dim"
    config = section(mlp_ratio=2).to_model_config(num_items=5, tasks=["a"], num_action_values=0, max_len=8)
    assert (type(config), config.mlp_ratio, config.dim) == (Wider, 2, 64)


def test_run_dir_round_trip(tiny_data, tmp_path):
    config = load_config(None, SETS + [f"data.path={tiny_data}", "model.formulation=lfa"])
    result = train(config, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    assert result.run == run and result.finished and run.is_finished()
    assert run.read_config() == config
    assert run.read_metrics() == result.metrics
    assert [r["epoch"] for r in run.read_history()] == [1]
    model_config = run.read_model_config()
    assert model_config == ModelConfig(**result.metrics["model"]) and model_config.formulation == "lfa"
    model, loaded_config = load_run(run, device="cpu")
    assert loaded_config == config
    weights = load_file(run.weights_file("best"))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert type(model) is type(build_model(model_config))


def test_a_folder_that_is_not_a_run_is_one_clear_error(tmp_path):
    from causalgr.data.errors import DataError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}\n")
    with pytest.raises(DataError, match=r"not a training run \(no model.json, checkpoint/best.safetensors\)"):
        load_run(tmp_path / "run")
