#!/usr/bin/env bash
# tools/gpu_check.sh [--dry-run] OUTDIR
#
# Everything a lent GPU machine (one H100/H200; torch 2.11, triton 3.6, transformers 5.17,
# no network, no `av`, no scikit-video) should run, in one command of under 8 minutes
# including the build. Every step is capped by `timeout` so that the whole run ends by
# the deadline (KVTP_GPU_CHECK_SECONDS, default 470 s) and the summary is still written.
#
#   1. build:      MAX_JOBS=16 pip install --no-build-isolation --no-deps -e .
#   2. near-ties:  the near-tie tests of the Triton kernels on CUDA (interpreter off)
#   3. memcheck:   compute-sanitizer --tool memcheck  python -m tools.gpu_driver
#   4. racecheck:  compute-sanitizer --tool racecheck python -m tools.gpu_driver
#   5. tests:      the rest of tests/test_prune_triton.py, test_merge_triton.py, and the
#                  CUDA cases of test_pack.py, on CUDA
#   6. bench:      kvtp bench on CUDA, bfloat16 (prune: ours eager / CUDA graph /
#                  torch.compile, naive, torch, torch.compile, index_select and clone roofs,
#                  given and distinctiveness scores; PruMerge; pack), then the tiny
#                  end-to-end prefill (float32)
#   7. summary:    python -m tools.gpu_summary: each step, every ratio against its target
#
# OUTDIR gets gpu_check.log (everything), steps.tsv, bench.csv, summary.txt.
# --dry-run does what needs no GPU: checks the commands and the Python packages, collects
# the CUDA test selection, runs the driver on CPU (Triton interpreter, C++ pack), runs the
# bench in its CPU mode for one point and writes the summary of that. It does not build
# (.ci/run has built the extension already).
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
[ $# -eq 1 ] || { echo "usage: tools/gpu_check.sh [--dry-run] OUTDIR" >&2; exit 2; }
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)
: > "$out/steps.tsv"
rm -f "$out/bench.csv"
exec > >(tee "$out/gpu_check.log") 2>&1

if [ -n "${PYTHON:-}" ]; then py=$PYTHON
elif [ -x .venv/bin/python ]; then py=.venv/bin/python
else py=python3; fi
start=$(date +%s)
deadline=$(( start + ${KVTP_GPU_CHECK_SECONDS:-470} ))
failed=0

# step NAME CAP_SECONDS COMMAND...: runs COMMAND under `timeout`, records status and duration.
step() {
  local name=$1 cap=$2; shift 2
  local left=$(( deadline - $(date +%s) ))
  (( cap > left )) && cap=$left
  if (( cap < 5 )); then
    printf '%s\tskipped\t0\tno time left before the deadline\n' "$name" >> "$out/steps.tsv"
    echo "[gpu_check] $name: skipped (deadline)"; failed=1; return
  fi
  echo "[gpu_check] === $name (cap ${cap} s): $*"
  local t0=$(date +%s) rc
  timeout --kill-after=10 "$cap" "$@"; rc=$?
  local dt=$(( $(date +%s) - t0 )) status=passed detail=""
  if (( rc == 124 || rc == 137 )); then status=FAILED; detail="timed out after ${cap} s"
  elif (( rc != 0 )); then status=FAILED; detail="exit status $rc"; fi
  [ "$status" = passed ] || failed=1
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$dt" "$detail" >> "$out/steps.tsv"
  echo "[gpu_check] $name: $status in ${dt} s $detail"
}

find_tool() {  # find_tool NAME: $CUDA_HOME/bin, $CUDA_HOME/NAME, PATH
  local home=${CUDA_HOME:-/usr/local/cuda}
  for c in "$home/bin/$1" "$home/$1/$1" "$(command -v "$1" 2>/dev/null)"; do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}

check_environment() {
  local ok=0
  "$py" - <<'PY' || ok=1
import importlib, importlib.util, sys
import torch
print(f"[gpu_check] python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none visible'}")
for name in ("triton", "pytest", "transformers", "numpy", "av", "skvideo", "hypothesis", "matplotlib"):
    spec = importlib.util.find_spec(name)
    version = getattr(importlib.import_module(name), "__version__", "?") if spec else None
    print(f"[gpu_check]   {name}: {version or 'missing'}")
missing = [n for n in ("triton", "pytest") if importlib.util.find_spec(n) is None]
sys.exit(f"[gpu_check] required packages missing: {missing}" if missing else 0)
PY
  for tool in nvcc compute-sanitizer nvidia-smi; do
    if path=$(find_tool $tool); then echo "[gpu_check]   $tool: $path"
    elif (( dry )); then echo "[gpu_check]   $tool: not found here (needed on the GPU machine)"
    else echo "[gpu_check]   $tool: NOT FOUND"; ok=1; fi
  done
  if (( ! dry )); then
    "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')" || ok=1
  fi
  return $ok
}

TESTS="tests/test_prune_triton.py tests/test_merge_triton.py tests/test_pack.py"
SELECT_TIES="tie"
SELECT_REST="not tie and (triton or merge or prune or cuda)"
BENCH_DRY=(-m bench.bench_prune --device cpu --dtype bfloat16 --scores given --headline-only
           --providers naive,torch,ours,roof_index_select
           --reps 3 --warmup 1 --max-seconds 5 --no-progress --csv "$out/bench.csv")

export -f check_environment find_tool
export py dry
echo "[gpu_check] $( (( dry )) && echo 'DRY RUN (no GPU steps)' ) output in $out"
step environment 60 bash -c check_environment
if (( dry )); then
  step build-skipped 5 bash -c "echo 'would run: MAX_JOBS=16 $py -m pip install --no-build-isolation --no-deps -e .'"
  step near-tie-tests-collect 120 env TRITON_INTERPRET=0 "$py" -m pytest -q --collect-only -k "$SELECT_TIES" $TESTS
  step cuda-tests-collect 120 env TRITON_INTERPRET=0 "$py" -m pytest -q --collect-only -k "$SELECT_REST" $TESTS
  step driver-cpu 300 env TRITON_INTERPRET=1 "$py" -m tools.gpu_driver --device cpu
  step bench-cpu-one-point 300 "$py" "${BENCH_DRY[@]}"
else
  # Most decisive first: when time runs short, the last steps are the ones skipped.
  step build 200 env MAX_JOBS=16 "$py" -m pip install --no-build-isolation --no-deps -e . -q
  step near-tie-tests 90 env TRITON_INTERPRET=0 "$py" -m pytest -q -rs -k "$SELECT_TIES" $TESTS
  sanitizer=$(find_tool compute-sanitizer || echo compute-sanitizer)
  # No caching allocator under the sanitizer: every tensor its own allocation, so an access past
  # its end is caught rather than landing in a neighbour inside the same pooled block.
  step memcheck 75 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool memcheck --error-exitcode 1 \
    "$py" -m tools.gpu_driver
  step racecheck 75 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool racecheck --error-exitcode 1 \
    "$py" -m tools.gpu_driver
  step cuda-tests 150 env TRITON_INTERPRET=0 "$py" -m pytest -q -rs -k "$SELECT_REST" $TESTS
  # One bench per process: each appends its rows when it ends, so a later timeout keeps them.
  step bench-prune 150 "$py" -m bench.run --device cuda --bench prune --dtype bfloat16 --no-progress \
    --csv "$out/bench.csv"
  step bench-methods-pack 90 "$py" -m bench.run --device cuda --bench methods,pack --dtype bfloat16 --no-progress \
    --csv "$out/bench.csv"
  step bench-e2e 45 "$py" -m bench.run --device cuda --bench e2e --no-progress --csv "$out/bench.csv"
fi
"$py" -m tools.gpu_summary "$out" || failed=1
echo "[gpu_check] done in $(( $(date +%s) - start )) s"
exit $failed
