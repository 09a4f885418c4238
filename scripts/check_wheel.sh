#!/usr/bin/env bash
# Build convx's wheel and sdist as a user would (`python -m build
# --no-isolation`, against the torch installed here), install the wheel into
# a fresh virtual environment (which fetches torch by the wheel's own
# requirement), and run a smoke check from outside the source tree.
#
#   bash scripts/check_wheel.sh            (make wheel-check)
#
# CPU-only and without the emulated backend by default, to keep CI short;
# CONVX_CUDA / CONVX_SIMT / TORCH_CUDA_ARCH_LIST pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=build/wheel-check
rm -rf "$OUT" && mkdir -p "$OUT"
export CONVX_CUDA=${CONVX_CUDA:-0} CONVX_SIMT=${CONVX_SIMT:-0}

t0=$(date +%s)
# No --sdist/--wheel: the wheel is built from the sdist, which checks the sdist too.
"$PY" -m build --no-isolation --outdir "$OUT/dist" . > "$OUT/build.log" 2>&1 || {
  tail -40 "$OUT/build.log"; exit 1; }
echo "wheel + sdist built in $(( $(date +%s) - t0 )) s: $(cd "$OUT/dist" && ls)"

# The sdist must hold everything a build needs.
sdist=$(ls "$OUT"/dist/convx-*.tar.gz)
tar -tzf "$sdist" > "$OUT/sdist.txt"
for f in setup.py pyproject.toml csrc/ops.cpp csrc/common/schemas.h csrc/common/device.cuh csrc/cuda/conv2d.cu \
         csrc/cpu/gemm.h csrc/simt/simt.h csrc/simt/runtime.h convx/_archs.py convx/convx_version.py; do
  grep -q "^convx-[^/]*/$f\$" "$OUT/sdist.txt" || { echo "sdist lacks $f"; exit 1; }
done
if grep -q "_build_config.py\|\.so$" "$OUT/sdist.txt"; then echo "sdist carries build outputs"; exit 1; fi

t0=$(date +%s)
python3 -m venv "$OUT/venv"
"$OUT/venv/bin/python" -m pip install -q "$OUT"/dist/convx-*.whl > "$OUT/install.log" 2>&1 || {
  tail -20 "$OUT/install.log"; exit 1; }
echo "installed into a fresh venv in $(( $(date +%s) - t0 )) s"

cd "$OUT"  # not the source tree: the installed package must be the one imported
./venv/bin/python - <<'PY'
import importlib.metadata as md
import torch, torch.nn.functional as F
import convx
assert "site-packages" in convx.__file__, convx.__file__
req = [r for r in md.requires("convx") if "extra ==" not in r and r.startswith("torch")]
assert req == [f"torch=={torch.__version__.split('+')[0]}"], req
x, w = torch.randn(2, 3, 9, 8), torch.randn(4, 3, 3, 3)
torch.testing.assert_close(convx.functional.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1))
m = convx.Conv2d(3, 4, 3, padding=1)
m(x).sum().backward()
print("smoke check passed:", convx.__version__, "from", convx.__file__, "with", req[0])
PY
