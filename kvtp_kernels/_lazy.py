"""Package attributes that import their submodule on first use (PEP 562 ``__getattr__``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any


def lazy_attributes(package: str, submodule: str, names: Sequence[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that takes ``names`` from ``package.submodule``, imported when
    one of them is first asked for (so importing the package does not import the submodule)."""
    names = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
