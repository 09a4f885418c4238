"""The emulated CUDA backend: convx's CUDA kernels run on the CPU.

The same ``csrc/cuda/*.cu`` sources that nvcc compiles into ``torch.ops.convx``
are compiled a second time by g++ against a small emulator of the CUDA
execution model (``csrc/simt``) into ``torch.ops.convx_simt``: the same
schemas, taking and returning CPU tensors. Tests use it to run every CUDA
kernel on machines without a GPU::

    import convx
    with convx.simt.device():               # torch.ops.convx.* on CPU tensors now run the CUDA kernels
        y = convx.functional.conv2d(x, w)   # forward, and autograd's backward ops, emulated
    convx.simt.launches()                   # [Launch(kernel='...igemm_kernel<float, ...>', grid=(..), block=(256, 1, 1), ...)]

See the README's "How CUDA code is verified without a GPU".
"""
import contextlib
from typing import NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

try:
    from . import _simt
except ImportError:  # built with CONVX_SIMT=0
    _simt = None


class Launch(NamedTuple):
    kernel: str
    grid: tuple
    block: tuple
    dynamic_shared: int  # bytes asked for at launch
    static_shared: int   # bytes of the __shared__ arrays in the kernel's own body


def available():
    """Whether the emulated backend was built (``CONVX_SIMT=0`` skips it)."""
    return _simt is not None


def _require():
    if _simt is None:
        raise RuntimeError("convx was built without the emulated CUDA backend (CONVX_SIMT=0): rebuild to use it")


def launches():
    """Every kernel launch since the last ``clear_launches()``, oldest first."""
    _require()
    return [Launch(*r) for r in _simt.launches()]


def clear_launches():
    _require()
    _simt.clear_launches()


def set_seed(seed):
    """Seeds the order in which blocks run and threads resume after a barrier."""
    _require()
    _simt.set_seed(int(seed))


def shared_objects():
    """How many ``__shared__`` arrays the runtime poisons at each block start."""
    _require()
    return _simt.shared_objects()


@contextlib.contextmanager
def max_grid_yz(limit):
    """Lowers the emulated device's gridDim.y / gridDim.z limit (65,535) for
    the duration, so that tests reach the paths that split a grid over several
    launches without tensors of 65,536 groups."""
    _require()
    old = _simt.set_max_grid_yz(int(limit))
    try:
        yield
    finally:
        _simt.set_max_grid_yz(old)


class _Redirect(TorchDispatchMode):
    """Sends every ``torch.ops.convx.*`` call to ``torch.ops.convx_simt.*``.

    It sits below autograd, so convx's autograd formulas (convx/ops.py) run as
    usual and the backward ops they call are redirected too."""

    supports_higher_order_operators = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, torch._ops.HigherOrderOperator):
            # e.g. auto_functionalized(convx.batch_norm_stats, ...) under torch.compile
            args = tuple(_emulated(a) if isinstance(a, torch._ops.OpOverload) else a for a in args)
            return func(*args, **kwargs)
        return _emulated(func)(*args, **kwargs)


def _emulated(op):
    """convx::X.overload -> convx_simt::X.overload; any other op unchanged."""
    if getattr(op, "namespace", None) != "convx":
        return op
    return getattr(getattr(torch.ops.convx_simt, op._opname), op._overloadname)


@contextlib.contextmanager
def device():
    """Within this context, convx ops on CPU tensors run the CUDA kernels on
    the emulator (``torch.ops.convx_simt``) instead of the CPU kernels."""
    _require()
    with _Redirect():
        yield
