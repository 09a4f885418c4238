"""Whole models: convx against the identical torch.nn model in the same
process (convx.models.X(impl="torch") carries the same weights), forward in
eval mode and one training step (forward, backward, SGD step), images/s.

CPU: ResNet-50, VGG-16, GoogLeNet at batch CONVX_BENCH_MODEL_CPU_N (2) and
224x224 (CONVX_BENCH_MODEL_SIZE). CUDA: batch 32 and 256 in float32, float16
and bfloat16, channels_last.
"""
import os

import pytest
import torch

from convx import models
from conftest import SHORT, bench_devices, run_timed

SIZE = int(os.environ.get("CONVX_BENCH_MODEL_SIZE", "224"))
ARCHS = {"resnet50": {}, "vgg16": {}, "googlenet": {"aux_logits": False, "init_weights": True}}


def cases():
    out = []
    for d in bench_devices():
        if d == "cpu":
            out += [pytest.param(d, int(os.environ.get("CONVX_BENCH_MODEL_CPU_N", "2")), torch.float32,
                                 id=f"cpu-N{os.environ.get('CONVX_BENCH_MODEL_CPU_N', '2')}-fp32")]
        else:
            out += [pytest.param(d, n, dt, id=f"cuda-N{n}-{SHORT[dt]}") for n in (32, 256)
                    for dt in (torch.float32, torch.float16, torch.bfloat16)]
    return out


@pytest.mark.parametrize("impl", ["convx", "torch"])
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("device,n,dtype", cases())
@pytest.mark.parametrize("arch", list(ARCHS))
def test_model(benchmark, arch, device, n, dtype, mode, impl):
    torch.manual_seed(0)
    model = getattr(models, arch)(impl=impl, **ARCHS[arch]).to(device=device, dtype=dtype)
    mf = torch.channels_last if device == "cuda" else torch.contiguous_format
    model = model.to(memory_format=mf)
    x = torch.randn(n, 3, SIZE, SIZE, device=device, dtype=dtype).contiguous(memory_format=mf)
    target = torch.randint(0, 1000, (n,), device=device)
    if device == "cuda" and dtype == torch.float32:
        torch.backends.cudnn.allow_tf32 = False
    benchmark.group = f"model {arch} {mode} {device} {SHORT[dtype]} N={n}"
    benchmark.extra_info.update(op=f"{arch}_{mode}", layer=arch, impl=impl, device=device, dtype=SHORT[dtype],
                                layout="nhwc" if device == "cuda" else "nchw", shape=f"{n},3,{SIZE},{SIZE}")
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
