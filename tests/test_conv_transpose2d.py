"""ConvTranspose2d: parity with torch.nn.functional.conv_transpose2d (output
and every gradient), gradcheck / gradgradcheck, opcheck, the module's
output_size=, and bad input."""
import pytest
import torch
import torch.nn.functional as F

import convx
from conftest import (conv_format_on, cuda_semantics, device_dtypes, DEVICE_DTYPES, DEVICES, LAYOUTS, assert_close_to_reference, make_tensor, memory_format_of,
                      tolerances)

CF = convx.functional

# (N, C_in, H, W, C_out, (R, S), stride, padding, output_padding, dilation, groups, bias)
CASES = {
    "basic": (2, 4, 5, 5, 6, (3, 3), 1, 1, 0, 1, 1, True),
    "stride2_outpad1": (2, 4, 5, 5, 6, (3, 3), 2, 1, 1, 1, 1, True),
    "upsample_4x4_s2_p1": (1, 8, 4, 6, 4, (4, 4), 2, 1, 0, 1, 1, False),
    "upsample_2x2_s2": (2, 6, 3, 3, 4, (2, 2), 2, 0, 0, 1, 1, True),
    "anisotropic": (1, 3, 4, 5, 5, (3, 2), (2, 3), (1, 0), (1, 2), (1, 2), 1, True),
    "outpad_below_dilation": (1, 2, 3, 3, 4, (3, 3), 1, 2, 1, 2, 1, True),
    "groups2": (1, 4, 4, 4, 6, (4, 4), 2, 1, 0, 1, 2, True),
    "depthwise": (2, 3, 5, 5, 3, (3, 3), 1, 0, 0, 1, 3, False),
    "depthwise_mult2": (1, 3, 4, 4, 6, (3, 3), 2, 1, 1, 1, 3, True),
    "batch0": (0, 4, 5, 5, 6, (3, 3), 2, 1, 1, 1, 1, True),
    "1x1_input": (2, 5, 1, 1, 3, (3, 3), 1, 0, 0, 1, 1, True),
    "odd_channels_17": (1, 17, 3, 3, 5, (2, 2), 2, 0, 1, 1, 1, True),
}

SHAPE_SAMPLE = {  # SHAPES.md transposed layers at batch 1, reduced channels where the CPU reference is slow
    "t4x4_512_256_14": (1, 512, 14, 14, 256, (4, 4), 2, 1, 0, 1, 1, False),
    "t4x4_128_64_56": (1, 128, 56, 56, 64, (4, 4), 2, 1, 0, 1, 1, False),
    "t2x2_512_256_28": (1, 512, 28, 28, 256, (2, 2), 2, 0, 0, 1, 1, True),
}


def _inputs(case, device, dtype, layout="contiguous"):
    N, C, H, W, K, (R, S), stride, padding, out_pad, dilation, groups, bias = case
    x = make_tensor((N, C, H, W), dtype, device, layout, requires_grad=True)
    w = make_tensor((C, K // groups, R, S), dtype, device, requires_grad=True)
    b = make_tensor((K,), dtype, device, requires_grad=True) if bias else None
    return x, w, b, (stride, padding, out_pad, groups, dilation)


def _two(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _check(case, device, dtype, layout, against_float64=False):
    x, w, b, args = _inputs(case, device, dtype, layout)
    params = [x, w] + ([b] if b is not None else [])
    y = CF.conv_transpose2d(x, w, b, *args)
    yr = F.conv_transpose2d(x, w, b, *args)
    assert y.shape == yr.shape and y.dtype == yr.dtype
    if y.numel():
        # torch's CUDA native kernel, which takes an output padding not below the stride, returns contiguous
        stride, _, out_pad = (_two(v) for v in args[:3])
        native = cuda_semantics(device) and any(o >= s for o, s in zip(out_pad, stride))
        assert memory_format_of(y) == (torch.contiguous_format if native else conv_format_on(device, dtype, yr))
    gy = torch.randn(y.shape, dtype=torch.float64).to(dtype=dtype, device=device)
    grads = torch.autograd.grad(y, params, gy)
    grads_r = torch.autograd.grad(yr, params, gy)
    if dtype in (torch.float16, torch.bfloat16) or against_float64:
        p64 = [p.detach().double().requires_grad_() for p in params]
        y64 = F.conv_transpose2d(p64[0], p64[1], p64[2] if b is not None else None, *args)
        grads64 = torch.autograd.grad(y64, p64, gy.double())
        assert_close_to_reference(y, yr, y64)
        for g, gr, g64 in zip(grads, grads_r, grads64):
            assert_close_to_reference(g, gr, g64)
        return
    torch.testing.assert_close(y, yr, **tolerances(dtype))
    for g, gr in zip(grads, grads_r):
        torch.testing.assert_close(g, gr, **tolerances(dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_parity(case, device, dtype, layout):
    _check(case, device, dtype, layout)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device,dtype", device_dtypes("cpu-f32", "cuda-f32", "cuda-bf16"))
@pytest.mark.parametrize("case", list(SHAPE_SAMPLE.values()), ids=list(SHAPE_SAMPLE))
def test_parity_benchmark_shapes(case, device, dtype, layout):
    _check(case, device, dtype, layout, against_float64=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["stride2_outpad1", "anisotropic", "groups2", "outpad_below_dilation"])
def test_gradcheck_and_gradgradcheck(case, device):
    x, w, b, args = _inputs(CASES[case], device, torch.float64)

    def f(x, w, b):
        return CF.conv_transpose2d(x, w, b, *args)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["stride2_outpad1", "anisotropic", "depthwise_mult2", "batch0"])
def test_opcheck(case, device, layout):
    x, w, b, (stride, padding, out_pad, groups, dilation) = _inputs(CASES[case], device, torch.float64, layout)
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    a = (pair(stride), pair(padding), pair(out_pad), pair(dilation), groups)
    torch.library.opcheck(torch.ops.convx.conv_transpose2d, (x, w, b, *a))
    y = torch.ops.convx.conv_transpose2d(x, w, b, *a).detach()
    gy = torch.randn_like(y).requires_grad_()
    torch.library.opcheck(torch.ops.convx.conv_transpose2d_backward_input, (gy, w, list(x.shape), *a))
    torch.library.opcheck(torch.ops.convx.conv_transpose2d_backward_weight, (gy, x, list(w.shape), *a, True))


@pytest.mark.parametrize("device", DEVICES)
def test_unbatched(device):
    x = make_tensor((4, 5, 5), torch.float64, device)
    w = make_tensor((4, 3, 3, 3), torch.float64, device)
    torch.testing.assert_close(CF.conv_transpose2d(x, w, None, 2, 1, 1), F.conv_transpose2d(x, w, None, 2, 1, 1))


@pytest.mark.parametrize("device", DEVICES)
def test_module_output_size_and_state_dict(device):
    kw = dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2, bias=True, dilation=1)
    ref = torch.nn.ConvTranspose2d(**kw).to(device).double()
    m = convx.ConvTranspose2d(**kw).to(device).double()
    assert isinstance(m, torch.nn.ConvTranspose2d) and repr(m) == repr(ref)
    m.load_state_dict(ref.state_dict(), strict=True)
    x = make_tensor((2, 4, 5, 5), torch.float64, device, requires_grad=True)
    for size in (None, (10, 10), (9, 10), [2, 6, 10, 9]):
        y, yr = m(x, output_size=size), ref(x, output_size=size)
        assert y.shape == yr.shape
        torch.testing.assert_close(y, yr)
        g = torch.autograd.grad(y.sum(), [x, m.weight, m.bias])
        gr = torch.autograd.grad(yr.sum(), [x, ref.weight, ref.bias])
        for a, r in zip(g, gr):
            torch.testing.assert_close(a, r)
    with pytest.raises(ValueError):
        ref(x, output_size=(12, 12))
    with pytest.raises(ValueError):
        m(x, output_size=(12, 12))


def test_deterministic_mode():
    torch.use_deterministic_algorithms(True)
    try:
        x, w, b, args = _inputs(CASES["groups2"], "cpu", torch.float32)
        y = CF.conv_transpose2d(x, w, b, *args)
        torch.autograd.grad(y.sum(), [x, w, b])
    finally:
        torch.use_deterministic_algorithms(False)


BAD = {
    "channels": (lambda x, w: CF.conv_transpose2d(x[:, :3], w), RuntimeError,
                 "Given transposed=1, weight of size [4, 6, 3, 3], expected input[1, 3, 5, 5] to have 4 channels, "
                 "but got 3 channels instead"),
    "output_padding_too_big": (lambda x, w: CF.conv_transpose2d(x, w, stride=2, output_padding=2), RuntimeError,
                               "output padding must be smaller than either stride or dilation, but got "
                               "output_padding_height: 2 output_padding_width: 2 stride_height: 2 stride_width: 2 "
                               "dilation_height: 1 dilation_width: 1"),
    "output_padding_stride1": (lambda x, w: CF.conv_transpose2d(x, w, output_padding=1), RuntimeError,
                               "output padding must be smaller than either stride or dilation"),
    "groups": (lambda x, w: CF.conv_transpose2d(x, w[:3, :2], groups=2), RuntimeError,
               "Given groups=2, expected weight to be divisible by 2 at dimension 0"),
    "bias": (lambda x, w: CF.conv_transpose2d(x, w, torch.zeros(5, device=x.device)), RuntimeError,
             "Given transposed=1, weight of size [4, 6, 3, 3], expected bias to be 1-dimensional with 6 elements, "
             "but got bias of size [5] instead"),
    "negative_padding": (lambda x, w: CF.conv_transpose2d(x, w, padding=-1), RuntimeError,
                         "negative padding is not supported"),
    "output_too_small": (lambda x, w: CF.conv_transpose2d(x, w, padding=4), RuntimeError,
                         "Given input size per channel: (5 x 5). Calculated output size per channel: (-1 x -1). "
                         "Output size is too small"),
    "input_2d": (lambda x, w: CF.conv_transpose2d(x[0, 0], w), RuntimeError,
                 "Expected 3D (unbatched) or 4D (batched) input to conv_transpose2d, but got input of size: [5, 5]"),
    "zero_stride": (lambda x, w: CF.conv_transpose2d(x, w, stride=0), RuntimeError,
                    "non-positive stride is not supported"),
    "weight_dtype": (lambda x, w: CF.conv_transpose2d(x, w.double()), RuntimeError,
                     "expected scalar type Float but found Double"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(BAD))
def test_bad_input(name, device):
    fn, exc, msg = BAD[name]
    x = make_tensor((1, 4, 5, 5), torch.float32, device)
    w = make_tensor((4, 6, 3, 3), torch.float32, device)
    with pytest.raises(exc) as info:
        fn(x, w)
    assert msg in str(info.value), str(info.value)


@pytest.mark.parametrize("device", DEVICES)
def test_strided_bias(device):
    x, w, _, args = _inputs(CASES["groups2"], device, torch.float32)
    cout = w.shape[1] * args[3]
    b = make_tensor((2 * cout,), torch.float32, device)[::2].requires_grad_()
    y, yr = CF.conv_transpose2d(x, w, b, *args), F.conv_transpose2d(x, w, b, *args)
    torch.testing.assert_close(y, yr, **tolerances(torch.float32))
    gy = torch.randn_like(yr)
    for g, gr in zip(torch.autograd.grad(y, [x, w, b], gy), torch.autograd.grad(yr, [x, w, b], gy)):
        torch.testing.assert_close(g, gr, **tolerances(torch.float32))
