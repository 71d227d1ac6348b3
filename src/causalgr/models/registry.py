"""The one list of formulations, backbones and attention engines every command reads.

A new formulation is one file in `models/` and one line in `FORMULATIONS`; a new backbone one
file and one line in `BACKBONES` (in `base.py`, which builds the encoders; see docs/design.md,
"Adding a formulation").
"""

from __future__ import annotations

from causalgr.models.base import BACKBONES, RankingModel
from causalgr.models.config import ModelConfig
from causalgr.models.interleaved import Interleaved
from causalgr.models.lagged import Lagged
from causalgr.models.lfa import LateFusion
from causalgr.models.mvp import MixedValuePooling
from causalgr.models.summed import Summed

FORMULATIONS: dict[str, type[RankingModel]] = {
    "interleaved": Interleaved,
    "lfa": LateFusion,
    "mvp": MixedValuePooling,
    "lagged": Lagged,
    "summed": Summed,
}
BASELINE = "interleaved"  # what relative improvements and speedups are measured against
PRODUCTION_PEER = "summed"  # what Meta ships: relative improvements are also measured against it

# The attention engine is one setting (like Hugging Face's `attn_implementation`): "reference"
# materialises its masks and is the oracle the tests compare against; "auto" takes the fastest
# exact engine of the backbone on the tensor's device. Each backbone lists the engines it has.
ATTENTION_ENGINES = {
    "hstu": ("auto", "reference", "blocked", "triton"),
    "softmax": ("auto", "reference", "sdpa"),
}

ITEM_TABLES = ("dense", "sharded")  # models/item_tables.py builds them


def check_names(config: ModelConfig) -> None:
    """`ValueError` naming the choices when `config` names an unknown formulation, backbone, engine or
    item table."""
    for what, name, known in (
        ("formulation", config.formulation, tuple(FORMULATIONS)),
        ("backbone", config.backbone, tuple(BACKBONES)),
    ):
        if name not in known:
            raise ValueError(f"{what} must be one of {', '.join(known)}; got {name!r}")
    engines = ATTENTION_ENGINES[config.backbone]
    if config.attention not in engines:
        raise ValueError(f"attention must be one of {', '.join(engines)} on the {config.backbone} backbone; got {config.attention!r}")
    if config.item_table not in ITEM_TABLES:
        raise ValueError(f"item_table must be one of {', '.join(ITEM_TABLES)}; got {config.item_table!r}")


def build_model(config: ModelConfig) -> RankingModel:
    """The model `config` describes; `model(batch)` returns logits [B, N, T]."""
    check_names(config)
    return FORMULATIONS[config.formulation](config)
