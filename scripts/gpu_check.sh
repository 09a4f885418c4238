#!/usr/bin/env bash
# One call on a GPU machine that already has torch and no network (the lent
# H100/H200): build in place, run the test suite (CUDA cases included), run
# the benchmarks, and write the results where they can be committed.
#
#   bash scripts/gpu_check.sh                 # results into bench/results/
#   OUT=/some/dir bash scripts/gpu_check.sh   # results into $OUT
#   SKIP_TESTS=1 / SKIP_BENCH=1 / BENCHES="conv2d pool2d" / PYTEST_ARGS="-k conv2d"
#   SANITIZE=1   also run a small CUDA subset under compute-sanitizer (memcheck,
#                racecheck, initcheck, synccheck) with the caching allocator off
#   CONVX_BENCH_SET=all CONVX_BENCH_CUDA_N=32,256 CONVX_BENCH_CUDA_DTYPES=fp32,tf32,fp16,bf16 ...
#                (longer sweeps; each bench's report.py call writes the JSON, the
#                Markdown table and a PNG of convx vs cuDNN per layer)
#
# Environment: TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default nproc).
# Sized for one 10-minute call: the defaults time one batch (N=256) per layer.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export CONVX_CUDA=1
# The emulated CUDA backend checks the same kernels on CPU-only machines; here
# the real device runs them, so it is neither built nor tested.
export CONVX_SIMT=${CONVX_SIMT:-0}
export CONVX_BENCH_DEVICES=${CONVX_BENCH_DEVICES:-cuda}
export CONVX_BENCH_CUDA_N=${CONVX_BENCH_CUDA_N:-256}
# The tensor-core dtypes (the issue's goals); add fp32 for the exact CUDA-core path.
export CONVX_BENCH_CUDA_DTYPES=${CONVX_BENCH_CUDA_DTYPES:-fp16,bf16,tf32}
rc=0

echo "== build"
t0=$(date +%s)
$PY setup.py -q build_ext --inplace 2>&1 | grep -v -i "warning" | tail -20
echo "build: $(( $(date +%s) - t0 )) s"
$PY -m convx info | tee "$OUT/info.txt"

echo "== tensor-core probe"
# What this GPU's mma / ldmatrix / cp.async put in each lane, checked against
# CuTe's layouts; the JSON is what the emulator's tests replay (commit it).
$PY scripts/probe_tensor_cores.py --out tests/data/tensor_core_probe.json 2>&1 | tail -3
rc=$(( rc | ${PIPESTATUS[0]} ))
cp tests/data/tensor_core_probe.json "$OUT/" 2>/dev/null

if [ -z "${SKIP_TESTS:-}" ]; then
  echo "== tests"
  # No -x: the first GPU run must report every failure, not stop at the first.
  $PY -m pytest tests -q --no-header -p no:cacheprovider ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/tests.log" | tail -60
  rc=$(( rc | ${PIPESTATUS[0]} ))
fi

if [ -n "${SANITIZE:-}" ]; then
  echo "== compute-sanitizer"
  SUBSET='cuda and (basic_3x3 or depthwise_mult2 or anisotropic or stride2_outpad1 or 3x3_s2_p1 or bn_add_relu) and not benchmark'
  for tool in memcheck racecheck initcheck synccheck; do
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 99 \
      $PY -m pytest tests -q -p no:cacheprovider -k "$SUBSET and (cuda-f32 or cuda-bf16) and contiguous" \
      > "$OUT/sanitizer-$tool.log" 2>&1
    st=$?
    echo "$tool: exit $st ($(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitizer-$tool.log") clean summaries)"
    rc=$(( rc | st ))
  done
fi

if [ -z "${SKIP_BENCH:-}" ]; then
  for what in ${BENCHES:-conv2d batch_norm pool2d conv_transpose2d models}; do
    echo "== bench $what"
    $PY -m pytest "bench/bench_$what.py" -q -o python_files='bench_*.py' -p no:cacheprovider \
        --benchmark-json="$OUT/raw-$what.json" --benchmark-columns=min,median ${BENCH_ARGS:-} > "$OUT/bench-$what.log" 2>&1
    rc=$(( rc | $? ))
    tail -2 "$OUT/bench-$what.log"
    $PY bench/report.py "$OUT/raw-$what.json" --outdir "$OUT" --what "$what" \
        --command "bash scripts/gpu_check.sh (CONVX_BENCH_SET=${CONVX_BENCH_SET:-quick}, N=$CONVX_BENCH_CUDA_N)" \
        | sed -n '/Geometric/,$p'
  done
fi
echo "exit status $rc"
exit $rc
