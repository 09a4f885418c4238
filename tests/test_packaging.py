"""convx outside this repository: the torch-version guard, the CUDA
architecture choice, the package metadata, torch.export of a converted model,
and the pictures (benchmark chart, training curves). Installing the built
wheel into a fresh environment is scripts/check_wheel.sh (run by .ci/run)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import convx
from convx import _archs
from convx._version_check import TorchVersionMismatch, check_torch_version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocesses run where they import the same convx as this process (the
# in-place build, or make sanitize's copy).
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(convx.__file__)))


# ---------------------------------------------------------------- torch version guard


def test_build_records_the_torch_it_was_built_against():
    from convx import _build_config
    assert _build_config.torch_version == torch.__version__


def test_another_torch_is_refused_with_both_versions_and_the_fix():
    with pytest.raises(TorchVersionMismatch) as info:
        check_torch_version(built="2.14.1+cu130", running="2.15.0+cpu")
    msg = str(info.value)
    assert "built against torch 2.14.1+cu130" in msg and "torch 2.15.0+cpu is installed" in msg
    assert "--no-build-isolation" in msg and "torch==2.14.1" in msg
    assert isinstance(info.value, ImportError)
    check_torch_version(built="2.14.1+cu130", running="2.14.1+cu130")  # same torch: fine


def test_import_fails_before_loading_the_extension_under_another_torch(tmp_path):
    """A copy of the package whose build record names another torch: import
    stops at the guard with its message (not at an undefined symbol)."""
    pkg = tmp_path / "convx"
    subprocess.run(["cp", "-r", os.path.dirname(convx.__file__), str(pkg)], check=True)
    cfg = (pkg / "_build_config.py").read_text()
    (pkg / "_build_config.py").write_text(cfg.replace(repr(torch.__version__), repr("1.13.0")))
    r = subprocess.run([sys.executable, "-c", "import convx"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0
    assert "TorchVersionMismatch" in r.stderr and "built against torch 1.13.0" in r.stderr, r.stderr[-1500:]


# ---------------------------------------------------------------- CUDA architectures


def test_arch_choice():
    assert _archs.choose("8.0;9.0", [(8, 6)]) == ["8.0", "9.0"]          # the user's list wins
    assert _archs.choose("", [(8, 6), (8, 6), (9, 0)]) == ["8.6", "9.0"]  # else the visible GPUs
    assert _archs.choose(None, []) == _archs.DEFAULT_ARCHS                 # else the default list
    assert _archs.parse("8.6+PTX, 9.0") == ["8.6+PTX", "9.0"]


@pytest.mark.parametrize("archs,cap,ok", [
    (["9.0"], (9, 0), True), (["9.0"], (8, 6), False), (["8.0"], (8, 6), True), (["8.6"], (8, 0), False),
    (["9.0"], (10, 0), False), (["12.0+PTX"], (12, 1), True), (["8.6+PTX"], (9, 0), True),
    (_archs.DEFAULT_ARCHS, (7, 5), True), (_archs.DEFAULT_ARCHS, (8, 9), True), (_archs.DEFAULT_ARCHS, (10, 3), True),
    (_archs.DEFAULT_ARCHS, (7, 0), False),
    # architecture-specific and family targets (an H200 machine's image sets TORCH_CUDA_ARCH_LIST=9.0a)
    (["9.0a"], (9, 0), True), (["9.0a"], (9, 1), False), (["9.0a+PTX"], (10, 0), False),
    (["10.0f"], (10, 3), True), (["10.0f"], (12, 0), False),
])
def test_arch_coverage(archs, cap, ok):
    assert _archs.covers(archs, cap) == ok


def test_default_archs_are_ones_nvcc_knows():
    nvcc = subprocess.run(["nvcc", "--list-gpu-arch"], capture_output=True, text=True) if _has("nvcc") else None
    if nvcc is None or nvcc.returncode != 0:
        pytest.skip("no nvcc here")
    known = set(nvcc.stdout.split())
    for a in _archs.DEFAULT_ARCHS:
        assert "compute_" + a.replace("+PTX", "").replace(".", "") in known, a


def _has(tool):
    from shutil import which
    return which(tool) is not None


# ---------------------------------------------------------------- metadata and help


def test_help_texts_name_train_as_the_main_job():
    out = subprocess.run([sys.executable, "-m", "convx", "--help"], capture_output=True, text=True,
                         cwd=PKG_PARENT).stdout
    assert "train" in out and "the main job: train" in out
    assert "the main job for now" not in out


# ---------------------------------------------------------------- torch.export


def test_converted_model_exports_saves_and_loads_in_a_fresh_process(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = convx.convert(torchvision.models.resnet18(num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    ep = torch.export.export(model, (x,))
    assert any(n.target.namespace == "convx" for n in ep.graph.nodes if isinstance(n.target, torch._ops.OpOverload))
    path = tmp_path / "resnet18.pt2"
    torch.export.save(ep, str(path))
    torch.save({"x": x, "y": expected}, tmp_path / "io.pt")
    code = f"""
import torch, convx
ep = torch.export.load({str(path)!r})
io = torch.load({str(tmp_path / 'io.pt')!r})
y = ep.module()(io["x"])
torch.testing.assert_close(y, io["y"], rtol=1e-5, atol=1e-5)
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=PKG_PARENT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# ---------------------------------------------------------------- pictures


def test_benchmark_chart(tmp_path):
    pytest.importorskip("matplotlib")
    src = os.path.join(ROOT, "bench", "results", "2026-11-24-amd-epyc-2-threads-cpu-models.json")
    res = json.load(open(src))
    path = tmp_path / "r.json"
    path.write_text(json.dumps(res))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "report.py"), str(path), "--plot-only"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    png = (tmp_path / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_training_curves(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    png = tmp_path / "curves.png"
    r = subprocess.run([sys.executable, "-m", "convx", "train", "--model", "lenet5", "--epochs", "2", "--quiet",
                        "--plot", str(png)], capture_output=True, text=True, timeout=300, cwd=PKG_PARENT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote loss and accuracy curves" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
