// See grouped.h.
#include "grouped.h"

#include "gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

namespace convx::cpu::grouped {
namespace {

#define GROUPED_INLINE __attribute__((always_inline)) inline
// The vectors below never cross a call boundary (everything is inlined into the per-ISA functions).
#pragma GCC diagnostic ignored "-Wpsabi"

// One convolution of the kind both passes reduce to: out [N, Ho, Wo, Kout] (NHWC) =
// bias + sum_{r, s, c < KG} wv[(tap * KG + c) * Kout + k] * in[n, ho*sh - pt + r*dh, wo*sw - pl + s*dw,
// (k / KG) * KG + c], in [N, H, W, Kout] (NHWC; as many channels as out, KG a group).
struct Job {
  const float* in;
  const float* wv;
  const float* bias;
  float* out;
  int64_t N, H, W, Ho, Wo, K, R, S, sh, sw, pt, pl, dh, dw;
};

int vector_floats() {
  switch (cpu_isa()) {
    case Isa::Avx512: return 16;
    case Isa::Avx2: return 8;
    default: return 4;
  }
}

// GCC applies vector_size to a typedef in a template only when the element type is dependent.
template <typename E, int VB>
struct Vec {
  typedef E type __attribute__((vector_size(VB)));
};

template <int VB, int KG, int C>
GROUPED_INLINE auto lane_broadcast(const auto& v) {
  // element C of each group of KG lanes, to all KG lanes of its group
  using VI = typename Vec<int32_t, VB>::type;
  constexpr int L = VB / 4;
  const VI mask = [] {
    VI m{};
    for (int l = 0; l < L; ++l) m[l] = (l / KG) * KG + C;
    return m;
  }();
  return __builtin_shuffle(v, mask);
}

// One tap of one pixel: xp points at the pixel's channels [k0, k0 + L).
// A group narrower than the vector: one load, then a lane shuffle per channel;
// a group as wide as the vector: each channel broadcast from memory (no shuffle).
template <int VB, int KG, std::size_t... Cs>
GROUPED_INLINE auto tap_sum(auto acc, const float* xp, const float* wp, int64_t K, std::index_sequence<Cs...>) {
  using V = typename Vec<float, VB>::type;
  auto load = [](const float* p) __attribute__((always_inline)) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  };
  auto splat = [](float v) __attribute__((always_inline)) {  // a broadcast (V{} + v would add 0.0 first)
    V r;
    for (int l = 0; l < VB / 4; ++l) r[l] = v;
    return r;
  };
  if constexpr (KG == VB / 4) {
    ((acc += splat(xp[Cs]) * load(wp + int64_t(Cs) * K)), ...);
  } else {
    const V xv = load(xp);
    ((acc += lane_broadcast<VB, KG, int(Cs)>(xv) * load(wp + int64_t(Cs) * K)), ...);
  }
  return acc;
}

// NB output pixels of row (n, ho) from wo0, all output channels; CHECK: test
// each tap against the image's edges (border pixels), else every tap is inside.
// Eight pixels at a time give eight independent accumulation chains (one
// would leave the FMA units waiting on its latency).
template <int VB, int KG, int NB, bool CHECK>
GROUPED_INLINE void pixels(const Job& j, int64_t n, int64_t ho, int64_t wo0) {
  using V = typename Vec<float, VB>::type;
  constexpr int L = VB / 4;
  float* out = j.out + ((n * j.Ho + ho) * j.Wo + wo0) * j.K;
  for (int64_t k0 = 0; k0 < j.K; k0 += L) {
    V acc[NB];
    V b0{};
    if (j.bias) std::memcpy(&b0, j.bias + k0, sizeof(V));
#pragma GCC unroll 8
    for (int i = 0; i < NB; ++i) acc[i] = b0;
    for (int64_t r = 0; r < j.R; ++r) {
      const int64_t h = ho * j.sh - j.pt + r * j.dh;
      if (h < 0 || h >= j.H) continue;
      const float* irow = j.in + ((n * j.H + h) * j.W) * j.K + k0;
      for (int64_t s = 0; s < j.S; ++s) {
        const float* wp = j.wv + ((r * j.S + s) * KG) * j.K + k0;
        const int64_t wbase = wo0 * j.sw - j.pl + s * j.dw;
#pragma GCC unroll 8
        for (int i = 0; i < NB; ++i) {
          const int64_t w = wbase + i * j.sw;
          if (CHECK && (w < 0 || w >= j.W)) continue;
          acc[i] = tap_sum<VB, KG>(acc[i], irow + w * j.K, wp, j.K, std::make_index_sequence<KG>{});
        }
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NB; ++i) std::memcpy(out + i * j.K + k0, &acc[i], sizeof(V));
  }
}

template <int VB, int KG>
GROUPED_INLINE void rows_body(const Job& j, int64_t b, int64_t e) {
  // output columns whose every tap is inside the image: [wlo, whi)
  const int64_t wlo = std::min(j.Wo, (j.pl + j.sw - 1) / j.sw);
  const int64_t span = j.W - 1 - (j.S - 1) * j.dw + j.pl;
  const int64_t whi = span < 0 ? wlo : std::clamp<int64_t>(span / j.sw + 1, wlo, j.Wo);
  for (int64_t row = b; row < e; ++row) {
    const int64_t n = row / j.Ho, ho = row % j.Ho;
    for (int64_t wo = 0; wo < wlo; ++wo) pixels<VB, KG, 1, true>(j, n, ho, wo);
    int64_t wo = wlo;
    for (; wo + 8 <= whi; wo += 8) pixels<VB, KG, 8, false>(j, n, ho, wo);
    for (; wo < whi; ++wo) pixels<VB, KG, 1, false>(j, n, ho, wo);
    for (wo = whi; wo < j.Wo; ++wo) pixels<VB, KG, 1, true>(j, n, ho, wo);
  }
}

template <int VB>
GROUPED_INLINE void rows_any(const Job& j, int64_t kg, int64_t b, int64_t e) {
  switch (kg) {
    case 2: return rows_body<VB, 2>(j, b, e);
    case 4: return rows_body<VB, 4>(j, b, e);
    case 8:
      if constexpr (VB >= 32) return rows_body<VB, 8>(j, b, e);
      break;
    case 16:
      if constexpr (VB >= 64) return rows_body<VB, 16>(j, b, e);
      break;
  }
}

__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void rows_avx512(const Job& j, int64_t kg, int64_t b,
                                                                                int64_t e) {
  rows_any<64>(j, kg, b, e);
}
__attribute__((target("avx2,fma"))) void rows_avx2(const Job& j, int64_t kg, int64_t b, int64_t e) {
  rows_any<32>(j, kg, b, e);
}
void rows_base(const Job& j, int64_t kg, int64_t b, int64_t e) { rows_any<16>(j, kg, b, e); }

void run(const Job& j, int64_t kg) {
  const Isa isa = cpu_isa();
  at::parallel_for(0, j.N * j.Ho, 1, [&](int64_t b, int64_t e) {
    switch (isa) {
      case Isa::Avx512: return rows_avx512(j, kg, b, e);
      case Isa::Avx2: return rows_avx2(j, kg, b, e);
      default: return rows_base(j, kg, b, e);
    }
  });
}

// The weight gradient: acc[(t * KG + c) * K + k] += sum over output pixels p of
// dY[p, k] * X[p + tap t, (k / KG) * KG + c], the forward's shuffle of X times
// dY's vector: NT taps of KG channels in registers (NT * KG accumulators)
// while the pixels of one output row pass.
struct WJob {
  const float* x;
  const float* dy;
  int64_t N, H, W, Ho, Wo, K, R, S, sh, sw, pt, pl, dh, dw;
};

template <int VB, int KG>
constexpr int wgrad_taps() {  // taps a register block: 24 (AVX-512) or 8 accumulators
  constexpr int acc = VB == 64 ? 24 : 8;
  return acc / KG > 0 ? acc / KG : 1;
}

// Output pixels [wb, we) of row (n, ho), channels [k0, k0 + L), taps [t0, t0 + nt): CHECK tests
// each tap's column against the image's edges.
template <int VB, int KG, bool CHECK>
GROUPED_INLINE void wgrad_span(const WJob& j, float* acc, int64_t n, int64_t ho, int64_t wb, int64_t we, int64_t k0,
                               int64_t t0, int64_t nt) {
  using V = typename Vec<float, VB>::type;
  constexpr int NT = wgrad_taps<VB, KG>();
  auto load = [](const float* p) __attribute__((always_inline)) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  };
  auto splat = [](float v) __attribute__((always_inline)) {
    V r;
    for (int l = 0; l < VB / 4; ++l) r[l] = v;
    return r;
  };
  const float* xrow[NT];  // tap i's input row at column s*dw - pl (nullptr: the row is outside the image)
  int64_t xcol[NT];
  V a[NT][KG];
#pragma GCC unroll 24
  for (int i = 0; i < NT; ++i) {
    xrow[i] = nullptr;
    xcol[i] = 0;
#pragma GCC unroll 16
    for (int c = 0; c < KG; ++c) a[i][c] = V{};
    if (i >= nt) continue;
    const int64_t t = t0 + i, r = t / j.S, s = t % j.S, h = ho * j.sh - j.pt + r * j.dh;
    xcol[i] = s * j.dw - j.pl;
    if (h >= 0 && h < j.H) xrow[i] = j.x + (n * j.H + h) * j.W * j.K + k0;
#pragma GCC unroll 16
    for (int c = 0; c < KG; ++c) a[i][c] = load(acc + (t * KG + c) * j.K + k0);
  }
  const float* dyp = j.dy + ((n * j.Ho + ho) * j.Wo) * j.K + k0;
  for (int64_t wo = wb; wo < we; ++wo) {
    const V dv = load(dyp + wo * j.K);
#pragma GCC unroll 24
    for (int i = 0; i < NT; ++i) {
      if (i >= nt || !xrow[i]) continue;
      const int64_t w = wo * j.sw + xcol[i];
      if (CHECK && (w < 0 || w >= j.W)) continue;
      const float* xp = xrow[i] + w * j.K;
      if constexpr (KG == VB / 4) {
#pragma GCC unroll 16
        for (int c = 0; c < KG; ++c) a[i][c] += dv * splat(xp[c]);
      } else {
        const V xv = load(xp);
        [&]<std::size_t... Cs>(std::index_sequence<Cs...>) __attribute__((always_inline)) {
          ((a[i][Cs] += dv * lane_broadcast<VB, KG, int(Cs)>(xv)), ...);
        }(std::make_index_sequence<KG>{});
      }
    }
  }
#pragma GCC unroll 24
  for (int i = 0; i < NT; ++i) {
    if (i >= nt) continue;
#pragma GCC unroll 16
    for (int c = 0; c < KG; ++c) std::memcpy(acc + ((t0 + i) * KG + c) * j.K + k0, &a[i][c], sizeof(V));
  }
}

template <int VB, int KG>
GROUPED_INLINE void wgrad_rows_body(const WJob& j, float* acc, int64_t b, int64_t e) {
  constexpr int64_t L = VB / 4, NT = wgrad_taps<VB, KG>();
  const int64_t RS = j.R * j.S;
  const int64_t wlo = std::min(j.Wo, (j.pl + j.sw - 1) / j.sw);
  const int64_t span = j.W - 1 - (j.S - 1) * j.dw + j.pl;
  const int64_t whi = span < 0 ? wlo : std::clamp<int64_t>(span / j.sw + 1, wlo, j.Wo);
  for (int64_t row = b; row < e; ++row) {
    const int64_t n = row / j.Ho, ho = row % j.Ho;
    for (int64_t k0 = 0; k0 < j.K; k0 += L)
      for (int64_t t0 = 0; t0 < RS; t0 += NT) {
        const int64_t nt = std::min(NT, RS - t0);
        wgrad_span<VB, KG, true>(j, acc, n, ho, 0, wlo, k0, t0, nt);
        wgrad_span<VB, KG, false>(j, acc, n, ho, wlo, whi, k0, t0, nt);
        wgrad_span<VB, KG, true>(j, acc, n, ho, whi, j.Wo, k0, t0, nt);
      }
  }
}

template <int VB>
GROUPED_INLINE void wgrad_rows_any(const WJob& j, int64_t kg, float* acc, int64_t b, int64_t e) {
  switch (kg) {
    case 2: return wgrad_rows_body<VB, 2>(j, acc, b, e);
    case 4: return wgrad_rows_body<VB, 4>(j, acc, b, e);
    case 8:
      if constexpr (VB >= 32) return wgrad_rows_body<VB, 8>(j, acc, b, e);
      break;
    case 16:
      if constexpr (VB >= 64) return wgrad_rows_body<VB, 16>(j, acc, b, e);
      break;
  }
}

__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void wgrad_rows_avx512(const WJob& j, int64_t kg,
                                                                                      float* acc, int64_t b,
                                                                                      int64_t e) {
  wgrad_rows_any<64>(j, kg, acc, b, e);
}
__attribute__((target("avx2,fma"))) void wgrad_rows_avx2(const WJob& j, int64_t kg, float* acc, int64_t b,
                                                        int64_t e) {
  wgrad_rows_any<32>(j, kg, acc, b, e);
}
void wgrad_rows_base(const WJob& j, int64_t kg, float* acc, int64_t b, int64_t e) {
  wgrad_rows_any<16>(j, kg, acc, b, e);
}

}  // namespace

bool applicable(const Conv2dShape& sh, const Conv2dParams& p) {
  const int64_t L = vector_floats();
  return p.groups > 1 && sh.Cg == sh.Kg && (sh.Kg == 2 || sh.Kg == 4 || sh.Kg == 8 || sh.Kg == 16) &&
         sh.Kg <= L && sh.K % L == 0;
}

bool data_grad_applicable(const Conv2dShape& sh, const Conv2dParams& p) {
  return applicable(sh, p) && p.stride_h == 1 && p.stride_w == 1;
}

void forward(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& sh,
             const Conv2dParams& p) {
  const int64_t K = sh.K, Kg = sh.Kg, RS = sh.R * sh.S;
  // wv[(tap * Kg + c) * K + k] = w[k][c][tap]
  std::vector<float> wv(RS * Kg * K);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < Kg; ++c)
      for (int64_t t = 0; t < RS; ++t) wv[(t * Kg + c) * K + k] = w[(k * Kg + c) * RS + t];
  const Job j{x, wv.data(), bias, y, sh.N, sh.H, sh.W, sh.Ho, sh.Wo, K, sh.R, sh.S,
              p.stride_h, p.stride_w, p.pad_t, p.pad_l, p.dil_h, p.dil_w};
  run(j, Kg);
}

void data_grad(const float* gy, const float* w, const float* bias, float* gx, const Conv2dShape& sh,
               const Conv2dParams& p) {
  // dX[c] = sum over the group's k and the taps of w[k][c][r][s] dY[h + pad - r*d]: the convolution of dY
  // with the weight transposed within groups and rotated, padding d*(R-1) - pad, at stride 1.
  const int64_t C = sh.C, Kg = sh.Kg, Cg = sh.Cg, R = sh.R, S = sh.S, RS = R * S;
  std::vector<float> wv(RS * Kg * C);
  for (int64_t c = 0; c < C; ++c) {
    const int64_t g = c / Cg, ci = c % Cg;
    for (int64_t kk = 0; kk < Kg; ++kk)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          wv[(((R - 1 - r) * S + (S - 1 - s)) * Kg + kk) * C + c] = w[((g * Kg + kk) * Cg + ci) * RS + r * S + s];
  }
  const Job j{gy, wv.data(), bias, gx, sh.N, sh.Ho, sh.Wo, sh.H, sh.W, C, R, S, 1, 1,
              p.dil_h * (R - 1) - p.pad_t, p.dil_w * (S - 1) - p.pad_l, p.dil_h, p.dil_w};
  run(j, Kg);
}

}  // namespace convx::cpu::grouped

namespace convx::cpu::grouped {

void weight_grad(const float* x, const float* gy, float* gw, const Conv2dShape& sh, const Conv2dParams& p) {
  const int64_t K = sh.K, Kg = sh.Kg, RS = sh.R * sh.S, rows = sh.N * sh.Ho, size = RS * Kg * K;
  const WJob j{x, gy, sh.N, sh.H, sh.W, sh.Ho, sh.Wo, K, sh.R, sh.S,
               p.stride_h, p.stride_w, p.pad_t, p.pad_l, p.dil_h, p.dil_w};
  // one accumulator block a chunk of rows, summed in chunk order afterwards (the same
  // result for the same thread count, whichever thread runs a chunk)
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  std::vector<float> acc(chunks * size, 0.0f);
  const Isa isa = cpu_isa();
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t ch = cb; ch < ce; ++ch) {
      const int64_t b = rows * ch / chunks, e = rows * (ch + 1) / chunks;
      float* a = acc.data() + ch * size;
      switch (isa) {
        case Isa::Avx512: wgrad_rows_avx512(j, Kg, a, b, e); break;
        case Isa::Avx2: wgrad_rows_avx2(j, Kg, a, b, e); break;
        default: wgrad_rows_base(j, Kg, a, b, e);
      }
    }
  });
  // gw [K][Kg][R][S] = acc[(t * Kg + c) * K + k], summed over the chunks
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < Kg; ++c)
      for (int64_t t = 0; t < RS; ++t) {
        float v = 0;
        for (int64_t ch = 0; ch < chunks; ++ch) v += acc[ch * size + (t * Kg + c) * K + k];
        gw[(k * Kg + c) * RS + t] = v;
      }
}

}  // namespace convx::cpu::grouped
