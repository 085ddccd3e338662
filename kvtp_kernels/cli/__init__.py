"""The ``kvtp`` command line: ``bench``, ``eval``, ``annotate``, ``train-predictor``, ``demo``.

    kvtp eval --data skvqa.jsonl --model llava-hf/LLaVA-Video-7B-Qwen2-hf --predictor runs/kvtp-head \\
        --budget 0.2 --batch-size 4 --output preds.jsonl
    kvtp annotate --data raw.jsonl --annotator openai --url http://localhost:8000/v1 --model Qwen/Qwen2.5-VL-7B \\
        --output skvqa.jsonl
    kvtp train-predictor skvqa.jsonl --model google/siglip-so400m-patch14-384 --output-dir runs/kvtp-head
    kvtp demo
    kvtp bench --full

``kvtp SUBCOMMAND --help`` documents every option. Exit codes: 0 = done; 1 = done, but
some samples were skipped (listed at the end); 2 = usage error (bad option, unusable data
file, model, device or output path; checked before any work starts), one line
``kvtp SUBCOMMAND: error: ...``, argparse style; 130 = interrupted (Ctrl-C). Without the
console script: ``python -m kvtp_kernels.cli``.

One module per command group: ``eval_cmd``, ``annotate_cmd``, ``demo_cmd`` (each its parser and its run),
``delegated`` (``bench`` and ``train-predictor``); ``_args`` holds the argument types and the options
several subcommands take, ``_checks`` the checks before any work (output paths, reading --data). The tiny
random model of ``kvtp demo`` is ``kvtp_kernels.tiny_models``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import annotate_cmd, delegated, demo_cmd, eval_cmd
from ._checks import PROG, UsageError

__all__ = ["build_parser", "main"]

#: Subcommands whose arguments go unparsed to their own parsers.
DELEGATED = {"bench": delegated.run_bench, "train-predictor": delegated.run_train}


def build_parser() -> argparse.ArgumentParser:
    """The ``kvtp`` parser (``bench`` and ``train-predictor`` hand their arguments to their own parsers)."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, description="KVTP (Keyframe-oriented Vision Token Pruning): evaluate, prepare data, train the "
                               "relevance predictor, benchmark the kernels.",
        epilog="'kvtp SUBCOMMAND --help' lists every option of a subcommand. Exit status: 0 done, 1 done with "
               "skipped samples (listed at the end), 2 usage error, 130 interrupted (Ctrl-C).")
    parser.add_argument("--version", action="version", version=f"kvtp_kernels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    delegated.add_bench_parser(sub)
    eval_cmd.add_parser(sub)
    annotate_cmd.add_parser(sub)
    delegated.add_train_parser(sub)
    demo_cmd.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kvtp`` command line; returns the exit status (0 done, 1 some samples skipped, 2 usage error,
    130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    try:
        if command in DELEGATED:
            return DELEGATED[command](argv[1:])
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except SystemExit as exc:  # argparse (--help, usage errors) and the delegated entry points
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"{PROG} {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{PROG} {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if _is_user_error(exc):
            print(f"{PROG} {command}: error: {exc}", file=sys.stderr)
            return 2
        raise


def _is_user_error(exc: Exception) -> bool:
    """An unusable data file, model, device or video: reported in one line, exit status 2."""
    from ..evaluation.errors import AnnotatorUnavailable, DataFileError, EvalError
    from ..video import VideoDecodeError

    return isinstance(exc, (DataFileError, EvalError, AnnotatorUnavailable, FileNotFoundError, VideoDecodeError))
