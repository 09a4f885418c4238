#!/usr/bin/env bash
# One call on a GPU machine that already has torch and no network (the lent
# H100/H200): build in place, run the test suite (CUDA cases included), run
# the benchmarks, and write the results where they can be committed.
#
#   bash scripts/gpu_check.sh                 # results into bench/results/
#   OUT=/some/dir bash scripts/gpu_check.sh   # results into $OUT
#   SKIP_TESTS=1 / SKIP_BENCH=1 / BENCHES="conv2d pool2d" / PYTEST_ARGS="-k conv2d"
#   CONVX_BENCH_SET=all CONVX_BENCH_CUDA_N=32,256 ...   (longer sweeps)
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
export CONVX_BENCH_DEVICES=${CONVX_BENCH_DEVICES:-cuda}
export CONVX_BENCH_CUDA_N=${CONVX_BENCH_CUDA_N:-256}
rc=0

echo "== build"
t0=$(date +%s)
$PY setup.py -q build_ext --inplace 2>&1 | grep -v -i "warning" | tail -20
echo "build: $(( $(date +%s) - t0 )) s"
$PY -m convx info | tee "$OUT/info.txt"

if [ -z "${SKIP_TESTS:-}" ]; then
  echo "== tests"
  $PY -m pytest tests -q -x --no-header -p no:cacheprovider ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/tests.log" | tail -25
  rc=$(( rc | ${PIPESTATUS[0]} ))
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
