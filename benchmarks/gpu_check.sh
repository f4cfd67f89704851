#!/usr/bin/env bash
# The one script to run on a lent GPU machine (no network there):
#   bash benchmarks/gpu_check.sh
# Builds the extension with that machine's torch, runs `pytest -m gpu`, the CUDA Felzenszwalb on
# every carried real CT slice (benchmarks/exact_real_ct.py), the benchmarks (and the
# loss step's per-kernel profile and host time, the launch-shape sweeps of the field and the loss, logs only),
# Nsight Compute on one Felzenszwalb launch and on the Triton kernels of one loss step and one
# elastic pair, and compute-sanitizer (memcheck, racecheck) on the CUDA kernel, and prints a short
# summary last.
# Keep GPU_CHECK_BUDGET about 40 s under the device tool's timeout_s: the logs and the summary are
# packed into $OUT after every step, so a call cut short still brings back what ran.
# Every step has its own time limit inside a global budget (GPU_CHECK_BUDGET seconds, default 560),
# and the script goes on after a failure, so one call gives the whole picture. All the steps do not
# fit in one budget: the later ones are skipped when it runs out. GPU_CHECK_ONLY=<bash regex>
# runs only the steps whose names match, e.g. GPU_CHECK_ONLY='loss|elastic|triton' for the Triton
# kernels' steps (they import the tree from source: no build, about a minute saved) and
# GPU_CHECK_ONLY='build|felzenszwalb|fh_|sanitizer|racecheck' for the CUDA kernel's, which need
# the compiled extension. Logs go to out/gpu_check;
# when $OUT is set (the device tool, which brings back at most 8 files) they are also packed into
# one file, $OUT/gpu_check_logs.tar.gz.
# A baseline in the same run: `make gpu-baseline REV=<commit>` unpacks that commit into the ignored
# folder .baseline/ (carry it with the tree); the script then builds it beside the main build and
# runs its `bench_felzenszwalb.py --phases` after the main one and its loss step's profile (K=256,
# float32), so a kernel change is timed against its baseline on the same machine.
set -u
cd "$(dirname "$0")/.."
LOG_DIR=out/gpu_check
BUDGET=${GPU_CHECK_BUDGET:-560}
rm -rf "$LOG_DIR"
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# Real CT copied beside the tree for this run, when the caller carried it (README, GPU checks).
[ -d .gpu_data ] && export LRC_FAST_SHARED_DATA=$PWD/.gpu_data
PY=${PYTHON:-python3}
# Wheels the machine lacks (SimpleITK, and MONAI for bench_elastic's optional row, on the lent
# H100/H200 image), when the caller carried them.
if ls .whl/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lrc_site .whl/*.whl \
    && export PYTHONPATH=/tmp/lrc_site${PYTHONPATH:+:$PYTHONPATH}
fi
# lrc_fast.data (imported by the Felzenszwalb benchmark and tests) needs SimpleITK
$PY -c "import SimpleITK" 2> /dev/null \
  || echo "WARNING: SimpleITK does not import: carry .whl (make gpu-wheels); the Felzenszwalb steps will fail"
SUMMARY=()

selected() {  # selected NAME: whether GPU_CHECK_ONLY lets step NAME run
  [ -z "${GPU_CHECK_ONLY:-}" ] || [[ $1 =~ $GPU_CHECK_ONLY ]]
}

step() {  # step NAME SECONDS COMMAND...: run with min(SECONDS, what is left of the budget)
  local name=$1 limit=$2; shift 2
  if ! selected "$name"; then
    SUMMARY+=("| $name | not selected (GPU_CHECK_ONLY) | 0 s |")
    return 1
  fi
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 20 ]; then
    SUMMARY+=("| $name | skipped: budget spent | 0 s |")
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local start=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$LOG_DIR/$name.log" 2>&1
  local rc=$?
  tail -n 30 "$LOG_DIR/$name.log"
  SUMMARY+=("| $name | $([ $rc -eq 0 ] && echo ok || echo "FAILED rc=$rc") | $((SECONDS - start)) s |")
  pack_logs
  return $rc
}

pack_logs() {  # the logs so far and the summary into $OUT, after every step: a call cut short keeps them
  printf '%s\n' "${SUMMARY[@]}" > "$LOG_DIR/summary.md"
  if [ -n "${OUT:-}" ]; then tar -czf "$OUT/gpu_check_logs.tar.gz" -C "$LOG_DIR" .; fi
}

FH_SMOKE="not selected"
fh_step() {  # fh_step NAME SECONDS COMMAND...: a step of the CUDA kernel, run only after fh_smoke passed
  if [ "$FH_SMOKE" != ok ]; then
    selected "$1" && SUMMARY+=("| $1 | skipped: fh_smoke $FH_SMOKE | 0 s |")
    return 1
  fi
  step "$@"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  # a copy of a checkout can carry older git metadata than its files: say when they differ
  echo "tracked files differing from that commit: $(git diff --name-only HEAD 2>/dev/null | wc -l)"
} | tee "$LOG_DIR/machine.log"

# built in place, beside (not instead of) the main install, only when a baseline step runs: a
# baseline without its own lrc_fast._C would import the main tree's (the editable install's finder)
if [ -f .baseline/setup.py ] && { selected baseline_felzenszwalb_phases || selected baseline_bench_loss_profile; }; then
  echo "baseline: $(cat .baseline/REV 2>/dev/null || echo unknown)" | tee -a "$LOG_DIR/machine.log"
  (cd .baseline && timeout $((BUDGET < 330 ? BUDGET - 30 : 300)) $PY setup.py -q build_ext --inplace) \
    > "$LOG_DIR/baseline_build.log" 2>&1 &
  BASELINE_BUILD=$!
fi
step build 240 $PY -m pip install --no-build-isolation --no-deps --no-index -e . \
  || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # not built: the Triton paths from source
# how the module was linked (a private static libstdc++ crashed every error message with a number)
step pytest_build 60 $PY -m pytest -q -p no:cacheprovider tests/test_build.py
# A short CUDA Felzenszwalb run first: if the kernel faults or hangs (or fh_smoke is not
# selected), every other step of the CUDA kernel (fh_step) is skipped, with a summary row.
if step fh_smoke 60 $PY benchmarks/sanitize_felzenszwalb.py; then
  FH_SMOKE=ok
elif selected fh_smoke; then
  FH_SMOKE=failed
fi
fh_step pytest_gpu_felzenszwalb 150 $PY -m pytest -m gpu -q -x -p no:cacheprovider tests/test_felzenszwalb.py
# the kernel's labels on every slice of the carried real CT (`make gpu-data`), default engine and slot engine
if [ -n "${LRC_FAST_SHARED_DATA:-}" ]; then
  fh_step fh_exact_real_ct 90 $PY benchmarks/exact_real_ct.py --backends cuda,cuda-slots --require-data
elif selected fh_exact_real_ct; then
  SUMMARY+=("| fh_exact_real_ct | skipped: no .gpu_data carried (make gpu-data) | 0 s |")
fi
fh_step bench_felzenszwalb 180 $PY benchmarks/bench_felzenszwalb.py
fh_step bench_felzenszwalb_phases 60 $PY benchmarks/bench_felzenszwalb.py --phases
baseline_built() {  # whether the baseline's extension was built (waits for its build, once)
  if [ -z "${BASELINE_OK:-}" ]; then
    BASELINE_OK=no
    if [ -n "${BASELINE_BUILD:-}" ]; then
      if wait "$BASELINE_BUILD"; then
        BASELINE_OK=yes
      else
        SUMMARY+=("| baseline build | FAILED (baseline_build.log) | |")
      fi
    fi
  fi
  [ "$BASELINE_OK" = yes ]
}
if baseline_built; then
  fh_step baseline_felzenszwalb_phases 45 env PYTHONPATH="$PWD/.baseline${PYTHONPATH:+:$PYTHONPATH}" \
    $PY .baseline/benchmarks/bench_felzenszwalb.py --phases
fi
step pytest_gpu_loss_elastic 180 $PY -m pytest -m gpu -q -p no:cacheprovider tests/test_region_index.py \
  tests/test_loss.py tests/test_elastic.py
# the CUDA region index kernel under compute-sanitizer: out-of-bounds accesses, shared-memory races
step sanitize_region_index 60 compute-sanitizer --tool memcheck --error-exitcode 1 $PY benchmarks/sanitize_region_index.py
step racecheck_region_index 60 compute-sanitizer --tool racecheck --error-exitcode 1 \
  $PY benchmarks/sanitize_region_index.py --quick
step bench_loss 150 $PY benchmarks/bench_loss.py
step bench_elastic 120 $PY benchmarks/bench_elastic.py
# the host's time per elastic pair in a fresh process, and where it goes (cProfile)
step bench_elastic_host 45 $PY benchmarks/bench_elastic.py --host
fh_step sanitizer 90 compute-sanitizer --tool memcheck --error-exitcode 1 $PY benchmarks/sanitize_felzenszwalb.py
# where the fused loss step spends its time (per kernel), and the launch shapes of the field and
# of the loss's index, backward (dense shapes and the scatter) and InfoNCE (logs only)
step bench_loss_profile 75 $PY benchmarks/bench_loss.py --profile
# the host's time to issue a fused step beside the step's time in a row, and where it goes (cProfile)
step bench_loss_host 45 $PY benchmarks/bench_loss.py --host
# the baseline's loss step, K=256 float32, same machine (its own extension: the CUDA tile sort)
[ -f .baseline/benchmarks/bench_loss.py ] && baseline_built && step baseline_bench_loss_profile 30 \
  env PYTHONPATH="$PWD/.baseline${PYTHONPATH:+:$PYTHONPATH}" $PY .baseline/benchmarks/bench_loss.py --profile --quick
step bench_elastic_sweep 60 $PY benchmarks/bench_elastic.py --sweep
# each cell a capture and CUDA graph replays: first the tables of the changes not yet timed (the
# InfoNCE's shapes, the sampler's search widths, the zero fills on a second stream), then in a step
# of their own the index's and the dense backward's shapes, so neither step's limit cuts the other
step bench_loss_sweep 150 $PY benchmarks/bench_loss.py --sweep infonce,search,overlap
step bench_loss_sweep_shapes 75 $PY benchmarks/bench_loss.py --sweep backward,index
# where the Felzenszwalb kernel's warps wait, per SASS line (Nsight Compute, one B=16 launch); the
# report goes to $OUT on its own (it could make the log archive too big to come back)
REPORT_DIR=${OUT:-$LOG_DIR}
if fh_step ncu_felzenszwalb 120 ncu --set full --clock-control none --import-source yes -k fh_kernel --launch-skip 1 \
    --launch-count 1 -f -o "$REPORT_DIR/fh_kernel" $PY benchmarks/bench_felzenszwalb.py --once; then
  step ncu_felzenszwalb_details 30 ncu --import "$REPORT_DIR/fh_kernel.ncu-rep" --page details
  step ncu_felzenszwalb_source 30 ncu --import "$REPORT_DIR/fh_kernel.ncu-rep" --page source --csv --print-source sass
fi
# where the loss's and the elastic pair's kernels spend their time (Nsight Compute, the summary
# sections of each kernel, each launched once: loss steps at K=1024 (NCHW) and K=64 (channels_last)
# and one elastic pair, dense and coarse); text in the logs
step ncu_triton 90 ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section WarpStateStats --section MemoryWorkloadAnalysis \
  -k regex:"region_index_kernel|_tile_sort_kernel|_tile_prefix_kernel|_pool_fwd_kernel|_pool_bwd_kernel|_pool_scatter_kernel|_infonce_fwd_kernel|_infonce_bwd_kernel|_smooth_rows_kernel|_smooth_cols_kernel|_elastic_warp_fwd_kernel|_coarse_rows_kernel|_elastic_warp_coarse_kernel" \
  $PY benchmarks/ncu_triton_step.py
# shared-memory races (the hub extension's sort), last: it is the slowest tool
fh_step racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 1 $PY benchmarks/sanitize_felzenszwalb.py --quick

for log in pytest_build pytest_gpu_felzenszwalb pytest_gpu_loss_elastic; do
  [ -f "$LOG_DIR/$log.log" ] && { echo; echo "### $log"; grep -E "passed|failed|error" "$LOG_DIR/$log.log" | tail -n 2; }
done
for b in bench_felzenszwalb:60 bench_felzenszwalb_phases:10 baseline_felzenszwalb_phases:10 bench_loss:55 \
         bench_elastic:45; do  # log:lines of its table
  [ -f "$LOG_DIR/${b%:*}.log" ] && { echo; echo "### ${b%:*}"; tail -n "${b#*:}" "$LOG_DIR/${b%:*}.log"; }
done
echo
echo "| step | result | time |"
echo "|---|---|---|"
printf '%s\n' "${SUMMARY[@]}"
pack_logs
