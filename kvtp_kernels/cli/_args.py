"""What the ``kvtp`` subcommands share: argument types, common options, output-path checks, reading the samples.

Every check here reports a usage error (:class:`UsageError`: one line ``kvtp SUBCOMMAND: error: ...``, exit
status 2) before any work starts.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from ..options import MODEL_DTYPES, MODES

PROG = "kvtp"


class UsageError(Exception):
    """Reported as ``kvtp SUBCOMMAND: error: ...`` with exit status 2."""


# ----------------------------------------------------------------------------------
# Argument types
# ----------------------------------------------------------------------------------
def budget(text: str) -> float | int:
    """"0.2" -> ratio 0.2; "2500" -> 2500 tokens per video."""
    try:
        return float(text) if re.search(r"[.eE]", text) else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a ratio in (0, 1] such as 0.2, or a token count such as 2500; "
                                         f"got {text!r}") from None


def int_at_least(lo: int):
    """argparse type: an integer >= lo."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}; got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}; got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0; got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text!r}")
    return value


def text(value: str) -> str:
    """argparse type: a non-blank string."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def modes(value: str) -> tuple[str, ...]:
    table = {"both": MODES, **{mode: (mode,) for mode in MODES}}
    if value not in table:
        raise argparse.ArgumentTypeError(f"must be both, full or kvtp; got {value!r}")
    return table[value]


# ----------------------------------------------------------------------------------
# Help and the options several subcommands take
# ----------------------------------------------------------------------------------
class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless it has no default or already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.required or action.default in (None, False, argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def video_options(parser: argparse.ArgumentParser, default_max_frames: int = 128) -> None:
    parser.add_argument("--fps", type=positive_float, default=1.0,
                        help="frames sampled per second of video (default: 1, as LLaVA-Video)")
    parser.add_argument("--max-frames", type=positive_int, default=default_max_frames,
                        help="at most this many frames per video; longer videos are sampled uniformly instead "
                             f"(default: {default_max_frames})")


def run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="torch device: auto (cuda if available, else cpu), cpu, "
                                                          "cuda, cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", choices=MODEL_DTYPES,
                        help="model dtype (default: auto = bfloat16 on CUDA, float32 on CPU)")


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
    """Not a directory, and writable: the file itself when it exists, else `folder`."""
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a directory; give a file path")
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
