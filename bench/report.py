"""Turn a pytest-benchmark JSON file into the result format of SHAPES.md:

  {"device", "torch", "cuda", "date", "command", "ceilings": {...}, "records": [...]}

one record per (op, shape, dtype, layout) with convx_ms, torch_ms, their ratio
(torch_ms / convx_ms: above 1 means convx is faster; medians of rounds in which
the two alternate, where the benchmark recorded them) and TFLOP/s or GB/s, plus
a Markdown table beside it. The device's ceilings (copy bandwidth, dense matrix
rate) are measured here, on the device the benchmarks ran on.

    python bench/report.py RAW.json --outdir bench/results --what conv2d [--command "..."]

A GPU run's raw files can be reported on another machine (the lent GPU's time
is short): --device-name, --torch and --cuda then name what the run used (its
info.txt says), and the ceilings are "not measured" unless --ceilings gives a
JSON file that the GPU machine wrote (python bench/report.py --ceilings-only).
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import time
from collections import defaultdict

import torch


def measure_ceilings(device):
    """Copy bandwidth (bytes read + written) and the dense matrix-product rate; on CPU also
    convx's GEMM rate and the FMA peak (one core's FMA loop x threads)."""
    def best(fn, reps=10):
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        t = math.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            t = min(t, time.perf_counter() - t0)
        return t

    n = (1 << 28) if device == "cuda" else (1 << 25)  # floats
    a = torch.empty(n, device=device)
    b = torch.empty_like(a)
    copy_gbps = 2 * a.numel() * 4 / best(lambda: b.copy_(a)) / 1e9
    del a, b
    out = {"copy_gbps": round(copy_gbps, 1)}
    if device == "cuda":
        m = 8192
        x = torch.randn(m, m, device=device, dtype=torch.bfloat16)
        out["matmul_tflops_bf16"] = round(2 * m ** 3 / best(lambda: x @ x) / 1e12, 1)
        x = x.float()
        torch.backends.cuda.matmul.allow_tf32 = False
        out["matmul_tflops_fp32"] = round(2 * m ** 3 / best(lambda: x @ x, 3) / 1e12, 1)
        out["matmul_tflops"] = out["matmul_tflops_bf16"]
    else:
        m = 2048
        x = torch.randn(m, m)
        out["matmul_tflops"] = round(2 * m ** 3 / best(lambda: x @ x, 5) / 1e12, 3)
        try:
            import sys
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo's convx
            import convx  # noqa: F401  (loads torch.ops.convx)
        except ImportError:
            pass
        if hasattr(torch.ops.convx, "cpu_gemm"):
            # convx's own GEMM on the same product, and the FMA peak it is measured against: a loop
            # of independent FMAs (cpu_fma_peak) on every thread at once, their flops over the wall
            # time (both cores busy run a little under twice one core's rate).
            nt = torch.get_num_threads()
            out["convx_gemm_tflops"] = round(2 * m ** 3 / best(lambda: torch.ops.convx.cpu_gemm(x, x), 5) / 1e12, 3)
            out["fma_peak_tflops"] = round(max(torch.ops.convx.cpu_fma_peak(20_000_000, nt) for _ in range(3)) / 1e3, 3)
            out["fma_peak_one_core_tflops"] = round(max(torch.ops.convx.cpu_fma_peak(20_000_000) for _ in range(3)) / 1e3, 3)
            out["cpu_isa"] = torch.ops.convx.cpu_isa()
    return out


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def slug(s):
    return re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower()


def build(raw, command, device=None, torch_version=None, cuda=None, ceilings=None):
    groups = defaultdict(dict)
    for b in raw["benchmarks"]:
        info = b.get("extra_info", {})
        if "impl" not in info:
            continue
        groups[b["group"]][info["impl"]] = (b["stats"]["min"], info)
    records = []
    for g, impls in sorted(groups.items()):
        if "convx" not in impls or "torch" not in impls:
            continue
        (tc, info), (tt, tinfo) = impls["convx"], impls["torch"]
        pair = tinfo.get("interleaved")
        if pair:  # medians of alternating rounds (bench/conftest.py); else each one's minimum
            tc, tt = pair["convx_ms"] / 1e3, pair["torch_ms"] / 1e3
        rec = {"op": info["op"], "layer": info.get("layer"), "shape": info["shape"], "device": info["device"],
               "dtype": info["dtype"], "layout": info["layout"], "convx_ms": round(tc * 1e3, 4),
               "torch_ms": round(tt * 1e3, 4), "ratio": round(tt / tc, 3),
               "timing": f"interleaved median of {pair['rounds']}" if pair else "minimum"}
        for unit in ("tflops", "gflops", "gbps", "images_per_s"):
            if unit in info:
                rec[unit] = round(pair["convx_" + unit] if pair and "convx_" + unit in pair else info[unit], 3)
        records.append(rec)
    devs = sorted({r["device"] for r in records})
    main_dev = "cuda" if "cuda" in devs else "cpu"
    here = device is None
    return {
        "device": device_name(main_dev) if here else device,
        "torch": torch.__version__ if here else torch_version,
        "cuda": torch.version.cuda if here else cuda,
        "date": raw.get("datetime", "")[:10] or datetime.date.today().isoformat(),
        "command": command,
        "ceilings": ({d: measure_ceilings(d) for d in devs} if here else
                     ceilings or {d: "not measured (report made off the device)" for d in devs}),
        "records": records,
    }


def markdown(res):
    lines = [f"# {res['device']} — torch {res['torch']} (CUDA {res['cuda']}), {res['date']}", "",
             f"Command: `{res['command']}`", "", f"Ceilings: `{json.dumps(res['ceilings'])}`", "",
             "ratio = torch_ms / convx_ms (above 1: convx faster); times: medians of rounds in which convx and "
             "torch alternate (bench/conftest.py)", "",
             "| op | layer | shape | device | dtype | layout | convx ms | torch ms | ratio | rate |",
             "|---|---|---|---|---|---|---:|---:|---:|---:|"]
    by = defaultdict(list)
    for r in res["records"]:
        rate = next((f"{r[u]:.2f} {u}" for u in ("tflops", "gflops", "gbps", "images_per_s") if u in r), "")
        lines.append(f"| {r['op']} | {r.get('layer') or ''} | {r['shape']} | {r['device']} | {r['dtype']} | "
                     f"{r['layout']} | {r['convx_ms']:.3f} | {r['torch_ms']:.3f} | {r['ratio']:.2f} | {rate} |")
        by[(r["op"], r["device"], r["dtype"], r["layout"])].append(r["ratio"])
    lines += ["", "Geometric mean of ratios:", "", "| op | device | dtype | layout | n | geomean ratio | min |",
              "|---|---|---|---|---:|---:|---:|"]
    for k, v in sorted(by.items()):
        gm = math.exp(sum(map(math.log, v)) / len(v))
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {len(v)} | {gm:.3f} | {min(v):.3f} |")
    return "\n".join(lines) + "\n"


def plot(res, path):
    """One bar per record: torch's time over convx's (log scale), a line at
    1.0; green where convx is faster. Returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = sorted(res["records"], key=lambda r: (r["op"], r["layout"], r.get("layer") or r["shape"], r["dtype"]))
    labels = [f"{r['op']} {r.get('layer') or r['shape']} {r['dtype']} {r['layout']}" for r in recs]
    ratios = [r["ratio"] for r in recs]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.19 * len(recs)))
    ys = range(len(recs))
    ax.barh(ys, [math.log2(v) for v in ratios], color=["#2e7d32" if v >= 1 else "#c62828" for v in ratios])
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(list(ys), labels, fontsize=7)
    ax.set_ylim(len(recs) - 0.5, -0.5)
    lo, hi = min(math.log2(v) for v in ratios), max(math.log2(v) for v in ratios)
    ax.set_xlim(min(lo, 0) - 0.45, max(hi, 0) + 0.45)
    ticks = [t for t in (-4, -3, -2, -1, 0, 1, 2, 3, 4) if min(lo, 0) - 0.45 <= t <= max(hi, 0) + 0.45]
    ax.set_xticks(ticks, [f"{2.0 ** t:g}x" for t in ticks])
    ax.set_xlabel("torch time / convx time (log scale; right of 1x: convx faster)")
    for y, v in zip(ys, ratios):
        ax.text(math.log2(v), y, f" {v:.2f}", va="center", ha="left" if v >= 1 else "right", fontsize=6)
    ax.set_title(f"convx vs torch: {res['device']}, torch {res['torch']}, {res['date']}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main():
    p = argparse.ArgumentParser()
    p.add_argument("raw", help="pytest-benchmark JSON, or with --plot-only a results JSON")
    p.add_argument("--plot-only", action="store_true", help="only draw the PNG chart of a results JSON beside it")
    p.add_argument("--outdir", default="bench/results")
    p.add_argument("--what", default="conv2d")
    p.add_argument("--command", default="make bench")
    p.add_argument("--device-name", help="off the device: the device the raw file was measured on")
    p.add_argument("--torch", help="off the device: the torch version it ran")
    p.add_argument("--cuda", help="off the device: torch's CUDA version there")
    p.add_argument("--ceilings", help="off the device: a JSON file of ceilings written there by --ceilings-only")
    p.add_argument("--ceilings-only", action="store_true", help="measure this machine's ceilings into RAW (a path)")
    a = p.parse_args()
    if a.ceilings_only:
        devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        with open(a.raw, "w") as f:
            json.dump({d: measure_ceilings(d) for d in devs}, f, indent=1)
        return
    with open(a.raw) as f:
        raw = json.load(f)
    if a.plot_only:
        print("wrote", plot(raw, os.path.splitext(a.raw)[0] + ".png"))
        return
    ceilings = None
    if a.ceilings:
        with open(a.ceilings) as f:
            ceilings = json.load(f)
    res = build(raw, a.command, a.device_name, a.torch, a.cuda, ceilings)
    os.makedirs(a.outdir, exist_ok=True)
    stem = os.path.join(a.outdir, f"{res['date']}-{slug(res['device'])}-{a.what}")
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(res))
    print(markdown(res))
    print("wrote", stem + ".json", stem + ".md")
    try:
        print("wrote", plot(res, stem + ".png"))
    except ImportError:
        print("no chart: matplotlib is not installed (pip install 'convx[bench]')")


if __name__ == "__main__":
    main()
