#!/usr/bin/env bash
# One call on a GPU machine that already has torch and no network (the lent
# H100/H200): build in place, run the test suite (CUDA cases included), run
# the benchmarks, and write the results where they can be committed.
#
#   bash scripts/gpu_check.sh                 # results into bench/results/
#   OUT=/some/dir bash scripts/gpu_check.sh   # results into $OUT
#   CONVX_BENCH_SET=all ... / PYTEST_ARGS="-k conv2d" ...
#
# Environment: TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default nproc).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export CONVX_CUDA=1

echo "== build"
t0=$(date +%s)
$PY setup.py -q build_ext --inplace 2>&1 | grep -vi "warning" | tail -20
echo "build: $(( $(date +%s) - t0 )) s"
$PY -m convx info | tee "$OUT/info.txt"

echo "== tests"
$PY -m pytest tests -q -x --no-header -p no:cacheprovider ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/tests.log" | tail -25
test_rc=${PIPESTATUS[0]}

echo "== benchmarks"
$PY -m pytest bench -q -o python_files='bench_*.py' -p no:cacheprovider --benchmark-json="$OUT/bench-raw.json" \
    --benchmark-columns=min,median ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
bench_rc=$?
tail -3 "$OUT/bench.log"
$PY bench/report.py "$OUT/bench-raw.json" --outdir "$OUT" --what conv2d \
    --command "bash scripts/gpu_check.sh (CONVX_BENCH_SET=${CONVX_BENCH_SET:-quick})" | tail -20
echo "tests rc=$test_rc bench rc=$bench_rc"
exit $(( test_rc | bench_rc ))
