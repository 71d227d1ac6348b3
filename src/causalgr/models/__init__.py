"""The sequence models: four formulations on two backbones behind one `build_model`."""

from __future__ import annotations

from causalgr.models.base import RankingModel
from causalgr.models.config import BACKBONES, FORMULATIONS, ModelConfig
from causalgr.models.interleaved import Interleaved
from causalgr.models.lagged import Lagged
from causalgr.models.lfa import LateFusion
from causalgr.models.mvp import MixedValuePooling

_MODELS: dict[str, type[RankingModel]] = {
    "interleaved": Interleaved,
    "lfa": LateFusion,
    "mvp": MixedValuePooling,
    "lagged": Lagged,
}


def build_model(config: ModelConfig) -> RankingModel:
    """The model `config` describes; `model(batch)` returns logits [B, N, T]."""
    return _MODELS[config.formulation](config)


__all__ = ["BACKBONES", "FORMULATIONS", "ModelConfig", "RankingModel", "build_model"]
