"""conv2d_fused: relu(conv2d(x, w, b) + residual) in the convolution's own pass.

The inference epilogue convx.convert(fuse=True) builds after folding batch norm:
parity with torch (every device and dtype), autograd through it (gradcheck and
gradgradcheck in float64), opcheck, the module form, and clean failures.
"""
import pytest
import torch
import torch.nn.functional as F

import convx
from conftest import DEVICES, DEVICE_DTYPES, cuda_semantics

TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2),
       torch.bfloat16: (4e-2, 4e-2)}


def _inputs(device, dtype, layout="contiguous", k=24, stride=1):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 9, 9, generator=g, dtype=torch.float64)
    w = torch.randn(k, 16, 3, 3, generator=g, dtype=torch.float64) / 12
    b = torch.randn(k, generator=g, dtype=torch.float64)
    ho = (9 + 2 - 3) // stride + 1
    r = torch.randn(2, k, ho, ho, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        x, r = (t.contiguous(memory_format=torch.channels_last) for t in (x, r))
    dev = "cuda" if str(device) == "cuda" else "cpu"
    return [t.to(dev, dtype) for t in (x, w, b, r)]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("with_res,relu", [(True, True), (False, True), (True, False)])
def test_parity(device, dtype, layout, with_res, relu):
    x, w, b, r = _inputs(device, dtype, layout)
    y = convx.functional.conv2d(x, w, b, padding=1, residual=r if with_res else None, relu=relu)
    ref = F.conv2d(x.double().cpu(), w.double().cpu(), b.double().cpu(), padding=1)
    if with_res:
        ref = ref + r.double().cpu()
    if relu:
        ref = ref.relu()
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(y.double().cpu(), ref, atol=atol, rtol=rtol)
    assert y.dtype == dtype
    cl = layout == "channels_last" and not (cuda_semantics(device) and dtype == torch.float64)  # torch's CUDA rule
    assert y.is_contiguous(memory_format=torch.channels_last) == cl


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device):
    x, w, b, r = (t.requires_grad_() for t in _inputs(device, torch.float64, k=4))
    x, w, b, r = x[:1, :4, :5, :5].detach().requires_grad_(), w[:, :4].detach().requires_grad_(), b, r[:1, :, :5, :5].detach().requires_grad_()
    fn = lambda x, w, b, r: convx.functional.conv2d(x, w, b, padding=1, residual=r, relu=True)
    assert torch.autograd.gradcheck(fn, (x, w, b, r))
    assert torch.autograd.gradgradcheck(fn, (x, w, b, r))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, layout):
    x, w, b, r = _inputs(device, torch.float64, layout, stride=2)
    args = (x, w, b, r, [2, 2], [1, 1, 1, 1], [1, 1], 1, True)
    torch.library.opcheck(torch.ops.convx.conv2d_fused, args)
    torch.library.opcheck(torch.ops.convx.conv2d_fused, (x, w, None, None, [2, 2], [1, 1, 1, 1], [1, 1], 1, False))


@pytest.mark.parametrize("device", DEVICES)
def test_module_and_unbatched(device):
    x, w, b, r = _inputs(device, torch.float64)
    m = convx.Conv2d(16, 24, 3, padding=1, activation="relu").to(x.device, torch.float64)
    with torch.no_grad():
        m.weight.copy_(w)
        m.bias.copy_(b)
    ref = (F.conv2d(x, w, b, padding=1) + r).relu()
    torch.testing.assert_close(m(x, r), ref)
    torch.testing.assert_close(m(x[0], r[0]), ref[0])
    assert "activation='relu'" in repr(m)
    assert list(m.state_dict()) == ["weight", "bias"]
    with pytest.raises(ValueError, match="activation must be None or 'relu'"):
        convx.Conv2d(3, 4, 3, activation="gelu")


@pytest.mark.parametrize("device", DEVICES)
def test_bad_residual_fails_before_any_kernel(device):
    x, w, b, r = _inputs(device, torch.float32)
    with pytest.raises(RuntimeError, match=r"expected residual of size \[2, 24, 9, 9\]"):
        convx.functional.conv2d(x, w, b, padding=1, residual=r[:, :, :8])
    with pytest.raises(RuntimeError, match="residual"):
        convx.functional.conv2d(x, w, b, padding=1, residual=r.double())


def test_fused_resnet_eval_matches_torchvision():
    """convert(fuse=True) in eval: every conv -> bn -> (+ identity) -> relu is one conv2d_fused."""
    import torchvision
    tv = torchvision.models.resnet18(num_classes=10).eval().double()
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    ref = torchvision.models.resnet18(num_classes=10).eval().double()
    ref.load_state_dict(tv.state_dict())
    fused = convx.convert(tv, fuse=True)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-9, atol=1e-9)
    calls = [n for n in fused.graph.nodes if n.op == "call_module" and getattr(fused.get_submodule(n.target), "activation", None) == "relu"
             and isinstance(fused.get_submodule(n.target), convx.Conv2d)]
    assert len(calls) == 17
