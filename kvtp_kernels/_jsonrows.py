"""The one reader of JSON-list (``.json``), JSON-lines (``.jsonl`` / ``.ndjson``) and CSV row files.

Used by the evaluation's sample files and the predictor's label files; each caller turns
what it yields into its own errors (a bad row is skipped in one, fatal in the other).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

__all__ = ["NotAJsonList", "csv_rows", "json_rows", "open_rows"]


def open_rows(path: str, ext: str) -> IO[str]:
    """A row file opened as text; utf-8-sig: CSVs saved by spreadsheets often start with a byte-order mark."""
    return open(path, newline="" if ext == ".csv" else None, encoding="utf-8-sig")


def csv_rows(fh: IO[str], path: str, required: Sequence[str],
             missing_columns: Callable[[list[str], list[str]], Exception]) -> Iterator[tuple[str, dict]]:
    """``("<path>: line <n>", row)`` for each row of an open CSV file, in file order; a header
    without a ``required`` column raises ``missing_columns(missing, header)``."""
    reader = csv.DictReader(fh)
    header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise missing_columns(missing, header)
    for row in reader:
        yield f"{path}: line {reader.line_num}", row


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
