"""Where the accounting of a patched call goes: ``model.kvtp_stats`` and :func:`collect_stats`.

``model.kvtp_stats`` is one attribute of the model: after each call it holds that call's
:class:`~kvtp_kernels.integrations.core.KVTPStats`, whichever thread made it, so with
several threads (or asyncio tasks) sharing a model it may hold another caller's stats.
:func:`collect_stats` is per caller: it collects the stats of the calls made inside the
block by this thread / task only (a :class:`contextvars.ContextVar`), nested blocks each
getting every call::

    with collect_stats() as calls:
        model.generate(**inputs, max_new_tokens=32)
    print(calls[-1].summary())   # this thread's call, even while others run the same model
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

__all__ = ["collect_stats", "record_stats"]

#: The lists open in this context, innermost last.
_OPEN: contextvars.ContextVar[tuple[list, ...]] = contextvars.ContextVar("kvtp_collect_stats", default=())
#: The model attribute holding the last call's stats (any thread).
STATS_ATTR = "kvtp_stats"


@contextlib.contextmanager
def collect_stats() -> Iterator[list[Any]]:
    """Yields a list that receives the KVTPStats of every patched call made inside the block by this thread."""
    calls: list[Any] = []
    token = _OPEN.set((*_OPEN.get(), calls))
    try:
        yield calls
    finally:
        _OPEN.reset(token)


def record_stats(model: Any, stats: Any) -> None:
    """One call's stats -> ``model.kvtp_stats`` (shared) and every :func:`collect_stats` list open here."""
    model.__dict__[STATS_ATTR] = stats
    for calls in _OPEN.get():
        calls.append(stats)
