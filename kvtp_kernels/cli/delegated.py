"""``kvtp bench`` and ``kvtp train-predictor``: subcommands that hand their arguments to their own parsers.

``kvtp bench`` runs the benchmarks of bench/, which live in the source checkout and are not installed
with the package: it imports the ``bench`` package when it is importable, else loads it from bench/
next to the package's folder or in the current folder, and otherwise says in one line (exit status 2)
that it needs a source checkout.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from ._checks import PROG

NEEDS_CHECKOUT = ("the benchmarks live in bench/ of the kvtp_kernels source checkout and are not installed with "
                  "the package; run 'kvtp bench' (or 'python -m bench.run') from a clone of the repository, or "
                  "install it from the clone with 'pip install -e .'")


def add_bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench", add_help=False, help="the benchmark main job (bench/ of the source checkout; 'kvtp bench --help')",
        description="Runs python -m bench.run with the same options.")
    p.add_argument("args", nargs=argparse.REMAINDER, help="options of the benchmark: see 'kvtp bench --help'")


def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train-predictor", add_help=False,
        help="train the relevance predictor on a label file ('kvtp train-predictor --help')",
        description="Runs python -m kvtp_kernels.predictor.train with the same options.")
    p.add_argument("args", nargs=argparse.REMAINDER, help="options of the trainer: see 'kvtp train-predictor --help'")


def run_bench(argv: list[str]) -> int:
    """``python -m bench.run ARGV`` in this process, named ``kvtp bench``; 2 outside a source checkout."""
    if not _load_bench_package():
        print(f"{PROG} bench: error: {NEEDS_CHECKOUT}", file=sys.stderr)
        return 2
    importlib.import_module("bench.run").run(argv, prog=f"{PROG} bench")
    return 0


def run_train(argv: list[str]) -> int:
    from ..predictor.train import main as train_main

    return int(train_main(argv, prog=f"{PROG} train-predictor") or 0)


def _load_bench_package() -> bool:
    """Whether ``bench`` (with its harness) can be imported: already importable, or loaded from the bench/ folder
    of the source checkout (next to the package's folder, or in the current folder) under the name ``bench``."""
    try:
        importlib.import_module("bench.harness")
        return True
    except ImportError:
        pass
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for folder in (package_root, os.getcwd()):
        bench_dir = os.path.join(folder, "bench")
        if os.path.isfile(os.path.join(bench_dir, "harness.py")):
            spec = importlib.util.spec_from_file_location("bench", os.path.join(bench_dir, "__init__.py"),
                                                          submodule_search_locations=[bench_dir])
            module = importlib.util.module_from_spec(spec)
            sys.modules["bench"] = module
            spec.loader.exec_module(module)
            return True
    return False
