#!/usr/bin/env bash
# The one script to run on a lent GPU machine (no network there):
#   bash benchmarks/gpu_check.sh
# Builds the extension with that machine's torch, runs `pytest -m gpu`, compute-sanitizer on
# the CUDA kernel and the benchmarks, and prints a short summary last. Every step has its own
# time limit and the script goes on after a failure, so one call always gives the whole picture.
# Logs go to $OUT (the device tool brings them back) or out/gpu_check.
set -u
cd "$(dirname "$0")/.."
LOG_DIR=${OUT:-out/gpu_check}
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# Real CT copied beside the tree for this run, when the caller carried it (see README).
[ -d .gpu_data ] && export LRC_FAST_SHARED_DATA=$PWD/.gpu_data
PY=${PYTHON:-python3}
declare -a SUMMARY

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$LOG_DIR/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$LOG_DIR/$name.log"
  SUMMARY+=("| $name | $([ $rc -eq 0 ] && echo ok || echo "FAILED rc=$rc") | $((SECONDS - start)) s |")
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader
$PY -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
git rev-parse --short HEAD 2>/dev/null || true

step build 300 $PY -m pip install --no-build-isolation --no-deps --no-index -e .
step pytest_gpu 300 $PY -m pytest -m gpu -q -p no:cacheprovider tests
step sanitizer 180 compute-sanitizer --tool memcheck --error-exitcode 1 $PY benchmarks/sanitize_felzenszwalb.py
step bench_felzenszwalb 180 $PY benchmarks/bench_felzenszwalb.py
step bench_loss 150 $PY benchmarks/bench_loss.py
step bench_elastic 150 $PY benchmarks/bench_elastic.py

echo
echo "### pytest -m gpu"
grep -E "passed|failed|error" "$LOG_DIR/pytest_gpu.log" | tail -n 3
for b in bench_felzenszwalb bench_loss bench_elastic; do
  echo
  echo "### $b"
  awk '/^###/{keep=1} keep' "$LOG_DIR/$b.log" | tail -n 30
done
echo
echo "| step | result | time |"
echo "|---|---|---|"
printf '%s\n' "${SUMMARY[@]}"
