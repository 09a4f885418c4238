// See layout.h.
// The vectors never cross a call boundary (pair() is inlined into tile_avx2, block16 into
// tile_avx512; isa_each.h's blocks into their loops). GCC 12 takes the AVX-512 intrinsics'
// deliberately undefined pass-through operands (_mm512_undefined_pd) for uninitialized reads.
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "layout.h"

#include "gemm.h"
#include "isa_each.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/accumulate.h>
#include <c10/util/strides.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>


namespace convx::cpu {
namespace {

constexpr int64_t kTile = 64;

// dst[j][i] = src[i][j] for an ni x nj block (any size), src row stride ls, dst row stride ld.
void block_scalar(const float* src, int64_t ls, float* dst, int64_t ld, int64_t ni, int64_t nj) {
  for (int64_t j = 0; j < nj; ++j)
    for (int64_t i = 0; i < ni; ++i) dst[j * ld + i] = src[i * ls + j];
}

// Rows r and r + 4 of s, 4 floats from column c, as the two lanes of one register.
__attribute__((target("avx2"), always_inline)) inline __m256 pair(const float* s, int64_t ls, int64_t r, int64_t c) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(s + r * ls + c)), _mm_loadu_ps(s + (r + 4) * ls + c),
                              1);
}

// The same for one tile, 8 x 8 blocks in AVX2 registers: the rows' 4-float
// halves are paired by the loads (two lanes of one register), then each lane
// is a 4 x 4 transpose (8 unpacks, 8 shuffles for 64 floats).
__attribute__((target("avx2"), always_inline)) inline void block8(const float* s, int64_t ls, float* d, int64_t ld) {
  for (int64_t c = 0; c < 8; c += 4) {
    const __m256 r0 = pair(s, ls, 0, c), r1 = pair(s, ls, 1, c), r2 = pair(s, ls, 2, c), r3 = pair(s, ls, 3, c);
    const __m256 u0 = _mm256_unpacklo_ps(r0, r1), u1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 u2 = _mm256_unpacklo_ps(r2, r3), u3 = _mm256_unpackhi_ps(r2, r3);
    _mm256_storeu_ps(d + (c + 0) * ld, _mm256_shuffle_ps(u0, u2, _MM_SHUFFLE(1, 0, 1, 0)));
    _mm256_storeu_ps(d + (c + 1) * ld, _mm256_shuffle_ps(u0, u2, _MM_SHUFFLE(3, 2, 3, 2)));
    _mm256_storeu_ps(d + (c + 2) * ld, _mm256_shuffle_ps(u1, u3, _MM_SHUFFLE(1, 0, 1, 0)));
    _mm256_storeu_ps(d + (c + 3) * ld, _mm256_shuffle_ps(u1, u3, _MM_SHUFFLE(3, 2, 3, 2)));
  }
}

// The 8 x 8 blocks visited along the rows of whichever side has the longer row stride: a tile's
// 64 rows at a stride of a multiple of 1 KiB fall in a few of L1's 64 sets (12 ways), so the
// side read or written 8 rows at a time must be that one. With src's rows inner, dst's 64 rows
// (an NCHW image of 112 x 112 planes: 49 KiB apart, 4 sets) thrashed L1: channels_last -> NCHW,
// 8 x 64 x 112 x 112, 6.6 -> 1.3 ms (NCHW -> channels_last, the other order, 1.1-1.3).
__attribute__((target("avx2"))) void tile_avx2(const float* src, int64_t ls, float* dst, int64_t ld, int64_t ni,
                                              int64_t nj) {
  const int64_t ni8 = ni & ~int64_t(7), nj8 = nj & ~int64_t(7);
  if (ld > ls) {  // dst's rows apart: 8 of them at a time, src's rows inner
    for (int64_t j = 0; j < nj8; j += 8)
      for (int64_t i = 0; i < ni8; i += 8) block8(src + i * ls + j, ls, dst + j * ld + i, ld);
    if (ni8 < ni) block_scalar(src + ni8 * ls, ls, dst + ni8, ld, ni - ni8, nj);
    if (nj8 < nj) block_scalar(src + nj8, ls, dst + nj8 * ld, ld, ni8, nj - nj8);
    return;
  }
  for (int64_t i = 0; i < ni8; i += 8) {
    for (int64_t j = 0; j < nj8; j += 8) block8(src + i * ls + j, ls, dst + j * ld + i, ld);
    if (nj8 < nj) block_scalar(src + i * ls + nj8, ls, dst + nj8 * ld + i, ld, 8, nj - nj8);
  }
  if (ni8 < ni) block_scalar(src + ni8 * ls, ls, dst + ni8, ld, ni - ni8, nj);
}

// A 16 x 16 block in AVX-512 registers: 16 row loads, 64 shuffles (unpack the floats, then
// the pairs, then two rounds of 128-bit lanes), 16 row stores of a whole 64-byte line each
// (the 8 x 8 blocks wrote half lines, each line of an NCHW result taken twice). NT: the stores
// streamed past the caches (dst 64-byte aligned, ld a multiple of 16).
template <bool NT>
__attribute__((target("avx512f"), always_inline)) inline void block16(const float* s, int64_t ls, float* d,
                                                                      int64_t ld) {
  __m512 r[16], t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(s + i * ls);
#pragma GCC unroll 8
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // r[4 g + c]: in 128-bit lane l, column 4 l + c of rows 4 g .. 4 g + 3
#pragma GCC unroll 4
  for (int g = 0; g < 16; g += 4) {
    r[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[g]), _mm512_castps_pd(t[g + 2])));
    r[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[g]), _mm512_castps_pd(t[g + 2])));
    r[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[g + 1]), _mm512_castps_pd(t[g + 3])));
    r[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[g + 1]), _mm512_castps_pd(t[g + 3])));
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    const __m512 u0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), u1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
    const __m512 v0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88),
                 v1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
    const __m512 o[4] = {_mm512_shuffle_f32x4(u0, v0, 0x88), _mm512_shuffle_f32x4(u1, v1, 0x88),
                         _mm512_shuffle_f32x4(u0, v0, 0xdd), _mm512_shuffle_f32x4(u1, v1, 0xdd)};
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {  // rows c, 4 + c, 8 + c, 12 + c of the result
      if constexpr (NT) _mm512_stream_ps(d + (4 * q + c) * ld, o[q]);
      else _mm512_storeu_ps(d + (4 * q + c) * ld, o[q]);
    }
  }
}

// tile_avx2 with 16 x 16 blocks in the same order, the edges (under 16) by tile_avx2.
template <bool NT>
__attribute__((target("avx512f,avx2"))) void tile_avx512(const float* src, int64_t ls, float* dst, int64_t ld,
                                                        int64_t ni, int64_t nj) {
  const int64_t ni16 = ni & ~int64_t(15), nj16 = nj & ~int64_t(15);
  if (ld > ls) {
    for (int64_t j = 0; j < nj16; j += 16)
      for (int64_t i = 0; i < ni16; i += 16) block16<NT>(src + i * ls + j, ls, dst + j * ld + i, ld);
  } else {
    for (int64_t i = 0; i < ni16; i += 16)
      for (int64_t j = 0; j < nj16; j += 16) block16<NT>(src + i * ls + j, ls, dst + j * ld + i, ld);
  }
  if (ni16 < ni) tile_avx2(src + ni16 * ls, ls, dst + ni16, ld, ni - ni16, nj);
  if (nj16 < nj) tile_avx2(src + nj16, ls, dst + nj16 * ld, ld, ni16, nj - nj16);
}

// Whether a transpose asked to stream into dst (row stride ld) can: AVX-512, 64-byte aligned rows.
bool streams(bool stream, Isa isa, const float* dst, int64_t ld) {
  return stream && isa == Isa::Avx512 && ld % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 64 == 0;
}

// One tile by the widest transpose the CPU has (nt: tile_avx512's streaming stores, AVX-512 only).
void tile_any(Isa isa, bool nt, const float* s, int64_t ls, float* d, int64_t ld, int64_t ni, int64_t nj) {
  if (nt) tile_avx512<true>(s, ls, d, ld, ni, nj);
  else if (isa == Isa::Avx512) tile_avx512<false>(s, ls, d, ld, ni, nj);
  else if (isa != Isa::Base) tile_avx2(s, ls, d, ld, ni, nj);
  else block_scalar(s, ls, d, ld, ni, nj);
}

// dst(n)[j * ld + i] = src(n)[i * ls + j] for i < rows, j < cols, n < batch, in
// 64 x 64 tiles, every tile a task.
template <typename Src, typename Dst>
void transpose_tiles(int64_t batch, int64_t rows, int64_t cols, const Src& src, int64_t ls, const Dst& dst,
                     int64_t ld, bool stream = false) {
  const int64_t ti = (rows + kTile - 1) / kTile, tj = (cols + kTile - 1) / kTile;
  const Isa isa = cpu_isa();
  // (every image's block 64-byte aligned: the first two are, and the rest by the same step)
  const bool nt = streams(stream, isa, dst(0), ld) && (batch == 1 || streams(stream, isa, dst(1), ld));
  at::parallel_for(0, batch * ti * tj, 4, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / (ti * tj), i0 = (t / tj) % ti * kTile, j0 = t % tj * kTile;
      const int64_t ni = std::min(kTile, rows - i0), nj = std::min(kTile, cols - j0);
      const float* s = src(n) + i0 * ls + j0;
      tile_any(isa, nt, s, ls, dst(n) + j0 * ld + i0, ld, ni, nj);
    }
    if (nt) _mm_sfence();
  });
}

}  // namespace

void transpose_strided(const float* src, int64_t ls, float* dst, int64_t ld, int64_t rows, int64_t cols,
                       bool stream) {
  const Isa isa = cpu_isa();
  if (isa == Isa::Base) return block_scalar(src, ls, dst, ld, rows, cols);
  const bool nt = streams(stream, isa, dst, ld);
  for (int64_t i0 = 0; i0 < rows; i0 += kTile)  // 64 x 64 tiles, as transpose_tiles'
    for (int64_t j0 = 0; j0 < cols; j0 += kTile)
      tile_any(isa, nt, src + i0 * ls + j0, ls, dst + j0 * ld + i0, ld, std::min(kTile, rows - i0),
               std::min(kTile, cols - j0));
  if (nt) _mm_sfence();
}

void transpose_batch(const float* src, float* dst, int64_t batch, int64_t rows, int64_t cols, bool stream) {
  transpose_tiles(
      batch, rows, cols, [&](int64_t n) { return src + n * rows * cols; }, cols,
      [&](int64_t n) { return dst + n * rows * cols; }, rows, stream);
}

namespace {

// Whether copy_into's transpose takes t to format mf.
bool transposable(const at::Tensor& t, at::MemoryFormat mf) {
  const bool to_nhwc = mf == at::MemoryFormat::ChannelsLast;
  const auto from = to_nhwc ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
  return t.dim() == 4 && t.element_size() == 4 && (to_nhwc || mf == at::MemoryFormat::Contiguous) &&
         t.is_contiguous(from) && !t.is_conj() && !t.is_neg();
}

// out (format mf, t's sizes and type) = t
void copy_into(const at::Tensor& t, at::MemoryFormat mf, at::Tensor& out, bool stream = false) {
  if (!transposable(t, mf)) {
    out.copy_(t);
    return;
  }
  const int64_t N = t.size(0), C = t.size(1), HW = t.size(2) * t.size(3);
  // 4-byte elements moved as floats (bit patterns kept: no arithmetic on them)
  const float* src = static_cast<const float*>(t.const_data_ptr());
  float* dst = static_cast<float*>(out.mutable_data_ptr());
  if (mf == at::MemoryFormat::ChannelsLast) transpose_batch(src, dst, N, C, HW, stream);
  else transpose_batch(src, dst, N, HW, C, stream);
}

}  // namespace

at::Tensor to_format(const at::Tensor& t, at::MemoryFormat mf) {
  if (t.is_contiguous(mf)) return t;
  if (!transposable(t, mf)) return t.contiguous(mf);
  auto out = at::empty(t.sizes(), t.options().memory_format(mf));
  copy_into(t, mf, out, int64_t(t.nbytes()) >= kStreamBytes);
  return out;
}

at::Tensor scratch_empty(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat mf, int slot) {
  const int64_t bytes = c10::multiply_integers(sizes) * int64_t(options.dtype().itemsize());
  if (bytes == 0 || bytes > kScratchCapBytes) return at::empty(sizes, options.memory_format(mf));
  void* p = thread_buffer(slot, bytes);
  // non-owning: the thread's buffer
  if (mf == at::MemoryFormat::ChannelsLast)
    return at::from_blob(p, sizes, c10::get_channels_last_strides_2d(sizes), options);
  return at::from_blob(p, sizes, c10::contiguous_strides(sizes), options);
}

at::Tensor scratch_result(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat cf,
                          at::MemoryFormat mf, int slot) {
  // dense in both layouts: one channel, or one pixel an image (or no elements)
  const bool both =
      sizes.size() != 4 || sizes[1] == 1 || sizes[2] * sizes[3] == 1 || c10::multiply_integers(sizes) == 0;
  if (cf == mf || both) return at::empty(sizes, options.memory_format(cf));
  return scratch_empty(sizes, options, cf, slot);
}

at::Tensor to_format_scratch(const at::Tensor& t, at::MemoryFormat mf, int slot) {
  if (t.is_contiguous(mf)) return t;
  auto out = scratch_empty(t.sizes(), t.options(), mf, slot);
  copy_into(t, mf, out);
  return out;
}

at::Tensor channels_last_spaced(const at::Tensor& t, int64_t pixel_stride, int slot) {
  TORCH_CHECK(t.dim() == 4 && t.scalar_type() == at::kFloat && pixel_stride >= t.size(1),
              "convx: channels_last_spaced: a 4-D float32 tensor and a pixel stride of at least its channels");
  const int64_t N = t.size(0), C = t.size(1), H = t.size(2), W = t.size(3), HW = H * W, Cp = pixel_stride;
  const int64_t floats = N * HW * Cp;
  const std::vector<int64_t> strides{HW * Cp, 1, W * Cp, Cp};
  at::Tensor out = floats * int64_t(sizeof(float)) <= kScratchCapBytes
                       ? at::from_blob(thread_buffer(slot, std::max<int64_t>(1, floats) * int64_t(sizeof(float))),
                                       t.sizes(), strides, t.options())
                       : at::empty({floats}, t.options()).as_strided(t.sizes(), strides);
  if (floats == 0) return out;
  float* dst = out.mutable_data_ptr<float>();
  if (t.is_contiguous() && !t.is_conj() && !t.is_neg()) {
    const float* src = t.const_data_ptr<float>();
    transpose_tiles(
        N, C, HW, [&](int64_t n) { return src + n * C * HW; }, HW, [&](int64_t n) { return dst + n * HW * Cp; },
        Cp);
  } else if (t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_conj() && !t.is_neg()) {
    const float* src = t.const_data_ptr<float>();
    at::parallel_for(0, N * HW, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, C)), [&](int64_t b, int64_t e) {
      for (int64_t q = b; q < e; ++q) std::memcpy(dst + q * Cp, src + q * C, C * sizeof(float));
    });
  } else {
    out.copy_(t);
  }
  return out;
}

at::Tensor rotated_weight_scratch(const at::Tensor& w, int slot, int tmp_slot, int64_t groups) {
  const int64_t G = groups, K = w.size(0) / G, C = w.size(1), R = w.size(2), S = w.size(3), RS = R * S;
  const bool dense = w.is_contiguous() || w.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (w.element_size() != 4 || w.numel() == 0 || !dense || w.is_conj() || w.is_neg())
    return w.view({G, K, C, R, S}).flip({3, 4}).transpose(1, 2).reshape({G * C, K, R, S})
        .contiguous(at::MemoryFormat::ChannelsLast);
  // w as [G][K][R*S][C] (channels_last; a copy in tmp_slot otherwise), then for each group g and
  // tap t its [K][C] matrix transposed into out's [g][C][tap R*S-1-t][K] rows: 64 x 64 tiles of the
  // AVX2 8 x 8 transpose (a scalar loop over the filters ran at ~4 cycles an element: 30 % of a
  // 512 -> 512 data gradient at 7 x 7).
  const at::Tensor src_t = to_format_scratch(w, at::MemoryFormat::ChannelsLast, tmp_slot);
  auto out = scratch_empty({G * C, K, R, S}, w.options(), at::MemoryFormat::ChannelsLast, slot);
  const float* src = static_cast<const float*>(src_t.const_data_ptr());
  float* dst = static_cast<float*>(out.mutable_data_ptr());
  transpose_tiles(
      G * RS, K, C, [&](int64_t b) { return src + b / RS * K * RS * C + b % RS * C; }, RS * C,
      [&](int64_t b) { return dst + b / RS * C * RS * K + (RS - 1 - b % RS) * K; }, RS * K);
  return out;
}

}  // namespace convx::cpu
