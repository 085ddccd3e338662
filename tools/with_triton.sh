#!/usr/bin/env bash
# tools/with_triton.sh VERSION COMMAND...
#
# Runs COMMAND with triton==VERSION importable ahead of the venv's own pinned copy (the
# lent GPU machines run an older Triton than tools/install.sh pins). The release is
# installed once into .venv/triton-VERSION/ (pip --target, no dependencies: triton's
# wheels need none beyond what the venv has), beside the venv's. Triton before 3.7 also
# gets numpy<2.4 there: its interpreter calls int() on one-element arrays (an error since
# NumPy 2.4; Triton 3.7 squeezes first), and only the interpreter meets it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: tools/with_triton.sh VERSION COMMAND..." >&2; exit 2; }
version=$1; shift
dir=".venv/triton-$version"
if [ ! -f "$dir/.complete" ]; then
  rm -rf "$dir"
  extra=()
  if .venv/bin/python -c "import sys; from packaging.version import Version; sys.exit(Version('$version') >= Version('3.7'))"; then
    extra=("numpy<2.4")
  fi
  .venv/bin/pip install --disable-pip-version-check -q --target "$dir" "triton==$version" "${extra[@]}" --no-deps
  touch "$dir/.complete"
fi
export PYTHONPATH="$PWD/$dir${PYTHONPATH:+:$PYTHONPATH}"
got=$(.venv/bin/python -c "import triton; print(triton.__version__)")
[ "$got" = "$version" ] || { echo "with_triton: imported triton $got, expected $version" >&2; exit 1; }
echo "[with_triton] triton $got from $dir"
exec "$@"
