"""Property-based tests (hypothesis) against torch.nn.functional: random
configurations of every op (sizes 0-17, strides, paddings incl. 'same' /
'valid', dilation, groups incl. depthwise with a multiplier, output_padding,
ceil_mode, count_include_pad, divisor_override, training / eval, momentum,
input ranks 2-5 for batch norm), dtypes, memory formats, non-contiguous and expanded (stride-0)
inputs and weights; forward values and every gradient, on the CPU and on the
emulated CUDA backend. Where torch raises, convx must raise the same
exception type, before writing anything.

CI runs a derandomized profile (fixed examples, no database) of 6,020
examples (about 80% compute values, the rest are configurations torch
rejects); ``CONVX_HYPOTHESIS_PROFILE=thorough`` runs 20x more (or
``CONVX_FUZZ_SCALE`` times) with fresh randomness. A failing example is shrunk by hypothesis; fixed ones stay here as
``@example`` regression cases.
"""
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import convx
from conftest import SIMT, SIMT_MARKS

CF = convx.functional

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                      HealthCheck.filter_too_much, HealthCheck.data_too_large])
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("thorough", **_COMMON)
PROFILE = os.environ.get("CONVX_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
SCALE = float(os.environ.get("CONVX_FUZZ_SCALE", 20 if PROFILE == "thorough" else 1))

FUZZ_DEVICES = [pytest.param("cpu", id="cpu"), pytest.param(SIMT, id="simt", marks=SIMT_MARKS)]
# examples per op and device: (cpu, simt). The emulator runs every CUDA thread as a fiber: fewer there.
EXAMPLES = {"conv2d": (1200, 300), "conv_transpose2d": (800, 200), "max_pool2d": (600, 150), "avg_pool2d": (600, 150),
            "adaptive_avg_pool2d": (300, 80), "adaptive_max_pool2d": (300, 80), "batch_norm": (800, 200),
            "add_relu": (200, 60)}


def n_examples(op, device):
    return max(1, int(EXAMPLES[op][1 if device == "simt" or repr(device) == "simt" else 0] * SCALE))


# ---------------------------------------------------------------- tensors


def make(shape, dtype, layout, seed, nan=False, ties=False):
    """A tensor of `shape` in `layout`: contiguous, channels_last, a strided
    view (every other element of a larger buffer), or expanded (stride 0
    along dimension 0 where it has size > 1, along the last otherwise)."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(shape, generator=g, dtype=torch.float64)
    if ties:  # few distinct values: max pooling must break ties as torch does
        data = (data * 2).round() / 2
    if nan and data.numel():
        data.view(-1)[torch.randint(0, data.numel(), (1,), generator=g)] = float("nan")
    data = data.to(dtype)
    if layout == "channels_last" and len(shape) == 4:
        return data.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        big = torch.zeros([s * 2 if i == len(shape) - 1 else s for i, s in enumerate(shape)], dtype=dtype)
        big[..., ::2] = data
        return big[..., ::2]
    if layout == "expanded" and len(shape) >= 2:
        d = 0 if shape[0] > 1 else len(shape) - 1
        one = list(shape)
        one[d] = 1
        return data.narrow(d, 0, 1).reshape(one).expand(shape) if shape[d] > 0 else data
    return data


LAYOUT = st.sampled_from(["contiguous", "contiguous", "channels_last", "strided", "expanded"])
DTYPE = st.sampled_from([torch.float64, torch.float64, torch.float32])
SEED = st.integers(0, 2 ** 31 - 1)
SIZE = st.tuples(st.integers(0, 11), st.integers(1, 17)).map(lambda t: 0 if t[0] == 11 else t[1])  # 0 now and then
SMALL_DILATION = st.sampled_from([1, 1, 1, 2, 3])


def tol(dtype, scale=1.0):
    return dict(rtol=1e-9 * scale, atol=1e-9 * scale) if dtype == torch.float64 else \
        dict(rtol=2e-4 * scale, atol=2e-4 * scale)


def outcome(fn):
    """(result, None) or (None, exception)."""
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return None, e


def same_failure(e_torch, e_convx, what):
    assert e_convx is not None, f"torch raised {type(e_torch).__name__}: {e_torch} but convx did not ({what})"
    assert isinstance(e_convx, type(e_torch)) or isinstance(e_torch, type(e_convx)), (
        f"torch raised {type(e_torch).__name__} ({e_torch}), convx {type(e_convx).__name__} ({e_convx}) ({what})")


def check(torch_fn, convx_fn, inputs, dtype, what, scale=1.0, index_out=False, grad_ref=None, stricter=None):
    """Forward with torch and convx on copies of `inputs`; the same exception
    type or the same values; then every input's gradient for one random
    grad_output (``grad_ref(torch_inputs, torch_outputs, g)`` instead of
    torch's backward where that one is unsafe). Inputs are never modified.
    ``stricter(exception, inputs)``: where convx may raise although torch
    returns (documented deviations)."""
    before = [t.clone() for t in inputs]
    t_in = [t.detach().clone().requires_grad_() for t in inputs]
    c_in = [t.detach().requires_grad_() for t in inputs]  # the caller's own layout (views, expanded) reaches convx
    yt, et = outcome(lambda: torch_fn(*t_in))
    yc, ec = outcome(lambda: convx_fn(*c_in))
    if et is not None:
        same_failure(et, ec, what)
        return
    if ec is not None and stricter is not None and stricter(ec, inputs):
        return
    assert ec is None, f"convx raised {type(ec).__name__}: {ec} where torch gave a result ({what})"
    ys_t = yt if isinstance(yt, tuple) else (yt,)
    ys_c = yc if isinstance(yc, tuple) else (yc,)
    for a, b in zip(ys_c, ys_t):
        assert a.shape == b.shape, f"shape {tuple(a.shape)} != torch's {tuple(b.shape)} ({what})"
        if a.is_floating_point():
            torch.testing.assert_close(a, b, **tol(dtype, scale), equal_nan=True, msg=lambda m: f"{what}: {m}")
        elif index_out:
            # A window wholly in the padding (dilation; its output is -inf, the inputs here never are) has
            # no index: convx gives -1, torch's CPU kernel a position outside the window, sometimes outside
            # the plane. Elsewhere the indices must be torch's.
            empty = ys_t[0].detach() == -float("inf")
            assert torch.equal(a[~empty], b[~empty]), f"indices differ ({what})"
            assert (a[empty] == -1).all(), f"a window in the padding must have index -1 ({what})"
    for t, b in zip(inputs, before):
        assert torch.equal(t, b) or (t.isnan() == b.isnan()).all(), f"an input was modified ({what})"
    y_t, y_c = ys_t[0], ys_c[0]
    if not y_t.requires_grad or y_t.numel() == 0:
        return
    if relu_kink(y_t, y_c):
        return
    g = torch.randn(y_t.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(y_t.dtype)
    wrt_t = [t for t in t_in if t.requires_grad]
    wrt_c = [t for t in c_in if t.requires_grad]
    gt = grad_ref(t_in, ys_t, g) if grad_ref is not None else torch.autograd.grad(y_t, wrt_t, g, allow_unused=True)
    gc = torch.autograd.grad(y_c, wrt_c, g, allow_unused=True)
    for i, (a, b) in enumerate(zip(gc, gt)):
        if b is None:
            assert a is None or not a.any(), f"gradient {i}: torch has none ({what})"
            continue
        assert a is not None, f"gradient {i}: convx has none ({what})"
        if dtype == torch.float32 and grad_ref is None and not torch.allclose(a, b, **tol(dtype, scale * 4),
                                                                             equal_nan=True):
            # Where torch's float32 gradient and convx's differ, torch in float64 (contiguous) decides: torch's
            # oneDNN float32 path has wrong cases (e.g. conv_transpose2d's input gradient for a channels_last
            # input of width 1 with output_padding), which convx must not be held to.
            b = _float64_grad(torch_fn, inputs, g, i).to(a.dtype)
        torch.testing.assert_close(a, b, **tol(dtype, scale * 4), equal_nan=True,
                                   msg=lambda m: f"gradient {i} ({what}): {m}")


def _float64_grad(torch_fn, inputs, g, i):
    """torch's i-th input gradient computed in float64 from contiguous copies of the inputs."""
    t64 = [t.detach().double().contiguous().requires_grad_() for t in inputs]
    y = torch_fn(*t64)
    y = y[0] if isinstance(y, tuple) else y
    return torch.autograd.grad(y, t64, g.double(), allow_unused=True)[i]


def relu_kink(y_t, y_c):
    """Outputs equal to within rounding where one side is exactly 0 and the other not: a ReLU's kink, where
    the two gradients legitimately differ (e.g. zero variance: torch's mean rounds to x - 2e-14, convx's is
    exact, and 1/sqrt(eps) scales the difference up)."""
    if not y_t.is_floating_point():
        return False
    a, b = y_t.detach(), y_c.detach()
    return bool((((a == 0) & (b != 0)) | ((a != 0) & (b == 0))).any())


# ---------------------------------------------------------------- convolution


@st.composite
def conv_config(draw, transposed=False):
    groups = draw(st.sampled_from([1, 1, 1, 2, 3, "depthwise"]))
    if groups == "depthwise":
        c = draw(st.integers(1, 6))
        groups, cin_g, cout_g = c, 1, draw(st.integers(1, 3))  # depthwise with a channel multiplier
    else:
        cin_g, cout_g = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n = draw(st.sampled_from([0, 1, 2, 2, 3]))
    h, w = draw(SIZE), draw(SIZE)
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(SMALL_DILATION), draw(SMALL_DILATION))
    if not transposed and draw(st.integers(0, 5)) == 0:
        padding = draw(st.sampled_from(["same", "valid"]))
        if padding == "same":
            stride = (1, 1)  # torch raises for 'same' with stride > 1 (convx extends it: tested elsewhere)
    else:
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    out_pad = None
    if transposed:  # mostly what torch allows (< stride or < dilation), sometimes not
        over = draw(st.integers(0, 9)) == 0
        out_pad = tuple(draw(st.integers(0, max(s, d) - 1 + (1 if over else 0))) for s, d in zip(stride, dilation))
    return dict(n=n, groups=groups, cin=cin_g * groups, cout=cout_g * groups, h=h, w=w, k=(kh, kw), stride=stride,
                dilation=dilation, padding=padding, output_padding=out_pad, bias=draw(st.booleans()),
                dtype=draw(DTYPE), x_layout=draw(LAYOUT), w_layout=draw(LAYOUT), seed=draw(SEED))


def _cfg(**kw):
    """A conv_config() value for an @example: 1x1 of everything, float64, contiguous, and `kw`."""
    cfg = dict(n=1, groups=1, cin=1, cout=1, h=1, w=1, k=(1, 1), stride=(1, 1), dilation=(1, 1), padding=(0, 0),
               output_padding=None, bias=False, dtype=torch.float64, x_layout="contiguous", w_layout="contiguous",
               seed=0)
    cfg.update(kw)
    return cfg


def _check_conv(cfg, transposed):
    """conv2d or conv_transpose2d (torch's argument order) on the tensors `cfg` describes, through check()."""
    g, k = cfg["groups"], cfg["k"]
    wshape = (cfg["cin"], cfg["cout"] // g, *k) if transposed else (cfg["cout"], cfg["cin"] // g, *k)
    x = make((cfg["n"], cfg["cin"], cfg["h"], cfg["w"]), cfg["dtype"], cfg["x_layout"], cfg["seed"])
    wt = make(wshape, cfg["dtype"], cfg["w_layout"], cfg["seed"] + 1)
    b = make((cfg["cout"],), cfg["dtype"], "contiguous", cfg["seed"] + 2) if cfg["bias"] else None
    if transposed:
        args = (cfg["stride"], cfg["padding"], cfg["output_padding"], g, cfg["dilation"])
        fns, name, extra = (F.conv_transpose2d, CF.conv_transpose2d), "conv_transpose2d", cfg["cout"]
    else:
        args = (cfg["stride"], cfg["padding"], cfg["dilation"], g)
        fns, name, extra = (F.conv2d, CF.conv2d), "conv2d", cfg["cin"]

    def call(f):
        return lambda x, w, *b: f(x, w, b[0] if b else None, *args)
    check(call(fns[0]), call(fns[1]), [x, wt] + ([b] if b is not None else []), cfg["dtype"], f"{name} {cfg}",
          scale=1 + extra * k[0] * k[1] / 10, stricter=_empty_batch_output_padding if transposed else None)


@pytest.mark.parametrize("device", FUZZ_DEVICES)
def test_conv2d(device):
    @settings(max_examples=n_examples("conv2d", device))
    @given(cfg=conv_config())
    @example(cfg=_cfg(bias=True, x_layout="expanded", w_layout="expanded"))
    # regressions the fuzzing found (fixed): an empty image, even padded, is rejected as torch does
    @example(cfg=_cfg(w=0, padding=(0, 1)))
    def run(cfg):
        _check_conv(cfg, transposed=False)
    run()


@pytest.mark.parametrize("device", FUZZ_DEVICES)
def test_conv_transpose2d(device):
    @settings(max_examples=n_examples("conv_transpose2d", device))
    @given(cfg=conv_config(transposed=True))
    # torch's float32 channels_last input gradient is wrong here (float64 decides; convx is right)
    @example(cfg=_cfg(cin=2, h=3, k=(4, 4), stride=(1, 2), output_padding=(0, 1), dtype=torch.float32,
                      x_layout="channels_last"))
    # regressions the fuzzing found (fixed): empty batches of empty images, an output extent of 0
    @example(cfg=_cfg(n=0, h=0, w=0, output_padding=(0, 0)))
    @example(cfg=_cfg(n=0, h=0, w=0, k=(2, 2), output_padding=(0, 0)))
    @example(cfg=_cfg(dilation=(1, 2), padding=(0, 1), output_padding=(0, 1)))
    # a data gradient with negative padding (cropping the output padding) on a float32 channels_last
    # forward: not from a zero-padded copy (pad_nhwc), which took the negative padding as lengths;
    # 2 channels (C*R*S <= 64), and 16 channels of a 1 x 5 filter (rows of 80 floats, gathered)
    @example(cfg=_cfg(n=3, cin=2, cout=2, h=7, w=17, k=(2, 4), stride=(1, 3), dilation=(2, 1), padding=(2, 0),
                      output_padding=(0, 1), bias=True, dtype=torch.float32, w_layout="channels_last", seed=5132597))
    @example(cfg=_cfg(n=3, cin=2, cout=16, h=7, w=17, k=(2, 5), stride=(1, 3), dilation=(2, 1), padding=(2, 0),
                      output_padding=(0, 1), dtype=torch.float32, w_layout="channels_last", seed=1))
    def run(cfg):
        _check_conv(cfg, transposed=True)
    run()


def _empty_batch_output_padding(e, inputs):
    """Two documented deviations. torch skips the output_padding check when the batch is empty; convx
    checks it for every input (an empty batch must not hide an argument torch rejects for every other
    batch). An output extent of 0: torch's float64 path (and convx) raise "Output size is too small",
    its float32 oneDNN path returns an empty tensor."""
    if inputs[0].numel() == 0 and "output padding must be smaller" in str(e):
        return True
    return inputs[0].dtype == torch.float32 and "Output size is too small" in str(e)

# ---------------------------------------------------------------- pooling


@st.composite
def pool_input(draw):
    shape = (draw(st.sampled_from([0, 1, 2, 2, 3])), draw(st.integers(1, 4)), draw(SIZE), draw(SIZE))
    if draw(st.integers(0, 4)) == 0:
        shape = shape[1:]  # unbatched
    return dict(shape=shape, dtype=draw(DTYPE), layout=draw(LAYOUT), seed=draw(SEED),
                nan=draw(st.integers(0, 9)) == 0, ties=draw(st.booleans()))


@st.composite
def kernel_and_pad(draw):
    """A pooling kernel and a padding that is mostly what torch allows (<= half the kernel), sometimes not."""
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    over = draw(st.integers(0, 9)) == 0
    pad = tuple(draw(st.integers(0, kk // 2 + (1 if over else 0))) for kk in k)
    return k, pad


def _pool_x(p):
    return make(p["shape"], p["dtype"], p["layout"], p["seed"], nan=p["nan"], ties=p["ties"])


@pytest.mark.parametrize("device", FUZZ_DEVICES)
def test_max_pool2d(device):
    @settings(max_examples=n_examples("max_pool2d", device))
    @given(p=pool_input(), kp=kernel_and_pad(),
           stride=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
           dil=st.tuples(SMALL_DILATION, SMALL_DILATION), ceil=st.booleans())
    @example(p=dict(shape=(2, 1, 14), dtype=torch.float64, layout="contiguous", seed=0, nan=False, ties=False),
             kp=((2, 3), (1, 1)), stride=None, dil=(2, 2), ceil=True)  # windows wholly in the padding
    @example(p=dict(shape=(1, 2, 1, 2), dtype=torch.float64, layout="channels_last", seed=0, nan=True, ties=False),
             kp=((1, 2), (0, 1)), stride=None, dil=(1, 3), ceil=False)  # the same in channels_last
    @example(p=dict(shape=(1, 2, 1), dtype=torch.float64, layout="contiguous", seed=0, nan=True, ties=False),
             kp=((1, 2), (0, 1)), stride=None, dil=(1, 2), ceil=False)  # torch's index lands inside the plane
    def run(p, kp, stride, dil, ceil):
        k, pad = kp
        def call(f):
            return lambda x: f(x, k, stride, pad, dil, ceil_mode=ceil, return_indices=True)
        check(call(F.max_pool2d), call(CF.max_pool2d), [_pool_x(p)], p["dtype"],
              f"max_pool2d {p} k={k} s={stride} p={pad} d={dil} ceil={ceil}", index_out=True,
              grad_ref=_scatter_grad)
    run()


def _scatter_grad(inputs, outputs, g):
    """max pooling's input gradient from its indices, skipping windows that dilation puts wholly in the
    padding (output -inf): torch gives them an index outside the window, sometimes outside the plane, and its
    CPU backward then writes there (out of bounds: heap corruption), so the reference is computed here."""
    x, (y, ind) = inputs[0], outputs
    hw = x.shape[-2] * x.shape[-1]
    flat_g, flat_i = g.reshape(-1, g.shape[-2] * g.shape[-1]), ind.reshape(-1, g.shape[-2] * g.shape[-1])
    ok = (flat_i >= 0) & (flat_i < hw) & (y.detach().reshape(flat_i.shape) != -float("inf"))
    gx = torch.zeros(flat_g.shape[0], hw, dtype=torch.float64)
    gx.scatter_add_(1, flat_i.clamp(0, max(hw - 1, 0)), torch.where(ok, flat_g.double(), 0.0))
    return [gx.reshape(x.shape).to(x.dtype)]


@pytest.mark.parametrize("device", FUZZ_DEVICES)
def test_avg_pool2d(device):
    @settings(max_examples=n_examples("avg_pool2d", device))
    @given(p=pool_input(), kp=kernel_and_pad(),
           stride=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
           ceil=st.booleans(), include=st.booleans(), divisor=st.one_of(st.none(), st.integers(1, 5)))
    def run(p, kp, stride, ceil, include, divisor):
        k, pad = kp
        def call(f):
            return lambda x: f(x, k, stride, pad, ceil, include, divisor)
        check(call(F.avg_pool2d), call(CF.avg_pool2d), [_pool_x(p)], p["dtype"],
              f"avg_pool2d {p} k={k} s={stride} p={pad} ceil={ceil} include={include} div={divisor}")
    run()


OUT_SIZE = st.one_of(st.integers(1, 9), st.tuples(st.one_of(st.none(), st.integers(1, 9)),
                                                   st.one_of(st.none(), st.integers(1, 9))))


@pytest.mark.parametrize("device", FUZZ_DEVICES)
def test_adaptive_avg_pool2d(device):
    @settings(max_examples=n_examples("adaptive_avg_pool2d", device))
    @given(p=pool_input(), size=OUT_SIZE)
    @example(p=dict(shape=(1, 0, 0), dtype=torch.float64, layout="contiguous", seed=0, nan=True, ties=False),
             size=1)  # a 1x1 output of empty images: torch's mean, NaN
    def run(p, size):
        check(lambda x: F.adaptive_avg_pool2d(x, size), lambda x: CF.adaptive_avg_pool2d(x, size), [_pool_x(p)],
              p["dtype"], f"adaptive_avg_pool2d {p} size={size}")
    run()


@pytest.mark.parametrize("device", FUZZ_DEVICES)
def test_adaptive_max_pool2d(device):
    @settings(max_examples=n_examples("adaptive_max_pool2d", device))
    @given(p=pool_input(), size=OUT_SIZE)
    def run(p, size):
        check(lambda x: F.adaptive_max_pool2d(x, size, True), lambda x: CF.adaptive_max_pool2d(x, size, True),
              [_pool_x(p)], p["dtype"], f"adaptive_max_pool2d {p} size={size}", index_out=True)
    run()


# ---------------------------------------------------------------- batch norm, add + relu


@st.composite
def bn_config(draw):
    rank = draw(st.sampled_from([2, 3, 4, 4, 4, 5]))
    shape = [draw(st.integers(0, 4)), draw(st.integers(1, 5))] + [draw(st.integers(0, 5)) for _ in range(rank - 2)]
    return dict(shape=tuple(shape), dtype=draw(DTYPE), layout=draw(LAYOUT), seed=draw(SEED),
                training=draw(st.booleans()), momentum=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
                affine=draw(st.booleans()), stats=draw(st.booleans()), eps=draw(st.sampled_from([1e-5, 1e-3, 0.5])),
                residual=draw(st.booleans()), relu=draw(st.booleans()))


@pytest.mark.parametrize("device", FUZZ_DEVICES)
def test_batch_norm(device):
    @settings(max_examples=n_examples("batch_norm", device))
    @given(cfg=bn_config())
    # regressions: an empty batch in eval without statistics; zero variance at the ReLU's kink
    @example(cfg=dict(shape=(0, 1), dtype=torch.float64, layout="contiguous", seed=0, training=False, momentum=0.0,
                      affine=False, stats=False, eps=1e-5, residual=False, relu=False))
    @example(cfg=dict(shape=(2, 1), dtype=torch.float64, layout="expanded", seed=0, training=True, momentum=0.0,
                      affine=False, stats=False, eps=1e-5, residual=False, relu=True))
    def run(cfg):
        c = cfg["shape"][1]
        x = make(cfg["shape"], cfg["dtype"], cfg["layout"], cfg["seed"])
        res = make(cfg["shape"], cfg["dtype"], "contiguous", cfg["seed"] + 3) if cfg["residual"] else None
        sd = torch.float64 if cfg["dtype"] == torch.float64 else torch.float32
        w = (torch.rand(c, dtype=sd) + 0.5) if cfg["affine"] else None
        b = (torch.rand(c, dtype=sd) - 0.5) if cfg["affine"] else None
        rm = torch.rand(c, dtype=sd) if cfg["stats"] else None
        rv = (torch.rand(c, dtype=sd) + 0.5) if cfg["stats"] else None
        rm_t, rv_t = (rm.clone(), rv.clone()) if cfg["stats"] else (None, None)
        m = cfg["momentum"]
        inputs = [x] + ([w, b] if cfg["affine"] else []) + ([res] if res is not None else [])

        def unpack(args):
            x, rest = args[0], list(args[1:])
            w_, b_ = (rest.pop(0), rest.pop(0)) if cfg["affine"] else (None, None)
            return x, w_, b_, (rest.pop(0) if res is not None else None)

        def torch_fn(*args):
            x, w_, b_, r = unpack(args)
            y = F.batch_norm(x, rm_t, rv_t, w_, b_, cfg["training"], m, cfg["eps"])
            y = y + r if r is not None else y
            return F.relu(y) if cfg["relu"] else y

        def convx_fn(*args):
            x, w_, b_, r = unpack(args)
            return CF.batch_norm(x, rm, rv, w_, b_, cfg["training"], m, cfg["eps"], residual=r, relu=cfg["relu"])
        check(torch_fn, convx_fn, inputs, cfg["dtype"], f"batch_norm {cfg}", scale=10)
        if cfg["stats"]:  # the running statistics: updated as torch's, or (on an error) untouched alike
            torch.testing.assert_close(rm, rm_t, **tol(sd, 10))
            torch.testing.assert_close(rv, rv_t, **tol(sd, 10))
    run()


@pytest.mark.parametrize("device", FUZZ_DEVICES)
def test_add_relu(device):
    @settings(max_examples=n_examples("add_relu", device))
    @given(shape=st.lists(st.integers(0, 6), min_size=1, max_size=5).map(tuple), dtype=DTYPE, la=LAYOUT, lb=LAYOUT,
           seed=SEED, nan=st.booleans())
    def run(shape, dtype, la, lb, seed, nan):
        a = make(shape, dtype, la, seed, nan=nan)
        b = make(shape, dtype, lb, seed + 1)
        check(lambda a, b: F.relu(a + b), CF.add_relu, [a, b], dtype, f"add_relu {shape} {dtype} {la} {lb}")
    run()


def test_example_budget():
    """The CI profile runs at least 2,000 examples across the ops (the issue's floor)."""
    assert sum(cpu + simt for cpu, simt in EXAMPLES.values()) >= 2000
