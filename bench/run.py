"""The main job: run every registered benchmark (quick by default) and print its headline.

    python -m bench.run                 # quick: headline rows + a few points, < 2 min on 2 CPU cores
    python -m bench.run --full          # the whole sweep (progress bar on a terminal)
    python -m bench.run --save          # also bench/results/<device>.csv and <device>-<bench>.png
    python -m bench.run --bench prune --device cuda --dtype bfloat16

Benchmarks are the ``bench/bench_*.py`` modules, each registering a
:class:`bench.core.Benchmark` at import (:func:`bench.core.discover`); a new one
(packing, within-frame methods, end to end) is picked up here by adding its file.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .core import discover
from .harness import main


def run(argv: Sequence[str] | None = None, prog: str = "python -m bench.run") -> None:
    """Every registered benchmark with the flags in ``argv`` (``kvtp bench`` calls this with its own name)."""
    benchmarks = list(discover().values())
    main(benchmarks, argv, prog=prog, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    run(sys.argv[1:])
