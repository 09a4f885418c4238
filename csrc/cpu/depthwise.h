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

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

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

// [K, R*S] -> [R*S, K]: the weight taps-major, so channels_last loops run over k.
template <typename T>
std::vector<T> taps_major(const T* w, int64_t K, int64_t RS) {
  std::vector<T> wt(RS * K);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t rs = 0; rs < RS; ++rs) wt[rs * K + k] = w[k * RS + rs];
  return wt;
}

// w: [K, R, S] (NCHW) ; x, y contiguous in their layout.
template <typename T>
void forward(const T* x, const T* w, const T* bias, T* y, const Conv2dShape& sh, const Conv2dParams& p, bool nhwc) {
  const int64_t N = sh.N, C = sh.C, H = sh.H, W = sh.W, K = sh.K, R = sh.R, S = sh.S, Ho = sh.Ho, Wo = sh.Wo;
  const int64_t mult = K / C;
  if (!nhwc) {
    at::parallel_for(0, N * K, 1, [&](int64_t b, int64_t e) {
      each(b, e, [&](int64_t t) CONVX_ALWAYS_INLINE {
        const int64_t n = t / K, k = t % K, c = k / mult;
        const T* xp = x + (n * C + c) * H * W;
        const T* wk = w + k * R * S;
        T* yp = y + t * Ho * Wo;
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
  // NHWC: weight as [R, S, K] so the channel loop is contiguous.
  const std::vector<T> wt = taps_major(w, K, R * S);
  at::parallel_for(0, N * Ho, 1, [&](int64_t b, int64_t e) {
    each(b, e, [&](int64_t t) CONVX_ALWAYS_INLINE {
      const int64_t n = t / Ho, ho = t % Ho;
      for (int64_t wo = 0; wo < Wo; ++wo) {
        T* __restrict yp = y + ((n * Ho + ho) * Wo + wo) * K;
        if (bias)
          std::copy(bias, bias + K, yp);
        else
          std::fill(yp, yp + K, T(0));
        for (int64_t r = 0; r < R; ++r) {
          const int64_t h = ho * p.stride_h - p.pad_t + r * p.dil_h;
          if (h < 0 || h >= H) continue;
          for (int64_t s = 0; s < S; ++s) {
            const int64_t ww = wo * p.stride_w - p.pad_l + s * p.dil_w;
            if (ww < 0 || ww >= W) continue;
            const T* __restrict xp = x + ((n * H + h) * W + ww) * C;
            const T* __restrict wp = wt.data() + (r * S + s) * K;
            if (mult == 1) {
              for (int64_t k = 0; k < K; ++k) yp[k] += wp[k] * xp[k];
            } else {
              for (int64_t c = 0; c < C; ++c)
                for (int64_t m = 0; m < mult; ++m) yp[c * mult + m] += wp[c * mult + m] * xp[c];
            }
          }
        }
      }
    });
  });
}

// dx (gather); bias (optional, per input channel) initialises it.
template <typename T>
void data_grad(const T* gy, const T* w, const T* bias, T* gx, const Conv2dShape& sh, const Conv2dParams& p,
               bool nhwc) {
  const int64_t N = sh.N, C = sh.C, H = sh.H, W = sh.W, K = sh.K, R = sh.R, S = sh.S, Ho = sh.Ho, Wo = sh.Wo;
  const int64_t mult = K / C;
  if (!nhwc) {
    // per (n, c) plane: a scatter of each of its mult output planes, sequential
    // within the plane (one writer, fixed order).
    at::parallel_for(0, N * C, 1, [&](int64_t b, int64_t e) {
      each(b, e, [&](int64_t t) CONVX_ALWAYS_INLINE {
        const int64_t n = t / C, c = t % C;
        T* gp = gx + t * H * W;
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
  const std::vector<T> wt = taps_major(w, K, R * S);
  at::parallel_for(0, N * H, 1, [&](int64_t b, int64_t e) {
    each(b, e, [&](int64_t t) CONVX_ALWAYS_INLINE {
      const int64_t n = t / H, h = t % H;
      for (int64_t ww = 0; ww < W; ++ww) {
        T* __restrict gp = gx + ((n * H + h) * W + ww) * C;
        if (bias)
          std::copy(bias, bias + C, gp);
        else
          std::fill(gp, gp + C, T(0));
        for (int64_t r = 0; r < R; ++r) {
          const int64_t hn = h + p.pad_t - r * p.dil_h;
          if (hn < 0 || hn % p.stride_h || hn / p.stride_h >= Ho) continue;
          const int64_t ho = hn / p.stride_h;
          for (int64_t s = 0; s < S; ++s) {
            const int64_t wn = ww + p.pad_l - s * p.dil_w;
            if (wn < 0 || wn % p.stride_w || wn / p.stride_w >= Wo) continue;
            const T* __restrict g = gy + ((n * Ho + ho) * Wo + wn / p.stride_w) * K;
            const T* __restrict wp = wt.data() + (r * S + s) * K;
            if (mult == 1) {
              for (int64_t c = 0; c < C; ++c) gp[c] += wp[c] * g[c];
            } else {
              for (int64_t c = 0; c < C; ++c)
                for (int64_t m = 0; m < mult; ++m) gp[c] += wp[c * mult + m] * g[c * mult + m];
            }
          }
        }
      }
    });
  });
}

// dw: [K, R, S] (NCHW order; the caller lays it out).
template <typename T>
void weight_grad(const T* gy, const T* x, T* gw, const Conv2dShape& sh, const Conv2dParams& p, bool nhwc) {
  const int64_t N = sh.N, C = sh.C, H = sh.H, W = sh.W, K = sh.K, R = sh.R, S = sh.S, Ho = sh.Ho, Wo = sh.Wo;
  const int64_t mult = K / C;
  if (!nhwc) {
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
  const int64_t P = N * Ho * Wo;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), P));
  std::vector<T> part(chunks * R * S * K, T(0));  // [chunk][r][s][k]
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    each(b, e, [&](int64_t ch) CONVX_ALWAYS_INLINE {
      T* acc = part.data() + ch * R * S * K;
      for (int64_t q = ch * P / chunks; q < (ch + 1) * P / chunks; ++q) {
        const int64_t n = q / (Ho * Wo), ho = (q / Wo) % Ho, wo = q % Wo;
        const T* __restrict g = gy + q * K;
        for (int64_t r = 0; r < R; ++r) {
          const int64_t h = ho * p.stride_h - p.pad_t + r * p.dil_h;
          if (h < 0 || h >= H) continue;
          for (int64_t s = 0; s < S; ++s) {
            const int64_t ww = wo * p.stride_w - p.pad_l + s * p.dil_w;
            if (ww < 0 || ww >= W) continue;
            const T* __restrict xp = x + ((n * H + h) * W + ww) * C;
            T* __restrict a = acc + (r * S + s) * K;
            if (mult == 1) {
              for (int64_t k = 0; k < K; ++k) a[k] += g[k] * xp[k];
            } else {
              for (int64_t k = 0; k < K; ++k) a[k] += g[k] * xp[k / mult];
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
