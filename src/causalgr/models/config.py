"""`ModelConfig`: everything that fixes a model's architecture (DESIGN.md §1–§2, §5)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

FORMULATIONS = ("interleaved", "lfa", "mvp", "lagged")
BACKBONES = ("hstu", "softmax")


@dataclass(frozen=True)
class ModelConfig:
    formulation: str  # one of FORMULATIONS
    backbone: str  # one of BACKBONES
    num_items: int  # dense item ids are 1..num_items; 0 is padding
    tasks: tuple[str, ...]  # one binary label per task
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 256  # longest history in events (interleaved runs 2 * max_len tokens)
    dropout: float = 0.2  # chosen by measurement on ML-100K (README)
    num_action_values: int = 0  # categorical action value vocabulary (ratings 1..5 → 6); 0 = unused
    time_buckets: int = 32  # log-bucketed time-gap bias / embedding
    # The paper leaves these open (DESIGN.md §1); defaults are chosen by measurement, see README.
    pool_heads: int = 2  # `lfa` (and `mvp` with mvp_pool_readout): heads of the action-pooling attention
    mvp_pool_readout: bool = True  # `mvp`: add an `lfa`-style action-pooling readout after the mvp layers
    action_norm: bool = True  # LayerNorm on the action embedding before it enters attention values
    attention: str = "auto"  # "auto" = fastest exact path, "reference" = materialised-mask oracle

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {FORMULATIONS}, got {self.formulation!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.attention not in ("auto", "reference"):
            raise ValueError(f"attention must be 'auto' or 'reference', got {self.attention!r}")
        if not self.tasks:
            raise ValueError("tasks must name at least one task")
        if self.dim % self.heads or self.dim % self.pool_heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads} and pool_heads {self.pool_heads}")
        for name in ("num_items", "dim", "layers", "heads", "max_len", "pool_heads", "time_buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return {**asdict(self), "tasks": list(self.tasks)}
