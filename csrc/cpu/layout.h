// NCHW <-> NHWC copies of 4-byte tensors: per image, the [C][HW] matrix
// transposed to [HW][C] (or back) in 64 x 64 tiles of 16 x 16 AVX-512 or 8 x 8 AVX2 transposes,
// every tile a separate task. torch's copy between the two layouts ran at
// 3-14 GB/s here (2 threads: 3.6 ms for 8 x 128 x 56 x 56 to channels_last,
// 18.8 ms for 8 x 64 x 112 x 112 back), against 50 GB/s for a plain copy;
// the convolution paths that compute in the other layout pay it twice a call.
#pragma once

#include <ATen/core/Tensor.h>

namespace convx::cpu {

// t in memory format mf: t itself when it already is; a tiled transpose when t
// is a 4-byte, 4-D tensor dense in the other of NCHW / channels_last; else
// t.contiguous(mf).
at::Tensor to_format(const at::Tensor& t, at::MemoryFormat mf);

// Scratch tensors for a convolution that computes in the other layout: the
// operands' copies and the result before its copy back live only during the
// call, and each fresh allocation of them faulted in new pages on every call
// (glibc hands large blocks back to the kernel when freed; here a 4 KiB page
// fault costs about 1.4 us: 12.8 MB of activations, 4.5 ms). These tensors
// view the calling thread's buffer `slot` (gemm.h's kLayoutFirst / Second,
// kept between calls; one use of a slot at a time) and are valid until the
// thread's next use of that slot: never return one. Above 64 MiB (a cap on
// what the buffers keep) they are ordinary allocations.
constexpr int64_t kScratchCapBytes = int64_t(64) << 20;
constexpr int64_t kScratchCapFloats = kScratchCapBytes / 4;
at::Tensor scratch_empty(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat mf, int slot);
// A result computed in format cf and copied to format mf afterwards: a scratch
// tensor unless its sizes make it dense in mf too (then to_format(t, mf) would
// return it as it is), when it is an ordinary one.
at::Tensor scratch_result(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat cf,
                          at::MemoryFormat mf, int slot);
// t in memory format mf: t itself when it already is, else a scratch copy (as to_format's).
at::Tensor to_format_scratch(const at::Tensor& t, at::MemoryFormat mf, int slot);

// A 4-D float32 tensor [N, C, H, W] (any layout) as a scratch tensor in `slot` laid out as
// channels_last with its pixels `pixel_stride` >= C floats apart (strides {H*W*pixel_stride, 1,
// W*pixel_stride, pixel_stride}; the floats between a pixel's channels and the next pixel's are
// left unset): an NCHW one by the tiled transpose, a channels_last one by a copy a pixel. Rows
// of pixels 4 KiB apart land on one L1 set; a few floats more each spreads them (conv2d.cpp's
// pixels_spaced). Above kScratchCapBytes an ordinary allocation.
at::Tensor channels_last_spaced(const at::Tensor& t, int64_t pixel_stride, int slot);

// A convolution weight [K, C, R, S] (any strides) rotated 180 degrees and
// transposed: [C, K, R, S] in channels_last, out[c][k][r][s] = w[k][c][R-1-r][S-1-s]
// (the weight of a data gradient computed as a forward of dY), a scratch
// tensor in `slot` for dense 4-byte weights (an NCHW one goes through a
// channels_last copy in tmp_slot first), else an ordinary one. With groups,
// within each group: w [G*Kg, Cg, R, S] -> [G*Cg, Kg, R, S],
// out[g*Cg + c][k][r][s] = w[g*Kg + k][c][R-1-r][S-1-s].
at::Tensor rotated_weight_scratch(const at::Tensor& w, int slot, int tmp_slot, int64_t groups = 1);

// dst[n][j][i] = src[n][i][j] for i < rows, j < cols, n < batch (4-byte elements).
// stream: on AVX-512, a dst 64-byte aligned with rows a multiple of 16 floats apart is written
// with streaming stores (whole lines past the caches, no read of them first) -- for a result
// that is written once and not read back by the caller (to_format's results of isa_each.h's
// kStreamBytes or more). A scratch copy read next by a convolution keeps ordinary stores: streamed, the
// convolution read it back from DRAM (NCHW 128 @56 stride 2, batch 8: +3 %).
void transpose_batch(const float* src, float* dst, int64_t batch, int64_t rows, int64_t cols, bool stream = false);
// dst[j * ld + i] = src[i * ls + j] for i < rows, j < cols, on the calling thread (the same 16 x 16
// AVX-512 or 8 x 8 AVX2 transposes where the CPU has them; stream as transpose_batch's).
void transpose_strided(const float* src, int64_t ls, float* dst, int64_t ld, int64_t rows, int64_t cols,
                       bool stream = false);

}  // namespace convx::cpu
