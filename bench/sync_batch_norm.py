"""SyncBatchNorm training step (forward + backward) on several processes,
convx beside torch, interleaved, medians; the slowest rank's time per step.

    python bench/sync_batch_norm.py                        # 2 gloo ranks on the CPU
    python bench/sync_batch_norm.py --device cuda --nproc 2   # NCCL, one GPU per rank

Beside what: on GPUs, torch.nn.SyncBatchNorm (and its eager + residual ->
relu for the fused tail). On the CPU torch.nn.SyncBatchNorm raises
("expected input tensor to be on GPU"), so the CPU reference is
torch.nn.BatchNorm2d with no synchronisation at all: the ratio then says what
convx's synchronised layer costs against a local one, and a ratio near 1
means the collectives are nearly free. Shapes: SHAPES.md's batch-norm shapes,
--batch images per rank. Writes the result JSON + Markdown (the SHAPES.md
format) into --outdir.
"""
import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(_HERE))  # convx built in place (make build); spawned ranks import it too
import report  # noqa: E402  (the result format)

SHAPES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]


def _step(bn, x, r, gy, fused, torch_tail):
    if torch_tail:  # torch: bn -> + residual -> relu, eagerly
        y = bn(x)
        if fused:
            y = torch.relu(y + r)
    else:
        y = bn(x, r) if fused else bn(x)
    grads = torch.autograd.grad(y, [x] + ([r] if fused else []) + [bn.weight, bn.bias], gy)
    return grads


def _worker(rank, args, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    import convx

    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=args.nproc,
                            timeout=datetime.timedelta(seconds=120))
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    records = []
    try:
        for c, hw in SHAPES:
            for fused in (False, True):
                torch.manual_seed(rank)
                x = torch.randn(args.batch, c, hw, hw, device=dev, requires_grad=True)
                r = torch.randn_like(x, requires_grad=True)
                gy = torch.randn_like(x)
                mine = convx.SyncBatchNorm(c, activation="relu" if fused else None).to(dev)
                theirs = (torch.nn.SyncBatchNorm(c) if cuda else torch.nn.BatchNorm2d(c)).to(dev)
                times = {"convx": [], "torch": []}
                for rep in range(args.reps + 2):
                    for impl, bn in (("convx", mine), ("torch", theirs)):
                        dist.barrier()
                        if cuda:
                            torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        _step(bn, x, r, gy, fused, impl == "torch")
                        if cuda:
                            torch.cuda.synchronize()
                        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=dev)
                        dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the step ends when the slowest rank is done
                        if rep >= 2:  # two warm-up rounds
                            times[impl].append(t.item())
                tc, tt = statistics.median(times["convx"]), statistics.median(times["torch"])
                n = args.batch * args.nproc
                records.append({
                    "op": "sync_bn_add_relu_train" if fused else "sync_bn_train", "layer": f"{c}x{hw}x{hw}",
                    "shape": f"{args.nproc}x{args.batch},{c},{hw},{hw}", "device": args.device, "dtype": "fp32",
                    "layout": "nchw", "convx_ms": round(tc * 1e3, 4), "torch_ms": round(tt * 1e3, 4),
                    "ratio": round(tt / tc, 3),
                    # bytes per rank: as bench_batch_norm's train traffic (6 or 11 element passes)
                    "gbps": round((11 if fused else 6) * x.numel() * 4 / tc / 1e9, 3)})
    finally:
        dist.destroy_process_group()
    if rank == 0:
        queue.put(records)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch", type=int, default=4, help="images per rank")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--outdir", default=os.path.join(_HERE, "results"))
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(args, port, queue), nprocs=args.nproc, start_method="spawn")
    records = queue.get()
    torch.set_num_threads(args.threads * args.nproc)
    ref = "torch.nn.SyncBatchNorm" if args.device == "cuda" else "torch.nn.BatchNorm2d without synchronisation"
    res = {"device": report.device_name(args.device) + f", {args.nproc} processes x {args.threads} thread(s)",
           "torch": torch.__version__, "cuda": torch.version.cuda, "date": datetime.date.today().isoformat(),
           "command": f"python bench/sync_batch_norm.py --device {args.device} --nproc {args.nproc} "
                      f"--batch {args.batch} (torch: {ref})",
           "ceilings": {args.device: report.measure_ceilings(args.device)}, "records": records}
    base = os.path.join(args.outdir, f"{res['date']}-{report.slug(report.device_name(args.device))}-"
                                     f"{args.device}-sync_batch_norm")
    os.makedirs(args.outdir, exist_ok=True)
    with open(base + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(report.markdown(res))
    print(report.markdown(res))
    print(f"wrote {base}.json, {base}.md")


if __name__ == "__main__":
    main()
