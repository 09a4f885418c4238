"""The channels_last float32 CPU data gradient of strided layers by the phases of dX
(csrc/cpu/conv2d.cpp, phase_rows_dgrad; 16 or 32 channels with up to 9 taps by scatter,
scatter_dgrad): for each phase (a, b) of dX's pixels modulo the
strides, a stride-1 product over the taps that reach it, dY's pixels gathered where they lie
(zeros outside), written straight to the phase's pixels. Taken for one group, dilation 1, a
kernel at least the stride in each direction, K >= 8 and 256 pixels a phase; NCHW strided
data gradients with >= 8 channels compute in channels_last (strided_data_grad_channels_last)
and take it too.
Against float64, on strides 2 and 3 (unequal ones too), kernels 2-7, padding that makes dr / ds
negative, odd sizes, K past the gather's blocks, the transposed convolution's bias, and one or
two threads."""
import pytest
import torch
import torch.nn.functional as F

import convx


@pytest.fixture(autouse=True)
def _no_winograd():
    """Winograd's phase path (4x4 stride 2, test_winograd.py) off: the GEMM phases are this file's."""
    with convx.backends.cpu.flags(winograd=False):
        yield


# N, C, H, W, K, (R, S), (stride_h, stride_w), (pad_h, pad_w)
CASES = {
    "3x3_s2": (2, 16, 25, 26, 64, (3, 3), (2, 2), (1, 1)),
    "3x3_s2_valid_odd": (2, 24, 25, 23, 48, (3, 3), (2, 2), (0, 0)),
    "4x4_s2": (1, 8, 33, 35, 64, (4, 4), (2, 2), (1, 1)),
    "5x5_s2x3": (2, 8, 30, 31, 96, (5, 5), (2, 3), (2, 1)),
    "7x7_s2_stem_like": (1, 16, 35, 33, 64, (7, 7), (2, 2), (3, 3)),
    "3x3_s3x2_pad_past": (3, 5, 25, 22, 50, (3, 3), (3, 2), (2, 1)),
    "2x2_s2": (2, 16, 24, 25, 64, (2, 2), (2, 2), (0, 0)),
    "3x5_s2_rect": (2, 12, 25, 27, 56, (3, 5), (2, 2), (1, 2)),
    # K = 600: taps in pieces (blocks of the reduction within one tap's channels)
    "3x3_s2_k600": (1, 16, 34, 32, 600, (3, 3), (2, 2), (1, 1)),
    # enough rows for the long blocks (>= 96 on AVX-512): 12 taps of 64 channels a block
    "4x4_s2_many_rows": (2, 16, 40, 38, 64, (4, 4), (2, 2), (1, 1)),
    # short runs to gather (K of 8 to 40: CIFAR's 16 -> 32 stride 2), C under one tile's columns
    "3x3_s2_k32_c16": (4, 16, 32, 31, 32, (3, 3), (2, 2), (1, 1)),
    "3x3_s2_k8": (2, 12, 33, 30, 8, (3, 3), (2, 2), (1, 1)),
    "5x5_s2_k20": (2, 16, 29, 28, 20, (5, 5), (2, 2), (2, 2)),
    # under 256 pixels a phase (16 channels: the scatter below; else the column matrix and col2im)
    "3x3_s2_few_pixels": (2, 16, 15, 16, 64, (3, 3), (2, 2), (1, 1)),
    "3x3_s2_few_pixels_c24": (2, 24, 15, 16, 64, (3, 3), (2, 2), (1, 1)),
    # by scatter (scatter_dgrad: 16 or 32 channels, up to 9 taps, K up to 256, two images or more):
    # the tiles' products added into a zero-padded dX an image at a time; 1x1 (no phase has a tap
    # but one), K of a whole reduction block, unequal strides, stride 3 with padding past the
    # kernel, output rows not a whole number of tiles (partial tiles)
    "scatter_1x1_s2": (4, 32, 17, 18, 64, (1, 1), (2, 2), (0, 0)),
    "scatter_3x3_s2_k256": (2, 32, 23, 29, 256, (3, 3), (2, 2), (1, 1)),
    "scatter_3x3_s2x1": (2, 16, 20, 19, 24, (3, 3), (2, 1), (1, 1)),
    "scatter_2x3_s3_pad_past": (3, 32, 22, 25, 40, (2, 3), (3, 3), (2, 1)),
    "scatter_3x3_s2_wide_rows": (2, 16, 57, 61, 8, (3, 3), (2, 2), (1, 1)),
    # one image: the phases
    "scatter_one_image": (1, 16, 32, 32, 32, (3, 3), (2, 2), (1, 1)),
}


def _data_grad(case, layout, g):
    N, C, H, W, K, (R, S), stride, pad = case
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    w = torch.randn(K, C, R, S, generator=g).contiguous(memory_format=mf)
    Ho = (H + 2 * pad[0] - R) // stride[0] + 1
    Wo = (W + 2 * pad[1] - S) // stride[1] + 1
    gy = torch.randn(N, K, Ho, Wo, generator=g).contiguous(memory_format=mf)
    args = ([N, C, H, W], list(stride), [pad[0], pad[0], pad[1], pad[1]], [1, 1], 1)
    return gy, w, args


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_strided_data_grad_matches_float64(case, layout):
    g = torch.Generator().manual_seed(0)
    gy, w, args = _data_grad(case, layout, g)
    gx = torch.ops.convx.conv2d_backward_input(gy, w, *args)
    N, C, H, W, K, (R, S), stride, pad = case
    x = torch.zeros(N, C, H, W, dtype=torch.float64)
    ref, = torch.ops.aten.convolution_backward(gy.double(), x, w.double(), None, list(stride), list(pad), [1, 1],
                                               False, [0, 0], 1, [True, False, False])[:1]
    mag, = torch.ops.aten.convolution_backward(gy.double().abs(), x, w.double().abs(), None, list(stride), list(pad),
                                               [1, 1], False, [0, 0], 1, [True, False, False])[:1]
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    assert gx.shape == ref.shape and gx.is_contiguous(memory_format=mf)
    err = (gx.double() - ref).abs()
    assert (err <= 16 * 2.0 ** -24 * mag + 1e-30).all(), (err / (mag + 1e-30)).max().item() / 2.0 ** -24


def _on_threads(n, fn):
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(n)
        return fn()
    finally:
        torch.set_num_threads(old)


def _same_bits_on_one_and_two_threads(gy, w, args):
    run = lambda: torch.ops.convx.conv2d_backward_input(gy, w, *args)  # noqa: E731
    assert torch.equal(_on_threads(1, run), _on_threads(2, run))


@pytest.mark.parametrize("case", ["3x3_s2", "4x4_s2_many_rows", "3x3_s2_k600", "3x3_s2_k32_c16", "scatter_1x1_s2",
                                  "scatter_3x3_s2_wide_rows", "scatter_one_image"])
def test_strided_data_grad_thread_count(case):
    g = torch.Generator().manual_seed(1)
    gy, w, args = _data_grad(CASES[case], "nhwc", g)
    _same_bits_on_one_and_two_threads(gy, w, args)


@pytest.mark.parametrize("shape", [(2, 64, 17, 32, 4, 2, 1), (1, 96, 17, 48, 3, 2, 1), (2, 64, 12, 16, 3, 3, 0),
                                   (3, 32, 9, 16, 3, 2, 1), (2, 64, 11, 32, 1, 2, 0)])
def test_transposed_forward_with_bias(shape):
    """conv_transpose2d's forward is this data gradient plus the bias (the bias written first)."""
    N, Ci, H, Co, R, s, pd = shape
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, Ci, H, H, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(Ci, Co, R, R, generator=g).contiguous(memory_format=torch.channels_last)
    b = torch.randn(Co, generator=g)
    y = convx.functional.conv_transpose2d(x, w, b, s, pd)
    ref = F.conv_transpose2d(x.double(), w.double(), b.double(), s, pd)
    mag = F.conv_transpose2d(x.double().abs(), w.double().abs(), b.double().abs(), s, pd)
    assert y.shape == ref.shape
    assert ((y.double() - ref).abs() <= 16 * 2.0 ** -24 * mag + 1e-30).all()


# Grouped, channels_last (conv2d.cpp's grouped_phase_rows): a product a phase and group, dX's and
# dY's pixels where they lie among the other groups' channels. N, C, H, W, K, (R, S), stride,
# (pad_h, pad_w), groups: 48-channel groups; 16 in, 12 out (no grouped.cpp kernel); 5x5 at unequal
# strides, 16 in, 24 out.
GROUPED = {
    "cg48": (2, 96, 30, 29, 96, (3, 3), (2, 2), (1, 1), 2),
    "cg16_kg12": (1, 64, 34, 31, 48, (3, 3), (2, 2), (1, 1), 4),
    "cg16_kg24_5x5_s2x3": (2, 48, 30, 27, 72, (5, 5), (2, 3), (2, 1), 3),
}


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("case", list(GROUPED.values()), ids=list(GROUPED))
def test_grouped_strided_data_grad(case, layout):
    N, C, H, W, K, (R, S), stride, pad, groups = case
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    g = torch.Generator().manual_seed(6)
    w = torch.randn(K, C // groups, R, S, generator=g).contiguous(memory_format=mf)
    Ho = (H + 2 * pad[0] - R) // stride[0] + 1
    Wo = (W + 2 * pad[1] - S) // stride[1] + 1
    gy = torch.randn(N, K, Ho, Wo, generator=g).contiguous(memory_format=mf)
    args = ([N, C, H, W], list(stride), [pad[0], pad[0], pad[1], pad[1]], [1, 1], groups)
    gx = torch.ops.convx.conv2d_backward_input(gy, w, *args)
    x = torch.zeros(N, C, H, W, dtype=torch.float64)
    ref, mag = (torch.ops.aten.convolution_backward(a, x, b, None, list(stride), list(pad), [1, 1], False, [0, 0],
                                                    groups, [True, False, False])[0]
                for a, b in ((gy.double(), w.double()), (gy.double().abs(), w.double().abs())))
    assert gx.shape == ref.shape and gx.is_contiguous(memory_format=mf)
    err = (gx.double() - ref).abs()
    assert (err <= 16 * 2.0 ** -24 * mag + 1e-30).all(), (err / (mag + 1e-30)).max().item() / 2.0 ** -24
    if layout == "nhwc":
        _same_bits_on_one_and_two_threads(gy, w, args)


def test_grouped_transposed_forward_with_bias():
    """A grouped strided conv_transpose2d (a grouped data gradient plus the bias), channels_last."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 96, 17, 16, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(96, 24, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)  # 2 groups: 48 -> 24 each
    b = torch.randn(48, generator=g)
    y = convx.functional.conv_transpose2d(x, w, b, 2, 1, 1, 2)
    ref = F.conv_transpose2d(x.double(), w.double(), b.double(), 2, 1, 1, 2)
    mag = F.conv_transpose2d(x.double().abs(), w.double().abs(), b.double().abs(), 2, 1, 1, 2)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert ((y.double() - ref).abs() <= 16 * 2.0 ** -24 * mag + 1e-30).all()
