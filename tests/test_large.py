"""Tensors of more than 2^31 elements on the CPU, one case per kernel family
(a 1x1 convolution, max and average pooling, batch norm, add + ReLU): the
results equal torch's, computed on slices (the first and last rows, where
32-bit index arithmetic would wrap). About 9 to 17 GB each; marked slow:
``make test-slow`` runs them (not CI)."""
import gc

import pytest
import torch
import torch.nn.functional as F

import convx

CF = convx.functional
pytestmark = pytest.mark.slow
SIDE = 46342                 # 46342^2 = 2,147,580,964 > 2^31 elements in one plane
ROWS = (slice(0, 3), slice(SIDE - 4, SIDE))  # first and last rows


def _free():
    gc.collect()


def _big(c=1):
    x = torch.empty(1, c, SIDE, SIDE)
    assert x.numel() > 2 ** 31
    x.uniform_(-1, 1, generator=torch.Generator().manual_seed(0))
    return x


def test_conv1x1_past_2_31():
    x = _big()
    w, b = torch.tensor([[[[1.5]]]]), torch.tensor([-0.25])
    y = CF.conv2d(x, w, b)
    for r in ROWS:
        torch.testing.assert_close(y[:, :, r], F.conv2d(x[:, :, r], w, b))
    del x, y
    _free()


def test_pooling_past_2_31():
    x = _big()
    y, ind = CF.max_pool2d(x, 2, return_indices=True)
    a = CF.avg_pool2d(x, 2)
    for r in ROWS:
        rr = slice(r.start - r.start % 2, r.stop - r.stop % 2)
        yt, it = F.max_pool2d(x[:, :, rr], 2, return_indices=True)
        o = slice(rr.start // 2, rr.stop // 2)
        torch.testing.assert_close(y[:, :, o], yt)
        torch.testing.assert_close(ind[:, :, o], it + rr.start * SIDE)  # flat positions in the whole plane
        torch.testing.assert_close(a[:, :, o], F.avg_pool2d(x[:, :, rr], 2))
    assert int(ind.max()) > 2 ** 31
    del x, y, ind, a
    _free()


def test_batch_norm_past_2_31():
    x = _big()
    rm, rv = torch.zeros(1), torch.ones(1)
    y = CF.batch_norm(x, rm, rv, torch.tensor([2.0]), torch.tensor([0.5]), True, 1.0, 1e-5)
    flat = x.view(-1)
    n = flat.numel()
    s = s2 = 0.0
    for i in range(0, n, 2 ** 28):  # the statistics in float64, in chunks
        part = flat[i:i + 2 ** 28].double()
        s += part.sum().item()
        s2 += part.square().sum().item()
    mean = s / n
    var = s2 / n - mean * mean
    torch.testing.assert_close(rm, torch.tensor([mean], dtype=torch.float32), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rv, torch.tensor([var * n / (n - 1)], dtype=torch.float32), rtol=1e-5, atol=1e-6)
    for r in ROWS:
        ref = (x[:, :, r].double() - mean) / (var + 1e-5) ** 0.5 * 2.0 + 0.5
        torch.testing.assert_close(y[:, :, r].double(), ref, rtol=1e-5, atol=1e-5)
    del x, y, flat
    _free()


def test_add_relu_past_2_31():
    x = _big()
    other = torch.linspace(-1, 1, SIDE).view(1, 1, 1, SIDE).expand(1, 1, SIDE, SIDE)  # stride 0, no memory
    expect = [F.relu(x[:, :, r] + other[:, :, r]) for r in ROWS]
    CF.add_relu(x, other, inplace=True)
    for r, e in zip(ROWS, expect):
        torch.testing.assert_close(x[:, :, r], e)
    del x, other
    _free()
