"""Every difference between the transformers releases this package supports, in one place.

The supported range is ``MIN_TRANSFORMERS`` (5.17) to the newest 5.x release; CI tests
the oldest, the pinned one and the newest (``.ci/run``). Code elsewhere in the package
never compares versions: it calls a helper here, and each helper names the release that
introduced the difference it hides, with a test in ``tests/test_compat.py``.
"""

from __future__ import annotations

import re

#: Oldest transformers release the integrations, the predictor and ``kvtp eval`` support.
MIN_TRANSFORMERS = (5, 17)
MIN_TRANSFORMERS_STR = ".".join(map(str, MIN_TRANSFORMERS))


def parse_version(version: str) -> tuple[int, ...]:
    """``"5.18.0"`` -> ``(5, 18, 0)``; pre-release and local suffixes are dropped (``"5.25.0.dev0"`` -> (5, 25, 0))."""
    parts = []
    for piece in version.split(".")[:3]:
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def require_transformers(feature: str, error: type[Exception] = ImportError):
    """Import transformers, or raise ``error`` naming ``feature``, the installed release and the minimum."""
    try:
        import transformers
    except ImportError as exc:
        raise error(f"{feature} needs transformers >= {MIN_TRANSFORMERS_STR} "
                    "(pip install 'kvtp-kernels[hf]')") from exc
    if parse_version(transformers.__version__)[:2] < MIN_TRANSFORMERS:
        raise error(f"{feature} supports transformers >= {MIN_TRANSFORMERS_STR}; found "
                    f"{transformers.__version__} (pip install -U 'transformers>={MIN_TRANSFORMERS_STR}')")
    return transformers
