"""Leaks, threads and determinism.

- Leaks: 10,000 calls of every op, forward and backward, keep the process's
  resident memory flat (within 4 MiB after a warm-up); 1,000 on the emulated
  CUDA backend.
- Threads: 4 Python threads calling convx ops at once on their own tensors
  give results bit-identical to a serial run; every op gives bit-identical
  results with 1 and 2 intra-op threads (torch.set_num_threads).
- Determinism: every op's forward and backward are bitwise reproducible run
  to run, and torch.use_deterministic_algorithms(True) never makes one raise.
"""
import os
import threading

import pytest
import torch

import convx
from conftest import SIMT, SIMT_MARKS

CF = convx.functional
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param(SIMT, id="simt", marks=SIMT_MARKS)]


def _t(shape, seed, layout="contiguous", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t


def _ops(n=4, c=16, hw=12, layout="contiguous", groups=2):
    """Each op as fn(seed) -> list of output tensors (forward results and every input gradient)."""
    def conv(seed):
        x, w, b = _t((n, c, hw, hw), seed, layout).requires_grad_(), _t((24, c // groups, 3, 3), seed + 1, layout) \
            .requires_grad_(), _t((24,), seed + 2).requires_grad_()
        y = CF.conv2d(x, w, b, 1, 1, 1, groups)
        return [y] + list(torch.autograd.grad(y, (x, w, b), _t(y.shape, seed + 3)))

    def convt(seed):
        x, w = _t((n, c, hw, hw), seed, layout).requires_grad_(), _t((c, 8, 3, 3), seed + 1, layout).requires_grad_()
        y = CF.conv_transpose2d(x, w, None, 2, 1, 1)
        return [y] + list(torch.autograd.grad(y, (x, w), _t(y.shape, seed + 3)))

    def maxp(seed):
        x = _t((n, c, hw, hw), seed, layout).requires_grad_()
        y, i = CF.max_pool2d(x, 3, 2, 1, return_indices=True)
        return [y, i] + list(torch.autograd.grad(y, x, _t(y.shape, seed + 3)))

    def avgp(seed):
        x = _t((n, c, hw, hw), seed, layout).requires_grad_()
        y = CF.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
        return [y] + list(torch.autograd.grad(y, x, _t(y.shape, seed + 3)))

    def adapt(seed):
        x = _t((n, c, hw, hw), seed, layout).requires_grad_()
        y1, (y2, i) = CF.adaptive_avg_pool2d(x, 5), CF.adaptive_max_pool2d(x, 5, True)
        return [y1, y2, i] + list(torch.autograd.grad((y1, y2), x, (_t(y1.shape, seed + 3), _t(y2.shape, seed + 4))))

    def bn(seed):
        x, r = _t((n, c, hw, hw), seed, layout).requires_grad_(), _t((n, c, hw, hw), seed + 1, layout).requires_grad_()
        w, b = _t((c,), seed + 2).requires_grad_(), _t((c,), seed + 3).requires_grad_()
        rm, rv = torch.zeros(c), torch.ones(c)
        y = CF.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5, residual=r, relu=True)
        return [y, rm, rv] + list(torch.autograd.grad(y, (x, r, w, b), _t(y.shape, seed + 4)))

    def add_relu(seed):
        a, b = _t((n, c, hw, hw), seed, layout).requires_grad_(), _t((n, c, hw, hw), seed + 1).requires_grad_()
        y = CF.add_relu(a, b)
        return [y] + list(torch.autograd.grad(y, (a, b), _t(y.shape, seed + 3)))

    return {"conv2d": conv, "conv_transpose2d": convt, "max_pool2d": maxp, "avg_pool2d": avgp,
            "adaptive_pools": adapt, "batch_norm_add_relu": bn, "add_relu": add_relu}


def _same(a_list, b_list):
    return len(a_list) == len(b_list) and all(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
                                              for a, b in zip(a_list, b_list))


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sanitized():
    try:
        from convx import _build_config
        return bool(getattr(_build_config, "sanitize", False))
    except ImportError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
@pytest.mark.skipif(_sanitized(), reason="AddressSanitizer keeps freed memory in quarantine: RSS is no measure")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", list(_ops()))
def test_no_leak(op, device):
    calls = 1000 if device == "simt" or repr(device) == "simt" else 10000
    fn = _ops(n=2, c=4, hw=6)[op]
    for i in range(300):  # warm-up: allocator pools, dispatcher caches, thread pools
        fn(i)
    before = _rss()
    for i in range(calls):
        fn(i)
    grown = _rss() - before
    assert grown < 4 * 2 ** 20, f"resident memory grew {grown / 2 ** 20:.1f} MiB over {calls} calls of {op}"


@pytest.mark.parametrize("op", list(_ops()))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_python_threads_match_serial(op, layout):
    fn = _ops(layout=layout)[op]
    serial = [fn(seed) for seed in range(8)]
    results, errors = [None] * 8, []

    def work(k):
        try:
            for rep in range(3):
                for seed in range(k, 8, 4):
                    out = fn(seed)
                    if rep == 0:
                        results[seed] = out
                    elif not _same(out, results[seed]):
                        errors.append(f"thread {k}: seed {seed} differs between repetitions")
        except Exception as e:  # noqa: BLE001
            errors.append(f"thread {k}: {type(e).__name__}: {e}")
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for seed in range(8):
        assert _same(results[seed], serial[seed]), f"seed {seed}: threaded result differs from the serial one"


@pytest.mark.parametrize("op", list(_ops()))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("size", ["batch3", "one_image_large"])
def test_intra_op_threads_do_not_change_bits(op, layout, size):
    """The CPU kernels split work over torch's threads (over images and groups, or inside one GEMM for a
    single image; over pixel chunks for batch-norm statistics); the bits must not depend on how many."""
    kw = dict(n=3, c=32, hw=15) if size == "batch3" else dict(n=1, c=16, hw=56, groups=1)
    fn = _ops(layout=layout, **kw)[op]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fn(0)
        torch.set_num_threads(2)
        two = fn(0)
    finally:
        torch.set_num_threads(old)
    assert _same(one, two)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", list(_ops()))
def test_deterministic_and_allowed_under_deterministic_algorithms(op, device):
    fn = _ops()[op]
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = fn(5), fn(5)
    finally:
        torch.use_deterministic_algorithms(was)
    assert _same(first, second)
