// Pooling on the CPU: max, average, adaptive average, adaptive max; forward
// and backward. Window arithmetic: common/pool_params.h, tabulated once per
// call per axis (`Windows`: adaptive windows divide per output otherwise).
//
// Forward, NCHW: one output row per task, tap-outer (`forward_nchw_rows`):
// each tap of the window updates the whole row, whose outputs run in vector
// lanes (the running max's index as a float lane beside it); adaptive windows
// of one size are regular ones. Rows of fewer than 8 outputs and adaptive
// windows of several sizes: one output at a time. Channels_last: one output
// row per task; each pixel lists its taps once and runs them over the
// channels, 16 floats a register (AVX-512 / AVX2 intrinsics for max, GCC
// vector types for average).
//
// Backward, NCHW: a scatter per plane (every gradient element has one writer,
// summed in output order: deterministic with no atomics). Channels_last: a
// gather per input pixel over the outputs whose windows read it, in output
// order (the same sums as torch's scatter), each dX element written once.
// A max index that is not in its own window is dropped there (as by the CUDA
// kernels, which gather too) but scattered in NCHW; the forward never makes one.
//
// Max semantics are torch's: a NaN in the window wins (the last NaN's index),
// ties keep the first index, and an all -inf window returns -inf with the
// index of its first valid element.
// GCC 12 warns inside its own AVX-512 intrinsic headers (-Wmaybe-uninitialized
// on their undefined-register idiom), and on GCC vector types returned from
// the always-inline helpers below (-Wpsabi: no call, so no ABI, remains).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wpsabi"

#include "../common/pool_ops.h"
#include "isa_each.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

namespace convx::cpu {
namespace {

// A parallel_for grain for units of about `work` elements: ~32K elements a task (torch's
// at::internal::GRAIN_SIZE), so a small tensor runs on the calling thread without a parallel
// region (1 x 8 x 4 x 4, no grad: max pool 5.9 -> 4.4 us a call, average 5.7 -> 3.7; torch 2.9, 2.2).
inline int64_t grain_of(int64_t work) { return std::max<int64_t>(1, int64_t(32768) / std::max<int64_t>(1, work)); }

template <typename T>
inline bool is_nan(T v) {
  return v != v;
}

// Taps of one window axis that fall inside [0, n): i in [lo, hi) (step s).
struct Taps {
  int64_t lo, hi;
};
inline Taps clip(int64_t begin, int64_t taps, int64_t step, int64_t n) {
  int64_t lo = 0, hi = taps;
  if (begin < 0) lo = (-begin + step - 1) / step;
  if (begin + (taps - 1) * step >= n) hi = begin >= n ? 0 : (n - 1 - begin) / step + 1;
  return {lo, std::max(lo, hi)};
}

// One axis's windows, tabulated once per call (PoolAxis::begin and taps
// divide, for adaptive windows; a per-output division costs more than the
// window's taps): output o reads the positions first[o] + j * step, j in
// [0, count[o]), all inside the input, and ext[o] is its factor of the
// average's divisor. With readers: the outputs reading input position i are
// readers[rs[i] .. rs[i + 1]), ascending.
struct Windows {
  int64_t step;
  std::vector<int64_t> first, count, ext, rs, readers;
};
Windows windows(const PoolAxis& a, const AvgDivisor& div, bool with_readers = false) {
  Windows t;
  t.step = a.step();
  t.first.resize(a.out);
  t.count.resize(a.out);
  t.ext.resize(a.out);
  for (int64_t o = 0; o < a.out; ++o) {
    const int64_t b = a.begin(o);
    const Taps c = clip(b, a.taps(o), t.step, a.in);
    t.first[o] = b + c.lo * t.step;
    t.count[o] = c.hi - c.lo;
    t.ext[o] = div.extent(a, o);
  }
  if (with_readers) {
    t.rs.assign(a.in + 1, 0);
    for (int64_t o = 0; o < a.out; ++o)
      for (int64_t j = 0; j < t.count[o]; ++j) ++t.rs[t.first[o] + j * t.step + 1];
    for (int64_t i = 0; i < a.in; ++i) t.rs[i + 1] += t.rs[i];
    t.readers.resize(t.rs[a.in]);
    std::vector<int64_t> at(t.rs.begin(), t.rs.end() - 1);
    for (int64_t o = 0; o < a.out; ++o)
      for (int64_t j = 0; j < t.count[o]; ++j) t.readers[at[t.first[o] + j * t.step]++] = o;
  }
  return t;
}

// Average pooling's divisor for output (oh, ow), from the tables (the same
// integers as AvgDivisor's).
template <typename A>
inline A divisor(const AvgDivisor& d, const Windows& th, const Windows& tw, int64_t oh, int64_t ow) {
  return A(d.divisor_override ? d.divisor_override : th.ext[oh] * tw.ext[ow]);
}

// NCHW, any windows (adaptive ones of several sizes, planes of 2^24
// positions or more): one output at a time.
template <typename T>
void forward_nchw(const T* x, T* y, int64_t* ind, int64_t planes, const PoolPlan& p, bool is_max) {
  using acc_t = at::opmath_type<T>;
  const PoolAxis &ah = p.h, &aw = p.w;
  const int64_t H = ah.in, W = aw.in, Ho = ah.out, Wo = aw.out;
  const Windows th = windows(ah, p.div), tw = windows(aw, p.div);
  const int64_t sh = th.step, sw = tw.step;
  at::parallel_for(0, planes, grain_of(H * W), [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      const T* xp = x + pl * H * W;
      for (int64_t oh = 0; oh < Ho; ++oh) {
        const int64_t h0 = th.first[oh], nh = th.count[oh];
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const int64_t w0 = tw.first[ow], nw = tw.count[ow];
          const int64_t o = pl * Ho * Wo + oh * Wo + ow;
          if (is_max) {
            acc_t best = -std::numeric_limits<acc_t>::infinity();
            // The first valid tap; -1 for a window that dilation puts wholly in the padding (torch's CPU
            // kernel gives a position that is not in the window there, sometimes not even in the plane).
            int64_t bi = nh > 0 && nw > 0 ? h0 * W + w0 : -1;
            for (int64_t i = 0; i < nh; ++i) {
              const T* row = xp + (h0 + i * sh) * W + w0;
              for (int64_t j = 0; j < nw; ++j) {  // selects, not branches: a max's branch is a coin toss
                const acc_t v = acc_t(row[j * sw]);
                const bool take = (v > best) | (v != v);
                best = take ? v : best;
                bi = take ? (h0 + i * sh) * W + w0 + j * sw : bi;
              }
            }
            y[o] = T(best);
            ind[o] = bi;
          } else {
            acc_t sum = 0;
            for (int64_t i = 0; i < nh; ++i) {
              const T* row = xp + (h0 + i * sh) * W + w0;
              for (int64_t j = 0; j < nw; ++j) sum += acc_t(row[j * sw]);
            }
            y[o] = T(sum / divisor<acc_t>(p.div, th, tw, oh, ow));
          }
        }
      }
    }
  });
}

// Index lanes: a plane position kept as a float beside the running max (exact
// below 2^24 positions a plane), so the compare and both selects run at one
// vector width; widened to int64 once per output.
template <typename A>
using idx_lane_t = std::conditional_t<std::is_same_v<A, double>, double, float>;
constexpr int64_t kExactFloatIndex = int64_t(1) << 24;

template <typename I>
CONVX_ALWAYS_INLINE inline int64_t widen_index(I v) {
  if constexpr (std::is_same_v<I, float>)
    return int64_t(int32_t(v));  // cvttps2dq + sign extension: one vector op each
  else
    return int64_t(v);
}

// A regular (not adaptive) axis, tap by tap: tap j of output o reads
// o * s - p + j * d, inside the input for o in [lo[j], hi[j]); first[o] is
// the first tap of output o inside the input (-1: none, dilation can put a
// whole window in the padding).
struct TapRanges {
  std::vector<int32_t> lo, hi, first;
};
TapRanges tap_ranges(const PoolAxis& a) {
  TapRanges r;
  r.lo.resize(a.k);
  r.hi.resize(a.k);
  r.first.assign(a.out, -1);
  for (int64_t j = 0; j < a.k; ++j) {
    const int64_t off = j * a.d - a.p;
    const int64_t lo = off >= 0 ? 0 : (-off + a.s - 1) / a.s;
    const int64_t hi = a.in - 1 - off < 0 ? 0 : (a.in - 1 - off) / a.s + 1;
    r.lo[j] = int32_t(std::min(lo, a.out));
    r.hi[j] = int32_t(std::max(r.lo[j], int32_t(std::min(hi, a.out))));
  }
  for (int64_t j = a.k - 1; j >= 0; --j)
    for (int32_t o = r.lo[j]; o < r.hi[j]; ++o) r.first[o] = int32_t(j);
  return r;
}

// An adaptive axis whose windows are all one size (in % out == 0) is a
// regular one: kernel = stride = in / out, no padding (same windows, same
// divisor, same order of taps).
PoolAxis regular_axis(const PoolAxis& a) {
  if (!a.adaptive || a.out == 0 || a.in % a.out) return a;
  const int64_t k = a.in / a.out;
  return pool_axis(a.in, a.out, k, k, 0, 1);
}

// One tap column of an NCHW output row, across the row's outputs [lo, hi):
// tap-outer, so the loop over outputs is a vector loop (stride SW in the
// input row; 0: the runtime stride sw).
template <int SW, typename T, typename A, typename I>
CONVX_ALWAYS_INLINE inline void max_tap(const T* __restrict row, int32_t base, int32_t sw, int32_t lo, int32_t hi,
                                        A* __restrict best, I* __restrict idx) {
  const int32_t s = SW ? SW : sw;
  for (int32_t o = lo; o < hi; ++o) {
    const A v = A(row[o * s]);
    const bool take = (v > best[o]) | (v != v);
    best[o] = take ? v : best[o];
    idx[o] = take ? I(base + o * s) : idx[o];
  }
}
template <int SW, typename T, typename A>
CONVX_ALWAYS_INLINE inline void sum_tap(const T* __restrict row, int32_t sw, int32_t lo, int32_t hi,
                                        A* __restrict acc) {
  const int32_t s = SW ? SW : sw;
  for (int32_t o = lo; o < hi; ++o) acc[o] += A(row[o * s]);
}

// NCHW forward of a regular pooling, one output row per task: each tap
// (i, j) in window order updates the whole row, so every output sees its taps
// in torch's order (row-major in the window) and the row's outputs run in
// vector lanes. Planes under 2^24 positions (the index lanes are floats).
template <int SW, typename T>
void forward_nchw_rows(const T* x, T* y, int64_t* ind, int64_t planes, const PoolPlan& p, bool is_max) {
  using A = at::opmath_type<T>;
  using I = idx_lane_t<A>;
  const PoolAxis &ah = p.h, &aw = p.w;
  const int64_t H = ah.in, W = aw.in, Ho = ah.out, Wo = aw.out;
  const TapRanges tw = tap_ranges(aw);
  std::vector<int64_t> ew(Wo);
  for (int64_t ow = 0; ow < Wo; ++ow) ew[ow] = p.div.extent(aw, ow);
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, Wo * ah.k * aw.k));
  at::parallel_for(0, planes * Ho, grain, [&](int64_t b, int64_t e) {
    std::vector<A> acc_buf(Wo);
    std::vector<I> idx_buf(is_max ? Wo : 0);
    A* __restrict acc = acc_buf.data();
    I* __restrict idx = idx_buf.data();
    each(b, e, [&](int64_t t) CONVX_ALWAYS_INLINE {
      const int64_t pl = t / Ho, oh = t % Ho;
      const T* xp = x + pl * H * W;
      const int64_t h0 = ah.begin(oh);
      const Taps ti = clip(h0, ah.k, ah.d, H);
      const int64_t o0 = pl * Ho * Wo + oh * Wo;
      if (is_max) {
        const bool rows = ti.lo < ti.hi;
        const int32_t first_row = int32_t(rows ? (h0 + ti.lo * ah.d) * W - aw.p : 0);
        for (int64_t ow = 0; ow < Wo; ++ow) {
          acc[ow] = -std::numeric_limits<A>::infinity();
          const int32_t f = tw.first[ow];
          idx[ow] = rows && f >= 0 ? I(first_row + int32_t(ow * aw.s + f * aw.d)) : I(-1);
        }
        for (int64_t i = ti.lo; i < ti.hi; ++i) {
          const int64_t h = h0 + i * ah.d;
          for (int64_t j = 0; j < aw.k; ++j) {
            const int64_t off = h * W + j * aw.d - aw.p;  // the position of tap j of output 0
            max_tap<SW>(xp + off, int32_t(off), int32_t(aw.s), tw.lo[j], tw.hi[j], acc, idx);
          }
        }
        T* __restrict yo = y + o0;
        int64_t* __restrict io = ind + o0;
        for (int64_t ow = 0; ow < Wo; ++ow) yo[ow] = T(acc[ow]);
        for (int64_t ow = 0; ow < Wo; ++ow) io[ow] = widen_index(idx[ow]);
      } else {
        for (int64_t ow = 0; ow < Wo; ++ow) acc[ow] = A(0);
        for (int64_t i = ti.lo; i < ti.hi; ++i) {
          const int64_t h = h0 + i * ah.d;
          for (int64_t j = 0; j < aw.k; ++j) {
            const int64_t off = h * W + j * aw.d - aw.p;
            sum_tap<SW>(xp + off, int32_t(aw.s), tw.lo[j], tw.hi[j], acc);
          }
        }
        T* __restrict yo = y + o0;
        if (p.div.divisor_override) {
          const A d = A(p.div.divisor_override);
          for (int64_t ow = 0; ow < Wo; ++ow) yo[ow] = T(acc[ow] / d);
        } else {
          const int64_t eh = p.div.extent(ah, oh);
          for (int64_t ow = 0; ow < Wo; ++ow) yo[ow] = T(acc[ow] / A(eh * ew[ow]));
        }
      }
    });
  });
}

// Max pooling in channels_last, one output pixel: channels [c0, C) over the
// pixel's nt taps (offsets off[k] into x, plane positions here[k], in window
// order), one channel at a time. The first tap seeds the running max (torch's
// -inf start with the first tap's index gives the same result, NaN included).
template <typename T, typename A, typename I>
inline void max_pixel_scalar(const T* x, const int64_t* off, const I* here, int64_t nt, int64_t c0, int64_t C, T* y,
                             int64_t* ind) {
  for (int64_t c = c0; c < C; ++c) {
    if (nt == 0) {  // no tap inside the image (dilation): -inf, index -1
      y[c] = T(-std::numeric_limits<A>::infinity());
      if (ind) ind[c] = -1;
      continue;
    }
    A a = A(x[off[0] + c]);
    I ix = here[0];
    for (int64_t k = 1; k < nt; ++k) {
      const A v = A(x[off[k] + c]);
      if (v > a || v != v) a = v, ix = here[k];
    }
    y[c] = T(a);
    if (ind) ind[c] = widen_index(ix);
  }
}

// Its gradient, a gather: dX at plane position q, channels [c0, C), sums the
// gradients of the no outputs at offsets off[k] (in output order) that chose q.
template <typename T, typename A>
inline void max_grad_pixel_scalar(const T* gy, const int64_t* ind, const int64_t* off, int64_t no, int64_t q,
                                  int64_t c0, int64_t C, T* gx) {
  for (int64_t c = c0; c < C; ++c) {
    A a = A(0);
    for (int64_t k = 0; k < no; ++k) a += ind[off[k] + c] == q ? A(gy[off[k] + c]) : A(0);
    gx[c] = T(a);
  }
}

// channels_last inputs of kTapInputBytes or more (streamed from memory, not
// kept in L3) with channel runs of kTapRunBytes or more go tap by tap (a tap's
// whole run, then the next tap's): each input row is then read in ascending
// order, as the cores' stream prefetchers follow. A register block through all
// of a pixel's taps at a time reads the window's rows alternately a line at a
// time, which they did not follow on the Zen 4 (batch 8, 2x2 windows: max over
// 128 @112 and 256 @56 at 0.56-0.62 of torch's rate, tap by tap 0.69-0.75,
// average 256 @56 0.66 -> 0.84), but it is the faster order on inputs the
// caches keep (512 @14, 3.2 MB: 1.7-2.0x torch either way) and on short runs.
// From 4 MiB (was 16): on the Zen 5, in the benchmark's rounds (each library's
// own input, so two of them and their outputs), max 2x2 over 512 @28 (12.8 MB)
// went 0.80-1.03 -> 1.32-1.34x torch tap by tap.
constexpr int64_t kTapRunBytes = 512;
constexpr int64_t kTapInputBytes = int64_t(4) << 20;

// float builds of the two with AVX-512 / AVX2 intrinsics (GCC leaves a compare
// and select written over vectors or arrays in these loops scalar): 16 / 8
// channels a register. The forward goes tap by tap where given ixb[2C], the
// index lanes in ixb[0, C) and the running max in ixb[C, 2C) (both in L1), y
// written once at the end (a running max kept in y itself read back each tap's
// stores to lines still on their way from memory: the average's twin of this,
// 2x2 over 8x256x56x56, ran at 0.6 of torch's rate); else, as the
// gradient, it holds them in registers across the taps.
using MaxPixelFn = void (*)(const float*, const int64_t*, const float*, int64_t, int64_t, float*, int64_t*, float*);
using MaxGradPixelFn = void (*)(const float*, const int64_t*, const int64_t*, int64_t, int64_t, int64_t, float*);

// 16 / 8 floats at p (kStream: by a non-temporal store, p 64 / 32-byte aligned).
template <bool kStream>
__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) inline void store16(float* p, __m512 v) {
  if constexpr (kStream)
    _mm512_stream_ps(p, v);
  else
    _mm512_storeu_ps(p, v);
}
template <bool kStream>
__attribute__((target("avx2,fma"))) inline void store8(float* p, __m256 v) {
  if constexpr (kStream)
    _mm256_stream_ps(p, v);
  else
    _mm256_storeu_ps(p, v);
}

// 16 / 8 index lanes (floats) as int64 at ind (kStream: by non-temporal stores, ind 64 / 32-byte aligned).
template <bool kStream = false>
__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) inline void store_index16(int64_t* ind, __m512 ix) {
  const __m512i i = _mm512_cvttps_epi32(ix);
  const __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(i)), hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(i, 1));
  if constexpr (kStream) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(ind), lo);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(ind + 8), hi);
  } else {
    _mm512_storeu_si512(ind, lo);
    _mm512_storeu_si512(ind + 8, hi);
  }
}
template <bool kStream = false>
__attribute__((target("avx2,fma"))) inline void store_index8(int64_t* ind, __m256 ix) {
  const __m256i i = _mm256_cvttps_epi32(ix);
  const __m256i lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(i)), hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(i, 1));
  if constexpr (kStream) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(ind), lo);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(ind + 4), hi);
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ind), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ind + 4), hi);
  }
}

template <bool kIdx, bool kStream = false>
__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void max_pixel_avx512(
    const float* x, const int64_t* off, const float* here, int64_t nt, int64_t C, float* y, int64_t* ind,
    float* ixb) {
  const int64_t Cv = nt > 0 ? C / 16 * 16 : 0;
  if (ixb && Cv > 0) {
    float* vb = ixb + C;
    const float* p = x + off[0];
    const __m512 h0 = _mm512_set1_ps(here[0]);
    for (int64_t c = 0; c < Cv; c += 16) {
      _mm512_storeu_ps(vb + c, _mm512_loadu_ps(p + c));
      if constexpr (kIdx) _mm512_storeu_ps(ixb + c, h0);
    }
    for (int64_t k = 1; k < nt; ++k) {
      p = x + off[k];
      const __m512 hk = _mm512_set1_ps(here[k]);
      for (int64_t c = 0; c < Cv; c += 16) {
        const __m512 a = _mm512_loadu_ps(vb + c), v = _mm512_loadu_ps(p + c);
        const __mmask16 take = _mm512_cmp_ps_mask(v, a, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        _mm512_mask_storeu_ps(vb + c, take, v);
        if constexpr (kIdx) _mm512_mask_storeu_ps(ixb + c, take, hk);
      }
    }
    for (int64_t c = 0; c < Cv; c += 16) {
      store16<kStream>(y + c, _mm512_loadu_ps(vb + c));
      if constexpr (kIdx) store_index16<kStream>(ind + c, _mm512_loadu_ps(ixb + c));
    }
  } else {
    for (int64_t c = 0; c < Cv; c += 16) {
      __m512 a = _mm512_loadu_ps(x + off[0] + c), ix = _mm512_set1_ps(here[0]);
      for (int64_t k = 1; k < nt; ++k) {
        const __m512 v = _mm512_loadu_ps(x + off[k] + c);
        const __mmask16 take = _mm512_cmp_ps_mask(v, a, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        a = _mm512_mask_mov_ps(a, take, v);
        if constexpr (kIdx) ix = _mm512_mask_mov_ps(ix, take, _mm512_set1_ps(here[k]));
      }
      store16<kStream>(y + c, a);
      if constexpr (kIdx) store_index16<kStream>(ind + c, ix);
    }
  }
  max_pixel_scalar<float, float, float>(x, off, here, nt, Cv, C, y, ind);
}

template <bool kIdx, bool kStream = false>
__attribute__((target("avx2,fma"))) void max_pixel_avx2(const float* x, const int64_t* off, const float* here,
                                                        int64_t nt, int64_t C, float* y, int64_t* ind,
                                                        float* ixb) {
  const int64_t Cv = nt > 0 ? C / 8 * 8 : 0;
  if (ixb && Cv > 0) {
    float* vb = ixb + C;
    const float* p = x + off[0];
    const __m256 h0 = _mm256_set1_ps(here[0]);
    for (int64_t c = 0; c < Cv; c += 8) {
      _mm256_storeu_ps(vb + c, _mm256_loadu_ps(p + c));
      if constexpr (kIdx) _mm256_storeu_ps(ixb + c, h0);
    }
    for (int64_t k = 1; k < nt; ++k) {
      p = x + off[k];
      const __m256 hk = _mm256_set1_ps(here[k]);
      for (int64_t c = 0; c < Cv; c += 8) {
        const __m256 a = _mm256_loadu_ps(vb + c), v = _mm256_loadu_ps(p + c);
        const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, a, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        _mm256_storeu_ps(vb + c, _mm256_blendv_ps(a, v, take));
        if constexpr (kIdx) _mm256_storeu_ps(ixb + c, _mm256_blendv_ps(_mm256_loadu_ps(ixb + c), hk, take));
      }
    }
    for (int64_t c = 0; c < Cv; c += 8) {
      store8<kStream>(y + c, _mm256_loadu_ps(vb + c));
      if constexpr (kIdx) store_index8<kStream>(ind + c, _mm256_loadu_ps(ixb + c));
    }
  } else {
    for (int64_t c = 0; c < Cv; c += 8) {
      __m256 a = _mm256_loadu_ps(x + off[0] + c), ix = _mm256_set1_ps(here[0]);
      for (int64_t k = 1; k < nt; ++k) {
        const __m256 v = _mm256_loadu_ps(x + off[k] + c);
        const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, a, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        a = _mm256_blendv_ps(a, v, take);
        if constexpr (kIdx) ix = _mm256_blendv_ps(ix, _mm256_set1_ps(here[k]), take);
      }
      store8<kStream>(y + c, a);
      if constexpr (kIdx) store_index8<kStream>(ind + c, ix);
    }
  }
  max_pixel_scalar<float, float, float>(x, off, here, nt, Cv, C, y, ind);
}

void max_pixel_base(const float* x, const int64_t* off, const float* here, int64_t nt, int64_t C, float* y,
                    int64_t* ind, float*) {
  max_pixel_scalar<float, float, float>(x, off, here, nt, 0, C, y, ind);
}

template <bool kStream>
__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void max_grad_pixel_avx512(
    const float* gy, const int64_t* ind, const int64_t* off, int64_t no, int64_t q, int64_t C, float* gx) {
  const __m512i qv = _mm512_set1_epi64(q);
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) {
    __m512 a = _mm512_setzero_ps();
    for (int64_t k = 0; k < no; ++k) {
      const int64_t* id = ind + off[k] + c;
      const __mmask16 hit = __mmask16(_mm512_cmpeq_epi64_mask(_mm512_loadu_si512(id), qv)) |
                            __mmask16(__mmask16(_mm512_cmpeq_epi64_mask(_mm512_loadu_si512(id + 8), qv)) << 8);
      a = _mm512_mask_add_ps(a, hit, a, _mm512_loadu_ps(gy + off[k] + c));
    }
    store16<kStream>(gx + c, a);
  }
  max_grad_pixel_scalar<float, float>(gy, ind, off, no, q, c, C, gx);
}

template <bool kStream>
__attribute__((target("avx2,fma"))) void max_grad_pixel_avx2(const float* gy, const int64_t* ind,
                                                             const int64_t* off, int64_t no, int64_t q, int64_t C,
                                                             float* gx) {
  const __m256i qv = _mm256_set1_epi64x(q);
  const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);  // a 64-bit lane mask's low halves
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t k = 0; k < no; ++k) {
      const int64_t* id = ind + off[k] + c;
      const __m256i lo = _mm256_cmpeq_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(id)), qv);
      const __m256i hi = _mm256_cmpeq_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(id + 4)), qv);
      const __m256 hit = _mm256_castsi256_ps(
          _mm256_set_m128i(_mm256_castsi256_si128(_mm256_permutevar8x32_epi32(hi, even)),
                           _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(lo, even))));
      a = _mm256_add_ps(a, _mm256_and_ps(hit, _mm256_loadu_ps(gy + off[k] + c)));  // + 0 where missed: same sum
    }
    store8<kStream>(gx + c, a);
  }
  max_grad_pixel_scalar<float, float>(gy, ind, off, no, q, c, C, gx);
}

void max_grad_pixel_base(const float* gy, const int64_t* ind, const int64_t* off, int64_t no, int64_t q, int64_t C,
                         float* gx) {
  max_grad_pixel_scalar<float, float>(gy, ind, off, no, q, 0, C, gx);
}

// kIdx false: max pooling's values alone (no indices asked for and none to keep for a
// gradient: a forward under no_grad, as torch's max_pool2d_kernel without indices), ind null:
// the same rule with no index lanes and no int64 index tensor written (twice the values'
// bytes: the 2x2 max over 8x256x56x56 wrote 45 MB for torch's 32).
// stream: y (and the indices) by non-temporal stores (isa_each.h's stream_stores)
MaxPixelFn max_pixel_float(Isa isa, bool indices, bool stream) {
  switch (isa) {
    case Isa::Avx512:
      return indices ? (stream ? max_pixel_avx512<true, true> : max_pixel_avx512<true>)
                     : (stream ? max_pixel_avx512<false, true> : max_pixel_avx512<false>);
    case Isa::Avx2:
      return indices ? (stream ? max_pixel_avx2<true, true> : max_pixel_avx2<true>)
                     : (stream ? max_pixel_avx2<false, true> : max_pixel_avx2<false>);
    default: return max_pixel_base;
  }
}
// stream: dX's channels by non-temporal stores (isa_each.h's stream_stores; every pixel's
// channels a whole number of 64-byte lines, 64-byte aligned)
MaxGradPixelFn max_grad_pixel_float(bool stream) {
  switch (cpu_isa()) {
    case Isa::Avx512: return stream ? max_grad_pixel_avx512<true> : max_grad_pixel_avx512<false>;
    case Isa::Avx2: return stream ? max_grad_pixel_avx2<true> : max_grad_pixel_avx2<false>;
    default: return max_grad_pixel_base;
  }
}

// Average pooling tap by tap (kTapRunBytes), the sums in acc[C] (a buffer in
// L1; summing in y itself read back each tap's stores to lines still
// on their way from memory: 2x2 over 8x256x56x56 at 0.6-0.8 of torch's rate):
// the first tap copied, the others added, the last one as the sums are divided
// into y, one pass each over the channels.
template <typename T, typename A>
CONVX_ALWAYS_INLINE inline void avg_pixel_taps(const T* x, const int64_t* off, int64_t nt, int64_t C, A d, A* acc,
                                               T* y, bool stream) {
  using V = typename Block<A>::v;
  constexpr int L = Block<A>::n;
  const int64_t Cv = C / L * L;
  // V{} + sum: a window of -0s averages to +0, as torch's 0-started sum does
  if (nt == 1) {
    const T* p = x + off[0];
    for (int64_t c = 0; c < Cv; c += L) put_block<T, A>(y + c, (V{} + load_block<A>(p + c)) / d, stream);
    for (int64_t c = Cv; c < C; ++c) y[c] = T((A(0) + A(p[c])) / d);
    return;
  }
  for (int64_t k = 0; k + 1 < nt; ++k) {
    const T* p = x + off[k];
    if (k == 0) {
      for (int64_t c = 0; c < Cv; c += L) store_block<A>(acc + c, load_block<A>(p + c));
      for (int64_t c = Cv; c < C; ++c) acc[c] = A(p[c]);
    } else {
      for (int64_t c = 0; c < Cv; c += L) store_block<A>(acc + c, load_block<A>(acc + c) + load_block<A>(p + c));
      for (int64_t c = Cv; c < C; ++c) acc[c] += A(p[c]);
    }
  }
  // the last tap added as y is written
  const T* p = x + off[nt - 1];
  for (int64_t c = 0; c < Cv; c += L)
    put_block<T, A>(y + c, (V{} + (load_block<A>(acc + c) + load_block<A>(p + c))) / d, stream);
  for (int64_t c = Cv; c < C; ++c) y[c] = T((A(0) + (acc[c] + A(p[c]))) / d);
}

template <typename T, typename A>
CONVX_ALWAYS_INLINE inline void avg_pixel(const T* x, const int64_t* off, int64_t nt, int64_t C, A d, T* y,
                                          bool stream) {
  using V = typename Block<A>::v;
  constexpr int L = Block<A>::n;
  int64_t c = 0;
  for (; c + L <= C; c += L) {
    V a = V{};  // torch's start: a window of -0s averages to +0
    for (int64_t k = 0; k < nt; ++k) a += load_block<A>(x + off[k] + c);
    put_block<T, A>(y + c, a / d, stream);
  }
  for (; c < C; ++c) {
    A a = A(0);
    for (int64_t k = 0; k < nt; ++k) a += A(x[off[k] + c]);
    y[c] = T(a / d);
  }
}

// channels_last forward, one output row per task: each pixel lists its taps
// once, then runs them over the channels tap by tap (see kTapInputBytes) or a
// register block at a time. ind null (float only): max values alone.
template <typename T>
void forward_nhwc(const T* x, T* y, int64_t* ind, int64_t N, int64_t C, const PoolPlan& p, bool is_max) {
  using A = at::opmath_type<T>;
  using I = idx_lane_t<A>;
  const PoolAxis &ah = p.h, &aw = p.w;
  const int64_t H = ah.in, W = aw.in, Ho = ah.out, Wo = aw.out;
  TORCH_CHECK((!is_max || !ind || std::is_same_v<I, double> || H * W < kExactFloatIndex),
              "convx max_pool2d (CPU, channels_last): plane of ", H * W, " positions exceeds 2^24");
  const Windows th = windows(ah, p.div), tw = windows(aw, p.div);
  const int64_t max_taps = std::max<int64_t>(1, *std::max_element(th.count.begin(), th.count.end()) *
                                                    *std::max_element(tw.count.begin(), tw.count.end()));
  const bool by_tap = C * int64_t(sizeof(T)) >= kTapRunBytes &&
                      N * H * W * C * int64_t(sizeof(T)) >= kTapInputBytes;
  // streamed inputs at AVX2 width at most (isa_each.h's streaming_isa)
  const Isa isa = by_tap ? streaming_isa() : cpu_isa();
  // y (and the indices) by non-temporal stores where large (stream_stores)
  const bool stream = std::is_same_v<T, A> &&
                      stream_stores(y, N * Ho * Wo * C * int64_t(sizeof(T)), C * int64_t(sizeof(T))) &&
                      reinterpret_cast<std::uintptr_t>(ind) % 64 == 0;
  const MaxPixelFn max_pixel = max_pixel_float(isa, ind != nullptr, stream);
  at::parallel_for(0, N * Ho, grain_of(Wo * C * max_taps), [&](int64_t b, int64_t e) {
    std::vector<int64_t> off_buf(max_taps);
    std::vector<I> here_buf(max_taps);
    // the tap-by-tap sums; float max's running values (and index lanes); 64-byte aligned, so
    // no vector access straddles two lines
    Aligned64<A> acc_buf(!is_max && by_tap ? C : 0);
    Aligned64<float> ixb_buf(is_max && by_tap && std::is_same_v<T, float> ? 2 * C : 0);
    int64_t* off = off_buf.data();
    I* here = here_buf.data();
    const auto row = [&](int64_t t) CONVX_ALWAYS_INLINE {
      const int64_t n = t / Ho, oh = t % Ho;
      for (int64_t ow = 0; ow < Wo; ++ow) {
        int64_t nt = 0;
        for (int64_t i = 0; i < th.count[oh]; ++i)
          for (int64_t j = 0; j < tw.count[ow]; ++j) {
            const int64_t h = th.first[oh] + i * th.step, w = tw.first[ow] + j * tw.step;
            off[nt] = ((n * H + h) * W + w) * C;
            here[nt++] = I(h * W + w);
          }
        const int64_t o = ((n * Ho + oh) * Wo + ow) * C;
        if (is_max) {
          if constexpr (std::is_same_v<T, float>) {
            max_pixel(x, off, here, nt, C, y + o, ind ? ind + o : nullptr, by_tap ? ixb_buf.data() : nullptr);
          } else {
            max_pixel_scalar<T, A, I>(x, off, here, nt, 0, C, y + o, ind + o);
          }
        } else if (by_tap && nt > 0) {
          avg_pixel_taps<T, A>(x, off, nt, C, divisor<A>(p.div, th, tw, oh, ow), acc_buf.data(), y + o, stream);
        } else {
          avg_pixel<T, A>(x, off, nt, C, divisor<A>(p.div, th, tw, oh, ow), y + o, stream);
        }
      }
    };
    if (by_tap) each_streaming(b, e, row);
    else each(b, e, row);
    if (stream) _mm_sfence();
  });
}

// One plane of an NCHW gradient: gx[H*W] = scatter of gy[Ho*Wo].
// buf: H*W accumulators (gx itself where T is the accumulation type).
template <typename T>
void scatter_plane(const T* gy, const int64_t* ind, T* gx, const PoolPlan& p, const Windows& th, const Windows& tw,
                   at::opmath_type<T>* buf, bool is_max) {
  using acc_t = at::opmath_type<T>;
  const int64_t H = p.h.in, W = p.w.in, Ho = p.h.out, Wo = p.w.out;
  if (is_max) {
    // An index outside the plane is skipped: the forward gives -1 for a window that dilation puts
    // wholly in the padding, and the op may be handed any indices. (torch's CPU kernel gives such a
    // window an index past the plane and its backward writes there, corrupting the heap.)
    std::fill(gx, gx + H * W, T(0));
    for (int64_t o = 0; o < Ho * Wo; ++o) {
      const int64_t i = ind[o];
      if (i >= 0 && i < H * W) gx[i] = T(acc_t(gx[i]) + acc_t(gy[o]));
    }
    return;
  }
  // Average: each output's share added over its window, in output order (torch's order).
  acc_t* acc = buf;
  std::fill(acc, acc + H * W, acc_t(0));
  for (int64_t oh = 0; oh < Ho; ++oh) {
    const int64_t h0 = th.first[oh], nh = th.count[oh];
    for (int64_t ow = 0; ow < Wo; ++ow) {
      const int64_t w0 = tw.first[ow], nw = tw.count[ow];
      const acc_t g = acc_t(gy[oh * Wo + ow]) / divisor<acc_t>(p.div, th, tw, oh, ow);
      for (int64_t h = h0; h < h0 + nh; ++h) {
        acc_t* __restrict row = acc + h * W;
        for (int64_t w = w0; w < w0 + nw; ++w) row[w] += g;
      }
    }
  }
  if (static_cast<void*>(acc) != static_cast<void*>(gx))
    for (int64_t i = 0; i < H * W; ++i) gx[i] = T(acc[i]);
}

template <typename T>
void backward_nchw(const T* gy, const int64_t* ind, T* gx, int64_t planes, const PoolPlan& p, bool is_max) {
  using acc_t = at::opmath_type<T>;
  const int64_t HW = p.h.in * p.w.in, O = p.h.out * p.w.out;
  const Windows th = windows(p.h, p.div), tw = windows(p.w, p.div);
  at::parallel_for(0, planes, grain_of(HW), [&](int64_t b, int64_t e) {
    std::vector<acc_t> own(std::is_same_v<acc_t, T> || is_max ? 0 : HW);
    for (int64_t pl = b; pl < e; ++pl) {
      acc_t* buf = own.empty() ? reinterpret_cast<acc_t*>(gx + pl * HW) : own.data();
      scatter_plane(gy + pl * O, is_max ? ind + pl * O : nullptr, gx + pl * HW, p, th, tw, buf, is_max);
    }
  });
}

// channels_last backward, a gather: each input pixel sums, over the outputs
// whose windows read it (the same set as the CUDA kernel's touching / reads), the
// gradient of those that chose it (max) or their share (avg), in output order
// (torch's scatter adds them in the same order). Every dX element is written
// once, with no zero fill; channels run a register block at a time.
template <typename T, typename A>
CONVX_ALWAYS_INLINE inline void avg_grad_pixel(const T* gy, const int64_t* off, const A* div, int64_t no, int64_t C,
                                               T* gx, bool stream) {
  using V = typename Block<A>::v;
  constexpr int L = Block<A>::n;
  int64_t c = 0;
  for (; c + L <= C; c += L) {
    V a = V{};
    for (int64_t k = 0; k < no; ++k) a += load_block<A>(gy + off[k] + c) / div[k];
    if constexpr (std::is_same_v<T, A>) {
      if (stream) {
        stream_block<A>(gx + c, a);
        continue;
      }
    }
    store_block<A>(gx + c, a);
  }
  for (; c < C; ++c) {
    A a = A(0);
    for (int64_t k = 0; k < no; ++k) a += A(gy[off[k] + c]) / div[k];
    gx[c] = T(a);
  }
}

template <typename T>
void backward_nhwc(const T* gy, const int64_t* ind, T* gx, int64_t N, int64_t C, const PoolPlan& p, bool is_max) {
  using A = at::opmath_type<T>;
  const PoolAxis &ah = p.h, &aw = p.w;
  const int64_t H = ah.in, W = aw.in, Ho = ah.out, Wo = aw.out;
  const Windows th = windows(ah, p.div, true), tw = windows(aw, p.div, true);
  int64_t mh = 1, mw = 1;  // the most outputs reading one position, per axis
  for (int64_t i = 0; i < H; ++i) mh = std::max(mh, th.rs[i + 1] - th.rs[i]);
  for (int64_t i = 0; i < W; ++i) mw = std::max(mw, tw.rs[i + 1] - tw.rs[i]);
  // dX by non-temporal stores where it is large (isa_each.h's stream_stores)
  const bool stream = std::is_same_v<T, at::opmath_type<T>> &&
                      stream_stores(gx, N * H * W * C * int64_t(sizeof(T)), C * int64_t(sizeof(T)));
  const MaxGradPixelFn max_grad_pixel = max_grad_pixel_float(stream);
  at::parallel_for(0, N * H, grain_of(W * C * mh * mw), [&](int64_t b, int64_t e) {
    std::vector<int64_t> off_buf(mh * mw);
    std::vector<A> div_buf(is_max ? 0 : mh * mw);
    int64_t* off = off_buf.data();
    A* div = div_buf.data();
    each(b, e, [&](int64_t t) CONVX_ALWAYS_INLINE {
      const int64_t n = t / H, h = t % H;
      for (int64_t w = 0; w < W; ++w) {
        int64_t no = 0;
        for (int64_t a = th.rs[h]; a < th.rs[h + 1]; ++a)
          for (int64_t c = tw.rs[w]; c < tw.rs[w + 1]; ++c) {
            const int64_t oh = th.readers[a], ow = tw.readers[c];
            if (!is_max) div[no] = divisor<A>(p.div, th, tw, oh, ow);
            off[no++] = ((n * Ho + oh) * Wo + ow) * C;
          }
        T* out = gx + ((n * H + h) * W + w) * C;
        const int64_t q = h * W + w;
        if (is_max) {
          if constexpr (std::is_same_v<T, float>)
            max_grad_pixel(gy, ind, off, no, q, C, out);
          else
            max_grad_pixel_scalar<T, A>(gy, ind, off, no, q, 0, C, out);
        } else {
          avg_grad_pixel<T, A>(gy, off, div, no, C, out, stream);
        }
      }
    });
    if (stream) _mm_sfence();
  });
}

// Global average (adaptive to 1x1, ResNet's head): a reduction per plane
// (NCHW: 64 bytes of partial sums, added up at the end, as torch's mean does
// with its vector lanes) or per channel (channels_last: 4 x 64 bytes of
// channels a unit, summed over the image's pixels in registers), and a
// broadcast backward.
template <typename T>
void global_avg_forward(const T* x, T* y, int64_t N, int64_t C, int64_t HW, bool nhwc) {
  using A = at::opmath_type<T>;
  using V = typename Block<A>::v;
  constexpr int L = Block<A>::n;
  if (!nhwc) {
    at::parallel_for(0, N * C, std::max<int64_t>(1, 4096 / HW), [&](int64_t b, int64_t e) {
      each(b, e, [&](int64_t pl) CONVX_ALWAYS_INLINE {
        const T* xp = x + pl * HW;
        V part = V{};
        int64_t i = 0;
        for (; i + L <= HW; i += L) part += load_block<A>(xp + i);
        A s = lane_sum<A>(part);
        for (; i < HW; ++i) s += A(xp[i]);
        y[pl] = T(s / A(HW));
      });
    });
    return;
  }
  constexpr int64_t CB = 4 * L;
  const int64_t nb = (C + CB - 1) / CB;
  at::parallel_for(0, N * nb, std::max<int64_t>(1, 4096 / (HW * CB)), [&](int64_t b, int64_t e) {
    each(b, e, [&](int64_t t) CONVX_ALWAYS_INLINE {
      const int64_t n = t / nb, c0 = (t % nb) * CB;
      const T* xp = x + n * HW * C + c0;
      T* yp = y + n * C + c0;
      if (c0 + CB <= C) {
        V a0 = V{}, a1 = V{}, a2 = V{}, a3 = V{};
        for (int64_t q = 0; q < HW; ++q) {
          const T* r = xp + q * C;
          a0 += load_block<A>(r);
          a1 += load_block<A>(r + L);
          a2 += load_block<A>(r + 2 * L);
          a3 += load_block<A>(r + 3 * L);
        }
        const A d = A(HW);
        store_block<A>(yp, a0 / d);
        store_block<A>(yp + L, a1 / d);
        store_block<A>(yp + 2 * L, a2 / d);
        store_block<A>(yp + 3 * L, a3 / d);
        return;
      }
      // the last channels: a register of them at a time, then one (each sum from +0, the pixels in
      // order, as above; one at a time, 4 x 100 x 9 x 9 ran at 0.56x torch)
      int64_t c = 0;
      for (; c0 + c + L <= C; c += L) {
        V a = V{};
        for (int64_t q = 0; q < HW; ++q) a += load_block<A>(xp + q * C + c);
        put_block<T, A>(yp + c, a / A(HW), false);
      }
      for (; c0 + c < C; ++c) {
        A s = 0;
        for (int64_t q = 0; q < HW; ++q) s += A(xp[q * C + c]);
        yp[c] = T(s / A(HW));
      }
    });
  });
}

template <typename T>
void global_avg_backward(const T* gy, T* gx, int64_t N, int64_t C, int64_t HW, bool nhwc) {
  using acc_t = at::opmath_type<T>;
  at::parallel_for(0, N, grain_of(C * HW), [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      if (!nhwc) {
        for (int64_t c = 0; c < C; ++c) std::fill(gx + (n * C + c) * HW, gx + (n * C + c + 1) * HW,
                                                  T(acc_t(gy[n * C + c]) / acc_t(HW)));
      } else {
        for (int64_t q = 0; q < HW; ++q) {
          T* __restrict out = gx + (n * HW + q) * C;
          for (int64_t c = 0; c < C; ++c) out[c] = T(acc_t(gy[n * C + c]) / acc_t(HW));
        }
      }
    }
  });
}

// NCHW forward: the row kernel for regular windows (adaptive ones of one size
// included) on planes under 2^24 positions, the per-output loop otherwise and
// for rows of fewer than 8 outputs, where the row kernel's set-up per row costs
// more than it saves (measured: 512 planes of 14x14 pooled 2x2, 0.97 of
// torch's speed with it, 1.06 without; 16x16 pooled 4x4: 0.77 and 1.24).
constexpr int64_t kMinRowOutputs = 8;
template <typename T>
void forward_nchw_any(const T* x, T* y, int64_t* ind, int64_t planes, const PoolPlan& p, bool is_max) {
  PoolPlan r = p;
  r.h = regular_axis(p.h);
  r.w = regular_axis(p.w);
  if (r.h.adaptive || r.w.adaptive || r.h.in * r.w.in >= kExactFloatIndex || r.w.out < kMinRowOutputs)
    return forward_nchw<T>(x, y, ind, planes, p, is_max);
  switch (r.w.s) {
    case 1: return forward_nchw_rows<1, T>(x, y, ind, planes, r, is_max);
    case 2: return forward_nchw_rows<2, T>(x, y, ind, planes, r, is_max);
    default: return forward_nchw_rows<0, T>(x, y, ind, planes, r, is_max);
  }
}

// An average over each whole plane: adaptive to 1x1, or one unpadded, undilated window the
// input's size (avg_pool2d(x, kernel_size=(H, W))) without a divisor override; the latter had
// gone through the windowed kernels (two threads, Zen 4, in-process: 8 x 2048 x 7 x 7 NCHW 0.33 ->
// 0.08 ms (torch 0.33-0.38), 8 x 1024 x 14 x 14 0.55 -> 0.09 (0.52-0.72); channels_last 0.074 ->
// 0.04-0.05 (torch 0.04-0.07)).
bool whole_axis(const PoolAxis& a) { return a.out == 1 && (a.adaptive || (a.p == 0 && a.d == 1 && a.k == a.in)); }
bool is_global_avg(const PoolPlan& p, bool is_max) {
  return !is_max && whole_axis(p.h) && whole_axis(p.w) &&
         ((p.h.adaptive && p.w.adaptive) || (!p.h.adaptive && !p.w.adaptive && p.div.divisor_override == 0));
}

struct CpuPool {
  // indices false: max pooling's values alone (the indices tensor undefined), where a kernel
  // has that form (float channels_last); elsewhere they are made and dropped by the caller.
  static std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& input, const PoolPlan& p, bool is_max,
                                                    bool indices = true) {
    TORCH_CHECK(input.device().is_cpu(), "convx pooling (CPU): expected a CPU tensor");
    const auto mf = input.suggest_memory_format();
    const bool nhwc = mf == at::MemoryFormat::ChannelsLast;
    auto y = at::empty(p.out_size, input.options().memory_format(mf));
    at::Tensor ind;
    const bool values_only = !indices && nhwc && input.scalar_type() == at::kFloat;
    if (is_max && !values_only) ind = at::empty(p.out_size, input.options().dtype(at::kLong).memory_format(mf));
    if (y.numel() == 0) return {y, ind};
    auto x = input.contiguous(mf);
    const int64_t N = p.out_size[0], C = p.out_size[1];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool2d_forward_cpu", [&] {
      int64_t* ip = ind.defined() ? ind.data_ptr<int64_t>() : nullptr;
      if (is_global_avg(p, is_max))
        global_avg_forward<scalar_t>(x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), N, C, p.h.in * p.w.in,
                                     nhwc);
      else if (nhwc)
        forward_nhwc<scalar_t>(x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), ip, N, C, p, is_max);
      else
        forward_nchw_any<scalar_t>(x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), ip, N * C, p, is_max);
    });
    return {y, ind};
  }

  static at::Tensor backward(const at::Tensor& grad_output, const at::Tensor& indices, at::IntArrayRef input_size,
                             const PoolPlan& p, bool is_max) {
    TORCH_CHECK(grad_output.device().is_cpu(), "convx pooling (CPU): expected a CPU tensor");
    const auto mf = grad_output.suggest_memory_format();
    const bool nhwc = mf == at::MemoryFormat::ChannelsLast;
    auto gx = at::empty(input_size, grad_output.options().memory_format(mf));
    if (gx.numel() == 0) return gx;
    if (grad_output.numel() == 0) return gx.zero_();
    auto gy = grad_output.contiguous(mf);
    at::Tensor ind = is_max ? indices.contiguous(mf) : at::Tensor();
    const int64_t N = input_size[0], C = input_size[1];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "pool2d_backward_cpu", [&] {
      const int64_t* ip = is_max ? ind.const_data_ptr<int64_t>() : nullptr;
      if (is_global_avg(p, is_max))
        global_avg_backward<scalar_t>(gy.const_data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), N, C,
                                      p.h.in * p.w.in, nhwc);
      else if (nhwc)
        backward_nhwc<scalar_t>(gy.const_data_ptr<scalar_t>(), ip, gx.data_ptr<scalar_t>(), N, C, p, is_max);
      else
        backward_nchw<scalar_t>(gy.const_data_ptr<scalar_t>(), ip, gx.data_ptr<scalar_t>(), N * C, p, is_max);
    });
    return gx;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(convx, CPU, m) {
  CONVX_REGISTER_POOL_OPS(m, CpuPool);
}

}  // namespace convx::cpu
