"""NCHW float32 forwards with few input channels (C < 8) and a multiple of 8 output channels on the
CPU, and forwards of up to 4 output channels in either layout (a decoder's RGB output, a stem's data
gradient): grouped.cpp's NCHW kernel as one group (grouped::dense_nchw_applicable), the input's planes
copied a block of rows at a time into zero-padded stride phases, each output row's vectors stored
in place (a last part of a vector through a buffer), streamed where the result has 8 MiB or more
and its rows are whole 64-byte lines. Against float64, the same bits on 1 and 2 threads, and the
AVX2 and baseline builds."""
import os

import pytest
import torch
import torch.nn.functional as F

import convx  # noqa: F401
from test_cpu_gemm import run_with_isa

# N, C, H, W, K, (R, S), stride, (top, bottom, left, right) padding, dilation, bias
CASES = {
    # the stem's kind: 7x7 stride 2, 23 output columns (one whole AVX-512 vector and a part)
    "stem_23_cols": (2, 3, 37, 45, 16, (7, 7), 2, (3, 3, 3, 3), 1, True),
    # 64 output columns: whole vectors only (three a tile, then a tile of one on AVX-512)
    "vgg_64_cols": (1, 3, 64, 64, 8, (3, 3), 1, (1, 1, 1, 1), 1, False),
    # rows narrower than a vector: the part alone; one input channel
    "narrow_rows_1ch": (2, 1, 9, 12, 24, (5, 5), 1, (2, 2, 2, 2), 1, True),
    # stride 3 with dilation and asymmetric padding; stride 4 (the most the kernel takes)
    "s3_dil_asym": (1, 4, 30, 41, 16, (3, 5), 3, (2, 0, 1, 3), 2, True),
    "s4_4x4": (1, 7, 33, 50, 8, (4, 4), 4, (0, 0, 0, 0), 1, False),
    # padding past the filter (output columns whose every tap is outside), 40 channels (5 blocks)
    "pad_past_40k": (2, 5, 11, 17, 40, (3, 3), 1, (3, 2, 4, 3), 1, True),
    # a 1x1 filter at stride 2 (a phase plane alone), a 1 x 7 one
    "1x1_s2": (1, 2, 16, 35, 8, (1, 1), 2, (0, 0, 0, 0), 1, True),
    "1x7": (1, 3, 10, 40, 16, (1, 7), 1, (0, 0, 3, 3), 1, False),
}
# Up to 4 output channels, any C (the same kernel, KB = K), NCHW and channels_last (read and written
# by their strides; a channels_last 1x1 takes the GEMM, and channels_last over a multiple of 16
# channels few_outputs.cpp: test_cpu_few_outputs.py): 1, 2, 3 and 4 output channels, stride 2 with
# dilation and asymmetric padding, a 1x1 over 256 channels (rows get fewer so the planes fit the
# task's buffer), 24 channels (this kernel in channels_last too)
FEW_OUT = {
    "out3_64ch": (2, 64, 20, 23, 3, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "out1_s2_dil": (1, 32, 25, 30, 1, (3, 3), 2, (2, 1, 0, 2), 2, False),
    "out2_5x5": (2, 12, 17, 19, 2, (5, 5), 1, (2, 2, 2, 2), 1, True),
    "out4_1x1_256ch": (2, 256, 9, 11, 4, (1, 1), 1, (0, 0, 0, 0), 1, True),
    "out3_wide_rows": (1, 16, 6, 150, 3, (3, 3), 1, (1, 1, 1, 1), 1, False),
    "out3_24ch_s2": (2, 24, 19, 22, 3, (3, 3), 2, (1, 1, 1, 1), 1, True),
}
# results of 8 MiB or more with rows of whole 64-byte lines: streamed
STREAMED = {
    "streamed_3x3": (2, 3, 256, 256, 16, (3, 3), 1, (1, 1, 1, 1), 1, True),
    "streamed_7x7_s2": (1, 3, 448, 512, 32, (7, 7), 2, (3, 3, 3, 3), 1, False),
}


def _check(case, seed=0, layout=torch.contiguous_format):
    N, C, H, W, K, (R, S), st, pad, dil, bias = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g).contiguous(memory_format=layout)
    w = torch.randn(K, C, R, S, generator=g).contiguous(memory_format=layout)
    b = torch.randn(K, generator=g) if bias else None
    y = torch.ops.convx.conv2d(x, w, b, [st, st], list(pad), [dil, dil], 1)
    t, bo, l, r = pad
    xd = F.pad(x.double(), (l, r, t, bo))
    ref = F.conv2d(xd, w.double(), None if b is None else b.double(), st, 0, dil)
    mag = F.conv2d(xd.abs(), w.double().abs(), None if b is None else b.double().abs(), st, 0, dil)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=layout)
    u = 2.0 ** -24
    assert ((y.double() - ref).abs() <= 2 * (C * R * S + 1) * u * mag + 1e-30).all()
    return x, w, b, y


@pytest.mark.parametrize("case", list(CASES.values()) + list(STREAMED.values()), ids=list(CASES) + list(STREAMED))
def test_forward_matches_float64(case):
    _check(case)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", list(FEW_OUT.values()), ids=list(FEW_OUT))
def test_few_outputs_match_float64(case, layout):
    _check(case, layout=layout)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_stem_data_grad(layout):
    """A 3-channel stem's data gradient: the forward of dY (16 channels) with the rotated weight, 3 out."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(16, 3, 3, 3, generator=g).contiguous(memory_format=layout)
    gy = torch.randn(4, 16, 19, 21, generator=g).contiguous(memory_format=layout)
    gx = torch.ops.convx.conv2d_backward_input(gy, w, [4, 3, 19, 21], [1, 1], [1, 1, 1, 1], [1, 1], 1)
    x = torch.zeros(4, 3, 19, 21, dtype=torch.float64)
    ref = torch.ops.aten.convolution_backward(gy.double(), x, w.double(), None, [1, 1], [1, 1], [1, 1], False, [0, 0],
                                              1, [True, False, False])[0]
    assert gx.is_contiguous(memory_format=layout)
    torch.testing.assert_close(gx.double(), ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [(2, 64, 3, 17, 23, 1, 1), (1, 32, 1, 20, 20, 2, 2), (2, 16, 2, 13, 11, 1, 0)])
def test_few_outputs_data_grad(shape, layout):
    """The data gradient of a layer of under 8 output channels (dX's a multiple of 8): the forward of
    dY (under 8 channels, grouped.cpp's kernel in NCHW) with the rotated, transposed weight."""
    N, C, K, H, W, dil, pad = shape
    g = torch.Generator().manual_seed(5)
    w = torch.randn(K, C, 3, 3, generator=g).contiguous(memory_format=layout)
    Ho, Wo = H + 2 * pad - 2 * dil, W + 2 * pad - 2 * dil
    gy = torch.randn(N, K, Ho, Wo, generator=g).contiguous(memory_format=layout)
    gx = torch.ops.convx.conv2d_backward_input(gy, w, [N, C, H, W], [1, 1], [pad] * 4, [dil, dil], 1)
    x = torch.zeros(N, C, H, W, dtype=torch.float64)
    ref = torch.ops.aten.convolution_backward(gy.double(), x, w.double(), None, [1, 1], [pad, pad], [dil, dil], False,
                                              [0, 0], 1, [True, False, False])[0]
    assert gx.is_contiguous(memory_format=layout)
    torch.testing.assert_close(gx.double(), ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("case", ["stem_23_cols", "streamed_3x3", "out3_64ch"])
def test_thread_count(case):
    """Each output is one tile's sum in a fixed order: the same bits on 1 and 2 threads."""
    c = {**CASES, **STREAMED, **FEW_OUT}[case]
    N, C, H, W, K, (R, S), st, pad, dil, bias = c
    x, w, b, y = _check(c)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = torch.ops.convx.conv2d(x, w, b, [st, st], list(pad), [dil, dil], 1)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(y, y1)


def test_fused_and_half():
    """conv2d_fused's residual and ReLU after the kernel; bfloat16 computed in float32."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 40, 48, generator=g)
    w = torch.randn(16, 3, 7, 7, generator=g)
    b = torch.randn(16, generator=g)
    ref = F.conv2d(x.double(), w.double(), b.double(), 2, 3)
    res = torch.randn(ref.shape, generator=g)
    y = torch.ops.convx.conv2d_fused(x, w, b, res, [2, 2], [3, 3, 3, 3], [1, 1], 1, True)
    torch.testing.assert_close(y.double(), (ref + res.double()).clamp_min(0), atol=1e-4, rtol=1e-5)
    yb = torch.ops.convx.conv2d(x.bfloat16(), w.bfloat16(), b.bfloat16(), [2, 2], [3, 3, 3, 3], [1, 1], 1)
    refb = F.conv2d(x.bfloat16().double(), w.bfloat16().double(), b.bfloat16().double(), 2, 3)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.double(), refb, atol=0.1, rtol=0.02)


# (this file's directory by its absolute path: `make sanitize` runs the tests from another one)
_CHILD = r"""
import sys, torch
sys.path.insert(0, %r)
from test_cpu_few_channels import CASES, STREAMED, FEW_OUT, _check
for name in ("stem_23_cols", "vgg_64_cols", "narrow_rows_1ch", "s3_dil_asym", "pad_past_40k", "streamed_3x3"):
    _check({**CASES, **STREAMED}[name])
for name in FEW_OUT:
    _check(FEW_OUT[name])
    _check(FEW_OUT[name], layout=torch.channels_last)
print("ok")
""" % os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_narrower_builds(isa):
    """The AVX2 (4 x 2 vectors of 8, 3 x 3, 1 x 6) and baseline (the same of 4) builds of the kernel."""
    run_with_isa(_CHILD, isa)
