"""The channels_last float32 CPU forward with a spatial kernel or a stride: its im2col is
made a register tile's rows at a time as the GEMM reads them (gemm_rows, csrc/cpu/gemm.cpp;
im2col_nhwc_rows, csrc/cpu/conv2d.cpp), with a filter row's taps merged into one run when
they read consecutive pixels (one group, dilation 1 along the width), and a receptive field
inside the image copied a filter row at a time. NCHW inputs with >= 8 channels take the
same path (compute_format). Against float64, on geometries that cut the merging at every
image edge, chunk boundary (K past 256) and thread split."""
import pytest
import torch
import torch.nn.functional as F

import convx


@pytest.fixture(autouse=True)
def _gemm_paths():
    """1 x r / r x 1 layers take Winograd along the line when it is on (test_winograd_line.py):
    the GEMM path is this file's subject."""
    with convx.backends.cpu.flags(winograd=False):
        yield

# N, C, H, W, K, (R, S), stride, (pad_h, pad_w), dilation, groups
CASES = {
    "stem_3ch_7x7_s2": (2, 3, 30, 27, 16, (7, 7), 2, (3, 3), 1, 1),
    "3x3_s2": (2, 40, 15, 16, 36, (3, 3), 2, (1, 1), 1, 1),
    "1x7": (2, 24, 9, 17, 20, (1, 7), 1, (0, 3), 1, 1),
    "7x1_no_pad": (1, 20, 17, 9, 28, (7, 1), 1, (0, 0), 1, 1),
    # (padding not a multiple of the dilation: a multiple takes Winograd's phases, test_winograd.py)
    "dilated_no_merge": (2, 16, 14, 14, 24, (3, 3), 1, (3, 2), 2, 1),
    "k_past_256": (1, 40, 12, 12, 20, (3, 3), 1, (1, 1), 1, 1),  # C*R*S = 360: two chunks, a tap cut
    # 25 output rows: the columns split (K < 2 * 25: not weights_in_place's path)
    "few_rows": (1, 64, 9, 9, 40, (3, 3), 2, (1, 1), 1, 1),
    "5x5_odd": (3, 5, 13, 11, 7, (5, 5), 2, (2, 1), 1, 1),
    "dilated_rows_merge": (2, 12, 16, 15, 20, (3, 3), 1, (2, 1), (2, 1), 1),  # whole rows, dilation 2 down
    "3ch_valid": (1, 3, 12, 12, 8, (3, 3), 1, (0, 0), 1, 1),  # every receptive field inside: whole rows
    # Wide images: most register tiles' rows read in place (im2col_nhwc_direct), the reduction in
    # blocks of whole filter rows (S*C <= 256: several runs a block) or equal pieces of one (> 256),
    # the tiles at the image's edges and across its rows made as above; 40 output channels cut the
    # column tile.
    "direct_3x5": (2, 16, 20, 40, 40, (3, 5), 1, (1, 2), 1, 1),  # (off Winograd: not 3x3)
    "direct_pieces_s2": (1, 100, 9, 60, 20, (3, 3), 2, (1, 1), 1, 1),  # S*C = 300: pieces of 150
    "direct_dilated_down": (1, 8, 30, 40, 24, (3, 3), 1, (2, 1), (2, 1), 1),  # runs 2 rows apart
    "direct_7x1": (1, 128, 17, 30, 40, (7, 1), 1, (3, 0), 1, 1),  # 2 runs a block, then 1
    "direct_stem": (2, 3, 64, 64, 16, (7, 7), 2, (3, 3), 1, 1),  # 7 runs of 21 floats
    # rows 4 KiB apart (1024 channels; 512 at stride 2) would crowd L1's sets: made by the rows
    # callback instead of read in place (gemm.h's l1_sets_crowded) on an 8-way L1; gathered in
    # place on a 12-way one (l1_ways)
    # B packed whole (K * 32 columns under 1 MiB): 1920 rows in two chunks, each through both
    # reduction blocks (240 + 120) before the next chunk
    "row_chunks_all_blocks": (2, 24, 24, 40, 20, (3, 5), 1, (1, 2), 1, 1),
    "direct_rows_4k_apart": (1, 1024, 3, 30, 40, (1, 3), 1, (0, 1), 1, 1),
    "direct_rows_4k_apart_s2": (1, 512, 5, 60, 24, (3, 3), 2, (1, 1), 1, 1),
    # NCHW with few channels and C*R*S >= 96, output channels not a multiple of 8 (forward_nchw_rows:
    # blocks of output rows made [pixels][K] and transposed into the planes; a multiple of 8 takes
    # grouped.cpp's NCHW kernel, tests/test_cpu_few_channels.py): two blocks an image, the last one
    # short, 76 output channels (a 64-channel tile of the transpose and 12 more), pixels not a
    # multiple of 8
    "nchw_rows_blocks": (2, 3, 70, 91, 76, (7, 7), 2, (3, 3), 1, 1),
    "nchw_rows_dilated": (1, 4, 40, 33, 13, (5, 5), 1, (4, 3), 2, 1),  # no run read in place
    "nchw_rows_7ch_s1": (1, 7, 11, 13, 9, (4, 4), 1, (2, 1), 1, 1),  # C*R*S = 112, stride 1, one block
    # a result of 8 MiB or more (isa_each.h's kStreamBytes), 16k pixels a plane: the blocks written
    # to the planes with streaming stores on AVX-512 (16 x 16 blocks, then 8 channels by the 8 x 8
    # ones, then 4)
    "nchw_rows_streamed": (2, 3, 256, 256, 76, (7, 7), 2, (3, 3), 1, 1),
    # 64 channels a group or more: every tile's rows gathered in place (im2col_nhwc_gather), a tap's
    # channels a run, a block of the reduction whole taps (up to 4) or a piece of one; tiles across
    # image rows and at the edges (their taps outside the image read as zeros), the runs whose rows
    # are all outside left out (7x1: a tile inside the first or last output rows)
    "gather_7x1_zero_runs": (2, 64, 9, 13, 40, (7, 1), 1, (3, 0), 1, 1),
    "gather_96ch_2_taps": (1, 96, 14, 14, 40, (3, 3), 2, (1, 1), 1, 1),
    # 4 taps a block; 1440 output pixels: chunks of 512 rows, groups of 32 tiles, the next group's
    # rows gathered and prefetched ahead
    "gather_64ch_4_taps": (3, 64, 20, 24, 40, (3, 5), 1, (1, 2), 1, 1),
    "gather_512ch_pieces": (1, 512, 9, 9, 20, (3, 3), 1, (2, 2), 2, 1),  # blocks of 256, half a tap
    # from 8 tiles of rows (96 on AVX-512): blocks of up to 1536 floats, 12 taps (gemm.h's kGatherKC,
    # kGatherRuns): 3 taps of 512 channels with zero runs at the edges, 25 taps as 12 + 12 + 1,
    # 2048 channels in pieces of 1024
    "gather_long_512ch_s2": (1, 512, 21, 21, 40, (3, 3), 2, (1, 1), 1, 1),
    "gather_long_5x5_12_taps": (1, 64, 14, 14, 24, (5, 5), 1, (2, 2), 1, 1),
    "gather_long_2048ch": (2, 2048, 13, 13, 16, (3, 3), 2, (1, 1), 1, 1),
    # 1x1 at a stride, unpadded: the pixels read copied out first, then a stride-1 1x1 product
    # (conv2d.cpp's subsampled); 512 channels (rows 4 KiB apart before), stride 3 on a rectangle
    "subsampled_1x1_s2": (2, 100, 15, 13, 70, (1, 1), 2, (0, 0), 1, 1),
    "subsampled_1x1_512ch": (1, 512, 9, 9, 40, (1, 1), 2, (0, 0), 1, 1),
    "subsampled_1x1_s3": (3, 64, 10, 17, 33, (1, 1), 3, (0, 0), 1, 1),
    "padded_1x1_s2_not_subsampled": (2, 64, 9, 9, 40, (1, 1), 2, (1, 1), 1, 1),
    # the same pixels 4 KiB apart on an 8-way L1: gathered from a copy of the input with its pixels
    # 16 floats further apart (conv2d.cpp's pixels_spaced), 2 images of odd size, 70 outputs (a
    # partial panel); dilated 1024 channels at stride 1
    "spaced_512ch_s2_odd": (2, 512, 15, 13, 70, (3, 3), 2, (1, 1), 1, 1),
    "spaced_dilated_1024ch": (1, 1024, 11, 10, 20, (3, 3), 1, (1, 2), 2, 1),
    # a filter row a block where it has 384 floats or more (conv2d.cpp: 3 taps of 128 channels,
    # 3 blocks; 5 taps of 80, 5 blocks), 200 rows
    "gather_filter_rows_128ch": (2, 128, 20, 20, 40, (3, 3), 2, (1, 1), 1, 1),
    "gather_filter_rows_5x5": (2, 80, 10, 10, 24, (5, 5), 1, (2, 2), 1, 1),
    # 33-64 output channels and over 240 rows: the 6 x 64 tile's gathered rows where L2 has 2 MiB
    # (gemm_rows), a whole panel and a partial one (56 columns)
    "gather_6x64": (2, 64, 24, 24, 64, (3, 3), 2, (1, 1), 1, 1),
    "gather_6x64_partial": (2, 64, 24, 24, 56, (3, 3), 2, (1, 1), 1, 1),
    "pieces_300ch_not_gathered": (1, 300, 7, 9, 20, (3, 3), 2, (1, 1), 1, 1),  # pieces of 150: direct()'s
    "gather_48ch_5_taps": (2, 48, 15, 13, 40, (5, 5), 1, (2, 2), 1, 1),  # blocks of 240: 5 taps
    "gather_dilated": (1, 64, 15, 16, 24, (3, 3), 1, (2, 1), 2, 1),
    "gather_48_outputs": (4, 64, 17, 17, 48, (3, 3), 2, (1, 1), 1, 1),  # on the 12 x 32 tile (not 6 x 64)
    # padding at the left and right only: the GEMM's rows down the image's columns (a tile's pixels
    # share their taps outside), each row of C where its pixel is; tiles across columns and images
    "gather_columns_1x7": (2, 128, 17, 17, 40, (1, 7), 1, (0, 3), 1, 1),
    "gather_columns_1x5_odd": (3, 64, 13, 9, 33, (1, 5), 1, (0, 2), 1, 1),
    "gather_columns_3x3_s2": (2, 64, 5, 30, 70, (3, 3), 2, (0, 1), 1, 1),
    # fewer channels, filter rows of 80 floats or more: gathered from a zero-padded copy of the
    # input, a filter row a run (whole rows a block, or pieces of one past 256 floats)
    "padded_16ch_5x5": (2, 16, 14, 13, 40, (5, 5), 1, (2, 2), 1, 1),
    "padded_32ch_3x3_s2": (2, 32, 15, 17, 36, (3, 3), 2, (1, 1), 1, 1),
    "padded_dilated_rows": (1, 20, 16, 15, 24, (3, 5), 1, (2, 2), (2, 1), 1),
    "padded_1x7_16ch": (2, 16, 9, 17, 20, (1, 7), 1, (0, 3), 1, 1),
    "padded_pieces_280": (1, 40, 10, 12, 24, (3, 7), 1, (1, 3), 1, 1),
    # 80 output channels: 64 on the 12 x 32 (or 8 x 32) tile and a last panel of 16 packed 16 wide on
    # the 12 x 16 (8 x 16) tile, rows made or read in place (direct), gathered a tap a run, gathered from the padded copy,
    # and with B packed whole
    "narrow_tail_direct": (2, 12, 20, 40, 80, (3, 5), 1, (1, 2), 1, 1),
    "narrow_tail_gather": (2, 64, 15, 15, 80, (3, 3), 2, (1, 1), 1, 1),  # 128 rows: the 8 x 32 / 8 x 16 tiles
    "narrow_tail_gather_12": (4, 64, 17, 17, 80, (3, 3), 2, (1, 1), 1, 1),  # 324 rows: 12 x 32 / 12 x 16
    "narrow_tail_padded": (2, 16, 14, 13, 72, (5, 5), 1, (2, 2), 1, 1),
    "narrow_tail_b_whole": (2, 24, 24, 40, 80, (3, 5), 1, (1, 2), 1, 1),
    # channels_last, a reduction of at most 64 and a result of 8 MiB or more: the tiles read in
    # place write it by streaming stores (gemm_rows' stream), the edge tiles (rows made) by ordinary
    # ones; 64 output channels (the 6 x 64 tile on AVX-512), 16 (12 x 16), 48 (8 x 48)
    "streamed_64k": (1, 3, 256, 256, 64, (3, 3), 1, (1, 1), 1, 1),
    "streamed_16k": (1, 3, 256, 512, 16, (3, 3), 1, (1, 1), 1, 1),
    "streamed_48k": (1, 3, 211, 214, 48, (3, 3), 1, (1, 1), 1, 1),
    # channels_last, few channels (C < 8) and C*R*S <= 64, padded: from a zero-padded copy of the
    # input, tiles within an output row read in place, those across two rows made (no gather);
    # rows of 32 and 40 pixels (AVX-512's 8-row tiles, every tile within a row; 12-row ones cross
    # rows elsewhere), stride 2 with a 5x5, and padding at the left and right only with 20 output
    # channels (a partial panel)
    "padded_few_3x3": (4, 3, 30, 32, 16, (3, 3), 1, (1, 1), 1, 1),
    "padded_few_3x3_40_cols": (2, 3, 11, 40, 32, (3, 3), 1, (1, 1), 1, 1),
    "padded_few_5x5_s2": (3, 2, 31, 29, 24, (5, 5), 2, (2, 2), 1, 1),
    "padded_few_cols_only": (2, 7, 9, 23, 20, (1, 3), 1, (0, 1), 1, 1),
}


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_forward_matches_float64(case, layout):
    N, C, H, W, K, (R, S), stride, pad, dil, groups = case
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    dil = dil if isinstance(dil, tuple) else (dil, dil)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, W, generator=g).contiguous(memory_format=mf)
    w = torch.randn(K, C // groups, R, S, generator=g).contiguous(memory_format=mf)
    b = torch.randn(K, generator=g)
    y = torch.ops.convx.conv2d(x, w, b, [stride, stride], [pad[0], pad[0], pad[1], pad[1]], list(dil), groups)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride, pad, dil, groups)
    mag = F.conv2d(x.double().abs(), w.double().abs(), b.double().abs(), stride, pad, dil, groups)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=mf)
    err = (y.double() - ref).abs()
    assert (err <= 16 * 2.0 ** -24 * mag + 1e-30).all(), (err / mag).max().item() / 2.0 ** -24


# Rules that read L1's associativity (gemm.h's l1_ways): on an 8-way L1 a tile's rows 4 KiB apart
# are copied (im2col_nhwc_rows), or, for a gathered layer, read from a copy of the input with its
# pixels spaced out (conv2d.cpp's pixels_spaced: 512 channels at stride 2, 2048, NCHW too); on a
# 12-way one they are gathered in place. Both sides on any machine, in subprocesses with
# CONVX_CPU_L1_WAYS set.
_L1_CHILD = """
import json, sys
import torch, torch.nn.functional as F
import convx
convx.backends.cpu.winograd = False  # the GEMM paths (this file's subject)
for case in json.loads(sys.argv[1]):
    N, C, H, W, K, (R, S), stride, pad, dil, groups = case
    for mf in (torch.channels_last, torch.contiguous_format):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N, C, H, W, generator=g).contiguous(memory_format=mf)
        w = torch.randn(K, C // groups, R, S, generator=g).contiguous(memory_format=mf)
        b = torch.randn(K, generator=g)
        y = torch.ops.convx.conv2d(x, w, b, [stride, stride], [pad[0], pad[0], pad[1], pad[1]], [dil, dil], groups)
        ref = F.conv2d(x.double(), w.double(), b.double(), stride, pad, dil, groups)
        mag = F.conv2d(x.double().abs(), w.double().abs(), b.double().abs(), stride, pad, dil, groups)
        assert y.shape == ref.shape and y.is_contiguous(memory_format=mf), case
        err = (y.double() - ref).abs()
        assert (err <= 16 * 2.0 ** -24 * mag + 1e-30).all(), (case, (err / mag).max().item() / 2.0 ** -24)
print("ok")
"""


@pytest.mark.parametrize("ways", ["8", "12"])
def test_l1_ways_both_sides(ways):
    import json
    import os
    import subprocess
    import sys
    names = ["direct_rows_4k_apart", "direct_rows_4k_apart_s2", "gather_long_512ch_s2", "gather_long_2048ch",
             "gather_512ch_pieces", "gather_6x64", "spaced_512ch_s2_odd", "spaced_dilated_1024ch"]
    env = dict(os.environ, CONVX_CPU_L1_WAYS=ways)
    out = subprocess.run([sys.executable, "-c", _L1_CHILD, json.dumps([CASES[n] for n in names])],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def _on_1_and_2_threads(x, w, *args):
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = torch.ops.convx.conv2d(x, w, None, *args)
        torch.set_num_threads(2)
        y2 = torch.ops.convx.conv2d(x, w, None, *args)
    finally:
        torch.set_num_threads(old)
    return y1, y2


@pytest.mark.parametrize("case", ["direct_3x5", "direct_pieces_s2", "direct_7x1", "nchw_rows_blocks",
                                  "nchw_rows_streamed", "streamed_64k", "padded_few_3x3",
                                  "gather_64ch_4_taps", "gather_7x1_zero_runs", "gather_columns_1x7",
                                  "padded_16ch_5x5", "gather_long_512ch_s2", "gather_long_5x5_12_taps",
                                  "gather_filter_rows_128ch", "gather_6x64_partial", "spaced_512ch_s2_odd",
                                  "subsampled_1x1_s2"])
def test_direct_rows_thread_count(case):
    """Rows read in place or made, split between 1 or 2 threads: the same bits (the NCHW case:
    its blocks of output rows split between the threads)."""
    N, C, H, W, K, (R, S), stride, pad, dil, groups = CASES[case]
    mf = torch.contiguous_format if case.startswith("nchw") else torch.channels_last
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, C, H, W, generator=g).contiguous(memory_format=mf)
    w = torch.randn(K, C, R, S, generator=g).contiguous(memory_format=mf)
    y1, y2 = _on_1_and_2_threads(x, w, [stride, stride], [pad[0], pad[0], pad[1], pad[1]], [dil, dil], groups)
    assert torch.equal(y1, y2)


def test_nchw_weight_and_thread_count():
    """An NCHW weight with a channels_last input, and 1 vs 2 threads: the same bits."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 40, 15, 16, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(36, 40, 3, 3, generator=g)
    y1, y2 = _on_1_and_2_threads(x, w, [2, 2], [1, 1, 1, 1], [1, 1], 1)
    assert torch.equal(y1, y2)
    ref = F.conv2d(x.double(), w.double(), None, 2, 1)
    torch.testing.assert_close(y2.double(), ref, atol=1e-4, rtol=1e-5)


# NCHW data gradients at stride 1 run as the forward convolution of dY with the rotated,
# transposed weight (data_grad_as_forward): padding d*(R-1) - pad on each side, so asymmetric
# and dilated cases, and a padding past d*(R-1) (the other path) and a stride of 2 (ditto), and
# weights that outnumber dY (C*R*S > N*Ho*Wo: the other path); odd channel counts past one
# 64 x 64 tile of the rotated weight's transposes.
DGRAD_CASES = {
    "1x7": (2, 24, 9, 17, 20, (1, 7), 1, (0, 0, 3, 3), (1, 1)),
    "7x1": (1, 20, 17, 9, 28, (7, 1), 1, (3, 3, 0, 0), (1, 1)),
    "asym_dilated": (2, 12, 13, 15, 16, (3, 3), 1, (2, 0, 1, 3), (2, 1)),
    "5x5_valid": (1, 16, 24, 24, 10, (5, 5), 1, (0, 0, 0, 0), (1, 1)),
    "odd_channels": (2, 70, 24, 24, 67, (3, 5), 1, (1, 1, 2, 2), (1, 1)),
    "weights_outnumber_dy": (2, 64, 5, 5, 32, (3, 3), 1, (1, 1, 1, 1), (1, 1)),
    "pad_past_kernel": (1, 16, 8, 8, 12, (3, 3), 1, (3, 1, 1, 1), (1, 1)),
    "stride2": (2, 16, 11, 11, 12, (3, 3), 2, (1, 1, 1, 1), (1, 1)),
    # channels_last runs these as forwards too: dX's channels whole 32-column tiles
    "1x7_32ch": (2, 32, 9, 17, 20, (1, 7), 1, (0, 0, 3, 3), (1, 1)),
    "5x5_64ch": (1, 64, 44, 44, 24, (5, 5), 1, (2, 2, 2, 2), (1, 1)),
    "asym_dilated_32ch": (2, 32, 13, 15, 16, (3, 3), 1, (2, 0, 1, 3), (2, 1)),
    # dY with 64 channels: the forward's rows gathered (down the columns for the 1x7)
    "1x7_64ch_gathered": (2, 32, 9, 17, 64, (1, 7), 1, (0, 0, 3, 3), (1, 1)),
    "7x1_64ch_gathered": (1, 40, 17, 9, 64, (7, 1), 1, (3, 3, 0, 0), (1, 1)),
}


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", list(DGRAD_CASES.values()), ids=list(DGRAD_CASES))
def test_data_grad(case, layout):
    N, C, H, W, K, (R, S), stride, pad, dil = case
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64)
    w = torch.randn(K, C, R, S, generator=g)
    t, b, l, r = pad
    xp = F.pad(x, (l, r, t, b)).requires_grad_()
    y = F.conv2d(xp, w.double(), None, stride, 0, dil)
    gy = torch.randn(y.shape, generator=g)
    ref, = torch.autograd.grad(y, xp, gy.double())
    ref = ref[:, :, t:t + H, l:l + W]
    got = torch.ops.convx.conv2d_backward_input(gy.contiguous(memory_format=mf), w.contiguous(memory_format=mf),
                                                [N, C, H, W], [stride, stride], list(pad), list(dil), 1)
    assert got.shape == ref.shape and got.is_contiguous(memory_format=mf)
    torch.testing.assert_close(got.double(), ref, atol=1e-4, rtol=1e-5)


# Few output pixels in the batch against many weights (weights_in_place: N*Ho*Wo <= 256 and
# K >= 2*N*Ho*Wo, one group; a spatial kernel or, in NCHW, also 1x1): the weights are the GEMM's A read in place, the
# images' im2col side by side (tap-major for a channels_last weight) its B, and the result goes
# through a buffer to the images (bias added there).
IN_PLACE_CASES = {
    "3x3_batch2": (2, 24, 4, 4, 70, (3, 3), 1, (1, 1, 1, 1), (1, 1)),
    "s2_asym": (3, 16, 9, 7, 100, (3, 3), 2, (1, 0, 1, 2), (1, 1)),
    "1x3_one_image": (1, 12, 5, 5, 56, (1, 3), 1, (0, 0, 1, 1), (1, 1)),
    "dilated": (2, 8, 6, 6, 150, (3, 3), 1, (2, 2, 2, 2), (2, 2)),
    "1x1": (2, 40, 5, 5, 110, (1, 1), 1, (0, 0, 0, 0), (1, 1)),  # NCHW: the planes side by side
    "1x1_s2": (3, 24, 7, 7, 100, (1, 1), 2, (0, 0, 0, 0), (1, 1)),
}


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("case", list(IN_PLACE_CASES.values()), ids=list(IN_PLACE_CASES))
def test_weights_in_place_forward(case, bias, layout):
    N, C, H, W, K, (R, S), stride, pad, dil = case
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, C, H, W, generator=g)
    w = torch.randn(K, C, R, S, generator=g)
    b = torch.randn(K, generator=g) if bias else None
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    got = torch.ops.convx.conv2d(x, w, b, [stride, stride], list(pad), list(dil), 1)
    t, bt, l, r = pad
    ref = F.conv2d(F.pad(x.double(), (l, r, t, bt)), w.double(), None if b is None else b.double(), stride, 0, dil)
    assert got.shape == ref.shape
    assert got.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    torch.testing.assert_close(got.double(), ref, atol=1e-4, rtol=1e-5)
