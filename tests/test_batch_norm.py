"""BatchNorm2d and the fused tails (BN + ReLU, BN + add + ReLU): parity with
torch's eager sequence (outputs, running stats after several steps,
num_batches_tracked, every gradient), numerics with a large offset,
gradcheck, opcheck, torch.compile, and bad input (with nothing written)."""
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

import convx
from conftest import (DEVICE_DTYPES, DEVICES, LAYOUTS, assert_close_to_reference, cuda_semantics, make_tensor,
                      memory_format_of)

CF = convx.functional

VARIANTS = {  # (activation, residual)
    "bn": (None, False),
    "bn_relu": ("relu", False),
    "bn_add_relu": ("relu", True),
    "bn_add": (None, True),
}
CONFIGS = {
    "default": dict(),
    "momentum_none": dict(momentum=None),
    "no_running_stats": dict(track_running_stats=False),
    "no_affine": dict(affine=False),
    "eps_1e-3_momentum_0.3": dict(eps=1e-3, momentum=0.3),
}


def _reference(m, x, residual, activation):
    y = m(x)
    if residual is not None:
        y = y + residual
    return torch.relu(y) if activation == "relu" else y


def _pair(C, device, dtype, activation, **cfg):
    ref = torch.nn.BatchNorm2d(C, **cfg).to(device)
    m = convx.BatchNorm2d(C, activation=activation, **cfg).to(device)
    if ref.affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
    if ref.track_running_stats:
        with torch.no_grad():
            ref.running_mean.uniform_(-1, 1)
            ref.running_var.uniform_(0.5, 2)
    m.load_state_dict(ref.state_dict(), strict=True)
    if dtype == torch.float64:
        ref.double()
        m.double()
    return m, ref


def _run_steps(device, dtype, layout, variant, cfg, shape=(4, 6, 5, 7), steps=3, tol=None):
    tol = tol or {}
    activation, has_res = VARIANTS[variant]
    m, ref = _pair(shape[1], device, dtype if dtype == torch.float64 else torch.float32, activation, **cfg)
    half = dtype in (torch.float16, torch.bfloat16)
    for step in range(steps):
        x = make_tensor(shape, dtype, device, layout, requires_grad=True, low=-2, high=3)
        r = make_tensor(shape, dtype, device, layout, requires_grad=True) if has_res else None
        y = m(x, r) if has_res else m(x)
        if half:
            # torch's eager sequence in the same dtype, and a float64 reference
            yr = _reference(ref, x, r, activation)
            m64, ref64 = m, ref
            assert y.dtype == dtype
            assert_close_to_reference(y, yr, _reference(ref64.double(), x.double(), r.double() if has_res else None,
                                                         activation).detach())
            ref.float()
            return
        yr = _reference(ref, x, r, activation)
        assert y.shape == yr.shape and y.dtype == yr.dtype
        assert memory_format_of(y) == memory_format_of(yr)
        torch.testing.assert_close(y, yr)
        gy = make_tensor(shape, dtype, device)
        inputs = [x] + ([r] if has_res else [])
        params = [m.weight, m.bias] if m.affine else []
        params_r = [ref.weight, ref.bias] if ref.affine else []
        g = torch.autograd.grad(y, inputs + params, gy)
        gr = torch.autograd.grad(yr, inputs + params_r, gy)
        for a, b in zip(g, gr):
            torch.testing.assert_close(a, b, **tol)
    for (k, a), (_, b) in zip(m.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k, **tol)
    # eval mode with the running statistics (or batch statistics without them)
    m.eval()
    ref.eval()
    x = make_tensor(shape, dtype, device, layout, requires_grad=True)
    r = make_tensor(shape, dtype, device, layout, requires_grad=True) if has_res else None
    y = m(x, r) if has_res else m(x)
    yr = _reference(ref, x, r, activation)
    torch.testing.assert_close(y, yr)
    gy = make_tensor(shape, dtype, device)
    for a, b in zip(torch.autograd.grad(y, x, gy), torch.autograd.grad(yr, x, gy)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_train_and_eval(variant, device, dtype, layout):
    _run_steps(device, dtype, layout, variant, {})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["bn", "bn_add_relu"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_module_configs(config, variant, device):
    _run_steps(device, torch.float64, "contiguous", variant, CONFIGS[config])
    _run_steps(device, torch.float32, "channels_last", variant, CONFIGS[config])


SHAPES_MD = {"56x56x256": (2, 256, 56, 56), "28x28x512": (2, 512, 28, 28), "14x14x1024": (2, 1024, 14, 14),
             "7x7x2048": (2, 2048, 7, 7)}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", list(SHAPES_MD.values()), ids=list(SHAPES_MD))
def test_benchmark_shapes(shape, device, layout):
    # per-channel sums over N*H*W elements: reduction tolerances for float32
    _run_steps(device, torch.float32, layout, "bn_add_relu", {}, shape=shape, steps=1, tol=dict(rtol=1e-4, atol=1e-4))


@pytest.mark.parametrize("device,dtype", [p for p in DEVICE_DTYPES if "f16" not in p.id])
def test_statistics_with_large_offset(device, dtype):
    """Mean 1e3, std 1: E[x^2] - E[x]^2 would lose the variance; ours keeps it."""
    x = (torch.randn(8, 4, 32, 32, dtype=torch.float64) + 1e3).to(dtype).to(device)
    rm, rv = torch.zeros(4, device=device), torch.ones(4, device=device)
    mean, var = torch.ops.convx.batch_norm_stats(x, rm, rv, 1.0)
    x64 = x.double()
    ref_var = x64.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), x64.mean((0, 2, 3)), rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-4 if dtype != torch.float64 else 1e-10, atol=0)
    n = x.numel() // 4
    torch.testing.assert_close(rv.double(), ref_var * n / (n - 1), rtol=1e-4, atol=0)


@pytest.mark.parametrize("case", ["offset", "outlying_samples"])
@pytest.mark.parametrize("device,dtype", [p for p in DEVICE_DTYPES if "f16" not in p.id])
def test_channels_last_statistics_with_large_offset(device, dtype, case):
    """The CPU reads a channels_last input once for its statistics, around a shift
    sampled from 16 pixels spread over the batch (csrc/cpu/batch_norm.cpp). Mean 1e3,
    std 1 keeps its variance; and where the sampled pixels lie far from the mean
    (here all of them 0 among values near 1e3, 23 standard deviations away) the
    variance gets its own pass around the mean instead of cancelling."""
    x64 = torch.randn(8, 4, 32, 32, dtype=torch.float64) + 1e3
    if case == "outlying_samples":  # pixels i * P / 16 of the 8 x 32 x 32 = 8192: (h, w) = (0, 0), (16, 0)
        x64[:, :, 0, 0] = 0
        x64[:, :, 16, 0] = 0
    x = x64.to(dtype).contiguous(memory_format=torch.channels_last).to(device)
    rm, rv = torch.zeros(4, device=device), torch.ones(4, device=device)
    mean, var = torch.ops.convx.batch_norm_stats(x, rm, rv, 1.0)
    x64 = x.double()
    torch.testing.assert_close(mean.double(), x64.mean((0, 2, 3)), rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), x64.var((0, 2, 3), unbiased=False),
                               rtol=1e-10 if dtype == torch.float64 else 1e-4 if cuda_semantics(device) else 2e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_one_value_per_channel(device):
    m = convx.BatchNorm2d(3).to(device)
    x = make_tensor((1, 3, 1, 1), torch.float32, device)
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training, got input size "
                                         r"torch.Size\(\[1, 3, 1, 1\]\)"):
        m(x)
    m.eval()
    torch.testing.assert_close(m(x), torch.nn.BatchNorm2d(3).to(device).eval()(x))


@pytest.mark.parametrize("device", DEVICES)
def test_batch0(device):
    m, ref = convx.BatchNorm2d(3).to(device), torch.nn.BatchNorm2d(3).to(device)
    x = make_tensor((0, 3, 4, 4), torch.float32, device, requires_grad=True)
    y = m(x)
    assert y.shape == ref(x).shape
    assert torch.autograd.grad(y.sum(), x)[0].shape == x.shape
    for (k, a), (_, b) in zip(m.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu,residual", [(False, False), (True, False), (True, True)])
def test_gradcheck(relu, residual, training, device):
    x = make_tensor((3, 2, 4, 3), torch.float64, device, requires_grad=True)
    r = make_tensor((3, 2, 4, 3), torch.float64, device, requires_grad=True) if residual else None
    w = make_tensor((2,), torch.float64, device, requires_grad=True, low=0.5, high=1.5)
    b = make_tensor((2,), torch.float64, device, requires_grad=True)
    rm, rv = torch.zeros(2, dtype=torch.float64, device=device), torch.ones(2, dtype=torch.float64, device=device)

    def f(x, w, b, *r):
        return CF.batch_norm(x, None if training else rm, None if training else rv, w, b, training,
                             residual=r[0] if r else None, relu=relu)

    assert torch.autograd.gradcheck(f, (x, w, b) + ((r,) if residual else ()))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, layout):
    x = make_tensor((3, 4, 5, 2), torch.float64, device, layout, requires_grad=True)
    r = make_tensor((3, 4, 5, 2), torch.float64, device, layout, requires_grad=True)
    w = make_tensor((4,), torch.float64, device, requires_grad=True)
    b = make_tensor((4,), torch.float64, device, requires_grad=True)
    ops = torch.ops.convx
    rm, rv = torch.zeros(4, dtype=torch.float64, device=device), torch.ones(4, dtype=torch.float64, device=device)
    torch.library.opcheck(ops.batch_norm_stats, (x.detach(), rm, rv, 0.1))
    torch.library.opcheck(ops.batch_norm_stats, (x.detach(), None, None, 0.1))
    mean, var = ops.batch_norm_stats(x.detach(), None, None, 0.1)
    for relu, res in [(False, None), (True, None), (True, r)]:
        torch.library.opcheck(ops.batch_norm, (x, mean, var, w, b, res, 1e-5, True, relu))
    torch.library.opcheck(ops.batch_norm, (x, rm, rv, None, None, None, 1e-5, False, False))
    y = ops.batch_norm(x.detach(), mean, var, w.detach(), b.detach(), None, 1e-5, True, True)
    torch.library.opcheck(ops.batch_norm_backward, (torch.randn_like(y), x.detach(), mean, var, w.detach(), y, 1e-5,
                                                    True, True, [True, True, True, True]))
    torch.library.opcheck(ops.add_relu, (x, r))
    torch.library.opcheck(ops.add_relu_, (x.detach().clone(), r.detach()))
    torch.library.opcheck(ops.add_relu_backward, (torch.randn_like(y).requires_grad_(), y))


class _Block(torch.nn.Module):
    def __init__(self, conv, bn, fused):
        super().__init__()
        self.conv = conv(4, 4, 3, padding=1, bias=False)
        self.bn = bn(4, activation="relu") if fused else bn(4)
        self.fused = fused

    def forward(self, x):
        if self.fused:
            return self.bn(self.conv(x), x)
        return torch.relu(self.bn(self.conv(x)) + x)


def test_torch_compile_training_step():
    torch._dynamo.reset()
    ref = _Block(torch.nn.Conv2d, torch.nn.BatchNorm2d, False)
    net = _Block(convx.Conv2d, convx.BatchNorm2d, True)
    net.load_state_dict(ref.state_dict())
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    for _ in range(2):
        x = make_tensor((2, 4, 6, 6), torch.float32, "cpu", requires_grad=True)
        y, yr = compiled(x), ref(x)
        torch.testing.assert_close(y, yr, rtol=1e-4, atol=1e-4)
        g = torch.autograd.grad(y.sum(), [x, net.conv.weight, net.bn.weight])
        gr = torch.autograd.grad(yr.sum(), [x, ref.conv.weight, ref.bn.weight])
        for a, b in zip(g, gr):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for (k, a), (_, b) in zip(net.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_module_state_dict_and_repr():
    m, ref = convx.BatchNorm2d(8), torch.nn.BatchNorm2d(8)
    assert isinstance(m, torch.nn.BatchNorm2d) and repr(m) == repr(ref)
    assert list(m.state_dict()) == list(ref.state_dict())
    assert "activation='relu'" in repr(convx.BatchNorm2d(8, activation="relu"))
    with pytest.raises(ValueError):
        convx.BatchNorm2d(8, activation="gelu")


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    x = make_tensor((8, 16, 9, 9), torch.float32, device, "channels_last", requires_grad=True)
    r = make_tensor((8, 16, 9, 9), torch.float32, device, "channels_last", requires_grad=True)
    runs = []
    for _ in range(2):
        m = convx.BatchNorm2d(16, activation="relu").to(device)
        y = m(x, r)
        runs.append([y, m.running_var] + list(torch.autograd.grad(y.square().sum(), [x, r, m.weight])))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


RANKS = {  # name: (shape, layout)
    "1d_nc": ((6, 5), "contiguous"),
    "1d_ncl": ((3, 5, 7), "contiguous"),
    "1d_ncl_noncontiguous": ((3, 5, 7), "noncontiguous"),
    "1d_ncl_transposed": ((3, 5, 7), "transposed"),
    "3d": ((2, 5, 3, 4, 3), "contiguous"),
    "3d_channels_last_3d": ((2, 5, 3, 4, 3), "channels_last_3d"),
    "3d_noncontiguous": ((2, 5, 3, 4, 3), "noncontiguous"),
    "6d": ((2, 5, 2, 2, 3, 2), "contiguous"),
}


def _ranked(shape, layout, device, dtype=torch.float64):
    if layout == "transposed":  # (N, L, C) storage seen as (N, C, L)
        return make_tensor((shape[0], shape[2], shape[1]), dtype, device).transpose(1, 2).requires_grad_()
    if layout == "channels_last_3d":
        return make_tensor(shape, dtype, device).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    return make_tensor(shape, dtype, device, layout, requires_grad=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["bn", "bn_add_relu"])
@pytest.mark.parametrize("rank", list(RANKS))
def test_every_input_rank(rank, variant, device):
    """functional.batch_norm takes (N, C, *) of any rank, as torch's does; the
    modules BatchNorm1d / 3d are the twins of torch's."""
    shape, layout = RANKS[rank]
    activation, has_res = VARIANTS[variant]
    C = shape[1]
    cls, ref_cls = {2: (convx.BatchNorm1d, torch.nn.BatchNorm1d), 3: (convx.BatchNorm1d, torch.nn.BatchNorm1d),
                    5: (convx.BatchNorm3d, torch.nn.BatchNorm3d)}.get(len(shape), (None, None))
    for training in (True, False):
        x = _ranked(shape, layout, device)
        res = make_tensor(shape, torch.float64, device, requires_grad=True) if has_res else None
        rm, rv = torch.rand(C, dtype=torch.float64, device=device), torch.rand(C, dtype=torch.float64,
                                                                               device=device) + 0.5
        w = torch.rand(C, dtype=torch.float64, device=device, requires_grad=True)
        b = torch.rand(C, dtype=torch.float64, device=device, requires_grad=True)
        rm_ref, rv_ref = rm.clone(), rv.clone()
        y = CF.batch_norm(x, rm, rv, w, b, training, 0.2, 1e-3, residual=res, relu=activation == "relu")
        # torch on CUDA takes at most 5 dimensions (cuDNN: "Expected 2 to 5 dimensions"); the statistics
        # are per channel over everything else, so the reference sees the trailing ones merged.
        yr = _reference(lambda t: F.batch_norm(t.flatten(4) if t.dim() > 5 else t, rm_ref, rv_ref, w, b, training,
                                               0.2, 1e-3).view(t.shape), x, res, activation)
        assert y.shape == x.shape
        if layout == "channels_last_3d":
            assert y.is_contiguous(memory_format=torch.channels_last_3d)
        torch.testing.assert_close(y, yr)
        torch.testing.assert_close(rm, rm_ref)
        torch.testing.assert_close(rv, rv_ref)
        inputs = [x, w, b] + ([res] if has_res else [])
        gy = make_tensor(shape, torch.float64, device)
        for p, q in zip(torch.autograd.grad(y, inputs, gy), torch.autograd.grad(yr, inputs, gy)):
            torch.testing.assert_close(p, q)
    if cls is not None and variant == "bn":
        m, ref = cls(C, momentum=None).to(device).double(), ref_cls(C, momentum=None).to(device).double()
        for step in range(2):
            x = _ranked(shape, layout, device)
            torch.testing.assert_close(m(x), ref(x))
        for (k, a), (_, r) in zip(m.state_dict().items(), ref.state_dict().items()):
            torch.testing.assert_close(a, r, msg=k)
        m.eval(), ref.eval()
        torch.testing.assert_close(m(x), ref(x))


BAD = {
    "running_mean_length": (lambda x, d: CF.batch_norm(x, torch.zeros(3, device=d), torch.ones(4, device=d),
                                                       training=True), RuntimeError,
                            "running_mean should contain 4 elements not 3"),
    "running_var_length": (lambda x, d: CF.batch_norm(x, torch.zeros(4, device=d), torch.ones(3, device=d)),
                           RuntimeError, "running_var should contain 4 elements not 3"),
    "weight_length": (lambda x, d: CF.batch_norm(x, torch.zeros(4, device=d), torch.ones(4, device=d),
                                                 torch.ones(3, device=d), training=True), RuntimeError,
                      "weight should contain 4 elements not 3"),
    "eval_without_stats": (lambda x, d: CF.batch_norm(x, None, None, training=False), RuntimeError,
                           "running_mean must be defined in evaluation mode"),
    "eps_zero_training": (lambda x, d: CF.batch_norm(x, None, None, training=True, eps=0.0), ValueError,
                          "batch_norm eps must be positive during training, but got 0.0"),
    "eps_negative_training": (lambda x, d: CF.batch_norm(x, None, None, training=True, eps=-1.0), ValueError,
                              "batch_norm eps must be positive during training"),
    "module_3d": (lambda x, d: convx.BatchNorm2d(4).to(d)(x[0]), ValueError, "expected 4D input (got 3D input)"),
    "module1d_4d": (lambda x, d: convx.BatchNorm1d(4).to(d)(x), ValueError, "expected 2D or 3D input (got 4D input)"),
    "module3d_4d": (lambda x, d: convx.BatchNorm3d(4).to(d)(x), ValueError, "expected 5D input (got 4D input)"),
    "rank_1": (lambda x, d: CF.batch_norm(x[0, 0, 0], None, None, training=True), RuntimeError,
               "at least 2 dimensions"),
    "one_value_per_channel_2d": (lambda x, d: CF.batch_norm(x[:1, :, 0, 0], None, None, training=True), ValueError,
                                 "Expected more than 1 value per channel when training"),
    "residual_shape": (lambda x, d: CF.batch_norm(x, torch.zeros(4, device=d), torch.ones(4, device=d),
                                                  training=True, residual=x[:, :2]), RuntimeError,
                       "residual must have the input's size"),
    "add_relu_shape": (lambda x, d: CF.add_relu(x, x[:, :2]), RuntimeError, "must have the same size"),
    "add_relu_dtype": (lambda x, d: CF.add_relu(x, x.double()), RuntimeError, "must have the same dtype"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_writes_nothing(name, device):
    fn, exc, msg = BAD[name]
    x = make_tensor((2, 4, 3, 3), torch.float32, device)
    with pytest.raises(exc) as info:
        fn(x, device)
    assert msg in str(info.value), str(info.value)


@pytest.mark.parametrize("device", DEVICES)
def test_failed_call_leaves_running_stats(device):
    m = convx.BatchNorm2d(4).to(device)
    before = {k: v.clone() for k, v in m.state_dict().items() if k != "num_batches_tracked"}
    x = make_tensor((2, 4, 3, 3), torch.float32, device)
    with pytest.raises(RuntimeError):
        CF.batch_norm(x, m.running_mean, m.running_var, torch.ones(3, device=device), None, True)
    for k, v in before.items():
        assert torch.equal(v, m.state_dict()[k]), k


# ---------------------------------------------------------------- add + ReLU


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_add_relu(device, dtype, layout):
    a = make_tensor((2, 5, 4, 6), dtype, device, layout, requires_grad=True)
    b = make_tensor((2, 5, 4, 6), dtype, device, "contiguous", requires_grad=True)
    y = CF.add_relu(a, b)
    yr = torch.relu(a + b)
    assert memory_format_of(y) == suggest_memory_format(a)  # the result takes the first operand's layout
    torch.testing.assert_close(y, yr)
    gy = make_tensor(y.shape, dtype, device)
    for p, q in zip(torch.autograd.grad(y, [a, b], gy), torch.autograd.grad(yr, [a, b], gy)):
        torch.testing.assert_close(p, q)
    a2 = a.detach().clone()
    out = CF.add_relu(a2, b.detach(), inplace=True)
    assert out is a2
    torch.testing.assert_close(a2, yr.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_add_relu_vector_tails_and_nan(dtype):
    """The CPU loops (AVX2 builds where the CPU has it) over counts that leave a tail of every
    length, with NaN, infinities and zeros: torch's values and gradients, NaN passed through."""
    g = torch.Generator().manual_seed(5)
    for n in (1, 7, 15, 17, 33, 1000, 65537):
        a = torch.randn(n, generator=g, dtype=torch.float64)
        b = torch.randn(n, generator=g, dtype=torch.float64)
        a[:: max(1, n // 5)] = float("nan")
        b[1:: max(2, n // 3)] = float("inf")
        b[2:: max(3, n // 4)] = -a[2:: max(3, n // 4)]  # exact zeros
        a, b = a.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
        y, yr = CF.add_relu(a, b), torch.relu(a + b)
        torch.testing.assert_close(y, yr, equal_nan=True, rtol=0, atol=0)
        gy = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
        for p, q in zip(torch.autograd.grad(y, [a, b], gy), torch.autograd.grad(yr, [a, b], gy)):
            torch.testing.assert_close(p, q, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_add_relu_module_and_gradgrad(device):
    m = convx.AddReLU()
    a = make_tensor((2, 3, 4, 4), torch.float64, device, requires_grad=True)
    b = make_tensor((2, 3, 4, 4), torch.float64, device, requires_grad=True)
    torch.testing.assert_close(m(a, b), torch.relu(a + b))
    assert torch.autograd.gradcheck(CF.add_relu, (a, b))
    assert torch.autograd.gradgradcheck(CF.add_relu, (a, b))
    with pytest.raises(RuntimeError, match="does not support autograd"):
        convx.AddReLU(inplace=True)(a, b)
    with torch.no_grad():
        x = a.clone()
        convx.AddReLU(inplace=True)(x, b)
        torch.testing.assert_close(x, torch.relu(a + b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("view", ["transposed", "permuted", "strided", "channels_last"])
def test_add_relu_inplace_any_layout(view, device):
    """In place into a self whose memory order is not a standard format (a
    transposed / permuted / strided view): every element lands in its place."""
    base = make_tensor((2, 3, 5, 4), torch.float32, device)
    self_ = {"transposed": lambda t: t.transpose(2, 3),
             "permuted": lambda t: t.permute(0, 2, 3, 1),
             "strided": lambda t: t[:, :, ::2],
             "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last)}[view](base.clone())
    other = make_tensor(self_.shape, torch.float32, device)
    expected = torch.relu(self_ + other)
    CF.add_relu(self_, other, inplace=True)
    torch.testing.assert_close(self_, expected)


@pytest.mark.parametrize("device", DEVICES)
def test_add_relu_inplace_overlap(device):
    x = make_tensor((2, 3, 4, 4), torch.float32, device)
    expected = torch.relu(x + x)
    CF.add_relu(x, x, inplace=True)  # full overlap: fine, as for torch's in-place ops
    torch.testing.assert_close(x, expected)
    buf = make_tensor((2 * 3 * 4 * 4 + 5,), torch.float32, device)
    a, b = buf[:96].view(2, 3, 4, 4), buf[5:101].view(2, 3, 4, 4)  # partial overlap, as torch rejects it
    before = buf.clone()
    with pytest.raises(RuntimeError, match="unsupported operation") as ours:
        CF.add_relu(a, b, inplace=True)
    assert torch.equal(buf, before), "a rejected call wrote"
    with pytest.raises(RuntimeError, match="unsupported operation") as theirs:
        a.add_(b)
    assert str(ours.value).split(".")[0] == str(theirs.value).split(".")[0]
    e = make_tensor((1, 3, 4, 4), torch.float32, device).expand(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="unsupported operation"):
        CF.add_relu(e, x, inplace=True)


@pytest.mark.parametrize("device", DEVICES)
def test_relu_passes_nan_like_torch(device):
    """relu(NaN) is NaN and its gradient passes where the output is NaN, as
    torch.relu and its threshold_backward do (fused BN tails included)."""
    a = make_tensor((2, 3, 4, 4), torch.float32, device)
    a[0, 0, 0, :2] = float("nan")
    a = a.requires_grad_()
    b = make_tensor((2, 3, 4, 4), torch.float32, device, requires_grad=True)
    gy = make_tensor(a.shape, torch.float32, device)
    y, yr = CF.add_relu(a, b), torch.relu(a + b)
    torch.testing.assert_close(y, yr, equal_nan=True)
    for g, gr in zip(torch.autograd.grad(y, [a, b], gy), torch.autograd.grad(yr, [a, b], gy)):
        torch.testing.assert_close(g, gr, equal_nan=True)
    m, ref = convx.BatchNorm2d(3, activation="relu").to(device).eval(), torch.nn.BatchNorm2d(3).to(device).eval()
    y, yr = m(a, b), torch.relu(ref(a) + b)
    torch.testing.assert_close(y, yr, equal_nan=True)
    for g, gr in zip(torch.autograd.grad(y, [a, b], gy), torch.autograd.grad(yr, [a, b], gy)):
        torch.testing.assert_close(g, gr, equal_nan=True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
def test_statistics_over_more_than_2_24_values(device, layout):
    """A channel with more values than a float counts exactly (2^24 + 3):
    mean, variance and the running statistics against float64."""
    x = (torch.rand(1, 2, 4099, 4097, dtype=torch.float64) * 4 + 10).float()
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    x = x.to(device)
    rm, rv = torch.zeros(2, device=device), torch.ones(2, device=device)
    mean, var = torch.ops.convx.batch_norm_stats(x, rm, rv, 0.5)
    x64 = x.double()
    n = x64[:, 0].numel()
    assert n > 2 ** 24
    torch.testing.assert_close(mean.double(), x64.mean((0, 2, 3)), rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), x64.var((0, 2, 3), unbiased=False), rtol=1e-5, atol=0)
    torch.testing.assert_close(rv.double(), 0.5 + 0.5 * x64.var((0, 2, 3)), rtol=1e-5, atol=0)


@pytest.mark.parametrize("cls,ref_cls,shape", [(convx.BatchNorm1d, torch.nn.BatchNorm1d, (4, 3)),
                                               (convx.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 5, 5)),
                                               (convx.BatchNorm3d, torch.nn.BatchNorm3d, (2, 3, 2, 3, 3))])
def test_weight_without_bias(cls, ref_cls, shape):
    """torch's bias=False (an affine scale with no shift): same state_dict, outputs and gradients.
    A torch without it (2.11) refuses the argument, and so does convx there."""
    if "bias" not in inspect.signature(ref_cls.__init__).parameters:
        for c in (ref_cls, cls):
            with pytest.raises(TypeError, match="bias"):
                c(3, bias=False)
        return
    m, ref = cls(3, bias=False).double(), ref_cls(3, bias=False).double()
    assert m.bias is None and list(m.state_dict()) == list(ref.state_dict())
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y, yr = m(x), ref(x)
    torch.testing.assert_close(y, yr)
    for a, b in zip(torch.autograd.grad(y.square().sum(), [x, m.weight]),
                    torch.autograd.grad(yr.square().sum(), [x, ref.weight])):
        torch.testing.assert_close(a, b)


# channels_last on the CPU: the channel sums run in (pixel chunk of 2048, channel block) units.
# Few pixels and many channels (one chunk: the channel blocks alone spread the work; 300 is no
# multiple of the 16-channel block step) and many pixels with few channels (several chunks).
@pytest.mark.parametrize("shape", [(2, 300, 3, 3), (3, 40, 40, 40), (1, 2048, 7, 7)], ids=str)
@pytest.mark.parametrize("relu", [False, True])
def test_cpu_channels_last_sums_by_channel_blocks(shape, relu):
    from conftest import single_threaded

    x0 = torch.randn(shape, dtype=torch.float64) * 3 + 2
    w0, b0 = torch.randn(shape[1], dtype=torch.float64), torch.randn(shape[1], dtype=torch.float64)
    gy = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=torch.channels_last)

    def run():
        x = x0.float().contiguous(memory_format=torch.channels_last).requires_grad_()
        w, b = w0.float().requires_grad_(), b0.float().requires_grad_()
        rm, rv = torch.zeros(shape[1]), torch.ones(shape[1])
        y = CF.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5, relu=relu)
        return (y, *torch.autograd.grad(y, (x, w, b), gy.float()), rm, rv)

    got = run()
    xr, wr, br = x0.clone().requires_grad_(), w0.clone().requires_grad_(), b0.clone().requires_grad_()
    rmr, rvr = torch.zeros(shape[1], dtype=torch.float64), torch.ones(shape[1], dtype=torch.float64)
    yr = F.batch_norm(xr, rmr, rvr, wr, br, True, 0.1, 1e-5)
    yr = yr.relu() if relu else yr
    ref = (yr, *torch.autograd.grad(yr, (xr, wr, br), gy), rmr, rvr)
    for a, r in zip(got, ref):
        torch.testing.assert_close(a.double(), r, rtol=1e-4, atol=1e-4 * (1 + r.abs().max().item()))
    for a, b in zip(single_threaded(run), got):  # the same bits on one thread
        assert torch.equal(a, b)
