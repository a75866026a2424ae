#!/usr/bin/env bash
# The one prepared script for the GPU machine (DESIGN.md section 6). Run from the repo root:
#   OUT=/some/dir bash scripts/gpu_check.sh [family]
# Stages, each with its own timeout, each writing to $OUT as soon as it ends:
#   1 build (MAX_JOBS=16, TORCH_CUDA_ARCH_LIST=9.0)
#   2 the changed family's CUDA tests (tests/test_<family>.py -k cuda), default conv2d
#   3 every other CUDA test, with the opt-in fast paths forced on (CNNOPS_EXPERIMENTAL=1)
#   4 compute-sanitizer memcheck + racecheck over scripts/cuda_smoke.py, cnnops_ kernels only
#   5 the benchmark, JSON to $OUT/bench_cuda.json
# Later op families only add tests, smoke cases and bench cases; this script stays.
# Depthwise (`bash scripts/gpu_check.sh depthwise_conv2d`): stage 2 runs its tests, each forced
# kernel path included (test_depthwise_cuda_path_matches_torch: simple, direct, tiled), and
# stage 5 the depthwise benches: fp32 NCHW and fp16 channels_last, on the default kernels
# (direct for 3x3, tiled for the rest) and on the tiled ones alone (the default before
# 2026-11-29; DW_PATHS="auto tiled direct" adds the direct ones at every size they take), after
# a breakdown of each case's forward+backward into its ops (scripts/depthwise_breakdown.py,
# $OUT/dw_breakdown.json). The opt-in weight-copy kernel of the channels_last forward runs in
# stage 2 (test_depthwise_cuda_weight_by_tap_kernel) and in the smoke run's tiled pass.
# Tensor-core conv2d (opt-in kernels, csrc/cuda/conv2d_mma*.cu): `bash scripts/gpu_check.sh conv2d_mma`
# runs tests/test_conv2d_mma.py in stage 2, the foundation's conv2d CUDA tests with the switch
# on in stage 3, and in stage 5 the channels_last bench cases (fp16, bf16 on the tensor-core
# path, fp16 on the default path, TF32 dilated) instead of the full bench. Each of those four
# bench stages has its own T_BENCH limit: lower the T_* limits to fit one 10-minute command.
# Separable pairs (`bash scripts/gpu_check.sh separable_conv2d`): stage 2 runs their tests (the
# opt-in fused kernel's included), stage 5 benches them with the fused kernel (CNNOPS_EXPERIMENTAL=1)
# and with the default two kernels; DW_BENCH=1 runs the two depthwise benches before them.
set -u
OUT=${OUT:-$PWD/gpu_out}
FAMILY=${1:-conv2d}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1 CI=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # scripts/*.py import cnnops
# SKIP_BENCH=1 leaves out the benchmark, SKIP_SANITIZER=1 stage 4; ALL_EXPERIMENTAL=0 runs stage 3 on the default paths;
# CUDA_TESTS="tests/test_a.py tests/test_b.py ..." sets which files stage 3 runs, in that order;
# BENCH_OPS=depthwise_conv2d,batch_norm limits the benchmark to those families.
T_BUILD=${T_BUILD:-300} T_FAMILY=${T_FAMILY:-180} T_ALL=${T_ALL:-180} T_SAN=${T_SAN:-150} T_BENCH=${T_BENCH:-200}

note() { echo "$*" | tee -a "$SUMMARY"; }
stage() {  # stage NAME TIMEOUT LOG CMD...
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  note "stage $name: rc=$rc ($((SECONDS - t0)) s, limit $limit s) log=$(basename "$log")"
  tail -n 5 "$log" | sed 's/^/    /' >> "$SUMMARY"
  return $rc
}

{
  echo "date: $(date -u +%FT%TZ)"; echo "commit: $(git rev-parse HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader 2>&1
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1
  nvcc --version 2>&1 | tail -n 1
  command -v compute-sanitizer || echo "compute-sanitizer: not found"
} > "$OUT/env.txt"
cat "$OUT/env.txt" >> "$SUMMARY"

rm -f cnnops/_C*.so cnnops/_build_info.py
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} CNNOPS_WITH_CUDA=1
if ! stage build "$T_BUILD" "$OUT/build.log" python3 setup.py build_ext --inplace; then
  note "build failed: stopping"; exit 1
fi

# -v: one line per test as it ends, so a stage cut by its timeout still shows what passed
# and failed; --tb=short -rf: the reasons at the end.
PYTEST="python3 -m pytest -v --tb=short -rf --timeout=120 -p no:cacheprovider"
# The *_emulated.py files run CUDA kernels on the CPU (tests/cuda_emulator.py): CI runs them,
# and -k cuda would only pick them up for their file names.
PYTEST="$PYTEST --ignore-glob=tests/*_emulated.py"
stage "tests-$FAMILY" "$T_FAMILY" "$OUT/pytest_family.log" $PYTEST -k cuda "tests/test_$FAMILY.py"
# EXPERIMENTAL=1 (default): the opt-in fast paths forced on; 0: the default paths users get.
CNNOPS_EXPERIMENTAL=${ALL_EXPERIMENTAL:-1} stage tests-all-cuda "$T_ALL" "$OUT/pytest_cuda.log" \
  $PYTEST -k cuda ${CUDA_TESTS:-tests} --ignore "tests/test_$FAMILY.py"

if [ "${SKIP_SANITIZER:-0}" = 1 ]; then
  note "stage sanitizer: skipped (SKIP_SANITIZER=1)"
elif command -v compute-sanitizer > /dev/null; then
  {
    for tool in memcheck racecheck; do
      echo "=== $tool"
      # --kernel-name (the old --filter, which compute-sanitizer 2025 rejects) limits the
      # instrumentation to our kernels; rc 9 means it found errors.
      compute-sanitizer --tool $tool --kernel-name kns=cnnops_ --error-exitcode 9 python3 scripts/cuda_smoke.py \
        || echo "$tool: rc=$? (9 = errors found)"
    done
  } > "$OUT/sanitizer.log" 2>&1 &
  SAN_PID=$!
  ( sleep "$T_SAN"; kill -TERM -- $SAN_PID 2>/dev/null; pkill -f compute-sanitizer ) & WATCH=$!
  wait $SAN_PID; rc=$?; kill $WATCH 2>/dev/null
  note "stage sanitizer: rc=$rc (limit $T_SAN s) log=sanitizer.log"
  grep -E "ERROR SUMMARY|ERRORS FOUND|smoke:|RACECHECK SUMMARY" "$OUT/sanitizer.log" | sed 's/^/    /' >> "$SUMMARY"
else
  note "stage sanitizer: skipped, compute-sanitizer not available on this machine"
  stage smoke 60 "$OUT/sanitizer.log" python3 scripts/cuda_smoke.py
fi

bench_depthwise() {
  # First where the time goes (scripts/depthwise_breakdown.py: each gradient op alone and
  # torch's pieces, device and host time; DW_BREAKDOWN=0 skips it, T_BREAKDOWN limits it).
  if [ "${DW_BREAKDOWN:-1}" = 1 ]; then
    stage dw-breakdown "${T_BREAKDOWN:-60}" "$OUT/dw_breakdown.log" python3 scripts/depthwise_breakdown.py \
      --paths "$(echo ${DW_PATHS:-auto tiled} | tr ' ' ,)" --json "$OUT/dw_breakdown.json"
  fi
  # The issue's GPU targets, fp32 NCHW and fp16 channels_last (DW_DTYPES="fp32" for the first
  # alone), against torch in the same run, for each CNNOPS_DEPTHWISE_CUDA_PATH in DW_PATHS:
  # auto (default: depthwise_conv2d_direct.cu's kernels for 3x3, the tiled ones of
  # depthwise_conv2d_fast.cu for the rest), direct (the direct kernels, and 16-byte channel
  # vectors in the channels_last forward, at every size), tiled (the tiled kernels alone);
  # DW_SIMPLE=1 adds simple; DW_BENCH_ARGS adds bench options (e.g. "--rounds 3" to fit a lease).
  for path in ${DW_PATHS:-auto tiled} $([ "${DW_SIMPLE:-0}" = 1 ] && echo simple); do
    for dt in ${DW_DTYPES:-fp32 fp16}; do
      if [ $dt = fp32 ]; then args=""; else args="--dtype float16 --channels-last --no-roofline"; fi
      CNNOPS_DEPTHWISE_CUDA_PATH=$path stage "bench-dw-$dt-$path" "$T_BENCH" "$OUT/bench_dw_${dt}_$path.log" \
        python3 -m cnnops.bench --device cuda --ops depthwise_conv2d $args ${DW_BENCH_ARGS:-} --json "$OUT/bench_cuda_dw_${dt}_$path.json"
    done
  done
}
bench_separable() {
  # The fused kernel (separable_conv2d_fused.cu, opt-in) and the default two kernels, each
  # against torch's two convs in the same run.
  for exp in 1 0; do
    CNNOPS_EXPERIMENTAL=$exp stage "bench-sep-exp$exp" "$T_BENCH" "$OUT/bench_sep_exp$exp.log" \
      python3 -m cnnops.bench --device cuda --ops separable_conv2d --no-roofline --json "$OUT/bench_cuda_sep_exp$exp.json"
  done
}
if [ "${SKIP_BENCH:-0}" = 1 ]; then
  note "stage bench: skipped (SKIP_BENCH=1)"
elif [ "$FAMILY" = conv2d_mma ]; then
  for dt in float16 bfloat16; do
    CNNOPS_EXPERIMENTAL=1 stage "bench-mma-$dt" "$T_BENCH" "$OUT/bench_mma_$dt.log" python3 -m cnnops.bench \
      --device cuda --ops conv2d --dtype $dt --filter nhwc --json "$OUT/bench_cuda_mma_$dt.json"
  done
  stage bench-default-float16 "$T_BENCH" "$OUT/bench_default_float16.log" python3 -m cnnops.bench \
    --device cuda --ops conv2d --dtype float16 --filter nhwc --no-roofline --json "$OUT/bench_cuda_default_float16.json"
  CNNOPS_EXPERIMENTAL=1 stage bench-mma-tf32 "$T_BENCH" "$OUT/bench_mma_tf32.log" python3 -m cnnops.bench \
    --device cuda --ops conv2d --dtype float32 --tf32 on --filter "nhwc deeplab" --no-roofline --json "$OUT/bench_cuda_mma_tf32.json"
elif [ "$FAMILY" = depthwise_conv2d ]; then
  bench_depthwise
elif [ "$FAMILY" = separable_conv2d ]; then
  # DW_BENCH=1: the depthwise benches first (separable pairs build on those kernels).
  [ "${DW_BENCH:-0}" = 1 ] && bench_depthwise
  bench_separable
else
  stage bench "$T_BENCH" "$OUT/bench.log" python3 -m cnnops.bench --device cuda --ops "${BENCH_OPS:-all}" \
    --json "$OUT/bench_cuda.json"
fi
note "done"
