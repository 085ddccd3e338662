"""The one reader of JSON-list (``.json``) and JSON-lines (``.jsonl`` / ``.ndjson``) row files.

Used by the evaluation's sample files and the predictor's label files; each caller turns
what it yields into its own errors (a bad row is skipped in one, fatal in the other).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["NotAJsonList", "json_rows"]


class NotAJsonList(ValueError):
    """A ``.json`` row file whose top-level value is not a list.

    Attributes:
        type_name: the type of what it holds instead (``"dict"``, ...).
    """

    def __init__(self, type_name: str):
        super().__init__(f"must hold a JSON list; got a {type_name}")
        self.type_name = type_name


def json_rows(fh: IO[str], path: str, *, lines: bool, strip_newline: bool = True) -> Iterator[tuple[str, Any]]:
    """``(origin, value)`` for each row of an open row file, in file order.

    Args:
        fh: the open file (text).
        path: its name, for the origins.
        lines: JSON lines (one value per non-blank line; origin ``"<path>: line <n>"``, 1-based) rather
            than one JSON list (origin ``"<path>: item <i>"``, 0-based).
        strip_newline: JSON lines: parse each line without its line break (error positions then name
            the line's last column rather than the next line's first).

    Yields:
        The parsed row (any JSON value: callers check it is an object) or, for a JSON line that does not
        parse, its :class:`json.JSONDecodeError`.

    Raises:
        json.JSONDecodeError: a JSON-list file that does not parse as a whole.
        NotAJsonList: a JSON-list file that holds something else.
    """
    if not lines:
        data = json.load(fh)
        if not isinstance(data, list):
            raise NotAJsonList(type(data).__name__)
        for i, row in enumerate(data):
            yield f"{path}: item {i}", row
        return
    for n, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.rstrip("\r\n") if strip_newline else line)
        except json.JSONDecodeError as exc:
            row = exc
        yield f"{path}: line {n}", row
