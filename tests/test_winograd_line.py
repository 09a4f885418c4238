"""Winograd along one axis on the CPU (csrc/cpu/winograd_line.cpp): float32 1 x r and r x 1
convolutions (r = 3, 7) at stride 1, forward and data gradient (the forward of the rotated
weight), by F(m, r) tiles of m outputs: F(4, 7) and F(2, 7); F(6, 3), F(4, 3) and F(2, 3), the
one with the fewest products along the line; and, for 7 taps, the weight gradient by F(7, m)
over the same tiles.

Judged as test_winograd.py's 2-D tiles are, element by element against float64:
|y - y64| <= 64 * 2^-24 * M, M the largest value of |W| (*) |X| within 5 positions along the
line (a tile's reach: its outputs mix all of its m + r - 1 inputs). Measured on these cases: at
most about 38 * 2^-24 * M for F(4, 7) (F(2, 7) 9, F(6, 3) 17, F(4, 3) 10). Every case also checks
that the path really ran (its bits differ from the exact path's), and the layers it does not
take (strides, dilation, groups, padding across the line) that it did not.
"""
import pytest
import torch
import torch.nn.functional as F

import convx
from test_cpu_gemm import run_with_isa
from test_winograd import BOUND, U, _exact

# N, C, H, W, K, (R, S), (top, bottom, left, right) padding -> the F(m, r) it takes
CASES = {
    "iv3_1x7_f47": (2, 32, 17, 17, 48, (1, 7), (0, 0, 3, 3)),
    "iv3_7x1_f47": (2, 48, 17, 17, 32, (7, 1), (3, 3, 0, 0)),
    "odd_channels_f47": (3, 17, 9, 13, 33, (1, 7), (0, 0, 3, 3)),  # partial vectors and panels
    "asym_pad_7x1": (2, 20, 25, 6, 40, (7, 1), (1, 5, 0, 0)),
    "two_outputs_f27": (8, 16, 6, 8, 16, (1, 7), (0, 0, 0, 0)),
    "iv3_1x3_f43": (4, 40, 8, 8, 24, (1, 3), (0, 0, 1, 1)),
    "long_f63": (2, 48, 8, 30, 24, (1, 3), (0, 0, 0, 2)),
    "two_outputs_f23": (8, 16, 12, 4, 16, (1, 3), (0, 0, 0, 0)),
    "c300_chunks_3x1": (4, 300, 12, 8, 40, (3, 1), (1, 1, 0, 0)),
}
LAYOUTS = ["nchw", "nhwc", "x_nhwc_w_nchw", "x_nchw_w_nhwc"]


def _tensors(case, layout, seed=0):
    N, C, H, W, K, (R, S), pad = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    w = torch.randn(K, C, R, S, generator=g, dtype=torch.float64)
    b = torch.randn(K, generator=g, dtype=torch.float64)
    cl, dense = torch.channels_last, torch.contiguous_format
    x32 = x.float().contiguous(memory_format=cl if layout in ("nhwc", "x_nhwc_w_nchw") else dense)
    w32 = w.float().contiguous(memory_format=cl if layout in ("nhwc", "x_nchw_w_nhwc") else dense)
    return x32, w32, b.float(), pad


def _conv64(x, w, b, pad):
    t, bo, l, r = pad
    return F.conv2d(F.pad(x, (l, r, t, bo)), w, b)


def _within_bound(got, ref, mag, along_w, what):
    # the largest within 5 positions along the line
    mag = F.max_pool2d(mag, (1, 11) if along_w else (11, 1), stride=1, padding=(0, 5) if along_w else (5, 0))
    err = (got.double() - ref).abs()
    worst = (err - BOUND * mag).max().item()
    ratio = (err / (mag + 1e-300)).max().item() / U
    assert worst <= 1e-12, f"{what}: error {ratio:.1f} * 2^-24 * M, bound 64"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_forward_within_bound(case, layout):
    x32, w32, b32, pad = _tensors(case, layout)
    run = lambda: torch.ops.convx.conv2d(x32, w32, b32, [1, 1], list(pad), [1, 1], 1)  # noqa: E731
    y = run()
    ref = _conv64(x32.double(), w32.double(), b32.double(), pad)
    mag = _conv64(x32.double().abs(), w32.double().abs(), b32.double().abs(), pad)
    assert y.shape == ref.shape and y.dtype == torch.float32
    t, bo, l, r = pad
    torch_y = F.conv2d(F.pad(x32, (l, r, t, bo)), w32, b32)  # the output layout follows torch's rule
    for mf in (torch.contiguous_format, torch.channels_last):
        assert y.is_contiguous(memory_format=mf) == torch_y.is_contiguous(memory_format=mf)
    _within_bound(y, ref, mag, w32.shape[2] == 1, "forward")
    assert not torch.equal(y, _exact(run)), "the Winograd path did not run"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_data_gradient_within_bound(case, layout):
    x32, w32, _, pad = _tensors(case, layout, seed=1)
    N, C, H, W = x32.shape
    y_shape = _conv64(x32.double(), w32.double(), None, pad).shape
    gy = torch.randn(y_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).float()
    gy = gy.contiguous(memory_format=torch.channels_last if layout != "nchw" else torch.contiguous_format)
    run = lambda: torch.ops.convx.conv2d_backward_input(gy, w32, [N, C, H, W], [1, 1], list(pad), [1, 1], 1)  # noqa

    def grad64(wd, gyd):
        xd = x32.double().requires_grad_()
        return torch.autograd.grad(_conv64(xd, wd, None, pad), xd, gyd)[0]

    gx = run()
    ref = grad64(w32.double(), gy.double())
    mag = grad64(w32.double().abs(), gy.double().abs())
    assert gx.shape == ref.shape
    _within_bound(gx, ref, mag, w32.shape[2] == 1, "data gradient")
    assert not torch.equal(gx, _exact(run)), "the Winograd path did not run"


# the weight gradient: 7 taps (F(7, 4) and F(7, 2) over the same tiles)
WGRAD_CASES = {k: v for k, v in CASES.items() if 7 in v[5]}


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", list(WGRAD_CASES.values()), ids=list(WGRAD_CASES))
def test_weight_gradient_within_bound(case, layout):
    """dW's error against float64 within 64 * 2^-24 times the largest sum |x||dy| of the filter's
    taps (its r products mix in every transformed tile; measured: at most about 36)."""
    x32, w32, _, pad = _tensors(case, layout, seed=4)
    y_shape = _conv64(x32.double(), w32.double(), None, pad).shape
    gy = torch.randn(y_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).float()
    gy = gy.contiguous(memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format)
    run = lambda: torch.ops.convx.conv2d_backward_weight(gy, x32, list(w32.shape), [1, 1], list(pad), [1, 1], 1,  # noqa
                                                         False)[0]
    gw = run()

    def wgrad64(xd, gyd):
        wd = torch.zeros(w32.shape, dtype=torch.float64, requires_grad=True)
        return torch.autograd.grad(_conv64(xd, wd, None, pad), wd, gyd)[0]

    ref = wgrad64(x32.double(), gy.double())
    mag = wgrad64(x32.double().abs(), gy.double().abs()).amax(dim=(2, 3), keepdim=True)
    assert gw.shape == ref.shape and gw.dtype == torch.float32
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    assert gw.is_contiguous(memory_format=mf)
    err = (gw.double() - ref).abs()
    assert (err <= BOUND * mag).all(), f"error {(err / mag).max().item() / U:.1f} * 2^-24 * M, bound 64"
    assert not torch.equal(gw, _exact(run)), "the Winograd path did not run"


def test_three_tap_weight_gradient_stays_exact():
    """3 taps keep the GEMM's weight gradient (F(3, 4) measured slower)."""
    x32, w32, _, pad = _tensors(CASES["iv3_1x3_f43"], "nhwc")
    gy = torch.randn(_conv64(x32.double(), w32.double(), None, pad).shape).float()
    run = lambda: torch.ops.convx.conv2d_backward_weight(gy, x32, list(w32.shape), [1, 1], list(pad), [1, 1], 1,  # noqa
                                                         False)[0]
    assert torch.equal(run(), _exact(run))


def test_fused_epilogue_on_the_line_result():
    x32, w32, b32, pad = _tensors(CASES["iv3_7x1_f47"], "nhwc")
    y = torch.ops.convx.conv2d(x32, w32, b32, [1, 1], list(pad), [1, 1], 1)
    res = torch.randn(y.shape).contiguous(memory_format=torch.channels_last)
    yf = torch.ops.convx.conv2d_fused(x32, w32, b32, res, [1, 1], list(pad), [1, 1], 1, True)
    torch.testing.assert_close(yf, (y + res).clamp_min(0), rtol=0, atol=0)


# Layers the line path leaves to the others: strided, dilated, grouped, padded across the line,
# too few tiles, 5 taps. Their results are the exact path's, bit for bit.
OTHER_PATHS = {
    "stride2": ((2, 32, 17, 17, 32, (1, 7), (0, 0, 3, 3)), [1, 2], [1, 1], 1),
    "dilated": ((2, 32, 17, 17, 32, (7, 1), (6, 6, 0, 0)), [1, 1], [2, 2], 1),
    "grouped": ((2, 32, 17, 17, 32, (1, 7), (0, 0, 3, 3)), [1, 1], [1, 1], 2),
    "pad_across": ((2, 32, 17, 17, 32, (1, 7), (1, 1, 3, 3)), [1, 1], [1, 1], 1),
    "few_tiles": ((1, 32, 4, 17, 32, (1, 7), (0, 0, 3, 3)), [1, 1], [1, 1], 1),
    "five_taps": ((2, 32, 17, 17, 32, (1, 5), (0, 0, 2, 2)), [1, 1], [1, 1], 1),
}


@pytest.mark.parametrize("spec", list(OTHER_PATHS.values()), ids=list(OTHER_PATHS))
def test_other_layers_stay_exact(spec):
    (N, C, H, W, K, k, pad), stride, dil, groups = spec
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, C, H, W, generator=g)
    w = torch.randn(K, C // groups, *k, generator=g)
    run = lambda: torch.ops.convx.conv2d(x, w, None, stride, list(pad), dil, groups)  # noqa: E731
    assert torch.equal(run(), _exact(run))


def test_independent_of_thread_count():
    x32, w32, b32, pad = _tensors((8, 64, 17, 17, 64, (1, 7), (0, 0, 3, 3)), "nhwc")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = torch.ops.convx.conv2d(x32, w32, b32, [1, 1], list(pad), [1, 1], 1)
        torch.set_num_threads(2)
        y2 = torch.ops.convx.conv2d(x32, w32, b32, [1, 1], list(pad), [1, 1], 1)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y1, y2)


def test_module_and_autograd_match_torch():
    """convx.Conv2d on a 1 x 7 layer: forward and both gradients beside torch.nn.Conv2d."""
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(64, 48, (1, 7), padding=(0, 3))
    mod = convx.Conv2d(64, 48, (1, 7), padding=(0, 3))
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(4, 64, 17, 17).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = mod(xa), ref(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-4)
    gy = torch.randn_like(ya)
    ya.backward(gy)
    yb.backward(gy)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mod.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-3)


_CHILD = r"""
import sys, torch, convx, torch.nn.functional as F
assert torch.ops.convx.cpu_isa() == sys.argv[1], torch.ops.convx.cpu_isa()
g = torch.Generator().manual_seed(0)
for mf in (torch.contiguous_format, torch.channels_last):
    for k, pad, W in (((1, 7), (0, 3), 13), ((3, 1), (1, 0), 30)):
        x = torch.randn(4, 20, 9, W, generator=g).contiguous(memory_format=mf)
        w = torch.randn(36, 20, *k, generator=g)
        b = torch.randn(36, generator=g)
        y = convx.functional.conv2d(x, w, b, padding=pad)
        ref = F.conv2d(x.double(), w.double(), b.double(), padding=pad)
        mag = F.conv2d(x.double().abs(), w.double().abs(), b.double().abs(), padding=pad)
        win = (1, 11) if k[0] == 1 else (11, 1)
        mag = F.max_pool2d(mag, win, 1, (win[0] // 2, win[1] // 2))
        assert ((y.double() - ref).abs() <= 64 * 2.0 ** -24 * mag).all(), ("forward", k)
        with convx.backends.cpu.flags(winograd=False):
            assert not torch.equal(y, convx.functional.conv2d(x, w, b, padding=pad))
    # the weight gradient (7 taps)
    x = torch.randn(4, 20, 9, 13, generator=g).contiguous(memory_format=mf)
    gy = torch.randn(4, 36, 9, 13, generator=g).contiguous(memory_format=mf)
    gw = torch.ops.convx.conv2d_backward_weight(gy, x, [36, 20, 1, 7], [1, 1], [0, 0, 3, 3], [1, 1], 1, False)[0]
    wd = torch.zeros(36, 20, 1, 7, dtype=torch.float64, requires_grad=True)
    wref, = torch.autograd.grad(F.conv2d(x.double(), wd, padding=(0, 3)), wd, gy.double())
    wmag, = torch.autograd.grad(F.conv2d(x.double().abs(), wd, padding=(0, 3)), wd, gy.double().abs())
    assert ((gw.double() - wref).abs() <= 64 * 2.0 ** -24 * wmag.amax(dim=(2, 3), keepdim=True)).all(), "wgrad"
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_narrower_builds(isa):
    """The AVX2 and baseline builds of the line transforms, forced on this machine."""
    run_with_isa(_CHILD, isa)
