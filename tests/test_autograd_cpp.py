"""The autograd of conv2d, conv2d_fused, batch_norm, add_relu and the four poolings is registered in C++
(csrc/autograd.cpp): no Python runs per call. These check that it is, and that the
gradient of each input lands in its place whichever optional inputs are given and
whichever require grad (needs_input_grad counts only the tensors given)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import convx

CPP_NODE = "torch::autograd::CppNode<convx::"


def test_grad_fns_are_cpp_nodes():
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    y = convx.functional.conv2d(x, w, padding=1)
    assert y.grad_fn.name().startswith(CPP_NODE + "(anonymous namespace)::Conv2dFunction")
    assert convx.functional.conv2d(x, w, padding=1, relu=True).grad_fn.name().startswith(CPP_NODE)
    assert convx.BatchNorm2d(4)(y).grad_fn.name().startswith(CPP_NODE)
    assert convx.functional.add_relu(y, y).grad_fn.name().startswith(CPP_NODE)


POOLS = {
    "max_pool2d": lambda t: convx.functional.max_pool2d(t, 3, 2, 1, return_indices=True),
    "adaptive_max_pool2d": lambda t: convx.functional.adaptive_max_pool2d(t, (3, 4), return_indices=True),
    "avg_pool2d": lambda t: convx.functional.avg_pool2d(t, 3, 2, 1),
    "adaptive_avg_pool2d": lambda t: convx.functional.adaptive_avg_pool2d(t, (3, 4)),
}


@pytest.mark.parametrize("name", list(POOLS))
def test_pooling_grad_fns_are_cpp_nodes(name):
    x = torch.randn(2, 3, 8, 9, requires_grad=True)
    out = POOLS[name](x)
    y, ind = out if isinstance(out, tuple) else (out, None)
    assert y.grad_fn.name().startswith(CPP_NODE), y.grad_fn.name()
    if ind is not None:
        assert not ind.requires_grad and ind.grad_fn is None
    # its gradient in the input's memory format whatever the gradient's; double backward through the
    # backward ops' formulas (the gradient is linear in grad_output, constant in the input)
    for mf in (torch.contiguous_format, torch.channels_last):
        xd = torch.randn(2, 3, 8, 9, dtype=torch.float64).contiguous(memory_format=mf).requires_grad_()
        yd = POOLS[name](xd)
        yd = yd[0] if isinstance(yd, tuple) else yd
        for gmf in (torch.contiguous_format, torch.channels_last):
            gy = torch.randn_like(yd).contiguous(memory_format=gmf).requires_grad_()
            (gx,) = torch.autograd.grad(yd, xd, gy, create_graph=True)
            assert gx.is_contiguous(memory_format=mf)
            assert gx.grad_fn is not None
    assert torch.autograd.gradgradcheck(lambda t: (lambda o: o[0] if isinstance(o, tuple) else o)(POOLS[name](t)),
                                        (torch.randn(1, 2, 6, 7, dtype=torch.float64, requires_grad=True),))


def test_max_pool_backward_does_not_materialise_the_indices_gradient():
    """A Python autograd.Function fills a zero int64 tensor the size of the output for the indices'
    absent gradient on every backward; the C++ one is told not to (set_materialize_grads(false))."""
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    y = convx.functional.max_pool2d(x, 2)
    with torch.profiler.profile() as prof:
        y.backward(torch.ones_like(y))
    names = {e.name for e in prof.events()}
    assert "aten::zeros_like" not in names and "aten::zero_" not in names, sorted(names)


@pytest.mark.parametrize("with_bias,with_residual,relu", list(itertools.product([False, True], repeat=3)))
def test_conv2d_fused_gradients_by_input(with_bias, with_residual, relu):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 7, generator=g, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64) if with_bias else None
    r = torch.randn(2, 5, 7, 7, generator=g, dtype=torch.float64) if with_residual else None
    inputs = [t for t in (x, w, b, r) if t is not None]
    for need in itertools.product([False, True], repeat=len(inputs)):
        if not any(need):
            continue
        ours = [t.detach().clone().requires_grad_(n) for t, n in zip(inputs, need)]
        ref = [t.detach().clone().requires_grad_(n) for t, n in zip(inputs, need)]

        def unpack(ts):
            it = iter(ts)
            return next(it), next(it), next(it) if with_bias else None, next(it) if with_residual else None

        xo, wo, bo, ro = unpack(ours)
        xr, wr, br, rr = unpack(ref)
        y = convx.functional.conv2d(xo, wo, bo, padding=1, residual=ro, relu=relu)
        yr = F.conv2d(xr, wr, br, padding=1)
        yr = yr + rr if rr is not None else yr
        yr = yr.relu() if relu else yr
        gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
        got = torch.autograd.grad(y, [t for t in ours if t.requires_grad], gy)
        want = torch.autograd.grad(yr, [t for t in ref if t.requires_grad], gy)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e)


@pytest.mark.parametrize("affine,with_residual", list(itertools.product([False, True], repeat=2)))
def test_batch_norm_gradients_by_input(affine, with_residual):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True) if affine else None
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True) if affine else None
    r = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True) if with_residual else None
    y = convx.functional.batch_norm(x, None, None, w, b, True, residual=r, relu=True)
    yr = F.batch_norm(x, None, None, w, b, True)
    yr = (yr + r if r is not None else yr).relu()
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    leaves = [t for t in (x, w, b, r) if t is not None]
    for a, e in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(yr, leaves, gy)):
        torch.testing.assert_close(a, e)


def test_double_backward_through_cpp_conv2d():
    """create_graph: the backward ops are recorded (their own formulas), so a gradient penalty
    differentiates; without it nothing is recorded."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    gx, = torch.autograd.grad(convx.functional.conv2d(x, w, padding=1).square().sum(), x, create_graph=True)
    assert gx.grad_fn is not None
    penalty_w, = torch.autograd.grad(gx.square().sum(), w)
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    gxr, = torch.autograd.grad(F.conv2d(xr, wr, padding=1).square().sum(), xr, create_graph=True)
    torch.testing.assert_close(penalty_w, torch.autograd.grad(gxr.square().sum(), wr)[0])
    gx2, = torch.autograd.grad(convx.functional.conv2d(x, w, padding=1).sum(), x)
    assert gx2.grad_fn is None and not gx2.requires_grad


def test_no_grad_and_inference_mode_record_nothing():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, requires_grad=True)
    with torch.no_grad():
        assert convx.functional.conv2d(x, w).grad_fn is None
    with torch.inference_mode():
        assert not convx.functional.conv2d(x, w).requires_grad


OPS_NO_GRAPH = {
    "conv2d": lambda x, w, r: convx.functional.conv2d(x, w, padding=1),
    "conv2d_fused": lambda x, w, r: convx.functional.conv2d(x, w, padding=1, residual=r, relu=True),
    "batch_norm": lambda x, w, r: convx.functional.batch_norm(x, torch.zeros(2), torch.ones(2), w[:, 0, 0, 0],
                                                              w[:, 1, 0, 0], residual=r, relu=True),
    "add_relu": lambda x, w, r: convx.functional.add_relu(x, r),
    **{name: (lambda f: lambda x, w, r: f(x))(f) for name, f in POOLS.items()},
}


@pytest.mark.parametrize("name", list(OPS_NO_GRAPH))
def test_calls_that_record_nothing_skip_the_function(name):
    """No graph to record (grad mode off, or no input that requires a gradient: a frozen layer in
    training): the op runs beneath autograd without a Function; the same values, no grad_fn. An
    input that requires a gradient, even only the weight, records the C++ node."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 6, 7, generator=g)
    w = torch.randn(2, 2, 3, 3, generator=g)
    r = torch.randn(2, 2, 6, 7, generator=g)
    f = OPS_NO_GRAPH[name]
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    frozen = first(f(x, w, r))
    assert frozen.grad_fn is None and not frozen.requires_grad
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.no_grad():
        quiet = first(f(xg, wg, r))
    assert quiet.grad_fn is None and not quiet.requires_grad
    recorded = first(f(xg, wg, r))
    assert recorded.grad_fn.name().startswith(CPP_NODE), recorded.grad_fn.name()
    torch.testing.assert_close(frozen, recorded.detach(), rtol=0, atol=0)
    torch.testing.assert_close(quiet, recorded.detach(), rtol=0, atol=0)
    if name in ("conv2d", "conv2d_fused", "batch_norm"):  # only the weight requires a gradient
        assert first(f(x, wg, r)).grad_fn.name().startswith(CPP_NODE)
