"""Conv2d beside torch (oneDNN on CPU; cuDNN with cudnn.benchmark on CUDA),
forward and forward+backward, and on CUDA the data gradient and the weight
gradient alone, on the SHAPES.md layers. Each group holds convx and torch for
one (layer, pass, device, dtype, layout, batch). CUDA dtypes: fp32 (exact,
allow_tf32 off for both), tf32 (float32 tensors with allow_tf32 on for both:
convx's and cuDNN's tensor-core paths), fp16, bf16.

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

DTYPES = {"cpu": [torch.float32], "cuda": [torch.float32, "tf32", torch.float16, torch.bfloat16]}
PASSES = {"cpu": ["fwd", "fwdbwd"], "cuda": ["fwd", "fwdbwd", "dgrad", "wgrad"]}

CASES = [pytest.param(*p.values, pass_, id=f"{p.id}-{pass_}") for p in device_cases(DTYPES)
         for pass_ in PASSES[p.values[0]]]


@pytest.mark.parametrize("impl", ["convx", "torch"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("device,n,dtype,pass_", CASES)
@pytest.mark.parametrize("layer", LAYERS, ids=[l[0] for l in LAYERS])
def test_conv2d(benchmark, layer, device, n, dtype, pass_, layout, impl):
    name, C, H, K, RS, stride, pad, groups, *rest = layer
    dil = rest[0] if rest else 1  # (a ninth field: the dilation)
    (R, S), pad = kernel_hw(RS), kernel_hw(pad)
    Ho = (H + 2 * pad[0] - dil * (R - 1) - 1) // stride + 1
    Wo = (H + 2 * pad[1] - dil * (S - 1) - 1) // stride + 1
    flops = 2.0 * n * K * (C // groups) * R * S * Ho * Wo * (3 if pass_ == "fwdbwd" else 1)
    tf32 = dtype == "tf32"
    label = "tf32" if tf32 else SHORT[dtype]
    dtype = torch.float32 if tf32 else dtype
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(n, C, H, H, device=device, dtype=dtype).contiguous(memory_format=mf)
    w = (torch.randn(K, C // groups, R, S, device=device, dtype=dtype) * 0.05).contiguous(memory_format=mf)
    conv = convx.functional.conv2d if impl == "convx" else F.conv2d
    benchmark.group = f"conv2d {pass_} {name} {device} {label} {layout} N={n}"
    benchmark.extra_info.update(op=f"conv2d_{pass_}", layer=name, impl=impl, device=device, dtype=label,
                                layout=layout,
                                shape=f"{n},{C},{H},{H},{K},{R},{S},{stride},{pad[0]}x{pad[1]},{dil},{groups}")
    if pass_ == "fwd":
        def fn():
            with torch.no_grad():
                conv(x, w, None, stride, pad, dil, groups)
    elif pass_ in ("dgrad", "wgrad"):
        gy = torch.randn(n, K, Ho, Wo, device=device, dtype=dtype).contiguous(memory_format=mf)
        padding = [pad[0], pad[0], pad[1], pad[1]]
        if impl == "convx" and pass_ == "dgrad":
            def fn():
                torch.ops.convx.conv2d_backward_input(gy, w, list(x.shape), [stride, stride], padding, [dil, dil],
                                                      groups)
        elif impl == "convx":
            def fn():
                torch.ops.convx.conv2d_backward_weight(gy, x, list(w.shape), [stride, stride], padding, [dil, dil],
                                                       groups, False)
        else:
            mask = [pass_ == "dgrad", pass_ == "wgrad", False]

            def fn():
                torch.ops.aten.convolution_backward(gy, x, w, None, [stride, stride], list(pad), [dil, dil], False,
                                                    [0, 0], groups, mask)
    else:
        x.requires_grad_()
        w.requires_grad_()

        def fn():
            y = conv(x, w, None, stride, pad, dil, groups)
            torch.autograd.grad(y, [x, w], torch.ones_like(y))
    if device == "cuda" and dtype == torch.float32:
        torch.backends.cudnn.allow_tf32 = tf32
    run_timed(benchmark, fn, device, flops, "tflops" if device == "cuda" else "gflops")


# shape-preserving (a residual fits), undilated
FUSED_LAYERS = [l for l in LAYERS if len(l) == 8 and l[7] == 1 and l[1] == l[3] and l[5] == 1][:4]


@pytest.mark.parametrize("impl", ["convx", "torch"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("device,n,dtype", device_cases({"cpu": [torch.float32], "cuda": [torch.float16]}))
@pytest.mark.parametrize("layer", FUSED_LAYERS, ids=[l[0] for l in FUSED_LAYERS])
def test_conv2d_fused(benchmark, layer, device, n, dtype, layout, impl):
    """Inference tail relu(conv(x) + b + residual): convx's conv2d_fused (one pass) against torch's
    conv2d, add and relu (cuDNN / oneDNN convolution, then two elementwise passes)."""
    name, C, H, K, RS, stride, pad, groups = layer
    (R, S), pad = kernel_hw(RS), kernel_hw(pad)
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(n, C, H, H, device=device, dtype=dtype).contiguous(memory_format=mf)
    w = (torch.randn(K, C, R, S, device=device, dtype=dtype) * 0.05).contiguous(memory_format=mf)
    b = torch.randn(K, device=device, dtype=dtype)
    res = torch.randn(n, K, H, H, device=device, dtype=dtype).contiguous(memory_format=mf)
    benchmark.group = f"conv2d_fused {name} {device} {SHORT[dtype]} {layout} N={n}"
    benchmark.extra_info.update(op="conv2d_fused", layer=name, impl=impl, device=device, dtype=SHORT[dtype],
                                layout=layout, shape=f"{n},{C},{H},{H},{K},{R},{S},1,{pad[0]}x{pad[1]},1,1")

    def fn():
        with torch.no_grad():
            if impl == "convx":
                convx.functional.conv2d(x, w, b, 1, pad, residual=res, relu=True)
            else:
                torch.relu_(F.conv2d(x, w, b, 1, pad) + res)
    run_timed(benchmark, fn, device, 2.0 * n * K * C * R * S * H * H, "tflops" if device == "cuda" else "gflops")
