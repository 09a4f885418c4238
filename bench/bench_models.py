"""Whole models: convx against the identical torch.nn model in the same
process (convx.models.X(impl="torch") carries the same weights), forward in
eval mode and one training step (forward, backward, SGD step), images/s.

CPU: ResNet-50, VGG-16, GoogLeNet, DenseNet-121, MobileNetV2 at batch
CONVX_BENCH_MODEL_CPU_N (2) and 224x224 (CONVX_BENCH_MODEL_SIZE), Inception-v3
at 299x299, U-Net (the paper's network, 1 channel, 2 classes, per-pixel loss)
at 252x252 (CONVX_BENCH_UNET_SIZE; 572 is the paper's tile), in NCHW and
channels_last. CUDA: batch 32 and 256 in float32, float16 and bfloat16,
channels_last.
"""
import os

import pytest
import torch

from convx import models
from conftest import SHORT, bench_devices, run_timed

SIZE = int(os.environ.get("CONVX_BENCH_MODEL_SIZE", "224"))
UNET_SIZE = int(os.environ.get("CONVX_BENCH_UNET_SIZE", "252"))
ARCHS = {  # name: (constructor kwargs, input channels, input size)
    "resnet50": ({}, 3, SIZE),
    "vgg16": ({}, 3, SIZE),
    "googlenet": ({"aux_logits": False, "init_weights": True}, 3, SIZE),
    "densenet121": ({}, 3, SIZE),
    "inception_v3": ({"aux_logits": False, "init_weights": True}, 3, SIZE * 299 // 224),
    "mobilenet_v2": ({}, 3, SIZE),
    "unet": ({}, 1, UNET_SIZE),
}


def cases():
    out = []
    for d in bench_devices():
        if d == "cpu":
            n = int(os.environ.get("CONVX_BENCH_MODEL_CPU_N", "2"))
            out += [pytest.param(d, n, torch.float32, layout, id=f"cpu-N{n}-fp32-{layout}")
                    for layout in ("nchw", "nhwc")]
        else:
            out += [pytest.param(d, n, dt, "nhwc", id=f"cuda-N{n}-{SHORT[dt]}") for n in (32, 256)
                    for dt in (torch.float32, torch.float16, torch.bfloat16)]
    return out


@pytest.mark.parametrize("impl", ["convx", "torch"])
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("device,n,dtype,layout", cases())
@pytest.mark.parametrize("arch", list(ARCHS))
def test_model(benchmark, arch, device, n, dtype, layout, mode, impl):
    torch.manual_seed(0)
    kwargs, channels, size = ARCHS[arch]
    model = getattr(models, arch)(impl=impl, **kwargs).to(device=device, dtype=dtype)
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    model = model.to(memory_format=mf)
    x = torch.randn(n, channels, size, size, device=device, dtype=dtype).contiguous(memory_format=mf)
    if arch == "unet":  # a class per output pixel
        out = model.output_size(size)
        target = torch.randint(0, 2, (n, out, out), device=device)
    else:
        target = torch.randint(0, 1000, (n,), device=device)
    if device == "cuda" and dtype == torch.float32:
        torch.backends.cudnn.allow_tf32 = False
    benchmark.group = f"model {arch} {mode} {device} {SHORT[dtype]} {layout} N={n}"
    benchmark.extra_info.update(op=f"{arch}_{mode}", layer=arch, impl=impl, device=device, dtype=SHORT[dtype],
                                layout=layout, shape=f"{n},{channels},{size},{size}")
    if mode == "eval":
        model.eval()

        def fn():
            with torch.no_grad():
                model(x)
    else:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def fn():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x).float(), target).backward()
            opt.step()
    # images per second, reported in the "gbps" slot's place as img/s
    run_timed(benchmark, fn, device, n * 1e9, "gflops")
    benchmark.extra_info["images_per_s"] = benchmark.extra_info.pop("gflops")
    pair = benchmark.extra_info.get("interleaved")
    if pair:
        for side in ("convx", "torch"):
            pair[f"{side}_images_per_s"] = pair.pop(f"{side}_gflops")
