"""The CPU depthwise kernels' vector paths on shapes that reach them: 37 channels
(whole 64-byte blocks and a tail), rows of 32 or more outputs and narrow
planes (NCHW stride-1 planes, directly or through a zero-padded copy, and the
data gradient as the correlation with the turned filter), the
channels_last interior of 3x3 and 5x5 filters, the channel-blocked forward
(bands of zero-padded rows, 64 bytes of channels a pixel), padding, dilation, strides 1
and 2, both layouts, float32 and float64, forward and both gradients against
torch in float64, and the AVX2 and baseline builds, forced."""
import os

import pytest
import torch
import torch.nn.functional as F

import convx
from conftest import single_threaded
from test_cpu_gemm import run_with_isa

# (kernel, stride, padding, dilation)
CASES = [
    ((3, 3), 1, 1, 1),
    ((5, 5), 1, 2, 1),
    ((3, 3), 1, 2, 2),
    ((3, 3), 1, 0, 1),
    ((5, 5), 1, 1, 1),
    ((3, 5), 1, (1, 2), 1),
    ((3, 3), 2, 1, 1),
    # the channel-blocked forward (NCHW strided or larger filters, channels_last 5x5 / 7x7 at
    # stride 1): specialised rows of 3, 5 and 7 taps at strides 1 and 2, and any other
    ((5, 5), 2, 2, 1),
    ((7, 7), 1, 3, 1),
    ((3, 3), 2, 0, 1),
    ((3, 3), (1, 2), 1, (1, 2)),
    # the NCHW strided data gradient by phases: stride 3, and padding past the filter
    ((3, 3), 3, 1, 1),
    ((3, 3), 2, 3, 1),
]
C = 37
# rows of two or more 64-byte blocks; narrow planes (the zero-padded copy), whose rows are copied
# by 16-, 32- and 64-byte moves (the last overlapping) or, under 16 bytes, one at a time
SIZES = [(23, 40), (9, 13), (7, 21), (5, 3)]


def check(layout, dtype, case, size=SIZES[0]):
    k, stride, padding, dilation = case
    H, W = size
    mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, C, H, W, generator=g, dtype=dtype).contiguous(memory_format=mf)
    w = torch.randn(C, 1, *k, generator=g, dtype=dtype).contiguous(memory_format=mf)
    b = torch.randn(C, generator=g, dtype=dtype)
    args = (stride, padding, dilation, C)
    xa, wa, ba = (t.clone().requires_grad_() for t in (x, w, b))
    y = convx.functional.conv2d(xa, wa, ba, *args)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    y64 = F.conv2d(x64, w64, b64, *args)
    assert y.is_contiguous(memory_format=mf)
    gy = torch.randn(y.shape, generator=g, dtype=dtype).contiguous(memory_format=mf)
    got = torch.autograd.grad(y, (xa, wa, ba), gy)
    want = torch.autograd.grad(y64, (x64, w64, b64), gy.double())
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y.double(), y64, **tol)
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e, **tol)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0][0]}x{c[0][1]}_s{c[1]}_p{c[2]}_d{c[3]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_parity(layout, dtype, case, size):
    check(layout, dtype, case, size)


_CHILD = r"""
import sys
sys.path.insert(0, {tests!r})
import torch, convx
assert torch.ops.convx.cpu_isa() == sys.argv[1], torch.ops.convx.cpu_isa()
import test_cpu_depthwise as t
for layout in ("contiguous", "channels_last"):
    for case in t.CASES:
        for size in t.SIZES:
            t.check(layout, torch.float32, case, size)
print("ok")
"""


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_blocked_bands(layout):
    # 150 rows of 64 columns: the channel-blocked forward's and data gradient's bands of rows (each
    # band's input rows in its buffer), the last band short, 37 channels (a partial channel block).
    # Not the weight gradient: its 19,200-term sums are checked on the smaller sizes above.
    mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    g = torch.Generator().manual_seed(1)
    for k, stride, pad, (H, W) in (((5, 5), 1, 2, (150, 64)), ((3, 3), 2, 1, (151, 66))):
        x = torch.randn(2, C, H, W, generator=g).contiguous(memory_format=mf)
        w, b = torch.randn(C, 1, *k, generator=g), torch.randn(C, generator=g)
        xa = x.clone().requires_grad_()
        y = convx.functional.conv2d(xa, w, b, stride, pad, 1, C)
        assert y.is_contiguous(memory_format=mf)
        x64 = x.double().requires_grad_()
        want = F.conv2d(x64, w.double(), b.double(), stride, pad, 1, C)
        torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-4)
        # and the data gradient's bands (NCHW: as the forward at stride 1, by phases at stride 2)
        gy = torch.randn(y.shape, generator=g).contiguous(memory_format=mf)
        gx, = torch.autograd.grad(y, xa, gy)
        gx64, = torch.autograd.grad(want, x64, gy.double())
        assert gx.is_contiguous(memory_format=mf)
        torch.testing.assert_close(gx.double(), gx64, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_narrower_builds(isa):
    run_with_isa(_CHILD.format(tests=os.path.dirname(os.path.abspath(__file__))), isa)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_thread_count_does_not_change_bits(layout):
    mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, C, 30, 33, generator=g).contiguous(memory_format=mf)
    w = torch.randn(C, 1, 3, 3, generator=g).contiguous(memory_format=mf)

    def run():
        xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = convx.functional.conv2d(xa, wa, None, 1, 1, 1, C)
        return [y, *torch.autograd.grad(y, (xa, wa), torch.ones_like(y))]

    for a, b in zip(single_threaded(run), run()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streamed_outputs(dtype):
    # channels_last 3x3 at stride 1 with 8 MiB of outputs or more: the interior pixels go out by
    # non-temporal stores (isa_each.h's stream_stores), the border ones by plain stores; 64 and
    # 48 channels (whole 64-byte blocks), bias or not; the same bits as below the threshold
    g = torch.Generator().manual_seed(4)
    for c, (h, w_), bias in ((64, (96, 97), True), (48, (120, 93), False)):
        x = torch.randn(4, c, h, w_, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, 1, 3, 3, generator=g, dtype=dtype)
        b = torch.randn(c, generator=g, dtype=dtype) if bias else None
        y = convx.functional.conv2d(x, w, b, 1, 1, 1, c)
        assert y.numel() * y.element_size() >= 8 << 20 and y.is_contiguous(memory_format=torch.channels_last)
        want = F.conv2d(x.double(), w.double(), None if b is None else b.double(), 1, 1, 1, c)
        torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-4)
        small = convx.functional.conv2d(x[:1], w, b, 1, 1, 1, c)  # under the threshold: plain stores
        assert small.numel() * small.element_size() < 8 << 20 or dtype == torch.float64
        if dtype == torch.float32:
            assert torch.equal(small, y[:1])
