"""`ModelConfig`: everything that fixes a model's architecture (docs/design.md §1–§2, §5).

Each setting is one field here, with its default and a one-line description; the training
config's `model:` section is derived from these fields (`causalgr.training.config`), so a new
setting is one new field. Names (formulation, backbone, attention engine) are checked against
the registry by `build_model`; everything else is checked here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

DATA_FIELDS = ("num_items", "tasks", "num_action_values", "unknown_item")  # set by the prepared data, not by a config file


def _setting(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    formulation: str = _setting("interleaved", "how actions enter the model: a name in models.FORMULATIONS")
    backbone: str = _setting("hstu", "the sequence encoder: a name in models.BACKBONES")
    num_items: int = field(metadata={"help": "dense item ids are 1..num_items; 0 is padding"})
    tasks: tuple[str, ...] = field(metadata={"help": "one binary label per task"})
    unknown_item: bool = _setting(False, "the data has a trained unknown item, dense id num_items + 1 "
                                  "(data prepare --unknown-below); serving uses its row for ids it does not know")
    dim: int = _setting(64, "model width")
    layers: int = _setting(2, "encoder layers")
    heads: int = _setting(2, "attention heads; must divide dim")
    max_len: int = _setting(256, "longest history in events (interleaved runs 2 * max_len tokens)")
    dropout: float = _setting(0.2, "dropout on inputs, attention outputs and the head")
    num_action_values: int = _setting(0, "categorical action value vocabulary (ratings 1..5 → 6); 0 = unused")
    time_buckets: int = _setting(32, "log-bucketed time-gap bias / embedding buckets")
    # The paper leaves these open (docs/design.md §1); defaults are chosen by measurement, see README.
    pool_heads: int = _setting(1, "lfa (and mvp with mvp_pool_readout): heads of the action pooling; must divide dim")
    mvp_pool_readout: bool = _setting(True, "mvp: add an lfa-style action-pooling readout after the mvp layers")
    action_norm: bool = _setting(True, "LayerNorm on the action embedding before it enters attention values")
    attention: str = _setting(
        "auto", "attention engine: auto (fastest exact one), reference (materialised masks), "
        "blocked or triton (hstu), sdpa (softmax)"
    )
    item_table: str = _setting(
        "dense", "the item embedding: dense (one nn.Embedding, whole on every rank) or sharded (a TorchRec "
        "EmbeddingCollection, its rows split over the ranks; needs causalgr[distributed], docs/distributed.md)"
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        for name in ("num_items", "dim", "layers", "heads", "max_len", "pool_heads", "time_buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_action_values < 0:
            raise ValueError(f"num_action_values must be >= 0, got {self.num_action_values}")
        if self.dim % self.heads or self.dim % self.pool_heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads} and pool_heads {self.pool_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return {**asdict(self), "tasks": list(self.tasks)}


def settings(config_class: type[ModelConfig] = ModelConfig) -> list:
    """The fields a config file may set: every field but those the data decides."""
    return [f for f in fields(config_class) if f.name not in DATA_FIELDS]
