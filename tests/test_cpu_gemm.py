"""The CPU GEMM's micro-kernels: one per instruction set, chosen from the CPU's feature bits.

Every build present on this machine is checked: the widest the CPU has in this
process, and the narrower ones in subprocesses with CONVX_CPU_ISA capping the
choice, on shapes whose edges cut every tile and cache block.
"""
import os
import subprocess
import sys

import pytest
import torch

import convx

SHAPES = [(1, 1, 1), (5, 7, 3), (12, 32, 256), (13, 33, 257), (50, 70, 600), (241, 97, 513), (7, 3100, 9),
          (500, 700, 300),  # M > MC, N over one 512 KiB group of B panels (rows of A read in place)
          (250, 64, 300), (301, 45, 70),  # AVX-512's 6 x 64 tile (33-64 columns), whole and cut
          (64, 1100, 40), (40, 700, 300),  # its 8 x 32 tile (few rows, 8-row panels), B rows packed k-major
          (100, 98, 700),  # a last column panel of 2 on the 16-column tile (33, 70, 97 and 1100 too)
          (500, 16, 300), (37, 13, 70),  # AVX-512's 12 x 16 tile (9-16 columns), whole and cut
          (400, 48, 300), (45, 37, 70)]  # its 8 x 48 tile (33-48 columns)


def _flags():
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return set()


def test_isa_follows_the_cpu():
    flags = _flags()
    want = ("avx512" if {"avx512f", "avx512vl", "avx512dq", "avx2", "fma"} <= flags
            else "avx2" if {"avx2", "fma"} <= flags else "base")
    if not flags or os.environ.get("CONVX_CPU_ISA"):
        pytest.skip("no /proc/cpuinfo, or the choice is capped by CONVX_CPU_ISA")
    assert torch.ops.convx.cpu_isa() == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in SHAPES])
def test_gemm_matches_float64(shape, dtype):
    m, n, k = shape
    a, b = torch.randn(m, k, dtype=torch.float64), torch.randn(k, n, dtype=torch.float64)
    got = torch.ops.convx.cpu_gemm(a.to(dtype), b.to(dtype)).double()
    tol = 1e-12 if dtype == torch.float64 else 3e-6 * k ** 0.5
    torch.testing.assert_close(got, a.to(dtype).double() @ b.to(dtype).double(), atol=tol * 4, rtol=tol)
    # strided operands (a transposed view): the packing reads through strides
    got_t = torch.ops.convx.cpu_gemm(a.t().contiguous().t().to(dtype), b.to(dtype)).double()
    torch.testing.assert_close(got_t, got, atol=tol * 4, rtol=tol)
    got_bt = torch.ops.convx.cpu_gemm(a.to(dtype), b.t().contiguous().t().to(dtype)).double()
    torch.testing.assert_close(got_bt, got, atol=tol * 4, rtol=tol)


# A's rows a multiple of 4 KiB apart all fall on the same sets of L1 (64 sets of 64-byte lines): the
# rows-in-place order copies each 12 rows first (gemm.h's l1_sets_crowded). Row strides of 4 and
# 8 KiB (float32 and float64), a 2 KiB one that stays in place, and odd ones; a partial last row
# panel, a partial last column panel, several 256-deep reduction blocks.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("row_bytes", [2048, 4096, 8192, 4160, 12288])
def test_gemm_rows_a_multiple_of_4k_apart(row_bytes, dtype):
    lda = row_bytes // (4 if dtype == torch.float32 else 8)
    for m, n, k in [(29, 70, min(lda, 600)), (100, 33, lda)]:
        a = torch.randn(m, lda, dtype=torch.float64)[:, :k]
        b = torch.randn(k, n, dtype=torch.float64)
        got = torch.ops.convx.cpu_gemm(a.to(dtype), b.to(dtype)).double()
        tol = 1e-12 if dtype == torch.float64 else 3e-6 * k ** 0.5
        torch.testing.assert_close(got, a.to(dtype).double() @ b.to(dtype).double(), atol=tol * 4, rtol=tol)


_CHILD = r"""
import torch, convx, sys
assert torch.ops.convx.cpu_isa() == sys.argv[1], torch.ops.convx.cpu_isa()
torch.manual_seed(0)
for m, n, k in [(13, 33, 257), (241, 97, 513), (7, 3100, 9)]:
    for dt in (torch.float32, torch.float64):
        a, b = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)
        ref = a.double() @ b.double()
        err = (torch.ops.convx.cpu_gemm(a, b).double() - ref).abs().max().item()
        assert err < (1e-9 if dt == torch.float64 else 1e-3), (m, n, k, dt, err)
x = torch.randn(2, 16, 12, 12)
for mf, k, groups in [(torch.contiguous_format, 24, 1), (torch.channels_last, 24, 1),
                      (torch.contiguous_format, 32, 16), (torch.channels_last, 16, 16)]:  # + depthwise
    w = torch.randn(k, 16 // groups, 3, 3)
    xx = x.contiguous(memory_format=mf).requires_grad_()
    ww = w.clone().requires_grad_()
    y = convx.functional.conv2d(xx, ww, padding=1, groups=groups)
    gx, gw = torch.autograd.grad(y.square().sum(), (xx, ww))
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    yr = torch.nn.functional.conv2d(xr, wr, padding=1, groups=groups)
    gxr, gwr = torch.autograd.grad(yr.square().sum(), (xr, wr))
    for a, b in ((y, yr), (gx, gxr), (gw, gwr)):
        torch.testing.assert_close(a.double(), b, atol=2e-3, rtol=1e-4)
# the channels_last weight gradient with both operands read in place (96 channels: whole tiles on
# every build): 1x1, and a 1x7 whose runs the padding cuts at stride 2
for (r, s), st, pad in (((1, 1), 1, 0), ((1, 7), 2, 3)):
    x1 = torch.randn(2, 96, 7, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w1 = torch.zeros(96, 96, r, s, dtype=torch.float64, requires_grad=True)
    y1 = torch.nn.functional.conv2d(x1, w1, None, st, (0, pad))
    g1 = torch.randn(y1.shape, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    ref1, = torch.autograd.grad(y1, w1, g1)
    gw1 = torch.ops.convx.conv2d_backward_weight(g1.float(), x1.float(), [96, 96, r, s], [st, st],
                                                 [0, 0, pad, pad], [1, 1], 1, False)[0]
    torch.testing.assert_close(gw1.double(), ref1, atol=1e-3, rtol=1e-4)
# an NCHW forward with 3 channels and a 7x7 filter (forward_nchw_rows: the GEMM on channels_last
# rows, each block transposed into the planes by layout.cpp's transpose, scalar on the baseline)
xs = torch.randn(2, 3, 23, 29, dtype=torch.float64)
ws, bs = torch.randn(70, 3, 7, 7, dtype=torch.float64), torch.randn(70, dtype=torch.float64)
ys = torch.ops.convx.conv2d(xs.float(), ws.float(), bs.float(), [2, 2], [3, 3, 3, 3], [1, 1], 1)
torch.testing.assert_close(ys.double(), torch.nn.functional.conv2d(xs, ws, bs, 2, 3), atol=1e-3, rtol=1e-4)
# an NCHW 1x1 forward on several images a product (pack_b_batch's vector copies of panels inside
# one image, runs for the panels across two: 63 pixels an image)
xp = torch.randn(3, 20, 7, 9, dtype=torch.float64)
wp = torch.randn(30, 20, 1, 1, dtype=torch.float64)
yp = torch.ops.convx.conv2d(xp.float(), wp.float(), None, [1, 1], [0, 0, 0, 0], [1, 1], 1)
torch.testing.assert_close(yp.double(), torch.nn.functional.conv2d(xp, wp), atol=1e-4, rtol=1e-4)
# channels_last forwards with 64 channels: every tile's rows gathered in place (gemm.cpp's gathered
# tile on each build), the taps outside the image as zeros and all-zero runs left out
# (the 1 x 7 / 7 x 1 layers with Winograd along the line off: the GEMM path is the subject)
for (r, s), st, pad in (((3, 3), 2, (1, 1)), ((7, 1), 1, (3, 0)), ((1, 7), 1, (0, 3))):  # 1x7: down the columns
    xg = torch.randn(2, 64, 11, 13, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    wg, bg = torch.randn(40, 64, r, s, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    with convx.backends.cpu.flags(winograd=False):
        yg = torch.ops.convx.conv2d(xg.float(), wg.float(), bg.float(), [st, st], [pad[0], pad[0], pad[1], pad[1]],
                                    [1, 1], 1)
    torch.testing.assert_close(yg.double(), torch.nn.functional.conv2d(xg, wg, bg, st, pad), atol=1e-3, rtol=1e-4)
# channels_last, 3 -> 16 3x3 with a 8 MiB result: streamed from the tiles read in place (gemm_rows'
# stream: AVX2's 6 x 16 tile), the edges' tiles by ordinary stores
xn = torch.randn(1, 3, 256, 512, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
wn, bn = torch.randn(16, 3, 3, 3, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
yn = torch.ops.convx.conv2d(xn.float(), wn.float(), bn.float(), [1, 1], [1, 1, 1, 1], [1, 1], 1)
torch.testing.assert_close(yn.double(), torch.nn.functional.conv2d(xn, wn, bn, 1, 1), atol=1e-4, rtol=1e-4)
assert yn.is_contiguous(memory_format=torch.channels_last)
# add + ReLU and its gradient (each_streaming()'s builds), 1001 elements: a tail on every build
xa, xb = torch.randn(1001, requires_grad=True), torch.randn(1001, requires_grad=True)
ya = convx.functional.add_relu(xa, xb)
ga = torch.autograd.grad(ya, [xa], torch.arange(1001.0))[0]
torch.testing.assert_close(ya, torch.relu(xa + xb), rtol=0, atol=0)
torch.testing.assert_close(ga, torch.arange(1001.0) * (ya > 0), rtol=0, atol=0)
# channels_last batch norm (its row loops run through each()'s builds), training, with ReLU
xb = (torch.randn(3, 40, 5, 7, dtype=torch.float64) * 2 + 1).contiguous(memory_format=torch.channels_last)
gb = torch.randn(3, 40, 5, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
wb, bb = torch.randn(40, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
outs = []
for dt in (torch.float32, torch.float64):
    xx, ww, b2 = xb.to(dt).requires_grad_(), wb.to(dt).requires_grad_(), bb.to(dt).requires_grad_()
    if dt == torch.float32:  # the fused ReLU: the backward's row loops with the ReLU mask
        y = convx.functional.batch_norm(xx, None, None, ww, b2, True, 0.1, 1e-5, relu=True)
    else:
        y = torch.nn.functional.batch_norm(xx, None, None, ww, b2, True, 0.1, 1e-5).relu()
    outs.append((y, *torch.autograd.grad(y, (xx, ww, b2), gb.to(dt))))
for a, b in zip(*outs):
    torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4)
print("ok")
"""


def run_with_isa(code, isa):
    """Run `code` (which checks its results and prints "ok") in a subprocess whose CPU kernels are
    capped at `isa` by CONVX_CPU_ISA; skips where the CPU lacks AVX2."""
    if isa == "avx2" and not {"avx2", "fma"} <= _flags():
        pytest.skip("this CPU has no AVX2")
    env = dict(os.environ, CONVX_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-c", code, isa], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_narrower_builds(isa):
    """The AVX2 and baseline builds (GEMM micro-kernel, depthwise loops), forced on this machine:
    GEMM and convolution parity, dense and depthwise, both layouts, forward and both gradients."""
    run_with_isa(_CHILD, isa)


def test_fma_peak_is_measured():
    peak = torch.ops.convx.cpu_fma_peak(2_000_000)
    assert 1.0 < peak < 2000.0  # GFLOP/s of one core: a measurement, not a constant
    nt = torch.get_num_threads()
    both = torch.ops.convx.cpu_fma_peak(2_000_000, nt)
    assert 1.0 < both < 2000.0 * nt
    with pytest.raises(RuntimeError, match="threads"):
        torch.ops.convx.cpu_fma_peak(1000, nt + 1)
    with pytest.raises(RuntimeError, match="iterations"):
        torch.ops.convx.cpu_fma_peak(0)


# NCHW, one group: the layer's weights are packed once (pack_a_once) and every product reads that
# packing; images under 256 pixels go several to a product (columns of a batch: a 32-column panel
# then spans two or more images). One product split between the threads by columns where pixels
# outnumber output channels (the split point inside an image), by rows otherwise (the packed rows
# then start mid-packing); or whole products a thread. Shapes stay off Winograd (stride 2, 1x1,
# 5x5) and cut the tiles (12 x 32 on AVX-512) and the 256-deep reduction blocks.
PACKED_WEIGHT_CASES = {
    "3x3s2_cols_split": (1, 37, 21, 19, 50, (3, 3), 2, 1),   # N = 110 pixels > M = 50 channels
    "1x1_rows_split": (1, 300, 8, 7, 270, (1, 1), 1, 0),     # M = 270 > N = 56; K = 300 (2 blocks)
    "5x5_batch3_cols_split": (3, 23, 11, 13, 29, (5, 5), 1, 2),  # 3 images' im2col in one product
    "1x1_batch4_rows_split": (4, 300, 5, 5, 270, (1, 1), 1, 0),  # 4 x 25 pixels, M = 270 > N = 100
    "3x3s2_batch8_two_products": (8, 20, 20, 20, 24, (3, 3), 2, 1),  # 4 images a thread
    "1x1_tiny_pixels": (3, 64, 3, 3, 40, (1, 1), 1, 0),       # 9 pixels an image
    "1x1_400px_40ch": (1, 64, 20, 20, 40, (1, 1), 1, 0),      # channels_last: rows split (M = 400 > N = 40)
    # AVX-512's 6 x 64 tile: NCHW 260-300 output channels against 25-49 pixels (one image's tile
    # cut, two images' in one tile); channels_last 64 / 48 output channels (in place, on the fly)
    "1x1_one_image_6x64": (1, 64, 7, 7, 300, (1, 1), 1, 0),
    "1x1_two_images_one_tile": (2, 32, 5, 5, 260, (1, 1), 1, 0),
    "1x1_64ch_900px": (1, 96, 30, 30, 64, (1, 1), 1, 0),     # NCHW: 8 x 32 tile, 8 row panels
    "3x3s2_48ch": (2, 24, 33, 33, 48, (3, 3), 2, 1),
    # NCHW 196 pixels (4 images of 49) against 90 channels, split by columns: a last column panel
    # of 4 (AVX-512: on the 12 x 16 tile), the panels across images summed in the thread's scratch
    "1x1_cols_across_images_tail": (4, 64, 7, 7, 90, (1, 1), 1, 0),
    # the same pixels against 150 channels (fewer than twice as many): split by rows
    "1x1_rows_across_images": (4, 64, 7, 7, 150, (1, 1), 1, 0),
    # 9-16 output channels (AVX-512's 12 x 16 tile): a filter row's runs gathered from the padded
    # copy (32 channels 5x5), pixels gathered a tap at a time (64 channels, stride 2), 1x1 with 12;
    # and 16 input channels, whose channels_last data gradient is then that forward
    "5x5_16ch_out": (2, 32, 13, 12, 16, (5, 5), 1, 2),
    "3x3s2_64_to_16": (2, 64, 15, 15, 16, (3, 3), 2, 1),
    "1x1_12ch_out": (2, 64, 9, 10, 12, (1, 1), 1, 0),
    "5x5_16ch_in": (2, 16, 14, 13, 32, (5, 5), 1, 2),
    # 33-48 output channels (AVX-512's 8 x 48 tile), gathered both ways; 48 input channels
    "5x5_48ch_out": (2, 32, 13, 12, 48, (5, 5), 1, 2),
    "3x3s2_64_to_40": (2, 64, 15, 15, 40, (3, 3), 2, 1),
    "5x5_48ch_in": (2, 48, 11, 12, 32, (5, 5), 1, 2),
    # 72 output channels, weights packed once: 64 on the 12 x 32 tile, a last panel of 8 packed 16 wide
    "1x1_72ch_narrow_tail": (2, 64, 15, 16, 72, (1, 1), 1, 0),
    # over 64 output channels on an 8-way L1 (Zen 4): the 6 x 64 tile, 1024 channels' rows (4 KiB
    # apart) read in place 6 a tile, a last panel of 36
    "1x1_1024ch_100_out": (1, 1024, 16, 16, 100, (1, 1), 1, 0),
    # channels_last with 256+ output channels against fewer than twice as many pixels: split by
    # columns (each thread packs its half of the weights, reads every row): rows gathered (stride
    # 2), read in place (1x1), made (1x7); a last panel of 4 in the second thread's half
    "3x3s2_cols_first": (2, 24, 14, 14, 260, (3, 3), 2, 1),
    "1x1_cols_first": (1, 40, 12, 12, 300, (1, 1), 1, 0),
    "1x7_cols_first": (2, 20, 9, 9, 270, (1, 7), 1, (0, 3)),
}


# channels_last, one group: the weights are B of every product, packed once (pack_b_once) for the
# 1x1 layers and the float64 im2col ones (float32 spatial layers make A on the fly instead);
# products split by columns (the packed columns then start mid-packing) or by rows.
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", PACKED_WEIGHT_CASES.values(), ids=PACKED_WEIGHT_CASES.keys())
def test_weights_packed_once(case, dtype, layout):
    n, c, h, w_, k, ks, stride, pad = case
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(n, c, h, w_, dtype=torch.float64).contiguous(memory_format=mf)
    w = torch.randn(k, c, *ks, dtype=torch.float64) / (c * ks[0] * ks[1]) ** 0.5
    b = torch.randn(k, dtype=torch.float64)
    xx, ww, bb = (t.to(dtype).requires_grad_() for t in (x, w, b))
    with convx.backends.cpu.flags(winograd=False):  # (1x7: the GEMM's, not Winograd along the line)
        y = convx.functional.conv2d(xx, ww, bb, stride=stride, padding=pad)
        gy = torch.randn_like(y)
        gx, gw = torch.autograd.grad(y, (xx, ww), gy)
    xr, wr = x.requires_grad_(), w.requires_grad_()
    yr = torch.nn.functional.conv2d(xr, wr, b, stride=stride, padding=pad)
    gxr, gwr = torch.autograd.grad(yr, (xr, wr), gy.double())
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-4, rtol=1e-4)
    for got, ref in ((y, yr), (gx, gxr), (gw, gwr)):
        torch.testing.assert_close(got.double(), ref, **tol)
