"""python -m convx transfer: transfer learning in its three usual forms, on
data that ships with scikit-learn (nothing is downloaded).

The default run pre-trains ResNet-20 on the digits 0-4, then learns the
digits 5-9 from a few labelled images per class (--shots, 10 by default) in
four ways, and prints one table:

  scratch    a fresh network, every layer trained (the baseline)
  continue   start from the checkpoint, every layer trained (scenario 1:
             continue training from saved weights)
  finetune   start from the checkpoint, a new classifier, the stages named by
             --freeze kept fixed, the rest trained (scenario 2)
  features   the checkpoint's network without its classifier turns images
             into features; a linear classifier is fitted on them (scenario 3)

    python -m convx transfer                                   # all four modes
    python -m convx transfer --weights digits.pt --modes finetune --freeze conv1,bn1,layer1
    python -m convx transfer --model resnet18 --weights resnet18_torchvision.pt

--weights takes a state_dict saved with torch.save: from ``python -m convx
train --save`` or a torchvision model's (a 3-channel first convolution is
summed over its input channels to read grayscale; a classifier of another
size is replaced). The library functions below (freeze, replace_classifier,
feature_extractor, fit_linear) work on any convx or torch.nn model.
"""
import argparse
import copy
import math
import sys
import time
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import models
from .train import Progress, augment, load_digits

MODES = ("scratch", "continue", "finetune", "features")
MODELS = {  # name: (constructor(num_classes), input size, classifier attribute)
    "resnet20": (lambda k: models.resnet20(num_classes=k, in_channels=1), 8, "fc"),
    "resnet18": (lambda k: models.resnet18(num_classes=k, in_channels=1), 32, "fc"),
}


# ---------------------------------------------------------------- library


def freeze(model: nn.Module, names: Iterable[str]) -> List[nn.Module]:
    """Stop training the named submodules (``"layer1"``, ``"conv1"``, ...):
    their parameters stop requiring gradients, and :func:`train_mode` keeps
    them in eval mode so that their batch norms neither use batch statistics
    nor update their running statistics. Returns the frozen modules."""
    frozen = []
    for name in names:
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"freeze: {type(model).__name__} has no submodule {name!r} (its top-level modules: "
                             f"{', '.join(n for n, _ in model.named_children())})") from None
        m.requires_grad_(False)
        frozen.append(m)
    return frozen


def train_mode(model: nn.Module, frozen: Iterable[nn.Module] = ()) -> nn.Module:
    """``model.train()``, with the frozen submodules left in eval mode."""
    model.train()
    for m in frozen:
        m.eval()
    return model


def replace_classifier(model: nn.Module, num_classes: int, attr: str = "fc") -> nn.Linear:
    """A freshly initialised linear classifier for ``num_classes`` in place of ``model.<attr>``."""
    old = getattr(model, attr)
    new = nn.Linear(old.in_features, num_classes).to(device=old.weight.device, dtype=old.weight.dtype)
    setattr(model, attr, new)
    return new


def feature_extractor(model: nn.Module, attr: str = "fc") -> nn.Module:
    """The network without its classifier (a copy; ``model`` is unchanged), in eval mode, frozen."""
    ext = copy.deepcopy(model)
    setattr(ext, attr, nn.Identity())
    return ext.eval().requires_grad_(False)


def fit_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-3,
               steps: int = 200) -> nn.Module:
    """Multinomial logistic regression on (standardised) features, full-batch
    L-BFGS: deterministic, no learning rate to tune."""
    mean, std = features.mean(0), features.std(0, unbiased=False).clamp_min(1e-6)
    lin = nn.Linear(features.shape[1], num_classes).to(features)
    nn.init.zeros_(lin.weight), nn.init.zeros_(lin.bias)
    z = (features - mean) / std
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(z), labels) + weight_decay * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return nn.Sequential(_Standardise(mean, std), lin)


class _Standardise(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


def adapt_state_dict(state: Dict[str, torch.Tensor], model: nn.Module, classifier: str = "fc") -> List[str]:
    """Make a checkpoint fit ``model`` in place: an RGB first convolution is
    summed over its input channels for grayscale input, a classifier of
    another size is dropped (the model keeps its fresh one). Returns what it
    changed; any other mismatch is left for load_state_dict to report."""
    notes = []
    own = model.state_dict()
    for k in list(state):
        if k not in own or state[k].shape == own[k].shape:
            continue
        old = list(state[k].shape)
        if k.startswith(classifier + "."):
            del state[k]
            notes.append(f"{k}: a new {list(own[k].shape)} (the checkpoint's is {old})")
        elif state[k].dim() == 4 and own[k].dim() == 4 and own[k].shape[1] == 1 and \
                state[k].shape[0] == own[k].shape[0] and state[k].shape[2:] == own[k].shape[2:]:
            state[k] = state[k].sum(1, keepdim=True)
            notes.append(f"{k}: summed over its {old[1]} input channels for grayscale input")
    return notes


# ---------------------------------------------------------------- the job


def _split_digits(seed: int, shots: int, draw: int = 0):
    """Source: digits 0-4 (train / test); target: digits 5-9 relabelled 0-4,
    ``shots`` training images per class (a different draw for each ``draw``),
    the target test set in full."""
    xtr, ytr, xte, yte = load_digits(seed)
    src = (xtr[ytr < 5], ytr[ytr < 5], xte[yte < 5], yte[yte < 5])
    g = torch.Generator().manual_seed(seed * 1000 + draw)
    idx = []
    for c in range(5, 10):
        pool = (ytr == c).nonzero().flatten()
        idx.append(pool[torch.randperm(len(pool), generator=g)[:shots]])
    idx = torch.cat(idx)
    tgt = (xtr[idx], ytr[idx] - 5, xte[yte >= 5], yte[yte >= 5] - 5)
    return src, tgt


def _resize(x, size):
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _accuracy(model, x, y, size, batch=256):
    model.eval()
    with torch.no_grad():
        correct = sum((model(_resize(x[i:i + batch], size)).argmax(1) == y[i:i + batch]).sum().item()
                      for i in range(0, len(y), batch))
    return correct / max(len(y), 1)


def fit(model, x, y, steps, batch, lr, size, seed, desc, quiet, frozen=()):
    """AdamW + one-cycle cosine over the trainable parameters, augmented batches drawn with replacement."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    bar = Progress(steps, desc, not quiet)
    for _ in range(steps):
        train_mode(model, frozen)
        idx = torch.randint(0, len(y), (min(batch, len(y)),), generator=gen)
        xb = _resize(augment(x[idx], gen), size)
        loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(f"loss {loss.item():.3f}")
    bar.close()
    return model


def _trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run(args) -> List[dict]:
    """Pre-train (or load) once; then, for each of ``args.repeats`` draws of
    the labelled target images, every mode. One row per mode and draw."""
    ctor, size, head = MODELS[args.model]
    src, (xt, yt, xt_test, yt_test) = _split_digits(args.seed, args.shots)

    if args.weights:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        print(f"checkpoint: {args.weights}")
    else:
        torch.manual_seed(args.seed)
        pre = ctor(5)
        t0 = time.perf_counter()
        steps = args.pretrain_epochs * math.ceil(len(src[1]) / args.batch_size)
        fit(pre, src[0], src[1], steps, args.batch_size, args.lr, size, args.seed,
            f"pre-train {args.model} on digits 0-4", args.quiet)
        print(f"pre-trained {args.model} on digits 0-4 ({len(src[1])} images, {args.pretrain_epochs} epochs, "
              f"{time.perf_counter() - t0:.1f} s): test accuracy {_accuracy(pre, src[2], src[3], size) * 100:.2f}%")
        state = pre.state_dict()
        if args.save_pretrained:
            torch.save(state, args.save_pretrained)
            print(f"  saved to {args.save_pretrained}")
    print(f"target: digits 5-9, {args.shots} labelled images per class ({len(yt)} in all), tested on "
          f"{len(yt_test)}; {args.repeats} draw(s) of the labelled images\n")
    noted = set()

    def from_checkpoint():
        torch.manual_seed(args.seed)
        m = ctor(5)
        s = dict(state)
        for note in adapt_state_dict(s, m, head):
            if note not in noted:
                noted.add(note)
                print(f"  checkpoint adapted: {note}")
        missing, unexpected = m.load_state_dict(s, strict=False)
        if unexpected or any(not k.startswith(head + ".") or k in s for k in missing):
            m.load_state_dict(s, strict=True)  # raises with torch's full report
        return m

    rows = []
    for draw in range(args.repeats):
        _, (xt, yt, xt_test, yt_test) = _split_digits(args.seed, args.shots, draw)
        rows += _transfer_once(args, ctor, size, head, from_checkpoint, xt, yt, xt_test, yt_test, draw)
    return rows


def _transfer_once(args, ctor, size, head, from_checkpoint, xt, yt, xt_test, yt_test, draw):
    rows = []
    for mode in args.modes:
        t0 = time.perf_counter()
        frozen = []
        if mode == "scratch":
            torch.manual_seed(args.seed)
            model, what = ctor(5), "every layer, from random weights"
        elif mode == "continue":
            model, what = from_checkpoint(), "every layer, from the checkpoint"
        elif mode == "finetune":
            model = from_checkpoint()
            torch.manual_seed(args.seed)
            replace_classifier(model, 5, head)
            frozen = freeze(model, args.freeze)
            what = f"new {head}; frozen: {','.join(args.freeze) or 'nothing'}"
        else:
            ext = feature_extractor(from_checkpoint(), head)
            with torch.no_grad():
                # the few labelled images and augmented copies of them (the same augmentation the others train on)
                gen = torch.Generator().manual_seed(args.seed + draw)
                xs = torch.cat([xt] + [augment(xt, gen) for _ in range(args.feature_copies)])
                ys = yt.repeat(args.feature_copies + 1)
                feats = ext(_resize(xs, size))
            clf = fit_linear(feats, ys, 5)
            model = nn.Sequential(ext, clf)
            what = "linear classifier on frozen features"
        if mode != "features":
            lr = args.lr if mode == "scratch" else args.finetune_lr
            fit(model, xt, yt, args.steps, args.batch_size, lr, size, args.seed + draw,
                f"{mode:>8} (draw {draw + 1}/{args.repeats})", args.quiet, frozen)
        trainable = _trainable(model) if mode != "features" else sum(p.numel() for p in clf.parameters())
        acc = _accuracy(model, xt_test, yt_test, size)
        rows.append(dict(mode=mode, what=what, trainable=trainable, accuracy=acc, draw=draw,
                         seconds=time.perf_counter() - t0))
        if not args.quiet:
            print(f"  draw {draw + 1}, {mode}: {acc * 100:.2f}%", flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m convx transfer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="resnet20")
    p.add_argument("--weights", help="start from this state_dict instead of pre-training on digits 0-4")
    p.add_argument("--save-pretrained", metavar="FILE", help="keep the pre-trained network's state_dict")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {','.join(MODES)}")
    p.add_argument("--freeze", default="conv1,bn1,layer1,layer2",
                   help="finetune: comma-separated submodules kept fixed (default: conv1,bn1,layer1,layer2)")
    p.add_argument("--shots", type=int, default=10, help="labelled target images per class")
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--steps", type=int, default=150, help="training steps on the target task")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--finetune-lr", type=float, default=2e-3)
    p.add_argument("--feature-copies", type=int, default=9, help="features: augmented copies of each image")
    p.add_argument("--repeats", type=int, default=3, help="draws of the labelled target images, each mode on each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes:
        p.error(f"--modes: unknown {bad}; choose from {','.join(MODES)}")
    args.freeze = [n for n in args.freeze.split(",") if n]
    if args.shots < 1 or args.repeats < 1:
        p.error("--shots and --repeats must be at least 1")
    print(f"convx transfer: {args.model}, threads {torch.get_num_threads()}")
    rows = run(args)
    print(f"\nreport (digits 5-9, {args.shots} labelled images per class; accuracy: mean over {args.repeats} "
          f"draw(s) [min, max]; s: mean per draw)")
    print(f"  {'mode':<9} {'trainable':>10} {'accuracy':>8} {'[min, max]':>16} {'s':>6}  what is trained")
    for mode in args.modes:
        rs = [r for r in rows if r["mode"] == mode]
        acc = [r["accuracy"] * 100 for r in rs]
        print(f"  {mode:<9} {rs[0]['trainable']:>10,} {sum(acc) / len(acc):7.2f}% [{min(acc):6.2f}, {max(acc):6.2f}] "
              f"{sum(r['seconds'] for r in rs) / len(rs):6.1f}  {rs[0]['what']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
