"""Config validation: one-line errors on unknown keys, wrong types and bad overrides."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from causalgr.errors import ConfigError
from causalgr.models import FORMULATIONS
from causalgr.training.config import (
    TrainConfig,
    apply_overrides,
    load_config,
    parse_override,
    to_yaml,
    validate_config,
)

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_config_command_prints_the_built_in_defaults_and_round_trips(tmp_path):
    from typer.testing import CliRunner

    from causalgr.cli import app

    printed = CliRunner().invoke(app, ["config"])
    assert printed.exit_code == 0, printed.output
    assert "dim: 64  # model width" in printed.output  # the description comes from ModelConfig
    config = load_config(write(tmp_path, printed.output))
    assert config == TrainConfig()
    changed = validate_config(apply_overrides(config.to_dict(), ["optim.lr=3e-3", "model.formulation=lfa", "train.task_weights={like: 2}"]))
    (tmp_path / "saved.yaml").write_text(to_yaml(changed))
    again = load_config(tmp_path / "saved.yaml")
    assert again == changed
    assert again.optim.lr == 0.003 and again.model.formulation == "lfa" and again.train.task_weights == {"like": 2.0}


def test_overrides_are_yaml_scalars_applied_after_the_file(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.01\ntrain:\n  epochs: 5\n")
    config = load_config(path, ["train.epochs=7", "optim.betas=[0.8, 0.9]", "train.progress=false", "data.path=some/dir"])
    assert (config.optim.lr, config.train.epochs, config.optim.betas) == (0.01, 7, (0.8, 0.9))
    assert config.train.progress is False and config.data.path == "some/dir"
    assert parse_override("model.max_len=null") == (["model", "max_len"], None)


@pytest.mark.parametrize(
    "text,message",
    [
        ("optim:\n  lrr: 0.1\n", "config ({path}): unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ("trainer:\n  epochs: 3\n", "config ({path}): unknown key 'trainer'"),
        ("train:\n  epochs: many\n", "config ({path}): train.epochs: Input should be a valid integer"),
        ("model:\n  formulation: bert\n",
         f"config ({{path}}): model.formulation: Input should be one of {', '.join(FORMULATIONS)} (got 'bert')"),
        ("model:\n  heads: 3\n", "config ({path}): model: dim 64 must be divisible by heads 3"),
        ("optim:\n  lr: -1\n", "config ({path}): optim.lr: Input should be greater than 0"),
        ("- just\n- a list\n", "config: {path}: expected a mapping of sections, got list"),
        ("train: [unclosed\n", "config: {path} line 2: not valid YAML"),
    ],
)
def test_file_errors_are_one_line_and_name_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(message.format(path=path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lrr=1", "config (--set): unknown key 'optim.lrr'"),
        ("optim.lr=fast", "config (--set): optim.lr: Input should be a valid number"),
        ("lr", "config: --set expects key.sub=value, got 'lr'"),
        ("optim..lr=1", "config: --set expects key.sub=value"),
        ("train.epochs.max=3", "config: --set 'train.epochs.max=3': 'train.epochs' is not a section"),
        ("optim.betas=[0.9, 0.98", "config: --set optim.betas: cannot read value"),
        ("train.epochs=2.5", "config (--set): train.epochs: Input should be a valid integer"),
    ],
)
def test_bad_overrides(tmp_path, override, message):
    path = write(tmp_path, "train:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, [override])
    assert str(err.value).startswith(message)


def test_cli_prints_config_errors_as_one_line_and_exits_2(tmp_path, monkeypatch, capsys):
    from causalgr import cli

    path = write(tmp_path, "optim:\n  lrr: 0.1\n")
    monkeypatch.setattr(sys, "argv", ["causalgr", "train", "--config", str(path), "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: config ({path}): unknown key 'optim.lrr' (did you mean 'optim.lr'?)"
    assert not (tmp_path / "run").exists()


def test_missing_data_path_is_a_config_error(tmp_path):
    from causalgr.training.trainer import train

    with pytest.raises(ConfigError, match="data.path is required"):
        train(TrainConfig(), tmp_path / "run")


def test_model_section_is_derived_from_model_config():
    """Every ModelConfig setting, with its default, is a key of the model section; the data's are not."""
    from dataclasses import fields

    from causalgr.models import ModelConfig
    from causalgr.models.config import DATA_FIELDS
    from causalgr.training.config import ModelSection

    settings = {f.name: f.default for f in fields(ModelConfig) if f.name not in DATA_FIELDS}
    assert set(ModelSection.model_fields) == set(settings)
    section = ModelSection()
    assert {k: getattr(section, k) for k in settings if k != "max_len"} == {k: v for k, v in settings.items() if k != "max_len"}
    assert section.max_len is None  # the prepared data's, unless set


def test_attention_engine_must_fit_the_backbone(tmp_path):
    assert load_config(None, ["model.backbone=softmax", "model.attention=sdpa"]).model.attention == "sdpa"
    with pytest.raises(ConfigError, match="attention must be one of auto, reference, blocked, triton on the hstu backbone"):
        load_config(None, ["model.attention=sdpa"])
