// Depthwise convolution on the CPU (groups == C_in, K = C_in * multiplier):
// direct loops instead of im2col + GEMM, whose M would be the multiplier (1).
// Each output channel k reads input channel c = k / mult with its own R x S
// filter, so the work is a sliding multiply-add: memory-bound, vectorised
// along W (NCHW) or along channels (NHWC, multiplier 1).
//
//   forward  y[n,k,ho,wo]  = b[k] + sum_rs w[k,r,s] x[n,c,ho*s-p+r*d, ...]
//   dgrad    dx[n,c,h,w]   = bias[c] + sum_{m,rs} w[k,r,s] dy[n,k,ho,wo]  (a gather over
//                            the (ho, wo) that read (h, w); no atomics)
//   wgrad    dw[k,r,s]     = sum_{n,ho,wo} dy[n,k,ho,wo] x[n,c,h,w]
//            NCHW: one task per k; NHWC: fixed pixel chunks summed in order.
#pragma once

#include "../common/conv_params.h"
#include "gemm.h"
#include "isa_each.h"
#include "layout.h"
#include "vec.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include <xmmintrin.h>

namespace convx::cpu::depthwise {

// The loops below vectorise along W (NCHW) or along channels (NHWC); each
// parallel task runs through isa_each.h's `each` (compiled for AVX-512, AVX2 +
// FMA and the baseline; the CPU's widest is picked).
using ::convx::cpu::each;

// Output positions o with 0 <= o*stride - pad + t*dil < n: [lo, hi).
inline void valid_range(int64_t n, int64_t out, int64_t stride, int64_t pad, int64_t tap_off, int64_t& lo,
                        int64_t& hi) {
  const int64_t off = tap_off - pad;  // position = o*stride + off
  lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  hi = n - off <= 0 ? 0 : std::min(out, (n - off + stride - 1) / stride);
  if (hi < lo) hi = lo;
}

// The interior of a channels_last row: output columns [lo, hi) all of whose
// taps are inside the image; and whether output row ho's every filter row is.
struct Interior {
  int64_t lo, hi;
};
inline Interior interior_columns(const Conv2dShape& sh, const Conv2dParams& p) {
  const int64_t lo = std::min(sh.Wo, (p.pad_l + p.stride_w - 1) / p.stride_w);
  const int64_t last = sh.W - 1 + p.pad_l - (sh.S - 1) * p.dil_w;  // the last tap-0 position allowed
  return {lo, std::max(lo, std::min(sh.Wo, last < 0 ? int64_t(0) : last / p.stride_w + 1))};
}
inline bool rows_inside(int64_t ho, const Conv2dShape& sh, const Conv2dParams& p) {
  const int64_t h0 = ho * p.stride_h - p.pad_t;
  return h0 >= 0 && h0 + (sh.R - 1) * p.dil_h < sh.H;
}

// dst [Hp, Wp], zero-filled by the caller, gets the plane src [H, W] with its
// (0, 0) at (pt, pl); what falls outside dst is dropped.
template <typename T>
inline void place_plane(const T* src, int64_t H, int64_t W, T* dst, int64_t Hp, int64_t Wp, int64_t pt, int64_t pl) {
  const int64_t j0 = std::max<int64_t>(0, -pl), j1 = std::min(W, Wp - pl);
  if (j0 >= j1) return;
  for (int64_t pr = std::max<int64_t>(0, pt); pr < std::min(Hp, H + pt); ++pr)
    copy_run(dst + pr * Wp + pl + j0, src + (pr - pt) * W + j0, j1 - j0);
}

// [K, R*S] -> [R*S, K]: the weight taps-major, so channels_last loops run over k.
template <typename T>
std::vector<T> taps_major(const T* w, int64_t K, int64_t RS) {
  std::vector<T> wt(RS * K);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t rs = 0; rs < RS; ++rs) wt[rs * K + k] = w[k * RS + rs];
  return wt;
}

// One NCHW plane of a stride-1 depthwise correlation: y[H', W'] from x[H, W]
// and an R x S filter (padding pt / pl, dilation dh / dw): each output row 64
// bytes of outputs at a time, the sum in registers over the taps (bias first,
// then the taps in (r, s) order, as the general loop); the columns whose taps
// leave the image, one output at a time. The forward, and (with the filter
// turned 180 degrees) the data gradient.
struct PlaneS1 {
  int64_t H, W, Ho, Wo, R, S, pt, pl, dh, dw;
};
template <typename T>
CONVX_ALWAYS_INLINE inline void correlate_plane_s1(const T* xp, const T* wk, T bias, T* yp, const PlaneS1& g) {
  using V = typename Block<T>::v;
  constexpr int L = Block<T>::n;
  const int64_t H = g.H, W = g.W, R = g.R, S = g.S, Ho = g.Ho, Wo = g.Wo;
  // Columns wo whose every tap wo - pl + s * dw is inside [0, W).
  const int64_t in_lo = std::min(Wo, g.pl), in_hi = std::max(in_lo, std::min(Wo, W + g.pl - (S - 1) * g.dw));
  for (int64_t ho = 0; ho < Ho; ++ho) {
    int64_t r_lo = 0, r_hi = R;  // taps r with a row inside the image
    while (r_lo < R && ho - g.pt + r_lo * g.dh < 0) ++r_lo;
    while (r_hi > r_lo && ho - g.pt + (r_hi - 1) * g.dh >= H) --r_hi;
    T* __restrict yr = yp + ho * Wo;
    const T* x0 = xp + (ho - g.pt) * W - g.pl;  // tap (0, 0) of output column 0
    auto block = [&](int64_t o) {
      V acc = V{} + bias;
      for (int64_t r = r_lo; r < r_hi; ++r)
        for (int64_t s = 0; s < S; ++s) acc += wk[r * S + s] * load_block<T>(x0 + r * g.dh * W + s * g.dw + o);
      store_block<T>(yr + o, acc);
    };
    int64_t wo = in_lo;
    for (; wo + L <= in_hi; wo += L) block(wo);
    if (wo < in_hi && in_hi - in_lo >= L) {  // the last interior columns: a block overlapping the previous one
      block(in_hi - L);
      wo = in_hi;
    }
    auto one = [&](int64_t o) {
      T a = bias;
      for (int64_t r = r_lo; r < r_hi; ++r)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t ww = o - g.pl + s * g.dw;
          if (ww >= 0 && ww < W) a += wk[r * S + s] * x0[r * g.dh * W + s * g.dw + o];
        }
      yr[o] = a;
    };
    for (int64_t o = 0; o < in_lo; ++o) one(o);
    for (int64_t o = wo; o < Wo; ++o) one(o);
  }
}

// The same for planes of few columns (Wo under two blocks: the row kernel's
// blocks would mostly be edges): the plane is copied into a zero-padded
// buffer Wp = Wo + (S - 1) * dw wide, whose rows then form one flat run of
// outputs (ho * Wp + wo, the Wp - Wo columns past each row computed and
// dropped), every tap a shifted 64-byte load; the sums are the row kernel's.
// buf: plane_buffer_size() elements, zero when first handed in (a fresh std::vector): the
// planes are placed at the same rows and columns every call, so what is not the plane stays
// zero (filling the whole buffer again for every plane, and copying the results back through
// std::copy, took a third of an 8 x 576 x 14 x 14 layer's time). 3x3 filters at dilation 1
// keep their 9 taps in registers for the whole plane.
inline int64_t plane_buffer_size(const PlaneS1& g, int64_t L) {
  const int64_t Wp = g.Wo + (g.S - 1) * g.dw, Hp = g.Ho + (g.R - 1) * g.dh;
  return Hp * Wp + (g.S - 1) * g.dw + 2 * L + g.Ho * Wp + L;
}
template <typename T>
CONVX_ALWAYS_INLINE inline void correlate_plane_padded(const T* xp, const T* wk, T bias, T* yp, const PlaneS1& g,
                                                       T* buf) {
  using V = typename Block<T>::v;
  constexpr int L = Block<T>::n;
  const int64_t Wp = g.Wo + (g.S - 1) * g.dw, Hp = g.Ho + (g.R - 1) * g.dh;
  const int64_t xn = Hp * Wp + (g.S - 1) * g.dw + 2 * L;
  T* xb = buf;       // [Hp, Wp] and slack, zero where the input is not
  T* yb = buf + xn;  // [Ho, Wp] and slack
  place_plane(xp, g.H, g.W, xb, Hp, Wp, g.pt, g.pl);
  if (g.R == 3 && g.S == 3 && g.dh == 1 && g.dw == 1) {
    V wv[9];
    for (int i = 0; i < 9; ++i) wv[i] = V{} + wk[i];
    for (int64_t j = 0; j < g.Ho * Wp; j += L) {
      V acc = V{} + bias;
      for (int r = 0; r < 3; ++r)
        for (int s = 0; s < 3; ++s) acc += wv[r * 3 + s] * load_block<T>(xb + j + r * Wp + s);
      store_block<T>(yb + j, acc);
    }
  } else {
    for (int64_t j = 0; j < g.Ho * Wp; j += L) {
      V acc = V{} + bias;
      for (int64_t r = 0; r < g.R; ++r)
        for (int64_t s = 0; s < g.S; ++s) acc += wk[r * g.S + s] * load_block<T>(xb + j + r * g.dh * Wp + s * g.dw);
      store_block<T>(yb + j, acc);
    }
  }
  for (int64_t ho = 0; ho < g.Ho; ++ho) copy_run(yp + ho * g.Wo, yb + ho * Wp, g.Wo);
}

template <typename T>
constexpr bool kBlockType = std::is_same_v<T, float> || std::is_same_v<T, double>;
constexpr int64_t kMaxTurnedTaps = 64;  // filters of up to 8x8 for the NCHW data gradient's fast path

// Channels_last, multiplier 1, one pixel's gather over its listed taps:
// out[k] = bias[k] + sum_i wt[taps[2i + 1] + k] * src[taps[2i] + k] for k in
// [k0, K), 64 bytes of channels at a time in registers, then one at a time
// (the bias first, then the taps in order). The forward's and, with dY and
// its taps, the data gradient's.
template <typename T>
CONVX_ALWAYS_INLINE inline void tap_sum(const T* src, const T* wt, const int64_t* taps, int64_t nt, const T* bias,
                                        T* __restrict out, int64_t k0, int64_t K) {
  if constexpr (kBlockType<T>) {
    using V = typename Block<T>::v;
    constexpr int L = Block<T>::n;
    for (; k0 + L <= K; k0 += L) {
      V acc = bias ? load_block<T>(bias + k0) : V{};
      for (int64_t i = 0; i < nt; ++i)
        acc += load_block<T>(wt + taps[2 * i + 1] + k0) * load_block<T>(src + taps[2 * i] + k0);
      store_block<T>(out + k0, acc);
    }
  }
  for (int64_t k = k0; k < K; ++k) {
    T a = bias ? bias[k] : T(0);
    for (int64_t i = 0; i < nt; ++i) a += wt[taps[2 * i + 1] + k] * src[taps[2 * i] + k];
    out[k] = a;
  }
}

// Channels_last forward, multiplier 1, an R x S filter (compile-time): the
// pixels [wlo, whi) of output row ho of image n, all of whose taps are inside
// the image. Per 64-byte channel block the filter's taps stay in registers and
// four output pixels run at once (four independent sums hide the FMA
// latency). stream: the outputs by non-temporal stores (stream_stores). Returns the
// channels written (whole blocks).
template <int R, int S, typename T>
CONVX_ALWAYS_INLINE inline int64_t nhwc_interior(const T* x, const T* wt, const T* bias, T* y, int64_t n, int64_t ho,
                                                 int64_t wlo, int64_t whi, const Conv2dShape& sh,
                                                 const Conv2dParams& p, bool stream = false) {
  using V = typename Block<T>::v;
  constexpr int L = Block<T>::n;
  const int64_t C = sh.C, K = sh.K, H = sh.H, W = sh.W, Ho = sh.Ho, Wo = sh.Wo;
  const int64_t step = p.stride_w * C;  // between neighbouring outputs' taps
  const T* row0 = x + ((n * H + ho * p.stride_h - p.pad_t) * W - p.pad_l) * C;  // tap (0, 0) of output column 0
  T* yrow = y + (n * Ho + ho) * Wo * K;
  int64_t k0 = 0;
  for (; k0 + L <= K; k0 += L) {
    V wv[R * S];
    for (int t = 0; t < R * S; ++t) wv[t] = load_block<T>(wt + t * K + k0);
    const V bv = bias ? load_block<T>(bias + k0) : V{};
    int64_t wo = wlo;
    if (S == 3 && p.stride_w == 1 && p.dil_w == 1) {
      // eight neighbouring outputs share a filter row's 10 input vectors: 10 loads for 24
      // multiply-adds, where the four-output loop below loads every tap (12 for 12)
      for (; wo + 8 <= whi; wo += 8) {
        V a[8];
        for (int i = 0; i < 8; ++i) a[i] = bv;
        for (int r = 0; r < R; ++r) {
          const T* xr = row0 + r * p.dil_h * W * C + wo * C + k0;
          V xv[10];
          for (int j = 0; j < 10; ++j) xv[j] = load_block<T>(xr + j * C);
          for (int i = 0; i < 8; ++i) {
            a[i] += wv[r * S] * xv[i];
            a[i] += wv[r * S + 1] * xv[i + 1];
            a[i] += wv[r * S + 2] * xv[i + 2];
          }
        }
        T* yp = yrow + wo * K + k0;
        for (int i = 0; i < 8; ++i) put_block<T, T>(yp + i * K, a[i], stream);
      }
    }
    for (; wo + 4 <= whi; wo += 4) {
      V a0 = bv, a1 = bv, a2 = bv, a3 = bv;
      for (int r = 0; r < R; ++r)
        for (int s = 0; s < S; ++s) {
          const T* xp = row0 + (r * p.dil_h * W + s * p.dil_w) * C + wo * step + k0;
          const V wrs = wv[r * S + s];
          a0 += wrs * load_block<T>(xp);
          a1 += wrs * load_block<T>(xp + step);
          a2 += wrs * load_block<T>(xp + 2 * step);
          a3 += wrs * load_block<T>(xp + 3 * step);
        }
      T* yp = yrow + wo * K + k0;
      put_block<T, T>(yp, a0, stream);
      put_block<T, T>(yp + K, a1, stream);
      put_block<T, T>(yp + 2 * K, a2, stream);
      put_block<T, T>(yp + 3 * K, a3, stream);
    }
    for (; wo < whi; ++wo) {
      V a = bv;
      for (int r = 0; r < R; ++r)
        for (int s = 0; s < S; ++s)
          a += wv[r * S + s] * load_block<T>(row0 + (r * p.dil_h * W + s * p.dil_w) * C + wo * step + k0);
      store_block<T>(yrow + wo * K + k0, a);
    }
  }
  return k0;
}

// Channels_last weight gradient, multiplier 1, an R x S filter (compile-time):
// the pixels [wlo, whi) of output row ho of image n (every tap inside the
// image), summed per 64-byte channel block in R * S registers, then added to
// acc ([R * S][K]). Returns the channels done (whole blocks).
constexpr int64_t kWgradChunks = 8;  // the channels_last weight gradient's dW copies
template <int R, int S, typename T>
CONVX_ALWAYS_INLINE inline int64_t nhwc_wgrad_interior(const T* gy, const T* x, T* acc, int64_t n, int64_t ho,
                                                       int64_t wlo, int64_t whi, const Conv2dShape& sh,
                                                       const Conv2dParams& p) {
  using V = typename Block<T>::v;
  constexpr int L = Block<T>::n;
  const int64_t C = sh.C, K = sh.K, H = sh.H, W = sh.W, Ho = sh.Ho, Wo = sh.Wo;
  const int64_t step = p.stride_w * C;
  const T* row0 = x + ((n * H + ho * p.stride_h - p.pad_t) * W - p.pad_l) * C;  // tap (0, 0) of output column 0
  const T* grow = gy + (n * Ho + ho) * Wo * K;
  int64_t k0 = 0;
  for (; k0 + L <= K; k0 += L) {
    V sum[R * S];
    for (int t = 0; t < R * S; ++t) sum[t] = V{};
    for (int64_t wo = wlo; wo < whi; ++wo) {
      const V g = load_block<T>(grow + wo * K + k0);
      const T* xp = row0 + wo * step + k0;
      for (int r = 0; r < R; ++r)
        for (int s = 0; s < S; ++s) sum[r * S + s] += g * load_block<T>(xp + (r * p.dil_h * W + s * p.dil_w) * C);
    }
    for (int t = 0; t < R * S; ++t) store_block<T>(acc + t * K + k0, load_block<T>(acc + t * K + k0) + sum[t]);
  }
  return k0;
}

// One output row of forward_blocked: Wo outputs [Wo][L] from the padded rows xr ([..][Wp][L], tap
// (0, 0) of output 0 at xr) and the filter wl [R * S][L], the bias first and then the taps in
// (r, s) order. NB outputs at a time, each filter row's (NB - 1) * SW + S input vectors loaded
// once for its S taps; a last partial group recomputes the NB outputs ending at Wo (the same
// sums), and rows under NB outputs go by 4 and by 1.
template <int NB, int S, int SW, typename T>
CONVX_ALWAYS_INLINE inline void dw_outputs(const T* xr, const T* wl, typename Block<T>::v bv, T* yr, int64_t ys,
                                           int64_t R, int64_t dh, int64_t Wp, int64_t wo) {
  using V = typename Block<T>::v;
  constexpr int L = Block<T>::n, NX = (NB - 1) * SW + S;
  V a[NB];
  for (int i = 0; i < NB; ++i) a[i] = bv;
  for (int64_t r = 0; r < R; ++r) {
    const T* xp = xr + (r * dh * Wp + wo * SW) * L;
    V xv[NX];
    for (int j = 0; j < NX; ++j) xv[j] = load_block<T>(xp + j * L);
    for (int s = 0; s < S; ++s) {
      const V wv = load_block<T>(wl + (r * S + s) * L);
      for (int i = 0; i < NB; ++i) a[i] += wv * xv[i * SW + s];
    }
  }
  for (int i = 0; i < NB; ++i) store_block<T>(yr + (wo + i) * ys, a[i]);
}
template <int S, int SW, typename T>
CONVX_ALWAYS_INLINE inline void dw_row(const T* xr, const T* wl, typename Block<T>::v bv, T* yr, int64_t ys,
                                       int64_t R, int64_t dh, int64_t Wp, int64_t Wo) {
  constexpr int NB = 8;
  if (Wo >= NB) {
    int64_t wo = 0;
    for (; wo + NB <= Wo; wo += NB) dw_outputs<NB, S, SW>(xr, wl, bv, yr, ys, R, dh, Wp, wo);
    if (wo < Wo) dw_outputs<NB, S, SW>(xr, wl, bv, yr, ys, R, dh, Wp, Wo - NB);
    return;
  }
  int64_t wo = 0;
  for (; wo + 4 <= Wo; wo += 4) dw_outputs<4, S, SW>(xr, wl, bv, yr, ys, R, dh, Wp, wo);
  if (wo < Wo && Wo >= 4) return dw_outputs<4, S, SW>(xr, wl, bv, yr, ys, R, dh, Wp, Wo - 4);
  for (; wo < Wo; ++wo) dw_outputs<1, S, SW>(xr, wl, bv, yr, ys, R, dh, Wp, wo);
}
// Any filter width, stride and dilation along W: each tap one load an output.
template <typename T>
CONVX_ALWAYS_INLINE inline void dw_row_any(const T* xr, const T* wl, typename Block<T>::v bv, T* yr, int64_t ys,
                                           int64_t R, int64_t S, int64_t sw, int64_t dh, int64_t dw, int64_t Wp,
                                           int64_t Wo) {
  using V = typename Block<T>::v;
  constexpr int L = Block<T>::n, NB = 8;
  auto group = [&](int64_t wo, auto nb) CONVX_ALWAYS_INLINE {
    constexpr int n = decltype(nb)::value;
    V a[n];
    for (int i = 0; i < n; ++i) a[i] = bv;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s) {
        const V wv = load_block<T>(wl + (r * S + s) * L);
        const T* xp = xr + (r * dh * Wp + wo * sw + s * dw) * L;
        for (int i = 0; i < n; ++i) a[i] += wv * load_block<T>(xp + i * sw * L);
      }
    for (int i = 0; i < n; ++i) store_block<T>(yr + (wo + i) * ys, a[i]);
  };
  int64_t wo = 0;
  for (; wo + NB <= Wo; wo += NB) group(wo, std::integral_constant<int, NB>{});
  if (wo < Wo && Wo >= NB) return group(Wo - NB, std::integral_constant<int, NB>{});
  for (; wo < Wo; ++wo) group(wo, std::integral_constant<int, 1>{});
}

// Channel blocks (forward_blocked, data_grad_blocked): the pieces both use. A block is channels
// [c0, c0 + nc) of image n, nc <= L, lanes past nc zero.
// Its filter [R * S][L] and bias [L] from w [C][R * S] and bias [C] (or none).
template <typename T>
CONVX_ALWAYS_INLINE inline void block_filter(const T* w, const T* bias, int64_t c0, int64_t nc, int64_t RS, T* wl,
                                             T* bl) {
  constexpr int L = Block<T>::n;
  for (int64_t t = 0; t < RS; ++t)
    for (int l = 0; l < L; ++l) wl[t * L + l] = l < nc ? w[(c0 + l) * RS + t] : T(0);
  for (int l = 0; l < L; ++l) bl[l] = bias && l < nc ? bias[c0 + l] : T(0);
}
// Row `row` of t ([N][C][Hh][Ww], NCHW or channels_last) into d ([Wb][L]): its columns from w0 on at
// [j0, j1), zeros around them; a row outside [0, Hh) all zeros.
template <typename T>
CONVX_ALWAYS_INLINE inline void block_row(const T* t, int64_t n, int64_t C, int64_t Hh, int64_t Ww, int64_t c0,
                                          int64_t nc, int64_t row, int64_t w0, int64_t j0, int64_t j1, int64_t Wb,
                                          bool nhwc, T* d) {
  constexpr int L = Block<T>::n;
  if (row < 0 || row >= Hh || j0 >= j1) {
    std::fill(d, d + Wb * L, T(0));
    return;
  }
  std::fill(d, d + j0 * L, T(0));
  std::fill(d + j1 * L, d + Wb * L, T(0));
  if (nhwc) {
    const T* src = t + ((n * Hh + row) * Ww + w0) * C + c0;
    if (nc == L)
      for (int64_t j = j0; j < j1; ++j) store_block<T>(d + j * L, load_block<T>(src + (j - j0) * C));
    else
      for (int64_t j = j0; j < j1; ++j)
        for (int l = 0; l < L; ++l) d[j * L + l] = l < nc ? src[(j - j0) * C + l] : T(0);
  } else if constexpr (sizeof(T) == 4) {
    transpose_strided(reinterpret_cast<const float*>(t + ((n * C + c0) * Hh + row) * Ww + w0), Hh * Ww,
                      reinterpret_cast<float*>(d + j0 * L), L, nc, j1 - j0);
  } else {
    for (int l = 0; l < nc; ++l)
      for (int64_t j = j0; j < j1; ++j) d[j * L + l] = t[((n * C + c0 + l) * Hh + row) * Ww + w0 + j - j0];
  }
}
// Rows [r0, r1) of a block's result out ([r1 - r0][Ww][L]) into y ([N][C][Hh][Ww], either layout).
template <typename T>
CONVX_ALWAYS_INLINE inline void block_store(const T* out, T* y, int64_t n, int64_t C, int64_t Hh, int64_t Ww,
                                            int64_t c0, int64_t nc, int64_t r0, int64_t r1, bool nhwc) {
  constexpr int L = Block<T>::n;
  if (nhwc) {
    for (int64_t q = 0; q < (r1 - r0) * Ww; ++q) {
      T* dst = y + ((n * Hh + r0) * Ww + q) * C + c0;
      if (nc == L)
        store_block<T>(dst, load_block<T>(out + q * L));
      else
        for (int l = 0; l < nc; ++l) dst[l] = out[q * L + l];
    }
  } else if constexpr (sizeof(T) == 4) {
    transpose_strided(reinterpret_cast<const float*>(out), L,
                      reinterpret_cast<float*>(y + ((n * C + c0) * Hh + r0) * Ww), Hh * Ww, (r1 - r0) * Ww, nc);
  } else {
    for (int64_t q = 0; q < (r1 - r0) * Ww; ++q)
      for (int l = 0; l < nc; ++l) y[((n * C + c0 + l) * Hh + r0) * Ww + q] = out[q * L + l];
  }
}

// Multiplier 1, either layout, any filter, stride, padding and dilation, on a block of L channels
// (64 bytes) at a time: a band of the image's rows copied zero-padded into the thread's buffer
// [rows][Wp][L] (channels_last: 64 bytes a pixel; NCHW: the L planes' rows transposed in), then
// every output of the band is the bias plus its R x S taps in (r, s) order, eight outputs at a
// time (dw_row), no output at an edge treated apart; the band's output rows stored (NCHW:
// transposed back into the planes; channels_last, whole blocks, straight into y). Units (image,
// band of output rows), each through every channel block in turn (the band's input lines, all
// the channels of its pixels, then come from L2 for the next block); a block's rows fit kBandBytes.
constexpr int64_t kBandBytes = int64_t(96) << 10;
template <typename T>
void forward_blocked(const T* x, const T* w, const T* bias, T* y, const Conv2dShape& sh, const Conv2dParams& p,
                     bool nhwc) {
  constexpr int L = Block<T>::n;
  const int64_t N = sh.N, C = sh.C, H = sh.H, W = sh.W, R = sh.R, S = sh.S, Ho = sh.Ho, Wo = sh.Wo;
  const int64_t sh_ = p.stride_h, sw = p.stride_w, dh = p.dil_h, dw = p.dil_w;
  const int64_t Wp = (Wo - 1) * sw + (S - 1) * dw + 1;  // the columns the outputs read, from -pad_l on
  const int64_t row_bytes = Wp * L * int64_t(sizeof(T));
  const int64_t fit = std::max<int64_t>(1, (kBandBytes / row_bytes - (R - 1) * dh - 1) / sh_ + 1);
  const int64_t band = std::min(Ho, fit), bands = (Ho + band - 1) / band, blocks = (C + L - 1) / L;
  const int64_t rows_max = (band - 1) * sh_ + (R - 1) * dh + 1;
  at::parallel_for(0, N * bands, 1, [&](int64_t b, int64_t e) {
    Aligned64<T> buf_(rows_max * Wp * L + band * Wo * L + R * S * L + L);
    T* buf = buf_.data();
    T* out = buf + rows_max * Wp * L;  // the band's outputs [band][Wo][L]
    T* wl = out + band * Wo * L;       // the block's filter [R * S][L], then its bias [L]
    T* bl = wl + R * S * L;
    each(0, (e - b) * blocks, [&](int64_t v) CONVX_ALWAYS_INLINE {
      using V = typename Block<T>::v;
      const int64_t u = b + v / blocks, n = u / bands, bd = u % bands, cb = v % blocks;
      const int64_t c0 = cb * L, nc = std::min<int64_t>(L, C - c0);
      const int64_t ho0 = bd * band, ho1 = std::min(Ho, ho0 + band), h0 = ho0 * sh_ - p.pad_t;
      const int64_t rows = (ho1 - ho0 - 1) * sh_ + (R - 1) * dh + 1;
      block_filter(w, bias, c0, nc, R * S, wl, bl);
      // the band's input rows, zero-padded: columns [-pad_l, Wp - pad_l) of rows [h0, h0 + rows)
      const int64_t j0 = std::min(Wp, p.pad_l), j1 = std::max(j0, std::min(Wp, p.pad_l + W));
      for (int64_t i = 0; i < rows; ++i)
        block_row(x, n, C, H, W, c0, nc, h0 + i, j0 - p.pad_l, j0, j1, Wp, nhwc, buf + i * Wp * L);
      const V bv = load_block<T>(bl);
      const bool direct = nhwc && nc == L;  // the outputs stored in y itself, C apart
      for (int64_t ho = ho0; ho < ho1; ++ho) {
        const T* xr = buf + (ho - ho0) * sh_ * Wp * L;  // tap (0, 0) of output column 0
        T* yr = direct ? y + (n * Ho + ho) * Wo * C + c0 : out + (ho - ho0) * Wo * L;
        const int64_t ys = direct ? C : L;
        if (dw == 1 && S == 3 && sw == 1)
          dw_row<3, 1, T>(xr, wl, bv, yr, ys, R, dh, Wp, Wo);
        else if (dw == 1 && S == 3 && sw == 2)
          dw_row<3, 2, T>(xr, wl, bv, yr, ys, R, dh, Wp, Wo);
        else if (dw == 1 && S == 5 && sw == 1)
          dw_row<5, 1, T>(xr, wl, bv, yr, ys, R, dh, Wp, Wo);
        else if (dw == 1 && S == 5 && sw == 2)
          dw_row<5, 2, T>(xr, wl, bv, yr, ys, R, dh, Wp, Wo);
        else if (dw == 1 && S == 7 && sw == 1)
          dw_row<7, 1, T>(xr, wl, bv, yr, ys, R, dh, Wp, Wo);
        else
          dw_row_any<T>(xr, wl, bv, yr, ys, R, S, sw, dh, dw, Wp, Wo);
      }
      if (!direct) block_store(out, y, n, C, Ho, Wo, c0, nc, ho0, ho1, nhwc);
    });
  });
}

// Where forward_blocked replaces the per-layout loops below (batch 8, two threads, in-process A/B):
// NCHW at any stride but 1 (the strided loop below ran a tap at a time over the plane: 672 5x5
// stride 2 @14 1.90 -> 0.19 ms, 240 3x3 stride 2 @28 0.58 -> 0.18, 96 3x3 stride 2 @112 3.0 ->
// 1.5), and at stride 1 with a filter over 3x3 (240 5x5 @28 0.94 -> 0.36, 1152 5x5 @7 0.41 ->
// 0.20) or planes of 32 columns or more (144 3x3 @56 1.23 -> 0.84); channels_last at stride 1 with
// a filter over 3x3 (672 5x5 @14 0.41 -> 0.19, 240 5x5 @28 0.38 -> 0.24: the old loop's edges
// and 25 weights in registers). Channels_last 3x3 and stride 2 kept their direct loops, 10-55 %
// faster there (copying 64 bytes of every input pixel costs what a stride-2 output's 9 taps do).
inline bool forward_blocked_wins(const Conv2dShape& sh, const Conv2dParams& p, bool nhwc) {
  const bool s1 = p.stride_h == 1 && p.stride_w == 1, big = sh.R * sh.S > 9;
  if (nhwc) return s1 && big;
  return !s1 || big || sh.Wo >= 32;
}

// w: [K, R, S] (NCHW) ; x, y contiguous in their layout.
template <typename T>
void forward(const T* x, const T* w, const T* bias, T* y, const Conv2dShape& sh, const Conv2dParams& p, bool nhwc) {
  const int64_t N = sh.N, C = sh.C, H = sh.H, W = sh.W, K = sh.K, R = sh.R, S = sh.S, Ho = sh.Ho, Wo = sh.Wo;
  const int64_t mult = K / C;
  if constexpr (kBlockType<T>) {
    if (mult == 1 && forward_blocked_wins(sh, p, nhwc)) return forward_blocked(x, w, bias, y, sh, p, nhwc);
  }
  if (!nhwc) {
    const PlaneS1 g{H, W, Ho, Wo, R, S, p.pad_t, p.pad_l, p.dil_h, p.dil_w};
    const bool s1 = kBlockType<T> && p.stride_h == 1 && p.stride_w == 1, narrow = Wo < 2 * Block<T>::n;
    at::parallel_for(0, N * K, 1, [&](int64_t b, int64_t e) {
      std::vector<T> buf(s1 && narrow ? plane_buffer_size(g, Block<T>::n) : 0);
      each(b, e, [&](int64_t t) CONVX_ALWAYS_INLINE {
        const int64_t n = t / K, k = t % K, c = k / mult;
        const T* xp = x + (n * C + c) * H * W;
        const T* wk = w + k * R * S;
        T* yp = y + t * Ho * Wo;
        if constexpr (kBlockType<T>) {
          if (s1) {
            if (narrow)
              correlate_plane_padded(xp, wk, bias ? bias[k] : T(0), yp, g, buf.data());
            else
              correlate_plane_s1(xp, wk, bias ? bias[k] : T(0), yp, g);
            return;
          }
        }
        std::fill(yp, yp + Ho * Wo, bias ? bias[k] : T(0));
        for (int64_t r = 0; r < R; ++r) {
          int64_t ho_lo, ho_hi;
          valid_range(H, Ho, p.stride_h, p.pad_t, r * p.dil_h, ho_lo, ho_hi);
          for (int64_t s = 0; s < S; ++s) {
            int64_t wo_lo, wo_hi;
            valid_range(W, Wo, p.stride_w, p.pad_l, s * p.dil_w, wo_lo, wo_hi);
            const T wv = wk[r * S + s];
            const int64_t woff = s * p.dil_w - p.pad_l;
            for (int64_t ho = ho_lo; ho < ho_hi; ++ho) {
              const T* __restrict xr = xp + (ho * p.stride_h - p.pad_t + r * p.dil_h) * W + woff;
              T* __restrict yr = yp + ho * Wo;
              if (p.stride_w == 1)
                for (int64_t wo = wo_lo; wo < wo_hi; ++wo) yr[wo] += wv * xr[wo];
              else
                for (int64_t wo = wo_lo; wo < wo_hi; ++wo) yr[wo] += wv * xr[wo * p.stride_w];
            }
          }
        }
      });
    });
    return;
  }
  // NHWC: weight as [R, S, K] so the channel loop is contiguous. Rows whose
  // every filter row is inside the image run their interior pixels through
  // nhwc_interior (3x3 and 5x5 filters, multiplier 1); every other pixel lists
  // its taps inside the image once and, multiplier 1, runs them over the
  // channels 64 bytes at a time, the sum in registers. Every output is the
  // bias, then the taps in (r, s) order.
  const std::vector<T> wt = taps_major(w, K, R * S);
  const auto [in_lo, in_hi] = interior_columns(sh, p);
  // the interior's outputs by non-temporal stores where there are many (stream_stores)
  const bool stream = stream_stores(y, N * Ho * Wo * K * int64_t(sizeof(T)), K * int64_t(sizeof(T)));
  at::parallel_for(0, N * Ho, 1, [&](int64_t b, int64_t e) {
    std::vector<int64_t> taps(2 * R * S);  // [x offset, weight offset] per tap inside the image
    each(b, e, [&](int64_t t) CONVX_ALWAYS_INLINE {
      const int64_t n = t / Ho, ho = t % Ho;
      const bool rows_in = rows_inside(ho, sh, p);
      int64_t done_lo = 0, done_hi = 0, done_k = 0;  // pixels [lo, hi) have channels [0, done_k) written
      if constexpr (kBlockType<T>) {
        if (rows_in && mult == 1 && in_lo < in_hi) {
          if (R == 3 && S == 3)
            done_k = nhwc_interior<3, 3>(x, wt.data(), bias, y, n, ho, in_lo, in_hi, sh, p, stream);
          else if (R == 5 && S == 5)
            done_k = nhwc_interior<5, 5>(x, wt.data(), bias, y, n, ho, in_lo, in_hi, sh, p, stream);
          done_lo = in_lo;
          done_hi = in_hi;
        }
      }
      for (int64_t wo = 0; wo < Wo; ++wo) {
        if (wo == done_lo && done_k == K) wo = done_hi;  // those pixels are whole
        if (wo >= Wo) break;
        T* __restrict yp = y + ((n * Ho + ho) * Wo + wo) * K;
        int64_t nt = 0;
        for (int64_t r = 0; r < R; ++r) {
          const int64_t h = ho * p.stride_h - p.pad_t + r * p.dil_h;
          if (h < 0 || h >= H) continue;
          for (int64_t s = 0; s < S; ++s) {
            const int64_t ww = wo * p.stride_w - p.pad_l + s * p.dil_w;
            if (ww < 0 || ww >= W) continue;
            taps[2 * nt] = ((n * H + h) * W + ww) * C;
            taps[2 * nt++ + 1] = (r * S + s) * K;
          }
        }
        if (mult == 1) {
          tap_sum(x, wt.data(), taps.data(), nt, bias, yp, wo >= done_lo && wo < done_hi ? done_k : 0, K);
          continue;
        }
        for (int64_t k = 0; k < K; ++k) yp[k] = bias ? bias[k] : T(0);
        for (int64_t i = 0; i < nt; ++i) {
          const T* __restrict xp = x + taps[2 * i];
          const T* __restrict wp = wt.data() + taps[2 * i + 1];
          for (int64_t c = 0; c < C; ++c)
            for (int64_t m = 0; m < mult; ++m) yp[c * mult + m] += wp[c * mult + m] * xp[c];
        }
      }
    });
    if (stream) _mm_sfence();
  });
}

// floor(a / b) for b > 0

// The data gradient on channel blocks, multiplier 1, any filter, stride, padding and dilation:
//   dx[h, w] = bias + sum over (r, s) of w[r, s] dy[(h + pad_t - r dh) / sh, (w + pad_l - s dw) / sw]
// over the taps whose quotients are whole and inside dY, in (r, s) order. A band of dX's rows
// reads a band of dY's rows, copied zero-padded into the thread's buffer as forward_blocked's
// input (64 bytes of channels a pixel; NCHW transposed in); the columns of one phase
// (w = phi + k sw) share their taps and read consecutive dY columns, 8 outputs at a time. The
// outputs stored as forward_blocked's.
template <typename T>
void data_grad_blocked(const T* gy, const T* w, const T* bias, T* gx, const Conv2dShape& sh, const Conv2dParams& p,
                       bool nhwc) {
  constexpr int L = Block<T>::n;
  const int64_t N = sh.N, C = sh.C, H = sh.H, W = sh.W, R = sh.R, S = sh.S, Ho = sh.Ho, Wo = sh.Wo;
  const int64_t sth = p.stride_h, stw = p.stride_w, dh = p.dil_h, dw = p.dil_w;
  // dY's columns any dX column reads: [bc0, bc0 + Wb)
  const int64_t bc0 = floor_div(p.pad_l - (S - 1) * dw, stw), Wb = floor_div(W - 1 + p.pad_l, stw) - bc0 + 1;
  const int64_t row_bytes = Wb * L * int64_t(sizeof(T));
  const int64_t fit = std::max<int64_t>(1, (kBandBytes / row_bytes - (R - 1) * dh / sth - 1) * sth);
  const int64_t band = std::min(H, fit), bands = (H + band - 1) / band, blocks = (C + L - 1) / L;
  const int64_t rows_max = (band - 1 + (R - 1) * dh) / sth + 2;
  at::parallel_for(0, N * bands, 1, [&](int64_t b, int64_t e) {
    Aligned64<T> buf_(rows_max * Wb * L + band * W * L + R * S * L + L);
    T* buf = buf_.data();
    T* out = buf + rows_max * Wb * L;  // the band's dX [band][W][L]
    T* wl = out + band * W * L;        // the block's filter [R * S][L], then its bias [L]
    T* bl = wl + R * S * L;
    each(0, (e - b) * blocks, [&](int64_t v) CONVX_ALWAYS_INLINE {
      using V = typename Block<T>::v;
      const int64_t u = b + v / blocks, n = u / bands, bd = u % bands, cb = v % blocks;
      const int64_t c0 = cb * L, nc = std::min<int64_t>(L, C - c0);
      const int64_t h0 = bd * band, h1 = std::min(H, h0 + band);
      // dY's rows [g0, g0 + rows) for dX's rows [h0, h1)
      const int64_t g0 = floor_div(h0 + p.pad_t - (R - 1) * dh, sth), rows = floor_div(h1 - 1 + p.pad_t, sth) - g0 + 1;
      block_filter(w, bias, c0, nc, R * S, wl, bl);
      const int64_t j0 = std::clamp<int64_t>(-bc0, 0, Wb), j1 = std::clamp<int64_t>(Wo - bc0, j0, Wb);
      for (int64_t i = 0; i < rows; ++i)
        block_row(gy, n, C, Ho, Wo, c0, nc, g0 + i, bc0 + j0, j0, j1, Wb, nhwc, buf + i * Wb * L);
      const V bv = load_block<T>(bl);
      const bool direct = nhwc && nc == L;
      int64_t taps[2 * 64];  // a phase's taps: [dY offset in the buffer, filter offset] (R * S <= 64)
      for (int64_t h = h0; h < h1; ++h) {
        T* xr = direct ? gx + (n * H + h) * W * C + c0 : out + (h - h0) * W * L;
        const int64_t xs = direct ? C : L;
        for (int64_t phi = 0; phi < std::min(stw, W); ++phi) {
          int64_t nt = 0;
          for (int64_t r = 0; r < R; ++r) {
            const int64_t a = h + p.pad_t - r * dh;
            if ((a % sth + sth) % sth != 0) continue;
            const int64_t g = floor_div(a, sth);
            if (g < 0 || g >= Ho) continue;
            for (int64_t s2 = 0; s2 < S; ++s2) {
              const int64_t c = phi + p.pad_l - s2 * dw;
              if ((c % stw + stw) % stw != 0) continue;
              taps[2 * nt] = ((g - g0) * Wb + floor_div(c, stw) - bc0) * L;
              taps[2 * nt++ + 1] = (r * S + s2) * L;
            }
          }
          const int64_t np = (W - phi + stw - 1) / stw;  // outputs w = phi + k * stw
          auto group = [&](int64_t k, auto nb) CONVX_ALWAYS_INLINE {
            constexpr int m = decltype(nb)::value;
            V a[m];
            for (int i = 0; i < m; ++i) a[i] = bv;
            for (int64_t t = 0; t < nt; ++t) {
              const V wv = load_block<T>(wl + taps[2 * t + 1]);
              const T* src = buf + taps[2 * t] + k * L;
              for (int i = 0; i < m; ++i) a[i] += wv * load_block<T>(src + i * L);
            }
            for (int i = 0; i < m; ++i) store_block<T>(xr + (phi + (k + i) * stw) * xs, a[i]);
          };
          // 8 outputs at a time, the last 8 again where np is not a multiple (the same sums); under
          // 8, by 4 the same way (four sums in flight, not one chain of nt dependent adds)
          int64_t k = 0;
          for (; k + 8 <= np; k += 8) group(k, std::integral_constant<int, 8>{});
          if (k < np && np >= 8) {
            group(np - 8, std::integral_constant<int, 8>{});
            k = np;
          }
          for (; k + 4 <= np; k += 4) group(k, std::integral_constant<int, 4>{});
          if (k < np && np >= 4) {
            group(np - 4, std::integral_constant<int, 4>{});
            k = np;
          }
          for (; k < np; ++k) group(k, std::integral_constant<int, 1>{});
        }
      }
      if (!direct) block_store(out, gx, n, C, H, W, c0, nc, h0, h1, nhwc);
    });
  });
}

// dx (gather); bias (optional, per input channel) initialises it.
template <typename T>
void data_grad(const T* gy, const T* w, const T* bias, T* gx, const Conv2dShape& sh, const Conv2dParams& p,
               bool nhwc) {
  const int64_t N = sh.N, C = sh.C, H = sh.H, W = sh.W, K = sh.K, R = sh.R, S = sh.S, Ho = sh.Ho, Wo = sh.Wo;
  const int64_t mult = K / C;
  if constexpr (kBlockType<T>) {
    if (mult == 1 && !nhwc && p.stride_h == 1 && p.stride_w == 1 && p.pad_t <= (R - 1) * p.dil_h &&
        p.pad_b <= (R - 1) * p.dil_h && p.pad_l <= (S - 1) * p.dil_w && p.pad_r <= (S - 1) * p.dil_w) {
      // NCHW at stride 1: the forward of dY with the filter turned 180 degrees and the padding
      // d (R - 1) - pad, on channel blocks where the forward takes them (batch 8, two threads:
      // 240 5x5 @28 0.83 -> 0.35 ms, 1152 5x5 @7 0.40 -> 0.23, 144 3x3 @56 1.25 -> 0.62; in
      // channels_last the loops below stayed faster: 240 5x5 @28 0.25 against 0.29)
      const Conv2dShape t{N, C, Ho, Wo, C, R, S, H, W, 1, 1};
      Conv2dParams q = p;
      q.pad_t = (R - 1) * p.dil_h - p.pad_t, q.pad_b = (R - 1) * p.dil_h - p.pad_b;
      q.pad_l = (S - 1) * p.dil_w - p.pad_l, q.pad_r = (S - 1) * p.dil_w - p.pad_r;
      if (forward_blocked_wins(t, q, nhwc)) {
        std::vector<T> turned(C * R * S);
        for (int64_t c = 0; c < C; ++c)
          for (int64_t rs = 0; rs < R * S; ++rs) turned[c * R * S + rs] = w[c * R * S + R * S - 1 - rs];
        return forward_blocked(gy, turned.data(), bias, gx, t, q, nhwc);
      }
    }
    // NCHW strided: by phases on channel blocks (240 3x3 stride 2 @28 0.72 -> 0.22 ms, 672 5x5
    // stride 2 @14 1.46 -> 0.40, 96 3x3 stride 2 @112 3.7 -> 1.6; channels_last's loops below
    // were faster there: 672 5x5 stride 2 @14 0.18 against 0.33)
    if (mult == 1 && !nhwc && (p.stride_h > 1 || p.stride_w > 1) && R * S <= 64)
      return data_grad_blocked(gy, w, bias, gx, sh, p, nhwc);
  }
  if (!nhwc) {
    // per (n, c) plane: a scatter of each of its mult output planes, sequential
    // within the plane (one writer, fixed order).
    // stride 1, multiplier 1: the correlation of dy with the filter turned 180 degrees
    const PlaneS1 g{Ho, Wo, H, W, R, S, (R - 1) * p.dil_h - p.pad_t, (S - 1) * p.dil_w - p.pad_l, p.dil_h, p.dil_w};
    const bool s1 = kBlockType<T> && p.stride_h == 1 && p.stride_w == 1 && mult == 1 && g.pt >= 0 && g.pl >= 0 &&
                    R * S <= kMaxTurnedTaps;
    const bool narrow = W < 2 * Block<T>::n;
    at::parallel_for(0, N * C, 1, [&](int64_t b, int64_t e) {
      std::vector<T> buf(s1 && narrow ? plane_buffer_size(g, Block<T>::n) : 0);
      each(b, e, [&](int64_t t) CONVX_ALWAYS_INLINE {
        const int64_t n = t / C, c = t % C;
        T* gp = gx + t * H * W;
        if constexpr (kBlockType<T>) {
          if (s1) {
            T turned[kMaxTurnedTaps];
            for (int64_t rs = 0; rs < R * S; ++rs) turned[rs] = w[c * R * S + R * S - 1 - rs];
            if (narrow)
              correlate_plane_padded(gy + t * Ho * Wo, turned, bias ? bias[c] : T(0), gp, g, buf.data());
            else
              correlate_plane_s1(gy + t * Ho * Wo, turned, bias ? bias[c] : T(0), gp, g);
            return;
          }
        }
        std::fill(gp, gp + H * W, bias ? bias[c] : T(0));
        for (int64_t m = 0; m < mult; ++m) {
          const int64_t k = c * mult + m;
          const T* gyp = gy + (n * K + k) * Ho * Wo;
          const T* wk = w + k * R * S;
          for (int64_t r = 0; r < R; ++r) {
            int64_t ho_lo, ho_hi;
            valid_range(H, Ho, p.stride_h, p.pad_t, r * p.dil_h, ho_lo, ho_hi);
            for (int64_t s = 0; s < S; ++s) {
              int64_t wo_lo, wo_hi;
              valid_range(W, Wo, p.stride_w, p.pad_l, s * p.dil_w, wo_lo, wo_hi);
              const T wv = wk[r * S + s];
              const int64_t woff = s * p.dil_w - p.pad_l;
              for (int64_t ho = ho_lo; ho < ho_hi; ++ho) {
                T* __restrict xr = gp + (ho * p.stride_h - p.pad_t + r * p.dil_h) * W + woff;
                const T* __restrict gr = gyp + ho * Wo;
                if (p.stride_w == 1)
                  for (int64_t wo = wo_lo; wo < wo_hi; ++wo) xr[wo] += wv * gr[wo];
                else
                  for (int64_t wo = wo_lo; wo < wo_hi; ++wo) xr[wo * p.stride_w] += wv * gr[wo];
              }
            }
          }
        }
      });
    });
    return;
  }
  // NHWC at stride 1, multiplier 1: the forward (its register-blocked
  // interior included) of dY with the filter turned 180 degrees.
  if (p.stride_h == 1 && p.stride_w == 1 && mult == 1 && (R - 1) * p.dil_h >= p.pad_t &&
      (S - 1) * p.dil_w >= p.pad_l) {
    std::vector<T> turned(K * R * S);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t rs = 0; rs < R * S; ++rs) turned[k * R * S + rs] = w[k * R * S + R * S - 1 - rs];
    Conv2dShape t = sh;
    t.H = Ho, t.W = Wo, t.Ho = H, t.Wo = W;
    Conv2dParams q = p;
    q.pad_t = (R - 1) * p.dil_h - p.pad_t, q.pad_l = (S - 1) * p.dil_w - p.pad_l;
    q.pad_b = (R - 1) * p.dil_h - p.pad_b, q.pad_r = (S - 1) * p.dil_w - p.pad_r;
    return forward<T>(gy, turned.data(), bias, gx, t, q, true);
  }
  // Otherwise a gather per input pixel over the taps whose output reads it,
  // listed once; multiplier 1 then runs 64 bytes of channels at a time.
  const std::vector<T> wt = taps_major(w, K, R * S);
  at::parallel_for(0, N * H, 1, [&](int64_t b, int64_t e) {
    std::vector<int64_t> taps(2 * R * S);  // [dy offset, weight offset] per tap
    each(b, e, [&](int64_t t) CONVX_ALWAYS_INLINE {
      const int64_t n = t / H, h = t % H;
      for (int64_t ww = 0; ww < W; ++ww) {
        T* __restrict gp = gx + ((n * H + h) * W + ww) * C;
        int64_t nt = 0;
        for (int64_t r = 0; r < R; ++r) {
          const int64_t hn = h + p.pad_t - r * p.dil_h;
          if (hn < 0 || hn % p.stride_h || hn / p.stride_h >= Ho) continue;
          const int64_t ho = hn / p.stride_h;
          for (int64_t s = 0; s < S; ++s) {
            const int64_t wn = ww + p.pad_l - s * p.dil_w;
            if (wn < 0 || wn % p.stride_w || wn / p.stride_w >= Wo) continue;
            taps[2 * nt] = ((n * Ho + ho) * Wo + wn / p.stride_w) * K;
            taps[2 * nt++ + 1] = (r * S + s) * K;
          }
        }
        if (mult == 1) {
          tap_sum(gy, wt.data(), taps.data(), nt, bias, gp, 0, C);
          continue;
        }
        for (int64_t c = 0; c < C; ++c) gp[c] = bias ? bias[c] : T(0);
        for (int64_t i = 0; i < nt; ++i) {
          const T* __restrict g = gy + taps[2 * i];
          const T* __restrict wp = wt.data() + taps[2 * i + 1];
          for (int64_t c = 0; c < C; ++c)
            for (int64_t m = 0; m < mult; ++m) gp[c] += wp[c * mult + m] * g[c * mult + m];
        }
      }
    });
  });
}

// NCHW weight gradient at stride 1: per output channel k and image, x's plane
// in a zero-padded copy Wp = Wo + (S - 1) * dw wide and dY's plane in one of
// the same width (zero past Wo), so tap (r, s) is the dot product of two flat
// runs, one shifted: 64-byte blocks of partial sums, added across the lanes
// and then over the images in double, in image order.
template <typename T>
void weight_grad_nchw_s1(const T* gy, const T* x, T* gw, const Conv2dShape& sh, const Conv2dParams& p) {
  using V = typename Block<T>::v;
  constexpr int L = Block<T>::n;
  const int64_t N = sh.N, C = sh.C, H = sh.H, W = sh.W, K = sh.K, R = sh.R, S = sh.S, Ho = sh.Ho, Wo = sh.Wo;
  const int64_t mult = K / C;
  const int64_t Wp = Wo + (S - 1) * p.dil_w, Hp = Ho + (R - 1) * p.dil_h;
  const int64_t n_run = (Ho * Wp + L - 1) / L * L;           // dY's run, whole blocks
  const int64_t xn = Hp * Wp + (S - 1) * p.dil_w + n_run;   // x's copy and its slack past the last shift
  at::parallel_for(0, K, 1, [&](int64_t b, int64_t e) {
    std::vector<T> xb(xn), gb(n_run);
    std::vector<double> acc(R * S);
    each(b, e, [&](int64_t k) CONVX_ALWAYS_INLINE {
      const int64_t c = k / mult;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t n = 0; n < N; ++n) {
        const T* xp = x + (n * C + c) * H * W;
        const T* gp = gy + (n * K + k) * Ho * Wo;
        std::fill(xb.begin(), xb.end(), T(0));
        place_plane(xp, H, W, xb.data(), Hp, Wp, p.pad_t, p.pad_l);
        std::fill(gb.begin(), gb.end(), T(0));
        place_plane(gp, Ho, Wo, gb.data(), Ho, Wp, 0, 0);
        for (int64_t r = 0; r < R; ++r)
          for (int64_t s = 0; s < S; ++s) {
            const T* xs = xb.data() + r * p.dil_h * Wp + s * p.dil_w;
            V part = V{};
            for (int64_t j = 0; j < n_run; j += L) part += load_block<T>(gb.data() + j) * load_block<T>(xs + j);
            acc[r * S + s] += double(lane_sum<T>(part));
          }
      }
      for (int64_t rs = 0; rs < R * S; ++rs) gw[k * R * S + rs] = T(acc[rs]);
    });
  });
}

// dw: [K, R, S] (NCHW order; the caller lays it out).
template <typename T>
void weight_grad(const T* gy, const T* x, T* gw, const Conv2dShape& sh, const Conv2dParams& p, bool nhwc) {
  const int64_t N = sh.N, C = sh.C, H = sh.H, W = sh.W, K = sh.K, R = sh.R, S = sh.S, Ho = sh.Ho, Wo = sh.Wo;
  const int64_t mult = K / C;
  if (!nhwc) {
    if constexpr (kBlockType<T>) {
      if (p.stride_h == 1 && p.stride_w == 1)
        return weight_grad_nchw_s1(gy, x, gw, sh, p);
    }
    at::parallel_for(0, K, 1, [&](int64_t b, int64_t e) {
      each(b, e, [&](int64_t k) CONVX_ALWAYS_INLINE {
        const int64_t c = k / mult;
        for (int64_t r = 0; r < R; ++r) {
          int64_t ho_lo, ho_hi;
          valid_range(H, Ho, p.stride_h, p.pad_t, r * p.dil_h, ho_lo, ho_hi);
          for (int64_t s = 0; s < S; ++s) {
            int64_t wo_lo, wo_hi;
            valid_range(W, Wo, p.stride_w, p.pad_l, s * p.dil_w, wo_lo, wo_hi);
            const int64_t woff = s * p.dil_w - p.pad_l;
            double acc = 0;
            for (int64_t n = 0; n < N; ++n) {
              const T* xp = x + (n * C + c) * H * W;
              const T* gyp = gy + (n * K + k) * Ho * Wo;
              for (int64_t ho = ho_lo; ho < ho_hi; ++ho) {
                const T* __restrict xr = xp + (ho * p.stride_h - p.pad_t + r * p.dil_h) * W + woff;
                const T* __restrict gr = gyp + ho * Wo;
                T rowsum = 0;
                if (p.stride_w == 1)
                  for (int64_t wo = wo_lo; wo < wo_hi; ++wo) rowsum += gr[wo] * xr[wo];
                else
                  for (int64_t wo = wo_lo; wo < wo_hi; ++wo) rowsum += gr[wo] * xr[wo * p.stride_w];
                acc += double(rowsum);
              }
            }
            gw[(k * R + r) * S + s] = T(acc);
          }
        }
      });
    });
    return;
  }
  // NHWC: the output rows cut into a fixed number of chunks (not one per
  // thread: the sums must not depend on the thread count), each summing into
  // its own dW copy, added in chunk order at the end. Within a row, the
  // interior pixels of a 3x3 / 5x5 filter with multiplier 1 sum in registers
  // (nhwc_wgrad_interior), the rest pixel by pixel.
  const int64_t rows = N * Ho;
  const int64_t chunks = std::min<int64_t>(rows, kWgradChunks);
  const auto [in_lo, in_hi] = interior_columns(sh, p);
  std::vector<T> part(chunks * R * S * K, T(0));  // [chunk][r][s][k]
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    each(b, e, [&](int64_t ch) CONVX_ALWAYS_INLINE {
      T* acc = part.data() + ch * R * S * K;
      for (int64_t row = ch * rows / chunks; row < (ch + 1) * rows / chunks; ++row) {
        const int64_t n = row / Ho, ho = row % Ho;
        const bool rows_in = rows_inside(ho, sh, p);
        int64_t done_lo = 0, done_hi = 0, done_k = 0;  // pixels [lo, hi) have channels [0, done_k) summed
        if constexpr (kBlockType<T>) {
          if (rows_in && mult == 1 && in_lo < in_hi) {
            if (R == 3 && S == 3)
              done_k = nhwc_wgrad_interior<3, 3>(gy, x, acc, n, ho, in_lo, in_hi, sh, p);
            else if (R == 5 && S == 5)
              done_k = nhwc_wgrad_interior<5, 5>(gy, x, acc, n, ho, in_lo, in_hi, sh, p);
            done_lo = in_lo;
            done_hi = in_hi;
          }
        }
        for (int64_t wo = 0; wo < Wo; ++wo) {
          const int64_t k0 = wo >= done_lo && wo < done_hi ? done_k : 0;
          if (k0 == K) continue;
          const T* __restrict g = gy + (row * Wo + wo) * K;
          for (int64_t r = 0; r < R; ++r) {
            const int64_t h = ho * p.stride_h - p.pad_t + r * p.dil_h;
            if (h < 0 || h >= H) continue;
            for (int64_t s = 0; s < S; ++s) {
              const int64_t ww = wo * p.stride_w - p.pad_l + s * p.dil_w;
              if (ww < 0 || ww >= W) continue;
              const T* __restrict xp = x + ((n * H + h) * W + ww) * C;
              T* __restrict a = acc + (r * S + s) * K;
              if (mult == 1) {
                for (int64_t k = k0; k < K; ++k) a[k] += g[k] * xp[k];
              } else {
                for (int64_t k = 0; k < K; ++k) a[k] += g[k] * xp[k / mult];
              }
            }
          }
        }
      }
    });
  });
  for (int64_t k = 0; k < K; ++k)
    for (int64_t rs = 0; rs < R * S; ++rs) {
      T v = 0;
      for (int64_t ch = 0; ch < chunks; ++ch) v += part[ch * R * S * K + rs * K + k];
      gw[k * R * S + rs] = v;
    }
}

}  // namespace convx::cpu::depthwise
