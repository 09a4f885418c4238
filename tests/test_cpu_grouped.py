"""Grouped convolutions with few channels a group on the CPU (csrc/cpu/grouped.cpp): float32,
Cg == Kg in {2, 4, 8, 16}; channels_last forward and weight gradient at any stride, data gradient
at stride 1 or, at dilation 1, one stride-1 job a phase of dX; NCHW forward at any stride (padded planes in stride phases, a block of rows a task),
data gradient (stride 1, or a stride-1 convolution a phase at dilation 1) and weight gradient (up to
16 channels a group, any stride) in NCHW, also 32 channels a group in either layout; the rest in
channels_last. Groups of whole 32-column register tiles (or 48 on AVX-512, or partial panels of
other multiples of 8 over 16) copied out a group at a time and run as one GEMM a group
(conv2d.cpp's regrouped paths); channels_last strided groups of 48 channels or more on 28 x 28
output pixels or more, one GEMM a group over the interleaved channels; in channels_last on AVX-512, 32-channel groups
with up to 64 output pixels on the blocked copy, two vectors a group. Against float64, both layouts, and every ISA build."""
import pytest
import torch
import torch.nn.functional as F

import convx  # noqa: F401
from test_cpu_gemm import run_with_isa

# N, C, H, W, groups, (R, S), stride, (top, bottom, left, right) padding, dilation, bias
CASES = {
    "resnext_cg4": (2, 128, 14, 13, 32, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "cg2": (2, 32, 9, 20, 16, (3, 3), 1, (1, 1, 1, 1), 1, False),
    "cg8": (1, 64, 11, 11, 8, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "cg16": (2, 64, 7, 9, 4, (3, 3), 1, (1, 1, 1, 1), 1, False),
    "stride2": (2, 64, 15, 15, 16, (3, 3), 2, (1, 1, 1, 1), 1, True),
    "asym_dil_5x3": (1, 32, 12, 17, 8, (5, 3), 1, (3, 1, 0, 2), 2, True),
    "wide_rows": (1, 64, 5, 40, 16, (3, 3), 1, (1, 1, 1, 1), 1, False),
    # NCHW: two tasks split into blocks of rows (the last one short); padding past the filter
    # (the data gradient's padding negative); a 1x1 filter; a 5x5 one on 14-column rows
    "row_blocks": (1, 32, 23, 19, 2, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "pad_past_filter": (2, 32, 9, 10, 8, (3, 3), 1, (2, 2, 3, 2), 1, True),
    "one_by_one": (2, 16, 6, 7, 4, (1, 1), 1, (0, 0, 0, 0), 1, True),
    "5x5_14": (1, 64, 14, 14, 8, (5, 5), 1, (2, 2, 2, 2), 1, False),
    # 32 channels a group: the NCHW kernel in both layouts at stride 1 (the GEMMs at stride 2)
    "cg32": (2, 64, 7, 9, 2, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "cg32_stride2": (1, 64, 9, 9, 2, (3, 3), 2, (1, 1, 1, 1), 1, False),
    # NCHW forwards at stride 2 and 3 (phase planes), with dilation and asymmetric padding
    "stride2_dil_asym": (1, 32, 13, 16, 8, (5, 3), 2, (2, 1, 0, 3), 2, True),
    "stride3": (2, 16, 11, 14, 4, (3, 3), 3, (1, 1, 1, 1), 1, False),
    # a data gradient at stride 2 with phases no tap reaches (a 1x1 filter), and one with odd padding
    "1x1_stride2": (2, 16, 7, 8, 4, (1, 1), 2, (0, 0, 0, 0), 1, True),
    "stride2_pad_asym": (1, 32, 10, 13, 4, (3, 3), 2, (0, 2, 2, 1), 1, True),
    # 32 and 64 channels a group (whole 32-column tiles): each group copied out, then a GEMM a group
    # (conv2d.cpp's regrouped forward: channels_last, and NCHW up to 64 output pixels; the weight
    # gradient likewise under 32 x 32 output pixels)
    "cg32_regrouped_14": (2, 64, 14, 12, 2, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "cg64_regrouped": (1, 128, 6, 7, 2, (3, 3), 1, (1, 1, 1, 1), 1, False),
    "cg32_regrouped_dil_asym_s2": (1, 96, 13, 11, 3, (3, 3), 2, (2, 0, 1, 3), 2, True),
    "cg32_regrouped_1x1": (2, 64, 5, 5, 2, (1, 1), 1, (0, 0, 0, 0), 1, True),
    # 48 channels a group (whole 8 x 48 tiles on AVX-512): regrouped in either layout at any size;
    # other multiples of 8 over 16 (partial panels): in channels_last, and in NCHW up to 256 output
    # pixels (above, 18 x 17 here, the per-group GEMMs)
    "cg48_regrouped": (2, 96, 9, 10, 2, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "cg48_regrouped_s2": (1, 192, 30, 29, 4, (3, 3), 2, (1, 1, 1, 1), 1, False),
    "cg24_regrouped_partial": (2, 96, 12, 11, 4, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "cg24_nchw_gemms": (1, 48, 18, 17, 2, (3, 3), 1, (1, 1, 1, 1), 1, False),
    "cg80_regrouped_partial": (1, 160, 7, 8, 2, (3, 3), 1, (0, 2, 1, 1), 1, True),
    # weight gradients at stride 1 a group at a time as one-group layers on the groups' copies
    # (24 and 80 channels above; 32 on 33 x 32 pixels, past the regrouped tiles; 1x1 groups of 24)
    "cg32_groups_dense_33x32": (1, 64, 33, 32, 2, (3, 3), 1, (1, 1, 1, 1), 1, False),
    "cg24_groups_dense_1x1": (2, 96, 6, 7, 4, (1, 1), 1, (0, 0, 0, 0), 1, True),
    # forward and data gradient a group at a time as one-group layers (groups of no grouped.cpp
    # kernel, a spatial kernel, >= 28 x 28 output pixels): Winograd's 3x3 at stride 1, stride 2
    "cg48_as_dense_30x28": (1, 96, 30, 28, 2, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "cg24_as_dense_s2": (1, 48, 58, 57, 2, (3, 3), 2, (1, 1, 1, 1), 1, False),
    # the data gradient as the regrouped forward of dY with the rotated weight: dilation and
    # asymmetric padding (within d * (R - 1)) at stride 1
    "cg32_regrouped_dil_asym": (1, 64, 11, 12, 2, (3, 3), 1, (2, 1, 0, 3), 2, True),
    # stride 2 on rows wide enough for the NCHW phase fill's vector de-interleave (> 2 vectors)
    "stride2_wide": (1, 32, 6, 45, 8, (3, 3), 2, (1, 1, 1, 1), 1, True),
    # 20 channels (not whole vectors): channels_last read and written in place by the NCHW kernel
    "k20_in_place": (2, 20, 6, 7, 5, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "k20_in_place_s2": (2, 20, 9, 8, 5, (3, 3), 2, (1, 1, 1, 1), 1, True),
    # channels_last, a group as wide as the vector (16 on AVX-512, 8 on AVX2): the input copied into
    # zero-padded blocks of a vector's channels; blocks of 14 output pixels with the last one
    # overlapping (31 columns), 8, 4 and 1 on narrower rows; stride 2 with dilation and asymmetric
    # padding; a data gradient whose padding passes the filter (negative after the copy's padding)
    "cg16_blocked_wide": (1, 64, 6, 31, 4, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "cg16_blocked_s2_dil": (1, 32, 13, 33, 2, (3, 3), 2, (2, 1, 0, 3), 2, True),
    "cg16_blocked_pad_past": (2, 32, 9, 16, 2, (3, 3), 1, (2, 2, 3, 2), 1, True),
    "cg16_blocked_narrow": (2, 32, 4, 5, 2, (3, 3), 1, (1, 1, 1, 1), 1, False),
    "cg16_blocked_3_cols": (1, 32, 5, 3, 2, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "cg8_blocked_avx2_wide": (1, 32, 5, 23, 4, (3, 3), 1, (1, 1, 1, 1), 1, False),
    # channels_last data gradients at a stride, one job a phase: 16-channel groups at stride 2
    # with asymmetric padding (a phase's padding negative), 8-channel groups with a 2 x 2 filter
    # at stride 3 (phases no tap reaches: the bias alone)
    "cg16_s2_pad_past": (2, 32, 11, 14, 2, (3, 3), 2, (2, 1, 0, 3), 1, True),
    "cg8_2x2_s3": (1, 32, 10, 11, 4, (2, 2), 3, (0, 1, 1, 0), 1, True),
    # channels_last 32-channel groups with up to 64 output pixels (AVX-512: two vectors a group on
    # the blocked copy): rows of 13 (blocks of 12, the last overlapping), 14 (sevens), 2 (one pixel
    # at a time); a 1 x 3 filter at stride 2
    "cg32_wide_13": (2, 64, 4, 13, 2, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "cg32_wide_14": (1, 96, 4, 14, 3, (3, 3), 1, (1, 1, 1, 1), 1, False),
    "cg32_wide_2": (2, 64, 3, 2, 2, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "cg32_wide_1x3_s2": (1, 64, 9, 15, 2, (1, 3), 2, (0, 0, 1, 1), 1, True),
    # channels_last groups narrower than the vector with enough taps (KG * R * S >= 64 a stride
    # step; AVX-512): the blocked copy with interleaved lanes, each channel's values for the
    # vector's groups one broadcast block: 2 channels a group on a 7x7 filter (blocks of 8 floats),
    # 4 on a 5x5 (blocks of 4) with dilation, 8 on a 3x3 (pairs) with padding past the filter
    # (the data gradient's negative: edge tests on the copy)
    "cg2_ilv_7x7": (2, 32, 9, 17, 16, (7, 7), 1, (3, 3, 3, 3), 1, True),
    "cg4_ilv_5x5_dil": (1, 32, 13, 16, 8, (5, 5), 1, (4, 3, 2, 5), 2, False),
    "cg8_ilv_pad_past": (2, 32, 9, 16, 4, (3, 3), 1, (2, 2, 3, 2), 1, True),
    # channels_last strided groups of 48 channels or more on 28 x 28 output pixels or more: the
    # product on the fly over the interleaved groups (conv2d.cpp's grouped_strided_on_the_fly);
    # NCHW a group at a time
    "cg48_s2_on_the_fly": (2, 192, 57, 56, 4, (3, 3), 2, (1, 1, 1, 1), 1, True),
    "cg64_s2_asym_pad": (1, 128, 60, 58, 2, (3, 3), 2, (0, 1, 2, 1), 1, False),
    "cg56_5x5_s2_dil": (1, 112, 66, 63, 2, (5, 5), 2, (2, 2, 3, 1), 2, True),
}


def _run(case, layout, seed=0):
    N, C, H, W, G, (R, S), st, pad, dil, bias = case
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g).contiguous(memory_format=mf)
    w = torch.randn(C, C // G, R, S, generator=g)
    b = torch.randn(C, generator=g) if bias else None
    y = torch.ops.convx.conv2d(x, w, b, [st, st], list(pad), [dil, dil], G)
    t, bo, l, r = pad
    xd = F.pad(x.double(), (l, r, t, bo)).requires_grad_()
    ref = F.conv2d(xd, w.double(), None if b is None else b.double(), st, 0, dil, G)
    mag = F.conv2d(xd.detach().abs(), w.double().abs(), None if b is None else b.double().abs(), st, 0, dil, G)
    return x, w, b, y, ref, mag, xd


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_forward_and_data_grad(case, layout):
    N, C, H, W, G, (R, S), st, pad, dil, bias = case
    x, w, b, y, ref, mag, xd = _run(case, layout)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=(
        torch.channels_last if layout == "nhwc" else torch.contiguous_format))
    u = 2.0 ** -24
    taps = (C // G) * R * S + 1
    assert ((y.double() - ref).abs() <= 2 * taps * u * mag + 1e-30).all()
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format)
    gx = torch.ops.convx.conv2d_backward_input(gy, w, [N, C, H, W], [st, st], list(pad), [dil, dil], G)
    t, bo, l, r = pad
    gref = torch.autograd.grad(ref, xd, gy.double())[0][:, :, t:t + H, l:l + W]
    xa = xd.detach().abs().requires_grad_()
    gmag = torch.autograd.grad(F.conv2d(xa, w.double().abs(), None, st, 0, dil, G), xa, gy.double().abs())[0]
    gmag = gmag[:, :, t:t + H, l:l + W]
    assert gx.shape == gref.shape
    assert ((gx.double() - gref).abs() <= 2 * taps * u * gmag + 1e-30).all()


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_weight_grad(case, layout):
    """dW sums N * Ho * Wo products a weight: bounded by that many roundings of the sum of their
    magnitudes (any summation order), against float64."""
    N, C, H, W, G, (R, S), st, pad, dil, bias = case
    x, w, b, y, ref, mag, xd = _run(case, layout)
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).contiguous(memory_format=mf)
    gw, gb = torch.ops.convx.conv2d_backward_weight(gy, x, list(w.shape), [st, st], list(pad), [dil, dil], G, bias)
    wd = w.double().requires_grad_()
    t, bo, l, r = pad
    xp = F.pad(x.double(), (l, r, t, bo))
    gref, = torch.autograd.grad(F.conv2d(xp, wd, None, st, 0, dil, G), wd, gy.double())
    wa = w.double().abs().requires_grad_()
    gmag, = torch.autograd.grad(F.conv2d(xp.abs(), wa, None, st, 0, dil, G), wa, gy.double().abs())
    assert gw.shape == w.shape and gw.is_contiguous(memory_format=mf)
    n = N * y.shape[2] * y.shape[3]
    assert ((gw.double() - gref).abs() <= n * 2.0 ** -24 * gmag + 1e-30).all()
    assert (gmag > 0).any()  # the bound is not vacuous
    if bias:
        torch.testing.assert_close(gb.double(), gy.double().sum((0, 2, 3)), rtol=1e-5, atol=1e-4)


def test_autograd_through_module():
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(64, 64, 3, padding=1, groups=16)
    mine = convx.Conv2d(64, 64, 3, padding=1, groups=16)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(2, 64, 10, 10).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = mine(xa), ref(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mine.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-3)


_CHILD = r"""
import sys, torch, convx, torch.nn.functional as F
assert torch.ops.convx.cpu_isa() == sys.argv[1], torch.ops.convx.cpu_isa()
g = torch.Generator().manual_seed(0)
for cg in (2, 4, 8, 16, 32):
    C = 64
    x = torch.randn(2, C, 9, 11, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(C, cg, 3, 3, generator=g)
    y = convx.functional.conv2d(x, w, None, 1, 1, 1, C // cg)
    ref = F.conv2d(x.double(), w.double(), None, 1, 1, 1, C // cg)
    assert (y.double() - ref).abs().max() < 1e-4 * ref.abs().max(), cg
    gy = torch.randn(y.shape, generator=g).contiguous(memory_format=torch.channels_last)
    gx = torch.ops.convx.conv2d_backward_input(gy, w, list(x.shape), [1, 1], [1, 1, 1, 1], [1, 1], C // cg)
    xd = x.double().requires_grad_()
    gr, = torch.autograd.grad(F.conv2d(xd, w.double(), None, 1, 1, 1, C // cg), xd, gy.double())
    assert (gx.double() - gr).abs().max() < 1e-4 * gr.abs().max(), cg
    # channels_last at stride 2: one job a phase of dX (dY read in place, dX written at stride)
    gy = torch.randn(2, C, 5, 6, generator=g).contiguous(memory_format=torch.channels_last)
    gx = torch.ops.convx.conv2d_backward_input(gy, w, list(x.shape), [2, 2], [1, 1, 1, 1], [1, 1], C // cg)
    gr, = torch.autograd.grad(F.conv2d(xd, w.double(), None, 2, 1, 1, C // cg), xd, gy.double())
    assert (gx.double() - gr).abs().max() < 1e-4 * gr.abs().max(), (cg, 2)
    for st in (1, 2):  # the weight gradient at both strides
        gy = torch.randn(F.conv2d(x, w, None, st, 1, 1, C // cg).shape, generator=g)
        gw = torch.ops.convx.conv2d_backward_weight(gy, x, list(w.shape), [st, st], [1, 1, 1, 1], [1, 1],
                                                    C // cg, False)[0]
        wd = w.double().requires_grad_()
        gr, = torch.autograd.grad(F.conv2d(x.double(), wd, None, st, 1, 1, C // cg), wd, gy.double())
        assert (gw.double() - gr).abs().max() < 1e-4 * gr.abs().max(), (cg, st)
    for st in (1, 2):  # NCHW: its own kernel at stride 1
        xn = x.contiguous()
        y = convx.functional.conv2d(xn, w, None, st, 1, 1, C // cg)
        ref = F.conv2d(xn.double(), w.double(), None, st, 1, 1, C // cg)
        assert y.is_contiguous() and (y.double() - ref).abs().max() < 1e-4 * ref.abs().max(), (cg, st)
    gy = torch.randn(2, C, 9, 11, generator=g)
    gx = torch.ops.convx.conv2d_backward_input(gy, w, list(x.shape), [1, 1], [1, 1, 1, 1], [1, 1], C // cg)
    xd = x.contiguous().double().requires_grad_()
    gr, = torch.autograd.grad(F.conv2d(xd, w.double(), None, 1, 1, 1, C // cg), xd, gy.double())
    assert gx.is_contiguous() and (gx.double() - gr).abs().max() < 1e-4 * gr.abs().max(), cg
    for S, st in ((3, 1), (2, 1), (3, 2)):  # the NCHW weight gradient: its 3x3 block, the general one, phases
        xn = torch.randn(3, C, 8, 10, generator=g)
        wn = torch.randn(C, cg, 3, S, generator=g)
        gy = torch.randn(F.conv2d(xn, wn, None, st, 1, 1, C // cg).shape, generator=g)
        gw = torch.ops.convx.conv2d_backward_weight(gy, xn, list(wn.shape), [st, st], [1, 1, 1, 1], [1, 1],
                                                    C // cg, False)[0]
        wd = wn.double().requires_grad_()
        gr, = torch.autograd.grad(F.conv2d(xn.double(), wd, None, st, 1, 1, C // cg), wd, gy.double())
        assert gw.is_contiguous() and (gw.double() - gr).abs().max() < 1e-4 * gr.abs().max(), (cg, S, st)
        gx = torch.ops.convx.conv2d_backward_input(gy, wn, list(xn.shape), [st, st], [1, 1, 1, 1], [1, 1], C // cg)
        xd = xn.double().requires_grad_()
        gr, = torch.autograd.grad(F.conv2d(xd, wn.double(), None, st, 1, 1, C // cg), xd, gy.double())
        assert (gx.double() - gr).abs().max() < 1e-4 * gr.abs().max(), (cg, S, st)
for cg in (4, 8):  # NCHW stride 2 on 45-column rows: the phase fill's de-interleaving shuffles
    xw = torch.randn(1, 32, 5, 45, generator=g)
    ww = torch.randn(32, cg, 3, 3, generator=g)
    y = convx.functional.conv2d(xw, ww, None, 2, 1, 1, 32 // cg)
    ref = F.conv2d(xw.double(), ww.double(), None, 2, 1, 1, 32 // cg)
    assert (y.double() - ref).abs().max() < 1e-4 * ref.abs().max(), cg
    gy = torch.randn(y.shape, generator=g)
    gw = torch.ops.convx.conv2d_backward_weight(gy, xw, list(ww.shape), [2, 2], [1, 1, 1, 1], [1, 1], 32 // cg,
                                                False)[0]
    wd = ww.double().requires_grad_()
    gr, = torch.autograd.grad(F.conv2d(xw.double(), wd, None, 2, 1, 1, 32 // cg), wd, gy.double())
    assert (gw.double() - gr).abs().max() < 1e-4 * gr.abs().max(), cg
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_narrower_builds(isa):
    """The AVX2 and baseline builds of the grouped kernels, forced on this machine."""
    run_with_isa(_CHILD, isa)


# (input, weight, groups, whether the weight gradient's bits are fixed in channels_last too)
THREAD_CASES = {
    # NCHW: blocks of rows between threads; its weight gradient's chunks of images fixed by the shape
    "cg8": ((1, 32, 23, 19), (32, 8, 3, 3), 4, False),
    # regrouped (32-channel groups): the forward's units of group and block of pixels, blocks chosen
    # from the thread count; the weight gradient's in-place tiles
    "regrouped_cg32": ((3, 64, 7, 8), (64, 32, 3, 3), 2, True),
    # channels_last 16-channel groups on AVX-512: units of (vector of channels, image, output row)
    "blocked_cg16": ((3, 32, 9, 17), (32, 16, 3, 3), 2, False),
    # 24-channel groups: the forward's regrouped partial panels; the weight gradient a group at a
    # time on the one-group paths
    "groups_dense_cg24": ((2, 96, 12, 11), (96, 24, 3, 3), 4, True),
    # 48-channel groups at stride 2 on 28 x 28 output pixels (channels_last: on the fly)
    "strided_cg48": ((1, 96, 56, 57), (96, 48, 3, 3), 2, True),
}


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", list(THREAD_CASES.values()), ids=list(THREAD_CASES))
def test_thread_count(case, layout):
    """1 vs 2 threads: the same bits, forward, data gradient and weight gradient."""
    xs, ws, groups, wgrad_cl = case
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    g = torch.Generator().manual_seed(3)
    x = torch.randn(xs, generator=g).contiguous(memory_format=mf)
    w = torch.randn(ws, generator=g)
    gy = torch.randn(xs[0], ws[0], *xs[2:], generator=g).contiguous(memory_format=mf)
    st = 2 if xs[2] > 32 else 1
    gy = gy[:, :, ::st, ::st].contiguous(memory_format=mf)
    args = ([st, st], [1, 1, 1, 1], [1, 1], groups)
    old = torch.get_num_threads()
    got = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            got.append((torch.ops.convx.conv2d(x, w, None, *args),
                        torch.ops.convx.conv2d_backward_input(gy, w, list(x.shape), *args)) +
                       ((torch.ops.convx.conv2d_backward_weight(gy, x, list(w.shape), *args, False)[0],)
                        if layout == "nchw" or wgrad_cl else ()))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*got):
        assert torch.equal(a, b)


@pytest.mark.parametrize("stride", [(1, 2), (2, 1), (2, 3)])
def test_unequal_strides(stride):
    """NCHW phase planes with different row and column strides, against float64."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 32, 12, 17, generator=g)
    w = torch.randn(32, 8, 3, 3, generator=g)
    b = torch.randn(32, generator=g)
    y = torch.ops.convx.conv2d(x, w, b, list(stride), [1, 1, 1, 1], [1, 1], 4)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride, 1, 1, 4)
    assert y.shape == ref.shape
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)


def test_regrouped_mixed_layouts():
    """An NCHW input with a channels_last weight: a channels_last result (torch's rule), so the
    regrouped forward copies the NCHW input out into padded per-group planes (transposed, then its
    rows moved into place); and the other way round."""
    g = torch.Generator().manual_seed(6)
    for xf, wf in ((torch.contiguous_format, torch.channels_last), (torch.channels_last, torch.contiguous_format)):
        x = torch.randn(2, 64, 10, 9, generator=g).contiguous(memory_format=xf)
        w = torch.randn(64, 32, 3, 3, generator=g).contiguous(memory_format=wf)
        b = torch.randn(64, generator=g)
        y = torch.ops.convx.conv2d(x, w, b, [1, 1], [2, 0, 1, 1], [1, 1], 2)
        ref = F.conv2d(F.pad(x.double(), (1, 1, 2, 0)), w.double(), b.double(), 1, 0, 1, 2)
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_groups_as_dense_fused_epilogue(layout, dtype, stride):
    """A layer computed a group at a time (conv2d.cpp's groups_as_dense; channels_last at stride 2,
    grouped_strided_on_the_fly's interleaved groups): bias, residual and ReLU applied to each
    group's channels, the result in the input's layout and dtype."""
    g = torch.Generator().manual_seed(3)
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    H, W = (29, 28) if stride == 1 else (58, 55)
    x = torch.randn(1, 96, H, W, generator=g).contiguous(memory_format=mf)
    w = torch.randn(80, 48, 3, 3, generator=g) / 20
    b = torch.randn(80, generator=g)
    r = torch.randn(1, 80, 29, 28, generator=g).contiguous(memory_format=mf)
    y = convx.functional.conv2d(x.to(dtype), w.to(dtype), b.to(dtype), stride=stride, padding=1, groups=2,
                                residual=r.to(dtype), relu=True)
    ref = (F.conv2d(x.double(), w.double(), b.double(), stride=stride, padding=1, groups=2) + r.double()).clamp_min(0)
    assert y.dtype == dtype and y.is_contiguous(memory_format=mf)
    tol = 1e-4 if dtype == torch.float32 else 6e-2
    torch.testing.assert_close(y.double(), ref, atol=tol, rtol=tol)
