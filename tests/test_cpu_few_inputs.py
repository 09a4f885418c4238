"""The channels_last weight gradient of RGB-stem-like layers on the CPU (few_inputs.cpp: 3 input
channels, a filter row of 9, 15 or 21 values, 16 to 64 output channels): vectors along dW's output
channels over a zero-padded copy of the input, chunks of output rows summed in chunk order. Against
float64 with a bound from the sum's length, the same bits on 1 and 2 threads, the AVX2 and baseline
builds."""
import os

import pytest
import torch

import convx  # noqa: F401
from test_cpu_gemm import run_with_isa

U = 2.0 ** -24

# N, C, H, W, K, (R, S), stride, (top, bottom, left, right) padding, dilation (rows only)
CASES = {
    # CIFAR's stem: all three filter rows a block (27 accumulators)
    "cifar_stem": (8, 3, 32, 32, 16, (3, 3), 1, (1, 1, 1, 1), 1),
    # the 7x7 stride-2 stem, four vectors of output channels one at a time; its rows in two pieces
    "stem_7x7_s2": (4, 3, 224, 224, 64, (7, 7), 2, (3, 3, 3, 3), 1),
    # 5x5 (15 values a filter row), stride 3, asymmetric padding
    "5x5_s3_asym": (2, 3, 29, 34, 32, (5, 5), 3, (2, 0, 1, 3), 1),
    # dilation along the rows, padding past the filter, odd sizes
    "3x3_dil_rows": (3, 3, 17, 19, 16, (3, 3), 1, (2, 2, 1, 1), 2),
    "3x3_pad_past": (2, 3, 5, 6, 16, (3, 3), 1, (3, 3, 2, 3), 1),
    # a filter of 1 x 7 over 3 channels (21 values) and of 3 rows by 5 columns
    "1x7": (2, 3, 11, 40, 48, (1, 7), 1, (0, 0, 3, 3), 1),
    "3x5_s2": (2, 3, 21, 26, 16, (3, 5), 2, (1, 1, 2, 2), 1),
}


def _weight_grad(case):
    N, C, H, W, K, (R, S), st, pad, dil = case
    g = torch.Generator().manual_seed(11)
    cl = torch.channels_last
    x = torch.randn(N, C, H, W, generator=g).contiguous(memory_format=cl)
    t, bo, l, r = pad
    Ho = (H + t + bo - dil * (R - 1) - 1) // st + 1
    Wo = (W + l + r - (S - 1) - 1) // st + 1
    gy = torch.randn(N, K, Ho, Wo, generator=g).contiguous(memory_format=cl)
    gw = torch.ops.convx.conv2d_backward_weight(gy, x, [K, C, R, S], [st, st], list(pad), [dil, 1], 1, False)[0]
    xd = torch.nn.functional.pad(x.double(), (l, r, t, bo))
    w = torch.zeros(K, C, R, S, dtype=torch.float64)

    def wgrad(a, d):
        return torch.ops.aten.convolution_backward(d, a, w, None, [st, st], [0, 0], [dil, 1], False, [0, 0], 1,
                                                   [False, True, False])[1]

    ref, mag = wgrad(xd, gy.double()), wgrad(xd.abs(), gy.double().abs())
    assert gw.shape == ref.shape and gw.is_contiguous(memory_format=cl)
    assert ((gw.double() - ref).abs() <= 2 * (N * Ho * Wo + 1) * U * mag + 1e-30).all()
    return gw


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_weight_grad(case):
    _weight_grad(case)


@pytest.mark.parametrize("case", ["cifar_stem", "stem_7x7_s2", "5x5_s3_asym"])
def test_thread_count(case):
    """Chunks fixed by the shape, summed in chunk order: the same bits on 1 and 2 threads."""
    got = _weight_grad(CASES[case])
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _weight_grad(CASES[case])
    finally:
        torch.set_num_threads(n)
    assert torch.equal(got, one)


def test_module_training_step():
    """convx.Conv2d(3, 16) in channels_last under autograd: the weight's gradient against torch.nn's."""
    g = torch.Generator().manual_seed(12)
    ref = torch.nn.Conv2d(3, 16, 3, padding=1, bias=False).double()
    m = convx.Conv2d(3, 16, 3, padding=1, bias=False)
    m.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    x = torch.randn(4, 3, 20, 20, generator=g).contiguous(memory_format=torch.channels_last)
    m(x).square().sum().backward()
    ref(x.double()).square().sum().backward()
    torch.testing.assert_close(m.weight.grad.double(), ref.weight.grad, atol=1e-3, rtol=1e-4)


# (this file's directory by its absolute path: `make sanitize` runs the tests from another one)
_CHILD = r"""
import sys
sys.path.insert(0, %r)
from test_cpu_few_inputs import CASES, _weight_grad
for name, c in CASES.items():
    if name != "stem_7x7_s2":
        _weight_grad(c)
print("ok")
""" % os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_narrower_builds(isa):
    """The AVX2 (a vector of 16 floats two ymm registers) and baseline (four xmm) builds."""
    run_with_isa(_CHILD, isa)
