// See few_outputs.h.
#include "few_outputs.h"

#include "isa_each.h"
#include "vec.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

namespace convx::cpu::few_outputs {
namespace {

using V = Block<float>::v;  // 16 floats: one zmm, two ymm or four xmm registers
constexpr int kLanes = Block<float>::n;

// The outputs o in [lo, hi) of [0, n_out) whose input o * stride - pad + off lies in [0, n_in).
struct Range {
  int64_t lo, hi;
};
Range in_bounds(int64_t n_out, int64_t n_in, int64_t stride, int64_t pad, int64_t off) {
  const int64_t lo = std::max<int64_t>(0, floor_div(pad - off + stride - 1, stride));
  const int64_t hi = std::min<int64_t>(n_out, floor_div(n_in - 1 + pad - off, stride) + 1);
  return {lo, std::max(lo, hi)};
}

// ---- forward ----

// Pixels a block: K x PB accumulators (8 to 16), each tap's K weight vectors loaded once for PB pixels.
template <int K>
constexpr int kPixels = K == 1 ? 8 : 4;

// y[q * K + k] = bias[k] + the sums over the taps and nv channel vectors for PB pixels (pixel q's
// input at tap (r, s) at x + (q * xs) + tap offset), every tap of them inside the image where `all`
// (else per pixel, taps checked against the image).
template <int K, int PB>
CONVX_ALWAYS_INLINE inline void forward_block(const float* xrow0, int64_t xs, const int64_t* taps, int ntaps,
                                              const int64_t* wtaps, const float* w, int64_t wk, int64_t nv,
                                              const float* bias, float* y) {
  V acc[PB][K];
#pragma GCC unroll 8
  for (int q = 0; q < PB; ++q)
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k) acc[q][k] = V{};
  for (int t = 0; t < ntaps; ++t) {
    const float* xt = xrow0 + taps[t];
    const float* wt = w + wtaps[t];
    for (int64_t v = 0; v < nv; ++v) {
      V wv[K];
#pragma GCC unroll 4
      for (int k = 0; k < K; ++k) wv[k] = load_block<float>(wt + k * wk + v * kLanes);
#pragma GCC unroll 8
      for (int q = 0; q < PB; ++q) {
        const V xv = load_block<float>(xt + q * xs + v * kLanes);
#pragma GCC unroll 4
        for (int k = 0; k < K; ++k) acc[q][k] += xv * wv[k];
      }
    }
  }
#pragma GCC unroll 8
  for (int q = 0; q < PB; ++q)
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k) y[q * K + k] = (bias ? bias[k] : 0.f) + lane_sum<float>(acc[q][k]);
}

struct ForwardArgs {
  const float* x;
  const float* w;
  const float* bias;
  float* y;
  int64_t N, C, H, W, K, R, S, Ho, Wo;
  int64_t sh, sw, pt, pl, dh, dw;
};

// One output row (n, ho): blocks of pixels whose taps all lie inside the row's input, then the
// edge pixels one at a time with their taps inside.
template <int K>
CONVX_ALWAYS_INLINE inline void forward_row(const ForwardArgs& a, int64_t row) {
  constexpr int PB = kPixels<K>;
  const int64_t n = row / a.Ho, ho = row % a.Ho, C = a.C, nv = C / kLanes, wk = a.R * a.S * C;
  const float* xn = a.x + n * a.H * a.W * C;
  float* y = a.y + row * a.Wo * K;
  // the taps whose input row is in the image (x's and w's offsets, the column tap), and the pixels
  // every column tap reaches
  int64_t taps[64], wtaps[64], cols[64];
  int nt = 0;
  int64_t wlo = 0, whi = a.Wo;
  for (int64_t s = 0; s < a.S; ++s) {
    const Range c = in_bounds(a.Wo, a.W, a.sw, a.pl, s * a.dw);
    wlo = std::max(wlo, c.lo), whi = std::min(whi, c.hi);
  }
  whi = std::max(wlo, whi);
  for (int64_t r = 0; r < a.R; ++r) {
    const int64_t hi = ho * a.sh - a.pt + r * a.dh;
    if (hi < 0 || hi >= a.H) continue;
    for (int64_t s = 0; s < a.S; ++s) {
      taps[nt] = (hi * a.W + s * a.dw - a.pl) * C;  // pixel wo's input at + wo * sw * C
      wtaps[nt] = (r * a.S + s) * C;
      cols[nt] = s;
      ++nt;
    }
  }
  const int64_t xs = a.sw * C;
  int64_t wo = wlo;
  for (; wo + PB <= whi; wo += PB)
    forward_block<K, PB>(xn + wo * xs, xs, taps, nt, wtaps, a.w, wk, nv, a.bias, y + wo * K);
  // the rest: pixels at the edges (taps checked) and the last of the interior
  auto one = [&](int64_t q) CONVX_ALWAYS_INLINE {
    int64_t tq[64], wq[64];
    int m = 0;
    for (int t = 0; t < nt; ++t) {
      const int64_t wi = q * a.sw - a.pl + cols[t] * a.dw;
      if (wi < 0 || wi >= a.W) continue;
      tq[m] = taps[t], wq[m] = wtaps[t];
      ++m;
    }
    forward_block<K, 1>(xn + q * xs, xs, tq, m, wq, a.w, wk, nv, a.bias, y + q * K);
  };
  for (int64_t q = 0; q < wlo; ++q) one(q);
  for (; wo < a.Wo; ++wo) one(wo);
}

// ---- weight gradient ----

// g + k * gk + v * 16 (k < K, v < NV) += the sum over the n pixels i of dy[i * K + k] * x[i * xs + v * 16]:
// K x NV accumulators, U pixels at a time on their own (at least 8 accumulators in flight).
template <int K, int NV>
CONVX_ALWAYS_INLINE inline void wgrad_run(const float* x, int64_t xs, const float* dy, int64_t n, float* g,
                                          int64_t gk) {
  constexpr int U = K * NV >= 8 ? 1 : (8 + K * NV - 1) / (K * NV);
  V acc[U][K][NV];
#pragma GCC unroll 8
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[u][k][v] = u == 0 ? load_block<float>(g + k * gk + v * kLanes) : V{};
  int64_t i = 0;
  for (; i + U <= n; i += U)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      const float* xp = x + (i + u) * xs;
      const float* d = dy + (i + u) * K;
      V xv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) xv[v] = load_block<float>(xp + v * kLanes);
#pragma GCC unroll 4
      for (int k = 0; k < K; ++k) {
        const float dk = d[k];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[u][k][v] += dk * xv[v];
      }
    }
  for (; i < n; ++i) {
    const float* xp = x + i * xs;
    const float* d = dy + i * K;
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[0][k][v] += d[k] * load_block<float>(xp + v * kLanes);
  }
#pragma GCC unroll 4
  for (int k = 0; k < K; ++k)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      V s = acc[0][k][v];
#pragma GCC unroll 8
      for (int u = 1; u < U; ++u) s += acc[u][k][v];
      store_block<float>(g + k * gk + v * kLanes, s);
    }
}

template <int K>
CONVX_ALWAYS_INLINE inline void wgrad_run_nv(int nv, const float* x, int64_t xs, const float* dy, int64_t n,
                                             float* g, int64_t gk) {
  switch (nv) {
    case 1: return wgrad_run<K, 1>(x, xs, dy, n, g, gk);
    case 2: return wgrad_run<K, 2>(x, xs, dy, n, g, gk);
    case 3: return wgrad_run<K, 3>(x, xs, dy, n, g, gk);
    default: return wgrad_run<K, 4>(x, xs, dy, n, g, gk);
  }
}

// ---- data gradient (stride 1) ----

// dx[q * C + v * 16] = bias + the sums over the ntaps taps and K channels of dY for PB input pixels
// and NV channel vectors (tap t's dY for pixel q at dy + dyoff[t] + q * K, its weights at w +
// woff[t], channel k's K apart).
template <int K, int NV, int PB>
CONVX_ALWAYS_INLINE inline void dgrad_block(const float* dy, const int64_t* dyoff, const int64_t* woff, int ntaps,
                                            const float* w, int64_t wk, const float* bias, float* dx, int64_t C) {
  V acc[PB][NV];
#pragma GCC unroll 4
  for (int q = 0; q < PB; ++q)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[q][v] = bias ? load_block<float>(bias + v * kLanes) : V{};
  for (int t = 0; t < ntaps; ++t) {
    const float* d = dy + dyoff[t];
    const float* wt = w + woff[t];
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k) {
      V wv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) wv[v] = load_block<float>(wt + k * wk + v * kLanes);
#pragma GCC unroll 4
      for (int q = 0; q < PB; ++q) {
        const float dq = d[q * K + k];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[q][v] += dq * wv[v];
      }
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < PB; ++q)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store_block<float>(dx + q * C + v * kLanes, acc[q][v]);
}

template <int K, int PB>
CONVX_ALWAYS_INLINE inline void dgrad_block_nv(int nv, const float* dy, const int64_t* dyoff, const int64_t* woff,
                                               int ntaps, const float* w, int64_t wk, const float* bias, float* dx,
                                               int64_t C) {
  switch (nv) {
    case 1: return dgrad_block<K, 1, PB>(dy, dyoff, woff, ntaps, w, wk, bias, dx, C);
    case 2: return dgrad_block<K, 2, PB>(dy, dyoff, woff, ntaps, w, wk, bias, dx, C);
    case 3: return dgrad_block<K, 3, PB>(dy, dyoff, woff, ntaps, w, wk, bias, dx, C);
    default: return dgrad_block<K, 4, PB>(dy, dyoff, woff, ntaps, w, wk, bias, dx, C);
  }
}

struct DgradArgs {
  const float* dy;
  const float* w;
  const float* bias;
  float* dx;
  int64_t C, H, W, K, R, S, Ho, Wo;
  int64_t pt, pl, dh, dw;
};

// One row (n, hi) of dX at stride 1: input pixel wi meets tap (r, s) at dY's (hi + pt - r * dh,
// wi + pl - s * dw) where that lies in dY; blocks of 4 pixels that every column tap reaches, then
// the edges one pixel at a time; channel vectors 4 at a time.
template <int K>
CONVX_ALWAYS_INLINE inline void dgrad_row(const DgradArgs& a, int64_t row) {
  constexpr int PB = 4;
  const int64_t n = row / a.H, hi = row % a.H, C = a.C, cv = C / kLanes, wk = a.R * a.S * C;
  const float* dyn = a.dy + n * a.Ho * a.Wo * K;
  float* dx = a.dx + row * a.W * C;
  int64_t dyoff[64], woff[64], cols[64];
  int nt = 0;
  for (int64_t r = 0; r < a.R; ++r) {
    const int64_t ho = hi + a.pt - r * a.dh;
    if (ho < 0 || ho >= a.Ho) continue;
    for (int64_t s = 0; s < a.S; ++s) {
      dyoff[nt] = (ho * a.Wo + a.pl - s * a.dw) * K;  // pixel wi's dY at + wi * K
      woff[nt] = (r * a.S + s) * C;
      cols[nt] = s;
      ++nt;
    }
  }
  // the pixels every column tap reaches: 0 <= wi + pl - s * dw < Wo for every s
  const int64_t wlo = std::min<int64_t>(a.W, std::max<int64_t>(0, (a.S - 1) * a.dw - a.pl));
  const int64_t whi = std::max<int64_t>(wlo, std::min<int64_t>(a.W, a.Wo - a.pl));
  for (int64_t v0 = 0; v0 < cv; v0 += 4) {
    const int nv = int(std::min<int64_t>(4, cv - v0));
    const float* w = a.w + v0 * kLanes;
    const float* bias = a.bias ? a.bias + v0 * kLanes : nullptr;
    int64_t wi = wlo;
    for (; wi + PB <= whi; wi += PB)
      dgrad_block_nv<K, PB>(nv, dyn + wi * K, dyoff, woff, nt, w, wk, bias, dx + wi * C + v0 * kLanes, C);
    auto one = [&](int64_t q) CONVX_ALWAYS_INLINE {
      int64_t dq[64], wq[64];
      int m = 0;
      for (int t = 0; t < nt; ++t) {
        const int64_t wo = q + a.pl - cols[t] * a.dw;
        if (wo < 0 || wo >= a.Wo) continue;
        dq[m] = dyoff[t], wq[m] = woff[t];
        ++m;
      }
      dgrad_block_nv<K, 1>(nv, dyn + q * K, dq, wq, m, w, wk, bias, dx + q * C + v0 * kLanes, C);
    };
    for (int64_t q = 0; q < wlo; ++q) one(q);
    for (; wi < a.W; ++wi) one(wi);
  }
}

}  // namespace

bool data_grad_applicable(const Conv2dShape& sh, const Conv2dParams& p) {
  return applicable(sh, p) && p.stride_h == 1 && p.stride_w == 1;
}

void data_grad_nhwc(const float* gy, const float* w, const float* bias, float* gx, const Conv2dShape& sh,
                    const Conv2dParams& p) {
  const DgradArgs a{gy, w, bias, gx, sh.C, sh.H, sh.W, sh.K, sh.R, sh.S, sh.Ho, sh.Wo, p.pad_t, p.pad_l, p.dil_h, p.dil_w};
  const int64_t work = std::max<int64_t>(1, sh.W * sh.R * sh.S * sh.C * sh.K);
  at::parallel_for(0, sh.N * sh.H, std::max<int64_t>(1, (int64_t(1) << 15) / work), [&](int64_t b, int64_t e) {
    each(b, e, [a](int64_t row) CONVX_ALWAYS_INLINE {
      switch (a.K) {
        case 1: return dgrad_row<1>(a, row);
        case 2: return dgrad_row<2>(a, row);
        case 3: return dgrad_row<3>(a, row);
        default: return dgrad_row<4>(a, row);
      }
    });
  });
}

bool applicable(const Conv2dShape& sh, const Conv2dParams& p) {
  return p.groups == 1 && sh.K >= 1 && sh.K <= 4 && sh.C % kLanes == 0 && sh.C > 0 && sh.R * sh.S <= 64;
}

void forward_nhwc(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& sh,
                  const Conv2dParams& p) {
  const ForwardArgs a{x,    w,    bias, y,         sh.N,      sh.C,      sh.H,     sh.W,     sh.K,    sh.R,
                      sh.S, sh.Ho, sh.Wo, p.stride_h, p.stride_w, p.pad_t, p.pad_l, p.dil_h, p.dil_w};
  const int64_t rows = sh.N * sh.Ho;
  const int64_t work = std::max<int64_t>(1, sh.Wo * sh.R * sh.S * sh.C * sh.K);
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t(1) << 15) / work), [&](int64_t b, int64_t e) {
    each(b, e, [a](int64_t row) CONVX_ALWAYS_INLINE {
      switch (a.K) {
        case 1: return forward_row<1>(a, row);
        case 2: return forward_row<2>(a, row);
        case 3: return forward_row<3>(a, row);
        default: return forward_row<4>(a, row);
      }
    });
  });
}

void weight_grad_nhwc(const float* x, const float* gy, float* gw, const Conv2dShape& sh, const Conv2dParams& p) {
  const int64_t C = sh.C, K = sh.K, R = sh.R, S = sh.S, H = sh.H, W = sh.W, Ho = sh.Ho, Wo = sh.Wo;
  const int64_t cv = C / kLanes;
  // blocks of up to 4 channel vectors, at least two blocks where there are two vectors (the
  // threads' shares); one block of one vector splits its filter rows instead
  const int64_t nvb = cv >= 8 ? 4 : std::max<int64_t>(1, (cv + 1) / 2);
  const int64_t blocks = (cv + nvb - 1) / nvb, rsplit = blocks == 1 ? R : 1;
  const int64_t gk = R * S * C;
  at::parallel_for(0, blocks * rsplit, 1, [&](int64_t ub, int64_t ue) {
    for (int64_t u = ub; u < ue; ++u) {
      const int64_t blk = u / rsplit, v0 = blk * nvb, nv = std::min(nvb, cv - v0);
      const int64_t r0 = rsplit == 1 ? 0 : u % rsplit, r1 = rsplit == 1 ? R : r0 + 1;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t s = 0; s < S; ++s)
            std::memset(gw + k * gk + (r * S + s) * C + v0 * kLanes, 0, nv * kLanes * sizeof(float));
      const int64_t sh_ = p.stride_h, sw = p.stride_w, pt = p.pad_t, pl = p.pad_l, dh = p.dil_h, dw = p.dil_w;
      each(0, sh.N * Ho, [=](int64_t row) CONVX_ALWAYS_INLINE {
        const int64_t n = row / Ho, ho = row % Ho;
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t hi = ho * sh_ - pt + r * dh;
          if (hi < 0 || hi >= H) continue;
          for (int64_t s = 0; s < S; ++s) {
            const Range c = in_bounds(Wo, W, sw, pl, s * dw);
            if (c.lo >= c.hi) continue;
            const float* xr = x + ((n * H + hi) * W + c.lo * sw - pl + s * dw) * C + v0 * kLanes;
            const float* dyr = gy + (row * Wo + c.lo) * K;
            float* g = gw + (r * S + s) * C + v0 * kLanes;
            const int64_t len = c.hi - c.lo;
            switch (K) {
              case 1: wgrad_run_nv<1>(int(nv), xr, sw * C, dyr, len, g, gk); break;
              case 2: wgrad_run_nv<2>(int(nv), xr, sw * C, dyr, len, g, gk); break;
              case 3: wgrad_run_nv<3>(int(nv), xr, sw * C, dyr, len, g, gk); break;
              default: wgrad_run_nv<4>(int(nv), xr, sw * C, dyr, len, g, gk); break;
            }
          }
        }
      });
    }
  });
}

}  // namespace convx::cpu::few_outputs
