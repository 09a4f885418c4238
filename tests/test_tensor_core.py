"""The tensor-core wrappers (csrc/common/tensor_core.cuh) against a second statement of their layouts.

Each wrapper runs in one warp through ``tensor_core_probe`` (csrc/cuda/tensor_core_probe.cu):
emulated here, on the GPU where one is present. The expected registers come from
convx/_probe.py, which evaluates CuTe's SM80 thread-value layouts, not the PTX-style
formulas the emulator is written from. Where a GPU has run scripts/probe_tensor_cores.py,
its recorded answers (tests/data/tensor_core_probe.json) are replayed on the emulator too.
"""
import json
import pathlib

import numpy as np
import pytest
import torch

from convx import _probe
from conftest import HAS_SIMT, SIMT_MARKS

GOLDEN = pathlib.Path(__file__).parent / "data" / "tensor_core_probe.json"
HAS_CUDA = torch.cuda.is_available() and hasattr(torch.ops.convx, "tensor_core_probe")

DEVICES = [pytest.param("simt", marks=SIMT_MARKS),
           pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]


def probe(device, instruction, inp):
    if device == "simt":
        return torch.ops.convx_simt.tensor_core_probe(instruction, inp)
    return torch.ops.convx.tensor_core_probe(instruction, inp.cuda()).cpu()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("instruction", _probe.INSTRUCTIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wrapper_matches_cute_layouts(device, instruction, seed):
    inp = _probe.make_input(instruction, seed)
    got = probe(device, instruction, inp).numpy()
    want = _probe.expected(instruction, inp)
    assert got.shape == want.shape
    bad = np.argwhere(got != want)
    assert bad.size == 0, (f"{instruction}: {len(bad)} registers differ; first lane {bad[0][0]} register "
                           f"{bad[0][1]}: got {got[tuple(bad[0])]:#x}, want {want[tuple(bad[0])]:#x}")


def test_cute_statement_is_not_the_emulators():
    """The reference is a different statement: spot-check it against hand-derived ISA facts."""
    A, B, C = _probe.MMA["mma.m16n8k16.f16"][:3]
    # lane 5 (g = 1, t = 1), value 5 (register 2, high half): A row g = 1, col 2t + 1 + 8 = 11
    assert _probe.layout(A, 5, 5) == 1 + 16 * 11
    # lane 6 (g = 1, t = 2), value 3 (register 1, high half): B k = 2t + 1 + 8 = 13, n = g = 1
    assert _probe.layout(B, 6, 3) == 1 + 8 * 13
    # lane 31 (g = 7, t = 3), c3: row g + 8 = 15, col 2t + 1 = 7
    assert _probe.layout(C, 31, 3) == 15 + 16 * 7


@pytest.mark.simt
@pytest.mark.skipif(not HAS_SIMT, reason="built without the emulated CUDA backend")
def test_emulated_cp_async_poisons_until_the_wait():
    """A read of a cp.async destination before its wait_group sees NaN bytes, not the data."""
    inp = _probe.make_input("cp.async.ca.16", 0)
    got = torch.ops.convx_simt.tensor_core_probe("cp.async.nowait", inp).numpy().view(np.uint32)
    assert (got == 0xFFFFFFFF).all()


@pytest.mark.simt
@pytest.mark.skipif(not HAS_SIMT, reason="built without the emulated CUDA backend")
def test_probe_rejects_unknown_instruction():
    with pytest.raises(RuntimeError, match="unknown instruction"):
        torch.ops.convx_simt.tensor_core_probe("mma.m16n8k32.s8", torch.zeros(320, dtype=torch.int32))


@pytest.mark.simt
@pytest.mark.skipif(not HAS_SIMT, reason="built without the emulated CUDA backend")
@pytest.mark.skipif(not GOLDEN.exists(), reason="no GPU has recorded tests/data/tensor_core_probe.json yet "
                    "(scripts/probe_tensor_cores.py on a GPU writes it; scripts/gpu_check.sh runs it)")
def test_emulator_replays_the_gpu_answers():
    golden = json.loads(GOLDEN.read_text())
    for case in golden["cases"]:
        inp = torch.tensor(case["input"], dtype=torch.int32)
        got = torch.ops.convx_simt.tensor_core_probe(case["instruction"], inp)
        assert got.flatten().tolist() == case["output"], case["instruction"]
