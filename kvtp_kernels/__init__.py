"""kvtp_kernels: fused kernels for Keyframe-oriented Vision Token Pruning (KVTP).

Front door: :func:`prune` (and :func:`keep_counts`). The math is fixed in the team's
``shared/docs/METHOD.md``; every op has a pure-PyTorch reference in
:mod:`kvtp_kernels.reference` that the C++ and Triton kernels are tested against.
"""

from .api import PrunedTokens, keep_counts, prune
from .pack import PackedInputs, UnpackedRows, pack_multimodal, unpack
from .video import load_video

__version__ = "0.1.0"

__all__ = [
    "PackedInputs",
    "PrunedTokens",
    "UnpackedRows",
    "keep_counts",
    "load_video",
    "pack_multimodal",
    "prune",
    "unpack",
    "__version__",
]
