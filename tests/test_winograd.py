"""Winograd F(4x4, 3x3) on the CPU (csrc/cpu/winograd.cpp): float32 3x3 convolutions at
stride 1, forward, data gradient (and so the stride-1 transposed convolution) and, with
enough tiles, the weight gradient, dilated ones too (their d * d phases a batch); and F(2x2, 3x3) for channels_last groups of 16 or 32 channels
on AVX-512 (csrc/cpu/grouped.cpp), forward and data gradient, judged by the same bound.

Its rounding error is larger than a direct convolution's, so it is judged element by
element against float64: |y - y64| <= 64 * 2^-24 * M, where M is the largest value of
|W| (*) |X| (the convolution of the absolute values) within 3 positions of the output:
the transforms mix a whole 6x6 input tile into each of its 16 outputs, so an output's
error follows its tile's magnitude, not only its own. Measured on these cases: at most
39 * 2^-24 * M (the direct path: about 12 * 2^-24 * (|W| (*) |X|) at the element).
Every case also checks that Winograd really ran (its bits differ from the exact path's).
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import convx
from conftest import assert_close_to_reference
from test_cpu_gemm import run_with_isa

U = 2.0 ** -24
BOUND = 64 * U

# N, C, H, W, K, (top, bottom, left, right) padding: odd channel counts, partial edge tiles,
# asymmetric and zero padding, several reduction chunks (C > 256), K under one column tile.
CASES = {
    "16ch": (4, 16, 16, 16, 16, (1, 1, 1, 1)),
    "odd_17_33_edges": (6, 17, 13, 11, 33, (1, 1, 1, 1)),
    "valid_64_130": (1, 64, 30, 30, 130, (0, 0, 0, 0)),
    "asym_pad": (4, 48, 9, 23, 20, (2, 0, 1, 2)),
    "c300_chunks": (8, 300, 12, 12, 40, (1, 1, 1, 1)),
    "k16_56": (1, 32, 56, 56, 16, (1, 1, 1, 1)),
    "resnet_l2": (2, 128, 28, 28, 128, (1, 1, 1, 1)),
    # 128 tiles (two threads: blocks of 64 on AVX-512's 8-row tile, of 72 and 56 on 12-row ones)
    "gnet_4a_128_tiles": (8, 96, 14, 14, 208, (1, 1, 1, 1)),
    # 4 tiles (batch 1, 7 x 7): few tiles pay where the weights are not too large for them
    "few_tiles_7x7": (1, 64, 7, 7, 96, (1, 1, 1, 1)),
}
# (NCHW layers with images of up to 14 x 14 pixels are computed in channels_last, conv2d.cpp's
# winograd_format: odd_17_33_edges, c300_chunks and few_tiles_7x7 here; the others in NCHW)
# (the weight is read in either layout in place: OIHW, or channels_last's KRSC)
LAYOUTS = ["nchw", "nhwc", "x_nhwc_w_nchw", "x_nchw_w_nhwc"]


def _tensors(case, layout, seed=0):
    N, C, H, W, K, pad = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    w = torch.randn(K, C, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(K, generator=g, dtype=torch.float64)
    cl, dense = torch.channels_last, torch.contiguous_format
    x32 = x.float().contiguous(memory_format=cl if layout in ("nhwc", "x_nhwc_w_nchw") else dense)
    w32 = w.float().contiguous(memory_format=cl if layout in ("nhwc", "x_nchw_w_nhwc") else dense)
    return x, w, b, x32, w32, b.float(), pad


def _conv64(x, w, b, pad):
    t, bo, l, r = pad
    return F.conv2d(F.pad(x, (l, r, t, bo)), w, b)


def _within_bound(got, ref, mag, what):
    mag = F.max_pool2d(mag, 7, stride=1, padding=3)  # the largest within 3 positions: the tile's scale
    err = (got.double() - ref).abs()
    worst = (err - BOUND * mag).max().item()
    ratio = (err / (mag + 1e-300)).max().item() / U
    assert worst <= 1e-12, f"{what}: error {ratio:.1f} * 2^-24 * M, bound 64"


def _exact(fn):
    with convx.backends.cpu.flags(winograd=False):
        return fn()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_forward_within_bound(case, layout):
    x, w, b, x32, w32, b32, pad = _tensors(case, layout)
    run = lambda: torch.ops.convx.conv2d(x32, w32, b32, [1, 1], list(pad), [1, 1], 1)  # noqa: E731
    y = run()
    ref = _conv64(x32.double(), w32.double(), b32.double(), pad)
    mag = _conv64(x32.double().abs(), w32.double().abs(), b32.double().abs(), pad)
    assert y.shape == ref.shape and y.dtype == torch.float32
    torch_y = F.conv2d(x32, w32, b32, padding=1)  # the output layout follows torch's rule
    for mf in (torch.contiguous_format, torch.channels_last):
        assert y.is_contiguous(memory_format=mf) == torch_y.is_contiguous(memory_format=mf)
    _within_bound(y, ref, mag, "forward")
    assert not torch.equal(y, _exact(run)), "the Winograd path did not run"


def test_large_channels_last_result_streamed():
    """A channels_last result of 8 MiB or more is written by streaming stores (16 MiB here), edge
    tiles and the bias included; its data gradient (the same transforms, dX as large) too."""
    g = torch.Generator().manual_seed(21)
    x = torch.randn(16, 32, 66, 63, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(48, 32, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    b = torch.randn(48, generator=g)
    y = torch.ops.convx.conv2d(x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    assert y.numel() * 4 >= 8 << 20 and y.is_contiguous(memory_format=torch.channels_last)
    ref = _conv64(x.double(), w.double(), b.double(), (1, 1, 1, 1))
    _within_bound(y, ref, _conv64(x.double().abs(), w.double().abs(), b.double().abs(), (1, 1, 1, 1)), "forward")
    gy = torch.randn(y.shape, generator=g).contiguous(memory_format=torch.channels_last)
    gx = torch.ops.convx.conv2d_backward_input(gy, w, list(x.shape), [1, 1], [1, 1, 1, 1], [1, 1], 1)
    ref = torch.nn.grad.conv2d_input(x.shape, w.double(), gy.double(), padding=1)
    mag = torch.nn.grad.conv2d_input(x.shape, w.double().abs(), gy.double().abs(), padding=1)
    _within_bound(gx, ref, mag, "data gradient")


# Dilated 3x3 at stride 1 (conv2d.cpp's dilated_winograd): the d * d phases of the image as a
# batch of ordinary 3x3 convolutions on Winograd. N, C, H, W, K, dilation, (top, bottom, left,
# right) padding (top and left multiples of d): sizes that d does not divide (phases of unequal
# sizes), bottom / right padding that is not, and the output tile's reach d times wider.
DILATED = {
    "d2_same": (2, 32, 28, 27, 48, 2, (2, 2, 2, 2)),
    "d3_odd": (1, 16, 33, 31, 20, 3, (3, 1, 6, 3)),
    "d4_valid_bottom": (2, 24, 40, 41, 32, 4, (4, 0, 0, 4)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(DILATED.values()), ids=list(DILATED))
def test_dilated_forward_within_bound(case, layout):
    N, C, H, W, K, d, pad = case
    x, w, b, x32, w32, b32, _ = _tensors((N, C, H, W, K, pad), layout)
    run = lambda: torch.ops.convx.conv2d(x32, w32, b32, [1, 1], list(pad), [d, d], 1)  # noqa: E731
    y = run()
    t, bo, l, r = pad
    ref = F.conv2d(F.pad(x32.double(), (l, r, t, bo)), w32.double(), b32.double(), dilation=d)
    mag = F.conv2d(F.pad(x32.double().abs(), (l, r, t, bo)), w32.double().abs(), b32.double().abs(), dilation=d)
    torch_y = F.conv2d(x32, w32, b32, padding=d, dilation=d)  # the output layout follows torch's rule
    assert y.shape == ref.shape
    for mf in (torch.contiguous_format, torch.channels_last):
        assert y.is_contiguous(memory_format=mf) == torch_y.is_contiguous(memory_format=mf)
    mag = F.max_pool2d(mag, 6 * d + 1, stride=1, padding=3 * d)  # the tile's reach, d apart
    err = (y.double() - ref).abs()
    assert (err <= BOUND * mag + 1e-12).all(), f"error {(err / mag).max().item() / U:.1f} * 2^-24 * M"
    assert not torch.equal(y, _exact(run)), "the Winograd path did not run"
    # the fused epilogue (residual, ReLU) on the phases' result
    res = torch.randn(y.shape).contiguous(
        memory_format=torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    yf = torch.ops.convx.conv2d_fused(x32, w32, b32, res, [1, 1], list(pad), [d, d], 1, True)
    torch.testing.assert_close(yf, (y + res).clamp_min(0), rtol=0, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_data_gradient_within_bound(case, layout):
    x, w, b, x32, w32, b32, pad = _tensors(case, layout, seed=1)
    N, C, H, W, K, _ = case
    y_shape = _conv64(x32.double(), w32.double(), None, pad).shape
    gy = torch.randn(y_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).float()
    gy = gy.contiguous(memory_format=torch.channels_last if layout != "nchw" else torch.contiguous_format)
    run = lambda: torch.ops.convx.conv2d_backward_input(gy, w32, [N, C, H, W], [1, 1], list(pad), [1, 1], 1)  # noqa
    gx = run()

    def grad64(xd, wd, gyd):
        xd = xd.clone().requires_grad_()
        return torch.autograd.grad(_conv64(xd, wd, None, pad), xd, gyd)[0]

    ref = grad64(x32.double(), w32.double(), gy.double())
    mag = grad64(x32.double(), w32.double().abs(), gy.double().abs())
    assert gx.shape == ref.shape
    _within_bound(gx, ref, mag, "data gradient")
    assert not torch.equal(gx, _exact(run)), "the Winograd path did not run"


# Grouped, channels_last, 28 x 28 output pixels or more, groups outside grouped.cpp's kernels:
# conv2d.cpp's groups_winograd_in_place, each group on conv3x3 reading and writing its channels
# among the others' (pixel strides). N, C, K, H, W, groups, padding: 24- and 48-channel groups,
# 24 -> 40 (Kg != Cg), asymmetric padding; in either weight layout.
GROUPS_IN_PLACE = {
    "g2_cg24": (1, 48, 48, 30, 29, 2, (1, 1, 1, 1)),
    "g4_cg48": (2, 192, 192, 28, 28, 4, (1, 1, 1, 1)),
    "g3_24_to_40_asym": (2, 72, 120, 29, 31, 3, (2, 0, 1, 2)),
}


@pytest.mark.parametrize("w_layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("case", list(GROUPS_IN_PLACE.values()), ids=list(GROUPS_IN_PLACE))
def test_groups_in_place_within_bound(case, w_layout):
    N, C, K, H, W, G, pad = case
    cl = torch.channels_last
    g = torch.Generator().manual_seed(8)
    x = torch.randn(N, C, H, W, generator=g).contiguous(memory_format=cl)
    w = torch.randn(K, C // G, 3, 3, generator=g).contiguous(memory_format=cl if w_layout == "nhwc" else
                                                             torch.contiguous_format)
    b = torch.randn(K, generator=g)
    t, bo, l, r = pad

    def conv64(x, w, b):
        return F.conv2d(F.pad(x, (l, r, t, bo)), w, b, groups=G)

    run = lambda: torch.ops.convx.conv2d(x, w, b, [1, 1], list(pad), [1, 1], G)  # noqa: E731
    y = run()
    assert y.is_contiguous(memory_format=cl) and y.shape[2] * y.shape[3] >= 28 * 28
    _within_bound(y, conv64(x.double(), w.double(), b.double()), conv64(x.double().abs(), w.double().abs(),
                                                                       b.double().abs()), "forward")
    assert not torch.equal(y, _exact(run)), "the Winograd path did not run"
    # the fused epilogue on the whole result (bias, residual, ReLU)
    res = torch.randn(y.shape, generator=g).contiguous(memory_format=cl)
    fused = convx.functional.conv2d(x, w, b, padding=(t, l) if (t, l) == (bo, r) else 0, groups=G, residual=res,
                                    relu=True) if (t, l) == (bo, r) else None
    if fused is not None:
        torch.testing.assert_close(fused, (y + res).clamp_min(0), rtol=0, atol=0)
    gy = torch.randn(y.shape, generator=g).contiguous(memory_format=cl)
    run = lambda: torch.ops.convx.conv2d_backward_input(gy, w, [N, C, H, W], [1, 1], list(pad), [1, 1], G)  # noqa
    gx = run()
    assert gx.is_contiguous(memory_format=cl)

    def grad64(wd, gyd):
        xd = torch.zeros(N, C, H, W, dtype=torch.float64, requires_grad=True)
        return torch.autograd.grad(conv64(xd, wd, None), xd, gyd)[0]

    _within_bound(gx, grad64(w.double(), gy.double()), grad64(w.double().abs(), gy.double().abs()),
                  "data gradient")
    assert not torch.equal(gx, _exact(run)), "the Winograd path did not run"


# (the weight gradient wants 128 output tiles or more a group: more images)
WGRAD_GROUPS_IN_PLACE = {
    "g2_cg24": (2, 48, 48, 30, 29, 2, (1, 1, 1, 1)),
    "g4_cg48": (3, 192, 192, 28, 28, 4, (1, 1, 1, 1)),
    "g3_24_to_40_asym": (2, 72, 120, 29, 31, 3, (2, 0, 1, 2)),
}


@pytest.mark.parametrize("case", list(WGRAD_GROUPS_IN_PLACE.values()), ids=list(WGRAD_GROUPS_IN_PLACE))
def test_groups_in_place_weight_gradient_within_bound(case):
    """The weight gradient of those layers (conv2d.cpp's wgrad_groups_winograd_in_place): each group's
    channels of X and dY read among the others', dW channels_last."""
    N, C, K, H, W, G, pad = case
    cl = torch.channels_last
    g = torch.Generator().manual_seed(9)
    x = torch.randn(N, C, H, W, generator=g).contiguous(memory_format=cl)
    t, bo, l, r = pad
    Ho, Wo = H + t + bo - 2, W + l + r - 2
    gy = torch.randn(N, K, Ho, Wo, generator=g).contiguous(memory_format=cl)
    run = lambda: torch.ops.convx.conv2d_backward_weight(gy, x, [K, C // G, 3, 3], [1, 1], list(pad), [1, 1], G,  # noqa
                                                         False)[0]
    gw = run()
    assert gw.shape == (K, C // G, 3, 3) and gw.is_contiguous(memory_format=cl)

    def wgrad64(xd, gyd):
        w = torch.zeros(K, C // G, 3, 3, dtype=torch.float64, requires_grad=True)
        return torch.autograd.grad(F.conv2d(F.pad(xd, (l, r, t, bo)), w, groups=G), w, gyd)[0]

    ref = wgrad64(x.double(), gy.double())
    mag = wgrad64(x.double().abs(), gy.double().abs()).amax(dim=(2, 3), keepdim=True)
    err = (gw.double() - ref).abs()
    assert (err <= BOUND * mag).all(), f"error {(err / mag).max().item() / U:.1f} * 2^-24 * M, bound 64"
    assert not torch.equal(gw, _exact(run)), "the Winograd path did not run"
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, gw)


# Grouped, 16 or 32 channels a group, channels_last on AVX-512: grouped.cpp's F(2x2, 3x3), forward
# and data gradient. N, C, H, W, channels a group, padding: whole tiles with blocks of tiles crossing
# images, odd sizes (partial edge tiles, a short last block), asymmetric padding (the data
# gradient's 0 to 2), no padding; ResNeXt-50's 7x7 layer's geometry in 32-channel
# groups (its data gradient: the forward of the rotated weight, conv2d.cpp).
GROUPED = {
    "cg16_rx50_l3_like": (2, 64, 14, 14, 16, (1, 1, 1, 1)),
    "cg16_odd_edges": (3, 32, 13, 11, 16, (1, 1, 1, 1)),
    "cg16_asym_pad": (1, 48, 9, 10, 16, (2, 0, 1, 2)),
    "cg16_valid": (2, 32, 7, 9, 16, (0, 0, 0, 0)),
    "cg32_rx50_l4_like": (2, 64, 7, 7, 32, (1, 1, 1, 1)),
    "cg32_odd_asym": (1, 96, 9, 12, 32, (0, 2, 2, 1)),
}


@pytest.mark.skipif(torch.ops.convx.cpu_isa() != "avx512", reason="grouped F(2x2, 3x3) is AVX-512's")
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("case", list(GROUPED.values()), ids=list(GROUPED))
def test_grouped_within_bound(case, layout):
    """NCHW a group of an image at a time through pixel-major copies (forward_nchw_winograd); the data
    gradients as the forward of the rotated weight, but channels_last 16-channel groups'."""
    cl = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    N, C, H, W, Cg, pad = case
    g = torch.Generator().manual_seed(5)
    x32 = torch.randn(N, C, H, W, generator=g).contiguous(memory_format=cl)
    w32 = torch.randn(C, Cg, 3, 3, generator=g).contiguous(memory_format=cl)
    b32 = torch.randn(C, generator=g)
    G = C // Cg
    t, bo, l, r = pad

    def conv64(x, w, b):
        return F.conv2d(F.pad(x, (l, r, t, bo)), w, b, groups=G)

    run = lambda: torch.ops.convx.conv2d(x32, w32, b32, [1, 1], list(pad), [1, 1], G)  # noqa: E731
    y = run()
    assert y.is_contiguous(memory_format=cl)
    ref = conv64(x32.double(), w32.double(), b32.double())
    mag = conv64(x32.double().abs(), w32.double().abs(), b32.double().abs())
    _within_bound(y, ref, mag, "forward")
    assert not torch.equal(y, _exact(run)), "the Winograd path did not run"
    res = torch.randn(ref.shape, generator=g).contiguous(memory_format=cl)  # the fused epilogue
    yf = torch.ops.convx.conv2d_fused(x32, w32, b32, res, [1, 1], list(pad), [1, 1], G, True)
    assert yf.is_contiguous(memory_format=cl)
    _within_bound(yf, (ref + res.double()).clamp_min(0), mag + res.double().abs(), "fused forward")

    gy = torch.randn(ref.shape, generator=g).contiguous(memory_format=cl)
    run = lambda: torch.ops.convx.conv2d_backward_input(gy, w32, [N, C, H, W], [1, 1], list(pad), [1, 1], G)  # noqa
    gx = run()
    assert gx.is_contiguous(memory_format=cl)

    def grad64(wd, gyd):
        xd = x32.double().requires_grad_()
        return torch.autograd.grad(conv64(xd, wd, None), xd, gyd)[0]

    ref = grad64(w32.double(), gy.double())
    _within_bound(gx, ref, grad64(w32.double().abs(), gy.double().abs()), "data gradient")
    assert not torch.equal(gx, _exact(run)), "the Winograd path did not run"


# N, C, H, W, K, padding: weight-gradient geometries (128 or more output tiles, 3 or more a
# row): stream mode (M under 1 MiB, several chunks a stream), shared mode (M larger), edges.
WGRAD_CASES = {
    "16ch_128tiles": (8, 16, 16, 16, 20, (1, 1, 1, 1)),
    # up to 16 output channels (AVX-512's 16 x 16 tile): 16 input channels (V_xi read as the
    # panel itself) and 24 (two panels, the second half empty), edges
    "16_to_16": (8, 16, 18, 17, 16, (1, 1, 1, 1)),
    "24_to_16_edges": (6, 24, 21, 19, 16, (2, 0, 1, 2)),
    "odd_17_33_edges": (3, 17, 30, 26, 33, (2, 0, 1, 2)),
    "streams_64": (4, 64, 48, 48, 64, (1, 1, 1, 1)),
    "shared_96": (2, 96, 40, 40, 96, (1, 1, 1, 1)),
    "valid_32_48": (2, 32, 34, 34, 48, (0, 0, 0, 0)),
    # 128 x 128 or more from 32 tiles (a batch-2 layer @14)
    "c128_32tiles": (2, 128, 14, 14, 144, (1, 1, 1, 1)),
    # C * K over 256 * 256: the block mode, 32 tiles of 7x7 images; over 256 tiles (two chunks)
    "blocks_270_250_7x7": (8, 270, 7, 7, 250, (1, 1, 1, 1)),
    "blocks_264_260_chunks": (4, 264, 8, 132, 260, (1, 1, 1, 1)),
}


def _wgrad_tensors(case, layout, seed=5):
    N, C, H, W, K, pad = case
    g = torch.Generator().manual_seed(seed)
    mf = torch.channels_last if layout != "nchw" else torch.contiguous_format
    x = torch.randn(N, C, H, W, generator=g).contiguous(memory_format=mf)
    Ho, Wo = H + pad[0] + pad[1] - 2, W + pad[2] + pad[3] - 2
    gy = torch.randn(N, K, Ho, Wo, generator=g).contiguous(memory_format=mf)
    return x, gy


def _wgrad64(x, gy, K, pad):
    t, bo, l, r = pad
    w = torch.zeros(K, x.shape[1], 3, 3, dtype=torch.float64, requires_grad=True)
    return torch.autograd.grad(F.conv2d(F.pad(x.double(), (l, r, t, bo)), w), w, gy.double())[0]


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", list(WGRAD_CASES.values()), ids=list(WGRAD_CASES))
def test_weight_gradient_within_bound(case, layout):
    """dW = G^T [sum over tiles (A dY A^T) (.) (B^T d B)] G: each dW element mixes its filter's 9
    taps, so its error is bounded by 64 * 2^-24 * (the largest of those 9 taps' sum |x||dy|)."""
    N, C, H, W, K, pad = case
    x, gy = _wgrad_tensors(case, layout)
    run = lambda: torch.ops.convx.conv2d_backward_weight(gy, x, [K, C, 3, 3], [1, 1], list(pad), [1, 1], 1,  # noqa
                                                         False)[0]
    gw = run()
    assert gw.shape == (K, C, 3, 3) and gw.dtype == torch.float32
    assert gw.is_contiguous(memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format)
    ref = _wgrad64(x, gy, K, pad)
    mag = _wgrad64(x.abs(), gy.abs(), K, pad).amax(dim=(2, 3), keepdim=True)
    err = (gw.double() - ref).abs()
    assert (err <= BOUND * mag).all(), f"error {(err / mag).max().item() / U:.1f} * 2^-24 * M, bound 64"
    assert not torch.equal(gw, _exact(run)), "the Winograd path did not run"


# dilated: Winograd's weight gradient over the batch of X's and dY's phases. N, C, H, W, K,
# dilation, padding (top and left multiples of d)
DILATED_WGRAD = {
    "d2_same": (4, 32, 48, 46, 48, 2, (2, 2, 2, 2)),
    "d3_odd_edges": (2, 17, 50, 52, 33, 3, (3, 1, 0, 5)),
}


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", list(DILATED_WGRAD.values()), ids=list(DILATED_WGRAD))
def test_dilated_weight_gradient_within_bound(case, layout):
    N, C, H, W, K, d, pad = case
    g = torch.Generator().manual_seed(7)
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(N, C, H, W, generator=g).contiguous(memory_format=mf)
    Ho, Wo = H + pad[0] + pad[1] - 2 * d, W + pad[2] + pad[3] - 2 * d
    gy = torch.randn(N, K, Ho, Wo, generator=g).contiguous(memory_format=mf)
    run = lambda: torch.ops.convx.conv2d_backward_weight(gy, x, [K, C, 3, 3], [1, 1], list(pad), [d, d], 1,  # noqa
                                                         False)[0]
    gw = run()
    assert gw.shape == (K, C, 3, 3) and gw.is_contiguous(memory_format=mf)

    def grad64(xx, gg):
        t, bo, l, r = pad
        w = torch.zeros(K, C, 3, 3, dtype=torch.float64, requires_grad=True)
        return torch.autograd.grad(F.conv2d(F.pad(xx.double(), (l, r, t, bo)), w, dilation=d), w, gg.double())[0]

    ref, mag = grad64(x, gy), grad64(x.abs(), gy.abs()).amax(dim=(2, 3), keepdim=True)
    err = (gw.double() - ref).abs()
    assert (err <= BOUND * mag).all(), f"error {(err / mag).max().item() / U:.1f} * 2^-24 * M, bound 64"
    assert not torch.equal(gw, _exact(run)), "the Winograd path did not run"


def test_weight_gradient_few_tiles_takes_the_direct_path():
    """Under 128 tiles or 2 tiles a row (8x8 images); with C * K over 256 * 256, under 32 tiles:
    the direct product."""
    g = torch.Generator().manual_seed(6)
    for N, C, H, K in ((4, 32, 16, 32), (32, 32, 8, 32), (1, 272, 16, 256)):
        x = torch.randn(N, C, H, H, generator=g)
        gy = torch.randn(N, K, H, H, generator=g)
        run = lambda: torch.ops.convx.conv2d_backward_weight(gy, x, [K, C, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1,  # noqa
                                                             False)[0]
        assert torch.equal(run(), _exact(run)), (N, C, H, K)


def test_weight_gradient_independent_of_thread_count():
    old = torch.get_num_threads()
    try:
        for name in ("streams_64", "shared_96", "blocks_270_250_7x7"):
            N, C, H, W, K, pad = WGRAD_CASES[name]
            x, gy = _wgrad_tensors(WGRAD_CASES[name], "nchw")
            args = (gy, x, [K, C, 3, 3], [1, 1], list(pad), [1, 1], 1, False)
            torch.set_num_threads(1)
            g1 = torch.ops.convx.conv2d_backward_weight(*args)[0]
            torch.set_num_threads(2)
            g2 = torch.ops.convx.conv2d_backward_weight(*args)[0]
            assert torch.equal(g1, g2), name
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_transposed_stride1_with_bias(layout):
    """conv_transpose2d at stride 1 is the data gradient plus the bias: Winograd too."""
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 40, 15, 17, generator=g).contiguous(memory_format=mf)
    w = torch.randn(40, 24, 3, 3, generator=g)
    b = torch.randn(24, generator=g)
    run = lambda: convx.functional.conv_transpose2d(x, w, b, stride=1, padding=1)  # noqa: E731
    y = run()
    ref = F.conv_transpose2d(x.double(), w.double(), b.double(), stride=1, padding=1)
    mag = F.conv_transpose2d(x.double().abs(), w.double().abs(), b.double().abs(), stride=1, padding=1)
    _within_bound(y, ref, mag, "conv_transpose2d")
    assert not torch.equal(y, _exact(run))


# A 4x4 stride-2 transposed convolution with padding 1 (the data gradient of that convolution) on
# Winograd as one 3x3 convolution with its four output phases as channels (conv2d.cpp's
# phase_winograd_data_grad; 400 input pixels or more): partial tiles, odd channel counts, bias or
# none, each layout of input and weight (channels_last with a multiple of 16 channels out: the
# output transform writes the phases in place; else through a copy).
PHASE_CASES = {
    "64_to_48_24x26": (2, 64, 24, 26, 48, True),
    "33_to_17_25x30": (1, 33, 25, 30, 17, False),
    "20_to_40_32x32": (2, 20, 32, 32, 40, True),
    "48_to_32_20x20": (1, 48, 20, 20, 32, False),
    # 16 phase channels (4 out): AVX-512's 16-column tile, partial row panels
    "24_to_4_26x22": (2, 24, 26, 22, 4, True),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(PHASE_CASES.values()), ids=list(PHASE_CASES))
def test_transposed_4x4_stride2_within_bound(case, layout):
    N, Cin, H, W, Cout, bias = case
    g = torch.Generator().manual_seed(11)
    cl, dense = torch.channels_last, torch.contiguous_format
    x = torch.randn(N, Cin, H, W, generator=g).contiguous(memory_format=cl if layout in ("nhwc", "x_nhwc_w_nchw") else dense)
    w = torch.randn(Cin, Cout, 4, 4, generator=g).contiguous(memory_format=cl if layout in ("nhwc", "x_nchw_w_nhwc") else dense)
    b = torch.randn(Cout, generator=g) if bias else None
    run = lambda: convx.functional.conv_transpose2d(x, w, b, stride=2, padding=1)  # noqa: E731
    with convx.backends.cpu.flags(winograd_phases=True):  # (whatever this machine's choice)
        y = run()
    b64 = None if b is None else b.double()
    ref = F.conv_transpose2d(x.double(), w.double(), b64, stride=2, padding=1)
    mag = F.conv_transpose2d(x.double().abs(), w.double().abs(), None if b is None else b64.abs(), stride=2, padding=1)
    torch_y = F.conv_transpose2d(x, w, b, stride=2, padding=1)
    assert y.shape == ref.shape == (N, Cout, 2 * H, 2 * W)
    for mf in (dense, cl):
        assert y.is_contiguous(memory_format=mf) == torch_y.is_contiguous(memory_format=mf)
    # a 4 x 4 tile of the 3x3 convolution is 8 x 8 output pixels: the scale within 7 of each
    # (M counts an output pixel's own 4 taps, where the tile's rounding comes from all four phases'
    # 16: measured up to 67 * 2^-24 * M on these cases, bounded by twice the 3x3 layers' 64)
    mag = F.max_pool2d(mag, 15, stride=1, padding=7)
    err = (y.double() - ref).abs()
    assert (err <= 2 * BOUND * mag + 1e-12).all(), f"error {(err / mag).max().item() / U:.1f} * 2^-24 * M"
    assert not torch.equal(y, _exact(run)), "the Winograd path did not run"
    # the same product as conv2d's data gradient (a 4x4 stride-2 layer's backward), through autograd
    xx = torch.randn(N, Cout, 2 * H, 2 * W, generator=g).contiguous(memory_format=cl if layout == "nhwc" else dense)
    xx.requires_grad_()
    yy = convx.functional.conv2d(xx, w, None, stride=2, padding=1)  # conv2d's weight [K = Cin][C = Cout][4][4]
    with convx.backends.cpu.flags(winograd_phases=True):
        gx, = torch.autograd.grad(yy, xx, x)
    torch.testing.assert_close(gx, y if b is None else y - b.view(1, -1, 1, 1), rtol=0, atol=1e-5)


def test_transposed_4x4_stride2_phases_switch():
    """winograd_phases: True takes the phases, False the GEMM path (exact: the same bits as
    Winograd off), None this machine's choice (one of the two); flags() restores it."""
    g = torch.Generator().manual_seed(13)
    x = torch.randn(2, 32, 24, 24, generator=g)
    w = torch.randn(32, 48, 4, 4, generator=g)
    run = lambda: convx.functional.conv_transpose2d(x, w, None, stride=2, padding=1)  # noqa: E731
    exact = _exact(run)
    assert convx.backends.cpu.winograd_phases is None  # the default
    with convx.backends.cpu.flags(winograd_phases=False):
        assert convx.backends.cpu.winograd_phases is False
        assert torch.equal(run(), exact)
    with convx.backends.cpu.flags(winograd_phases=True):
        assert torch.ops.convx.cpu_winograd_phases() == 1
        y = run()
        assert not torch.equal(y, exact)
        torch.testing.assert_close(y, exact, rtol=1e-3, atol=1e-3)  # (Winograd: a few 1e-6 of the scale)
    assert convx.backends.cpu.winograd_phases is None
    assert any(torch.equal(run(), ref) for ref in (exact, y))
    with convx.backends.cpu.flags(winograd=False, winograd_phases=True):  # Winograd off wins
        assert torch.equal(run(), exact)
    assert "winograd_phases=None" in repr(convx.backends.cpu)


def test_transposed_4x4_stride2_small_images_stay_exact():
    """Under 400 input pixels (and with output_padding, or in float64) the GEMM path."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 32, 19, 21, generator=g)
    w = torch.randn(32, 24, 4, 4, generator=g)
    for kw in ({}, {"output_padding": 1}):
        run = lambda: convx.functional.conv_transpose2d(x, w, None, stride=2, padding=1, **kw)  # noqa: E731
        assert torch.equal(run(), _exact(run))
    x = torch.randn(1, 16, 24, 24, generator=g)
    w = torch.randn(16, 8, 4, 4, generator=g)
    run = lambda: convx.functional.conv_transpose2d(x, w, None, stride=2, padding=1, output_padding=1)  # noqa
    assert torch.equal(run(), _exact(run))
    y64 = convx.functional.conv_transpose2d(x.double(), w.double(), None, stride=2, padding=1)
    torch.testing.assert_close(y64, F.conv_transpose2d(x.double(), w.double(), None, stride=2, padding=1),
                               rtol=1e-12, atol=1e-12)


def test_module_training_step_matches_torch():
    """A convx.Conv2d forward + backward on Winograd-sized layers, against torch.nn.Conv2d."""
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(64, 64, 3, padding=1)
    mine = convx.Conv2d(64, 64, 3, padding=1)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(2, 64, 20, 20)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = mine(xa), ref(xb)
    scale = yb.abs().max().item()
    torch.testing.assert_close(ya, yb, atol=1e-5 * scale, rtol=0)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5 * xb.grad.abs().max().item(), rtol=0)
    torch.testing.assert_close(mine.weight.grad, ref.weight.grad, atol=1e-5 * ref.weight.grad.abs().max().item(),
                               rtol=0)


def test_float64_and_other_geometries_stay_exact():
    """float64, strides, some dilations, groups (but those of 16 or 32 channels: test_grouped_within_bound),
    few channels and few tiles never take Winograd: their results are bitwise those of the exact path."""
    g = torch.Generator().manual_seed(4)
    cases = [
        (torch.randn(2, 32, 16, 16, generator=g, dtype=torch.float64), torch.randn(32, 32, 3, 3, dtype=torch.float64),
         dict(padding=1)),
        (torch.randn(2, 32, 16, 16, generator=g), torch.randn(32, 32, 3, 3, generator=g), dict(padding=1, stride=2)),
        # dilation with padding not a multiple of it (a multiple: test_dilated_forward_within_bound)
        (torch.randn(2, 32, 16, 16, generator=g), torch.randn(32, 32, 3, 3, generator=g), dict(padding=1, dilation=2)),
        (torch.randn(2, 32, 16, 16, generator=g), torch.randn(32, 8, 3, 3, generator=g), dict(padding=1, groups=4)),
        (torch.randn(2, 8, 16, 16, generator=g), torch.randn(32, 8, 3, 3, generator=g), dict(padding=1)),  # C < 16
        (torch.randn(1, 64, 4, 4, generator=g), torch.randn(64, 64, 3, 3, generator=g), dict(padding=1)),  # 1 tile
    ]
    for x, w, kw in cases:
        y = convx.functional.conv2d(x, w, **kw)
        assert torch.equal(y, _exact(lambda: convx.functional.conv2d(x, w, **kw))), kw


def test_switch():
    assert convx.backends.cpu.winograd is True  # the default
    with convx.backends.cpu.flags(winograd=False):
        assert convx.backends.cpu.winograd is False
        assert torch.ops.convx.cpu_winograd() is False
    assert convx.backends.cpu.winograd is True
    convx.backends.cpu.winograd = False
    try:
        assert torch.ops.convx.cpu_winograd() is False
    finally:
        convx.backends.cpu.winograd = True
    assert "winograd=True" in repr(convx.backends.cpu)


def test_environment_variable_turns_it_off():
    code = "import convx; print(convx.backends.cpu.winograd)"
    env = dict(os.environ, CONVX_CPU_WINOGRAD="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]


# Under 24 tiles the weight transform must pay for itself: layers with few tiles stay on the exact
# path when their channels are few (under 32 in, 64 out) or their weights large for the tiles (C x K
# over tiles x 128 x 1024), bit for bit; under 64 output channels it takes 64 tiles.
@pytest.mark.parametrize("shape", [(1, 16, 8, 8, 64), (1, 64, 8, 8, 32), (1, 384, 4, 4, 384), (2, 512, 4, 4, 384),
                                   (2, 128, 14, 14, 32)],
                         ids=["16_channels", "32_out", "one_tile_384", "two_tiles_512x384", "32_out_32_tiles"])
def test_few_tiles_stay_exact(shape):
    N, C, H, W, K = shape
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(N, C, H, W, generator=g), torch.randn(K, C, 3, 3, generator=g)
    run = lambda: torch.ops.convx.conv2d(x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1)  # noqa: E731
    assert torch.equal(run(), _exact(run))


@pytest.mark.parametrize("case", ["resnet_l2", "gnet_4a_128_tiles"])
def test_independent_of_thread_count(case):
    """The same bits on 1, 2 and 3 threads, whose blocks of tiles (and, on AVX-512, row tiles of 8
    or 12) differ."""
    x, w, b, x32, w32, b32, pad = _tensors(CASES[case], "nchw")
    old = torch.get_num_threads()
    ys = []
    try:
        for nt in (1, 2, 3):
            torch.set_num_threads(nt)
            ys.append(torch.ops.convx.conv2d(x32, w32, b32, [1, 1], list(pad), [1, 1], 1))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(ys[0], y) for y in ys[1:])


def test_half_inputs_computed_in_float32():
    """float16 / bfloat16 CPU convolutions compute in float32 (Winograd included) and round once:
    their error against float64 is at most about torch's own."""
    x, w, b, x32, w32, b32, pad = _tensors(CASES["16ch"], "nchw")
    for dt in (torch.float16, torch.bfloat16):
        xh, wh, bh = x32.to(dt), w32.to(dt), b32.to(dt)
        y = convx.functional.conv2d(xh, wh, bh, padding=1)
        assert y.dtype == dt
        ref = F.conv2d(xh.double(), wh.double(), bh.double(), padding=1)
        assert_close_to_reference(y, F.conv2d(xh, wh, bh, padding=1), ref)


def test_opcheck_on_a_winograd_shape():
    x = torch.randn(2, 16, 16, 16, requires_grad=True)
    w = torch.randn(16, 16, 3, 3, requires_grad=True)
    torch.library.opcheck(torch.ops.convx.conv2d.default, (x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


_CHILD = r"""
import sys, torch, convx, torch.nn.functional as F
assert torch.ops.convx.cpu_isa() == sys.argv[1], torch.ops.convx.cpu_isa()
g = torch.Generator().manual_seed(0)
for mf in (torch.contiguous_format, torch.channels_last):
    x = torch.randn(4, 20, 13, 15, generator=g).contiguous(memory_format=mf)
    w = torch.randn(36, 20, 3, 3, generator=g)
    b = torch.randn(36, generator=g)
    y = convx.functional.conv2d(x, w, b, padding=1)
    ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    mag = F.conv2d(x.double().abs(), w.double().abs(), b.double().abs(), padding=1)
    assert ((y.double() - ref).abs() <= 64 * 2.0 ** -24 * F.max_pool2d(mag, 7, 1, 3)).all(), "forward"
    gy = torch.randn(ref.shape, generator=g).contiguous(memory_format=mf)
    gx = torch.ops.convx.conv2d_backward_input(gy, w, list(x.shape), [1, 1], [1, 1, 1, 1], [1, 1], 1)
    xd = x.double().requires_grad_()
    gref, = torch.autograd.grad(F.conv2d(xd, w.double(), None, padding=1), xd, gy.double())
    gmag, = torch.autograd.grad(F.conv2d(xd, w.double().abs(), None, padding=1), xd, gy.double().abs())
    assert ((gx.double() - gref).abs() <= 64 * 2.0 ** -24 * F.max_pool2d(gmag, 7, 1, 3)).all(), "data gradient"
    with convx.backends.cpu.flags(winograd=False):
        assert not torch.equal(y, convx.functional.conv2d(x, w, b, padding=1))
    # the weight gradient (128 tiles)
    x = torch.randn(8, 20, 16, 15, generator=g).contiguous(memory_format=mf)
    gy = torch.randn(8, 36, 16, 15, generator=g).contiguous(memory_format=mf)
    gw = torch.ops.convx.conv2d_backward_weight(gy, x, [36, 20, 3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1, False)[0]
    wd = torch.zeros(36, 20, 3, 3, dtype=torch.float64, requires_grad=True)
    wref, = torch.autograd.grad(F.conv2d(x.double(), wd, padding=1), wd, gy.double())
    wmag, = torch.autograd.grad(F.conv2d(x.double().abs(), wd, padding=1), wd, gy.double().abs())
    assert ((gw.double() - wref).abs() <= 64 * 2.0 ** -24 * wmag.amax(dim=(2, 3), keepdim=True)).all(), "wgrad"
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_narrower_builds(isa):
    """The AVX2 and baseline builds of the transforms (and the GEMM tiles they use), forced on this machine."""
    run_with_isa(_CHILD, isa)
