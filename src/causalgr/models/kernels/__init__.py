"""Fast attention kernels: blocked PyTorch (any device) and Triton (CUDA) for HSTU, and the
softmax diagonal weight that mvp's correction needs. `attention.py` holds the readable
references they are tested against."""

from causalgr.models.kernels.bias import BiasTables
from causalgr.models.kernels.blocked import blocked_after_forward, warm_forward
from causalgr.models.kernels.pointwise import default_engine, fast_pointwise_attention, triton_available
from causalgr.models.kernels.softmax_diagonal import softmax_diagonal

__all__ = [
    "BiasTables",
    "blocked_after_forward",
    "default_engine",
    "fast_pointwise_attention",
    "softmax_diagonal",
    "triton_available",
    "warm_forward",
]
