"""Benchmark configuration. Each benchmark times one callable, with
``impl`` in (convx, torch) so the two sit side by side in one group; the
torch test of a group then times both again in alternating rounds
(extra_info["interleaved"]: medians), and report.py's ratios come from those.

Environment:
  CONVX_BENCH_DEVICES  comma list (default: cpu, plus cuda when present)
  CONVX_BENCH_SET      "quick" (default: ResNet-50 body + a few others) or "all"
  CONVX_BENCH_CPU_N    CPU batch sizes (default "8")
  CONVX_BENCH_CUDA_N   CUDA batch sizes (default "32,256")
  CONVX_BENCH_CUDA_DTYPES  CUDA dtypes of the conv benchmarks (default "fp32,tf32,fp16,bf16")
  CONVX_BENCH_MALLOC   "steady" (default) or "default": glibc's allocator policy (below)
"""
import ctypes
import math
import os
import statistics
import time

import pytest
import torch

import convx  # noqa: F401


def _steady_allocator():
    """glibc's malloc serves blocks above its mmap threshold with fresh pages from the kernel,
    faulted in on first touch, and moves that threshold as blocks are freed (up to 32 MB), so
    whether a layer's 25 MB output (or torch's reorder buffers) costs page faults each call
    depended on what the process had allocated before: the same entry read 0.67 and 1.22
    between runs (the ResNet-50 stem's NCHW forward: torch 5.8 ms one way, 15-18 the other).
    Every block from the heap, which is never trimmed, times the kernels and not the page
    faults, the same in every run (as a warmed-up jemalloc or tcmalloc would);
    CONVX_BENCH_MALLOC=default keeps glibc's own policy."""
    if os.environ.get("CONVX_BENCH_MALLOC", "steady") != "steady":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


_steady_allocator()


def _env_list(name, default):
    return [v.strip() for v in os.environ.get(name, default).split(",") if v.strip()]


def bench_devices():
    default = "cpu,cuda" if torch.cuda.is_available() else "cpu"
    return [d for d in _env_list("CONVX_BENCH_DEVICES", default) if d != "cuda" or torch.cuda.is_available()]


def bench_set():
    return os.environ.get("CONVX_BENCH_SET", "quick")


def batches(device):
    if device == "cuda":
        return [int(v) for v in _env_list("CONVX_BENCH_CUDA_N", "32,256")]
    return [int(v) for v in _env_list("CONVX_BENCH_CPU_N", "8")]


SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64", "tf32": "tf32"}


def device_cases(dtypes):
    """(device, batch, dtype) parameters for every benchmarked device; dtypes: {device: [dtype, ...]}."""
    keep = set(_env_list("CONVX_BENCH_CUDA_DTYPES", "fp32,tf32,fp16,bf16"))
    return [pytest.param(d, n, dt, id=f"{d}-N{n}-{SHORT[dt]}") for d in bench_devices() for n in batches(d)
            for dt in dtypes[d] if d != "cuda" or SHORT[dt] in keep]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


# The convx callable of the group being timed, kept until its torch twin (the
# next test: ``impl`` is the fastest-varying parameter) times both in turns.
_pending = {}


def _interleaved(first, second, rounds):
    """Times two callables in alternating rounds (which goes first alternates too), so that a
    drift of the machine's speed (clock, other load, allocator state) weighs on both alike;
    returns their median round times."""
    ta, tb = [], []
    for r in range(rounds):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            t0 = time.perf_counter()
            (first, second)[which]()
            (ta, tb)[which].append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def run_timed(benchmark, fn, device, work, unit):
    """Time fn (synchronizing on CUDA) and record work/time in extra_info. The torch test of a
    group also times itself against the group's convx callable in alternating rounds and
    records both medians in extra_info["interleaved"], which report.py's ratios use."""
    if device == "cuda":
        torch.backends.cudnn.benchmark = True

    def call():
        fn()
        sync(device)

    call()  # warm-up (and cuDNN's algorithm search)
    # Enough rounds for a stable minimum, bounded in time.
    t0 = time.perf_counter()
    call()
    once = max(time.perf_counter() - t0, 1e-6)
    rounds = int(min(50, max(3, 0.5 / once)))
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)
    best = benchmark.stats.stats.min
    scale = 1e12 if unit == "tflops" else 1e9
    benchmark.extra_info[unit] = work / best / scale
    benchmark.extra_info["ms"] = best * 1e3
    impl, group = benchmark.extra_info.get("impl"), benchmark.group
    if impl == "convx":
        _pending.clear()
        _pending[group] = call
    elif impl == "torch" and group in _pending:
        mc, mt = _interleaved(_pending.pop(group), call, rounds)
        benchmark.extra_info["interleaved"] = {"rounds": rounds, "convx_ms": mc * 1e3, "torch_ms": mt * 1e3,
                                               "convx_" + unit: work / mc / scale, "torch_" + unit: work / mt / scale}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def geomean(values):
    values = [v for v in values if v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")
