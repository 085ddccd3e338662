#!/usr/bin/env bash
# Installs lmms-eval 0.7.3 into its own folder, .lmms-eval/, beside the project's .venv/
# (run tools/install.sh first). Used by the lmms-eval tests (tests/test_lmms_eval.py) and CI.
#
# Why a separate folder: lmms-eval 0.7.3 pins av<16 (we use the current PyAV) and needs
# filelock<4 (it imports filelock._api, gone in filelock 4), so it does not go into .venv/.
# pip's --target would ignore .venv's packages and fetch a second torch, so instead:
#   1. .venv's pip resolves lmms-eval against what .venv already has (--dry-run --report):
#      torch, transformers, numpy, ... are reused; the rest is the list to install;
#   2. exactly that list goes into .lmms-eval/ with --no-deps.
# Running lmms-eval then means putting the folder first on the path:
#   PYTHONPATH=.lmms-eval .venv/bin/python -m lmms_eval eval --model kvtp_llava_onevision ...
# (the model is found through kvtp_kernels' entry point in .venv). Re-running it reuses the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${KVTP_LMMS_EVAL:-.lmms-eval}
PIP=".venv/bin/pip --disable-pip-version-check"
[ -x .venv/bin/python ] || { echo "[lmms-eval] no .venv/: run tools/install.sh first"; exit 1; }
if [ -f "$TARGET/.complete" ]; then
    echo "[lmms-eval] $TARGET/ already set up ($(cat "$TARGET/.complete"))"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "[lmms-eval] resolving lmms-eval==0.7.3 against .venv/"
$PIP install -q --dry-run --report "$work/report.json" "lmms-eval==0.7.3" "filelock<4" "av<16"
.venv/bin/python - "$work/report.json" > "$work/requirements.txt" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for item in report["install"]:
    meta = item["metadata"]
    print(f"{meta['name']}=={meta['version']}")
PY
echo "[lmms-eval] installing $(wc -l < "$work/requirements.txt") packages into $TARGET/"
rm -rf "$TARGET"
$PIP install -q --no-deps --target "$TARGET" -r "$work/requirements.txt"
PYTHONPATH="$TARGET" .venv/bin/python - <<'PY'
import importlib.metadata as md
import lmms_eval.models as models, filelock, torch, transformers
assert "kvtp_llava_onevision" in models.list_available_models(), (
    "kvtp_llava_onevision is not registered: reinstall kvtp_kernels (tools/install.sh) so that its entry point exists")
print(f"[lmms-eval] lmms-eval {md.version('lmms_eval')} (filelock {filelock.__version__}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}); kvtp_llava_onevision registered")
PY
echo "lmms-eval 0.7.3, $(date -u +%F)" > "$TARGET/.complete"
