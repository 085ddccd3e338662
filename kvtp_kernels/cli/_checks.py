"""The checks the ``kvtp`` subcommands run before any work: output paths, and reading the samples of --data.

Each refusal is a :class:`UsageError`: one line ``kvtp SUBCOMMAND: error: ...``, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

PROG = "kvtp"


class UsageError(Exception):
    """Reported as ``kvtp SUBCOMMAND: error: ...`` with exit status 2."""


# ----------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------
def same_file(a: str, b: str) -> bool:
    """Whether two paths name the same file (existing or not)."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _check_file_path(option: str, path: str, folder: str) -> None:
    """Writable: the file itself when it exists, else `folder` (the callers have refused a directory)."""
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        raise UsageError(f"{option} {path!r}: not writable")


def check_output_target(option: str, path: str) -> None:
    """An output file the run creates or appends to: not a folder, not under a file, writable."""
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a directory; give a file path")
    existing = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"{option} {path!r}: {existing!r} is a file, not a folder")
    _check_file_path(option, path, existing)


def check_writable_file(option: str, path: str) -> None:
    """A file the run will write at its end: usable now, so that a long run does not fail there."""
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a directory; give a file path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path!r}: its folder {folder!r} does not exist or is not a folder")
    _check_file_path(option, path, folder)


# ----------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------
def report_errors(command: str, errors: Sequence[Any]) -> None:
    """The skipped samples, one a line, on stderr."""
    if not errors:
        return
    print(f"\n{PROG} {command}: {len(errors)} sample(s) skipped:", file=sys.stderr)
    for error in errors:
        print(f"  {error}", file=sys.stderr)


def _select(samples, subsets, limit):
    if subsets:
        known = {s.subset for s in samples}
        unknown = sorted(set(subsets) - known)
        if unknown:
            raise UsageError(f"--subset {', '.join(unknown)}: no such subset in the data (subsets: "
                             f"{', '.join(sorted(known))})")
        samples = [s for s in samples if s.subset in subsets]
    return samples[:limit] if limit else samples


def read_selected_samples(command: str, args: argparse.Namespace, subsets=None, **read_options):
    """The samples of ``--data`` (``--subset`` and ``--limit`` applied) and the bad rows; a usage error when
    ``--strict`` meets a bad row or when no sample is left."""
    from ..evaluation.data import read_samples

    samples, data_errors = read_samples(args.data, **read_options)
    samples = _select(samples, subsets, args.limit)
    if args.strict and data_errors:
        report_errors(command, data_errors)
        raise UsageError(f"{len(data_errors)} bad row(s) in {args.data} (--strict)")
    if not samples:
        report_errors(command, data_errors)
        raise UsageError(f"no usable samples in {args.data}")
    return samples, data_errors
