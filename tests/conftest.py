"""Shared fixtures and helpers for the convx test suite.

CUDA cases are parametrized like the CPU ones and skip (not fail) where no GPU
is present, so the same files run everywhere.
"""
import pytest
import torch

import convx  # noqa: F401  (registers the ops)

HAS_CUDA = torch.cuda.is_available()
CUDA_SKIP = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA_SKIP)]

# (device, dtype) pairs each op must support.
DEVICE_DTYPES = [
    pytest.param("cpu", torch.float32, id="cpu-f32"),
    pytest.param("cpu", torch.float64, id="cpu-f64"),
    pytest.param("cuda", torch.float32, id="cuda-f32", marks=CUDA_SKIP),
    pytest.param("cuda", torch.float64, id="cuda-f64", marks=CUDA_SKIP),
    pytest.param("cuda", torch.float16, id="cuda-f16", marks=CUDA_SKIP),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=CUDA_SKIP),
]

LAYOUTS = ["contiguous", "channels_last", "noncontiguous", "channels_last_noncontiguous"]


@pytest.fixture(autouse=True)
def _seed_and_no_tf32():
    torch.manual_seed(0)
    if HAS_CUDA:
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


def assert_close_to_reference(actual, expected, reference, factor=2.0, floor=None):
    """For half types: convx's error against a float64 reference may be at
    most about `factor` times torch's own error against it."""
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
