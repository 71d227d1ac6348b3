"""The sequence models: the formulations on two backbones behind one `build_model`."""

from __future__ import annotations

from causalgr.models.base import RankingModel
from causalgr.models.config import ModelConfig
from causalgr.models.registry import ATTENTION_ENGINES, BACKBONES, BASELINE, FORMULATIONS, PRODUCTION_PEER, build_model

__all__ = [
    "ATTENTION_ENGINES", "BACKBONES", "BASELINE", "FORMULATIONS", "PRODUCTION_PEER", "ModelConfig", "RankingModel", "build_model",
]
