#!/usr/bin/env bash
# tools/with_transformers.sh VERSION COMMAND...
#
# Runs COMMAND with transformers==VERSION (and the dependencies that release needs,
# e.g. huggingface_hub 1.x for 5.17) importable ahead of the venv's own pinned copy.
# The release is installed once into .venv/transformers-VERSION/ (pip --target), so
# several releases sit beside the one tools/install.sh pins, without a second venv.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: tools/with_transformers.sh VERSION COMMAND..." >&2; exit 2; }
version=$1; shift
dir=".venv/transformers-$version"
if [ ! -f "$dir/.complete" ]; then
  rm -rf "$dir"
  # transformers alone; then only the requirements the venv does not satisfy (a second numpy would shadow torch's).
  .venv/bin/pip install --disable-pip-version-check -q --target "$dir" "transformers==$version" \
    --no-deps
  .venv/bin/python - "$dir" "$version" <<'PY'
import subprocess, sys
from importlib.metadata import PathDistribution
from pathlib import Path
from packaging.requirements import Requirement
from packaging.version import Version
import importlib.metadata as md
target, version = sys.argv[1:]
dist = next(PathDistribution(p) for p in Path(target).glob("transformers-*.dist-info"))
need = []
for spec in dist.requires or []:
    req = Requirement(spec)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        need.append(str(req)); continue
    if not req.specifier.contains(Version(have), prereleases=True):
        need.append(str(req))
if need:
    print(f"[with_transformers] transformers {version} needs {need} beside the venv's packages")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q",
                           "--target", target, *need])
PY
  touch "$dir/.complete"
fi
export PYTHONPATH="$PWD/$dir${PYTHONPATH:+:$PYTHONPATH}"
echo "[with_transformers] $(.venv/bin/python -c 'import transformers as t; print("transformers", t.__version__, "from", t.__file__)')" >&2
exec "$@"
