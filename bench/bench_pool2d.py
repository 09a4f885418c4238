"""Pooling beside torch on the SHAPES.md pooling layers, forward and
forward+backward, with GB/s: bytes that must move at the least (read the input
once, write the output once; the backward reads dY (+ indices) and writes dX)."""
import pytest
import torch
import torch.nn.functional as F

import convx
from conftest import SHORT, device_cases, run_timed

CF = convx.functional

# (name, C, H, op, kwargs)
LAYERS = [
    ("maxpool3x3s2.112x64", 64, 112, "max", dict(kernel_size=3, stride=2, padding=1)),
    ("maxpool2x2.224x64", 64, 224, "max", dict(kernel_size=2)),
    ("maxpool2x2.112x128", 128, 112, "max", dict(kernel_size=2)),
    ("maxpool2x2.56x256", 256, 56, "max", dict(kernel_size=2)),
    ("maxpool2x2.28x512", 512, 28, "max", dict(kernel_size=2)),
    ("maxpool2x2.14x512", 512, 14, "max", dict(kernel_size=2)),
    ("avgpool2x2.56x256", 256, 56, "avg", dict(kernel_size=2)),
    ("adaptive_avg.7x7x2048_1", 2048, 7, "adaptive_avg", dict(output_size=1)),
    # (avg_pool2d with one window the input's size: the global average's kernels)
    ("avgpool7x7.7x7x2048", 2048, 7, "avg", dict(kernel_size=7)),
    ("adaptive_avg.14x14x512_7", 512, 14, "adaptive_avg", dict(output_size=7)),
]
IMPLS = {
    "convx": {"max": CF.max_pool2d, "avg": CF.avg_pool2d, "adaptive_avg": CF.adaptive_avg_pool2d},
    "torch": {"max": F.max_pool2d, "avg": F.avg_pool2d, "adaptive_avg": F.adaptive_avg_pool2d},
}
DTYPES = {"cpu": [torch.float32], "cuda": [torch.float32, torch.bfloat16]}
CASES = device_cases(DTYPES)


@pytest.mark.parametrize("impl", ["convx", "torch"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("device,n,dtype", CASES)
@pytest.mark.parametrize("layer", LAYERS, ids=[l[0] for l in LAYERS])
def test_pool2d(benchmark, layer, device, n, dtype, pass_, layout, impl):
    name, C, H, op, kw = layer
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(n, C, H, H, device=device, dtype=dtype).contiguous(memory_format=mf)
    fn_ = IMPLS[impl][op]
    with torch.no_grad():
        y = fn_(x, **kw)
    es = x.element_size()
    nbytes = (x.numel() + y.numel()) * es
    if pass_ == "fwdbwd":  # + read dY, write dX (max: + indices written and read back)
        nbytes += (x.numel() + y.numel()) * es + (2 * y.numel() * 8 if op == "max" else 0)
    benchmark.group = f"pool2d {pass_} {name} {device} {SHORT[dtype]} {layout} N={n}"
    benchmark.extra_info.update(op=f"{op}_pool2d_{pass_}", layer=name, impl=impl, device=device, dtype=SHORT[dtype],
                                layout=layout, shape=f"{n},{C},{H},{H},{kw}")
    if pass_ == "fwd":
        def fn():
            with torch.no_grad():
                fn_(x, **kw)
    else:
        x.requires_grad_()
        gy = torch.ones_like(y)

        def fn():
            torch.autograd.grad(fn_(x, **kw), x, gy)
    run_timed(benchmark, fn, device, nbytes, "gbps")
