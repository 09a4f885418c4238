"""What nvcc made of the tensor-core kernels: the instructions and the resources.

Reads the built extension (convx/_C*.so) with cuobjdump (the CUDA toolkit's, or
the copy triton ships with torch): every tensor-core convolution kernel must
contain the tensor-core instructions of its element type (HMMA, LDSM, and for the
cp.async pipeline LDGSTS), use no local memory (ptxas spilled nothing) and no
more registers than csrc/cuda/conv2d_tc.cu's header states. The dynamic shared
memory it states is checked against the emulator's launch log.
"""
import glob
import os
import pathlib
import re
import shutil
import subprocess

import pytest
import torch

import convx
from conftest import SIMT, SIMT_MARKS

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "cuda" / "conv2d_tc.cu"


def _limits():
    """{kernel: (max registers, dynamic shared bytes)} from conv2d_tc.cu's header comment."""
    out = {}
    for m in re.finditer(r"//\s+(tc_\w+):\s+<= (\d+) registers, 0 bytes local \(no spills\), (\d+) bytes dynamic shared",
                         SOURCE.read_text()):
        out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out


def _cuobjdump():
    cands = [shutil.which("cuobjdump"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")]
    try:
        import triton
        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in cands if c and os.path.exists(c)), None)


def _library():
    from convx import _build_config
    if not _build_config.with_cuda:
        return None
    import convx._C as C
    return C.__file__


LIB = _library()
TOOL = _cuobjdump()
needs_build = pytest.mark.skipif(LIB is None, reason="built without CUDA (CONVX_CUDA=0): no device code to read")
needs_tool = pytest.mark.skipif(TOOL is None, reason="no cuobjdump (CUDA toolkit or triton) on this machine")


def _functions(flag):
    """{mangled name: text} of each function's section in `cuobjdump flag` output."""
    text = subprocess.run([TOOL, flag, LIB], capture_output=True, text=True, check=True).stdout
    out, name = {}, None
    for line in text.splitlines():
        if "Function" in line and (m := re.search(r"Function\s*:?\s*(\S+?):?$", line)):
            name = m.group(1)
            out.setdefault(name, [])
        elif name:
            out[name].append(line)
    return {n: "\n".join(lines) for n, lines in out.items()}


def _tc(functions):
    return {n: t for n, t in functions.items() if "tc_fast_kernel" in n or "tc_gather_kernel" in n}


def test_header_states_every_kernel():
    assert set(_limits()) == {"tc_fast_kernel", "tc_gather_kernel"}


@needs_build
@needs_tool
def test_resources_within_header():
    limits = _limits()
    funcs = _tc(_functions("-res-usage"))
    assert len(funcs) >= 12, sorted(funcs)  # fast x 3 types, gather x 3 problems x 3 types
    for name, text in funcs.items():
        kind = "tc_fast_kernel" if "tc_fast_kernel" in name else "tc_gather_kernel"
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", text)
        assert m, (name, text)
        reg, stack, local = (int(v) for v in m.groups())
        assert reg <= limits[kind][0], f"{name}: {reg} registers, the header allows {limits[kind][0]}"
        assert stack == 0 and local == 0, f"{name}: {stack} bytes stack, {local} bytes local (spills)"


@needs_build
@needs_tool
def test_tensor_core_instructions():
    funcs = _tc(_functions("-sass"))
    want = {"Half": r"HMMA\.16816\.F32(?!\.BF16)", "BFloat16": r"HMMA\.16816\.F32\.BF16", "If": r"HMMA\.1688\.F32\.TF32"}
    for name, sass in funcs.items():
        elem = "BFloat16" if "BFloat16" in name else "Half" if "Half" in name else "If"
        assert re.search(want[elem], sass), f"{name}: no {want[elem]}"
        assert "LDSM.16.M88.4" in sass, f"{name}: no ldmatrix.x4"
        if "tc_fast_kernel" in name:
            assert "LDGSTS" in sass and "LDGDEPBAR" in sass, f"{name}: no cp.async / commit_group"


@pytest.mark.parametrize("device", [pytest.param(SIMT, id="simt", marks=SIMT_MARKS)])
def test_dynamic_shared_memory_as_stated(device):
    limits = _limits()
    seen = {}
    # 16 channels: the pipeline (tc_fast_kernel); 12 (not whole 16-byte runs): the gather kernel
    for c in (16, 12):
        x = torch.randn(1, c, 6, 6).to(torch.float16)
        w = torch.randn(16, c, 3, 3).to(torch.float16)
        convx.simt.clear_launches()
        convx.functional.conv2d(x.contiguous(memory_format=torch.channels_last), w, padding=1)
        for launch in convx.simt.launches():
            kind = launch.kernel.split("<")[0]
            if kind in limits:
                seen[kind] = launch.dynamic_shared
    assert seen == {k: v[1] for k, v in limits.items()}
