"""Shared fixtures and helpers for the convx test suite.

Three devices: "cpu" (the C++ CPU kernels), "cuda" (the CUDA kernels on a GPU;
skipped, not failed, where none is present) and "simt": the same CUDA kernels
compiled for the CPU emulator (convx.simt), so every CUDA test also runs on
machines without a GPU. A simt test gets CPU tensors (its device value is the
string "cpu") and runs inside convx.simt.device(), which sends every convx op
to the emulated CUDA kernels; torch's reference ops run on the CPU as usual.
"""
import pytest
import torch

import convx  # noqa: F401  (registers the ops)

HAS_CUDA = torch.cuda.is_available()
CUDA_SKIP = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
HAS_SIMT = convx.simt.available()
SIMT_MARKS = [pytest.mark.simt, pytest.mark.skipif(not HAS_SIMT, reason="built without the emulated CUDA backend")]


class _Simt(str):
    """The emulated CUDA device: a str equal to "cpu" (where its tensors
    live) that tests can tell apart with is_simt()."""

    def __new__(cls):
        return str.__new__(cls, "cpu")

    def __repr__(self):
        return "simt"


SIMT = _Simt()


def is_simt(device):
    return isinstance(device, _Simt)


def cuda_semantics(device):
    """Whether convx follows torch's CUDA behaviour here (on a GPU or the emulator)."""
    return is_simt(device) or str(device).startswith("cuda")


DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA_SKIP),
           pytest.param(SIMT, id="simt", marks=SIMT_MARKS)]

# (device, dtype) pairs each op must support.
DEVICE_DTYPES = [
    pytest.param("cpu", torch.float32, id="cpu-f32"),
    pytest.param("cpu", torch.float64, id="cpu-f64"),
    pytest.param("cuda", torch.float32, id="cuda-f32", marks=CUDA_SKIP),
    pytest.param("cuda", torch.float64, id="cuda-f64", marks=CUDA_SKIP),
    pytest.param("cuda", torch.float16, id="cuda-f16", marks=CUDA_SKIP),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=CUDA_SKIP),
    pytest.param(SIMT, torch.float32, id="simt-f32", marks=SIMT_MARKS),
    pytest.param(SIMT, torch.float64, id="simt-f64", marks=SIMT_MARKS),
    pytest.param(SIMT, torch.float16, id="simt-f16", marks=SIMT_MARKS),
    pytest.param(SIMT, torch.bfloat16, id="simt-bf16", marks=SIMT_MARKS),
]


def device_dtypes(*ids):
    """The DEVICE_DTYPES entries with these ids, and their simt twins of the cuda ones."""
    ids = set(ids) | {i.replace("cuda", "simt") for i in ids if i.startswith("cuda")}
    return [p for p in DEVICE_DTYPES if p.id in ids]


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _emulated_device(request):
    """Runs simt-parametrized tests inside convx.simt.device()."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and any(is_simt(v) for v in callspec.params.values()):
        with convx.simt.device():
            yield
    else:
        yield

LAYOUTS = ["contiguous", "channels_last", "noncontiguous", "channels_last_noncontiguous"]


@pytest.fixture(autouse=True)
def _seed_and_no_tf32():
    torch.manual_seed(0)
    # Exact float32 convolutions unless a test asks for TF32 (torch's default
    # for cuDNN, and so for convx's tensor-core kernels, is TF32): the emulated
    # CUDA kernels read this flag too. tests/test_conv2d_tc.py turns it on.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield


def make_tensor(shape, dtype, device, layout="contiguous", requires_grad=False, low=-1.0, high=1.0):
    """A random tensor in the given layout. The non-contiguous layouts are
    views into a larger buffer whose gaps hold NaN, so a stride bug poisons
    the result instead of passing silently."""
    data = torch.empty(shape, dtype=torch.float64).uniform_(low, high).to(dtype)
    if layout in ("noncontiguous", "channels_last_noncontiguous") and len(shape) >= 2:
        big_shape = list(shape)
        big_shape[1] *= 2
        big_shape[-1] *= 2
        big = torch.full(big_shape, float("nan"), dtype=dtype)
        if layout == "channels_last_noncontiguous" and len(shape) == 4:
            big = big.contiguous(memory_format=torch.channels_last)
        idx = [slice(None)] * len(shape)
        idx[1] = slice(None, None, 2)
        idx[-1] = slice(None, None, 2)
        big[tuple(idx)] = data
        t = big.to(device)[tuple(idx)]
    else:
        t = data.to(device)
        if layout == "channels_last" and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def memory_format_of(t):
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def conv_format_on(device, dtype, torch_result):
    """The memory format torch gives a convolution's result on `device`: on
    CUDA float64 results are contiguous (cuDNN's rule) whatever the inputs'
    layout, so an emulated-CUDA result is compared with that, not with the
    CPU reference's format."""
    if cuda_semantics(device) and dtype == torch.float64:
        return torch.contiguous_format
    return memory_format_of(torch_result)


def assert_close_to_reference(actual, expected, reference, factor=2.0, floor=None):
    """For half types: convx's error against a float64 reference may be at
    most about `factor` times torch's own error against it."""
    assert actual.shape == reference.shape, f"shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    if reference.numel() == 0:
        return
    ref = reference.double()
    err_convx = (actual.double() - ref).abs().max().item()
    err_torch = (expected.double() - ref).abs().max().item()
    scale = ref.abs().max().item() + 1e-12
    floor = floor if floor is not None else 1e-3 * scale
    assert err_convx <= factor * err_torch + floor, (
        f"convx error {err_convx:.3e} > {factor} x torch error {err_torch:.3e} + {floor:.1e}")


def tolerances(dtype):
    if dtype == torch.float64:
        return dict(rtol=1e-7, atol=1e-7)
    return dict(rtol=1e-4, atol=1e-4)


def single_threaded(fn):
    """fn() with torch on one thread (the thread count restored after): for checks that a
    result does not depend on the number of threads."""
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        return fn()
    finally:
        torch.set_num_threads(n)
