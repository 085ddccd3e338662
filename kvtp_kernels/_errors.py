"""The argument errors of the public entry points: one message format for every module.

    fail("kvtp_kernels", "budget", "in (0, 1]", "1.5")
    -> ValueError: kvtp_kernels: `budget` must be in (0, 1]; got 1.5

Each module binds its own prefix (``kvtp_kernels``, ``kvtp_kernels.predictor``,
``kvtp_kernels.integrations``, ...) with functools.partial.
"""

from __future__ import annotations

import numbers
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


def _scalar_tensor(value: object) -> object:
    """A 0-d CPU tensor -> its Python number (free to read); anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.device.type == "cpu" and (
            value.dtype != torch.bool):
        return value.item()
    return value


def as_int(fail, arg: str, value: object, *, what: str = "an int") -> int:
    """``value`` as a Python int: any numbers.Integral (numpy integers included) or an
    integer 0-d CPU tensor; bools and everything else -> ``fail(arg, what, repr(value))``."""
    value = _scalar_tensor(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(arg, what, repr(value))
    return int(value)


def as_real(fail, arg: str, value: object, *, what: str = "a number") -> float | int:
    """``value`` as a Python int (numbers.Integral) or float (numbers.Real, numpy scalars and
    0-d CPU tensors included); bools and everything else -> ``fail(arg, what, repr(value))``."""
    value = _scalar_tensor(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(arg, what, repr(value))
    return int(value) if isinstance(value, numbers.Integral) else float(value)
