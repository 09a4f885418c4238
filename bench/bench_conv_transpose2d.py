"""ConvTranspose2d beside torch on the SHAPES.md transposed layers."""
import pytest
import torch
import torch.nn.functional as F

import convx
from conftest import SHORT, device_cases, run_timed

# (name, C_in, H, C_out, k, stride, pad)
LAYERS = [
    ("t4x4s2.512_256_14", 512, 14, 256, 4, 2, 1),
    ("t4x4s2.256_128_28", 256, 28, 128, 4, 2, 1),
    ("t4x4s2.128_64_56", 128, 56, 64, 4, 2, 1),
    ("t2x2s2.512_256_28", 512, 28, 256, 2, 2, 0),
]
DTYPES = {"cpu": [torch.float32], "cuda": [torch.float32, torch.float16, torch.bfloat16]}
CASES = device_cases(DTYPES)


@pytest.mark.parametrize("impl", ["convx", "torch"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("device,n,dtype", CASES)
@pytest.mark.parametrize("layer", LAYERS, ids=[l[0] for l in LAYERS])
def test_conv_transpose2d(benchmark, layer, device, n, dtype, pass_, layout, impl):
    name, C, H, K, k, s, p = layer
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(n, C, H, H, device=device, dtype=dtype).contiguous(memory_format=mf)
    w = (torch.randn(C, K, k, k, device=device, dtype=dtype) * 0.05).contiguous(memory_format=mf)
    flops = 2.0 * n * C * K * k * k * H * H * (3 if pass_ == "fwdbwd" else 1)
    conv = convx.functional.conv_transpose2d if impl == "convx" else F.conv_transpose2d
    benchmark.group = f"conv_transpose2d {pass_} {name} {device} {SHORT[dtype]} {layout} N={n}"
    benchmark.extra_info.update(op=f"conv_transpose2d_{pass_}", layer=name, impl=impl, device=device,
                                dtype=SHORT[dtype], layout=layout, shape=f"{n},{C},{H},{H},{K},{k},{k},{s},{p},1,1")
    if pass_ == "fwd":
        def fn():
            with torch.no_grad():
                conv(x, w, None, s, p)
    else:
        x.requires_grad_()
        w.requires_grad_()

        def fn():
            y = conv(x, w, None, s, p)
            torch.autograd.grad(y, [x, w], torch.ones_like(y))
    if device == "cuda" and dtype == torch.float32:
        torch.backends.cudnn.allow_tf32 = False
    run_timed(benchmark, fn, device, flops, "tflops" if device == "cuda" else "gflops")
