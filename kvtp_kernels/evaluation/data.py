"""Sample files for ``kvtp eval`` / ``kvtp annotate``, and the resumable JSONL results they write.

Input: one sample per row of a JSONL, JSON (a list of objects) or CSV file:

========== ======== ==============================================================
column     required meaning
========== ======== ==============================================================
video      yes      path of the video; relative paths are relative to the data file's folder
question   yes      the question text
options    eval     the choices: a JSON list, a ``|``-separated string (CSV), an object
                    ``{"A": ..., "B": ...}``, or (CSV) columns ``A``, ``B``, ... or ``a0``, ``a1``, ...
                    A leading ``"A. "`` / ``"(A) "`` that repeats each option's own letter is removed.
answer     eval     the right option: its letter (``"B"``, ``"(B)"``, ``"B."``), its text, or a
                    0-based index (NeXT-QA / EgoSchema convention): a JSON integer, or a string
                    of digits that is not an option's text
id         no       unique sample id (default: a hash of video, question and options), the key
                    that makes reruns resume
subset     no       group name for the per-subset table (default ``"all"``)
query      no       the debiased query given to the relevance predictor (default: the question);
                    written by ``kvtp annotate``
captions   no       ``kvtp annotate`` only: one caption per sampled frame (a list of strings) or
                    clip captions ``[{"start": s, "end": s, "text": ...}, ...]`` in seconds
========== ======== ==============================================================

Example JSONL line::

    {"id": "vmme-17", "video": "videos/abc.mp4", "question": "What does the man pick up?",
     "options": ["A cup", "A phone", "A key", "A book"], "answer": "B", "subset": "videomme"}

Errors: problems with the file as a whole (missing, unknown extension, a JSON list that
does not parse, a CSV header without the required columns, no rows) raise
:class:`DataFileError`; problems with one row (a line that is not JSON, a missing column,
an answer that is not among the options, a missing video, a duplicate id) become a
:class:`SampleError` naming the file and line, and the other rows are still read.

Results: :class:`ResultsFile` (in :mod:`.results`, importable from here too).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator
from typing import IO, Any

from .._jsonrows import NotAJsonList, csv_rows, json_rows, open_rows
from .errors import DataFileError
from .results import ResultsFile  # re-exported: it was defined here

__all__ = [
    "DataFileError",
    "ResultsFile",
    "Sample",
    "SampleError",
    "option_letter",
    "read_samples",
]

MAX_OPTIONS = 26
DEFAULT_SUBSET = "all"
_EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv")
_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Za-z])\s*[\.\):]\s*")
_LETTER_ANSWER = re.compile(r"^\s*\(?\s*([A-Za-z])\s*[\.\):]?\s*$")


@dataclasses.dataclass(frozen=True)
class SampleError:
    """A row that was skipped, and why.

    Attributes:
        origin: ``"data.jsonl: line 4"``.
        message: what is wrong, in words.
        sample_id: the row's id when it is known.
    """

    origin: str
    message: str
    sample_id: str | None = None

    def __str__(self) -> str:
        tag = f" (id {self.sample_id})" if self.sample_id else ""
        return f"{self.origin}{tag}: {self.message}"


@dataclasses.dataclass
class Sample:
    """One validated row.

    Attributes:
        id: unique id (given, or derived from video, question and options).
        video: absolute path of the video file.
        question: the question.
        options: the choices (letter prefixes removed); empty when the file has none.
        answer: index of the right option, or None.
        subset: group name.
        query: the predictor's query (``query`` column), or None.
        captions: the ``captions`` column as given (checked by ``kvtp annotate``), or None.
        origin: ``"data.jsonl: line 3"``, for messages.
    """

    id: str
    video: str
    question: str
    options: list[str]
    answer: int | None
    subset: str
    query: str | None
    captions: Any
    origin: str

    @property
    def answer_letter(self) -> str | None:
        return None if self.answer is None else option_letter(self.answer)


def option_letter(index: int) -> str:
    """0 -> "A", 1 -> "B", ... (at most 26 options)."""
    if not 0 <= index < MAX_OPTIONS:
        raise ValueError(f"option index must be in 0..{MAX_OPTIONS - 1}; got {index}")
    return chr(ord("A") + index)


class _RowError(Exception):
    """One row is unusable (becomes a SampleError)."""


# ----------------------------------------------------------------------------------
# Rows -> samples
# ----------------------------------------------------------------------------------
def _text(row: dict, column: str, required: bool) -> str | None:
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise _RowError(f"missing column {column!r} (or it is empty)")
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _RowError(f"column {column!r} must be a string; got {type(value).__name__} {value!r}")
    return value.strip()


def _options(row: dict) -> list[str]:
    value = row.get("options")
    if value is None or value == "":
        # CSV: columns A, B, C, ... or a0, a1, a2, ... (NeXT-QA), contiguous, non-empty cells
        for name in (option_letter, lambda i: f"a{i}"):
            cells = []
            for i in range(MAX_OPTIONS):
                cell = row.get(name(i))
                if cell is None or (isinstance(cell, str) and not cell.strip()):
                    break
                cells.append(cell)
            if cells:
                value = cells
                break
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") or text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _RowError(f"column 'options' looks like JSON but does not parse ({exc})") from exc
        else:
            value = [p for p in text.split("|")]
    if isinstance(value, dict):
        keys = [str(k).strip().upper() for k in value]
        expected = [option_letter(i) for i in range(len(keys))] if len(keys) <= MAX_OPTIONS else None
        if keys != expected:
            raise _RowError(f"column 'options' as an object must have the keys A, B, C, ... in order; got {keys}")
        value = list(value.values())
    if not isinstance(value, list):
        raise _RowError(f"column 'options' must be a list of strings; got {type(value).__name__} {value!r}")
    options = []
    for i, option in enumerate(value):
        if isinstance(option, (int, float)) and not isinstance(option, bool):
            option = str(option)
        if not isinstance(option, str) or not option.strip():
            raise _RowError(f"option {i} must be a non-empty string; got {option!r}")
        options.append(option.strip())
    if not 2 <= len(options) <= MAX_OPTIONS:
        raise _RowError(f"column 'options' must hold 2 to {MAX_OPTIONS} choices; got {len(options)}")
    # "A. text" / "(B) text": drop the prefix when every option carries its own letter.
    matches = [_LETTER_PREFIX.match(o) for o in options]
    if all(m is not None and m.group(1).upper() == option_letter(i) for i, m in enumerate(matches)):
        stripped = [o[m.end():].strip() for o, m in zip(options, matches)]
        if all(stripped):
            options = stripped
    lowered = [o.casefold() for o in options]
    if len(set(lowered)) != len(lowered):
        raise _RowError(f"column 'options' has duplicate choices: {options}")
    return options


def _answer(value: Any, options: list[str]) -> int:
    described = ", ".join(f"{option_letter(i)}. {o}" for i, o in enumerate(options))
    if isinstance(value, bool) or value is None:
        raise _RowError(f"column 'answer' must be a letter, an option's text or a 0-based index; got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if 0 <= value < len(options):
            return value
        raise _RowError(f"answer index {value} is not among the options (0-based, 0..{len(options) - 1}: {described})")
    if not isinstance(value, str) or not value.strip():
        raise _RowError(f"column 'answer' must be a letter, an option's text or a 0-based index; got {value!r}")
    text = value.strip()
    by_text = [i for i, o in enumerate(options) if o.casefold() == text.casefold()]
    letter = _LETTER_ANSWER.match(text)
    by_letter = None
    if letter is not None:
        index = ord(letter.group(1).upper()) - ord("A")
        by_letter = index if index < len(options) else None
        if by_letter is None and not by_text:
            raise _RowError(f"answer {text!r} is not among the options (letters A..{option_letter(len(options) - 1)}:"
                            f" {described})")
    if by_letter is not None and by_text and by_text[0] != by_letter:
        raise _RowError(f"answer {text!r} is ambiguous: it is option {option_letter(by_letter)}'s letter and option "
                        f"{option_letter(by_text[0])}'s text ({described})")
    if by_letter is not None:
        return by_letter
    if by_text:
        return by_text[0]
    if text.isdigit():  # a CSV cell holding a 0-based index (NeXT-QA's answer column)
        if int(text) < len(options):
            return int(text)
        raise _RowError(f"answer {text!r} is not among the options (as text, or as a 0-based index "
                        f"0..{len(options) - 1}: {described})")
    raise _RowError(f"answer {text!r} is not among the options ({described})")


def _default_id(video: str, question: str, options: list[str]) -> str:
    digest = hashlib.sha1("\n".join([video, question, *options]).encode("utf-8")).hexdigest()
    return digest[:12]


def _sample(row: dict, origin: str, base_dir: str, *, require_options: bool, require_answer: bool,
            check_videos: bool) -> Sample:
    video = _text(row, "video", True)
    question = _text(row, "question", True)
    options = _options(row)
    if require_options and not options:
        raise _RowError("missing column 'options' (a list of 2 or more choices)")
    answer = None
    raw_answer = row.get("answer")
    if raw_answer is not None and raw_answer != "":
        if not options:
            raise _RowError("column 'answer' is given but there are no 'options' to find it in")
        answer = _answer(raw_answer, options)
    elif require_answer:
        raise _RowError("missing column 'answer' (the right option's letter, text or 0-based index)")
    path = os.path.expanduser(video)
    path = os.path.normpath(path if os.path.isabs(path) else os.path.join(base_dir, path))
    sample_id = _text(row, "id", False) or _default_id(video, question, options)
    if check_videos:
        if not os.path.exists(path):
            raise _RowError(f"no such video file: {path!r}")
        if os.path.isdir(path):
            raise _RowError(f"video {path!r} is a directory, not a file")
    return Sample(id=sample_id, video=path, question=question, options=options, answer=answer,
                  subset=_text(row, "subset", False) or DEFAULT_SUBSET, query=_text(row, "query", False),
                  captions=row.get("captions"), origin=origin)


def _rows(path: str, ext: str) -> Iterator[tuple[str, dict | None, str | None]]:
    """-> (origin, row or None, error) per row; file-level problems raise DataFileError."""
    with open_rows(path, ext) as fh:
        if ext == ".csv":
            rows = csv_rows(fh, path, ("video", "question"), lambda missing, header: DataFileError(
                f"{path}: line 1 (header): missing column(s) {missing}; got {header}"))
            for origin, row in rows:
                yield origin, dict(row), None
        else:
            yield from _json_rows(fh, path, ext)


def _json_rows(fh: IO[str], path: str, ext: str) -> Iterator[tuple[str, dict | None, str | None]]:
    try:
        for origin, row in json_rows(fh, path, lines=ext != ".json"):
            if isinstance(row, json.JSONDecodeError):
                yield origin, None, f"not valid JSON ({row.msg} at column {row.colno})"
            elif isinstance(row, dict):
                yield origin, row, None
            elif ext == ".json":
                yield origin, None, f"must be an object with columns video, question, ...; got {row!r}"
            else:
                yield origin, None, f"must be a JSON object; got {type(row).__name__}"
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{path}: line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})") from exc
    except NotAJsonList as exc:
        raise DataFileError(f"{path}: must hold a JSON list of sample objects; got a {exc.type_name}") from None


def read_samples(
    path: str | os.PathLike,
    *,
    require_options: bool = True,
    require_answer: bool = True,
    check_videos: bool = True,
) -> tuple[list[Sample], list[SampleError]]:
    """Read and validate a sample file (format in the module docstring).

    Args:
        path: .jsonl / .ndjson, .json (a list of objects) or .csv.
        require_options, require_answer: multiple-choice columns are required (``kvtp eval``)
            or optional (``kvtp annotate``).
        check_videos: a row whose video file does not exist is an error.

    Returns:
        ``(samples, errors)``: the good rows in file order, and one :class:`SampleError` per
        bad row (the run goes on without it).

    Raises:
        DataFileError: the file is missing, has another extension, does not parse as a
            whole (JSON list), lacks required CSV columns, or holds no row at all.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise DataFileError(f"{path}: a data file must end in {', '.join(_EXTENSIONS)}; got {ext or 'no extension'!r}")
    if not os.path.isfile(path):
        raise DataFileError(f"no such data file: {path!r}")
    base_dir = os.path.dirname(os.path.abspath(path))
    samples: list[Sample] = []
    errors: list[SampleError] = []
    seen: dict[str, str] = {}
    rows = 0
    try:
        parsed = list(_rows(path, ext))
    except UnicodeDecodeError as exc:
        with open(path, "rb") as fh:
            line = fh.read(exc.start + 1 if exc.start is not None else 0).count(b"\n") + 1
        raise DataFileError(f"{path}: line {line}: not valid UTF-8 ({exc.reason} at byte {exc.start}); save the "
                            "file as UTF-8") from None
    for origin, row, problem in parsed:
        rows += 1
        if problem is not None:
            errors.append(SampleError(origin, problem))
            continue
        try:
            sample = _sample(row, origin, base_dir, require_options=require_options, require_answer=require_answer,
                             check_videos=check_videos)
        except _RowError as exc:
            sample_id = row.get("id") if isinstance(row.get("id"), (str, int)) else None
            errors.append(SampleError(origin, str(exc), None if sample_id is None else str(sample_id)))
            continue
        if sample.id in seen:
            errors.append(SampleError(origin, f"duplicate id {sample.id!r} (first used at {seen[sample.id]})",
                                      sample.id))
            continue
        seen[sample.id] = origin
        samples.append(sample)
    if rows == 0:
        raise DataFileError(f"{path}: no samples (the file has no data rows)")
    return samples, errors
