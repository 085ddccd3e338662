"""kvtp_kernels: fused kernels for Keyframe-oriented Vision Token Pruning (KVTP).

Front door: :func:`prune` (and :func:`keep_counts`). The math is fixed in the team's
``shared/docs/METHOD.md``; every op has a pure-PyTorch reference in
:mod:`kvtp_kernels.reference` that the C++ and Triton kernels are tested against.
"""

from ._lazy import lazy_attributes
from .api import PrunedTokens, keep_counts, prune
from .pack import PackedInputs, UnpackedRows, pack_multimodal, unpack
from .video import load_video

__version__ = "0.1.0"

# The HF integration is loaded on first use (it never imports transformers at import time either).
_INTEGRATION_NAMES = ("apply_kvtp", "remove_kvtp")
__getattr__ = lazy_attributes(__name__, "integrations", _INTEGRATION_NAMES)


__all__ = [
    "PackedInputs",
    "PrunedTokens",
    "UnpackedRows",
    "apply_kvtp",
    "keep_counts",
    "load_video",
    "pack_multimodal",
    "prune",
    "remove_kvtp",
    "unpack",
    "__version__",
]
