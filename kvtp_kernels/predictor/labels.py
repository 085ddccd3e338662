"""Label files of the predictor's training: CSV, JSON (a list of objects) or JSONL rows of
``video`` (a path, relative to the label file's folder unless absolute), ``query`` and
``labels`` (one integer 0..5 per sampled frame: a JSON list, or numbers separated by
spaces, commas or semicolons)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import IO, Any

import torch

from .._jsonrows import NotAJsonList, csv_rows, json_rows, open_rows
from ..options import MAX_LABEL

__all__ = ["LABEL_COLUMNS", "MAX_LABEL", "RelevanceExample", "read_relevance_labels"]

LABEL_COLUMNS = ("video", "query", "labels")


@dataclasses.dataclass
class RelevanceExample:
    """One training example.

    Attributes:
        video: a video file path, or uint8 frames [T, H, W, 3] already decoded.
        query: the question (a string), or its token ids [L].
        labels: int64 [T], per-frame relevance in 0..5.
        origin: where it came from (``"labels.csv: line 3"``), for error messages.
    """

    video: str | torch.Tensor
    query: str | torch.Tensor
    labels: torch.Tensor
    origin: str = ""


def _parse_labels(value: Any, where: str) -> torch.Tensor:
    expected = f"a non-empty list of integers 0..{MAX_LABEL} (JSON list or numbers separated by spaces/commas)"
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: column 'labels' must be {expected}; got {value!r} ({exc})") from exc
        else:
            value = [p for p in re.split(r"[\s,;]+", text) if p]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: column 'labels' must be {expected}; got {value!r}")
    out = []
    for i, v in enumerate(value):
        number = None
        if isinstance(v, str) and re.fullmatch(r"[+-]?\d+", v.strip()):
            number = int(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            number = v
        elif isinstance(v, float) and v.is_integer():
            number = int(v)
        if number is None:
            raise ValueError(f"{where}: column 'labels': label {i} must be an integer 0..{MAX_LABEL}; got {v!r}")
        if not 0 <= number <= MAX_LABEL:
            raise ValueError(f"{where}: column 'labels': label {i} is {number}, outside 0..{MAX_LABEL}")
        out.append(number)
    return torch.tensor(out, dtype=torch.long)


def _example_from_row(row: dict[str, Any], where: str, base_dir: str) -> RelevanceExample:
    missing = [c for c in LABEL_COLUMNS if c not in row or row[c] is None]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; expected columns {list(LABEL_COLUMNS)}")
    video, query = row["video"], row["query"]
    if not isinstance(video, str) or not video.strip():
        raise ValueError(f"{where}: column 'video' must be a non-empty path; got {video!r}")
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"{where}: column 'query' must be a non-empty string; got {query!r}")
    path = os.path.expanduser(video.strip())
    path = path if os.path.isabs(path) else os.path.join(base_dir, path)
    if not os.path.isfile(path):
        raise ValueError(f"{where}: column 'video': no such file {path!r}")
    return RelevanceExample(path, query, _parse_labels(row["labels"], where), where)



def read_relevance_labels(path: str | os.PathLike) -> list[RelevanceExample]:
    """Read and validate a label file (CSV, JSON list of objects, or JSONL).

    Every row is checked before anything is trained: missing columns, empty
    queries, missing video files and labels that are not integers in 0..5 raise a
    ValueError naming the file, the line (CSV, JSONL) or item (JSON) and the column.

    Returns:
        One :class:`RelevanceExample` per row (video paths made absolute).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".json", ".jsonl", ".ndjson"):
        raise ValueError(f"kvtp_kernels.predictor: label file {path!r} must end in .csv, .json, .jsonl or .ndjson")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"kvtp_kernels.predictor: no such label file: {path!r}")
    base_dir = os.path.dirname(os.path.abspath(path))
    with open_rows(path, ext) as fh:
        rows = _csv_rows(fh, path) if ext == ".csv" else _json_rows(fh, path, ext)
        examples = [_example_from_row(row, where, base_dir) for where, row in rows]
    if not examples:
        raise ValueError(f"{path}: no examples (the file has no data rows)")
    return examples


def _csv_rows(fh: IO[str], path: str):
    return csv_rows(fh, path, LABEL_COLUMNS, lambda missing, header: ValueError(
        f"{path}: line 1 (header): missing column(s) {missing}; expected columns {list(LABEL_COLUMNS)}, got {header}"))


def _json_rows(fh: IO[str], path: str, ext: str):
    try:
        for where, row in json_rows(fh, path, lines=ext != ".json", strip_newline=False):
            if isinstance(row, json.JSONDecodeError):
                raise ValueError(f"{where}: not valid JSON ({row})") from row
            if not isinstance(row, dict):
                raise ValueError(f"{where}: must be an object with columns {list(LABEL_COLUMNS)}; got {row!r}")
            yield where, row
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    except NotAJsonList as exc:
        raise ValueError(f"{path}: must hold a JSON list of objects with columns {list(LABEL_COLUMNS)}; "
                         f"got a {exc.type_name}") from None
