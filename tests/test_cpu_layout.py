"""The CPU's NCHW <-> channels_last copies (csrc/cpu/layout.cpp) and the scratch tensors of the
convolutions that compute in the other layout: exact copies for every shape (tiles of 64, 16 x 16 and
8 x 8 blocks cut anywhere, streamed large results, one channel, one pixel, 4-byte types other than float32, the rest
falling back to torch's copy), and no result that shares the scratch memory of a later call."""
import pytest
import torch

import convx  # noqa: F401

SHAPES = [(2, 128, 56, 56), (1, 3, 224, 17), (1, 20, 112, 112), (3, 65, 9, 7), (2, 8, 8, 8), (1, 1, 5, 5), (4, 7, 1, 1),
          (1, 200, 3, 100), (0, 4, 3, 3), (2, 64, 0, 5),
          # edges of the 16 x 16 and 8 x 8 blocks: 3x3 and 5x5 weights' taps, 196- and 49-pixel planes,
          # rows and columns both short (17 x 33, 31 x 49)
          (40, 64, 3, 3), (6, 37, 5, 5), (2, 512, 14, 14), (3, 31, 7, 7), (2, 17, 3, 11)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_to_format_exact(shape, dtype):
    x = (torch.randn(shape) * 100).to(dtype)
    for src, cl in ((x, True), (x.contiguous(memory_format=torch.channels_last), False)):
        mf = torch.channels_last if cl else torch.contiguous_format
        y = torch.ops.convx.cpu_to_format(src, cl)
        assert y.is_contiguous(memory_format=mf) and y.dtype == dtype and y.shape == x.shape
        assert torch.equal(y, x)
        assert y.numel() == 0 or y.data_ptr() != src.data_ptr()


# 8 MiB or more (layout.h's stream_bytes): on AVX-512 written with streaming stores where the
# destination's rows are a multiple of 16 floats apart (both ways for 48 channels and 240 x 240
# pixels; NCHW -> channels_last of 40 channels not; 241 x 241 pixels neither way), edges of
# the 16 x 16 blocks by the 8 x 8 ones and the scalar loop
BIG = [(2, 40, 160, 200), (1, 48, 240, 240), (1, 37, 241, 241)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32])
@pytest.mark.parametrize("shape", BIG, ids=[str(s) for s in BIG])
def test_to_format_streamed(shape, dtype):
    x = (torch.randn(shape) * 100).to(dtype)
    for src, cl in ((x, True), (x.contiguous(memory_format=torch.channels_last), False)):
        y = torch.ops.convx.cpu_to_format(src, cl)
        mf = torch.channels_last if cl else torch.contiguous_format
        assert torch.equal(y, x) and y.is_contiguous(memory_format=mf)


def test_to_format_keeps_bits():
    """NaN payloads, -0.0 and infinities move as bit patterns."""
    bits = torch.randint(-2**31, 2**31 - 1, (2, 24, 10, 9), dtype=torch.int32)
    bits[0, :4, 0, :4] = torch.tensor([0x7fc00001, 0x7f800001, -2**31, 0x7f800000], dtype=torch.int32)
    x = bits.view(torch.float32)
    y = torch.ops.convx.cpu_to_format(x, True)
    assert torch.equal(y.view(torch.int32), bits.contiguous(memory_format=torch.channels_last))


def test_to_format_views_and_strides():
    """A non-dense or offset input takes torch's copy, whatever its strides."""
    base = torch.randn(3, 40, 12, 12)
    for t in (base[1:], base[:, 5:30], base[:, :, ::2], base.transpose(2, 3), base.permute(0, 2, 3, 1)):
        for cl in (True, False):
            y = torch.ops.convx.cpu_to_format(t, cl)
            assert torch.equal(y, t)
            assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


# Convolutions whose CPU path computes in the other layout (operand copies and the result before
# its copy back are scratch): grouped NCHW (every pass), an NCHW 3x3 layer of <= 64 output pixels
# (forward, data gradient) and an NCHW float32 3x3 weight gradient with >= 8 channels a group
# (its result before the copy back is scratch too); a forward that reads many weights in place
# for few pixels; an NCHW data gradient as a forward with the rotated weight in scratch memory.
SCRATCH_CASES = {
    "grouped_nchw": (2, 32, 10, 10, 32, 8, 1),
    "small_pixels_nchw": (2, 24, 6, 6, 20, 1, 2),
    "grouped_one_pixel": (3, 16, 1, 1, 16, 4, 1),   # dense in both layouts: ordinary tensors
    "grouped_cl": (2, 32, 9, 9, 32, 16, 1),
    "weights_in_place": (2, 16, 4, 4, 80, 1, 1),
    "dgrad_as_forward": (2, 16, 12, 12, 24, 1, 1),
}


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", SCRATCH_CASES.values(), ids=SCRATCH_CASES.keys())
def test_results_outlive_the_next_call(case, layout):
    N, C, H, W, K, G, stride = case
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    w = torch.randn(K, C // G, 3, 3, generator=g)
    xs = [torch.randn(N, C, H, W, generator=g).contiguous(memory_format=mf) for _ in range(2)]
    args = ([stride, stride], [1, 1, 1, 1], [1, 1], G)
    ys = [torch.ops.convx.conv2d(x, w, None, *args) for x in xs]
    gys = [torch.randn(y.shape, generator=g).contiguous(memory_format=mf) for y in ys]
    gxs = [torch.ops.convx.conv2d_backward_input(gy, w, [N, C, H, W], *args) for gy in gys]
    gws = [torch.ops.convx.conv2d_backward_weight(gy, x, list(w.shape), *args, False)[0] for gy, x in zip(gys, xs)]
    for x, y, gy, gx, gw in zip(xs, ys, gys, gxs, gws):  # after both calls: nothing overwritten
        xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
        yr = torch.nn.functional.conv2d(xd, wd, None, stride, 1, 1, G)
        gxr, gwr = torch.autograd.grad(yr, (xd, wd), gy.double())
        for got, ref in ((y, yr), (gx, gxr), (gw, gwr)):
            assert H * W == 1 or got.is_contiguous(memory_format=mf)  # one pixel: either layout (torch's rule)
            torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)
    ptrs = [t.data_ptr() for t in ys + gxs + gws]
    assert len(set(ptrs)) == len(ptrs)
