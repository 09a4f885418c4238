"""Pooling (max, average, adaptive average, adaptive max): parity with
torch.nn.functional (outputs, indices, gradients), NaN / -inf / tie semantics,
gradcheck, opcheck, modules, determinism, and bad input."""
import pytest
import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

import convx
from conftest import assert_close_to_reference, device_dtypes, DEVICE_DTYPES, DEVICES, LAYOUTS, make_tensor, memory_format_of

CF = convx.functional

MAX_CASES = {
    "3x3_s2_p1": dict(kernel_size=3, stride=2, padding=1),
    "2x2": dict(kernel_size=2),
    "anisotropic_dilated_ceil": dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), dilation=(2, 1),
                                     ceil_mode=True),
    "ceil_mode": dict(kernel_size=3, stride=2, ceil_mode=True),
    "stride3_dil2": dict(kernel_size=2, stride=3, dilation=2, padding=1),
    "kernel_eq_input": dict(kernel_size=(7, 6)),
    "stride_gt_kernel": dict(kernel_size=2, stride=3),
}
AVG_CASES = {
    "3x3_s2_p1": dict(kernel_size=3, stride=2, padding=1),
    "2x2": dict(kernel_size=2),
    "exclude_pad_ceil": dict(kernel_size=3, stride=2, padding=1, count_include_pad=False, ceil_mode=True),
    "include_pad_ceil": dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    "divisor_override": dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 0), divisor_override=5),
    "anisotropic": dict(kernel_size=(3, 2), stride=(1, 3), padding=(1, 1)),
}
ADAPTIVE_SIZES = {"1x1": (1, 1), "3x5": (3, 5), "none_entry": (4, None), "larger_than_input": (11, 13), "int": 7,
                  "same": (7, 6), "zero": (0, 2)}
SHAPE = (2, 3, 7, 6)


def _tol(dtype):
    return dict(rtol=1e-2, atol=1e-2) if dtype in (torch.float16, torch.bfloat16) else {}


def _check(fn, ref, x, dtype, indices=False):
    y = fn(x)
    yr = ref(x)
    if indices:
        (y, i), (yr, ir) = y, yr
        assert torch.equal(i, ir), "indices differ from torch's"
        assert memory_format_of(i) == memory_format_of(ir)
    assert y.shape == yr.shape and y.dtype == yr.dtype
    if y.numel():
        assert memory_format_of(y) == memory_format_of(yr)
    torch.testing.assert_close(y, yr, equal_nan=True, **_tol(dtype))
    if y.numel() == 0:
        return
    gy = torch.randn(y.shape, dtype=torch.float64).to(y)
    g = torch.autograd.grad(y, x, gy)[0]
    if x.is_cuda:
        # The reference gradients come from torch's CPU kernels: its CUDA average-pool backward
        # of a channels_last input with padding is wrong in torch 2.11 (pytorch issue 188344, fixed July 2026).
        x = x.detach().cpu().requires_grad_()
        gy = gy.cpu()
        yr = ref(x)
        yr = yr[0] if indices else yr
    gr = torch.autograd.grad(yr, x, gy)[0].to(g.device)
    # The input gradient takes the input's layout. (torch agrees except for a
    # 1x1 adaptive average, which it computes as a mean and returns NCHW.)
    assert memory_format_of(g) == suggest_memory_format(x)
    if dtype in (torch.float16, torch.bfloat16):
        # Where windows overlap, a gradient is a sum: judged against float64
        # (convx sums in float32; torch's CPU kernel adds in the half type).
        x64 = x.detach().double().requires_grad_()
        y64 = ref(x64)
        y64 = y64[0] if indices else y64
        g64 = torch.autograd.grad(y64, x64, gy.double())[0].to(g.device)
        assert_close_to_reference(g, gr, g64)
        return
    torch.testing.assert_close(g, gr, **_tol(dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("case", list(MAX_CASES.values()), ids=list(MAX_CASES))
def test_max_pool2d(case, device, dtype, layout):
    x = make_tensor(SHAPE, dtype, device, layout, requires_grad=True)
    _check(lambda t: CF.max_pool2d(t, return_indices=True, **case),
           lambda t: F.max_pool2d(t, return_indices=True, **case), x, dtype, indices=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("case", list(AVG_CASES.values()), ids=list(AVG_CASES))
def test_avg_pool2d(case, device, dtype, layout):
    x = make_tensor(SHAPE, dtype, device, layout, requires_grad=True)
    _check(lambda t: CF.avg_pool2d(t, **case), lambda t: F.avg_pool2d(t, **case), x, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("size", list(ADAPTIVE_SIZES.values()), ids=list(ADAPTIVE_SIZES))
def test_adaptive_avg_pool2d(size, device, dtype, layout):
    x = make_tensor(SHAPE, dtype, device, layout, requires_grad=True)
    _check(lambda t: CF.adaptive_avg_pool2d(t, size), lambda t: F.adaptive_avg_pool2d(t, size), x, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("size", [v for k, v in ADAPTIVE_SIZES.items() if k != "zero"],
                         ids=[k for k in ADAPTIVE_SIZES if k != "zero"])
def test_adaptive_max_pool2d(size, device, dtype, layout):
    x = make_tensor(SHAPE, dtype, device, layout, requires_grad=True)
    _check(lambda t: CF.adaptive_max_pool2d(t, size, True), lambda t: F.adaptive_max_pool2d(t, size, True), x, dtype,
           indices=True)


def _assert_same_indices(i, ir, yr, device, layout):
    """convx's indices equal torch's, except on a GPU in channels_last where
    a window holding only -inf gets index 0 from torch's NHWC kernel and its
    first valid position from convx (as torch's CPU and NCHW kernels give)."""
    if str(device).startswith("cuda") and layout == "channels_last":
        same = (i == ir) | (yr == -float("inf"))
        assert bool(same.all()), "indices differ from torch's outside all -inf windows"
    else:
        assert torch.equal(i, ir)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
def test_max_nan_inf_and_ties(device, layout):
    x = torch.tensor([[1., float("nan"), 3., float("nan")], [2., 2., 1., 2.], [-float("inf")] * 4,
                      [5., 5., 5., 5.]], device=device).repeat(2, 3, 1, 1)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    for k in [(1, 4), (1, 2), (2, 2), (4, 4)]:
        y, i = CF.max_pool2d(x, k, return_indices=True)
        yr, ir = F.max_pool2d(x, k, return_indices=True)
        torch.testing.assert_close(y, yr, equal_nan=True)
        _assert_same_indices(i, ir, yr, device, layout)
    y, i = CF.max_pool2d(x, 3, 1, 1, return_indices=True)
    yr, ir = F.max_pool2d(x, 3, 1, 1, return_indices=True)
    torch.testing.assert_close(y, yr, equal_nan=True)
    _assert_same_indices(i, ir, yr, device, layout)
    for size in [(1, 1), (2, 3), (4, 2)]:
        y, i = CF.adaptive_max_pool2d(x, size, True)
        yr, ir = F.adaptive_max_pool2d(x, size, True)
        torch.testing.assert_close(y, yr, equal_nan=True)
        _assert_same_indices(i, ir, yr, device, layout)
    # all -inf windows give -inf
    z = torch.full((1, 1, 2, 2), -float("inf"), device=device)
    assert torch.equal(CF.max_pool2d(z, 3, 1, 1), F.max_pool2d(z, 3, 1, 1))


@pytest.mark.parametrize("device", DEVICES)
def test_indices_feed_max_unpool2d(device):
    x = make_tensor((2, 3, 8, 8), torch.float32, device)
    y, i = CF.max_pool2d(x, 2, return_indices=True)
    torch.testing.assert_close(F.max_unpool2d(y, i, 2), F.max_unpool2d(*F.max_pool2d(x, 2, return_indices=True), 2))


@pytest.mark.parametrize("device", DEVICES)
def test_unbatched_and_batch0(device):
    x = make_tensor((3, 7, 6), torch.float64, device)
    torch.testing.assert_close(CF.max_pool2d(x, 2), F.max_pool2d(x, 2))
    torch.testing.assert_close(CF.avg_pool2d(x, 2), F.avg_pool2d(x, 2))
    torch.testing.assert_close(CF.adaptive_avg_pool2d(x, 3), F.adaptive_avg_pool2d(x, 3))
    torch.testing.assert_close(CF.adaptive_max_pool2d(x, 3), F.adaptive_max_pool2d(x, 3))
    e = make_tensor((0, 3, 7, 6), torch.float64, device, requires_grad=True)
    for fn, ref in [(lambda t: CF.max_pool2d(t, 2), lambda t: F.max_pool2d(t, 2)),
                    (lambda t: CF.avg_pool2d(t, 2), lambda t: F.avg_pool2d(t, 2)),
                    (lambda t: CF.adaptive_avg_pool2d(t, 3), lambda t: F.adaptive_avg_pool2d(t, 3)),
                    (lambda t: CF.adaptive_max_pool2d(t, 3), lambda t: F.adaptive_max_pool2d(t, 3))]:
        y = fn(e)
        assert y.shape == ref(e).shape
        assert torch.autograd.grad(y.sum(), e)[0].shape == e.shape


SAMPLE = {  # SHAPES.md pooling layers at batch 1
    "maxpool_3x3s2_112x64": (lambda t: CF.max_pool2d(t, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1), (1, 64, 112, 112)),
    "maxpool_2x2_56x256": (lambda t: CF.max_pool2d(t, 2), lambda t: F.max_pool2d(t, 2), (1, 256, 56, 56)),
    "avgpool_2x2_56x256": (lambda t: CF.avg_pool2d(t, 2), lambda t: F.avg_pool2d(t, 2), (1, 256, 56, 56)),
    "adaptive_avg_7x7x2048": (lambda t: CF.adaptive_avg_pool2d(t, 1), lambda t: F.adaptive_avg_pool2d(t, 1),
                              (2, 2048, 7, 7)),
    "adaptive_avg_14_to_7": (lambda t: CF.adaptive_avg_pool2d(t, 7), lambda t: F.adaptive_avg_pool2d(t, 7),
                             (2, 512, 14, 14)),
}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device,dtype", device_dtypes("cpu-f32", "cuda-f32", "cuda-bf16"))
@pytest.mark.parametrize("name", list(SAMPLE))
def test_benchmark_shapes(name, device, dtype, layout):
    fn, ref, shape = SAMPLE[name]
    x = make_tensor(shape, dtype, device, layout, requires_grad=True)
    _check(fn, ref, x, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    x = make_tensor((2, 2, 6, 5), torch.float64, device, requires_grad=True)
    checks = [lambda t: CF.avg_pool2d(t, 3, 2, 1, ceil_mode=True, count_include_pad=False),
              lambda t: CF.adaptive_avg_pool2d(t, (4, 3)),
              lambda t: CF.max_pool2d(t, (2, 3), (1, 2), 1, (2, 1)),
              lambda t: CF.adaptive_max_pool2d(t, (3, 4))]
    for f in checks:
        assert torch.autograd.gradcheck(f, (x,))
        assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, layout):
    x = make_tensor((2, 3, 7, 6), torch.float64, device, layout, requires_grad=True)
    ops = torch.ops.convx
    torch.library.opcheck(ops.max_pool2d, (x, [3, 2], [2, 1], [1, 1], [1, 2], True))
    for t in (x, x.float(), x.detach().float()):  # float without grad: the values-only kernel
        torch.library.opcheck(ops.max_pool2d_values, (t, [3, 2], [2, 1], [1, 1], [1, 2], True))
    torch.library.opcheck(ops.avg_pool2d, (x, [3, 2], [2, 1], [1, 1], True, False, None))
    torch.library.opcheck(ops.avg_pool2d, (x, [2, 2], [2, 2], [0, 0], False, True, 3))
    torch.library.opcheck(ops.adaptive_avg_pool2d, (x, [4, 9]))
    torch.library.opcheck(ops.adaptive_max_pool2d, (x, [3, 4]))
    y, i = ops.max_pool2d(x.detach(), [3, 2], [2, 1], [1, 1], [1, 2], True)
    gy = torch.randn_like(y).requires_grad_()
    torch.library.opcheck(ops.max_pool2d_backward, (gy, i, list(x.shape), [3, 2], [2, 1], [1, 1], [1, 2], True))
    torch.library.opcheck(ops.avg_pool2d_backward,
                          (torch.randn_like(ops.avg_pool2d(x.detach(), [3, 2], [2, 1], [1, 1], True, False, None))
                           .requires_grad_(), list(x.shape), [3, 2], [2, 1], [1, 1], True, False, None))
    torch.library.opcheck(ops.adaptive_avg_pool2d_backward,
                          (torch.randn(2, 3, 4, 9, dtype=torch.float64, device=device, requires_grad=True),
                           list(x.shape)))


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_backward_where_torch_refuses(device):
    """torch raises for the CUDA adaptive/avg-pool backward under deterministic
    mode (pytorch issue 50198); convx's gather backward is deterministic by
    construction, so it runs, and gives the same bits twice."""
    x = make_tensor((4, 8, 13, 11), torch.float32, device, requires_grad=True)
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            y = CF.adaptive_avg_pool2d(x, (5, 4)).sum() + CF.avg_pool2d(x, 3, 2, 1).square().sum() + \
                CF.adaptive_max_pool2d(x, 3).sum() + CF.max_pool2d(x, 3, 2).sum()
            runs.append(torch.autograd.grad(y, x)[0])
        assert torch.equal(runs[0], runs[1])
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("device", DEVICES)
def test_modules_match_torch(device):
    x = make_tensor((2, 3, 9, 8), torch.float32, device, requires_grad=True)
    pairs = [
        (convx.MaxPool2d(3, 2, 1, ceil_mode=True), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
        (convx.MaxPool2d(2, return_indices=True), torch.nn.MaxPool2d(2, return_indices=True)),
        (convx.AvgPool2d(3, 2, 1, count_include_pad=False), torch.nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
        (convx.AdaptiveAvgPool2d((None, 3)), torch.nn.AdaptiveAvgPool2d((None, 3))),
        (convx.AdaptiveMaxPool2d(2, return_indices=True), torch.nn.AdaptiveMaxPool2d(2, return_indices=True)),
    ]
    for m, r in pairs:
        assert isinstance(m, type(r)) and repr(m) == repr(r)
        y, yr = m(x), r(x)
        if isinstance(y, tuple):
            assert torch.equal(y[1], yr[1])
            y, yr = y[0], yr[0]
        torch.testing.assert_close(y, yr)
        torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(yr.sum(), x)[0])


BAD = {
    "max_pad_too_big": (lambda x: CF.max_pool2d(x, 3, 1, 2), RuntimeError,
                        "pad should be at most half of effective kernel size, but got pad=2, kernel_size=3 and "
                        "dilation=1"),
    "avg_pad_too_big": (lambda x: CF.avg_pool2d(x, 3, 1, 2), RuntimeError,
                        "pad should be at most half of effective kernel size"),
    "max_output_too_small": (lambda x: CF.max_pool2d(x[..., :2, :2], 3), RuntimeError,
                             "Given input size: (4x2x2). Calculated output size: (4x0x0). Output size is too small"),
    "avg_output_too_small": (lambda x: CF.avg_pool2d(x[..., :2, :2], 3), RuntimeError, "Output size is too small"),
    "max_zero_stride": (lambda x: CF.max_pool2d(x, 2, 0), RuntimeError, "stride should not be zero"),
    "avg_zero_stride": (lambda x: CF.avg_pool2d(x, 2, 0), RuntimeError, "stride should not be zero"),
    "zero_kernel": (lambda x: CF.max_pool2d(x, 0, 1), RuntimeError, "kernel size should be greater than zero"),
    "zero_dilation": (lambda x: CF.max_pool2d(x, 2, 1, 0, 0), RuntimeError,
                      "dilation should be greater than zero, but got dilationH: 0 dilationW: 0"),
    "zero_divisor": (lambda x: CF.avg_pool2d(x, 2, divisor_override=0), RuntimeError, "divisor must be not zero"),
    "max_2d_input": (lambda x: CF.max_pool2d(x[0, 0], 2), RuntimeError,
                     "non-empty 3D or 4D (batch mode) tensor expected for input"),
    "adaptive_negative": (lambda x: CF.adaptive_avg_pool2d(x, (-1, 2)), RuntimeError,
                          "adaptive_avg_pool2d: elements of output_size must be greater than or equal to 0 but "
                          "received {-1, 2}"),
    "adaptive_max_negative": (lambda x: CF.adaptive_max_pool2d(x, (-1, 2)), RuntimeError,
                              "elements of output_size must be greater than or equal to 0"),
    "adaptive_2d_input": (lambda x: CF.adaptive_max_pool2d(x[0, 0], 2), RuntimeError,
                          "adaptive_max_pool2d(): Expected 3D or 4D tensor, but got: [5, 5]"),
    "adaptive_empty_spatial": (lambda x: CF.adaptive_avg_pool2d(x[..., :0, :], 2), RuntimeError,
                               "Expected input to have non-zero size for non-batch dimensions"),
    "max_zero_channels": (lambda x: CF.max_pool2d(x[:, :0], 2), RuntimeError,
                          "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(BAD))
def test_bad_input(name, device):
    fn, exc, msg = BAD[name]
    x = make_tensor((1, 4, 5, 5), torch.float32, device)
    with pytest.raises(exc) as info:
        fn(x)
    assert msg in str(info.value), str(info.value)
