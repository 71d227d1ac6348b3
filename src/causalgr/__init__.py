"""causalgr: generative-recommender ranking with causal attention reformulations.

The public API (docs/design.md §5)::

    from causalgr import Batch, ModelConfig, build_model
"""

from causalgr.batch import Batch
from causalgr.models import ModelConfig, build_model

__all__ = ["Batch", "ModelConfig", "build_model"]
__version__ = "0.1.0"
