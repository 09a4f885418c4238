"""Conv2d beside torch (oneDNN on CPU; cuDNN with cudnn.benchmark on CUDA),
forward and forward+backward, on the SHAPES.md layers. Each group holds
convx and torch for one (layer, pass, device, dtype, layout, batch).

    make bench                                 # CPU (and CUDA when present)
    CONVX_BENCH_SET=all make bench             # every SHAPES.md conv layer
    python bench/report.py .benchmarks/....json  # -> SHAPES.md JSON + table
"""
import pytest
import torch
import torch.nn.functional as F

import convx
from conftest import SHORT, bench_set, device_cases, run_timed
from shapes import ALL, QUICK, kernel_hw

LAYERS = ALL if bench_set() == "all" else QUICK

DTYPES = {"cpu": [torch.float32], "cuda": [torch.float32, torch.float16, torch.bfloat16]}

CASES = device_cases(DTYPES)


@pytest.mark.parametrize("impl", ["convx", "torch"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("pass_", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("device,n,dtype", CASES)
@pytest.mark.parametrize("layer", LAYERS, ids=[l[0] for l in LAYERS])
def test_conv2d(benchmark, layer, device, n, dtype, pass_, layout, impl):
    name, C, H, K, RS, stride, pad, groups = layer
    (R, S), pad = kernel_hw(RS), kernel_hw(pad)
    Ho = (H + 2 * pad[0] - R) // stride + 1
    Wo = (H + 2 * pad[1] - S) // stride + 1
    flops = 2.0 * n * K * (C // groups) * R * S * Ho * Wo * (3 if pass_ == "fwdbwd" else 1)
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(n, C, H, H, device=device, dtype=dtype).contiguous(memory_format=mf)
    w = (torch.randn(K, C // groups, R, S, device=device, dtype=dtype) * 0.05).contiguous(memory_format=mf)
    conv = convx.functional.conv2d if impl == "convx" else F.conv2d
    benchmark.group = f"conv2d {pass_} {name} {device} {SHORT[dtype]} {layout} N={n}"
    benchmark.extra_info.update(op=f"conv2d_{pass_}", layer=name, impl=impl, device=device, dtype=SHORT[dtype],
                                layout=layout, shape=f"{n},{C},{H},{H},{K},{R},{S},{stride},{pad[0]}x{pad[1]},1,{groups}")
    if pass_ == "fwd":
        def fn():
            with torch.no_grad():
                conv(x, w, None, stride, pad, 1, groups)
    else:
        x.requires_grad_()
        w.requires_grad_()

        def fn():
            y = conv(x, w, None, stride, pad, 1, groups)
            torch.autograd.grad(y, [x, w], torch.ones_like(y))
    if device == "cuda" and dtype == torch.float32:
        torch.backends.cudnn.allow_tf32 = False
    run_timed(benchmark, fn, device, flops, "tflops" if device == "cuda" else "gflops")
