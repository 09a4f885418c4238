"""Layers of 1 to 4 output channels over a multiple of 16 input channels on the CPU (few_outputs.cpp:
a decoder's RGB output, a segmentation head): the channels_last forward, the data gradient at stride 1
(channels_last, and NCHW where it is not the forward of dY) and the weight gradient (channels_last,
and NCHW with a spatial filter), vectorised along the input channels. Against float64 with a bound
from the sums' lengths, the same bits on 1 and 2 threads, the AVX2 and baseline builds, and the
transposed convolution (the data gradient with a bias)."""
import os

import pytest
import torch
import torch.nn.functional as F

import convx  # noqa: F401
from test_cpu_gemm import run_with_isa

ops = torch.ops.convx
U = 2.0 ** -24

# N, C, H, W, K, (R, S), stride, (top, bottom, left, right) padding, dilation
CASES = {
    # 3 outputs over 64 channels: blocks of 4 pixels and edges (23 columns: 5 blocks and 3 left)
    "out3_64ch_3x3": (2, 64, 13, 23, 3, (3, 3), 1, (1, 1, 1, 1), 1),
    # one output, 256 channels (16 vectors: 4 blocks of 4 in the weight gradient), 8-pixel blocks
    "out1_256ch": (2, 256, 9, 19, 1, (3, 3), 1, (1, 1, 1, 1), 1),
    # a 1x1 over 64 channels, 2 outputs; 48 channels (blocks of 2 and 1 vectors), 4 outputs
    "out2_1x1": (3, 64, 7, 21, 2, (1, 1), 1, (0, 0, 0, 0), 1),
    "out4_48ch": (2, 48, 11, 14, 4, (3, 3), 1, (1, 1, 1, 1), 1),
    # 16 channels: one vector, the weight gradient's filter rows split instead
    "out3_16ch_5x5": (2, 16, 12, 17, 3, (5, 5), 1, (2, 2, 2, 2), 1),
    # dilation with asymmetric padding; padding past the filter (pixels with no tap inside)
    "out2_dil_asym": (1, 32, 15, 18, 2, (3, 3), 1, (2, 0, 3, 1), 2),
    "out1_pad_past": (2, 32, 6, 9, 1, (3, 3), 1, (3, 3, 4, 3), 1),
    # images smaller than the filter's reach: every pixel an edge
    "out3_tiny": (3, 32, 2, 3, 3, (3, 3), 1, (1, 1, 1, 1), 1),
    # strides (the forward and the weight gradient; the data gradient goes elsewhere)
    "out1_s2": (2, 32, 17, 20, 1, (3, 3), 2, (1, 1, 1, 1), 1),
    "out4_s3_1x3": (1, 64, 10, 29, 4, (1, 3), 3, (0, 2, 1, 0), 1),
    "out2_7x7_s2": (1, 16, 21, 26, 2, (7, 7), 2, (3, 3, 3, 3), 1),
}


def _operands(case, layout, seed=0):
    N, C, H, W, K, (R, S), st, pad, dil = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g).contiguous(memory_format=layout)
    w = torch.randn(K, C, R, S, generator=g).contiguous(memory_format=layout)
    t, bo, l, r = pad
    Ho = (H + t + bo - dil * (R - 1) - 1) // st + 1
    Wo = (W + l + r - dil * (S - 1) - 1) // st + 1
    gy = torch.randn(N, K, Ho, Wo, generator=g).contiguous(memory_format=layout)
    b = torch.randn(K, generator=g)
    return x, w, b, gy


def _bound(got, ref, mag, terms):
    assert got.shape == ref.shape
    assert ((got.double() - ref).abs() <= 2 * (terms + 1) * U * mag + 1e-30).all()


def _forward(case, layout):
    N, C, H, W, K, (R, S), st, pad, dil = case
    x, w, b, _ = _operands(case, layout)
    y = ops.conv2d(x, w, b, [st, st], list(pad), [dil, dil], 1)
    t, bo, l, r = pad
    xd = F.pad(x.double(), (l, r, t, bo))
    ref = F.conv2d(xd, w.double(), b.double(), st, 0, dil)
    mag = F.conv2d(xd.abs(), w.double().abs(), b.double().abs(), st, 0, dil)
    _bound(y, ref, mag, C * R * S)
    assert y.is_contiguous(memory_format=layout)
    return y


def _weight_grad(case, layout):
    N, C, H, W, K, (R, S), st, pad, dil = case
    x, w, _, gy = _operands(case, layout)
    gw = ops.conv2d_backward_weight(gy, x, list(w.shape), [st, st], list(pad), [dil, dil], 1, False)[0]
    t, bo, l, r = pad
    xd = F.pad(x.double(), (l, r, t, bo))

    def wgrad(a, d):
        return torch.ops.aten.convolution_backward(d, a, w.double(), None, [st, st], [0, 0], [dil, dil], False,
                                                   [0, 0], 1, [False, True, False])[1]

    ref, mag = wgrad(xd, gy.double()), wgrad(xd.abs(), gy.double().abs())
    _bound(gw, ref, mag, N * gy.shape[2] * gy.shape[3])
    assert gw.is_contiguous(memory_format=layout)
    return gw


def _data_grad(case, layout):
    N, C, H, W, K, (R, S), st, pad, dil = case
    x, w, _, gy = _operands(case, layout)
    gx = ops.conv2d_backward_input(gy, w, [N, C, H, W], [st, st], list(pad), [dil, dil], 1)
    t, bo, l, r = pad
    xz = torch.zeros(N, C, H + t + bo, W + l + r, dtype=torch.float64)

    def dgrad(d, ww):
        full = torch.ops.aten.convolution_backward(d, xz, ww, None, [st, st], [0, 0], [dil, dil], False, [0, 0], 1,
                                                   [True, False, False])[0]
        return full[:, :, t:t + H, l:l + W]

    ref, mag = dgrad(gy.double(), w.double()), dgrad(gy.double().abs(), w.double().abs())
    _bound(gx, ref, mag, K * R * S)
    assert gx.is_contiguous(memory_format=layout)
    return gx


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_forward_channels_last(case):
    _forward(case, torch.channels_last)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_weight_grad(case, layout):
    _weight_grad(case, layout)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_data_grad(case, layout):
    _data_grad(case, layout)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_transposed_with_bias(layout):
    """ConvTranspose2d from 3 channels to 64: the data gradient's kernel starting from the bias."""
    g = torch.Generator().manual_seed(7)
    m = convx.ConvTranspose2d(3, 64, 3, padding=1)
    x = torch.randn(2, 3, 11, 14, generator=g).contiguous(memory_format=layout)
    with torch.no_grad():
        m.weight.copy_(torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(torch.randn(64, generator=g))
        y = m(x)
    ref = F.conv_transpose2d(x.double(), m.weight.double(), m.bias.double(), 1, 1)
    torch.testing.assert_close(y.double(), ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("case", ["out3_64ch_3x3", "out1_256ch", "out4_48ch", "out3_16ch_5x5"])
def test_thread_count(case):
    """Each result element is one thread's sum in an order fixed by the shape: the same bits on 1 and 2 threads."""
    c = CASES[case]
    cl = torch.channels_last
    got = (_forward(c, cl), _weight_grad(c, cl), _data_grad(c, cl), _weight_grad(c, torch.contiguous_format))
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (_forward(c, cl), _weight_grad(c, cl), _data_grad(c, cl), _weight_grad(c, torch.contiguous_format))
    finally:
        torch.set_num_threads(n)
    for a, b in zip(got, one):
        assert torch.equal(a, b)


def test_module_training_step():
    """convx.Conv2d with 3 outputs in channels_last: autograd's gradients against torch.nn's."""
    g = torch.Generator().manual_seed(9)
    ref = torch.nn.Conv2d(32, 3, 3, padding=1).double()
    m = convx.Conv2d(32, 3, 3, padding=1)
    m.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = torch.randn(2, 32, 10, 12, generator=g).contiguous(memory_format=torch.channels_last)
    xr = x.double().requires_grad_()
    x.requires_grad_()
    m(x).square().sum().backward()
    ref(xr).square().sum().backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(m.weight.grad.double(), ref.weight.grad, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(m.bias.grad.double(), ref.bias.grad, atol=1e-3, rtol=1e-4)


# (this file's directory by its absolute path: `make sanitize` runs the tests from another one)
_CHILD = r"""
import sys, torch
sys.path.insert(0, %r)
from test_cpu_few_outputs import CASES, _forward, _weight_grad, _data_grad
for c in CASES.values():
    _forward(c, torch.channels_last)
    _weight_grad(c, torch.channels_last)
    _data_grad(c, torch.channels_last)
print("ok")
""" % os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_narrower_builds(isa):
    """The AVX2 (a block of 16 floats two ymm registers) and baseline (four xmm) builds."""
    run_with_isa(_CHILD, isa)
