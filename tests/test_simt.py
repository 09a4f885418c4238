"""The CPU emulator of the CUDA execution model (convx.simt): its own test
kernels (deliberately wrong ones it must catch), warp-collective semantics,
launch limits, the launch log, and the CUDA code paths that only the log can
show were taken (split-K, NHWC statistics, grids split over launches)."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import convx
from conftest import HAS_SIMT

pytestmark = pytest.mark.skipif(not HAS_SIMT, reason="built without the emulated CUDA backend")
CF = convx.functional


def selftest(name):
    return convx.simt._simt.selftest(name)


def kernels():
    return [launch.kernel for launch in convx.simt.launches()]


@pytest.fixture(autouse=True)
def _fresh_log():
    if HAS_SIMT:
        convx.simt.clear_launches()
    yield


# ---------------------------------------------------------------- the runtime catches bugs


def test_barrier_orders_shared_memory():
    assert selftest("neighbour_synced") == [float((t + 1) % 64) for t in range(64)] * 2


def test_missing_barrier_reads_poison():
    """A thread runs until it blocks, so without the barrier at least the
    first thread of each block reads a slot its neighbour has not written:
    the poison (NaN), not a plausible value."""
    out = selftest("neighbour_missing_barrier")
    for block in (out[:64], out[64:]):
        assert any(math.isnan(v) for v in block)


def test_shared_memory_is_poisoned_at_every_block():
    out = selftest("stale_shared")
    assert out[:64] == [1.0] * 64
    assert all(math.isnan(v) for v in out[64:]), "a block saw shared memory written by an earlier block"


@pytest.mark.parametrize("name,message", [
    ("divergent_barrier", "barrier divergence"),
    ("barrier_after_exit", "have exited"),
    ("partial_mask", "exited"),
    ("absent_lanes", "names lanes that are not there"),
    ("deadlock", "deadlock"),
    ("throws", "thread 7 says no"),
])
def test_bugs_are_errors(name, message):
    with pytest.raises(RuntimeError, match=message) as info:
        selftest(name)
    assert "kernel " in str(info.value) and "block (" in str(info.value)


@pytest.mark.parametrize("name", ["block_1025", "block_z_65", "grid_y_65536", "dynamic_shared_too_big"])
def test_launches_an_h100_rejects_fail(name):
    with pytest.raises(RuntimeError, match="CUDA error: invalid"):
        selftest(name)


def test_static_shared_memory_limit():
    with pytest.raises(RuntimeError, match="50176 bytes of __shared__ arrays; the limit is 49152"):
        selftest("too_much_static_shared")


def test_largest_legal_grid_runs():
    assert selftest("grid_y_65535") == [1.0]


def test_dynamic_shared_memory():
    out = selftest("reverse_dynamic")
    assert out == [float(b * 100 + 39 - t) for b in range(3) for t in range(40)]


def test_errors_leave_the_runtime_usable():
    with pytest.raises(RuntimeError):
        selftest("deadlock")
    assert selftest("neighbour_synced")[:3] == [1.0, 2.0, 3.0]


def test_warp_collectives():
    out = selftest("collectives")
    for t in range(64):
        lane, base = t % 32, t - t % 32
        got = out[t * 11:(t + 1) * 11]
        seg = base + (lane // 8) * 8  # width-8 segment start
        ballot = sum(1 << i for i in range(32) if i % 3 == 0)
        want = [
            base + (lane ^ 1),
            t - 2 if lane >= 2 else t,
            t + 3 if lane + 3 < 32 else t,
            base + 7,
            seg + 3,
            t + 5 if (t - seg) + 5 < 8 else t,
            torch.tensor(float(ballot), dtype=torch.float32).item(),
            1.0,
            0.0,
            float(base + (lane ^ 16)) + 0.25,
            float(sum(range(base, base + 32))),
        ]
        assert got == [float(v) for v in want], f"thread {t}"


@pytest.mark.parametrize("seed", range(6))
def test_two_block_reductions_in_a_row(seed):
    """block_reduce_sum ends with a barrier: without it a second call
    overwrites the partial sums warp 0 is still reading (this test failed
    before that barrier was added)."""
    convx.simt.set_seed(seed)
    out = selftest("reduce_twice")
    assert out == [float(sum(range(256))), float(sum(2 * t + 1 for t in range(256)))] * 8


def test_shared_objects_are_found():
    # igemm's As/Bs, the batch-norm reduction buffers, block_reduce_sum's partials, the self-tests' arrays
    assert convx.simt.shared_objects() >= 10


def _sanitized_build():
    try:
        from convx import _build_config
    except ImportError:
        return False
    return getattr(_build_config, "sanitize", False)


@pytest.mark.skipif(not _sanitized_build(), reason="needs the `make sanitize` build")
def test_shared_overrun_is_caught_by_the_sanitizers():
    code = "import convx; convx.simt._simt.selftest('shared_overrun')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(),
                       timeout=300)
    assert r.returncode != 0
    # AddressSanitizer (global-buffer-overflow) or UBSan's object-size check,
    # whichever sees the store first: both name the kernel's line.
    assert ("global-buffer-overflow" in r.stderr or "insufficient space for an object" in r.stderr), r.stderr[-2000:]
    assert "selftest.cpp" in r.stderr and "shared_overrun" in r.stderr


# ---------------------------------------------------------------- the launch log


def test_launch_log_records_each_launch():
    x, w = torch.randn(2, 3, 9, 8), torch.randn(4, 3, 3, 3)
    with convx.simt.device():
        CF.conv2d(x, w, None, padding=1)
    (launch,) = convx.simt.launches()
    assert launch.kernel == "igemm_kernel<float, ForwardProblem<float, float> >"
    assert launch.grid == (math.ceil(2 * 9 * 8 / 64), 1, 1) and launch.block == (256, 1, 1)
    assert launch.dynamic_shared == 0
    assert launch.static_shared == 2 * 16 * (64 + 4) * 4  # As and Bs: [BK][BM + 4] floats each
    convx.simt.clear_launches()
    assert convx.simt.launches() == []


def test_weight_gradient_takes_split_k():
    x = torch.randn(4, 8, 32, 32, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    with convx.simt.device():
        y = CF.conv2d(x, w, None, padding=1)
        gw = torch.autograd.grad(y, w, torch.ones_like(y))[0]
    wgrad = [k for k in convx.simt.launches() if "WgradProblem" in k.kernel]
    assert wgrad and wgrad[0].grid[2] == 8, wgrad  # 4096 reduction steps / 512 per split
    assert any(k.startswith("sum_splits_kernel") for k in kernels())
    yr = F.conv2d(x, w, None, padding=1)
    torch.testing.assert_close(gw, torch.autograd.grad(yr, w, torch.ones_like(yr))[0])


@pytest.mark.parametrize("layout,kernel", [("contiguous", "reduce_nchw"), ("channels_last", "reduce_nhwc")])
def test_batch_norm_statistics_kernel_follows_layout(layout, kernel):
    x = torch.randn(4, 40, 5, 6)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with convx.simt.device():
        mean, var = torch.ops.convx.batch_norm_stats(x, None, None, 0.1)
    assert any(k.startswith(kernel + "<convx::cuda::StatsOp") or k.startswith(kernel + "<StatsOp")
               for k in kernels()), kernels()
    torch.testing.assert_close(mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_more_groups_than_grid_z_split_over_launches(layout):
    """Groups live in gridDim.z (at most 65,535); beyond that a convolution
    runs in several launches. The emulated limit is lowered to 7 so that 20
    groups take that path (forward, data and weight gradients)."""
    x = torch.randn(2, 20, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(40, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    if layout == "channels_last":
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    with convx.simt.max_grid_yz(7), convx.simt.device():
        y = CF.conv2d(x, w, None, padding=1, groups=20)
        gx, gw = torch.autograd.grad(y, [x, w], torch.ones_like(y))
    for problem in ("ForwardProblem", "DgradProblem", "WgradProblem"):
        launches = [k for k in convx.simt.launches() if problem in k.kernel]
        assert len(launches) == 3 and sorted(k.grid[2] for k in launches) == [6, 7, 7], (problem, launches)
    yr = F.conv2d(x, w, None, padding=1, groups=20)
    gxr, gwr = torch.autograd.grad(yr, [x, w], torch.ones_like(yr))
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(gx, gxr)
    torch.testing.assert_close(gw, gwr)


@pytest.mark.slow
def test_65540_groups_depthwise():
    """The real size: more depthwise channels than gridDim.z holds (the
    weight gradient used to divide by zero on the host)."""
    C = 65540
    x = torch.randn(1, C, 2, 2, requires_grad=True)
    w = torch.randn(C, 1, 3, 3, requires_grad=True)
    with convx.simt.device():
        y = CF.conv2d(x, w, None, padding=1, groups=C)
        gx, gw = torch.autograd.grad(y, [x, w], torch.ones_like(y))
    yr = F.conv2d(x, w, None, padding=1, groups=C)
    gxr, gwr = torch.autograd.grad(yr, [x, w], torch.ones_like(yr))
    for a, b in [(y, yr), (gx, gxr), (gw, gwr)]:
        torch.testing.assert_close(a, b)


def test_emulated_ops_have_convx_schemas():
    for name in ["conv2d", "conv2d_backward_weight", "conv_transpose2d", "max_pool2d_backward", "batch_norm_stats",
                 "add_relu_"]:
        a = getattr(torch.ops.convx, name).default._schema
        b = getattr(torch.ops.convx_simt, name).default._schema
        assert str(a).replace("convx::", "") == str(b).replace("convx_simt::", "")


def test_emulated_ops_take_cpu_tensors_only_as_their_device():
    x, w = torch.randn(1, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    y = torch.ops.convx_simt.conv2d(x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1))
