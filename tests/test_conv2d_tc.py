"""The tensor-core convolutions (csrc/cuda/conv2d_tc.cu) on the emulator, and on a GPU where present.

Forward, data gradient and weight gradient in float16, bfloat16 and float32 through
TF32, both layouts, over the cases that reach each path (the cp.async pipeline,
the strided gather, split-K, the stride-1 data gradient as a flipped forward) and
the channel counts tiles do not divide (3, 17, 130, 208). The reference is float64
on the same (already rounded) inputs; the tolerance is derived per element from
the reduction length and the precision:

    |y - ref| <= u_out |ref| + (K 2^-23 + t) (|A| @ |B|) + tiny

with u_out the output type's unit roundoff, K the reduction length, |A| @ |B|
the same convolution of absolute values, and t = 2^-9 for TF32 (both operands
lose up to 2^-10 of their value to the 10-bit mantissa), 0 otherwise.
"""
import pytest
import torch
import torch.nn.functional as F

import convx
from conftest import CUDA_SKIP, SIMT, SIMT_MARKS, memory_format_of

DEVICES = [pytest.param(SIMT, id="simt", marks=SIMT_MARKS),
           pytest.param("cuda", id="cuda", marks=CUDA_SKIP)]
DTYPES = [pytest.param(torch.float16, id="f16"), pytest.param(torch.bfloat16, id="bf16"),
          pytest.param(torch.float32, id="tf32")]
UNIT = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8, torch.float32: 2.0 ** -24}

# name: (N, C, H, W, K, (R, S), stride, padding, dilation, groups)
CASES = {
    "3x3": (2, 32, 9, 9, 40, (3, 3), 1, 1, 1, 1),
    "stem_c3_7x7_s2": (2, 3, 20, 20, 64, (7, 7), 2, 3, 1, 1),
    "1x1": (2, 64, 7, 7, 48, (1, 1), 1, 0, 1, 1),
    "1x7": (1, 24, 9, 9, 32, (1, 7), 1, (0, 3), 1, 1),
    "7x1_c17": (1, 17, 9, 8, 24, (7, 1), 1, (3, 0), 1, 1),
    "grouped_2": (2, 64, 6, 6, 64, (3, 3), 1, 1, 1, 2),
    "aniso_stride_dil": (1, 16, 13, 11, 24, (3, 2), (2, 3), (2, 1), (2, 1), 1),
    "k130_two_column_tiles": (1, 16, 12, 12, 130, (3, 3), 1, 1, 1, 1),
    "c208_1x1": (1, 208, 5, 5, 24, (1, 1), 1, 0, 1, 1),
    "split_k_wgrad": (4, 16, 16, 16, 32, (3, 3), 1, 1, 1, 1),
    "no_padding_s2": (2, 24, 11, 11, 32, (3, 3), 2, 0, 1, 1),
    # RELIABILITY.md's cases, with channel counts that reach the tensor cores
    "batch0": (0, 16, 5, 5, 32, (3, 3), 1, 1, 1, 1),
    "1x1_input": (2, 32, 1, 1, 24, (1, 1), 1, 0, 1, 1),
    "kernel_eq_padded_input": (2, 16, 3, 3, 24, (5, 5), 1, 1, 1, 1),
    "c5_5x5": (1, 5, 9, 9, 16, (5, 5), 1, 2, 1, 1),
    "c832_1x1": (1, 832, 3, 3, 32, (1, 1), 1, 0, 1, 1),
    "stride3": (1, 16, 10, 10, 16, (3, 3), 3, 0, 1, 1),
    "dilation4": (1, 16, 12, 12, 16, (3, 3), 1, 4, 4, 1),
    "groups4": (1, 128, 6, 6, 64, (3, 2), 1, 1, 1, 4),
    "small_spatial_split_k": (1, 512, 3, 3, 64, (3, 3), 1, 1, 1, 1),
}
NO_BIAS = {"groups4", "stride3"}


def _make(case, dtype, layout, device):
    N, C, H, W, K, (R, S), stride, pad, dil, groups = CASES[case]
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, C, H, W, generator=g).to(dtype)
    w = (torch.randn(K, C // groups, R, S, generator=g) / (C // groups * R * S) ** 0.5).to(dtype)
    b = None if case in NO_BIAS else torch.randn(K, generator=g).to(dtype)
    if layout in ("channels_last", "channels_last_input_contiguous_weight"):
        x = x.contiguous(memory_format=torch.channels_last)
    if layout == "contiguous_input_channels_last_weight":
        w = w.contiguous(memory_format=torch.channels_last)
    dev = "cuda" if device == "cuda" else "cpu"
    return (x.to(dev), w.to(dev), None if b is None else b.to(dev),
            dict(stride=stride, padding=pad, dilation=dil, groups=groups))


def _bound(ref, absref, dtype, k):
    t = 2.0 ** -9 if dtype == torch.float32 else 0.0
    return UNIT[dtype] * ref.abs() + (k * 2.0 ** -23 + t) * absref + 1e-30


def _check(name, got, ref, absref, dtype, k):
    assert got.shape == ref.shape, name
    err = (got.double().cpu() - ref).abs()
    if err.numel() == 0:
        return
    bound = _bound(ref, absref, dtype, k)
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"{name}: error {err.max().item():.3g} exceeds the bound by {worst:.2f}x"


@pytest.fixture
def tf32_on():
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32 = False


LAYOUTS = ["channels_last", "contiguous", "channels_last_input_contiguous_weight", "contiguous_input_channels_last_weight"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_tensor_core_conv_within_bound(case, dtype, layout, device, tf32_on):
    x, w, b, kw = _make(case, dtype, layout, device)
    x.requires_grad_(True)
    w.requires_grad_(True)
    y = convx.functional.conv2d(x, w, b, **kw)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(dtype).to(y.device)
    gx, gw = torch.autograd.grad(y, (x, w), gy)

    xd, wd, gyd = (t.detach().double().cpu() for t in (x, w, gy))
    bd = None if b is None else b.double().cpu()
    ref = F.conv2d(xd, wd, bd, **kw)
    absref = F.conv2d(xd.abs(), wd.abs(), None if bd is None else bd.abs(), **kw)
    N, C, H, W, K, (R, S), *_ , groups = CASES[case]
    _check("forward", y, ref, absref, dtype, C // groups * R * S + 1)
    _check("data gradient", gx, torch.nn.grad.conv2d_input(xd.shape, wd, gyd, **kw),
           torch.nn.grad.conv2d_input(xd.shape, wd.abs(), gyd.abs(), **kw), dtype, K // groups * R * S)
    _check("weight gradient", gw, torch.nn.grad.conv2d_weight(xd, wd.shape, gyd, **kw),
           torch.nn.grad.conv2d_weight(xd.abs(), wd.shape, gyd.abs(), **kw), dtype, y.shape[0] * y.shape[2] * y.shape[3])
    if y.numel():  # torch's layout for the result
        assert memory_format_of(y) == memory_format_of(F.conv2d(x.detach().float().cpu(), w.detach().float().cpu(), **kw))


def _kernels(fn):
    convx.simt.clear_launches()
    fn()
    return [launch.kernel for launch in convx.simt.launches()]


@pytest.mark.parametrize("device", [pytest.param(SIMT, id="simt", marks=SIMT_MARKS)])
def test_kernel_choice(device, tf32_on):
    """Which kernel each case reaches (the emulator's launch log)."""
    def fwd(case, dtype, layout="channels_last"):
        x, w, b, kw = _make(case, dtype, layout, device)
        return _kernels(lambda: convx.functional.conv2d(x, w, b, **kw))

    def bwd(case, dtype, layout="channels_last"):
        x, w, b, kw = _make(case, dtype, layout, device)
        x.requires_grad_(True)
        w.requires_grad_(True)
        y = convx.functional.conv2d(x, w, b, **kw)
        return _kernels(lambda: torch.autograd.grad(y, (x, w), torch.ones_like(y)))

    first = lambda names: names[0]
    assert first(fwd("3x3", torch.float16)).startswith("tc_fast_kernel<c10::Half")
    # NCHW: the pipeline on channels_last copies (the gather kernel ran 4-14x slower on an H200)
    assert first(fwd("3x3", torch.bfloat16, "contiguous")).startswith("tc_fast_kernel<c10::BFloat16")
    assert any(k.startswith("tc_fast_kernel") for k in bwd("3x3", torch.float16, "contiguous"))  # and its dgrad
    assert first(fwd("stem_c3_7x7_s2", torch.float16, "contiguous")).startswith("tc_gather_kernel")
    assert first(fwd("stem_c3_7x7_s2", torch.float16)).startswith("tc_gather_kernel")  # 3 channels: no 16-byte runs
    assert first(fwd("3x3", torch.float32)).startswith("tc_fast_kernel<float")
    split = fwd("small_spatial_split_k", torch.float16)
    assert split[0].startswith("tc_fast_kernel<c10::Half, SplitForward") and split[1].startswith("sum_forward_splits")
    assert any(k.startswith("tc_fast_kernel") for k in bwd("3x3", torch.float16))           # stride-1 dgrad
    assert any(k.startswith("flip_weight_kernel") for k in bwd("3x3", torch.float16))
    assert any("DgradProblem" in k and k.startswith("tc_gather") for k in bwd("no_padding_s2", torch.float16))
    assert any("WgradProblem" in k and k.startswith("tc_gather") for k in bwd("3x3", torch.bfloat16))
    assert any(k.startswith("sum_splits_kernel") for k in bwd("split_k_wgrad", torch.float16))
    # the CUDA-core fallback: float64, exact float32, depthwise
    assert fwd("3x3", torch.float64)[-1].startswith("igemm_kernel")
    torch.backends.cudnn.allow_tf32 = False
    assert fwd("3x3", torch.float32)[-1].startswith("igemm_kernel")
    x = torch.randn(1, 32, 8, 8, dtype=torch.float16)
    w = torch.randn(32, 1, 3, 3, dtype=torch.float16)
    assert _kernels(lambda: convx.functional.conv2d(x, w, padding=1, groups=32))[-1].startswith("igemm_kernel")


@pytest.mark.parametrize("device", [pytest.param(SIMT, id="simt", marks=SIMT_MARKS)])
def test_tf32_follows_torch_flag(device):
    """float32 is exact with allow_tf32 off, and within the TF32 bound (not exact) with it on."""
    x, w, b, kw = _make("3x3", torch.float32, "channels_last", device)
    ref = F.conv2d(x.double(), w.double(), b.double(), **kw)
    exact = convx.functional.conv2d(x, w, b, **kw)
    assert (exact.double() - ref).abs().max().item() < 1e-4
    torch.backends.cudnn.allow_tf32 = True
    try:
        tf32 = convx.functional.conv2d(x, w, b, **kw)
    finally:
        torch.backends.cudnn.allow_tf32 = False
    err = (tf32.double() - ref).abs().max().item()
    assert 1e-5 < err < 2e-2  # TF32 rounding is visible, and bounded


@pytest.mark.parametrize("device", [pytest.param(SIMT, id="simt", marks=SIMT_MARKS)])
def test_weight_view_at_odd_offset(device):
    """A channels_last weight whose data starts 2 bytes into its storage: the pipeline must not
    issue misaligned 16-byte copies (the emulator raises on them, as the GPU faults)."""
    base = torch.randn(24 * 32 * 9 + 1).to(torch.float16)
    w = base[1:].view(24, 3, 3, 32).permute(0, 3, 1, 2)  # channels_last strides, offset 1 element
    assert w.is_contiguous(memory_format=torch.channels_last) and w.data_ptr() % 16
    x = torch.randn(2, 32, 7, 7).to(torch.float16).contiguous(memory_format=torch.channels_last)
    convx.simt.clear_launches()
    y = convx.functional.conv2d(x, w, padding=1)
    assert convx.simt.launches()[0].kernel.startswith("tc_fast_kernel")
    ref = F.conv2d(x.double(), w.double(), padding=1)
    assert (y.double() - ref).abs().max().item() < 5e-2


@pytest.mark.parametrize("device", [pytest.param(SIMT, id="simt", marks=SIMT_MARKS)])
def test_noncontiguous_nan_gaps(device):
    """A strided channels_last view whose gaps hold NaN: the fast path must not read the gaps."""
    big = torch.full((2, 48, 10, 10), float("nan"), dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    x = big[:, 8:40]
    x.copy_(torch.randn(x.shape).to(torch.float16))
    w = (torch.randn(24, 32, 3, 3) / 17).to(torch.float16)
    y = convx.functional.conv2d(x, w, padding=1)
    ref = F.conv2d(x.double(), w.double(), padding=1)
    assert torch.isfinite(y).all()
    assert (y.double() - ref).abs().max().item() < 2e-2


@pytest.mark.parametrize("device", [pytest.param(SIMT, id="simt", marks=SIMT_MARKS)])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_swizzle_has_no_bank_conflicts(device, layout, tf32_on):
    """Every ldmatrix of the tensor-core kernels reads 8 rows from 8 different bank groups."""
    conflicts = lambda: torch.ops.convx_simt.tensor_core_probe("stats.ldmatrix_conflicts", torch.zeros(1, dtype=torch.int32)).item()
    for dtype in (torch.float16, torch.float32):
        x, w, b, kw = _make("3x3", dtype, layout, device)
        x.requires_grad_(True)
        w.requires_grad_(True)
        conflicts()
        y = convx.functional.conv2d(x, w, b, **kw)
        torch.autograd.grad(y, (x, w), torch.ones_like(y))
        assert conflicts() == 0
    # the counter does count: a probe whose lanes all point at row 0 conflicts 7 extra times per matrix
    torch.ops.convx_simt.tensor_core_probe("ldmatrix.x4", torch.zeros(32, dtype=torch.int32))
    assert conflicts() == 4 * 7


SWEEP = [  # (N, C, H, W, K, R, S, stride, pad, dil, groups)
    (1, 16, 8, 8, 32, 3, 3, 1, 1, 1, 1), (2, 3, 12, 12, 16, 3, 3, 2, 1, 1, 1), (1, 8, 6, 6, 8, 1, 1, 1, 0, 1, 1),
    (1, 32, 7, 7, 32, 3, 3, 1, 1, 1, 32), (1, 64, 5, 5, 64, 3, 3, 1, 1, 1, 4), (4, 16, 16, 16, 32, 3, 3, 1, 1, 1, 1),
    (1, 12, 9, 9, 24, 3, 3, 1, 2, 2, 1), (1, 24, 10, 10, 40, 1, 1, 2, 0, 1, 1),
    (1, 512, 3, 3, 64, 3, 3, 1, 1, 1, 1), (2, 256, 4, 4, 32, 3, 3, 1, 1, 1, 2),  # small spatial: forward split-K
]


@pytest.mark.parametrize("device", [pytest.param(SIMT, id="simt", marks=SIMT_MARKS)])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("dtype,allow_tf32", [(torch.float16, True), (torch.bfloat16, True), (torch.float32, True),
                                              (torch.float32, False), (torch.float64, True)])
def test_algorithms_name_the_launched_kernels(device, layout, dtype, allow_tf32):
    """convx.algorithms (python -m convx info --conv) predicts what the emulator launches."""
    from convx.algorithms import CORES, conv2d_cuda
    torch.backends.cudnn.allow_tf32 = allow_tf32
    try:
        for n, c, h, w, k, r, s, stride, pad, dil, groups in SWEEP:
            x = torch.randn(n, c, h, w).to(dtype)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            wt = torch.randn(k, c // groups, r, s).to(dtype)
            kw = dict(stride=stride, padding=pad, dilation=dil, groups=groups)
            want = conv2d_cuda(x.shape, wt.shape, dtype, stride, pad, dil, groups, layout == "channels_last")
            fwd = _kernels(lambda: convx.functional.conv2d(x, wt, **kw))
            xg, wg = x.clone().requires_grad_(), wt.clone().requires_grad_()
            y = convx.functional.conv2d(xg, wt, **kw)
            dx = _kernels(lambda: torch.autograd.grad(y, xg, torch.ones_like(y)))
            y = convx.functional.conv2d(x, wg, **kw)
            dw = _kernels(lambda: torch.autograd.grad(y, wg, torch.ones_like(y)))
            for what, launched in (("forward", fwd), ("data_grad", dx), ("weight_grad", dw)):
                name = want[what].split("(")[1].split(")")[0]
                assert any(kn.startswith(name) for kn in launched), (what, want[what], launched, (n, c, k, groups))
                if want[what] == CORES:
                    continue  # the CUDA-core kernel's own split-K is not part of this rule
                split = want[what].split("split-K x")[1].split(" (")[1].rstrip(")") if "split-K" in want[what] else None
                reducers = [kn for kn in launched if "splits_kernel" in kn]
                assert (not reducers) if split is None else any(kn.startswith(split) for kn in reducers), \
                    (what, want[what], launched)
    finally:
        torch.backends.cudnn.allow_tf32 = False
