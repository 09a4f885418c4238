"""The CPU weight gradient's paths, against float64 (csrc/cpu/conv2d.cpp):

* float32 with a spatial kernel and >= 8 channels a group is computed in channels_last
  whatever the layout (weight_grad_format);
* channels_last float32 at stride 1 on images of 32 x 32 output pixels or more (or more
  than 256 where the next path does not apply): no im2col, each tap's columns read in
  place from a zero-padded copy of the input (wgrad_nhwc_shifted), any kernel size,
  dilation, padding and groups;
* channels_last float32 whose channels fill whole register tiles (stride_w * C, K < 512): both
  operands read in place by the tile, a run of output pixels an image row for each tap
  (wgrad_nhwc_in_place), any kernel, stride, padding, dilation and groups; units of
  (group, tap, row block, column block) and chunks of the output rows, or (X and dY past L2, dW
  up to 512 KiB) chunks of the output rows each through every tap and group a block of rows at a
  time; the tile chosen by the columns too (AVX-512's 8 x 48 for multiples of 48, 16 x 16 for
  other multiples of 16);
* a channels_last 1x1 layer whose input channels fill no tile but whose output channels do: dW^T
  as the layer's with X and dY swapped, read in place, then transposed;
* grouped float32 (either layout) whose groups fill whole register tiles (Kg a multiple of the
  tile's rows, Cg of its 32 or 16 columns; AVX-512's 16 x 16 tile for 16-channel groups), under
  32 x 32 output pixels (16 x 16 for 16-column tiles in channels_last): each group's X and dY
  copied out ([G][pixels][Cg], regroup), then the same in-place tiles on the copies;
* channels_last float32, one group, under 128 channels, K a multiple of the widest tile's
  columns that divide it, a kernel wider than 1 at dilation 1 along W, where the in-place tiles
  do not apply or the image is large (stride 1, 32 x 32 output pixels): the input padded along W,
  a filter row's S*C floats as the tile's rows read in place (wgrad_nhwc_filter_rows), the filter
  rows above or below the image skipped; dW^T summed in chunks of output rows where there are
  fewer than 8 tiles;
* other channels_last float32 (and 1x1 layers with >= 4096 output pixels, <= 512 input
  channels, K * C <= 128 Ki, one group): im2col written into the micro-kernel's panels
  (wgrad_nhwc_tiles) over the whole batch's pixels; units of (group, block of dW's
  columns, chunk of the pixels), the chunks summed into copies of dW added in order;
* a strided unpadded 1x1 layer (either layout, float32 and float64): the pixels it reads
  (X[:, :, ::stride_h, ::stride_w]) gathered once, then the stride-1 1x1 layer's paths on them;
* NCHW (fewer than 8 channels a group, float64): im2col in blocks of output rows, the
  1x1 input read as the column matrix; float32 with a spatial kernel and fewer than 8 channels
  (the 3-channel stems) computes there from NCHW images over 64 x 64 pixels, while
  channels_last (and smaller NCHW images, copied) takes its own paths (filter rows where K fills
  whole tiles, else the tiles).

Shapes cut every register tile (Kg not a multiple of 12 or 6, Cg*R*S not of 32 or 16).
"""
import pytest
import torch
import torch.nn.functional as F

import convx


@pytest.fixture(autouse=True)
def _gemm_paths():
    """Winograd (3x3 layers with enough tiles, test_winograd.py; 1 x 7 / 7 x 1 along the line,
    test_winograd_line.py) off: the paths below are this file's subject."""
    with convx.backends.cpu.flags(winograd=False):
        yield

# N, C, H, W, K, (R, S), stride, (top, bottom, left, right) padding, dilation, groups
CASES = {
    "3x3_s1": (2, 24, 13, 11, 20, (3, 3), 1, (1, 1, 1, 1), 1, 1),
    "3x3_s1_big": (2, 64, 30, 30, 64, (3, 3), 1, (1, 1, 1, 1), 1, 1),
    "asym_pad_dil": (2, 16, 12, 15, 13, (3, 3), 1, (2, 0, 1, 3), 2, 1),
    "1x7": (3, 20, 9, 17, 36, (1, 7), 1, (0, 0, 3, 3), 1, 1),
    "5x5_valid": (1, 40, 20, 20, 24, (5, 5), 1, (0, 0, 0, 0), 1, 1),
    "groups_cg8": (2, 32, 10, 10, 40, (3, 3), 1, (1, 1, 1, 1), 1, 4),
    "groups_cg20": (2, 40, 9, 9, 26, (3, 3), 1, (1, 1, 1, 1), 1, 2),
    "stride2": (2, 24, 17, 17, 30, (3, 3), 2, (1, 1, 1, 1), 1, 1),
    "stride2_big": (1, 64, 56, 56, 64, (3, 3), 2, (1, 1, 1, 1), 1, 1),
    "1x1": (2, 48, 14, 14, 40, (1, 1), 1, (0, 0, 0, 0), 1, 1),
    # NCHW 1x1 from 128 pixels an image: one product an image on the planes (no gathered copies);
    # under 128 (1x1_512ch_packed below) several images' planes side by side
    "1x1_per_image": (3, 40, 12, 11, 36, (1, 1), 1, (0, 0, 0, 0), 1, 1),
    "1x1_s2": (2, 48, 14, 14, 40, (1, 1), 2, (0, 0, 0, 0), 1, 1),
    # strided unpadded 1x1: the pixels it reads gathered, then the stride-1 1x1 paths (odd sizes,
    # unequal strides, dilation (no effect on 1x1), groups, 512 channels: the packed GEMM)
    "1x1_s2_odd": (3, 36, 15, 13, 20, (1, 1), 2, (0, 0, 0, 0), 1, 1),
    "1x1_s3x2_dil": (2, 24, 11, 12, 16, (1, 1), (3, 2), (0, 0, 0, 0), 2, 1),
    "1x1_s2_groups": (2, 32, 10, 11, 24, (1, 1), 2, (0, 0, 0, 0), 1, 2),
    "1x1_s2_512ch": (1, 512, 9, 9, 64, (1, 1), 2, (0, 0, 0, 0), 1, 1),
    "1x1_s2_in_place": (2, 64, 20, 20, 64, (1, 1), 2, (0, 0, 0, 0), 1, 1),
    "1x1_s2_padded": (2, 24, 10, 10, 16, (1, 1), 2, (1, 1, 1, 1), 1, 1),  # padded: not gathered
    # channels_last 1x1 with >= 4096 pixels, <= 512 input channels and a small dW: the tiles path
    # (whole row panels of dY^T in place where Kg fills them, partial ones packed)
    "1x1_tiles_long": (2, 24, 48, 48, 20, (1, 1), 1, (0, 0, 0, 0), 1, 1),
    # 80 columns (an odd number of 16), K >= 512 (not in place): AVX-512's 16 x 16 tile
    "1x1_tiles_16x16": (1, 80, 64, 64, 512, (1, 1), 1, (0, 0, 0, 0), 1, 1),
    "1x1_tiles_8x48": (1, 48, 64, 64, 520, (1, 1), 1, (0, 0, 0, 0), 1, 1),  # 48 columns: AVX-512's 8 x 48
    # in place on AVX-512's 8 x 48 (48 columns, rows of 8) and 16 x 16 (16 columns, rows of 16) tiles
    "1x1_in_place_8x48": (2, 48, 12, 11, 40, (1, 1), 1, (0, 0, 0, 0), 1, 1),
    "1x1_in_place_16x16": (2, 16, 12, 11, 48, (1, 1), 1, (0, 0, 0, 0), 1, 1),
    "3x3_in_place_8x48": (2, 48, 9, 8, 40, (3, 3), 1, (1, 1, 1, 1), 1, 1),
    # input channels that fill no whole tile, output channels that do: dW^T in place (X and dY in
    # each other's roles), transposed; expanding (24 -> 144: 8 x 48 on AVX-512) or not (40 -> 32),
    # and after the stride-2 gather
    "1x1_swapped_expand": (2, 24, 12, 11, 144, (1, 1), 1, (0, 0, 0, 0), 1, 1),
    "1x1_swapped_reduce": (2, 40, 10, 9, 32, (1, 1), 1, (0, 0, 0, 0), 1, 1),
    "1x1_s2_swapped": (2, 24, 14, 13, 144, (1, 1), 2, (0, 0, 0, 0), 1, 1),
    "1x1_tiles_k512": (1, 40, 64, 64, 512, (1, 1), 1, (0, 0, 0, 0), 1, 1),
    "1x1_s2_tiles": (2, 36, 96, 90, 24, (1, 1), 2, (0, 0, 0, 0), 1, 1),  # gathered, then the tiles
    "large_image": (1, 16, 96, 96, 16, (3, 3), 1, (1, 1, 1, 1), 1, 1),
    "tiny_images": (40, 16, 4, 4, 20, (3, 3), 1, (1, 1, 1, 1), 1, 1),  # pixel chunks across images
    "late_3x3": (4, 64, 7, 7, 40, (3, 3), 1, (1, 1, 1, 1), 1, 1),  # > 16 column panels: column blocks
    "stem_c3": (2, 3, 20, 20, 16, (7, 7), 2, (3, 3, 3, 3), 1, 1),  # < 8 channels: the layout's own path
    "few_ch_k24_7x7_s2": (2, 3, 30, 29, 24, (7, 7), 2, (3, 3, 3, 3), 1, 1),
    "one_ch_5x5": (3, 1, 12, 13, 32, (5, 5), 1, (2, 2, 2, 2), 1, 1),
    "few_ch_11x11_s4": (1, 3, 41, 43, 32, (11, 11), 4, (2, 2, 2, 2), 1, 1),
    "1x1_in_place": (2, 64, 20, 20, 64, (1, 1), 1, (0, 0, 0, 0), 1, 1),  # one tile block: pixel chunks
    "1x1_288ch_packed": (1, 288, 6, 7, 288, (1, 1), 1, (0, 0, 0, 0), 1, 1),  # over 256 channels: not in place
    # in place in 2 x 2 blocks cut evenly (144 + 144 columns, the rows about 132 + 132)
    "3x3_in_place_even_blocks": (1, 288, 6, 5, 264, (3, 3), 1, (1, 1, 1, 1), 1, 1),
    "1x1_in_place_groups": (2, 64, 9, 9, 32, (1, 1), 1, (0, 0, 0, 0), 1, 2),  # Kg 16, Cg 32: regrouped
    # 256 channels, 4,704 pixels of 28 x 28 images: the tiles where L2 has under 2 MiB, else the GEMM
    "1x1_256ch_l2_choice": (6, 256, 28, 28, 40, (1, 1), 1, (0, 0, 0, 0), 1, 1),
    "1x7_in_place": (3, 32, 9, 17, 24, (1, 7), 1, (0, 0, 3, 3), 1, 1),  # runs cut by the padding
    "3x3_s2_in_place": (2, 32, 15, 16, 16, (3, 3), 2, (1, 1, 1, 1), 1, 1),
    "3x3_s2_256ch_tiles": (1, 256, 13, 12, 24, (3, 3), 2, (1, 1, 1, 1), 1, 1),  # X's step 2 KiB: tiles
    "asym_dil_in_place": (2, 32, 12, 15, 32, (3, 3), 1, (2, 0, 1, 3), 2, 1),
    # dilated, whole tiles: in place whatever the channels (512 here) or the image's size (1089
    # output pixels), not the shifted path (which computes the padding's pixels too)
    "dil4_512ch_in_place": (1, 512, 12, 12, 512, (3, 3), 1, (4, 4, 4, 4), 4, 1),
    "dil2_large_in_place": (1, 128, 33, 33, 24, (3, 3), 1, (2, 2, 2, 2), 2, 1),
    "5x5_s2_groups_in_place": (2, 64, 13, 11, 32, (5, 5), 2, (2, 1, 0, 2), 1, 2),
    "7x1_tall_in_place": (1, 32, 40, 6, 16, (7, 1), 1, (3, 3, 0, 0), 1, 1),  # > 256 pixels: row blocks
    # grouped, whole tiles a group (AVX-512: Cg a multiple of 32, Kg of 8 or 12): regrouped
    "regrouped_cg32_kg32": (2, 64, 9, 10, 64, (3, 3), 1, (1, 1, 1, 1), 1, 2),
    "regrouped_8_groups_7x7": (2, 256, 7, 7, 128, (3, 3), 1, (1, 1, 1, 1), 1, 8),
    "regrouped_s2_dil_asym": (2, 96, 15, 13, 48, (3, 3), 2, (2, 0, 1, 3), 2, 3),
    "regrouped_cg64_1x1": (2, 128, 6, 6, 64, (1, 1), 1, (0, 0, 0, 0), 1, 2),
    "regrouped_kg12": (1, 64, 8, 8, 24, (3, 3), 1, (1, 1, 1, 1), 1, 2),
    "regrouped_pad_past_filter": (1, 64, 5, 5, 32, (3, 3), 1, (3, 3, 3, 3), 1, 2),  # taps that see only padding
    # 16-channel groups, 16 (or 32) output channels a group: AVX-512's 16 x 16 tile
    "regrouped_cg16": (2, 64, 9, 11, 64, (3, 3), 1, (1, 1, 1, 1), 1, 4),
    "regrouped_cg16_kg32_s2": (2, 48, 13, 12, 96, (3, 3), 2, (1, 0, 1, 2), 1, 3),
    "regrouped_cg48": (2, 96, 9, 8, 80, (3, 3), 1, (1, 1, 1, 1), 1, 2),  # 48-channel groups: AVX-512's 8 x 48
    # 16-channel groups on 17 x 17 output pixels: regrouped from NCHW, grouped.cpp's kernel in channels_last
    "regrouped_cg16_17x17": (1, 32, 17, 17, 32, (3, 3), 1, (1, 1, 1, 1), 1, 2),
    "shifted_dilated_large": (1, 32, 36, 36, 32, (3, 3), 1, (2, 2, 2, 2), 2, 1),  # 36 x 36: shifted
    "1x1_512ch_packed": (2, 512, 5, 6, 64, (1, 1), 1, (0, 0, 0, 0), 1, 1),  # rows 2 KiB apart: packed
    # one image's >= 2048 output pixels, < 8 channels: NCHW blocks of output rows, dW^T's rows
    # split between the threads (the im2col's rows read in place)
    "stem_blocked": (2, 3, 100, 98, 20, (7, 7), 2, (3, 3, 3, 3), 1, 1),
    "stem_blocked_few_k": (1, 3, 99, 100, 12, (7, 7), 2, (3, 2, 3, 2), 1, 1),
    # the tiles path with whole row panels (Kg 16: dY read in place), a filter row's taps one
    # run (3 x 10 floats), a last panel of 26 of 32 columns, four chunks of pixels (as VGG's
    # 3-channel first layer past the scratch cap)
    "tiles_dy_in_place": (2, 10, 41, 41, 16, (3, 3), 2, (1, 1, 1, 1), 1, 1),
    # filter rows: 16 channels (5 x 16 floats a row, not a whole number of any tile's rows),
    # 1024+ output pixels at 32 channels (where the shifted path ran), stride 2 with asymmetric
    # padding, padding past the kernel (output rows whose filter rows all miss the image), and
    # 2 tiles (1x3, 8 channels): dW^T summed in chunks of output rows
    "filter_rows_5x5": (2, 16, 28, 27, 32, (5, 5), 1, (2, 2, 2, 2), 1, 1),
    "filter_rows_large": (1, 32, 34, 33, 64, (5, 5), 1, (2, 2, 2, 2), 1, 1),
    "filter_rows_s2_asym": (2, 24, 19, 17, 48, (5, 3), 2, (3, 0, 1, 2), 1, 1),
    "filter_rows_pad_past": (1, 8, 6, 7, 16, (3, 5), 1, (4, 3, 1, 5), 1, 1),
    "filter_rows_chunks": (3, 8, 5, 9, 16, (1, 3), 1, (0, 0, 1, 1), 1, 1),
    # AVX-512's exact row panels (gemm.h's micro_tile_whole_cols with rows): a 3x3 filter row over 3
    # channels on 9 x 16 (CIFAR's stem) and 9 x 32 (stride 2), 6 channels (two 9-row panels), 4
    # channels on 12 x 16
    "filter_rows_9x16_stem": (4, 3, 32, 32, 16, (3, 3), 1, (1, 1, 1, 1), 1, 1),
    "filter_rows_9x32_s2": (2, 3, 67, 66, 32, (3, 3), 2, (1, 1, 1, 1), 1, 1),
    "filter_rows_18_rows": (2, 6, 40, 37, 16, (3, 3), 1, (1, 1, 1, 1), 1, 1),
    "filter_rows_12x16": (2, 4, 41, 40, 16, (3, 3), 1, (1, 0, 1, 2), 1, 1),
    # strided with 8192 input pixels or more a plane: NCHW computes in NCHW (no channels_last copies)
    "stride2_large_plane": (1, 16, 91, 92, 24, (3, 3), 2, (1, 1, 1, 1), 1, 1),
    # in place with the taps inner (X and dY past L2, dW small): 16 chunks of output rows, blocks
    # of whole rows through every tap; padding past the image, dilation, odd sizes
    "taps_inner_stride2": (16, 16, 72, 71, 32, (3, 3), 2, (1, 1, 1, 1), 1, 1),
    "taps_inner_5x5_dil": (16, 16, 70, 64, 16, (5, 5), 2, (3, 1, 2, 4), 2, 1),
    # and grouped (each block through every group): regrouped copies (under 32 x 32 output pixels)
    # and the groups interleaved in place
    "taps_inner_groups_regrouped": (12, 96, 56, 56, 96, (3, 3), 2, (1, 1, 1, 1), 1, 2),
    "taps_inner_groups_interleaved": (10, 96, 66, 68, 96, (3, 3), 2, (1, 1, 1, 1), 1, 2),
}


def _grad64(x, gy, w_shape, stride, pad, dil, groups):
    t, b, l, r = pad
    w = torch.zeros(w_shape, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(F.pad(x.double(), (l, r, t, b)), w, None, stride, 0, dil, groups)
    return torch.autograd.grad(y, w, gy.double())[0]


def _mag64(x, gy, w_shape, stride, pad, dil, groups):
    return _grad64(x.abs(), gy.abs(), w_shape, stride, pad, dil, groups)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_weight_grad_matches_float64(case, layout, dtype):
    N, C, H, W, K, (R, S), stride, pad, dil, groups = case
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, W, generator=g, dtype=dtype).contiguous(memory_format=mf)
    stride = stride if isinstance(stride, tuple) else (stride, stride)
    Ho = (H + pad[0] + pad[1] - dil * (R - 1) - 1) // stride[0] + 1
    Wo = (W + pad[2] + pad[3] - dil * (S - 1) - 1) // stride[1] + 1
    gy = torch.randn(N, K, Ho, Wo, generator=g, dtype=dtype).contiguous(memory_format=mf)
    w_shape = [K, C // groups, R, S]
    gw = torch.ops.convx.conv2d_backward_weight(gy, x, w_shape, list(stride), list(pad), [dil, dil], groups,
                                                False)[0]
    assert gw.shape == tuple(w_shape) and gw.dtype == dtype
    assert gw.is_contiguous(memory_format=mf) or gw.is_contiguous()
    ref = _grad64(x, gy, w_shape, stride, pad, dil, groups)
    mag = _mag64(x, gy, w_shape, stride, pad, dil, groups)
    u = torch.finfo(dtype).eps / 2
    reduction = N * Ho * Wo
    err = (gw.double() - ref).abs()
    # a sum of `reduction` products in float: within (reduction * u) * sum |x||dy|, far looser than
    # what blocked sums give; the check is that nothing is missing, doubled or misplaced
    assert (err <= 2 * reduction * u * mag + 1e-30).all(), err.max().item()
    assert (err <= 1e-4 * mag.max()).all() if dtype == torch.float32 else (err <= 1e-12 * mag.max()).all()


def test_weight_grad_independent_of_thread_count():
    g = torch.Generator().manual_seed(1)
    for case in ("3x3_s1_big", "stride2_big", "groups_cg8", "tiny_images", "late_3x3", "1x1_in_place",
                 "1x7_in_place", "stem_blocked", "regrouped_8_groups_7x7", "regrouped_cg16", "filter_rows_5x5",
                 "filter_rows_chunks", "filter_rows_9x16_stem", "1x1_swapped_expand", "taps_inner_stride2", "taps_inner_5x5_dil",
                 "taps_inner_groups_regrouped", "taps_inner_groups_interleaved"):
        N, C, H, W, K, (R, S), stride, pad, dil, groups = CASES[case]
        for mf in (torch.channels_last, torch.contiguous_format):
            x = torch.randn(N, C, H, W, generator=g).contiguous(memory_format=mf)
            Ho = (H + pad[0] + pad[1] - dil * (R - 1) - 1) // stride + 1
            Wo = (W + pad[2] + pad[3] - dil * (S - 1) - 1) // stride + 1
            gy = torch.randn(N, K, Ho, Wo, generator=g).contiguous(memory_format=mf)
            args = (gy, x, [K, C // groups, R, S], [stride, stride], list(pad), [dil, dil], groups, False)
            old = torch.get_num_threads()
            try:
                torch.set_num_threads(1)
                one = torch.ops.convx.conv2d_backward_weight(*args)[0]
                torch.set_num_threads(2)
                two = torch.ops.convx.conv2d_backward_weight(*args)[0]
            finally:
                torch.set_num_threads(old)
            assert torch.equal(one, two), (case, mf)


_REGROUPED_CHILD = """
import sys, torch, torch.nn.functional as F
import convx
torch.manual_seed(0)
# AVX2 and baseline tiles are 6 x 16: 16-channel groups of 12 output channels fill them (regrouped
# there; on AVX-512 they take the other paths)
for N, C, H, W, K, stride, pad, groups in ((2, 32, 7, 9, 24, 1, 1, 2), (2, 64, 11, 10, 48, 2, 1, 4)):
    for mf in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(N, C, H, W, dtype=torch.float64).contiguous(memory_format=mf)
        w = torch.zeros(K, C // groups, 3, 3, dtype=torch.float64, requires_grad=True)
        y = F.conv2d(x, w, None, stride, pad, 1, groups)
        gy = torch.randn_like(y)
        ref = torch.autograd.grad(y, w, gy)[0]
        got = torch.ops.convx.conv2d_backward_weight(gy.float(), x.float(), list(w.shape), [stride] * 2, [pad] * 4,
                                                     [1, 1], groups, False)[0]
        torch.testing.assert_close(got.double(), ref, atol=2e-4, rtol=1e-4)
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_regrouped_weight_grad_narrower_builds(isa):
    """The regrouped weight gradient with the AVX2 and baseline builds' 6 x 16 tiles."""
    from test_cpu_gemm import run_with_isa
    run_with_isa(_REGROUPED_CHILD, isa)


_FILTER_ROWS_CHILD = """
import torch, torch.nn.functional as F
import convx
torch.manual_seed(0)
# 16 and 48 output channels: whole 16-column tiles on every build (6 x 16 on AVX2 and the baseline)
for N, C, H, W, K, R, S, stride, pad in ((2, 16, 12, 13, 16, 5, 5, 1, 2), (2, 24, 11, 9, 48, 3, 5, 2, 1)):
    x = torch.randn(N, C, H, W, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.zeros(K, C, R, S, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(x, w, None, stride, pad)
    gy = torch.randn_like(y)
    ref = torch.autograd.grad(y, w, gy)[0]
    got = torch.ops.convx.conv2d_backward_weight(gy.float(), x.float(), list(w.shape), [stride] * 2, [pad] * 4,
                                                 [1, 1], 1, False)[0]
    torch.testing.assert_close(got.double(), ref, atol=2e-4, rtol=1e-4)
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_filter_rows_weight_grad_narrower_builds(isa):
    """The filter-row weight gradient with the AVX2 and baseline builds' 6 x 16 tiles."""
    from test_cpu_gemm import run_with_isa
    run_with_isa(_FILTER_ROWS_CHILD, isa)
