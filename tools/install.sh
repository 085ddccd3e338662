#!/usr/bin/env bash
# Creates .venv/ and installs kvtp_kernels into it, building the C++ extension
# (CPU kernels always; CUDA kernels when nvcc is found: see setup.py).
#
# Pinned to what this project is tested with: torch 2.14.1 (the CUDA 13.0 build, so
# the CUDA sources compile against it even on a machine without a GPU), triton 3.8.0,
# transformers 5.18.0. Re-running it reuses the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/pip --disable-pip-version-check -q"
echo "[install] torch, triton, build tools"
$PIP install "torch==2.14.1" "triton==3.8.0" ninja "setuptools>=64" wheel
echo "[install] kvtp_kernels (editable) with test, benchmark and HF extras"
MAX_JOBS=${MAX_JOBS:-2} $PIP install --no-build-isolation -e ".[test,bench,hf]" "transformers==5.18.0"
.venv/bin/python - <<'PY'
import torch, transformers, kvtp_kernels, kvtp_kernels.ops as ops
print(f"[install] kvtp_kernels {kvtp_kernels.__version__}: torch {torch.__version__}, "
      f"C++ ops {'yes' if ops.HAS_CPP else 'NO: ' + str(ops.CPP_IMPORT_ERROR)}, "
      f"CUDA kernels compiled {'yes' if ops.HAS_CPP and kvtp_kernels._C.WITH_CUDA else 'no'}, "
      f"triton {'yes' if ops.HAS_TRITON else 'no'}, transformers {transformers.__version__}")
PY
