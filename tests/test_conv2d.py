"""Conv2d: parity with torch.nn.functional.conv2d (output and every gradient),
gradcheck / gradgradcheck, opcheck, torch.compile, autocast, the module, and
bad input. The CPU cases run everywhere; the CUDA ones skip without a GPU."""
import math

import pytest
import torch
import torch.nn.functional as F

import convx
from conftest import (conv_format_on, device_dtypes, CUDA_SKIP, DEVICE_DTYPES, DEVICES, HAS_CUDA, LAYOUTS, assert_close_to_reference, make_tensor,
                      memory_format_of, tolerances)

CF = convx.functional

# (N, C, H, W, K, (R, S), stride, padding, dilation, groups, bias): RELIABILITY.md's edge cases.
EDGE_CASES = {
    "basic_3x3": (2, 3, 8, 8, 4, (3, 3), 1, 1, 1, 1, True),
    "batch0": (0, 3, 5, 5, 4, (3, 3), 1, 1, 1, 1, True),
    "1x1_input": (2, 5, 1, 1, 7, (1, 1), 1, 0, 1, 1, True),
    "kernel_eq_padded_input": (2, 3, 3, 3, 4, (5, 5), 1, 1, 1, 1, False),
    "odd_channels_17_to_5": (1, 17, 6, 6, 5, (3, 3), 1, 1, 1, 1, True),
    "anisotropic": (2, 4, 11, 9, 6, (3, 2), (2, 3), (1, 2), (2, 1), 1, True),
    "stride3": (1, 4, 10, 10, 4, (3, 3), 3, 0, 1, 1, True),
    "dilation4": (1, 3, 12, 12, 2, (3, 3), 1, 4, 4, 1, True),
    "dilation_2_3_stride_3_2": (1, 3, 13, 12, 4, (2, 3), (3, 2), 1, (2, 3), 1, False),
    "groups2": (2, 4, 7, 7, 6, (3, 3), 1, 1, 1, 2, True),
    "groups4_nobias": (1, 8, 6, 6, 8, (3, 2), 1, 1, 1, 4, False),
    "depthwise": (2, 5, 7, 7, 5, (3, 3), 1, 1, 1, 5, True),
    "depthwise_mult2": (2, 3, 6, 6, 6, (3, 3), 1, 1, 1, 3, True),
    "valid": (1, 3, 7, 6, 4, (3, 3), 1, "valid", 1, 1, True),
    "same_even_kernel": (1, 3, 7, 6, 4, (4, 3), 1, "same", (1, 2), 1, True),
    "pointwise_stride2": (2, 8, 7, 7, 16, (1, 1), 2, 0, 1, 1, False),
    "pointwise_padded": (1, 4, 5, 5, 3, (1, 1), 1, 1, 1, 1, True),
    "stem_7x7_s2": (1, 3, 17, 17, 8, (7, 7), 2, 3, 1, 1, False),
    "pad_tuple_asym_axes": (2, 3, 6, 8, 5, (3, 5), 1, (0, 2), 1, 1, True),
    "channels_208": (1, 208, 5, 5, 3, (3, 3), 1, 1, 1, 1, True),
}

# A sample of SHAPES.md layers at batch 1 (CPU float32 keeps these quick).
SHAPE_SAMPLE = {
    "resnet50_layer3_3x3": (1, 256, 14, 14, 256, (3, 3), 1, 1, 1, 1, False),
    "resnet50_stem": (1, 3, 224, 224, 64, (7, 7), 2, 3, 1, 1, False),
    "resnet50_downsample_1024_2048": (1, 1024, 14, 14, 2048, (1, 1), 2, 0, 1, 1, False),
    "depthwise_144_56": (1, 144, 56, 56, 144, (3, 3), 1, 1, 1, 144, False),
    "resnext_32x4d_56": (1, 128, 56, 56, 128, (3, 3), 1, 1, 1, 32, False),
    "googlenet_4a_96_208": (1, 96, 14, 14, 208, (3, 3), 1, 1, 1, 1, True),
    "googlenet_5b_832_384": (1, 832, 7, 7, 384, (1, 1), 1, 0, 1, 1, True),
}


def _inputs(case, device, dtype, layout="contiguous", weight_layout="contiguous"):
    N, C, H, W, K, (R, S), stride, padding, dilation, groups, bias = case
    x = make_tensor((N, C, H, W), dtype, device, layout, requires_grad=True)
    w = make_tensor((K, C // groups, R, S), dtype, device, weight_layout, requires_grad=True)
    b = make_tensor((K,), dtype, device, requires_grad=True) if bias else None
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def _check_parity(case, device, dtype, layout="contiguous", weight_layout="contiguous", against_float64=False):
    """Output and gradients against torch. Half types (and, with
    against_float64, long float32 reductions) are judged by their error
    against a float64 reference: at most about twice torch's."""
    x, w, b, kw = _inputs(case, device, dtype, layout, weight_layout)
    y = CF.conv2d(x, w, b, **kw)
    params = [x, w] + ([b] if b is not None else [])
    gy = torch.randn(y.shape, dtype=torch.float64).to(dtype=dtype, device=device)
    grads = torch.autograd.grad(y, params, gy) if y.numel() or x.numel() else None

    if dtype in (torch.float16, torch.bfloat16) or against_float64:
        y_ref_t = F.conv2d(x, w, b, **kw)
        grads_t = torch.autograd.grad(y_ref_t, params, gy)
        p64 = [p.detach().double().requires_grad_() for p in params]
        y64 = F.conv2d(p64[0], p64[1], p64[2] if b is not None else None, **kw)
        grads64 = torch.autograd.grad(y64, p64, gy.double())
        assert y.dtype == dtype and y.shape == y_ref_t.shape
        assert_close_to_reference(y, y_ref_t, y64)
        if grads is None:
            return
        for g, gt, g64 in zip(grads, grads_t, grads64):
            assert_close_to_reference(g, gt, g64)
        return

    yr = F.conv2d(x, w, b, **kw)
    assert y.shape == yr.shape and y.dtype == yr.dtype
    if y.numel():
        assert memory_format_of(y) == conv_format_on(device, dtype, yr), "output memory format differs from torch's"
    torch.testing.assert_close(y, yr, **tolerances(dtype))
    if grads is None:
        return
    grads_r = torch.autograd.grad(yr, params, gy)
    for name, g, gr in zip(["input", "weight", "bias"], grads, grads_r):
        assert g.shape == gr.shape
        torch.testing.assert_close(g, gr, **tolerances(dtype), msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("case", list(EDGE_CASES.values()), ids=list(EDGE_CASES))
def test_parity_edge_cases(case, device, dtype, layout):
    _check_parity(case, device, dtype, layout)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layouts", [("channels_last", "contiguous"), ("contiguous", "channels_last"),
                                     ("noncontiguous", "channels_last")])
@pytest.mark.parametrize("case", ["basic_3x3", "groups2", "depthwise_mult2", "anisotropic"])
def test_parity_mixed_memory_formats(case, layouts, device):
    _check_parity(EDGE_CASES[case], device, torch.float32, *layouts)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device,dtype", device_dtypes("cpu-f32", "cuda-f32", "cuda-bf16"))
@pytest.mark.parametrize("case", list(SHAPE_SAMPLE.values()), ids=list(SHAPE_SAMPLE))
def test_parity_benchmark_shapes(case, device, dtype, layout):
    _check_parity(case, device, dtype, layout, against_float64=True)


@pytest.mark.parametrize("device", DEVICES)
def test_unbatched_input(device):
    x = make_tensor((3, 9, 8), torch.float32, device, requires_grad=True)
    w = make_tensor((5, 3, 3, 3), torch.float32, device, requires_grad=True)
    y = CF.conv2d(x, w, None, 2, 1)
    yr = F.conv2d(x, w, None, 2, 1)
    assert y.shape == yr.shape == (5, 5, 4)
    torch.testing.assert_close(y, yr, **tolerances(torch.float32))
    g = torch.autograd.grad(y.sum(), [x, w])
    gr = torch.autograd.grad(yr.sum(), [x, w])
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b, **tolerances(torch.float32))


# ---------------------------------------------------------------- beyond torch: 'same' with stride


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size,k,stride,dil", [(7, 3, 2, 1), (8, 3, 2, 1), (9, 4, 3, 1), (10, 3, 2, 2), (5, 1, 2, 1),
                                               (6, 5, 4, 1)])
def test_same_padding_with_stride_matches_tensorflow(size, k, stride, dil, device):
    """TensorFlow 'SAME': out = ceil(in / stride), total padding split with the
    extra element at the bottom/right. Reference: explicit F.pad + torch conv."""
    x = make_tensor((2, 3, size, size + 1), torch.float64, device, requires_grad=True)
    w = make_tensor((4, 3, k, k), torch.float64, device, requires_grad=True)
    y = CF.conv2d(x, w, None, stride, "same", dil)
    assert y.shape[-2:] == (math.ceil(size / stride), math.ceil((size + 1) / stride))
    pads = []
    for n in (size + 1, size):  # F.pad takes the last axis first
        eff = dil * (k - 1) + 1
        total = max((math.ceil(n / stride) - 1) * stride + eff - n, 0)
        pads += [total // 2, total - total // 2]
    yr = F.conv2d(F.pad(x, pads), w, None, stride, 0, dil)
    torch.testing.assert_close(y, yr)
    g = torch.autograd.grad(y.sum(), [x, w])
    gr = torch.autograd.grad(yr.sum(), [x, w])
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b)


def test_same_padding_stride1_equals_torch():
    x = make_tensor((1, 2, 7, 8), torch.float64, "cpu")
    for k, d in [(3, 1), (4, 1), (2, 3), (5, 2)]:
        w = make_tensor((3, 2, k, k), torch.float64, "cpu")
        torch.testing.assert_close(CF.conv2d(x, w, padding="same", dilation=d), F.conv2d(x, w, padding="same",
                                                                                        dilation=d))


# ---------------------------------------------------------------- autograd


GRAD_CASES = {
    "basic": (2, 3, 6, 6, 4, (3, 3), 1, 1, 1, 1, True),
    "strided_dilated": (1, 2, 9, 8, 3, (3, 2), (2, 3), (1, 0), (2, 1), 1, True),
    "groups_asym_same": (1, 4, 6, 7, 6, (2, 3), 2, "same", 1, 2, True),
    "depthwise": (2, 3, 5, 5, 3, (3, 3), 1, 1, 1, 3, False),
    "pointwise": (2, 3, 4, 4, 2, (1, 1), 1, 0, 1, 1, True),
}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(GRAD_CASES.values()), ids=list(GRAD_CASES))
def test_gradcheck_and_gradgradcheck(case, device, layout):
    x, w, b, kw = _inputs(case, device, torch.float64, layout)
    args = (x, w) + ((b,) if b is not None else ())

    def f(x, w, b=None):
        return CF.conv2d(x, w, b, **kw)

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_penalty_matches_torch(device):
    """A WGAN-GP style penalty: gradient of a function of d(out)/d(input)."""
    x, w, b, kw = _inputs(EDGE_CASES["groups2"], device, torch.float64)

    def penalty(conv):
        y = conv(x, w, b, **kw)
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), [w, b])

    for a, r in zip(penalty(CF.conv2d), penalty(F.conv2d)):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("device", DEVICES)
def test_only_some_gradients(device):
    x, w, b, kw = _inputs(EDGE_CASES["basic_3x3"], device, torch.float64)
    x.requires_grad_(False)
    (gb,) = torch.autograd.grad(CF.conv2d(x, w, b, **kw).sum(), [b])
    torch.testing.assert_close(gb, F.conv2d(x, w, b, **kw).new_ones(1).expand(2, 4, 8, 8).sum((0, 2, 3)))
    (gx,) = torch.autograd.grad(CF.conv2d(x.requires_grad_(), w.detach(), None, **kw).sum(), [x])
    torch.testing.assert_close(gx, torch.autograd.grad(F.conv2d(x, w.detach(), None, **kw).sum(), [x])[0])


# ---------------------------------------------------------------- torch.library.opcheck


OPCHECK_CASES = ["basic_3x3", "anisotropic", "groups2", "depthwise_mult2", "pointwise_stride2", "batch0"]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", OPCHECK_CASES)
def test_opcheck(name, device, layout):
    x, w, b, kw = _inputs(EDGE_CASES[name], device, torch.float64, layout)
    s = CF._pair(kw["stride"], "stride")
    d = CF._pair(kw["dilation"], "dilation")
    pad = CF.conv2d_padding(kw["padding"], x.shape[-2:], w.shape[-2:], s, d)
    g = kw["groups"]
    torch.library.opcheck(torch.ops.convx.conv2d, (x, w, b, s, pad, d, g))
    y = torch.ops.convx.conv2d(x, w, b, s, pad, d, g).detach()
    gy = torch.randn_like(y).requires_grad_()
    torch.library.opcheck(torch.ops.convx.conv2d_backward_input, (gy, w, list(x.shape), s, pad, d, g))
    torch.library.opcheck(torch.ops.convx.conv2d_backward_weight, (gy, x, list(w.shape), s, pad, d, g, True))


# ---------------------------------------------------------------- torch.compile, autocast, determinism


class _Net(torch.nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.c1 = cls(3, 8, 3, padding=1)
        self.c2 = cls(8, 8, 3, stride=2, padding=1, groups=2, bias=False)
        self.c3 = cls(8, 4, 1)

    def forward(self, x):
        return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    net = _Net(convx.Conv2d)
    ref = _Net(torch.nn.Conv2d)
    ref.load_state_dict(net.state_dict())
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    x = make_tensor((2, 3, 10, 10), torch.float32, "cpu", requires_grad=True)
    y = compiled(x)
    yr = ref(x)
    torch.testing.assert_close(y, yr, **tolerances(torch.float32))
    gx, gw = torch.autograd.grad(y.square().sum(), [x, net.c1.weight])
    gxr, gwr = torch.autograd.grad(yr.square().sum(), [x, ref.c1.weight])
    torch.testing.assert_close(gx, gxr, **tolerances(torch.float32))
    torch.testing.assert_close(gw, gwr, **tolerances(torch.float32))


def test_torch_compile_inductor_fullgraph():
    torch._dynamo.reset()
    net = _Net(convx.Conv2d).eval()
    ref = _Net(torch.nn.Conv2d).eval()
    ref.load_state_dict(net.state_dict())
    compiled = torch.compile(net, fullgraph=True)
    x = make_tensor((2, 3, 10, 10), torch.float32, "cpu")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ref(x), **tolerances(torch.float32))


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_matches_torch(device):
    x = make_tensor((2, 4, 9, 9), torch.float32, device)
    w = make_tensor((6, 4, 3, 3), torch.float32, device)
    b = make_tensor((6,), torch.float32, device)
    with torch.autocast(device_type=device):
        y = CF.conv2d(x, w, b, padding=1)
        yr = F.conv2d(x, w, b, padding=1)
    assert y.dtype == yr.dtype and y.dtype != torch.float32
    y64 = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    assert_close_to_reference(y, yr, y64)
    # float64 is not autocast-eligible: it stays float64, as with torch.
    with torch.autocast(device_type=device):
        assert CF.conv2d(x.double(), w.double(), b.double()).dtype == torch.float64


@pytest.mark.parametrize("device", DEVICES)
def test_forward_and_backward_bitwise_repeatable(device):
    x, w, b, kw = _inputs(SHAPE_SAMPLE["googlenet_4a_96_208"], device, torch.float32)
    runs = []
    for _ in range(2):
        y = CF.conv2d(x, w, b, **kw)
        runs.append([y] + list(torch.autograd.grad(y.square().sum(), [x, w, b])))
    for a, r in zip(*runs):
        assert torch.equal(a, r)


@CUDA_SKIP
def test_cuda_non_default_stream():
    x, w, b, kw = _inputs(EDGE_CASES["groups2"], "cuda", torch.float32)
    yr = F.conv2d(x, w, b, **kw)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        y = CF.conv2d(x, w, b, **kw)
        gx, gw = torch.autograd.grad(y.sum(), [x, w])
    torch.cuda.current_stream().wait_stream(s)
    torch.testing.assert_close(y, yr, **tolerances(torch.float32))
    gxr, gwr = torch.autograd.grad(yr.sum(), [x, w])
    torch.testing.assert_close(gx, gxr, **tolerances(torch.float32))
    torch.testing.assert_close(gw, gwr, **tolerances(torch.float32))


@CUDA_SKIP
@pytest.mark.skipif(not HAS_CUDA or torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
                    reason="needs a large GPU")
def test_cuda_more_than_2_31_elements():
    """Index arithmetic in int64: input of 2^31 + elements (bf16, 4.3 GB)."""
    N, C, H, W = 33, 64, 1024, 1024  # 2.2e9 elements
    x = torch.randn(N, C, H, W, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2, C, 1, 1, device="cuda", dtype=torch.bfloat16)
    y = CF.conv2d(x, w)
    for n in (0, N - 1):
        torch.testing.assert_close(y[n:n + 1].float(), F.conv2d(x[n:n + 1].float(), w.float()), rtol=2e-2, atol=2e-1)


# ---------------------------------------------------------------- modules


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("device", DEVICES)
def test_module_matches_torch(padding_mode, device):
    kw = dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(1, 2), padding=(1, 1), dilation=(2, 1),
              groups=2, bias=True, padding_mode=padding_mode)
    ref = torch.nn.Conv2d(**kw).to(device).double()
    m = convx.Conv2d(**kw).to(device).double()
    assert isinstance(m, torch.nn.Conv2d)
    assert repr(m) == repr(ref)
    assert list(m.state_dict()) == list(ref.state_dict())
    m.load_state_dict(ref.state_dict(), strict=True)
    x = make_tensor((2, 4, 7, 8), torch.float64, device, requires_grad=True)
    y, yr = m(x), ref(x)
    torch.testing.assert_close(y, yr)
    g = torch.autograd.grad(y.sum(), [x, m.weight, m.bias])
    gr = torch.autograd.grad(yr.sum(), [x, ref.weight, ref.bias])
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_module_same_padding_strided(padding_mode):
    m = convx.Conv2d(3, 4, 3, stride=2, padding="same", padding_mode=padding_mode).double()
    x = make_tensor((1, 3, 9, 8), torch.float64, "cpu")
    y = m(x)
    assert y.shape == (1, 4, 5, 4) and m.stride == (2, 2)
    pads = [0, 1, 1, 1]  # W: 8 -> 4, total 1 (right); H: 9 -> 5, total 2
    xr = F.pad(x, pads, mode="constant" if padding_mode == "zeros" else padding_mode)
    torch.testing.assert_close(y, F.conv2d(xr, m.weight, m.bias, 2))


def test_module_load_from_torch_state_dict_and_train_step():
    torch_net, convx_net = _Net(torch.nn.Conv2d), _Net(convx.Conv2d)
    convx_net.load_state_dict(torch_net.state_dict(), strict=True)
    opt_t = torch.optim.SGD(torch_net.parameters(), lr=0.1)
    opt_c = torch.optim.SGD(convx_net.parameters(), lr=0.1)
    x = make_tensor((4, 3, 12, 12), torch.float32, "cpu")
    for net, opt in ((torch_net, opt_t), (convx_net, opt_c)):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    for (k, a), (_, b) in zip(torch_net.state_dict().items(), convx_net.state_dict().items()):
        torch.testing.assert_close(a, b, **tolerances(torch.float32), msg=k)


# ---------------------------------------------------------------- bad input


def _bad(device):
    x = make_tensor((1, 4, 5, 5), torch.float32, device)
    w = make_tensor((8, 4, 3, 3), torch.float32, device)
    return x, w


BAD_CASES = {
    # name: (callable(x, w), exception type, message fragment)
    "input_2d": (lambda x, w: CF.conv2d(x[0, 0], w), RuntimeError,
                 "Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: [5, 5]"),
    "input_5d": (lambda x, w: CF.conv2d(x[None], w), RuntimeError, "Expected 3D (unbatched) or 4D (batched)"),
    "weight_3d": (lambda x, w: CF.conv2d(x, w[0]), RuntimeError, "expected weight of size (C_out, C_in / groups"),
    "channels": (lambda x, w: CF.conv2d(x[:, :3], w), RuntimeError,
                 "Given groups=1, weight of size [8, 4, 3, 3], expected input[1, 3, 5, 5] to have 4 channels, "
                 "but got 3 channels instead"),
    "groups_not_dividing_out": (lambda x, w: CF.conv2d(x, w[:3, :2], groups=2), RuntimeError,
                                "Given groups=2, expected weight to be divisible by 2 at dimension 0"),
    "groups_not_dividing_in": (lambda x, w: CF.conv2d(torch.cat([x, x[:, :1]], 1), w[:, :2], groups=2),
                               RuntimeError, "to have 4 channels, but got 5 channels instead"),
    "groups_zero": (lambda x, w: CF.conv2d(x, w, groups=0), RuntimeError, "non-positive groups is not supported"),
    "kernel_too_big": (lambda x, w: CF.conv2d(x[..., :2, :2], w), RuntimeError,
                       "Calculated padded input size per channel: (2 x 2). Kernel size: (3 x 3). "
                       "Kernel size can't be greater than actual input size"),
    "kernel_too_big_dilated": (lambda x, w: CF.conv2d(x, w, dilation=3), RuntimeError,
                               "Kernel size: (7 x 7). Kernel size can't be greater than actual input size"),
    "negative_padding": (lambda x, w: CF.conv2d(x, w, padding=-1), RuntimeError,
                         "negative padding is not supported"),
    "zero_stride": (lambda x, w: CF.conv2d(x, w, stride=0), RuntimeError, "non-positive stride is not supported"),
    "zero_dilation": (lambda x, w: CF.conv2d(x, w, dilation=(1, 0)), RuntimeError,
                      "dilation should be greater than zero"),
    "stride_three_values": (lambda x, w: CF.conv2d(x, w, stride=(1, 1, 1)), RuntimeError,
                            "expected stride to be a single integer value or a list of 2 values"),
    "bias_length": (lambda x, w: CF.conv2d(x, w, torch.zeros(5, device=x.device)), RuntimeError,
                    "Given weight of size [8, 4, 3, 3], expected bias to be 1-dimensional with 8 elements, "
                    "but got bias of size [5] instead"),
    "bias_2d": (lambda x, w: CF.conv2d(x, w, torch.zeros(8, 1, device=x.device)), RuntimeError,
                "expected bias to be 1-dimensional with 8 elements"),
    "weight_dtype": (lambda x, w: CF.conv2d(x, w.double()), RuntimeError,
                     "expected scalar type Float but found Double"),
    "bias_dtype": (lambda x, w: CF.conv2d(x, w, torch.zeros(8, dtype=torch.float64, device=x.device)),
                   RuntimeError, "Input type (float) and bias type (double) should be the same"),
    "padding_string": (lambda x, w: CF.conv2d(x, w, padding="full"), RuntimeError, "Invalid padding string: 'full'"),
    "integer_input": (lambda x, w: CF.conv2d(x.long(), w.long()), RuntimeError, "Long"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(BAD_CASES))
def test_bad_input_raises_like_torch(name, device):
    fn, exc, msg = BAD_CASES[name]
    x, w = _bad(device)
    with pytest.raises(exc) as info:
        fn(x, w)
    assert msg in str(info.value), str(info.value)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_to_raw_ops_raises_before_writing(device):
    x, w = _bad(device)
    with pytest.raises(RuntimeError, match="negative padding is not supported"):
        torch.ops.convx.conv2d(x, w, None, [1, 1], [0, 0, -1, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="expected padding as 4 values"):
        torch.ops.convx.conv2d(x, w, None, [1, 1], [1, 1], [1, 1], 1)
    gy = make_tensor((1, 8, 3, 3), torch.float32, device)
    with pytest.raises(RuntimeError, match="expected grad_output of size"):
        torch.ops.convx.conv2d_backward_input(gy[:, :4], w, [1, 4, 5, 5], [1, 1], [0, 0, 0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="expected grad_output of size"):
        torch.ops.convx.conv2d_backward_weight(gy[..., :2], x, [8, 4, 3, 3], [1, 1], [0, 0, 0, 0], [1, 1], 1, True)


@CUDA_SKIP
def test_cuda_device_mismatch():
    x, w = _bad("cuda")
    with pytest.raises(RuntimeError, match="same device"):
        CF.conv2d(x, w.cpu())
    with pytest.raises(RuntimeError, match="same device"):
        CF.conv2d(x, w, torch.zeros(8))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
def test_strided_bias(device, layout):
    """A bias that is a strided view (every other element of a buffer) is read
    through its stride, not as if it were dense."""
    x, w, _, kw = _inputs(EDGE_CASES["groups2"], device, torch.float32, layout)
    b = make_tensor((2 * w.shape[0],), torch.float32, device)[::2].requires_grad_()
    y, yr = CF.conv2d(x, w, b, **kw), F.conv2d(x, w, b, **kw)
    torch.testing.assert_close(y, yr, **tolerances(torch.float32))
    gy = torch.randn_like(yr)
    for g, gr in zip(torch.autograd.grad(y, [x, w, b], gy), torch.autograd.grad(yr, [x, w, b], gy)):
        torch.testing.assert_close(g, gr, **tolerances(torch.float32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cin,layout", [(1, "contiguous"), (1, "channels_last"), (4, "channels_last"),
                                        (4, "contiguous")])
def test_weight_gradient_has_the_weights_strides(device, cin, layout):
    """The gradient layout contract (AccumulateGrad, DistributedDataParallel's buckets compare strides):
    a 1-input-channel weight's gradient must not come back with other strides for its size-1 axis."""
    w = make_tensor((8, cin, 3, 3), torch.float32, device, layout, requires_grad=True)
    x = make_tensor((2, cin, 6, 6), torch.float32, device)
    for fn, weight in ((convx.functional.conv2d, w), (convx.functional.conv_transpose2d, None)):
        if weight is None:
            weight = make_tensor((cin, 8, 3, 3), torch.float32, device, layout, requires_grad=True)
        g, = torch.autograd.grad(fn(x, weight).sum(), weight)
        assert g.stride() == weight.stride(), (fn.__name__, g.stride(), weight.stride())


# The CPU GEMM path reads the weight in the layout it comes in (a channels_last weight in place for
# an NHWC product; anything else through a copy): channels_last, contiguous, and strided weights
# (a slice of a larger weight, a transposed view), with activations in both layouts, forward and
# both gradients, against float64. Stride 2 keeps the 3x3 layers off Winograd.
@pytest.mark.parametrize("weight_view", ["channels_last", "contiguous", "sliced", "transposed"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("groups", [1, 2])
def test_cpu_weight_layouts(weight_view, layout, groups):
    mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x0 = torch.randn(3, 16, 11, 10, dtype=torch.float64)
    big = torch.randn(12, 16 // groups + 3, 3, 3, dtype=torch.float64)
    w0 = big[:, 1:1 + 16 // groups]  # non-contiguous
    w0 = {"channels_last": w0.contiguous(memory_format=torch.channels_last), "contiguous": w0.contiguous(),
          "sliced": w0, "transposed": w0.contiguous().transpose(2, 3)}[weight_view]
    x = x0.float().contiguous(memory_format=mf).requires_grad_()
    w = w0.float().requires_grad_()
    y = CF.conv2d(x, w, None, 2, 1, 1, groups)
    gy = torch.randn(y.shape, dtype=torch.float64)
    gx, gw = torch.autograd.grad(y, (x, w), gy.float())
    xr, wr = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    yr = F.conv2d(xr, wr, None, 2, 1, 1, groups)
    gxr, gwr = torch.autograd.grad(yr, (xr, wr), gy)
    for got, ref in ((y, yr), (gx, gxr), (gw, gwr)):
        torch.testing.assert_close(got.double(), ref, atol=1e-4, rtol=1e-4)
