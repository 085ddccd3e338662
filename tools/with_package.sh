#!/usr/bin/env bash
# tools/with_package.sh PACKAGE VERSION COMMAND...   (PACKAGE: transformers or triton)
#
# Runs COMMAND with PACKAGE==VERSION importable ahead of the venv's own pinned copy. The release
# is installed once into .venv/PACKAGE-VERSION/ (pip --target), so several releases sit beside
# the one tools/install.sh pins, without a second venv. tools/with_transformers.sh and
# tools/with_triton.sh are this script with PACKAGE filled in. Per package:
#   transformers: then only the requirements of that release the venv does not satisfy (e.g.
#     huggingface_hub 1.x for 5.17), into the same folder (a second numpy would shadow torch's).
#   triton: no dependencies (its wheels need none beyond what the venv has); the lent GPU
#     machines run an older Triton than tools/install.sh pins. Before 3.7 also numpy<2.4: its
#     interpreter calls int() on one-element arrays (an error since NumPy 2.4; Triton 3.7
#     squeezes first), and only the interpreter meets it. The imported version is checked.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: tools/with_package.sh transformers|triton VERSION COMMAND..." >&2; exit 2; }
package=$1 version=$2
shift 2
dir=".venv/$package-$version"

pip_target() {  # pip_target REQUIREMENT...: install into $dir, no dependencies
  .venv/bin/pip install --disable-pip-version-check -q --target "$dir" "$@" --no-deps
}

install_transformers() {
  pip_target "transformers==$version"
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
}

install_triton() {
  local extra=()
  if .venv/bin/python -c "import sys; from packaging.version import Version; sys.exit(Version('$version') >= Version('3.7'))"; then
    extra=("numpy<2.4")
  fi
  pip_target "triton==$version" "${extra[@]}"
}

report_transformers() {
  echo "[with_transformers] $(.venv/bin/python -c 'import transformers as t; print("transformers", t.__version__, "from", t.__file__)')" >&2
}

report_triton() {
  local got
  got=$(.venv/bin/python -c "import triton; print(triton.__version__)")
  [ "$got" = "$version" ] || { echo "with_triton: imported triton $got, expected $version" >&2; exit 1; }
  echo "[with_triton] triton $got from $dir"
}

case $package in
  transformers|triton) ;;
  *) echo "with_package: PACKAGE must be transformers or triton; got $package" >&2; exit 2 ;;
esac
if [ ! -f "$dir/.complete" ]; then
  rm -rf "$dir"
  "install_$package"
  touch "$dir/.complete"
fi
export PYTHONPATH="$PWD/$dir${PYTHONPATH:+:$PYTHONPATH}"
"report_$package"
exec "$@"
