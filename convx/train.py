"""python -m convx train: train a convx model on scikit-learn's handwritten
digits (1,797 8x8 images that ship inside the package; nothing is
downloaded), and the identical torch.nn model beside it, from the same
initial weights on the same batches, then report both.

    python -m convx train                       # ResNet-20, 30 epochs, CPU
    python -m convx train --model lenet5 --epochs 20 --device cuda
    python -m convx train --save digits.pt      # keep the trained state_dict
    torchrun --nproc_per_node=2 -m convx train --sync-bn   # data-parallel (gloo on CPUs, NCCL on GPUs)

Under torchrun (WORLD_SIZE > 1) each process trains on its share of every
batch (DistributedSampler; the global batch stays --batch-size), gradients
are averaged by DistributedDataParallel, ``--sync-bn`` makes the batch norms
convx.SyncBatchNorm, and rank 0 alone shows progress, evaluates and reports.
"""
import argparse
import datetime
import gc
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from . import models
from .convert import convert
from .distributed import DistributedDataParallel

MODELS = {
    # name: (constructor, input size it is trained at)
    "resnet20": (lambda impl: models.resnet20(num_classes=10, in_channels=1, impl=impl), 8),
    "lenet5": (lambda impl: models.lenet5(num_classes=10, in_channels=1, impl=impl), 32),
    "resnet18": (lambda impl: models.resnet18(num_classes=10, in_channels=1, impl=impl), 32),
}


def load_digits(seed: int):
    """Stratified 80/20 split of sklearn's digits, scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits as sk_load
        from sklearn.model_selection import train_test_split
    except ImportError:  # pragma: no cover - the Makefile installs it
        sys.exit("python -m convx train needs scikit-learn, whose digits data set it trains on: "
                 "pip install 'convx[demo]' (or pip install scikit-learn)")
    d = sk_load()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N x 1 x 8 x 8
    y = torch.tensor(d.target, dtype=torch.long)
    tr, te = train_test_split(range(len(y)), test_size=0.2, random_state=seed, stratify=d.target)
    return x[tr], y[tr], x[te], y[te]


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Digit-friendly augmentation: small random rotation (+-12 deg), scale
    (0.9-1.1) and shift (+-1 px); no flips (a mirrored 2 is no digit)."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(12)
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2.0 / x.shape[-1])
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


class Progress:
    """A one-line progress bar on stderr (tqdm's look, no dependency)."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total, self.desc, self.n, self.t0 = total, desc, 0, time.perf_counter()
        self.enabled = enabled and sys.stderr.isatty()
        self.postfix = ""

    def update(self, postfix: str = ""):
        self.n += 1
        self.postfix = postfix
        if self.enabled:
            w = 24
            fill = int(w * self.n / self.total)
            el = time.perf_counter() - self.t0
            sys.stderr.write(f"\r{self.desc} |{'#' * fill}{'.' * (w - fill)}| {self.n}/{self.total} "
                             f"[{el:4.1f}s] {postfix}   ")
            sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()


def evaluate(model, x, y, size, batch):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            xb = x[i:i + batch]
            if size != xb.shape[-1]:
                xb = F.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False)
            correct += (model(xb).argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(y)


class _Dist:
    """This process's place in a torchrun launch (world 1 when not launched so)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.backend = None

    @property
    def main(self):
        return self.rank == 0


def train_one(name, impl, init_state, data, args, device, dist_ctx=None):
    """Trains one model to the end: (model, final accuracy, seconds per epoch, history)."""
    for state in train_epochs(name, impl, init_state, data, args, device, dist_ctx):
        pass
    return state


def train_epochs(name, impl, init_state, data, args, device, dist_ctx=None):
    """Trains one model an epoch at a time: yields (model, accuracy, seconds per epoch so far, history)
    after each epoch, so that two implementations can take turns (see _main)."""
    ctor, size = MODELS[name]
    dist_ctx = dist_ctx or _Dist()
    torch.manual_seed(args.seed)
    model = ctor(impl).to(device)
    model.load_state_dict(init_state)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dist_ctx.world > 1 and args.sync_bn:
        model = convert(model, sync_bn=True) if impl == "convx" else torch.nn.SyncBatchNorm.convert_sync_batchnorm(
            model)
    net = model
    if dist_ctx.world > 1:  # convx's DDP: torch's refuses SyncBatchNorm layers in CPU modules
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    xtr, ytr, xte, yte = [t.to(device) for t in data]
    local_batch = max(1, args.batch_size // dist_ctx.world)
    sampler = None
    if dist_ctx.world > 1:
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(range(len(ytr)), num_replicas=dist_ctx.world, rank=dist_ctx.rank, shuffle=True,
                                     seed=args.seed)
    steps = math.ceil((len(sampler) if sampler is not None else len(ytr)) / local_batch)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps,
                                                pct_start=0.15, anneal_strategy="cos")
    # same batches and augmentation for both models; each process its own augmentation stream
    gen = torch.Generator().manual_seed(args.seed + 1000 * dist_ctx.rank)
    epoch_times, acc, history = [], 0.0, []
    show = not args.quiet and dist_ctx.main
    for epoch in range(args.epochs):
        model.train()
        if sampler is not None:
            sampler.set_epoch(epoch)
            perm = torch.tensor(list(sampler), device=device)
        else:
            perm = torch.randperm(len(ytr), generator=gen).to(device)
        bar = Progress(steps, f"{impl:>5} {name} epoch {epoch + 1:2d}/{args.epochs}", show)
        t0 = time.perf_counter()
        loss_sum = 0.0
        for i in range(steps):
            idx = perm[i * local_batch:(i + 1) * local_batch]
            xb = augment(xtr[idx].cpu(), gen).to(device)
            if size != xb.shape[-1]:
                xb = F.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False)
            if args.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(xb), ytr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item()
            bar.update(f"loss {loss.item():.3f}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_times.append(time.perf_counter() - t0)
        bar.close()
        # rank 0 evaluates the plain module (eval-mode batch norm needs no collective); the others go on
        acc = evaluate(model, xte, yte, size, 256) if dist_ctx.main else float("nan")
        history.append((epoch + 1, loss_sum / steps, acc))
        if show:
            print(f"  {impl:>5} {name} epoch {epoch + 1:2d}: loss {loss.item():.3f}  test accuracy {acc * 100:5.2f}%  "
                  f"({epoch_times[-1]:.2f} s)", flush=True)
        yield model, acc, epoch_times, history


def plot_curves(path, model_name, histories):
    """Training loss and test accuracy per epoch, one line per implementation."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("--plot needs matplotlib: pip install 'convx[demo]' (or pip install matplotlib)")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for impl, hist in histories.items():
        label = "convx" if impl == "convx" else "torch.nn"
        epochs = [h[0] for h in hist]
        ax_loss.plot(epochs, [h[1] for h in hist], marker="o", ms=3, label=label)
        ax_acc.plot(epochs, [100 * h[2] for h in hist], marker="o", ms=3, label=label)
    ax_loss.set(title="training loss (mean per epoch)", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="test accuracy", xlabel="epoch", ylabel="%")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"python -m convx train: {model_name} on scikit-learn digits")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m convx train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="resnet20")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-compare", action="store_true", help="skip training the torch.nn twin")
    p.add_argument("--weights", help="start from this state_dict (torch.save'd) instead of He initialisation")
    p.add_argument("--save", help="write the trained convx model's state_dict here")
    p.add_argument("--plot", metavar="FILE.png", help="draw loss and accuracy curves of both models into FILE.png")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: batch statistics over all processes (convx.SyncBatchNorm)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    dist_ctx = _Dist()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and dist_ctx.world > 1:
        device = torch.device("cuda", dist_ctx.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if dist_ctx.world > 1:
        dist_ctx.backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(dist_ctx.backend, timeout=datetime.timedelta(minutes=5))
        try:
            rc = _main(args, device, dist_ctx)
            # Both ranks reach the end before either tears its connections down (rank 1 skips the
            # report), and the DDP models (their reducers hold the process group) are freed before
            # the group is destroyed rather than at the interpreter's exit: once in about a dozen
            # runs a rank aborted at exit ("terminate called without an active exception").
            torch.distributed.barrier()
            return rc
        finally:
            gc.collect()
            torch.distributed.destroy_process_group()
    return _main(args, device, dist_ctx)


def _main(args, device, dist_ctx):
    say = print if dist_ctx.main else (lambda *a, **k: None)
    if dist_ctx.world > 1 and args.sync_bn and device.type == "cpu" and not args.no_compare:
        say("  (the torch.nn twin is skipped: torch.nn.SyncBatchNorm runs on GPUs only)")
        args.no_compare = True

    data = load_digits(args.seed)
    torch.manual_seed(args.seed)
    init = MODELS[args.model][0]("convx").state_dict()
    if args.weights:
        init = torch.load(args.weights, map_location="cpu", weights_only=True)
    n_params = sum(v.numel() for k, v in init.items() if "running" not in k and "num_batches" not in k)
    say(f"convx train: {args.model} ({n_params / 1e3:.0f}k parameters) on scikit-learn digits "
        f"({len(data[1])} train / {len(data[3])} test, 8x8 grayscale), {args.epochs} epochs, batch "
        f"{args.batch_size}, AdamW + one-cycle cosine, device {device}, threads {torch.get_num_threads()}")
    if dist_ctx.world > 1:
        say(f"data parallel: {dist_ctx.world} processes ({dist_ctx.backend}), {args.batch_size // dist_ctx.world} "
            f"images per process and step, DistributedDataParallel"
            + (", SyncBatchNorm" if args.sync_bn else ", batch statistics per process"))

    # The two models take turns an epoch at a time (convx first in odd epochs, torch.nn first in even
    # ones), so that a drift of the machine's speed weighs on both alike; each keeps its own batches'
    # generator, so both still see the same batches.
    impls = ["convx"] + ([] if args.no_compare else ["torch"])
    runs, histories, states, totals = {}, {}, {}, dict.fromkeys(impls, 0.0)
    trainers = {impl: train_epochs(args.model, impl, init, data, args, device, dist_ctx) for impl in impls}
    for epoch in range(args.epochs):
        for impl in (impls if epoch % 2 == 0 else impls[::-1]):
            t0 = time.perf_counter()
            states[impl] = next(trainers[impl])
            totals[impl] += time.perf_counter() - t0
    for impl in impls:
        model, acc, times, histories[impl] = states[impl]
        runs[impl] = (acc, times, totals[impl])
        if impl == "convx" and args.save and dist_ctx.main:
            torch.save(model.state_dict(), args.save)
    if not dist_ctx.main:
        return 0

    print("\nreport")
    print(f"  {'model':<24} {'test accuracy':>14} {'s / epoch':>10} {'total s':>8}   (epochs taken in turns)")
    for impl, (acc, times, total) in runs.items():
        label = f"{args.model} ({'convx' if impl == 'convx' else 'torch.nn'})"
        print(f"  {label:<24} {acc * 100:13.2f}% {sum(times) / len(times):10.2f} {total:8.1f}")
    if "torch" in runs:
        c, t = runs["convx"], runs["torch"]
        print(f"  convx vs torch.nn: accuracy {(c[0] - t[0]) * 100:+.2f} points, time per epoch "
              f"{sum(t[1]) / sum(c[1]):.2f}x torch's speed")
    if args.save:
        print(f"  saved the convx model's state_dict to {args.save}")
    if args.plot:
        plot_curves(args.plot, args.model, histories)
        print(f"  wrote loss and accuracy curves to {args.plot}")
    return 0 if runs["convx"][0] >= 0.95 or args.model != "resnet20" or args.epochs < 10 else 1


if __name__ == "__main__":
    sys.exit(main())
