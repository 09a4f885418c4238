"""A CPU convolution's bias inside its products (csrc/cpu/gemm.cpp): the register tile's
accumulators start from it in the first reduction block, a vector along the columns on the
channels_last paths (rows made on the fly, read in place, gathered; the packed weights of a 1x1
layer or an im2col block), a value a row for NCHW's products by the packed weights; grouped and
weights-in-place products still set the output to it first. Each path against float64: partial
row panels, last column panels of under 16 and of 17-31 channels, several reduction blocks, small
NCHW images side by side (panels crossing images), float64 itself, one or two threads.
(Winograd is off: its output transform adds the bias itself, test_winograd.py.)"""
import pytest
import torch
import torch.nn.functional as F

import convx


@pytest.fixture(autouse=True)
def _no_winograd():
    with convx.backends.cpu.flags(winograd=False):
        yield


# N, C, H, W, K, kernel, stride, padding, groups: which path it takes in the comment
CASES = {
    # channels_last: a 27-float reduction read in place (VGG's first layer, rows of 3 x 3 x 3)
    "vgg_first_like": (2, 3, 20, 21, 64, 3, 1, 1, 1),
    # gathered rows (64 channels a tap), 40 output channels: a 32-wide panel and an 8-wide one
    "gathered_s2": (2, 64, 15, 17, 40, 3, 2, 1, 1),
    # rows made by the im2col on the fly (24 channels a tap), 50 columns: 32 + 18
    "on_the_fly_5x5": (2, 24, 13, 12, 50, 5, 1, 2, 1),
    # a 1x1 layer by the packed weights (rows read in place), 33 columns, 243 rows
    "pointwise_33": (3, 17, 9, 9, 33, 1, 1, 0, 1),
    # 600 input channels: several reduction blocks (the bias only in the first)
    "pointwise_k600": (2, 600, 7, 6, 70, 1, 1, 0, 1),
    # a strided 1x1: im2col blocks by the packed weights
    "pointwise_s2": (2, 40, 14, 13, 48, 1, 2, 0, 1),
    # grouped: the output set to the bias first
    "grouped": (2, 32, 10, 10, 48, 3, 1, 1, 2),
}


def _case(case, layout, dtype=torch.float32, seed=0):
    N, C, H, W, K, R, s, p, g = case
    gen = torch.Generator().manual_seed(seed)
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    w = torch.randn(K, C // g, R, R, generator=gen, dtype=torch.float64) / (C // g * R * R) ** 0.5
    b = torch.randn(K, generator=gen, dtype=torch.float64) * 3
    return (x.to(dtype).contiguous(memory_format=mf), w.to(dtype).contiguous(memory_format=mf), b.to(dtype), s, p, g)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bias_matches_float64(case, layout):
    x, w, b, s, p, g = _case(case, layout)
    y = convx.functional.conv2d(x, w, b, s, p, 1, g)
    ref = F.conv2d(x.double(), w.double(), b.double(), s, p, 1, g)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    torch.testing.assert_close(y.double(), ref, atol=2e-5, rtol=2e-5)
    # the bias is in: without it the result differs by the bias along the channels
    y0 = convx.functional.conv2d(x, w, None, s, p, 1, g)
    torch.testing.assert_close((y - y0).double(), b.double().view(1, -1, 1, 1).expand_as(ref), atol=2e-5, rtol=0)


# NCHW: small images side by side in one product (panels of columns crossing images), output
# channels past a row panel (19: 12 + 7 on AVX-512), and a 1x1 layer's planes read in place.
NCHW_CASES = {
    "images_side_by_side": (4, 5, 6, 7, 19, 3, 1, 1, 1),
    "plane_1x1": (3, 16, 7, 7, 20, 1, 1, 0, 1),
    "wide_image_3x3": (1, 8, 30, 41, 29, 3, 1, 1, 1),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(NCHW_CASES.values()), ids=list(NCHW_CASES))
def test_nchw_row_bias_matches_float64(case, dtype):
    x, w, b, s, p, g = _case(case, "nchw", dtype)
    y = convx.functional.conv2d(x, w, b, s, p, 1, g)
    ref = F.conv2d(x.double(), w.double(), b.double(), s, p, 1, g)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_bias_independent_of_thread_count(layout):
    old = torch.get_num_threads()
    try:
        for name in ("vgg_first_like", "gathered_s2", "pointwise_33"):
            x, w, b, s, p, g = _case(CASES[name], layout)
            torch.set_num_threads(1)
            y1 = convx.functional.conv2d(x, w, b, s, p, 1, g)
            torch.set_num_threads(2)
            y2 = convx.functional.conv2d(x, w, b, s, p, 1, g)
            assert torch.equal(y1, y2), name
    finally:
        torch.set_num_threads(old)
