"""`TrainConfig`: everything one training run depends on, read from YAML plus `--set` overrides.

A config file has four sections (every key optional, unknown keys rejected)::

    data:  {path, batch_size, eval_batch_size}
    model: {formulation, backbone, dim, layers, heads, dropout, max_len, ...}
    optim: {lr, weight_decay, betas, eps, grad_clip, warmup, schedule, min_lr_ratio, item_optimizer}
    train: {epochs, patience, min_delta, seed, device, threads, task_weights, deterministic, progress,
            dist_timeout}

`--set optim.lr=3e-3` overrides one key; the value is read as a YAML scalar (or flow list).
Mistakes raise `ConfigError`, one line naming the key, e.g. `config: unknown key 'optim.lrr'`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
import typing
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from causalgr.data.prepared import PreparedData
from causalgr.errors import ConfigError, format_validation_error
from causalgr.models import BACKBONES, FORMULATIONS, ModelConfig
from causalgr.models.config import settings as model_settings
from causalgr.models.registry import check_names


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(_Section):
    path: str | None = Field(None, description="prepared dataset folder (`causalgr data prepare/synth --out`)")
    batch_size: int = Field(32, ge=1, description="users per training batch")
    eval_batch_size: int = Field(64, ge=1, description="users per evaluation batch")


class _ModelSettings(_Section):
    """Base of `ModelSection`: the checks `ModelConfig` and the registry make, and the conversion."""

    config_class: typing.ClassVar[type[ModelConfig]] = ModelConfig

    @field_validator("formulation", "backbone", check_fields=False)
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        known = {"formulation": FORMULATIONS, "backbone": BACKBONES}[info.field_name]
        if name not in known:
            raise ValueError(f"Input should be one of {', '.join(known)}")
        return name

    @model_validator(mode="after")
    def _check(self) -> "_ModelSettings":
        check_names(self.to_model_config(num_items=1, tasks=("task",), num_action_values=0, max_len=1))
        return self

    def to_model_config(self, *, num_items: int, tasks: Sequence[str], num_action_values: int, max_len: int,
                        unknown_item: bool = False) -> ModelConfig:
        """The `ModelConfig` of these settings on data with these sizes (`max_len` unless set here)."""
        settings = self.model_dump()
        settings["max_len"] = settings["max_len"] or max_len
        return self.config_class(**settings, num_items=num_items, tasks=tuple(tasks), num_action_values=num_action_values,
                                 unknown_item=unknown_item)


def model_section(config_class: type[ModelConfig] = ModelConfig) -> type[_ModelSettings]:
    """The `model:` section, derived from `config_class`: each setting with its default and help,
    names checked against the registry, `max_len` defaulting to the prepared data's."""
    hints = typing.get_type_hints(config_class)
    fields = {}
    for f in model_settings(config_class):
        if f.name == "max_len":
            fields[f.name] = (int | None, Field(None, description=f"{f.metadata['help']}; null = the prepared data's"))
        else:
            fields[f.name] = (hints[f.name], Field(f.default, description=f.metadata["help"]))
    section = pydantic.create_model("ModelSection", __base__=_ModelSettings, **fields)
    section.config_class = config_class
    return section


ModelSection = model_section()


class OptimSection(_Section):
    lr: float = Field(1e-3, gt=0.0, description="peak learning rate of AdamW")
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-8, gt=0.0)
    grad_clip: float = Field(1.0, ge=0.0, description="max global gradient norm; 0 = no clipping")
    warmup: float = Field(0.05, ge=0.0, lt=1.0, description="share of the planned steps spent warming up linearly")
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="final lr of the decay as a share of lr")
    item_optimizer: Literal["auto", "adamw", "adagrad"] = Field(
        "auto", description="the item table's: adamw (with the rest) or adagrad (exact Adagrad at the same lr, "
        "no weight decay, not clipped: what a sharded table runs, as TorchRec has no Adam on CPU); "
        "auto = adamw for a dense table, adagrad for a sharded one"
    )


class TrainSection(_Section):
    epochs: int = Field(20, ge=1, description="epoch cap; the lr schedule spans all of them")
    patience: int = Field(3, ge=1, description="stop after this many epochs without a better validation loss")
    min_delta: float = Field(0.0, ge=0.0, description="improvement smaller than this does not count")
    seed: int = Field(0, ge=0)
    device: str = Field("auto", description="'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:1', …")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = one per core (shared out over the ranks of a multi-process run)")
    task_weights: dict[str, float] = Field(default_factory=dict, description="loss weight per task (default 1)")
    deterministic: bool = Field(True, description="ask torch for deterministic kernels")
    progress: bool = Field(True, description="show progress bars (on a terminal; a log gets one line per epoch)")
    dist_timeout: float = Field(
        600.0, gt=0.0, description="multi-process runs: seconds a rank waits for the others before the run fails"
    )


class TrainConfig(_Section):
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainSection = Field(default_factory=TrainSection)

    @model_validator(mode="after")
    def _item_optimizer_fits_the_table(self) -> "TrainConfig":
        if self.model.item_table == "sharded" and self.optim.item_optimizer == "adamw":
            raise ValueError("optim.item_optimizer 'adamw' cannot update a sharded item table (TorchRec updates it "
                             "in the backward pass and has no Adam on CPU); use adagrad or auto")
        return self

    def model_config_for(self, data: PreparedData) -> ModelConfig:
        """The `ModelConfig` of this run on the prepared dataset `data`."""
        return self.model.to_model_config(
            num_items=data.num_items, tasks=data.tasks, num_action_values=data.num_action_values, max_len=data.max_len,
            unknown_item=data.unknown_item,
        )

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def _all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += _all_keys(field.annotation, prefix + name + ".")
    return keys


def parse_override(text: str) -> tuple[list[str], Any]:
    """`'optim.lr=3e-3'` → (['optim', 'lr'], 0.003): the key path and the value read as YAML."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"config: --set expects key.sub=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"config: --set {key.strip()}: cannot read value {raw!r} as YAML") from None
    return path, value


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """A copy of the nested dict `raw` with every `key.sub=value` override set."""
    result = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config: --set {text!r}: '{'.'.join(path[: depth + 1])}' is not a section")
            node = child
        node[path[-1]] = value
    return result


def _deep_copy(raw: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}


def validate_config(raw: dict, source: str = "") -> TrainConfig:
    """Build a `TrainConfig` from a nested dict; `ConfigError` naming the first bad key."""
    try:
        return TrainConfig.model_validate(raw)
    except pydantic.ValidationError as err:
        raise ConfigError(format_validation_error(err, f"config ({source})" if source else "config", _all_keys(TrainConfig))) from None


def read_config_file(path: Path | str) -> dict:
    """The nested dict of a YAML config file (empty file = all defaults)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"config: cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config: {path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def load_config(path: Path | str | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file at `path` (if any), then the `--set` overrides, validated."""
    raw = read_config_file(path) if path is not None else {}
    config = validate_config(raw, str(path) if path is not None else "")
    return validate_config(apply_overrides(raw, overrides), "--set") if overrides else config


def to_yaml(config: TrainConfig, with_help: bool = False) -> str:
    """`config` as a YAML file that loads back to an equal `TrainConfig`; with `with_help`, each
    key is followed by its description as a comment (what `causalgr config` prints)."""
    if not with_help:
        return yaml.safe_dump(config.to_dict(), sort_keys=False)
    lines = []
    for name, section in config:
        lines.append(f"{name}:")
        for key, field in type(section).model_fields.items():
            value = yaml.safe_dump({key: getattr(section, key)}, default_flow_style=True, width=1000).strip()[1:-1]
            lines.append(f"  {value}" + (f"  # {field.description}" if field.description else ""))
    return "\n".join(lines) + "\n"
