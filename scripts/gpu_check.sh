#!/usr/bin/env bash
# One call on a GPU machine that already has torch and no network (the lent
# H100/H200): build in place, run the test suite (CUDA cases included), run
# the benchmarks, and write the results where they can be committed.
#
#   bash scripts/gpu_check.sh                 # results into bench/results/
#   OUT=/some/dir bash scripts/gpu_check.sh   # results into $OUT
#   SKIP_TESTS=1 / SKIP_BENCH=1 / BENCHES="conv2d pool2d" / PYTEST_ARGS="-k conv2d"
#   PYTEST_ARGS unset: the tests on one process per core where pytest-xdist is installed
#                (the H200 machine has it: 121 s on 16 processes), else on one
#   BENCH_TIMEOUT=120     a limit for each benchmark run (conv2d runs one pass at a time)
#   SANITIZE=1   also run a small CUDA subset under compute-sanitizer (memcheck,
#                racecheck, initcheck, synccheck) with the caching allocator off
#   CONVX_BENCH_SET=all CONVX_BENCH_CUDA_N=32,256 CONVX_BENCH_CUDA_DTYPES=fp32,tf32,fp16,bf16 ...
#                (longer sweeps; each bench's report.py call writes the JSON, the
#                Markdown table and a PNG of convx vs cuDNN per layer)
#
# Environment: TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default nproc).
# Measured on an H200 machine (2026-12-04): build 220 s, tests 120 s with -n 16,
# the conv2d forward pass (fp16, N=256, 30 layers x 2 layouts) 45 s. A lease of
# 15 minutes does not hold all of it: choose with BENCHES / CONVX_BENCH_CUDA_DTYPES.
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

build() {
  t0=$(date +%s)
  $PY setup.py -q build_ext --inplace 2>&1 | grep -v -i "warning" | tail -20
  echo "build: $(( $(date +%s) - t0 )) s (CC=${CC:-} CXX=${CXX:-}: $(${CXX:-c++} --version 2>&1 | head -1))"
}
# An error raised by an op must reach Python as an exception. On the first H200
# run (2026-12-04; torch 2.11, Python 3.12, the image's CC/CXX=/opt/gcc) every
# raising op killed the process with a segmentation fault instead (70 tests); the
# same sources built with the system GCC under torch 2.11 raise correctly.
raises() {
  $PY - <<'PYEOF'
import torch, convx
try:
    convx.functional.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 2, 3, 3))
except RuntimeError:
    print("errors raise: ok")
PYEOF
}
echo "== build"
build
if ! raises | grep -q "errors raise: ok"; then
  echo "an op's error crashed the process; rebuilding with the system compiler (/usr/bin/gcc, /usr/bin/g++)"
  if [ -x /usr/bin/g++ ]; then
    export CC=/usr/bin/gcc CXX=/usr/bin/g++
    rm -rf build
    build
    raises || rc=1
  else
    rc=1
  fi
fi
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
  if [ -z "${PYTEST_ARGS+x}" ] && $PY -c "import xdist" 2>/dev/null; then PYTEST_ARGS="-n $(nproc)"; fi
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
  # The ceilings once, so that a report can also be made off the device (bench/report.py --ceilings).
  $PY bench/report.py "$OUT/ceilings.json" --ceilings-only
  # pytest-benchmark writes its JSON only at the end, so conv2d runs one pass at a
  # time: a run stopped at its limit (BENCH_TIMEOUT seconds each) loses one pass.
  for what in ${BENCHES:-conv2d batch_norm pool2d conv_transpose2d models}; do
    parts="$what"
    [ "$what" = conv2d ] && parts="conv2d:fwd conv2d:dgrad conv2d:wgrad conv2d:fwdbwd conv2d:fused"
    for part in $parts; do
      name=${part/:/-}
      sel=()
      case "$part" in
        conv2d:fused) sel=(-k fused) ;;
        conv2d:*) sel=(-k "not fused and ${part#*:}-") ;;  # the ids read ...-fp16-fwd-nhwc-convx
      esac
      echo "== bench $name"
      timeout "${BENCH_TIMEOUT:-3600}" $PY -m pytest "bench/bench_$what.py" -q -o python_files='bench_*.py' \
          -p no:cacheprovider "${sel[@]}" --benchmark-json="$OUT/raw-$name.json" --benchmark-columns=min,median \
          ${BENCH_ARGS:-} > "$OUT/bench-$name.log" 2>&1
      rc=$(( rc | $? ))
      tail -2 "$OUT/bench-$name.log"
      $PY bench/report.py "$OUT/raw-$name.json" --outdir "$OUT" --what "$name" --ceilings "$OUT/ceilings.json" \
          --device-name "$($PY -c 'import torch; print(torch.cuda.get_device_name(0))')" \
          --torch "$($PY -c 'import torch; print(torch.__version__)')" --cuda "$($PY -c 'import torch; print(torch.version.cuda)')" \
          --command "bash scripts/gpu_check.sh (CONVX_BENCH_SET=${CONVX_BENCH_SET:-quick}, N=$CONVX_BENCH_CUDA_N)" \
          | sed -n '/Geometric/,$p'
    done
  done
fi
echo "exit status $rc"
exit $rc
