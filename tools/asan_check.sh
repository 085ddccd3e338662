#!/usr/bin/env bash
# The raw C++ ops under AddressSanitizer: a second, CPU-only build of kvtp_kernels._C with
# -fsanitize=address into build-asan/ (outside the package, the installed extension is
# untouched), staged next to a copy of the Python package, then the op tests run against
# it with the ASan runtime preloaded. Any out-of-bounds access aborts the run (non-zero exit).
# Needs the venv of tools/install.sh. Usage: bash tools/asan_check.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
rm -rf build-asan
mkdir -p build-asan/pkg
KVTP_BUILD_CUDA=0 KVTP_SANITIZE=address MAX_JOBS=${MAX_JOBS:-2} .venv/bin/python setup.py -q build_ext \
    --build-lib build-asan/lib --build-temp build-asan/tmp > build-asan/build.log 2>&1 \
    || { tail -40 build-asan/build.log; exit 1; }
cp -r kvtp_kernels build-asan/pkg/
find build-asan/pkg -name '_C*.so' -delete
cp build-asan/lib/kvtp_kernels/_C*.so build-asan/pkg/kvtp_kernels/
echo "[asan] built in $(( $(date +%s) - start )) s"
libasan=$(gcc -print-file-name=libasan.so)
[ -f "$libasan" ] || { echo "[asan] no libasan.so from gcc"; exit 1; }
export PYTHONPATH="$PWD/build-asan/pkg" LD_PRELOAD="$libasan"
# detect_leaks=0: CPython and torch keep memory alive at exit on purpose (not our bugs).
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1"
.venv/bin/python - <<'PY'
import kvtp_kernels, kvtp_kernels.ops as ops
assert kvtp_kernels.__file__.startswith(__import__("os").path.abspath("build-asan/pkg")), kvtp_kernels.__file__
assert ops.HAS_CPP, ops.CPP_IMPORT_ERROR
print(f"[asan] testing {kvtp_kernels._C.__file__}")
PY
.venv/bin/python -m pytest -q -p no:cacheprovider tests/test_raw_ops.py tests/test_prune.py tests/test_pack.py \
    tests/test_ops.py tests/test_properties.py -k "not triton" "$@"
echo "[asan] done in $(( $(date +%s) - start )) s"
