"""python -m convx COMMAND

  train [--model resnet20|lenet5|resnet18] [--epochs N] [--device cpu|cuda] ...
        the main job: train a convx model on scikit-learn's digits, with the
        identical torch.nn model beside it, and report both

  transfer [--weights FILE] [--modes scratch,continue,finetune,features] [--freeze layer1,layer2] ...
        transfer learning: pre-train on digits 0-4, learn 5-9 from a few
        labels per class in each mode, and report the table

  info [--conv N,C,H,W,K,R,S[,stride,pad,dil,groups]] [--dtype float16] [--layout channels_last]
        build configuration, visible devices, and which kernel a conv shape runs
  demo [--device cpu|cuda] [--batch N]
        a quick look: a small CNN built from convx modules next to the same
        torch.nn model: checks they agree, then times both
"""
import argparse
import math
import sys
import time

import torch


def _build_config():
    try:
        from . import _build_config as cfg
        return cfg
    except ImportError:
        return None


def cmd_info(args):
    import convx

    cfg = _build_config()
    has_cuda_kernels = torch._C._dispatch_has_kernel_for_dispatch_key("convx::conv2d", "CUDA")
    print(f"convx {convx.__version__}")
    print(f"  torch (running)      {torch.__version__} (CUDA {torch.version.cuda})")
    if cfg is not None:
        print(f"  torch (built with)   {cfg.torch_version} (CUDA {cfg.torch_cuda})")
        print(f"  CUDA kernels         {'compiled for sm ' + ', '.join(cfg.cuda_archs) if cfg.with_cuda else 'not compiled (CPU-only build)'}")
    print(f"  CUDA kernels loaded  {has_cuda_kernels}")
    if convx.simt.available():
        print("  emulated CUDA        built: torch.ops.convx_simt runs the CUDA kernels on the CPU (convx.simt)")
    else:
        print("  emulated CUDA        not built (CONVX_SIMT=0)")
    if cfg is not None and getattr(cfg, "sanitize", False):
        print("  sanitizers           AddressSanitizer + UBSan build (make sanitize)")
    print(f"  CPU threads          {torch.get_num_threads()}")
    print(f"  CPU GEMM             {torch.ops.convx.cpu_isa()} micro-kernel (CPU feature bits; CONVX_CPU_ISA caps it)")
    if torch.cuda.is_available():
        from ._archs import covers
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            ok = cfg is not None and cfg.with_cuda and covers(cfg.cuda_archs, (p.major, p.minor))
            print(f"  cuda:{i}               {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
                  f"{p.total_memory / 2**30:.0f} GiB: "
                  + ("convx's kernels run here" if ok else
                     f"NO convx kernels for sm_{p.major}{p.minor}: rebuild with TORCH_CUDA_ARCH_LIST={p.major}.{p.minor}"))
    else:
        print("  CUDA devices         none visible")
    if args.conv:
        v = [int(t) for t in args.conv.split(",")]
        if len(v) < 7:
            sys.exit("--conv needs N,C,H,W,K,R,S[,stride,pad,dil,groups]")
        v += [1, 0, 1, 1][len(v) - 7:]
        n, c, h, w, k, r, s, stride, pad, dil, groups = v[:11]
        ho = (h + 2 * pad - dil * (r - 1) - 1) // stride + 1
        wo = (w + 2 * pad - dil * (s - 1) - 1) // stride + 1
        print(f"conv {n}x{c}x{h}x{w} -> {n}x{k}x{ho}x{wo}, {r}x{s}/{stride} pad {pad} dil {dil} groups {groups}: "
              f"{2 * n * k * (c // groups) * r * s * ho * wo / 1e9:.3f} GFLOP")
        direct = r == s == 1 and stride == 1 and pad == 0
        print(f"  cpu : im2col + packed {torch.ops.convx.cpu_isa()} GEMM" + (" (1x1: no im2col)" if direct else "")
              + (", parallel over (image, group)" if n * groups >= torch.get_num_threads() else ", parallel GEMM"))
        from .algorithms import conv2d_cuda
        dtype = getattr(torch, args.dtype)
        cap = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0)
        sms = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 132
        where = "this GPU" if torch.cuda.is_available() else "an H100 (sm_90, 132 SMs)"
        tf32 = f", TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'}" if dtype == torch.float32 else ""
        print(f"  cuda ({args.dtype}, {args.layout}{tf32}, on {where}):")
        for what, how in conv2d_cuda((n, c, h, w), (k, c // groups, r, s), dtype, stride, pad, dil, groups,
                                     args.layout == "channels_last", capability=cap, num_sms=sms).items():
            print(f"    {what:12s} {how}")


class SmallNet(torch.nn.Module):
    """A small residual CNN for 32x32 images, parametrized by the conv class."""

    def __init__(self, conv, num_classes=10):
        super().__init__()
        self.stem = conv(3, 32, 3, padding=1, bias=False)
        self.c1 = conv(32, 32, 3, padding=1)
        self.c2 = conv(32, 64, 3, stride=2, padding=1)
        self.dw = conv(64, 64, 3, padding=1, groups=64)
        self.pw = conv(64, 128, 1)
        self.c3 = conv(128, 128, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(128, num_classes)

    def forward(self, x):               # N x 3 x 32 x 32
        x = torch.relu(self.stem(x))     # N x 32 x 32 x 32
        x = torch.relu(x + self.c1(x))   # N x 32 x 32 x 32
        x = torch.relu(self.c2(x))       # N x 64 x 16 x 16
        x = torch.relu(self.pw(torch.relu(self.dw(x))))  # N x 128 x 16 x 16
        x = torch.relu(self.c3(x))       # N x 128 x 8 x 8
        return self.fc(x.mean((2, 3)))


def _time(fn, device, reps):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def cmd_demo(args):
    import convx

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    ref = SmallNet(torch.nn.Conv2d).to(device)
    net = SmallNet(convx.Conv2d).to(device)
    net.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    target = torch.randint(0, 10, (args.batch,), device=device)
    print(f"convx demo on {device}: SmallNet (7 convs: 3x3, strided, grouped depthwise, 1x1), batch "
          f"{args.batch}, 32x32 inputs; the torch.nn twin carries the same weights")

    def step(model):
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        return loss

    def compare():
        lc, lr = step(net), step(ref)
        gmax = max((a.grad - b.grad).abs().max().item() / (b.grad.abs().max().item() + 1e-12)
                   for a, b in zip(net.parameters(), ref.parameters()))
        return lc.item(), lr.item(), gmax

    # The parity check on the exact path: the CPU's Winograd (the default for 3x3 stride-1 layers)
    # rounds within its documented bound, and that moves a few pre-activations near zero across
    # the ReLU, whose masks then pass or stop those positions' gradients whole.
    with convx.backends.cpu.flags(winograd=False):
        lc, lr, gmax = compare()
    print(f"  loss: convx {lc:.6f}  torch {lr:.6f}  |diff| {abs(lc - lr):.2e}; "
          f"largest relative gradient difference {gmax:.2e}")
    ok = abs(lc - lr) < 1e-4 and gmax < 1e-3
    print("  parity:", "OK" if ok else "MISMATCH")
    if device == "cpu" and convx.backends.cpu.winograd:
        lw, _, gw = compare()
        print(f"  with Winograd (the default): loss |diff| {abs(lw - lr):.2e}, largest relative gradient difference "
              f"{gw:.2e} (its rounding moves pre-activations near zero across the ReLU, which then passes or stops "
              f"their gradients whole)")

    for name, fn_c, fn_t in [
        ("forward (eval, no grad)", lambda: _nograd(net, x), lambda: _nograd(ref, x)),
        ("forward + backward", lambda: step(net), lambda: step(ref)),
    ]:
        tc, tt = _time(fn_c, device, args.reps), _time(fn_t, device, args.reps)
        print(f"  {name:<24} convx {tc * 1e3:8.2f} ms   torch {tt * 1e3:8.2f} ms   speed vs torch {tt / tc:5.2f}x")
    print("  (best of", args.reps, "runs; torch uses", "cuDNN" if device == "cuda" else "oneDNN", "in this process)")
    return 0 if ok else 1


def _nograd(model, x):
    with torch.no_grad():
        return model(x)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m convx", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("info", help="build configuration and devices")
    pi.add_argument("--conv", help="N,C,H,W,K,R,S[,stride,pad,dil,groups]: say which kernel runs")
    pi.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32", "float64"],
                    help="for --conv (default float16)")
    pi.add_argument("--layout", default="channels_last", choices=["channels_last", "contiguous"],
                    help="for --conv (default channels_last)")
    pd = sub.add_parser("demo", help="convx vs torch.nn on a small CNN: parity and timing")
    pd.add_argument("--device", choices=["cpu", "cuda"])
    pd.add_argument("--batch", type=int, default=32)
    pd.add_argument("--reps", type=int, default=5)
    sub.add_parser("train", help="train a convx model on scikit-learn's digits (see python -m convx train -h)",
                   add_help=False)
    sub.add_parser("transfer", help="transfer learning on scikit-learn's digits (see python -m convx transfer -h)",
                   add_help=False)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["train"]:
        from .train import main as train_main
        return train_main(argv[1:])
    if argv[:1] == ["transfer"]:
        from .transfer import main as transfer_main
        return transfer_main(argv[1:])
    args = p.parse_args(argv)
    return {"info": cmd_info, "demo": cmd_demo}[args.cmd](args) or 0


if __name__ == "__main__":
    sys.exit(main())
