"""The resumable JSONL results of ``kvtp eval`` / ``kvtp annotate``.

A :class:`ResultsFile` is an append-only JSONL file with one record per finished
sample (``"id"`` + ``"settings"`` + results). Reopening it with the same settings
resumes (finished ids are skipped); a record written with other settings is refused,
so two experiments never mix in one file; a last line cut short by a crash is dropped,
and a last record that lacks only its newline gets it back before anything is appended.
While open, the file holds an advisory lock (``flock``, POSIX): a second process that
opens the same results file is refused with a clear error instead of evaluating
everything again into the same file.
"""

from __future__ import annotations

import json
import os

from .errors import DataFileError

try:  # advisory locks of results files (POSIX)
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None

__all__ = ["ResultsFile"]


def _normalised(settings: dict) -> dict:
    return json.loads(json.dumps(settings, sort_keys=True))


def _difference(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} there vs {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else "")


class ResultsFile:
    """Append-only JSONL of finished samples, resumable across runs (see the module docstring).

    Args:
        path: the JSONL file (created with its folder when missing).
        settings: what fixes the results (model, budget, ...); stored in every record.
        overwrite: start afresh (an existing file is emptied).

    Attributes:
        records: id -> record already in the file (and those appended since).
        dropped_partial_line: True when a truncated last line was removed on open.

    Raises:
        DataFileError: a line in the middle that is not JSON, a record without an id, or a
            record written with other settings.
    """

    def __init__(self, path: str | os.PathLike, settings: dict, *, overwrite: bool = False):
        self.path = os.fspath(path)
        self.settings = _normalised(settings)
        self.records: dict[str, dict] = {}
        self.dropped_partial_line = False
        self.repaired_newline = False
        self._lock_key: str | None = None
        if os.path.isdir(self.path):
            raise DataFileError(f"output {self.path!r} is a directory")
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:  # a parent that is a file, no permission
            raise DataFileError(f"output {self.path!r}: cannot create its folder {folder!r} ({exc.strerror})") from None
        self._lock()  # before anything is read or emptied
        if overwrite or os.path.getsize(self.path) == 0:
            open(self.path, "w", encoding="utf-8").close()
            return
        with open(self.path, "rb") as fh:
            data = fh.read()
        lines = data.split(b"\n")
        offset = 0
        for n, raw in enumerate(lines, start=1):
            start, offset = offset, offset + len(raw) + 1
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if n == len(lines):  # the last line, without its newline: a write cut short
                    with open(self.path, "r+b") as fh:
                        fh.truncate(start)
                    self.dropped_partial_line = True
                    break
                raise DataFileError(f"{self.path}: line {n}: not valid JSON ({exc}); fix or delete the line, or pass "
                                    "--overwrite to start afresh") from exc
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise DataFileError(f"{self.path}: line {n}: not a results record (an object with an 'id'); is this "
                                    "the right --output?")
            if record.get("settings") != self.settings:
                raise DataFileError(
                    f"{self.path}: line {n}: written by a run with other settings "
                    f"({_difference(record.get('settings') or {}, self.settings)}); choose another --output, or pass "
                    "--overwrite to replace it")
            self.records[record["id"]] = record
        if not self.dropped_partial_line and data and not data.endswith(b"\n"):
            # A complete last record without its newline (an editor, another tool): the next
            # record would join its line and both would be lost on the next open.
            with open(self.path, "ab") as fh:
                fh.write(b"\n")
            self.repaired_newline = True

    # One lock per file and process: ResultsFile objects of one process share it, another
    # process is refused. flock locks belong to the open file, so the fd stays open.
    _held: dict[str, list] = {}

    def _lock(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataFileError(f"output {self.path!r}: cannot open it for writing ({exc.strerror})") from None
        key = os.path.realpath(self.path)
        held = ResultsFile._held.get(key)
        if held is not None:
            os.close(fd)
            held[1] += 1
            self._lock_key = key
            return
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise DataFileError(f"output {self.path!r} is in use by another run (it holds the file's lock); wait "
                                    "for that run to finish, or choose another --output") from None
        ResultsFile._held[key] = [fd, 1]
        self._lock_key = key

    def close(self) -> None:
        """Release the lock (also done when the object is collected or the process exits)."""
        key, self._lock_key = self._lock_key, None
        held = ResultsFile._held.get(key) if key is not None else None
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del ResultsFile._held[key]
            os.close(held[0])  # closing the fd releases the flock

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.records

    def append(self, record: dict) -> None:
        """Write one record (``settings`` added) and flush, so that a crash loses at most this line."""
        record = {**record, "settings": self.settings}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
        self.records[record["id"]] = record
