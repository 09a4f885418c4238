"""BatchNorm2d and the fused tails beside torch's eager sequences, training
(forward + backward) and eval, on the SHAPES.md memory-bound shapes, with
GB/s: the bytes each op must move at the least.

  bn            torch: F.batch_norm
  bn_relu       torch: F.batch_norm -> relu
  bn_add_relu   torch: F.batch_norm -> + identity -> relu
  add_relu      torch: a + b -> relu
"""
import pytest
import torch
import torch.nn.functional as F

import convx
from conftest import SHORT, device_cases, run_timed

CF = convx.functional

SHAPES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
DTYPES = {"cpu": [torch.float32], "cuda": [torch.float32, torch.bfloat16]}
CASES = device_cases(DTYPES)

# Minimal bytes per element (in units of the element size) for each op/pass.
# train fwd: stats read + apply read + write (+ residual read); train fwd+bwd adds
# dy, y (relu mask), x reads, dresidual write, then dresidual + x reads and dx write.
TRAFFIC = {
    ("bn", "eval"): 2, ("bn_relu", "eval"): 2, ("bn_add_relu", "eval"): 3, ("add_relu", "eval"): 3,
    ("bn", "train"): 3 + 2 + 1, ("bn_relu", "train"): 3 + 3 + 1, ("bn_add_relu", "train"): 4 + 6 + 1,
    ("add_relu", "train"): 3 + 2 + 1,
}


def torch_seq(op, x, r, bn_args):
    if op == "add_relu":
        return torch.relu(x + r)
    y = F.batch_norm(x, *bn_args)
    if op == "bn_add_relu":
        y = y + r
    return torch.relu(y) if op != "bn" else y


def convx_op(op, x, r, bn_args):
    if op == "add_relu":
        return CF.add_relu(x, r)
    return CF.batch_norm(x, *bn_args, residual=r if op == "bn_add_relu" else None, relu=op != "bn")


@pytest.mark.parametrize("impl", ["convx", "torch"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("op", ["bn", "bn_relu", "bn_add_relu", "add_relu"])
@pytest.mark.parametrize("device,n,dtype", CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{h}x{h}x{c}" for c, h in SHAPES])
def test_batch_norm(benchmark, shape, device, n, dtype, op, mode, layout, impl):
    C, H = shape
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(n, C, H, H, device=device, dtype=dtype).contiguous(memory_format=mf)
    r = torch.randn_like(x) if op in ("bn_add_relu", "add_relu") else None
    w = torch.rand(C, device=device) + 0.5
    b = torch.randn(C, device=device)
    rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
    training = mode == "train"
    bn_args = (rm, rv, w, b, training, 0.1, 1e-5)
    fn_ = convx_op if impl == "convx" else torch_seq
    benchmark.group = f"batch_norm {op} {mode} {H}x{H}x{C} {device} {SHORT[dtype]} {layout} N={n}"
    benchmark.extra_info.update(op=f"{op}_{mode}", layer=f"{H}x{H}x{C}", impl=impl, device=device,
                                dtype=SHORT[dtype], layout=layout, shape=f"{n},{C},{H},{H}")
    nbytes = TRAFFIC[(op, mode)] * x.numel() * x.element_size()
    if training:
        x.requires_grad_()
        if r is not None:
            r.requires_grad_()
        w.requires_grad_()
        b.requires_grad_()
        inputs = [t for t in (x, r, w, b) if t is not None] if op != "add_relu" else [x, r]
        gy = torch.ones_like(x)

        def fn():
            torch.autograd.grad(fn_(op, x, r, bn_args), inputs, gy)
    else:
        def fn():
            with torch.no_grad():
                fn_(op, x, r, bn_args)
    run_timed(benchmark, fn, device, nbytes, "gbps")
