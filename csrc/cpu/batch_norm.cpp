// Batch normalization and the fused residual tail on the CPU (ops and their
// semantics: common/norm_ops.h).
//
// Statistics: NCHW in two passes (mean, then the sum of squared deviations from
// it), accumulated in double, so an input with a large offset (mean 1e3, std 1)
// keeps its variance to full float precision where E[x^2] - E[x]^2 would not;
// channels_last in one pass around a shift sampled from the input, with the
// second pass only where the shift lies far from the mean (CpuNorm::stats).
// NCHW reduces one channel per task; channels_last reduces fixed pixel chunks
// into per-chunk rows that are then summed in chunk order (deterministic for a
// given thread count).
//
// Forward: y = act(x * scale[c] + shift[c] (+ residual)), one pass: reads x
// (and the residual) once, writes y once. Backward: one reduction pass over
// (dy, y, x) for sum(dz) and sum(dz * xhat), writing dz as the residual's
// gradient when asked, then one elementwise pass for dx.
//
// Bytes (float32, training, N*C*H*W = E): forward 4E*4 NCHW (stats 2 reads, apply
// 1 read + 1 write), 3E*4 channels_last (stats 1 read), +1 read with a residual
// (which torch's eager sequence reads, writes and re-reads); backward about 5E*4
// (+1 write for dresidual).
#include "../common/norm_ops.h"
#include "isa_each.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace convx::cpu {
namespace {

using Geom = NormGeom;
inline Geom geom(const at::Tensor& x) { return norm_geom(x); }
inline at::MemoryFormat fmt(const Geom& g) { return g.format(); }

// ---------------------------------------------------------------- vectorisable building blocks
// Plain functions over restrict pointers with the options as template
// arguments, so each inner loop is branch-free and the compiler vectorises it.
// Reductions keep 8 partial sums in the compute type over blocks of 1024
// elements and fold each block into double: vector speed, double accuracy.

constexpr int kLanes = 8;
constexpr int64_t kBlock = 1024;

// s[0] += sum(x - shift), s[1] += sum((x - shift)^2)  (shift = 0 for the mean pass)
template <typename T, bool kSquares>
void moments_span(const T* __restrict x, int64_t n, at::opmath_type<T> shift, double* s) {
  using acc_t = at::opmath_type<T>;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    acc_t a[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= m; i += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const acc_t d = acc_t(x[b + i + l]) - shift;
        a[l] += kSquares ? d * d : d;
      }
    for (; i < m; ++i) {
      const acc_t d = acc_t(x[b + i]) - shift;
      a[0] += kSquares ? d * d : d;
    }
    double t = 0;
    for (int l = 0; l < kLanes; ++l) t += double(a[l]);
    s[0] += t;
  }
}

// The channels_last row loops below are always inlined into each_streaming()'s builds
// (isa_each.h: AVX2 at most, else the baseline, by the CPU's feature bits); this file is
// otherwise compiled for baseline x86-64 (measured: the channels_last training
// step 10-20 % faster with 16-float registers than with 4). Not AVX-512's: on Zen 5 (2 threads,
// batch 8, training forward + backward, in-process A/B, each op on its own tensors) its builds
// were slower, 1.80 -> 1.47 ms @28 x 512, 0.77 -> 0.68 @14 x 1024, 3.75 -> 3.22 @112 x 64,
// 3.48 -> 3.31 @56 x 256 (eval within 2 %); the NCHW planes keep AVX-512's (eval @28 x 512
// 0.40 against 0.51, @7 x 2048 0.053 against 0.061).
//
// Channel rows (channels_last): s1[c] += x[c] - shift[c] and s2[c] += (x[c] -
// shift[c])^2 over npix pixel rows `stride` apart, in the compute type;
// channel_sums folds the rows into double every few pixels. Four pixels a pass:
// one load and store of each sum per four elements (a row-at-a-time loop was
// bound by them). Both sums in one read: CpuNorm::stats takes the shift close to
// the mean, so E[d^2] - E[d]^2 loses nothing, or the mean itself.
template <typename T>
CONVX_ALWAYS_INLINE inline void shifted_moments_rows(const T* __restrict x, int64_t stride, int64_t npix, int64_t C,
                                                     const at::opmath_type<T>* __restrict shift,
                                                     at::opmath_type<T>* __restrict s1,
                                                     at::opmath_type<T>* __restrict s2) {
  using acc_t = at::opmath_type<T>;
  int64_t p = 0;
  for (; p + 4 <= npix; p += 4) {
    const T* __restrict r0 = x + p * stride;
    const T* __restrict r1 = r0 + stride;
    const T* __restrict r2 = r1 + stride;
    const T* __restrict r3 = r2 + stride;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t d0 = acc_t(r0[c]) - shift[c], d1 = acc_t(r1[c]) - shift[c];
      const acc_t d2 = acc_t(r2[c]) - shift[c], d3 = acc_t(r3[c]) - shift[c];
      s1[c] += (d0 + d1) + (d2 + d3);
      s2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }
  }
  for (; p < npix; ++p) {
    const T* __restrict r = x + p * stride;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t d = acc_t(r[c]) - shift[c];
      s1[c] += d;
      s2[c] += d * d;
    }
  }
}

// y = act(x * scale + shift (+ r)) over a span with one (scale, shift).
template <typename T, bool kRes, bool kRelu>
CONVX_ALWAYS_INLINE inline void apply_span(const T* __restrict x, const T* __restrict r, T* __restrict y, int64_t n,
                                           at::opmath_type<T> scale, at::opmath_type<T> shift) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = 0; i < n; ++i) {
    acc_t v = acc_t(x[i]) * scale + shift;
    if constexpr (kRes) v += acc_t(r[i]);
    if constexpr (kRelu) v = v <= acc_t(0) ? acc_t(0) : v;  // NaN stays NaN, as torch.relu
    y[i] = T(v);
  }
}

// The same over npix channels_last rows (C channels, `stride` apart), per-channel (scale, shift).
template <typename T, bool kRes, bool kRelu>
CONVX_ALWAYS_INLINE inline void apply_rows(const T* __restrict x, const T* __restrict r, T* __restrict y, int64_t stride, int64_t npix, int64_t C,
                const at::opmath_type<T>* __restrict scale, const at::opmath_type<T>* __restrict shift) {
  using acc_t = at::opmath_type<T>;
  for (int64_t p = 0; p < npix; ++p, x += stride, y += stride) {
    const T* __restrict rp = kRes ? r + p * stride : nullptr;
    for (int64_t c = 0; c < C; ++c) {
      acc_t v = acc_t(x[c]) * scale[c] + shift[c];
      if constexpr (kRes) v += acc_t(rp[c]);
      if constexpr (kRelu) v = v <= acc_t(0) ? acc_t(0) : v;  // NaN stays NaN, as torch.relu
      y[c] = T(v);
    }
  }
}

// dz = dy * [y > 0] (or dy); optionally stored; s[0] += sum dz, s[1] += sum dz * (x - mean).
template <typename T, bool kRelu, bool kStore>
void bwd_sums_span(const T* __restrict dy, const T* __restrict y, const T* __restrict x, T* __restrict dz, int64_t n,
                   at::opmath_type<T> mean, double* s) {
  using acc_t = at::opmath_type<T>;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    acc_t a[kLanes] = {}, q[kLanes] = {};
    for (int64_t i0 = 0; i0 < m; i0 += kLanes) {
      const int64_t len = std::min<int64_t>(kLanes, m - i0);
      for (int l = 0; l < len; ++l) {
        const int64_t i = b + i0 + l;
        acc_t d = acc_t(dy[i]);
        if constexpr (kRelu) d = acc_t(y[i]) <= acc_t(0) ? acc_t(0) : d;
        if constexpr (kStore) dz[i] = T(d);
        a[l] += d;
        q[l] += d * (acc_t(x[i]) - mean);
      }
    }
    double ta = 0, tq = 0;
    for (int l = 0; l < kLanes; ++l) {
      ta += double(a[l]);
      tq += double(q[l]);
    }
    s[0] += ta;
    s[1] += tq;
  }
}

// The same over npix channels_last rows `stride` apart (C channels), per-channel
// mean, into s1[c] (sum dz) and s2[c] (sum dz * (x - mean)), a row at a time: two
// tensors read in one sweep each (two, then four rows a pass read them as four / eight
// interleaved streams, which Zen 4's prefetchers followed late: one core summed an
// 8x256x56x56 pair at 12 GB/s against torch's 22; 2 threads, cold caches, in one process:
// 2.29 ms four rows a pass, 1.77 a row at a time).
template <typename T, bool kRelu, bool kStore>
CONVX_ALWAYS_INLINE inline void bwd_sums_rows(const T* __restrict dy, const T* __restrict y, const T* __restrict x, T* __restrict dz,
                   int64_t stride, int64_t npix, int64_t C, const at::opmath_type<T>* __restrict mean,
                   at::opmath_type<T>* __restrict s1, at::opmath_type<T>* __restrict s2) {
  using acc_t = at::opmath_type<T>;
  auto grad = [&](int64_t i) {
    acc_t d = acc_t(dy[i]);
    if constexpr (kRelu) d = acc_t(y[i]) <= acc_t(0) ? acc_t(0) : d;
    if constexpr (kStore) dz[i] = T(d);
    return d;
  };
  for (int64_t p = 0; p < npix; ++p) {
    const int64_t o = p * stride;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t d = grad(o + c);
      s1[c] += d;
      s2[c] += d * (acc_t(x[o + c]) - mean[c]);
    }
  }
}

// dx = A * dz + B * x + C0 with dz read back or recomputed from (dy, y); in
// eval mode dx = A * dz (x is not read: a NaN in x must not reach dx, as in torch).
template <typename T, bool kRelu, bool kHaveDz>
void dx_span(const T* __restrict dy, const T* __restrict y, const T* __restrict dz, const T* __restrict x,
             T* __restrict dx, int64_t n, at::opmath_type<T> A, at::opmath_type<T> B, at::opmath_type<T> C0,
             bool train) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = 0; i < n; ++i) {
    acc_t d;
    if constexpr (kHaveDz) {
      d = acc_t(dz[i]);
    } else {
      d = acc_t(dy[i]);
      if constexpr (kRelu) d = acc_t(y[i]) <= acc_t(0) ? acc_t(0) : d;
    }
    dx[i] = T(train ? A * d + B * acc_t(x[i]) + C0 : A * d);
  }
}

template <typename T, bool kRelu, bool kHaveDz>
CONVX_ALWAYS_INLINE inline void dx_rows(const T* __restrict dy, const T* __restrict y, const T* __restrict dz, const T* __restrict x,
             T* __restrict dx, int64_t stride, int64_t npix, int64_t C, const at::opmath_type<T>* __restrict A,
             const at::opmath_type<T>* __restrict B, const at::opmath_type<T>* __restrict C0, bool train) {
  using acc_t = at::opmath_type<T>;
  for (int64_t p = 0; p < npix; ++p) {
    const int64_t o = p * stride;
    for (int64_t c = 0; c < C; ++c) {
      acc_t d;
      if constexpr (kHaveDz) {
        d = acc_t(dz[o + c]);
      } else {
        d = acc_t(dy[o + c]);
        if constexpr (kRelu) d = acc_t(y[o + c]) <= acc_t(0) ? acc_t(0) : d;
      }
      dx[o + c] = T(train ? A[c] * d + B[c] * acc_t(x[o + c]) + C0[c] : A[c] * d);
    }
  }
}

// add_relu's and its gradient's loops run through each_streaming() (AVX2 builds: the file is
// otherwise compiled for baseline x86-64, 4 floats a register): ResNet-50's shapes, batch 8, 2
// threads, forward + backward, each tensor its own: 0.65 -> 0.52 ms @14 x 1024 NCHW, 0.69 -> 0.45
// channels_last, 3.2 -> 2.9 @56 x 256, 2.7 -> 2.5 channels_last (torch 0.78-4.1).
template <typename T>
CONVX_ALWAYS_INLINE inline void add_relu_span(const T* __restrict a, const T* __restrict b, T* __restrict out,
                                              int64_t n) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t v = acc_t(a[i]) + acc_t(b[i]);
    out[i] = T(v <= acc_t(0) ? acc_t(0) : v);
  }
}

template <typename T>
CONVX_ALWAYS_INLINE inline void relu_backward_span(const T* __restrict g, const T* __restrict y,
                                                   T* __restrict out, int64_t n) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t gv = acc_t(g[i]);
    out[i] = T(acc_t(y[i]) <= acc_t(0) ? acc_t(0) : gv);  // NaN passes, as threshold_backward
  }
}

// Turn a pair of runtime flags into template arguments.
template <typename F>
void with_flags(bool a, bool b, F&& f) {
  if (a && b) f(std::true_type{}, std::true_type{});
  else if (a) f(std::true_type{}, std::false_type{});
  else if (b) f(std::false_type{}, std::true_type{});
  else f(std::false_type{}, std::false_type{});
}

// ---------------------------------------------------------------- channel reductions

// A parallel_for grain of units of `size` elements: at least `least` units, and about 32K
// elements a task (torch's at::internal::GRAIN_SIZE): a small tensor runs on the calling thread
// without a parallel region (batch_norm on 8 channels, no grad: a region's start cost ~2 us).
inline int64_t plane_grain(int64_t size, int64_t least = 1) {
  return std::max<int64_t>(least, int64_t(32768) / std::max<int64_t>(1, size));
}

// NCHW: per channel, `span(plane_offset, HW, double* s)` over its N planes -> out[c][0..K).
// NHWC: pixel chunks, `row(pixel_offset, c0, nc, npix, acc_t* rows, rl)` accumulating
// channels [c0, c0 + nc) of npix pixels into K rows (rl apart) in the compute type,
// folded into double every kFold pixels; the chunks are summed in chunk order.
// The chunks depend on the pixel count alone (up to kMaxChunks of at least
// kMinChunk pixels), not on the thread count, so the bits do not depend on
// torch.get_num_threads(); they are small enough that a layer with few pixels
// (7x7 at batch 8: 392) still spreads over the threads, each chunk reading
// whole pixel rows (contiguous: a split by channels read 512-byte pieces of
// rows 4-8 KB apart, which the prefetchers do not follow across pages). Only a
// product with under four chunks a thread splits channels too (units: chunk x
// channel block); a channel's sums are the same whatever the blocks.
constexpr int64_t kFold = 256;
constexpr int64_t kMinChunk = 64, kMaxChunks = 32;

template <int K, typename acc_t, typename Span, typename Row>
std::vector<double> channel_sums(const Geom& g, Span span, Row row) {
  std::vector<double> out(K * g.C, 0.0);
  if (!g.nhwc) {
    at::parallel_for(0, g.C, plane_grain(g.N * g.HW), [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        double s[K] = {};
        for (int64_t n = 0; n < g.N; ++n) span(c, (n * g.C + c) * g.HW, g.HW, s);
        for (int k = 0; k < K; ++k) out[k * g.C + c] = s[k];
      }
    });
    return out;
  }
  const int64_t P = g.N * g.HW;
  if (g.C == 0 || P == 0) return out;
  const int64_t chunks = std::clamp<int64_t>((P + kMinChunk - 1) / kMinChunk, 1, kMaxChunks);
  const int64_t chunk = (P + chunks - 1) / chunks;
  // Channel blocks: whole rows up to 4096 / K channels (the K sums, 16 KB, stay in L1; a
  // 256-channel cap split ResNet's 512-channel rows in halves, read 1 KB of every 2 KB:
  // 8x512x28x28 backward sums 1.8 -> 1.0 ms), fewer where that gives under four units a
  // thread; multiples of 16 channels (whole vectors).
  const int64_t want = 4 * at::get_num_threads();
  // (the block count first, then equal blocks: 7 chunks of 2048 channels made blocks of 1792
  // and 256 channels, units seven times apart)
  int64_t blocks = (g.C + 4096 / K - 1) / (4096 / K);
  if (chunks * blocks < want) blocks = std::min((want + chunks - 1) / chunks, (g.C + 15) / 16);
  const int64_t cb = std::min(g.C, ((g.C + blocks - 1) / blocks + 15) / 16 * 16);
  blocks = (g.C + cb - 1) / cb;
  std::vector<double> part(chunks * K * g.C, 0.0);
  at::parallel_for(0, chunks * blocks, 1, [&](int64_t b, int64_t e) {
    // the K rows 64-byte aligned, each a whole number of lines (no access straddles two)
    const int64_t rl = (cb + 15) / 16 * 16;
    Aligned64<acc_t> rows_buf(K * rl);
    acc_t* rows = rows_buf.data();
    for (int64_t u = b; u < e; ++u) {
      const int64_t ch = u / blocks, c0 = u % blocks * cb, nc = std::min(cb, g.C - c0);
      double* acc = part.data() + ch * K * g.C;
      const int64_t p1 = std::min(P, (ch + 1) * chunk);
      for (int64_t p0 = ch * chunk; p0 < p1; p0 += kFold) {
        std::fill(rows, rows + K * rl, acc_t(0));
        row(p0 * g.C, c0, nc, std::min(p0 + kFold, p1) - p0, rows, rl);
        for (int k = 0; k < K; ++k)
          for (int64_t j = 0; j < nc; ++j) acc[k * g.C + c0 + j] += double(rows[k * rl + j]);
      }
    }
  });
  for (int64_t ch = 0; ch < chunks; ++ch)
    for (int64_t i = 0; i < K * g.C; ++i) out[i] += part[ch * K * g.C + i];
  return out;
}

template <typename acc_t>
std::vector<acc_t> vec_of(const at::Tensor* t, int64_t C, acc_t dflt) {
  std::vector<acc_t> out(C, dflt);
  if (!t) return out;
  auto v = t->to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  std::copy(v.template const_data_ptr<acc_t>(), v.template const_data_ptr<acc_t>() + C, out.begin());
  return out;
}

template <typename acc_t>
std::vector<acc_t> invstd_of(const at::Tensor& var, int64_t C, double eps) {
  auto v = vec_of<acc_t>(&var, C, acc_t(1));
  for (auto& x : v) x = acc_t(1) / std::sqrt(x + acc_t(eps));
  return v;
}

struct CpuNorm {
  static void stats(const at::Tensor& input, at::Tensor& mean, at::Tensor& var, const at::Tensor* rm,
                    const at::Tensor* rv, double momentum, int64_t count) {
    const Geom g = geom(input);
    auto x = input.contiguous(fmt(g));
    const double cnt = double(g.N * g.HW);
    std::vector<double> m(g.C), q;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_stats_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const auto no_span = [](int64_t, int64_t, int64_t, double*) {};
      const auto no_row = [](int64_t, int64_t, int64_t, int64_t, acc_t*, int64_t) {};
      // NCHW: per plane, sum(x - shift[c]) or sum((x - shift[c])^2).
      const auto plane_sums = [&]<bool kSquares>(std::bool_constant<kSquares>, const std::vector<acc_t>& shift) {
        return channel_sums<1, acc_t>(
            g,
            [&](int64_t c, int64_t off, int64_t n, double* acc) {
              moments_span<scalar_t, kSquares>(xp + off, n, shift[c], acc);
            },
            no_row);
      };
      // channels_last: both sum(x - shift[c]) and sum((x - shift[c])^2), in one read.
      const auto row_sums = [&](const std::vector<acc_t>& shift) {
        return channel_sums<2, acc_t>(g, no_span, [&](int64_t off, int64_t c0, int64_t nc, int64_t np, acc_t* acc,
                                                      int64_t rl) {
          each_streaming(0, 1, [&](int64_t) CONVX_ALWAYS_INLINE {
            shifted_moments_rows<scalar_t>(xp + off + c0, g.C, np, nc, shift.data() + c0, acc, acc + rl);
          });
        });
      };
      bool exact = true;  // the mean is known; the variance still needs its pass
      if (g.nhwc) {
        // One read: the sums of d = x - K and d^2 per channel, K the mean of 16 pixels
        // spread over the batch, so |mean - K| is typically a fraction of the spread and
        // var = E[d^2] - E[d]^2 cancels nothing that matters. Where it would (|mean - K|
        // over one standard deviation: say a constant border in the sampled pixels),
        // the variance gets its own pass around the mean as for NCHW, so an input with
        // mean 1e3 and std 1 keeps full precision either way. A non-finite K falls back
        // to 0, so infinities and NaNs come out as torch's (mean inf, var NaN).
        // Measured on Zen 4 at 32x256x56x56: 10.7 ms for two passes, 5.2 for one
        // (torch's one pass 5.2-7.9).
        const int64_t P = g.N * g.HW, k = std::min<int64_t>(P, 16);
        // (pixel by pixel along the rows, as many sums as channels: the same additions per
        // channel in the same order as a channel's 16 reads at a time, which cost 2048-channel
        // statistics at 7x7 about a tenth of their time)
        std::vector<acc_t> K(g.C, acc_t(0));
        std::vector<double> t(g.C, 0.0);
        for (int64_t i = 0; i < k; ++i) {
          const scalar_t* r = xp + (i * P / k) * g.C;
          for (int64_t c = 0; c < g.C; ++c) t[c] += double(r[c]);
        }
        for (int64_t c = 0; c < g.C; ++c) {
          const double kc = k ? t[c] / double(k) : 0.0;
          K[c] = std::isfinite(kc) ? acc_t(kc) : acc_t(0);
        }
        const auto s = row_sums(K);
        q.assign(g.C, 0.0);
        exact = false;
        for (int64_t c = 0; c < g.C; ++c) {
          const double d = s[c] / cnt, v = s[g.C + c] / cnt - d * d;
          m[c] = double(K[c]) + d;
          q[c] = (v < 0 ? 0.0 : v) * cnt;  // (a NaN stays NaN)
          if (d * d > v && std::isfinite(m[c])) exact = true;
        }
      } else {
        const auto s = plane_sums(std::false_type{}, std::vector<acc_t>(g.C, acc_t(0)));
        for (int64_t c = 0; c < g.C; ++c) m[c] = s[c] / cnt;
      }
      if (!exact) return;
      // Second pass: squared deviations from the mean (no E[x^2] - E[x]^2).
      const std::vector<acc_t> ma(m.begin(), m.end());
      if (g.nhwc) {
        const auto s = row_sums(ma);
        q.assign(s.begin() + g.C, s.end());
      } else {
        q = plane_sums(std::true_type{}, ma);
      }
    });
    AT_DISPATCH_FLOATING_TYPES(mean.scalar_type(), "batch_norm_stats_out", [&] {
      for (int64_t c = 0; c < g.C; ++c) {
        mean.data_ptr<scalar_t>()[c] = scalar_t(m[c]);
        var.data_ptr<scalar_t>()[c] = scalar_t(q[c] / cnt);
      }
    });
    if (!rm) return;
    const double unbias = double(count) / double(count - 1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rm->scalar_type(), "batch_norm_update_running", [&] {
      auto* rmp = rm->data_ptr<scalar_t>();
      auto* rvp = rv->data_ptr<scalar_t>();
      for (int64_t c = 0; c < g.C; ++c) {
        rmp[c] = scalar_t((1 - momentum) * double(rmp[c]) + momentum * m[c]);
        rvp[c] = scalar_t((1 - momentum) * double(rvp[c]) + momentum * (q[c] / cnt) * unbias);
      }
    });
  }

  static at::Tensor apply(const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
                          const at::Tensor* weight, const at::Tensor* bias, const at::Tensor* residual, double eps,
                          bool relu) {
    const Geom g = geom(input);
    auto x = input.contiguous(fmt(g));
    at::Tensor r = residual ? residual->contiguous(fmt(g)) : at::Tensor();
    auto y = at::empty_like(x, fmt(g));
    if (y.numel() == 0) return y;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto inv = invstd_of<acc_t>(var, g.C, eps);
      const auto mu = vec_of<acc_t>(&mean, g.C, 0), w = vec_of<acc_t>(weight, g.C, 1), b = vec_of<acc_t>(bias, g.C, 0);
      std::vector<acc_t> scale(g.C), shift(g.C);
      for (int64_t c = 0; c < g.C; ++c) {
        scale[c] = w[c] * inv[c];
        shift[c] = b[c] - mu[c] * scale[c];
      }
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* rp = residual ? r.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* yp = y.data_ptr<scalar_t>();
      with_flags(rp != nullptr, relu, [&](auto kRes, auto kRelu) {
        if (!g.nhwc) {
          // (each plane through each(): the widest ISA's build, like the channels_last rows; the
          // baseline build ran 4 floats a step, 0.92-0.96x torch on 7x7 and 14x14 planes)
          at::parallel_for(0, g.N * g.C, plane_grain(g.HW, 4), [&](int64_t b0, int64_t e0) {
            each(b0, e0, [&](int64_t pl) CONVX_ALWAYS_INLINE {
              const int64_t c = pl % g.C, off = pl * g.HW;
              apply_span<scalar_t, kRes(), kRelu()>(xp + off, rp ? rp + off : nullptr, yp + off, g.HW, scale[c],
                                                    shift[c]);
            });
          });
        } else {
          at::parallel_for(0, g.N * g.HW, plane_grain(g.C, 16), [&](int64_t b0, int64_t e0) {
            const int64_t off = b0 * g.C;
            each_streaming(0, 1, [&](int64_t) CONVX_ALWAYS_INLINE {
              apply_rows<scalar_t, kRes(), kRelu()>(xp + off, rp ? rp + off : nullptr, yp + off, g.C, e0 - b0, g.C,
                                                    scale.data(), shift.data());
            });
          });
        }
      });
    });
    return y;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
      const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
      const at::Tensor* weight, const at::Tensor* output, double eps, bool training, bool relu,
      std::array<bool, 4> mask) {
    const Geom g = geom(input);
    auto x = input.contiguous(fmt(g));
    auto gy = grad_out.contiguous(fmt(g));
    at::Tensor y = relu ? output->contiguous(fmt(g)) : at::Tensor();
    const auto wopts = weight ? weight->options() : x.options().dtype(stat_type(x.scalar_type()));
    // Outputs not asked for are empty, not undefined.
    at::Tensor gx = mask[0] ? at::empty_like(x, fmt(g)) : at::empty({0}, x.options());
    at::Tensor gw = at::empty({mask[1] ? g.C : 0}, wopts);
    at::Tensor gb = at::empty({mask[2] ? g.C : 0}, wopts);
    at::Tensor gr = mask[3] ? at::empty_like(x, fmt(g)) : at::empty({0}, x.options());
    const double cnt = double(g.N * g.HW);
    std::vector<double> sums(2 * g.C, 0.0);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto inv = invstd_of<acc_t>(var, g.C, eps);
      const auto mu = vec_of<acc_t>(&mean, g.C, 0), w = vec_of<acc_t>(weight, g.C, 1);
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* gp = gy.const_data_ptr<scalar_t>();
      const scalar_t* yp = relu ? y.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* grp = mask[3] ? gr.data_ptr<scalar_t>() : nullptr;
      const bool need_sums = training ? (mask[0] || mask[1] || mask[2]) : (mask[1] || mask[2]);
      if (need_sums || grp) {
        with_flags(relu, grp != nullptr, [&](auto kRelu, auto kStore) {
          sums = channel_sums<2, acc_t>(
              g,
              [&](int64_t c, int64_t off, int64_t n, double* s) {
                bwd_sums_span<scalar_t, kRelu(), kStore()>(gp + off, yp ? yp + off : nullptr, xp + off,
                                                           grp ? grp + off : nullptr, n, mu[c], s);
              },
              [&](int64_t off, int64_t c0, int64_t nc, int64_t np, acc_t* acc, int64_t rl) {
                off += c0;
                each_streaming(0, 1, [&](int64_t) CONVX_ALWAYS_INLINE {
                  bwd_sums_rows<scalar_t, kRelu(), kStore()>(gp + off, yp ? yp + off : nullptr, xp + off,
                                                             grp ? grp + off : nullptr, g.C, np, nc, mu.data() + c0,
                                                             acc, acc + rl);
                });
              });
        });
      }
      if (mask[0]) {
        std::vector<acc_t> A(g.C), B(g.C), C0(g.C);
        for (int64_t c = 0; c < g.C; ++c) {
          const acc_t k = w[c] * inv[c];
          A[c] = k;
          if (training) {
            const acc_t mg = acc_t(sums[c] / cnt), mgx = acc_t(sums[g.C + c] / cnt) * inv[c] * inv[c];
            B[c] = -k * mgx;
            C0[c] = -k * mg + k * mgx * mu[c];
          } else {
            B[c] = 0;
            C0[c] = 0;
          }
        }
        scalar_t* gxp = gx.data_ptr<scalar_t>();
        with_flags(relu, grp != nullptr, [&](auto kRelu, auto kHaveDz) {
          if (!g.nhwc) {
            at::parallel_for(0, g.N * g.C, plane_grain(g.HW, 4), [&](int64_t b0, int64_t e0) {
              for (int64_t pl = b0; pl < e0; ++pl) {
                const int64_t c = pl % g.C, off = pl * g.HW;
                dx_span<scalar_t, kRelu(), kHaveDz()>(gp + off, yp ? yp + off : nullptr, grp ? grp + off : nullptr,
                                                      xp + off, gxp + off, g.HW, A[c], B[c], C0[c], training);
              }
            });
          } else {
            at::parallel_for(0, g.N * g.HW, plane_grain(g.C, 16), [&](int64_t b0, int64_t e0) {
              const int64_t off = b0 * g.C;
              each_streaming(0, 1, [&](int64_t) CONVX_ALWAYS_INLINE {
                dx_rows<scalar_t, kRelu(), kHaveDz()>(gp + off, yp ? yp + off : nullptr, grp ? grp + off : nullptr,
                                                      xp + off, gxp + off, g.C, e0 - b0, g.C, A.data(), B.data(),
                                                      C0.data(), training);
              });
            });
          }
        });
      }
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, wopts.dtype().toScalarType(), "bn_bwd_w", [&] {
        for (int64_t c = 0; c < g.C; ++c) {
          if (mask[1]) gw.data_ptr<scalar_t>()[c] = scalar_t(sums[g.C + c] * double(inv[c]));
          if (mask[2]) gb.data_ptr<scalar_t>()[c] = scalar_t(sums[c]);
        }
      });
    });
    return {gx, gw, gb, gr};
  }

  static void add_relu(const at::Tensor& a, const at::Tensor& b, at::Tensor& out) {
    const auto mf = out.suggest_memory_format();
    auto ac = a.contiguous(mf), bc = b.contiguous(mf);
    const int64_t n = out.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "add_relu_cpu", [&] {
      const scalar_t* ap = ac.const_data_ptr<scalar_t>();
      const scalar_t* bp = bc.const_data_ptr<scalar_t>();
      scalar_t* op = out.data_ptr<scalar_t>();
      at::parallel_for(0, n, 32768, [&](int64_t s, int64_t e) {
        each_streaming(0, 1, [&](int64_t) CONVX_ALWAYS_INLINE { add_relu_span(ap + s, bp + s, op + s, e - s); });
      });
    });
  }

  static at::Tensor relu_backward(const at::Tensor& grad_out, const at::Tensor& output) {
    const auto mf = output.suggest_memory_format();
    auto g = grad_out.contiguous(mf), y = output.contiguous(mf);
    auto gx = at::empty_like(y, mf);
    const int64_t n = gx.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gx.scalar_type(), "relu_backward_cpu", [&] {
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const scalar_t* yp = y.const_data_ptr<scalar_t>();
      scalar_t* op = gx.data_ptr<scalar_t>();
      at::parallel_for(0, n, 32768, [&](int64_t s, int64_t e) {
        each_streaming(0, 1, [&](int64_t) CONVX_ALWAYS_INLINE { relu_backward_span(gp + s, yp + s, op + s, e - s); });
      });
    });
    return gx;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(convx, CPU, m) {
  CONVX_REGISTER_NORM_OPS(m, CpuNorm);
}

}  // namespace convx::cpu
