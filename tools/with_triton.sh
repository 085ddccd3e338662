#!/usr/bin/env bash
# tools/with_triton.sh VERSION COMMAND...
#
# Runs COMMAND with triton==VERSION importable ahead of the venv's own pinned copy (the lent GPU
# machines run an older Triton than tools/install.sh pins), installed once into
# .venv/triton-VERSION/: tools/with_package.sh triton VERSION COMMAND...
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: tools/with_triton.sh VERSION COMMAND..." >&2; exit 2; }
exec bash "$(dirname "$0")/with_package.sh" triton "$@"
