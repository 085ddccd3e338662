"""The argument errors of the public entry points: one message format for every module.

    fail("kvtp_kernels", "budget", "in (0, 1]", "1.5")
    -> ValueError: kvtp_kernels: `budget` must be in (0, 1]; got 1.5

Each module binds its own prefix (``kvtp_kernels``, ``kvtp_kernels.predictor``,
``kvtp_kernels.integrations``, ...) with functools.partial.
"""

from __future__ import annotations

from typing import NoReturn

import torch


def fail(prefix: str, arg: str, expected: str, got: object) -> NoReturn:
    """Raise ``ValueError("{prefix}: `{arg}` must be {expected}; got {got}")``."""
    raise ValueError(f"{prefix}: `{arg}` must be {expected}; got {got}")


def describe(value: object, *, device: bool = True) -> str:
    """A tensor's dtype and shape (and device unless ``device=False``) for ``got``; otherwise its type's name."""
    if isinstance(value, torch.Tensor):
        where = f" on {value.device}" if device else ""
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}{where}"
    return type(value).__name__
