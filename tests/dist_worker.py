"""One rank of a multi-process test (started by tests/test_distributed.py,
two processes over gloo on the loopback interface).

    python tests/dist_worker.py SCENARIO OUTDIR     (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set)

Every rank builds the same global tensors from fixed seeds, works on its
slice, and saves what it computed to OUTDIR/SCENARIO-rankR.pt; the test
compares those with single-process references."""
import datetime
import gc
import os
import sys

import torch
import torch.distributed as dist

import convx

# SyncBatchNorm cases: global batch split into per-rank sizes, and what the layer does
SYNC_CASES = {
    "equal": dict(sizes=[3, 3]),
    "unequal": dict(sizes=[1, 4]),
    "empty_rank": dict(sizes=[0, 4]),
    "bn_add_relu": dict(sizes=[2, 3], activation="relu", residual=True),
    "bn_relu_channels_last": dict(sizes=[2, 2], activation="relu", channels_last=True),
    "momentum_none_no_affine": dict(sizes=[3, 2], momentum=None, affine=False),
    "bias_false": dict(sizes=[2, 2], bias=False),
    "large_mean": dict(sizes=[2, 3], offset=1e4),
    "rank_3_input": dict(sizes=[2, 3], shape=(5, 7)),
    "float32": dict(sizes=[2, 3], dtype=torch.float32),
}
C, H, W = 4, 5, 3


def sync_case_data(case):
    cfg = SYNC_CASES[case]
    g = torch.Generator().manual_seed(0)
    dtype = cfg.get("dtype", torch.float64)
    shape = (sum(cfg["sizes"]), *cfg.get("shape", (C, H, W)))  # cfg["shape"]: one sample's (C, ...)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + cfg.get("offset", 0.0)).to(dtype)
    res = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) if cfg.get("residual") else None
    gy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return cfg, x, res, gy


def run_sync_bn(rank, world):
    out = {}
    for case in SYNC_CASES:
        cfg, x, res, gy = sync_case_data(case)
        lo = sum(cfg["sizes"][:rank])
        hi = lo + cfg["sizes"][rank]
        bn = convx.SyncBatchNorm(x.shape[1], momentum=cfg.get("momentum", 0.1), affine=cfg.get("affine", True),
                                 activation=cfg.get("activation"), bias=cfg.get("bias", True)).to(x.dtype)
        if bn.weight is not None:
            with torch.no_grad():
                bn.weight.copy_(torch.linspace(0.5, 1.5, x.shape[1]))
                if bn.bias is not None:
                    bn.bias.copy_(torch.linspace(-0.3, 0.3, x.shape[1]))
        xs = x[lo:hi].clone()
        if cfg.get("channels_last"):
            xs = xs.contiguous(memory_format=torch.channels_last)
        xs.requires_grad_()
        rs = res[lo:hi].clone().requires_grad_() if res is not None else None
        steps = []
        for step in range(2):  # two steps: running statistics and num_batches_tracked move twice
            y = bn(xs, rs)
            grads = torch.autograd.grad(y, [xs] + [p for p in (bn.weight, bn.bias, rs) if p is not None],
                                        gy[lo:hi].to(y.dtype))
            steps.append(dict(y=y.detach(), grads=[t.detach() for t in grads],
                              channels_last=y.is_contiguous(memory_format=torch.channels_last)))
        out[case] = dict(steps=steps, state={k: v.clone() for k, v in bn.state_dict().items()})
    bn = convx.SyncBatchNorm(C).double().eval()  # eval: no collective (rank 1 does not even call it)
    if rank == 0:
        out["eval"] = bn(torch.ones(2, C, 3, 3, dtype=torch.float64))
    return out


def run_ddp(rank, world):
    """One SGD step of ResNet-20 with SyncBatchNorm under DDP on this rank's half of the batch."""
    torch.manual_seed(0)
    model = convx.models.resnet20(num_classes=10, in_channels=1).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=g)
    model = convx.convert(model, sync_bn=True)
    ddp = convx.distributed.DistributedDataParallel(model)  # torch's refuses any SyncBatchNorm on the CPU
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    n = 8 // world
    loss = torch.nn.functional.cross_entropy(ddp(x[rank * n:(rank + 1) * n]), y[rank * n:(rank + 1) * n])
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def main():
    scenario, outdir = sys.argv[1], sys.argv[2]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        if scenario == "sync_bn_simt":  # the same, with convx's CUDA kernels running on the emulator
            with convx.simt.device():
                result = run_sync_bn(rank, world)
        else:
            result = {"sync_bn": run_sync_bn, "ddp": run_ddp}[scenario](rank, world)
        torch.save(result, os.path.join(outdir, f"{scenario}-rank{rank}.pt"))
        dist.barrier()  # as convx.train does: both ranks done before either tears down
    finally:
        gc.collect()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
