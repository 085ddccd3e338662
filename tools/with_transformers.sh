#!/usr/bin/env bash
# tools/with_transformers.sh VERSION COMMAND...
#
# Runs COMMAND with transformers==VERSION (and the dependencies that release needs, e.g.
# huggingface_hub 1.x for 5.17) importable ahead of the venv's own pinned copy, installed once
# into .venv/transformers-VERSION/: tools/with_package.sh transformers VERSION COMMAND...
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: tools/with_transformers.sh VERSION COMMAND..." >&2; exit 2; }
exec bash "$(dirname "$0")/with_package.sh" transformers "$@"
