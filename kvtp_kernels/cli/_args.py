"""The argument types, the help formatter and the options several ``kvtp`` subcommands take.

A value a type refuses is an argparse usage error: one line ``kvtp SUBCOMMAND: error: ...``, exit status 2.
"""

from __future__ import annotations

import argparse
import math
import re

from ..options import MODEL_DTYPES, MODES


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
