#!/usr/bin/env bash
# The raw C++ ops under AddressSanitizer: a second, CPU-only build of kvtp_kernels._C with
# -fsanitize=address into build-asan/ (outside the package, the installed extension is
# untouched), staged next to a copy of the Python package, then the op tests run against
# it with the ASan runtime preloaded. Any out-of-bounds access aborts the run (non-zero exit).
# Needs the venv of tools/install.sh. Usage: bash tools/asan_check.sh [pytest args...]
# (KVTP_ASAN_REUSE=1 reuses an existing build-asan/lib instead of rebuilding: local reruns.)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
start=$(date +%s)
if [ "${KVTP_ASAN_REUSE:-0}" != 1 ] || ! ls build-asan/lib/kvtp_kernels/_C*.so >/dev/null 2>&1; then
    rm -rf build-asan
    mkdir -p build-asan
    KVTP_BUILD_CUDA=0 KVTP_SANITIZE=address MAX_JOBS=${MAX_JOBS:-2} .venv/bin/python setup.py -q build_ext \
        --build-lib build-asan/lib --build-temp build-asan/tmp > build-asan/build.log 2>&1 \
        || { tail -40 build-asan/build.log; exit 1; }
fi
rm -rf build-asan/pkg
mkdir -p build-asan/pkg
cp -r kvtp_kernels build-asan/pkg/
find build-asan/pkg -name '_C*.so' -delete
cp build-asan/lib/kvtp_kernels/_C*.so build-asan/pkg/kvtp_kernels/
echo "[asan] built in $(( $(date +%s) - start )) s"
# The staged extension must really be instrumented (not a plain build that finds nothing).
nm -D build-asan/pkg/kvtp_kernels/_C*.so | grep -q __asan_report_load \
    || { echo "[asan] build-asan's _C is not instrumented"; exit 1; }
libasan=$(gcc -print-file-name=libasan.so)
libstdcxx=$(gcc -print-file-name=libstdc++.so)
[ -f "$libasan" ] && [ -f "$libstdcxx" ] || { echo "[asan] no libasan.so / libstdc++.so from gcc"; exit 1; }
# libstdc++ preloaded too: ASan's __cxa_throw interceptor must find the real one before
# triton's extension (which throws during its import) is loaded.
export LD_PRELOAD="$libasan $libstdcxx"
# From build-asan/pkg, whose copy of the package (with the ASan _C) comes first on sys.path.
cd build-asan/pkg
# detect_leaks=0: CPython and torch keep memory alive at exit on purpose (not our bugs).
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1"
"$root/.venv/bin/python" - <<'PY'
import os, kvtp_kernels, kvtp_kernels.ops as ops
assert kvtp_kernels._C.__file__.startswith(os.getcwd()), kvtp_kernels._C.__file__
assert ops.HAS_CPP, ops.CPP_IMPORT_ERROR
print(f"[asan] testing {kvtp_kernels._C.__file__}")
PY
"$root/.venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$root" "$root/tests/test_raw_ops.py" \
    "$root/tests/test_prune.py" "$root/tests/test_pack.py" "$root/tests/test_ops.py" "$root/tests/test_properties.py" \
    -k "not triton" "$@"
echo "[asan] done in $(( $(date +%s) - start )) s"
