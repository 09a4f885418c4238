"""The CPU pooling kernels' vector paths, on shapes that reach them (test_pool2d's
shapes are too small to): channels_last with 37 channels (two AVX-512 blocks,
four AVX2 blocks, and a tail) and with 259 (runs of 512 bytes and more, in
the register order on small inputs and tap by tap on inputs of 4 MiB and
more: float's and bfloat16's, with a tail), NCHW rows of 8 or more outputs at strides 1, 2
and 3, adaptive windows of one size and of several, global average; every
dtype; NaN, +-inf and ties against torch's index rules; gradients; the result
independent of the thread count; and the AVX2 and baseline builds, forced."""
import os

import pytest
import torch
import torch.nn.functional as F

import convx
from conftest import assert_close_to_reference, single_threaded
from test_cpu_gemm import run_with_isa

CF = convx.functional

SHAPE = (2, 37, 23, 40)
WIDE = (2, 259, 12, 13)
MAX_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=(3, 2), stride=3, padding=1, dilation=(1, 2), ceil_mode=True),
    dict(kernel_size=2, stride=2, ceil_mode=True),
]
AVG_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=1, padding=1, count_include_pad=False),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=(1, 3), divisor_override=5),
]
STREAMED = (2, 259, 128, 128)  # 17 MiB in bfloat16: tap by tap
STREAMED_MAX = MAX_CASES[:3]
STREAMED_AVG = AVG_CASES[:2] + AVG_CASES[3:]
ADAPTIVE_SIZES = [(1, 1), (23, 8), (6, 13), (5, 40)]  # global, one window size, several, mixed
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _input(dtype, layout, seed=0, shape=SHAPE):
    """Small integers (ties everywhere), a NaN patch, an all -inf patch and a +inf."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, shape, generator=g).to(dtype)
    x[0, 5, 3:6, 7:12] = float("nan")
    x[1, 20, :, 0:5] = float("-inf")
    x[1, 36, 10, 10] = float("inf")
    mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return x.contiguous(memory_format=mf)


def _tol(dtype):
    return dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else {}


def _grads(fn, x, gy):
    xa = x.detach().clone().requires_grad_()
    out = fn(xa)
    y = out[0] if isinstance(out, tuple) else out
    (g,) = torch.autograd.grad(y, xa, gy)
    return out, g


def check_layout(layout, dtype, shape=SHAPE, max_cases=MAX_CASES, avg_cases=AVG_CASES, adaptive_sizes=ADAPTIVE_SIZES):
    x = _input(dtype, layout, shape=shape)
    g = torch.Generator().manual_seed(1)

    def compare(mine, ref, with_indices):
        gy = torch.randn(ref(x)[0].shape if with_indices else ref(x).shape, generator=g).to(dtype)
        gy = gy.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
        out, gx = _grads(mine, x, gy)
        rout, rgx = _grads(ref, x, gy)
        if with_indices:
            torch.testing.assert_close(out[0], rout[0], equal_nan=True, rtol=0, atol=0)
            assert torch.equal(out[1], rout[1]), "indices differ from torch's"
        else:
            torch.testing.assert_close(out, rout, equal_nan=True, **_tol(dtype))
        if dtype == torch.bfloat16:  # convx sums in float, torch in bfloat16 here: both against float64
            _, g64 = _grads(ref, x.double(), gy.double())
            assert_close_to_reference(gx.nan_to_num(), rgx.nan_to_num(), g64.nan_to_num())
        else:
            torch.testing.assert_close(gx, rgx, equal_nan=True)
        if gy.shape[-2:] != (1, 1):  # (torch's global average is a mean, whose gradient may take either layout)
            assert gx.stride() == rgx.stride()

    for case in max_cases:
        compare(lambda t: CF.max_pool2d(t, return_indices=True, **case),
                lambda t: F.max_pool2d(t, return_indices=True, **case), True)
        with torch.no_grad():  # the values alone: no index tensor made (float channels_last's own kernel)
            y, ry = CF.max_pool2d(x, **case), F.max_pool2d(x, **case)
        torch.testing.assert_close(y, ry, equal_nan=True, rtol=0, atol=0)
        assert y.stride() == ry.stride()
    for case in avg_cases:
        compare(lambda t: CF.avg_pool2d(t, **case), lambda t: F.avg_pool2d(t, **case), False)
    for size in adaptive_sizes:
        compare(lambda t: CF.adaptive_avg_pool2d(t, size), lambda t: F.adaptive_avg_pool2d(t, size), False)
        compare(lambda t: CF.adaptive_max_pool2d(t, size, True), lambda t: F.adaptive_max_pool2d(t, size, True), True)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_parity(layout, dtype):
    check_layout(layout, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_parity_wide_channels_last(dtype):
    check_layout("channels_last", dtype, WIDE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).split(".")[-1])
def test_parity_streamed_channels_last(dtype):
    check_layout("channels_last", dtype, STREAMED, STREAMED_MAX, STREAMED_AVG, [(64, 64)])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("shape", [SHAPE, WIDE], ids=["37ch", "259ch"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_parity_whole_window_average(layout, shape, dtype):
    """avg_pool2d with one window the input's size takes the global average's kernels (37 and 259
    channels: a register block's tail and single channels); with a divisor override it does not."""
    whole = tuple(shape[2:])
    check_layout(layout, dtype, shape, [], [dict(kernel_size=whole), dict(kernel_size=whole, stride=3, ceil_mode=True),
                                           dict(kernel_size=whole, divisor_override=7)], [])


# 64 channels (whole 64-byte lines a pixel) and 8 MiB of float32 or more: the forward's values
# and indices and the gradient go out by non-temporal stores (isa_each.h's stream_stores) where
# the result is that large (3x3 at stride 1: both; 2x2: the gradient), by plain stores below
NONTEMPORAL = (2, 64, 128, 128)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=lambda d: str(d).split(".")[-1])
def test_parity_nontemporal_channels_last(dtype):
    check_layout("channels_last", dtype, NONTEMPORAL, MAX_CASES[:3], AVG_CASES[:2], [(64, 64)])


@pytest.mark.parametrize("shape", [SHAPE, WIDE], ids=["37ch", "259ch"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_thread_count_does_not_change_bits(layout, shape):
    x = torch.randn(shape).contiguous(
        memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)

    def run():
        outs = []
        for fn in (lambda t: CF.max_pool2d(t, 3, 2, 1), lambda t: CF.avg_pool2d(t, 3, 1, 1),
                   lambda t: CF.adaptive_avg_pool2d(t, (6, 13)), lambda t: CF.adaptive_avg_pool2d(t, 1)):
            xa = x.clone().requires_grad_()
            y = fn(xa)
            (gx,) = torch.autograd.grad(y, xa, torch.ones_like(y))
            outs += [y, gx]
        return outs

    for a, b in zip(single_threaded(run), run()):
        assert torch.equal(a, b)


_CHILD = r"""
import sys
sys.path.insert(0, {tests!r})
import torch, convx
assert torch.ops.convx.cpu_isa() == sys.argv[1], torch.ops.convx.cpu_isa()
import test_cpu_pool as t
for layout in ("contiguous", "channels_last"):
    t.check_layout(layout, torch.float32)
t.check_layout("channels_last", torch.float32, t.WIDE)
t.check_layout("channels_last", torch.float32, t.STREAMED, t.STREAMED_MAX, t.STREAMED_AVG, [(64, 64)])
t.check_layout("channels_last", torch.float32, t.NONTEMPORAL, t.MAX_CASES[:3], t.AVG_CASES[:2], [(64, 64)])
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_narrower_builds(isa):
    """The AVX2 and baseline builds of the channels_last max kernels, forced on this machine."""
    run_with_isa(_CHILD.format(tests=os.path.dirname(os.path.abspath(__file__))), isa)
