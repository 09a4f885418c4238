// See grouped.h.
#include "grouped.h"

#include "gemm.h"
#include "isa_each.h"
#include "layout.h"
#include "winograd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

namespace convx::cpu::grouped {
namespace {

#define GROUPED_INLINE __attribute__((always_inline)) inline
// The vectors below never cross a call boundary (everything is inlined into the per-ISA functions).
#pragma GCC diagnostic ignored "-Wpsabi"

// One convolution of the kind both passes reduce to: out [N, Ho, Wo, Kout] (NHWC) =
// bias + sum_{r, s, c < KG} wv[((k / L * RS + tap) * KG + c) * L + k % L] * in[n, ho*sh - pt + r*dh,
// wo*sw - pl + s*dw, (k / KG) * KG + c], in [N, H, W, Kout] (NHWC; as many channels as out, KG a group).
// The weights of a vector of L output channels are contiguous (RS * KG vectors): laid out along
// all Kout channels, those of one vector sat Kout floats apart, for 512 channels in two of L1's 64
// sets, and missed L1 (512 channels @14 in 16-channel groups ran at a quarter of the FMA peak).
struct Job {
  const float* in;
  const float* wv;
  const float* bias;
  float* out;
  int64_t N, H, W, Ho, Wo, K, R, S, sh, sw, pt, pl, dh, dw;
  // out's strides (floats) along n, ho and wo: [N, Ho, Wo, K] unless set otherwise
  int64_t on = Ho * Wo * K, oh = Wo * K, ow = K;
  // in's: a block of L channels (vector_floats), an image, a row, a pixel: [N, H, W, K] (NHWC)
  // unless set otherwise (blocked(): [K / L][N][H][W][L])
  int64_t ib = 0, in_ = H * W * K, ih = W * K, iw = K;
  int64_t kv = 1;  // blocked: vectors of output channels a unit computes (a group's: 2 for KG = 2L)
  // blocked, KG < L (interleaved lanes): a vector's channels in the order [KG][L / KG] (lane m *
  // (L / KG) + i is channel m of the vector's group i), in the copy, the weights and the sums
  int64_t ilv = 0;
  Job& blocked(int64_t L) {
    iw = L, ih = W * L, in_ = H * W * L, ib = N * H * W * L;
    return *this;
  }
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

// p, which the compiler can no longer prove equal to p: two loads of the same float each stay an
// FMA's embedded broadcast operand ({1to16}) rather than becoming one broadcast shared by two FMAs.
GROUPED_INLINE const float* opaque(const float* p) {
  asm("" : "+r"(p));
  return p;
}

// VB bytes of floats from p (any alignment).
template <int VB>
GROUPED_INLINE typename Vec<float, VB>::type vload(const float* p) {
  typename Vec<float, VB>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The even-numbered of the 2 * VB / 4 floats at p: two loads, one de-interleaving shuffle.
template <int VB>
GROUPED_INLINE typename Vec<float, VB>::type vload_even(const float* p) {
  using VI = typename Vec<int32_t, VB>::type;
  constexpr int L = VB / 4;
  const VI mask = [] {
    VI m{};
    for (int l = 0; l < L; ++l) m[l] = 2 * l;
    return m;
  }();
  return __builtin_shuffle(vload<VB>(p), vload<VB>(p + L), mask);
}

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

// One tap of one pixel: xp points at the pixel's channels [k0, k0 + L), channel c's weights
// at wp + c * wstep. A group narrower than the vector: one load, then a lane shuffle per
// channel; a group as wide as the vector: each channel a broadcast operand of its FMA (a
// shuffle there would share the FMA's port: 128 channels @28 in 16-channel groups 1.58 -> 0.99 ms).
template <int VB, int KG, std::size_t... Cs>
GROUPED_INLINE auto tap_sum(auto acc, const float* xp, const float* wp, int64_t wstep, std::index_sequence<Cs...>) {
  using V = typename Vec<float, VB>::type;
  if constexpr (KG == VB / 4) {
    ((acc += xp[Cs] * vload<VB>(wp + int64_t(Cs) * wstep)), ...);
  } else {
    const V xv = vload<VB>(xp);
    ((acc += lane_broadcast<VB, KG, int(Cs)>(xv) * vload<VB>(wp + int64_t(Cs) * wstep)), ...);
  }
  return acc;
}

// A block of G = 2, 4 or 8 floats at p repeated across a 16-float vector (AVX-512; a single float is
// an FMA's embedded broadcast operand instead). Vector code, which GCC addresses at immediate
// offsets: broadcasts in asm, their "m" operands, had it compute each address in integer registers
// (one thread, batch 8, 32 groups of 4 @56 4.7-5.3 -> 4.2-5.0 ms, of 8 @28 2.85-3.14 -> 2.72-3.16).
template <int G, int VB = 64>  // (VB: a dependent type, so no ABI warning for a non-AVX caller)
GROUPED_INLINE typename Vec<float, VB>::type broadcast_block(const float* p) {
  static_assert(G == 2 || G == 4 || G == 8);
  typename Vec<float, VB>::type b;
  if constexpr (G == 2) {
    double d;
    std::memcpy(&d, p, sizeof(d));
    typename Vec<double, VB>::type v = d - typename Vec<double, VB>::type{};
    std::memcpy(&b, &v, sizeof(b));
  } else if constexpr (G == 4) {
    typename Vec<float, 16>::type q;
    std::memcpy(&q, p, sizeof(q));
    b = __builtin_shufflevector(q, q, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
  } else {
    typename Vec<float, 32>::type q;
    std::memcpy(&q, p, sizeof(q));
    b = __builtin_shufflevector(q, q, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7);
  }
  return b;
}

// The blocked input (block_input; groups as wide as the vector): NB output pixels of row (n, ho)
// from wo0, output channels [k0, k0 + L). For each tap, each channel c of the group a broadcast
// operand of a multiply-add into all NB sums (NB independent chains), its weight vector loaded
// once for the NB pixels (on AVX-512 the broadcasts in asm, c-major: GCC copied the scalars
// through the stack; the FMAs in C: in asm, with the sums as their operands, GCC came to keep the
// sums on the stack, 0.99 -> 1.7-1.95 ms for 32 groups of 16 @14, and back to 0.81-0.90 so).
// CHECK: some taps fall outside the copy (a data gradient whose padding passes the filter): those
// read a vector of zeros.
// SS: the filter's width when known at compile time (3: its taps unrolled, the sums kept in
// registers across them; 32 groups of 16, 512 @14: 1.17-1.20 -> 1.03-1.10 ms).
template <int VB, int KG, int NB, bool CHECK, int SWL = 0, int SS = 0>
GROUPED_INLINE void pixels(const Job& j, int64_t n, int64_t ho, int64_t wo0, int64_t k0) {
  using V = typename Vec<float, VB>::type;
  constexpr int L = VB / 4;
  alignas(64) static const float zeros[16] = {};
  using VI = typename Vec<int32_t, VB>::type;
  constexpr int G = L / KG;
  // interleaved lanes (KG < L on AVX-512): lane m * G + i holds channel i * KG + m
  VI to_ilv, from_ilv;  // (set in place: a lambda returning them has no target attribute)
  for (int l = 0; l < L; ++l) to_ilv[l] = l % G * KG + l / G, from_ilv[l] = l % KG * G + l / KG;
  constexpr bool ILV = VB == 64 && KG < 16;
  V acc[NB];
  V b0{};
  if (j.bias) std::memcpy(&b0, j.bias + k0, sizeof(V));
  if constexpr (ILV) b0 = __builtin_shuffle(b0, to_ilv);
#pragma GCC unroll 16
  for (int i = 0; i < NB; ++i) acc[i] = b0;
  // A 3-wide filter at stride and dilation 1 (G > 1): input pixel q's broadcast serves its three
  // taps at once, output pixels q, q - 1 and q - 2 (NB + 2 broadcasts a channel for 3 * NB FMAs,
  // not 3 * NB)
  constexpr bool STATIONARY = VB == 64 && !CHECK && SS == 3 && SWL == L && L / KG > 1;
  const bool stationary = STATIONARY && j.dw == 1;
  for (int64_t r = 0; r < j.R; ++r) {
    const int64_t h = ho * j.sh - j.pt + r * j.dh;
    if (h < 0 || h >= j.H) continue;
    const float* irow = j.in + k0 / L * j.ib + n * j.in_ + h * j.ih;
    if constexpr (STATIONARY) {
      if (stationary) {
        constexpr int G = 16 / KG;
        const float* wp = j.wv + ((k0 / L * j.R * j.S + r * j.S) * KG) * L;
        const float* x0 = irow + (wo0 - j.pl) * SWL;
#pragma GCC unroll 2
        for (int c = 0; c < KG; ++c) {
          const V w0 = vload<VB>(wp + c * L), w1 = vload<VB>(wp + (KG + c) * L), w2 = vload<VB>(wp + (2 * KG + c) * L);
#pragma GCC unroll 16
          for (int q = 0; q < NB + 2; ++q) {
            const V b = broadcast_block<G>(x0 + q * SWL + c * G);
            if (q < NB) acc[q] += b * w0;
            if (q >= 1 && q <= NB) acc[q - 1] += b * w1;
            if (q >= 2) acc[q - 2] += b * w2;
          }
        }
        continue;
      }
    }
#pragma GCC unroll 3
    for (int64_t s = 0; s < (SS ? SS : j.S); ++s) {
      const float* wp = j.wv + ((k0 / L * j.R * j.S + r * j.S + s) * KG) * L;
      const int64_t wbase = wo0 * j.sw - j.pl + s * j.dw;
      // SWL: the pixels' distance in floats (stride times iw) when known at compile time
      const float* x0 = irow + wbase * j.iw;
      const int64_t step = SWL ? SWL : j.sw * j.iw;
      const float* xp[NB];
#pragma GCC unroll 16
      for (int i = 0; i < NB; ++i) {
        const int64_t w = wbase + i * j.sw;
        xp[i] = !CHECK ? x0 + i * step : w >= 0 && w < j.W ? irow + w * j.iw : zeros;
      }
      if constexpr (VB == 64) {  // input channel c: for a group as wide as the vector, one float
        // broadcast; for narrower ones (interleaved lanes) the G values of channel c of the vector's
        // G groups, side by side in the copy, broadcast as one G-float block (a load, no shuffle),
        // times the weights of channel c in the same lane order
        constexpr int G = 16 / KG;
        // (unrolled by 2, not KG: fully unrolled, these kernels took the sanitizer build of this
        // file past 27 minutes and 7 GB; no measurable difference in time). One float (G = 1) in
        // C: GCC makes it the FMA's embedded broadcast ({1to16}), one instruction where the asm
        // broadcast took two, and those broadcasts bound the loop on the Zen 4 (32 groups of 16,
        // 512 @14, channels_last: forward 1.61 -> 1.21 ms, data gradient 1.69 -> 1.31; torch 1.04).
#pragma GCC unroll 2
        for (int c = 0; c < KG; ++c) {
          const V wc = vload<VB>(wp + c * L);
#pragma GCC unroll 16
          for (int i = 0; i < NB; ++i) {
            const float* src = (!CHECK && SWL ? x0 + i * SWL : xp[i]) + c * G;
            if constexpr (G == 1)
              acc[i] += *src * wc;
            else
              acc[i] += broadcast_block<G>(src) * wc;
          }
        }
      } else {
#pragma GCC unroll 8
        for (int i = 0; i < NB; ++i) acc[i] = tap_sum<VB, KG>(acc[i], xp[i], wp, L, std::make_index_sequence<KG>{});
      }
    }
  }
  float* out = j.out + n * j.on + ho * j.oh + wo0 * j.ow + k0;
#pragma GCC unroll 16
  for (int i = 0; i < NB; ++i) {
    if constexpr (ILV) acc[i] = __builtin_shuffle(acc[i], from_ilv);
    std::memcpy(out + i * j.ow, &acc[i], sizeof(V));
  }
}

// Output row (n, ho), channels [k, k + L), in blocks of NB pixels, the last block overlapping
// the one before (its pixels computed twice, the same sums).
template <int VB, int KG, int NB>
GROUPED_INLINE void row_blocks(const Job& j, int64_t n, int64_t ho, int64_t k, int64_t wlo, int64_t whi) {
  constexpr int L = VB / 4;
  for (int64_t wo = 0; wo < j.Wo; wo += NB) {
    const int64_t w0 = std::min(wo, j.Wo - NB);
    if (w0 < wlo || w0 + NB > whi)
      pixels<VB, KG, NB, true>(j, n, ho, w0, k);
    else if (j.sw == 1 && j.S == 3)
      pixels<VB, KG, NB, false, L, 3>(j, n, ho, w0, k);
    else if (j.sw == 1)
      pixels<VB, KG, NB, false, L>(j, n, ho, w0, k);
    else if (j.sw == 2 && j.S == 3)
      pixels<VB, KG, NB, false, 2 * L, 3>(j, n, ho, w0, k);
    else if (j.sw == 2)
      pixels<VB, KG, NB, false, 2 * L>(j, n, ho, w0, k);
    else
      pixels<VB, KG, NB, false>(j, n, ho, w0, k);
  }
}

// The units of run(): blocked input, (vector of output channels, image, output row), the vectors
// outermost, so a thread's consecutive rows share the vector's weights (R * S * KG vectors, in L1
// meanwhile) and one block of the input (rows_body); in place, output rows (rows_nhwc).
inline int64_t units(const Job& j, int64_t L) { return (j.ib ? j.K / (L * j.kv) : 1) * j.N * j.Ho; }
template <int VB, int KG>
GROUPED_INLINE void rows_body(const Job& j, int64_t b, int64_t e) {
  constexpr int L = VB / 4;
  // Blocks of 14 pixels (ResNets' 56, 28, 14) on AVX-512 (14 sums and a weight of 32 registers);
  // else 8.
  constexpr int NB = VB == 64 ? 14 : 8;
  // output columns whose every tap is inside the image: [wlo, whi)
  // (pl is negative for a data gradient whose padding passes the filter: from column 0)
  const int64_t wlo = std::min(j.Wo, std::max<int64_t>(0, (j.pl + j.sw - 1) / j.sw));
  const int64_t span = j.W - 1 - (j.S - 1) * j.dw + j.pl;
  const int64_t whi = span < 0 ? wlo : std::clamp<int64_t>(span / j.sw + 1, wlo, j.Wo);
  for (int64_t u = b; u < e; ++u) {
    const int64_t row = u % (j.N * j.Ho), n = row / j.Ho, ho = row % j.Ho, k = u / (j.N * j.Ho) * L;
    if (j.Wo >= NB)
      row_blocks<VB, KG, NB>(j, n, ho, k, wlo, whi);
    else if (j.Wo >= 4)
      row_blocks<VB, KG, 4>(j, n, ho, k, wlo, whi);
    else
      row_blocks<VB, KG, 1>(j, n, ho, k, wlo, whi);
  }
}

// Read in place (NHWC input): NB output pixels of row (n, ho) from wo0, all output channels; CHECK: test
// each tap against the image's edges (border pixels), else every tap is inside.
// Eight pixels at a time give eight independent accumulation chains (one
// would leave the FMA units waiting on its latency).
template <int VB, int KG, int NB, bool CHECK>
GROUPED_INLINE void pixels_nhwc(const Job& j, int64_t n, int64_t ho, int64_t wo0) {
  using V = typename Vec<float, VB>::type;
  constexpr int L = VB / 4;
  float* out = j.out + n * j.on + ho * j.oh + wo0 * j.ow;
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
        const float* wp = j.wv + ((k0 / L * j.R * j.S + r * j.S + s) * KG) * L;
        const int64_t wbase = wo0 * j.sw - j.pl + s * j.dw;
#pragma GCC unroll 8
        for (int i = 0; i < NB; ++i) {
          const int64_t w = wbase + i * j.sw;
          if (CHECK && (w < 0 || w >= j.W)) continue;
          acc[i] = tap_sum<VB, KG>(acc[i], irow + w * j.K, wp, L, std::make_index_sequence<KG>{});
        }
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NB; ++i) std::memcpy(out + i * j.ow + k0, &acc[i], sizeof(V));
  }
}

template <int VB, int KG>
GROUPED_INLINE void rows_nhwc(const Job& j, int64_t b, int64_t e) {
  // output columns whose every tap is inside the image: [wlo, whi)
  // (pl is negative for a data gradient whose padding passes the filter: from column 0)
  const int64_t wlo = std::min(j.Wo, std::max<int64_t>(0, (j.pl + j.sw - 1) / j.sw));
  const int64_t span = j.W - 1 - (j.S - 1) * j.dw + j.pl;
  const int64_t whi = span < 0 ? wlo : std::clamp<int64_t>(span / j.sw + 1, wlo, j.Wo);
  for (int64_t row = b; row < e; ++row) {
    const int64_t n = row / j.Ho, ho = row % j.Ho;
    for (int64_t wo = 0; wo < wlo; ++wo) pixels_nhwc<VB, KG, 1, true>(j, n, ho, wo);
    int64_t wo = wlo;
    for (; wo + 8 <= whi; wo += 8) pixels_nhwc<VB, KG, 8, false>(j, n, ho, wo);
    if (wo < whi && whi - wlo >= 8) {  // the rest as a block overlapping the last (one pixel at a time
      pixels_nhwc<VB, KG, 8, false>(j, n, ho, whi - 8);  // reloads the weights for each: 14 x 14 ran half so)
      wo = whi;
    }
    for (; wo + 4 <= whi; wo += 4) pixels_nhwc<VB, KG, 4, false>(j, n, ho, wo);
    for (; wo < whi; ++wo) pixels_nhwc<VB, KG, 1, false>(j, n, ho, wo);
    for (wo = whi; wo < j.Wo; ++wo) pixels_nhwc<VB, KG, 1, true>(j, n, ho, wo);
  }
}

// Groups of two vectors' channels (32 on AVX-512), blocked input: NB output pixels of row (n, ho)
// from wo0, both output vectors of group g. Each input channel c of the group multiplies both
// vectors' weights, read twice as the two FMAs' embedded broadcast operands ({1to16}; opaque()
// keeps GCC from sharing one load), at immediate offsets from one address a channel. A broadcast
// in asm (its "m" operand) shared by the two FMAs made GCC compute each pixel's address in
// integer registers, a lea or two a broadcast: 32 groups of 32 @7, batch 8, one thread, 0.69-0.73x
// torch's time -> 0.98 (2 threads 0.76 -> 1.00; data gradient 0.67 -> 0.95). The group's input
// channels are blocks 2g and 2g + 1 of the copy.
template <int NB, int SWL = 0, int SS = 0>
GROUPED_INLINE void pixels_pair(const Job& j, int64_t n, int64_t ho, int64_t wo0, int64_t g) {
  using V = typename Vec<float, 64>::type;
  constexpr int L = 16, KG = 32;
  const int64_t k0 = g * KG, RS = j.R * j.S;
  V acc0[NB], acc1[NB];
  V b0{}, b1{};
  if (j.bias) std::memcpy(&b0, j.bias + k0, sizeof(V)), std::memcpy(&b1, j.bias + k0 + L, sizeof(V));
#pragma GCC unroll 16
  for (int i = 0; i < NB; ++i) acc0[i] = b0, acc1[i] = b1;
  for (int64_t r = 0; r < j.R; ++r) {
    const int64_t h = ho * j.sh - j.pt + r * j.dh;
    if (h < 0 || h >= j.H) continue;
    const float* irow = j.in + 2 * g * j.ib + n * j.in_ + h * j.ih;
#pragma GCC unroll 3
    for (int64_t s = 0; s < (SS ? SS : j.S); ++s) {
      const float* wp0 = j.wv + ((2 * g * RS + r * j.S + s) * KG) * L;
      const float* wp1 = j.wv + (((2 * g + 1) * RS + r * j.S + s) * KG) * L;
      const int64_t wbase = wo0 * j.sw - j.pl + s * j.dw;
      const float* x0 = irow + wbase * j.iw;
      const int64_t step = SWL ? SWL : j.sw * j.iw;
#pragma GCC unroll 2
      for (int c = 0; c < KG; ++c) {
        const V w0 = vload<64>(wp0 + c * L), w1 = vload<64>(wp1 + c * L);
        const int64_t blk = c / L * j.ib, cc = c % L;
        const float* xa = x0 + blk + cc;
        const float* xb = opaque(xa);
#pragma GCC unroll 16
        for (int i = 0; i < NB; ++i) {
          acc0[i] += xa[i * step] * w0;
          acc1[i] += xb[i * step] * w1;
        }
      }
    }
  }
  float* out = j.out + n * j.on + ho * j.oh + wo0 * j.ow + k0;
#pragma GCC unroll 16
  for (int i = 0; i < NB; ++i) {
    std::memcpy(out + i * j.ow, &acc0[i], sizeof(V));
    std::memcpy(out + i * j.ow + L, &acc1[i], sizeof(V));
  }
}

template <int NB>
GROUPED_INLINE void row_pairs(const Job& j, int64_t n, int64_t ho, int64_t g) {
  constexpr int L = 16;
  for (int64_t wo = 0; wo < j.Wo; wo += NB) {
    const int64_t w0 = std::min(wo, j.Wo - NB);
    if (j.sw == 1 && j.S == 3)
      pixels_pair<NB, L, 3>(j, n, ho, w0, g);
    else if (j.sw == 1)
      pixels_pair<NB, L>(j, n, ho, w0, g);
    else if (j.sw == 2 && j.S == 3)
      pixels_pair<NB, 2 * L, 3>(j, n, ho, w0, g);
    else
      pixels_pair<NB>(j, n, ho, w0, g);
  }
}

// Units [b, e) of run() for KG = 2L (AVX-512): (group, image, output row), groups outermost.
// Blocks of 12 pixels (24 sums, two weights and a broadcast of 32 registers), or of 7 where a
// row is whole sevens (ResNets' 7, 14, 28, 56).
__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void rows_pair_avx512(const Job& j, int64_t b,
                                                                                     int64_t e) {
  // (forward() pads the copy so that every tap of every output lies inside: no edge tests)
  TORCH_INTERNAL_ASSERT(j.pt == 0 && j.pl == 0 && j.ib != 0);
  for (int64_t u = b; u < e; ++u) {
    const int64_t row = u % (j.N * j.Ho), n = row / j.Ho, ho = row % j.Ho, g = u / (j.N * j.Ho);
    if (j.Wo % 7 == 0)
      row_pairs<7>(j, n, ho, g);
    else if (j.Wo >= 12)
      row_pairs<12>(j, n, ho, g);
    else if (j.Wo >= 4)
      row_pairs<4>(j, n, ho, g);
    else
      row_pairs<1>(j, n, ho, g);
  }
}

// A group as wide as the vector runs on the blocked input (forward() and data_grad() made it),
// a narrower one reads the input in place.
template <int VB>
GROUPED_INLINE void rows_any(const Job& j, int64_t kg, int64_t b, int64_t e) {
  switch (kg) {
    case 2:
      if constexpr (VB == 64) return j.ib ? rows_body<VB, 2>(j, b, e) : rows_nhwc<VB, 2>(j, b, e);
      return rows_nhwc<VB, 2>(j, b, e);
    case 4:
      if constexpr (VB == 16 || VB == 64) return j.ib ? rows_body<VB, 4>(j, b, e) : rows_nhwc<VB, 4>(j, b, e);
      return rows_nhwc<VB, 4>(j, b, e);
    case 8:
      if constexpr (VB == 32 || VB == 64) return j.ib ? rows_body<VB, 8>(j, b, e) : rows_nhwc<VB, 8>(j, b, e);
      break;
    case 16:
      if constexpr (VB == 64) return j.ib ? rows_body<VB, 16>(j, b, e) : rows_nhwc<VB, 16>(j, b, e);
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

// Groups narrower than the vector on AVX-512 take the blocked copy with interleaved lanes (Job::ilv)
// where each input element feeds enough multiply-adds to pay for the copy: KG * R * S per stride
// step at least 64 (32 groups of 8 @28, 3x3: 1.66 -> 1.25 ms; but 4-channel groups @56 1.47 ->
// 2.06, 8-channel groups at stride 2 from 56 1.88 -> 2.90: they keep the lane shuffles).
inline bool interleaved(int64_t KG, int64_t L, int64_t taps_per_step) {
  return L == 16 && KG < L && KG * taps_per_step >= 64;
}
// Each L-float vector of v (n floats) to the interleaved lane order: lane m * (L / KG) + i = lane
// i * KG + m.
void interleave_lanes(float* v, int64_t n, int64_t KG, int64_t L) {
  const int64_t G = L / KG;
  float t[16];
  for (int64_t o = 0; o < n; o += L) {
    for (int64_t l = 0; l < L; ++l) t[l] = v[o + l % G * KG + l / G];
    std::memcpy(v + o, t, L * sizeof(float));
  }
}

// One row of W pixels into the interleaved blocked copy: block cb of pixel w, 16 floats at
// s + w * iw + cb * 16, to d + cb * bstep + w * 16 with lane m * G + i = channel i * KG + m.
__attribute__((target("avx512f"))) void interleaved_row(float* d, const float* s, int64_t W, int64_t iw,
                                                        int64_t blocks, int64_t bstep, int64_t KG) {
  using V = typename Vec<float, 64>::type;
  using VI = typename Vec<int32_t, 64>::type;
  const int64_t G = 16 / KG;
  VI perm;
  for (int l = 0; l < 16; ++l) perm[l] = int32_t(l % G * KG + l / G);
  for (int64_t w = 0; w < W; ++w)
    for (int64_t cb = 0; cb < blocks; ++cb) {
      const V v = __builtin_shuffle(vload<64>(s + w * iw + cb * 16), perm);
      std::memcpy(d + cb * bstep + w * 16, &v, sizeof(V));
    }
}

// The job's input copied into blocks of L channels ([K / L][N][H'][W'][L]), each image
// zero-padded so that every tap of every output pixel lies inside it: each tap of a block of
// output pixels then reads consecutive vectors, with no edge tests. Read in place (NHWC), the
// vectors of one tap's pixels were K floats apart (2 KiB at 512 channels: all in the same two of
// L1's 64 sets). Channels_last, 32 groups of 16, 512 @14, batch 8, medians (torch 0.81-0.91 ms):
// forward 1.26-1.57 -> 1.09-1.22 ms, data gradient 1.47-1.48 -> 1.24-1.25. Narrower groups with
// their lane shuffles lost with it (32 groups of 8, 256 @28 1.8 -> 2.2 ms); with KG > 0 (< L) the
// copy interleaves each vector's lanes (Job::ilv), which made them gain (interleaved()). own: the
// copy's memory when it is above the scratch cap (layout.h).
void block_input(Job& j, int64_t L, std::vector<float>& own, int64_t KG = 0) {
  const int64_t pt = std::max<int64_t>(0, j.pt), pl = std::max<int64_t>(0, j.pl);
  const int64_t pb = std::max<int64_t>(0, (j.Ho - 1) * j.sh - j.pt + (j.R - 1) * j.dh - (j.H - 1));
  const int64_t pr = std::max<int64_t>(0, (j.Wo - 1) * j.sw - j.pl + (j.S - 1) * j.dw - (j.W - 1));
  const int64_t H = j.H + pt + pb, W = j.W + pl + pr, blocks = j.K / L, size = blocks * j.N * H * W * L;
  float* dst = size <= kScratchCapFloats ? thread_buffer<float>(kConvCol, size) : (own.resize(size), own.data());
  const Job& c = j;
  // units: rows of the padded images, each read a pixel's channels at a time (contiguous)
  at::parallel_for(0, j.N * H, 4, [&](int64_t b, int64_t e) {
    auto row = [&]<int LL>(int64_t n, int64_t h) {
      for (int64_t cb = 0; cb < blocks; ++cb) {
        float* dr = dst + ((cb * c.N + n) * H + h) * W * LL;
        if (h < pt || h >= pt + c.H) {
          std::fill(dr, dr + W * LL, 0.f);
          continue;
        }
        std::fill(dr, dr + pl * LL, 0.f);
        std::fill(dr + (pl + c.W) * LL, dr + W * LL, 0.f);
      }
      if (h < pt || h >= pt + c.H) return;
      const float* sr = c.in + n * c.in_ + (h - pt) * c.ih;
      float* d0 = dst + (n * H + h) * W * LL + pl * LL;
      const int64_t bstep = c.N * H * W * LL;
      if (KG > 0 && KG < LL) {  // interleaved (AVX-512 only): d[m * G + i] = s[i * KG + m]
        interleaved_row(d0, sr, c.W, c.iw, blocks, bstep, KG);
        return;
      }
      for (int64_t w = 0; w < c.W; ++w)
        for (int64_t cb = 0; cb < blocks; ++cb)
          std::memcpy(d0 + cb * bstep + w * LL, sr + w * c.iw + cb * LL, LL * sizeof(float));
    };
    for (int64_t u = b; u < e; ++u) {
      if (L == 16)
        row.template operator()<16>(u / H, u % H);
      else if (L == 8)
        row.template operator()<8>(u / H, u % H);
      else
        row.template operator()<4>(u / H, u % H);
    }
  });
  j.in = dst, j.H = H, j.W = W, j.pt -= pt, j.pl -= pl;
  j.blocked(L);
  j.ilv = KG > 0 && KG < L;
}

void run(const Job& j, int64_t kg) {
  const Isa isa = cpu_isa();
  at::parallel_for(0, units(j, vector_floats()), 1, [&](int64_t b, int64_t e) {
    if (j.kv == 2) return rows_pair_avx512(j, b, e);  // (wide_applicable: AVX-512 only)
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

// Output pixels [wb, we) of row (n, ho), channels [k0, k0 + L), taps [t0, t0 + nt), into the
// sums a (registers: the caller keeps them across its rows): CHECK tests each tap's column
// against the image's edges.
template <int VB, int KG, bool CHECK, int NT, typename V>
GROUPED_INLINE void wgrad_span(const WJob& j, V (&a)[NT][KG], int64_t n, int64_t ho, int64_t wb, int64_t we,
                               int64_t k0, int64_t t0, int64_t nt) {
  const float* xrow[NT];  // tap i's input row at column s*dw - pl (nullptr: the row is outside the image)
  int64_t xcol[NT];
#pragma GCC unroll 24
  for (int i = 0; i < NT; ++i) {
    xrow[i] = nullptr;
    xcol[i] = 0;
    if (i >= nt) continue;
    const int64_t t = t0 + i, r = t / j.S, s = t % j.S, h = ho * j.sh - j.pt + r * j.dh;
    xcol[i] = s * j.dw - j.pl;
    if (h >= 0 && h < j.H) xrow[i] = j.x + (n * j.H + h) * j.W * j.K + k0;
  }
  const float* dyp = j.dy + ((n * j.Ho + ho) * j.Wo) * j.K + k0;
  for (int64_t wo = wb; wo < we; ++wo) {
    const V dv = vload<VB>(dyp + wo * j.K);
#pragma GCC unroll 24
    for (int i = 0; i < NT; ++i) {
      if (i >= nt || !xrow[i]) continue;
      const int64_t w = wo * j.sw + xcol[i];
      if (CHECK && (w < 0 || w >= j.W)) continue;
      const float* xp = xrow[i] + w * j.K;
      if constexpr (KG == VB / 4) {
#pragma GCC unroll 16
        for (int c = 0; c < KG; ++c) a[i][c] += xp[c] * dv;  // a broadcast operand, as in pixels
      } else {
        const V xv = vload<VB>(xp);
        [&]<std::size_t... Cs>(std::index_sequence<Cs...>) __attribute__((always_inline)) {
          ((a[i][Cs] += dv * lane_broadcast<VB, KG, int(Cs)>(xv)), ...);
        }(std::make_index_sequence<KG>{});
      }
    }
  }
}

// Rows [b, e) (image, output row), each register block of sums (a vector of channels, NT taps)
// loaded from acc once for all the rows and stored back after them (per row, at 14 x 14, the
// loads and stores of 16 sums came to a quarter of a row's FMAs).
template <int VB, int KG>
GROUPED_INLINE void wgrad_rows_body(const WJob& j, float* acc, int64_t b, int64_t e) {
  using V = typename Vec<float, VB>::type;
  constexpr int64_t L = VB / 4;
  constexpr int NT = wgrad_taps<VB, KG>();
  const int64_t RS = j.R * j.S;
  // (pl is negative for a data gradient whose padding passes the filter: from column 0)
  const int64_t wlo = std::min(j.Wo, std::max<int64_t>(0, (j.pl + j.sw - 1) / j.sw));
  const int64_t span = j.W - 1 - (j.S - 1) * j.dw + j.pl;
  const int64_t whi = span < 0 ? wlo : std::clamp<int64_t>(span / j.sw + 1, wlo, j.Wo);
  // rows a chunk: their vectors of dY and X (a row and R - 1 more of X each) in 16 KiB of L1,
  // read again by each register block
  const int64_t chunk = std::max<int64_t>(1, (16 << 10) / (L * 4 * (j.Wo + j.R * j.W)));
  const auto sums = [&](int64_t k0, int64_t t, int c) { return acc + ((k0 / L * RS + t) * KG + c) * L; };
  for (int64_t cb = b; cb < e; cb += chunk)
    for (int64_t k0 = 0; k0 < j.K; k0 += L)
      for (int64_t t0 = 0; t0 < RS; t0 += NT) {
        const int64_t nt = std::min<int64_t>(NT, RS - t0);
        V a[NT][KG];
#pragma GCC unroll 24
        for (int i = 0; i < NT; ++i)
#pragma GCC unroll 16
          for (int c = 0; c < KG; ++c) a[i][c] = i < nt ? vload<VB>(sums(k0, t0 + i, c)) : V{};
        for (int64_t row = cb; row < std::min(e, cb + chunk); ++row) {
          const int64_t n = row / j.Ho, ho = row % j.Ho;
          wgrad_span<VB, KG, true>(j, a, n, ho, 0, wlo, k0, t0, nt);
          wgrad_span<VB, KG, false>(j, a, n, ho, wlo, whi, k0, t0, nt);
          wgrad_span<VB, KG, true>(j, a, n, ho, whi, j.Wo, k0, t0, nt);
        }
#pragma GCC unroll 24
        for (int i = 0; i < NT; ++i) {
          if (i >= nt) continue;
#pragma GCC unroll 16
          for (int c = 0; c < KG; ++c) std::memcpy(sums(k0, t0 + i, c), &a[i][c], sizeof(V));
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

// NCHW: the planes of one group read in place of a layout copy. A task is
// (image, group, block of output rows); its Cg input planes' rows are copied
// into a zero-padded buffer (the image at column pl, zeros around it), split at
// stride sh x sw into sh * sw phase planes Wq = Wo + (S - 1) * dw / sw wide
// (padded row i, column q goes to phase (i % sh, q % sw) at (i / sh, q / sw)),
// whose rows then form one flat run of outputs j = row * Wq + col (the Wq - Wo
// columns past each row computed and dropped): every tap (r, s) of every output
// is the shifted vector load xb[c][off(r, s) + j], off = its phase plane +
// (r * dh / sh) * Wq + s * dw / sw, no edge tests. KB output channels and PV
// vectors of outputs stay in registers (KB * PV sums) while the taps of the
// group's channels pass; each weight is a broadcast. Every output sums the
// bias, then (c, r, s) in order, whatever PV or the row blocks.
struct Strides {
  int64_t img, chan, row, col;
};
inline Strides nchw_strides(int64_t C, int64_t H, int64_t W) { return {C * H * W, H * W, W, 1}; }
inline Strides nhwc_strides(int64_t C, int64_t H, int64_t W) { return {H * W * C, 1, W * C, C}; }

struct PJob {
  const float* in;    // [N, G * Cg, H, W]
  const float* w;     // [G * Kg, Cg, R, S]
  const float* bias;  // [G * Kg] or nullptr
  float* out;         // [N, G * Kg, Ho, Wo]
  int64_t N, G, Cg, Kg, H, W, Ho, Wo, R, S, pt, pl, dh, dw, sh, sw, rows;
  const int64_t* off;  // [R * S] each tap's offset in a channel's planes
  // in's and out's images, channels, rows and columns this far apart (img == 0: NCHW contiguous);
  // channels_last is read and written in place (chan == 1)
  Strides is{}, os{};
  // NCHW rows of whole vectors or of 4 or more: each row's vectors stored in place (nchw_task),
  // by streaming stores where the result has isa_each.h's kStreamBytes or more and its rows are
  // whole 64-byte lines (run_nchw)
  bool direct = false, stream = false;
};

// The buffer of one task: its Cg channels' sh * sw phase planes ([Hq][Wq] and L + (S - 1) * dw / sw
// of slack each), then Kg output runs of ceil(rows * Wq / L) vectors.
struct PBlock {
  int64_t Wq, phase, plane, run;
};
// For `rows` output rows Wo wide of an R x S filter (dilation dh x dw, stride sh x sw); also the
// weight gradient's (all Ho rows).
inline PBlock phase_block(int64_t rows, int64_t Wo, int64_t R, int64_t S, int64_t dh, int64_t dw, int64_t sh,
                          int64_t sw, int64_t L) {
  const int64_t Wq = Wo + (S - 1) * dw / sw, Hq = rows + (R - 1) * dh / sh;
  const int64_t phase = Hq * Wq + (S - 1) * dw / sw + L;
  return {Wq, phase, sh * sw * phase, (rows * Wq + L - 1) / L * L};
}
inline PBlock pblock(const PJob& j, int64_t rows, int64_t L) {
  return phase_block(rows, j.Wo, j.R, j.S, j.dh, j.dw, j.sh, j.sw, L);
}
// off[r * S + s]: tap (r, s)'s offset in a channel's phase planes.
inline void tap_offsets(int64_t R, int64_t S, int64_t dh, int64_t dw, int64_t sh, int64_t sw, const PBlock& pb,
                        int64_t* off) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t s = 0; s < S; ++s) {
      const int64_t a = r * dh, b = s * dw;
      off[r * S + s] = (a % sh * sw + b % sw) * pb.phase + a / sh * pb.Wq + b / sw;
    }
}

// Input rows h0 + i (i < used; outside the image: zeros) of one image's Cg channels (in: channel
// 0's first element, st: its strides), into buf's phase planes: padded row i, column q (input
// column q - pl) at phase (i % sh, q % sw), position (i / sh, q / sw). Only the image's columns
// are written (the rest of a buffer stays as it was: zero). Channels_last is read a pixel's
// channels at a time.
template <int L>
GROUPED_INLINE void fill_phases(const float* in, const Strides& st, int64_t Cg, int64_t H, int64_t W, int64_t h0,
                                int64_t used, int64_t pl, int64_t sh, int64_t sw, int64_t Wq, int64_t phase,
                                int64_t plane, float* buf) {
  for (int64_t pc = 0; pc < sw; ++pc) {
    // phase column qc holds input column qc * sw + pc - pl: those inside the image, [q_lo, q_hi)
    const int64_t first = pl - pc;  // qc * sw >= first
    const int64_t q_lo = first <= 0 ? 0 : (first + sw - 1) / sw;
    const int64_t last = W - 1 + pl - pc;  // qc * sw <= last
    const int64_t q_hi = last < 0 ? 0 : std::min(Wq, last / sw + 1);
    if (q_lo >= q_hi) continue;
    const int64_t width = q_hi - q_lo, step = sw * st.col;
    const float* src = in + (q_lo * sw + pc - pl) * st.col;
    for (int64_t i = 0; i < used; ++i) {
      float* d = buf + (i % sh * sw + pc) * phase + i / sh * Wq + q_lo;  // channel c's at + c * plane
      const int64_t h = h0 + i;
      if (h < 0 || h >= H) {
        for (int64_t c = 0; c < Cg; ++c) std::fill(d + c * plane, d + c * plane + width, 0.0f);
        continue;
      }
      const float* sr = src + h * st.row;
      if (st.chan == 1) {  // channels_last: each pixel's Cg channels together
        for (int64_t w = 0; w < width; ++w)
          for (int64_t c = 0; c < Cg; ++c) d[c * plane + w] = sr[w * step + c];
        continue;
      }
      for (int64_t c = 0; c < Cg; ++c) {
        float* __restrict dc = d + c * plane;
        const float* __restrict sc = sr + c * st.chan;
        if (step == 1) {
          int64_t w = 0;
          for (; w + L <= width; w += L) std::memcpy(dc + w, sc + w, L * sizeof(float));
          for (; w < width; ++w) dc[w] = sc[w];
        } else {
          int64_t w = 0;
          // stride 2: L outputs a shuffle (read up to sc[2 (w + L) - 1], inside the row while
          // w + L < width). The scalar strided copy was half of a stride-2 layer's time (32
          // groups of 8, 256 @56, batch 8: 3.2 ms, and 2.2 when 4K aliasing between its loads
          // and stores happened not to strike).
          // Then half and quarter vectors (rows narrower than a vector: 15 columns of 32 groups
          // of 8 at stride 2 @28 went one float at a time, most of the layer's time).
          if (step == 2) {
            for (; w + L < width; w += L) {
              const auto v = vload_even<4 * L>(sc + 2 * w);
              std::memcpy(dc + w, &v, sizeof(v));
            }
            if constexpr (L >= 8)
              for (; w + L / 2 < width; w += L / 2) {
                const auto v = vload_even<2 * L>(sc + 2 * w);
                std::memcpy(dc + w, &v, sizeof(v));
              }
            if constexpr (L >= 16)
              for (; w + L / 4 < width; w += L / 4) {
                const auto v = vload_even<L>(sc + 2 * w);
                std::memcpy(dc + w, &v, sizeof(v));
              }
            for (; w < width; ++w) dc[w] = sc[2 * w];
          }
          for (; w < width; ++w) dc[w] = sc[w * step];
        }
      }
    }
  }
}

// The KB x PV vectors of outputs at position o of the planes' runs: output channel k's at
// dst + k * dstride (PV vectors), by streaming stores (isa_each.h's stream_bytes) where stream.
template <int VB, int KB, int PV>
GROUPED_INLINE void nchw_tile(const PJob& j, const PBlock& pb, const float* xb, const float* wk, const float* bk,
                              int64_t o, float* dst, int64_t dstride, bool stream) {
  using V = typename Vec<float, VB>::type;
  constexpr int L = VB / 4;
  const int64_t RS = j.R * j.S, wstep = j.Cg * RS;
  V acc[KB][PV];
#pragma GCC unroll 8
  for (int k = 0; k < KB; ++k) {
    const V b = V{} + (bk ? bk[k] : 0.0f);
#pragma GCC unroll 8
    for (int q = 0; q < PV; ++q) acc[k][q] = b;
  }
  for (int64_t c = 0; c < j.Cg; ++c) {
    const float* xc = xb + c * pb.plane + o;
    const float* wc = wk + c * RS;
    for (int64_t t = 0; t < RS; ++t) {
      const float* xp = xc + j.off[t];
      V xv[PV];
#pragma GCC unroll 8
      for (int q = 0; q < PV; ++q) xv[q] = vload<VB>(xp + q * L);
      const float* wt = wc + t;
#pragma GCC unroll 8
      for (int k = 0; k < KB; ++k) {
        const float wv = wt[k * wstep];  // a broadcast operand of the FMAs
#pragma GCC unroll 8
        for (int q = 0; q < PV; ++q) acc[k][q] += wv * xv[q];
      }
    }
  }
  if (stream) {
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k)
#pragma GCC unroll 8
      for (int q = 0; q < PV; ++q) stream_bytes<VB>(dst + k * dstride + q * L, &acc[k][q]);
    return;
  }
#pragma GCC unroll 8
  for (int k = 0; k < KB; ++k)
#pragma GCC unroll 8
    for (int q = 0; q < PV; ++q) std::memcpy(dst + k * dstride + q * L, &acc[k][q], sizeof(V));
}

// The last n < P + 1 vectors at o: one tile of that many (as nchw_tile's).
template <int VB, int KB, int P>
GROUPED_INLINE void nchw_tail(const PJob& j, const PBlock& pb, const float* xb, const float* wk, const float* bk,
                              int64_t o, int64_t n, float* dst, int64_t dstride, bool stream) {
  if constexpr (P > 0) {
    if (n == P) return nchw_tile<VB, KB, P>(j, pb, xb, wk, bk, o, dst, dstride, stream);
    nchw_tail<VB, KB, P - 1>(j, pb, xb, wk, bk, o, n, dst, dstride, stream);
  }
}

template <int VB, int KB, int PV>
GROUPED_INLINE void nchw_task(const PJob& j, float* buf, int64_t task) {
  using V = typename Vec<float, VB>::type;
  constexpr int L = VB / 4;
  const int64_t nrb = (j.Ho + j.rows - 1) / j.rows, rb = task % nrb, g = task / nrb % j.G, n = task / nrb / j.G;
  const int64_t ho0 = rb * j.rows, rows = std::min(j.rows, j.Ho - ho0);
  // Every task lays its buffer out as a whole block (a short last block leaves rows unused): the
  // places outside the image's columns and the slack are zero from the thread's first task on,
  // and only the image's columns of the rows used are written (the input's, or zeros above and
  // below it).
  const PBlock pb = pblock(j, j.rows, L);
  const int64_t run = (rows * pb.Wq + L - 1) / L * L, used = (rows - 1) * j.sh + (j.R - 1) * j.dh + 1;
  fill_phases<L>(j.in + n * j.is.img + g * j.Cg * j.is.chan, j.is, j.Cg, j.H, j.W, ho0 * j.sh - j.pt, used, j.pl,
                 j.sh, j.sw, pb.Wq, pb.phase, pb.plane, buf);
  float* yb = buf + j.Cg * pb.plane;
  const float* wg = j.w + g * j.Kg * j.Cg * j.R * j.S;
  float* out = j.out + n * j.os.img + g * j.Kg * j.os.chan + ho0 * j.os.row;
  if (j.direct) {
    // NCHW: each output row's vectors stored in place (the columns past Wo in the planes' runs
    // not computed), a last part of a vector through a tile's buffer. Through yb and a copy out,
    // 3 -> 64 3x3 @64, batch 8, ran 15 % slower than the im2col GEMM (the result, 8 MB, passed
    // through L2 twice); but rows of under four vectors with a part (14 columns, 32 groups of 8
    // at stride 2 @28) ran 18 % slower in place, their tiles of one or two vectors and the parts
    // copied one float at a time, than as whole tiles along the runs.
    alignas(64) float part[KB * L];
    const int64_t whole = j.Wo / L * L;
    for (int64_t k0 = 0; k0 < j.Kg; k0 += KB) {
      const float* wk = wg + k0 * j.Cg * j.R * j.S;
      const float* bk = j.bias ? j.bias + g * j.Kg + k0 : nullptr;
      for (int64_t i = 0; i < rows; ++i) {
        float* yr = out + k0 * j.os.chan + i * j.os.row;
        const int64_t o = i * pb.Wq;
        int64_t x = 0;
        for (; x + PV * L <= whole; x += PV * L)
          nchw_tile<VB, KB, PV>(j, pb, buf, wk, bk, o + x, yr + x, j.os.chan, j.stream);
        nchw_tail<VB, KB, PV - 1>(j, pb, buf, wk, bk, o + x, (whole - x) / L, yr + x, j.os.chan, j.stream);
        if (whole == j.Wo) continue;
        nchw_tile<VB, KB, 1>(j, pb, buf, wk, bk, o + whole, part, L, false);
        for (int k = 0; k < KB; ++k)
          for (int64_t q = whole; q < j.Wo; ++q) yr[k * j.os.chan + q] = part[k * L + q - whole];
      }
    }
    return;
  }
  for (int64_t k0 = 0; k0 < j.Kg; k0 += KB) {
    const float* wk = wg + k0 * j.Cg * j.R * j.S;
    const float* bk = j.bias ? j.bias + g * j.Kg + k0 : nullptr;
    float* yk = yb + k0 * pb.run;
    int64_t o = 0;
    for (; o + PV * L <= run; o += PV * L) nchw_tile<VB, KB, PV>(j, pb, buf, wk, bk, o, yk + o, pb.run, false);
    nchw_tail<VB, KB, PV - 1>(j, pb, buf, wk, bk, o, (run - o) / L, yk + o, pb.run, false);
  }
  if (j.os.col == 1) {  // NCHW
    for (int64_t k = 0; k < j.Kg; ++k)
      for (int64_t i = 0; i < rows; ++i)
        std::memcpy(out + k * j.os.chan + i * j.os.row, yb + k * pb.run + i * pb.Wq, j.Wo * sizeof(float));
    return;
  }
  // channels_last: each pixel's Kg channels together
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t x = 0; x < j.Wo; ++x)
      for (int64_t k = 0; k < j.Kg; ++k)
        out[i * j.os.row + x * j.os.col + k * j.os.chan] = yb[k * pb.run + i * pb.Wq + x];
}

// Register blocks: AVX-512 (32 registers) 8 channels x 3 vectors, 4 x 5, 3 x 6, 2 x 6, 1 x 8;
// AVX2 and the baseline (16) 4 x 2, 3 x 3, 2 x 4, 1 x 6 (1 and 3 channels: a layer's few outputs,
// dense_nchw_applicable).
template <int VB>
GROUPED_INLINE void nchw_tasks(const PJob& j, float* buf, int64_t b, int64_t e) {
  for (int64_t t = b; t < e; ++t) {
    if constexpr (VB == 64) {
      if (j.Kg == 1) nchw_task<VB, 1, 8>(j, buf, t);
      else if (j.Kg == 2) nchw_task<VB, 2, 6>(j, buf, t);
      else if (j.Kg == 3) nchw_task<VB, 3, 6>(j, buf, t);
      else if (j.Kg == 4) nchw_task<VB, 4, 5>(j, buf, t);
      else nchw_task<VB, 8, 3>(j, buf, t);
    } else {
      if (j.Kg == 1) nchw_task<VB, 1, 6>(j, buf, t);
      else if (j.Kg == 2) nchw_task<VB, 2, 4>(j, buf, t);
      else if (j.Kg == 3) nchw_task<VB, 3, 3>(j, buf, t);
      else nchw_task<VB, 4, 2>(j, buf, t);
    }
  }
}

__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void nchw_avx512(const PJob& j, float* buf, int64_t b,
                                                                                int64_t e) {
  nchw_tasks<64>(j, buf, b, e);
}
__attribute__((target("avx2,fma"))) void nchw_avx2(const PJob& j, float* buf, int64_t b, int64_t e) {
  nchw_tasks<32>(j, buf, b, e);
}
void nchw_base(const PJob& j, float* buf, int64_t b, int64_t e) { nchw_tasks<16>(j, buf, b, e); }

void run_nchw(PJob j) {
  const Isa isa = cpu_isa();
  const int64_t L = vector_floats();
  // Output rows a task: its planes and runs within ~256 KB of L2, and at least four tasks a thread
  // where the rows allow.
  const int64_t threads = at::get_num_threads();
  int64_t rows = j.Ho;
  auto bytes = [&](int64_t r) {
    const PBlock pb = pblock(j, r, L);
    return (j.Cg * pb.plane + j.Kg * pb.run) * int64_t(sizeof(float));
  };
  while (rows > 1 && bytes(rows) > (int64_t(256) << 10)) rows = (rows + 1) / 2;
  while (rows > 1 && j.N * j.G * ((j.Ho + rows - 1) / rows) < 4 * threads) rows = (rows + 1) / 2;
  j.rows = rows;
  if (j.is.img == 0) j.is = nchw_strides(j.G * j.Cg, j.H, j.W);
  if (j.os.img == 0) j.os = nchw_strides(j.G * j.Kg, j.Ho, j.Wo);
  // (the stem's 26 MB result, 3 -> 64 7x7 stride 2 at batch 8, copied out of yb with ordinary
  // stores read each line from memory first: 23 % on top of the product's time)
  j.direct = j.os.col == 1 && (j.Wo % L == 0 || j.Wo >= 4 * L);
  // (rows and planes contiguous: not a strided data gradient's phase of dX, rows st_h * W apart)
  j.stream = j.direct && j.os.row == j.Wo && j.os.chan == j.Ho * j.Wo && j.Wo % Block<float>::n == 0 &&
             stream_stores(j.out, j.N * j.os.img * int64_t(sizeof(float)), j.Wo * int64_t(sizeof(float)));
  int64_t off[64];
  tap_offsets(j.R, j.S, j.dh, j.dw, j.sh, j.sw, pblock(j, rows, L), off);
  j.off = off;
  const int64_t tasks = j.N * j.G * ((j.Ho + rows - 1) / rows);
  const int64_t size = bytes(rows) / int64_t(sizeof(float));
  at::parallel_for(0, tasks, 1, [&](int64_t b, int64_t e) {
    std::vector<float> buf(size);  // zeros: the padding every task's planes keep
    switch (isa) {
      case Isa::Avx512: nchw_avx512(j, buf.data(), b, e); break;
      case Isa::Avx2: nchw_avx2(j, buf.data(), b, e); break;
      default: nchw_base(j, buf.data(), b, e); break;
    }
    if (j.stream) _mm_sfence();
  });
}

// The NCHW weight gradient at stride 1: dW[k][c][tap] = sum over the images and the flat
// run j of dYb[k][j] * Xb[c][j + off(tap)], X's planes padded as the forward's and dY's rows
// copied at the same Wp pitch with zeros past Wo (the dropped columns add nothing). A task is
// (group, chunk of images): its images' planes are copied once, then vectors along j: KB output
// channels x TB taps of one input channel sum in registers over every image's run, and each
// sum's lanes are added up in order at the end. The chunks are fixed by the shape alone.
struct WNJob {
  const float* x;   // [N, G * Cg, H, W]
  const float* dy;  // [N, G * Kg, Ho, Wo]
  int64_t N, G, Cg, Kg, H, W, Ho, Wo, R, S, pt, pl, dh, dw, sh, sw, chunks, per_chunk;
};

// Where a task's images sit in its buffer: X's padded planes [image][Cg][plane], then dY's
// runs [image][Kg][run].
inline PBlock wn_layout(const WNJob& j, int64_t L) {  // the forward's phase planes, all Ho rows
  return phase_block(j.Ho, j.Wo, j.R, j.S, j.dh, j.dw, j.sh, j.sw, L);
}

template <typename V>
GROUPED_INLINE float wn_lanes(const V& v, int L) {  // the lanes in order
  float s = 0.0f;
  for (int l = 0; l < L; ++l) s += v[l];
  return s;
}

// KB output channels x the taps [t0, t0 + nt) (nt <= TB) of input channel c, over the task's
// images; out[k * kstride + i] = the sum for channel k0 + k, tap t0 + i.
template <int VB, int KB, int TB>
GROUPED_INLINE void wnchw_block(const float* xc, int64_t xstride, const float* dyk, int64_t ystride, int64_t imgs,
                                int64_t run, int64_t ks, const int64_t* off, int64_t nt, float* out,
                                int64_t kstride) {
  using V = typename Vec<float, VB>::type;
  constexpr int L = VB / 4;
  V a[KB][TB];
#pragma GCC unroll 8
  for (int k = 0; k < KB; ++k)
#pragma GCC unroll 16
    for (int i = 0; i < TB; ++i) a[k][i] = V{};
  for (int64_t n = 0; n < imgs; ++n) {
    const float* xn = xc + n * xstride;
    const float* yn = dyk + n * ystride;
    for (int64_t o = 0; o < run; o += L) {
      V d[KB];
#pragma GCC unroll 8
      for (int k = 0; k < KB; ++k) d[k] = vload<VB>(yn + k * ks + o);
#pragma GCC unroll 16
      for (int i = 0; i < TB; ++i) {
        if (i >= nt) break;
        V xv = vload<VB>(xn + off[i] + o);
        asm("" : "+v"(xv));  // in a register: folded into each FMA, the load ran KB times
#pragma GCC unroll 8
        for (int k = 0; k < KB; ++k) a[k][i] += d[k] * xv;
      }
    }
  }
#pragma GCC unroll 8
  for (int k = 0; k < KB; ++k)
#pragma GCC unroll 16
    for (int i = 0; i < TB; ++i)
      if (i < nt) out[k * kstride + i] = wn_lanes(a[k][i], L);
}

// The same for a 3 x 3 filter at dilation 1, all nine taps: X's rows through three pointers and
// the columns as constant displacements (the general block's per-tap offsets and tap-count tests
// took more instructions than its FMAs).
template <int VB, int KB>
GROUPED_INLINE void wnchw_block3x3(const float* xc, int64_t xstride, int64_t Wp, const float* dyk, int64_t ystride,
                                   int64_t imgs, int64_t run, int64_t ks, float* out, int64_t kstride) {
  using V = typename Vec<float, VB>::type;
  constexpr int L = VB / 4;
  V a[KB][9];
#pragma GCC unroll 8
  for (int k = 0; k < KB; ++k)
#pragma GCC unroll 9
    for (int i = 0; i < 9; ++i) a[k][i] = V{};
  for (int64_t n = 0; n < imgs; ++n) {
    const float* x0 = xc + n * xstride;
    const float* x1 = x0 + Wp;
    const float* x2 = x0 + 2 * Wp;
    const float* yn = dyk + n * ystride;
    for (int64_t o = 0; o < run; o += L) {
      V d[KB];
#pragma GCC unroll 8
      for (int k = 0; k < KB; ++k) d[k] = vload<VB>(yn + k * ks + o);
#pragma GCC unroll 3
      for (int s = 0; s < 3; ++s) {
        V v0 = vload<VB>(x0 + o + s), v1 = vload<VB>(x1 + o + s), v2 = vload<VB>(x2 + o + s);
        asm("" : "+v"(v0), "+v"(v1), "+v"(v2));  // as in wnchw_block
#pragma GCC unroll 8
        for (int k = 0; k < KB; ++k) {
          a[k][s] += d[k] * v0;
          a[k][3 + s] += d[k] * v1;
          a[k][6 + s] += d[k] * v2;
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int k = 0; k < KB; ++k)
#pragma GCC unroll 9
    for (int i = 0; i < 9; ++i) out[k * kstride + i] = wn_lanes(a[k][i], L);
}

template <int VB, int KB, int TB>
GROUPED_INLINE void wnchw_task(const WNJob& j, float* buf, float* part, int64_t task) {
  constexpr int L = VB / 4;
  const int64_t g = task / j.chunks, ch = task % j.chunks;
  const int64_t n0 = ch * j.per_chunk, n1 = std::min(j.N, n0 + j.per_chunk), imgs = n1 - n0;
  const PBlock ly = wn_layout(j, L);
  const int64_t RS = j.R * j.S, xstride = j.Cg * ly.plane, ystride = j.Kg * ly.run;
  // buffer: zero outside the image and past Wo from the thread's first task on (every task
  // writes the same places)
  float* xb = buf;
  float* yb = buf + j.per_chunk * xstride;
  const int64_t used = (j.Ho - 1) * j.sh + (j.R - 1) * j.dh + 1;
  for (int64_t n = n0; n < n1; ++n) {
    fill_phases<L>(j.x + (n * j.G + g) * j.Cg * j.H * j.W, nchw_strides(j.G * j.Cg, j.H, j.W), j.Cg, j.H, j.W, -j.pt,
                   used, j.pl, j.sh, j.sw, ly.Wq, ly.phase, ly.plane, xb + (n - n0) * xstride);
    for (int64_t k = 0; k < j.Kg; ++k) {
      const float* src = j.dy + (n * j.G * j.Kg + g * j.Kg + k) * j.Ho * j.Wo;
      float* yk = yb + (n - n0) * ystride + k * ly.run;
      for (int64_t i = 0; i < j.Ho; ++i) std::memcpy(yk + i * ly.Wq, src + i * j.Wo, j.Wo * sizeof(float));
    }
  }
  int64_t off[64];
  tap_offsets(j.R, j.S, j.dh, j.dw, j.sh, j.sw, ly, off);
  const bool f3x3 = j.R == 3 && j.S == 3 && j.dh == 1 && j.dw == 1 && j.sh == 1 && j.sw == 1;
  for (int64_t c = 0; c < j.Cg; ++c)
    for (int64_t k0 = 0; k0 < j.Kg; k0 += KB) {
      float* out = part + (k0 * j.Cg + c) * RS;  // part [Kg][Cg][RS]
      if (f3x3) {
        wnchw_block3x3<VB, KB>(xb + c * ly.plane, xstride, ly.Wq, yb + k0 * ly.run, ystride, imgs, ly.run, ly.run,
                               out, j.Cg * RS);
        continue;
      }
      for (int64_t t0 = 0; t0 < RS; t0 += TB)
        wnchw_block<VB, KB, TB>(xb + c * ly.plane, xstride, yb + k0 * ly.run, ystride, imgs, ly.run, ly.run,
                                off + t0, std::min<int64_t>(TB, RS - t0), out + t0, j.Cg * RS);
    }
}

template <int VB>
GROUPED_INLINE void wnchw_tasks(const WNJob& j, float* buf, float* part, int64_t b, int64_t e) {
  const int64_t size = j.Kg * j.Cg * j.R * j.S;
  for (int64_t t = b; t < e; ++t) {
    if constexpr (VB == 64)
      wnchw_task<VB, 2, 9>(j, buf, part + t * size, t);  // 18 sums, 2 dY vectors, 1 X vector
    else
      wnchw_task<VB, 1, 9>(j, buf, part + t * size, t);
  }
}

__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void wnchw_avx512(const WNJob& j, float* buf,
                                                                                 float* part, int64_t b, int64_t e) {
  wnchw_tasks<64>(j, buf, part, b, e);
}
__attribute__((target("avx2,fma"))) void wnchw_avx2(const WNJob& j, float* buf, float* part, int64_t b, int64_t e) {
  wnchw_tasks<32>(j, buf, part, b, e);
}
void wnchw_base(const WNJob& j, float* buf, float* part, int64_t b, int64_t e) { wnchw_tasks<16>(j, buf, part, b, e); }

// ---------------------------------------------------------------- Winograd F(2x2, 3x3), groups of 16 or 32
//
// 3x3 convolutions at stride 1 with 16 or 32 channels a group on AVX-512 (ResNeXt's 32 groups of
// 16 at 14 x 14 and of 32 at 7 x 7), channels_last (NCHW: forward_nchw_winograd's copies):
// Y = A^T [ (G g G^T) (.) (B^T d B) ] A per 4x4 input tile d and 2x2 output tile, with the points 0, +-1 and infinity (Lavin & Gray, 2016). A
// group's channels are KV vectors (KV = 1, 2), so a tile's transforms are vector adds along the
// channels, and each of the 16 transform points is a product of T tiles' input channels by the
// group's transformed weights: for each input channel, KV vectors of weights and KV * T FMAs with
// the tiles' values as embedded broadcast operands, the loop of the direct kernels above (pixels(),
// G == 1, and pixels_pair()) with 16 multiply-adds a (tile, channel pair) where the direct kernels
// take 36 for the same four outputs. The transforms add and subtract only (the weights' halve), so
// the error stays close to the direct product's (tests/test_winograd.py judges it by the F(4x4)
// bound). A unit is a group and a block of T tiles in (image, tile row, tile column) order: its
// tiles transformed into a thread buffer (L1: [point][tile][channel]), the 16 products, each
// written over its own point's inputs, then the output transform straight into y. Each output is
// computed by one unit in a fixed order: the bits do not depend on the thread count.
template <int KV>
constexpr int wino_tiles() {
  // sums in registers a product: KV * T (+ KV weight vectors, of 32 registers); the thread's buffer
  // 16 x T x 16 KV floats (12 / 16 KiB), beside the group's weights streaming through L1 (16 / 64
  // KiB a unit). 14 tiles of 32 channels (28 KiB) ran 32 groups of 32 @7 10 % slower than 8, and
  // 16 of 16 channels 512 @14 5-10 % slower than 12 (one thread, batch 8)
  return KV == 1 ? 12 : 8;
}

struct WinoJob {
  const float* x;     // [N][H][W][C] (NHWC)
  const float* u;     // [C / Cg][16 points][Cg input channels][Cg output channels]
  const float* bias;  // [C] or null
  float* y;           // [N][Ho][Wo][C] (NHWC)
  int64_t N, H, W, C, Ho, Wo, pt, pl, th, tw;  // th x tw: tiles an image
  int64_t gs;         // a group's channels start g * gs floats into x's and y's pixels
};

// u[((g * 16 + xi) * Cg + c) * Cg + k % Cg] = (G g G^T)[xi] of filter (k, c): G's rows (1, 0, 0),
// (1/2, 1/2, 1/2), (1/2, -1/2, 1/2), (0, 0, 1)
template <typename G>
void wino_weights(G&& g_of, int64_t C, int64_t Cg, float* u) {
  // (a point's row of Cg output channels made whole in tmp, then copied: written a float at a time,
  // the 16 points' rows, Cg * Cg floats apart, fell into one set of L1 and missed it every store,
  // a third of 32 groups of 32 @7's time)
  at::parallel_for(0, C / Cg, 1, [&](int64_t b, int64_t e) {
    float tmp[16][32];
    for (int64_t g = b; g < e; ++g)
      for (int64_t c = 0; c < Cg; ++c) {
        for (int64_t kk = 0; kk < Cg; ++kk) {
          float w[3][3], t[4][3];
          for (int r = 0; r < 3; ++r)
            for (int q = 0; q < 3; ++q) w[r][q] = g_of(g * Cg + kk, c, r, q);
          for (int q = 0; q < 3; ++q) {
            t[0][q] = w[0][q];
            t[1][q] = 0.5f * (w[0][q] + w[1][q] + w[2][q]);
            t[2][q] = 0.5f * (w[0][q] - w[1][q] + w[2][q]);
            t[3][q] = w[2][q];
          }
          for (int i = 0; i < 4; ++i) {
            tmp[i * 4 + 0][kk] = t[i][0];
            tmp[i * 4 + 1][kk] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
            tmp[i * 4 + 2][kk] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
            tmp[i * 4 + 3][kk] = t[i][2];
          }
        }
        for (int xi = 0; xi < 16; ++xi) std::memcpy(u + ((g * 16 + xi) * Cg + c) * Cg, tmp[xi], Cg * sizeof(float));
      }
  });
}

template <int KV>
__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void wino_units(const WinoJob& j, int64_t b,
                                                                               int64_t e) {
  using V = typename Vec<float, 64>::type;
  constexpr int T = wino_tiles<KV>(), CG = 16 * KV;
  alignas(64) float buf[16 * T * CG];  // [point][tile][channel]
  const int64_t per_image = j.th * j.tw, tiles = j.N * per_image, blocks = (tiles + T - 1) / T;
  for (int64_t unit = b; unit < e; ++unit) {
    const int64_t g = unit / blocks, t0 = unit % blocks * T, nt = std::min<int64_t>(T, tiles - t0);
    // the tiles' images and first output rows and columns (stepped, not divided for each tile)
    int64_t tn[T], th0[T], tw0[T];
    {
      int64_t n = t0 / per_image, th = t0 % per_image / j.tw, tw = t0 % j.tw;
      for (int t = 0; t < nt; ++t) {
        tn[t] = n, th0[t] = 2 * th, tw0[t] = 2 * tw;
        if (++tw == j.tw) {
          tw = 0;
          if (++th == j.th) th = 0, ++n;
        }
      }
    }
    // V = B^T d B, B^T's rows (1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1); a vector of
    // the group's channels at a time
    for (int t = 0; t < T; ++t)
      for (int kv = 0; kv < KV; ++kv) {
        const float* xg = j.x + g * j.gs + kv * 16;
        V v[4][4];
        if (t < nt) {
          const int64_t n = tn[t], h0 = th0[t] - j.pt, w0 = tw0[t] - j.pl;
          V d[4][4];
          for (int i = 0; i < 4; ++i)
            for (int k = 0; k < 4; ++k) {
              const int64_t h = h0 + i, w = w0 + k;
              d[i][k] = h >= 0 && h < j.H && w >= 0 && w < j.W ? vload<64>(xg + ((n * j.H + h) * j.W + w) * j.C) : V{};
            }
          V r[4][4];
          for (int k = 0; k < 4; ++k) {
            r[0][k] = d[0][k] - d[2][k];
            r[1][k] = d[1][k] + d[2][k];
            r[2][k] = d[2][k] - d[1][k];
            r[3][k] = d[1][k] - d[3][k];
          }
          for (int i = 0; i < 4; ++i) {
            v[i][0] = r[i][0] - r[i][2];
            v[i][1] = r[i][1] + r[i][2];
            v[i][2] = r[i][2] - r[i][1];
            v[i][3] = r[i][1] - r[i][3];
          }
        } else {
          for (int i = 0; i < 4; ++i)
            for (int k = 0; k < 4; ++k) v[i][k] = V{};  // (a short last block: zeros, not stale values)
        }
        for (int i = 0; i < 4; ++i)
          for (int k = 0; k < 4; ++k) std::memcpy(buf + ((i * 4 + k) * T + t) * CG + kv * 16, &v[i][k], sizeof(V));
      }
    // M_xi [tiles][k] = V_xi [tiles][c] U_xi [c][k], over V_xi
    const float* ug = j.u + g * 16 * CG * CG;
    for (int xi = 0; xi < 16; ++xi) {
      float* vb = buf + xi * T * CG;
      V acc[KV][T];
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t)
        for (int kv = 0; kv < KV; ++kv) acc[kv][t] = V{};
#pragma GCC unroll 2
      for (int c = 0; c < CG; ++c) {
        const float* up = ug + (xi * CG + c) * CG;
        if constexpr (KV == 1) {
          const V u0 = vload<64>(up);
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) acc[0][t] += vb[t * CG + c] * u0;
        } else {
          // (each product's own load of the tile's value: opaque() keeps GCC from sharing one)
          const V u0 = vload<64>(up), u1 = vload<64>(up + 16);
          const float* va = vb + c;
          const float* vc = opaque(va);
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) {
            acc[0][t] += va[t * CG] * u0;
            acc[1][t] += vc[t * CG] * u1;
          }
        }
      }
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t)
        for (int kv = 0; kv < KV; ++kv) std::memcpy(vb + t * CG + kv * 16, &acc[kv][t], sizeof(V));
    }
    // Y = A^T M A, A^T's rows (1, 1, 1, 0), (0, 1, -1, -1)
    for (int kv = 0; kv < KV; ++kv) {
      V bv{};
      if (j.bias) bv = vload<64>(j.bias + g * CG + kv * 16);
      for (int t = 0; t < nt; ++t) {
        V m[4][4];
        for (int i = 0; i < 4; ++i)
          for (int k = 0; k < 4; ++k) m[i][k] = vload<64>(buf + ((i * 4 + k) * T + t) * CG + kv * 16);
        V a[2][4];
        for (int k = 0; k < 4; ++k) {
          a[0][k] = m[0][k] + m[1][k] + m[2][k];
          a[1][k] = m[1][k] - m[2][k] - m[3][k];
        }
        const int64_t n = tn[t], h0 = th0[t], w0 = tw0[t];
        for (int i = 0; i < 2; ++i) {
          const V o[2] = {a[i][0] + a[i][1] + a[i][2] + bv, a[i][1] - a[i][2] - a[i][3] + bv};
          for (int k = 0; k < 2; ++k)
            if (h0 + i < j.Ho && w0 + k < j.Wo)
              std::memcpy(j.y + ((n * j.Ho + h0 + i) * j.Wo + w0 + k) * j.C + g * j.gs + kv * 16, &o[k], sizeof(V));
        }
      }
    }
  }
}

// Units [b, e) (unit = group * blocks + block of T tiles; Cg = 16 or 32); wino_blocks: the blocks a group.
void wino_run(const WinoJob& j, int64_t Cg, int64_t b, int64_t e) {
  if (Cg == 16)
    wino_units<1>(j, b, e);
  else
    wino_units<2>(j, b, e);
}
int64_t wino_blocks(const WinoJob& j, int64_t Cg) {
  const int64_t T = Cg == 16 ? wino_tiles<1>() : wino_tiles<2>();
  return (j.N * j.th * j.tw + T - 1) / T;
}

// The filter of a channels_last weight [K][3][3][Cg] (the forward's).
auto cl_filter(const float* w, int64_t Cg) {
  return [w, Cg](int64_t k, int64_t c, int r, int s) { return w[((k * 3 + r) * 3 + s) * Cg + c]; };
}

// y = the stride-1 3x3 convolution of x (both NHWC, C channels in groups of Cg = 16 or 32) by filter
// g_of(k, c, r, s) (k: the output channel, c: the input channel within k's group), padding pt / pl.
template <typename G>
void wino(const float* x, G&& g_of, const float* bias, float* y, int64_t N, int64_t H, int64_t W, int64_t C,
          int64_t Cg, int64_t Ho, int64_t Wo, int64_t pt, int64_t pl) {
  std::unique_ptr<float[]> u(new float[C * 16 * Cg]);
  wino_weights(g_of, C, Cg, u.get());
  const WinoJob j{x, u.get(), bias, y, N, H, W, C, Ho, Wo, pt, pl, (Ho + 1) / 2, (Wo + 1) / 2, Cg};
  at::parallel_for(0, C / Cg * wino_blocks(j, Cg), 1, [&](int64_t b, int64_t e) { wino_run(j, Cg, b, e); });
}

}  // namespace

void forward_nchw_winograd(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& sh,
                           const Conv2dParams& p) {
  // a unit is an image's group: its Cg planes transposed into a pixel-major copy in the thread's
  // buffer, its tiles run on that (an image of one group: channel stride Cg, group stride 0), the
  // result transposed back into y's planes. The copies stay in L2 (through channels_last copies
  // of the whole tensors, 32 groups of 16 @14 lost to the NCHW kernel: 0.97 against 1.09x torch).
  const int64_t Cg = sh.Cg, G = sh.K / Cg, HW = sh.H * sh.W, HWo = sh.Ho * sh.Wo;
  std::unique_ptr<float[]> u(new float[sh.K * 16 * Cg]);
  wino_weights(cl_filter(w, Cg), sh.K, Cg, u.get());
  at::parallel_for(0, G * sh.N, 1, [&](int64_t b, int64_t e) {
    float* xb = thread_buffer<float>(kConvCol, HW * Cg);
    float* yb = thread_buffer<float>(kConvPadded, HWo * Cg);
    const WinoJob j{xb, u.get(), bias, yb, 1, sh.H, sh.W, Cg, sh.Ho, sh.Wo, p.pad_t, p.pad_l,
                    (sh.Ho + 1) / 2, (sh.Wo + 1) / 2, 0};
    const int64_t blocks = wino_blocks(j, Cg);
    for (int64_t unit = b; unit < e; ++unit) {
      const int64_t g = unit / sh.N, n = unit % sh.N;
      transpose_strided(x + (n * sh.C + g * Cg) * HW, HW, xb, Cg, Cg, HW);
      wino_run(j, Cg, g * blocks, (g + 1) * blocks);
      transpose_strided(yb, Cg, y + (n * sh.K + g * Cg) * HWo, HWo, HWo, Cg);
    }
  });
}

bool winograd_applicable(const Conv2dShape& sh, const Conv2dParams& p) {
  return cpu_isa() == Isa::Avx512 && winograd::enabled() && p.groups > 1 && sh.Cg == sh.Kg &&
         (sh.Cg == 16 || sh.Cg == 32) && sh.R == 3 && sh.S == 3 && p.stride_h == 1 && p.stride_w == 1 &&
         p.dil_h == 1 && p.dil_w == 1 && sh.Ho > 0 && sh.Wo > 0;
}

bool nchw_applicable(const Conv2dShape& sh, const Conv2dParams& p) {
  return p.groups > 1 && sh.Cg == sh.Kg && (sh.Kg == 2 || sh.Kg == 4 || sh.Kg == 8 || sh.Kg == 16 || sh.Kg == 32) &&
         sh.R * sh.S <= 64 && p.stride_h <= 4 && p.stride_w <= 4;
}

bool dense_nchw_applicable(const Conv2dShape& sh, const Conv2dParams& p) {
  return p.groups == 1 && ((sh.C < 8 && sh.K % 8 == 0) || sh.K <= 4) && sh.R * sh.S <= 64 && p.stride_h <= 4 &&
         p.stride_w <= 4;
}

bool data_grad_nchw_applicable(const Conv2dShape& sh, const Conv2dParams& p) {
  return nchw_applicable(sh, p) && ((p.stride_h == 1 && p.stride_w == 1) || (p.dil_h == 1 && p.dil_w == 1));
}

void forward_nchw(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& sh,
                  const Conv2dParams& p, bool nhwc) {
  PJob j{x, w, bias, y, sh.N, p.groups, sh.Cg, sh.Kg, sh.H, sh.W, sh.Ho, sh.Wo, sh.R, sh.S, p.pad_t, p.pad_l,
         p.dil_h, p.dil_w, p.stride_h, p.stride_w, 0, nullptr};
  if (nhwc) j.is = nhwc_strides(sh.C, sh.H, sh.W), j.os = nhwc_strides(sh.K, sh.Ho, sh.Wo);
  run_nchw(j);
}

namespace {

// The taps of phase phi of a stride-st filter of n taps (dilation 1): r = phi + st * m, m < taps;
// the dX positions st * u + phi - pad inside [0, extent): u in [lo, hi).
struct Phase {
  int64_t taps, lo, hi;
};
Phase phase_of(int64_t n, int64_t st, int64_t phi, int64_t pad, int64_t extent) {
  auto ceil_div = [](int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); };
  auto floor_div = [](int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
  const int64_t lo = ceil_div(pad - phi, st), hi = floor_div(extent - 1 + pad - phi, st) + 1;
  return {phi < n ? (n - phi + st - 1) / st : 0, lo, std::max(lo, hi)};
}

}  // namespace

void data_grad_nchw(const float* gy, const float* w, const float* bias, float* gx, const Conv2dShape& sh,
                    const Conv2dParams& p, bool nhwc) {
  const Strides ys = nhwc ? nhwc_strides(sh.K, sh.Ho, sh.Wo) : nchw_strides(sh.K, sh.Ho, sh.Wo);
  const Strides xs = nhwc ? nhwc_strides(sh.C, sh.H, sh.W) : nchw_strides(sh.C, sh.H, sh.W);
  const int64_t Cg = sh.Cg, Kg = sh.Kg, R = sh.R, S = sh.S, RS = R * S;
  if (p.stride_h == 1 && p.stride_w == 1) {
    // dX = dY (*) the weight transposed within each group and turned 180 degrees, padding d*(R-1) - pad
    std::vector<float> wt(sh.C * Kg * RS);  // [C][Kg][R][S]
    for (int64_t c = 0; c < sh.C; ++c) {
      const int64_t g = c / Cg, ci = c % Cg;
      for (int64_t kk = 0; kk < Kg; ++kk)
        for (int64_t t = 0; t < RS; ++t) wt[(c * Kg + kk) * RS + RS - 1 - t] = w[((g * Kg + kk) * Cg + ci) * RS + t];
    }
    PJob j{gy, wt.data(), bias, gx, sh.N, p.groups, Kg, Cg, sh.Ho, sh.Wo, sh.H, sh.W, R, S,
           p.dil_h * (R - 1) - p.pad_t, p.dil_w * (S - 1) - p.pad_l, p.dil_h, p.dil_w, 1, 1, 0, nullptr};
    j.is = ys, j.os = xs;
    run_nchw(j);
    return;
  }
  // Stride sh x sw, dilation 1: the dX pixels h = sh * u + ph - pt (and likewise w) take only the
  // taps r = ph + sh * m, as a stride-1 correlation of dY with those taps turned around: one
  // convolution a phase, whose tasks write their rows into dX at stride. Each pixel belongs to
  // one phase: the bias once, then the group's channels and the taps in order.
  const int64_t st_h = p.stride_h, st_w = p.stride_w, N = sh.N, C = sh.C;
  // The phases' jobs first, then in NCHW image by image every phase of the image: each phase
  // writes every other column of every other row, so an image's dX, a few MB, is still in cache
  // for its next phase (phase after phase over the whole batch went to memory each time: 32
  // groups of 8, 256 @56 stride 2, batch 8: 4.6 -> 3.4-3.8 ms). Channels_last, written a pixel's
  // channels at a time, keeps the whole batch a phase (image by image: 6.0 -> 7.7 ms).
  const int64_t batch = nhwc ? N : 1;
  std::vector<std::vector<float>> wts;
  std::vector<PJob> runs;
  for (int64_t ph = 0; ph < st_h; ++ph)
    for (int64_t pw = 0; pw < st_w; ++pw) {
      const Phase a = phase_of(R, st_h, ph, p.pad_t, sh.H), b = phase_of(S, st_w, pw, p.pad_l, sh.W);
      const int64_t hu = a.hi - a.lo, wu = b.hi - b.lo;
      if (hu <= 0 || wu <= 0) continue;
      // dX at (u, v) = (lo, lo) of this phase
      float* first = gx + (st_h * a.lo + ph - p.pad_t) * xs.row + (st_w * b.lo + pw - p.pad_l) * xs.col;
      const int64_t Ra = a.taps, Sb = b.taps;  // none: no tap reaches these pixels (the bias or zero)
      // [C][Kg][Ra][Sb]: tap m is r = ph + sh * (Ra - 1 - m)
      std::vector<float>& wt = wts.emplace_back(C * Kg * Ra * Sb, 0.0f);
      for (int64_t c = 0; c < C && Ra * Sb > 0; ++c) {
        const int64_t g = c / Cg, ci = c % Cg;
        for (int64_t kk = 0; kk < Kg; ++kk)
          for (int64_t m = 0; m < Ra; ++m)
            for (int64_t q = 0; q < Sb; ++q)
              wt[((c * Kg + kk) * Ra + m) * Sb + q] =
                  w[((g * Kg + kk) * Cg + ci) * RS + (ph + st_h * (Ra - 1 - m)) * S + pw + st_w * (Sb - 1 - q)];
      }
      // out[u'] = sum_m f[m] dY[u' + lo - (Ra - 1) + m]: padding Ra - 1 - lo (negative: rows skipped)
      PJob job{gy, wt.data(), bias, first, batch, p.groups, Kg, Cg, sh.Ho, sh.Wo, hu, wu, Ra, Sb, Ra - 1 - a.lo,
               Sb - 1 - b.lo, 1, 1, 1, 1, 0, nullptr};
      job.is = ys, job.os = {xs.img, xs.chan, st_h * xs.row, st_w * xs.col};
      runs.push_back(job);
    }
  for (int64_t n = 0; n < N; n += batch)
    for (PJob job : runs) {
      job.in += n * ys.img, job.out += n * xs.img;
      if (job.R > 0 && job.S > 0) {
        run_nchw(job);
        continue;
      }
      float* first = job.out;
      at::parallel_for(0, batch * C, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t)
          for (int64_t u = 0; u < job.Ho; ++u)
            for (int64_t v = 0; v < job.Wo; ++v)
              first[t / C * xs.img + t % C * xs.chan + u * st_h * xs.row + v * st_w * xs.col] =
                  bias ? bias[t % C] : 0.0f;
      });
    }
}

bool weight_grad_nchw_applicable(const Conv2dShape& sh, const Conv2dParams& p) {
  // (32 channels a group: the GEMMs, 2.5 ms against this kernel's 2.95 for ResNeXt-50's 1024 @7)
  return nchw_applicable(sh, p) && sh.Kg <= 16;
}

void weight_grad_nchw(const float* x, const float* gy, float* gw, const Conv2dShape& sh, const Conv2dParams& p) {
  const int64_t G = p.groups, RS = sh.R * sh.S, L = vector_floats();
  WNJob j{x, gy, sh.N, G, sh.Cg, sh.Kg, sh.H, sh.W, sh.Ho, sh.Wo, sh.R, sh.S, p.pad_t, p.pad_l, p.dil_h, p.dil_w,
          p.stride_h, p.stride_w, 1, 1};
  // Images a chunk: their planes within ~1 MiB, and at least 16 tasks where the images allow
  // (the shape alone decides: the same bits on any thread count).
  const PBlock ly = wn_layout(j, L);
  const int64_t image = (sh.Cg * ly.plane + sh.Kg * ly.run) * int64_t(sizeof(float));
  int64_t per = std::clamp<int64_t>((int64_t(1) << 20) / image, 1, sh.N);
  per = std::min(per, std::max<int64_t>(1, sh.N * G / 16));
  j.per_chunk = per;
  j.chunks = (sh.N + per - 1) / per;
  const int64_t size = sh.Kg * sh.Cg * RS;
  std::vector<float> part(G * j.chunks * size);
  const Isa isa = cpu_isa();
  at::parallel_for(0, G * j.chunks, 1, [&](int64_t b, int64_t e) {
    std::vector<float> buf(per * image / int64_t(sizeof(float)));  // zeros: the padding every task keeps
    switch (isa) {
      case Isa::Avx512: return wnchw_avx512(j, buf.data(), part.data(), b, e);
      case Isa::Avx2: return wnchw_avx2(j, buf.data(), part.data(), b, e);
      default: return wnchw_base(j, buf.data(), part.data(), b, e);
    }
  });
  // gw [G * Kg][Cg][R][S]: the chunks summed in order
  for (int64_t g = 0; g < G; ++g)
    for (int64_t i = 0; i < size; ++i) {
      float v = 0.0f;
      for (int64_t ch = 0; ch < j.chunks; ++ch) v += part[(g * j.chunks + ch) * size + i];
      gw[g * size + i] = v;
    }
}

bool applicable(const Conv2dShape& sh, const Conv2dParams& p) {
  const int64_t L = vector_floats();
  return p.groups > 1 && sh.Cg == sh.Kg && (sh.Kg == 2 || sh.Kg == 4 || sh.Kg == 8 || sh.Kg == 16) &&
         sh.Kg <= L && sh.K % L == 0;
}

bool wide_applicable(const Conv2dShape& sh, const Conv2dParams& p) {
  return cpu_isa() == Isa::Avx512 && p.groups > 1 && sh.Cg == 32 && sh.Kg == 32;
}

bool data_grad_applicable(const Conv2dShape& sh, const Conv2dParams& p) {
  return applicable(sh, p) && ((p.stride_h == 1 && p.stride_w == 1) || (p.dil_h == 1 && p.dil_w == 1));
}

void forward(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& sh,
             const Conv2dParams& p) {
  if (winograd_applicable(sh, p))  // w: channels_last [K][3][3][Cg]
    return wino(x, cl_filter(w, sh.Cg), bias, y, sh.N, sh.H, sh.W, sh.K, sh.Cg, sh.Ho, sh.Wo, p.pad_t, p.pad_l);
  const int64_t K = sh.K, Kg = sh.Kg, RS = sh.R * sh.S, L = vector_floats();
  // wv[((k / L * RS + tap) * Kg + c) * L + k % L] = w[k][tap][c]: for each vector of output channels
  // the transpose of its [L][RS * Kg] rows of the channels_last weight (a scattered copy from the
  // contiguous weight, after its conversion, cost a fifth of 1024 channels in groups of 32 @7)
  std::unique_ptr<float[]> wv(new float[RS * Kg * K]);
  at::parallel_for(0, K / L, 8, [&](int64_t b, int64_t e) {
    for (int64_t kb = b; kb < e; ++kb)
      transpose_strided(w + kb * L * RS * Kg, RS * Kg, wv.get() + kb * RS * Kg * L, L, L, RS * Kg);
  });
  const bool ilv = interleaved(Kg, L, RS / (p.stride_h * p.stride_w));
  if (ilv) interleave_lanes(wv.get(), RS * Kg * K, Kg, L);
  Job j{x, wv.get(), bias, y, sh.N, sh.H, sh.W, sh.Ho, sh.Wo, K, sh.R, sh.S,
        p.stride_h, p.stride_w, p.pad_t, p.pad_l, p.dil_h, p.dil_w};
  std::vector<float> own;
  if (Kg == L || Kg == 2 * L || ilv) block_input(j, L, own, ilv ? Kg : 0);
  j.kv = Kg == 2 * L ? 2 : 1;
  run(j, Kg);
}

void data_grad(const float* gy, const float* w, const float* bias, float* gx, const Conv2dShape& sh,
               const Conv2dParams& p) {
  const int64_t C = sh.C, Kg = sh.Kg, Cg = sh.Cg, R = sh.R, S = sh.S, RS = R * S, L = vector_floats();
  if (winograd_applicable(sh, p)) {  // dX = dY (*) w rotated and transposed within groups; w: [K][Cg][3][3]
    return wino(
        gy,
        [&](int64_t c, int64_t k, int r, int s) {
          return w[((c / Cg * Cg + k) * Cg + c % Cg) * 9 + (2 - r) * 3 + (2 - s)];
        },
        bias, gx, sh.N, sh.Ho, sh.Wo, C, Cg, sh.H, sh.W, 2 - p.pad_t, 2 - p.pad_l);
  }
  if (p.stride_h == 1 && p.stride_w == 1) {
    // dX[c] = sum over the group's k and the taps of w[k][c][r][s] dY[h + pad - r*d]: the convolution of
    // dY with the weight transposed within groups and rotated, padding d*(R-1) - pad, at stride 1.
    // the forward's layout, a vector of dX's channels a task (0.1 ms of 1.1 for 32 groups of 16 @14
    // as one thread's loop with a division an element)
    std::unique_ptr<float[]> wv(new float[RS * Kg * C]);
    at::parallel_for(0, C / L, 4, [&](int64_t b, int64_t e) {
      for (int64_t cb = b; cb < e; ++cb)
        for (int64_t l = 0; l < L; ++l) {
          const int64_t c = cb * L + l, g = c / Cg, ci = c - g * Cg;
          const float* src = w + (g * Kg * Cg + ci) * RS;
          float* d = wv.get() + cb * RS * Kg * L + l;
          for (int64_t kk = 0; kk < Kg; ++kk)
            for (int64_t t = 0; t < RS; ++t) d[((RS - 1 - t) * Kg + kk) * L] = src[kk * Cg * RS + t];
        }
    });
    const bool ilv = interleaved(Kg, L, RS);
    if (ilv) interleave_lanes(wv.get(), RS * Kg * C, Kg, L);
    Job j{gy, wv.get(), bias, gx, sh.N, sh.Ho, sh.Wo, sh.H, sh.W, C, R, S, 1, 1,
          p.dil_h * (R - 1) - p.pad_t, p.dil_w * (S - 1) - p.pad_l, p.dil_h, p.dil_w};
    std::vector<float> own;
    if (Kg == L || ilv) block_input(j, L, own, ilv ? Kg : 0);
    return run(j, Kg);
  }
  // Stride sh x sw, dilation 1 (as data_grad_nchw's phases): the dX pixels h = sh * u + ph - pt
  // (and likewise w) take only the taps r = ph + sh * m, a stride-1 correlation of dY with those
  // taps turned around: one job a phase, dY read in place, its pixels written into dX at stride
  // (a vector of a pixel's channels at a time). Each dX pixel belongs to one phase: the bias once.
  // Before, channels_last ran the NCHW kernel in place (32 groups of 8, 256 @56 stride 2, batch 8:
  // 8.4 ms against torch's 4.2).
  const int64_t st_h = p.stride_h, st_w = p.stride_w, H = sh.H, W = sh.W;
  for (int64_t ph = 0; ph < st_h; ++ph)
    for (int64_t pw = 0; pw < st_w; ++pw) {
      const Phase a = phase_of(R, st_h, ph, p.pad_t, H), b = phase_of(S, st_w, pw, p.pad_l, W);
      const int64_t hu = a.hi - a.lo, wu = b.hi - b.lo, Ra = a.taps, Sb = b.taps;
      if (hu <= 0 || wu <= 0) continue;
      float* first = gx + ((st_h * a.lo + ph - p.pad_t) * W + st_w * b.lo + pw - p.pad_l) * C;
      if (Ra == 0 || Sb == 0) {  // no tap reaches these pixels: the bias, or zero
        at::parallel_for(0, sh.N * hu, 1, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t)
            for (int64_t v = 0; v < wu; ++v) {
              float* d = first + (t / hu * H * W + t % hu * st_h * W + v * st_w) * C;
              if (bias)
                std::memcpy(d, bias, C * sizeof(float));
              else
                std::fill(d, d + C, 0.f);
            }
        });
        continue;
      }
      // wv[((c / L * Ra * Sb + m * Sb + q) * Kg + kk) * L + c % L]: tap (m, q) is r = ph + sh * (Ra - 1 - m)
      std::vector<float> wv(Ra * Sb * Kg * C);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t g = c / Cg, ci = c % Cg;
        for (int64_t kk = 0; kk < Kg; ++kk)
          for (int64_t m = 0; m < Ra; ++m)
            for (int64_t q = 0; q < Sb; ++q)
              wv[((c / L * Ra * Sb + m * Sb + q) * Kg + kk) * L + c % L] =
                  w[((g * Kg + kk) * Cg + ci) * RS + (ph + st_h * (Ra - 1 - m)) * S + pw + st_w * (Sb - 1 - q)];
      }
      // out[u'] = sum_m f[m] dY[u' + lo - (Ra - 1) + m]: padding Ra - 1 - lo (negative: rows skipped)
      Job j{gy, wv.data(), bias, first, sh.N, sh.Ho, sh.Wo, hu, wu, C, Ra, Sb, 1, 1, Ra - 1 - a.lo, Sb - 1 - b.lo,
            1, 1};
      j.on = H * W * C, j.oh = st_h * W * C, j.ow = st_w * C;
      run(j, Kg);
    }
}

}  // namespace convx::cpu::grouped

namespace convx::cpu::grouped {

void weight_grad(const float* x, const float* gy, float* gw, const Conv2dShape& sh, const Conv2dParams& p) {
  const int64_t K = sh.K, Kg = sh.Kg, RS = sh.R * sh.S, rows = sh.N * sh.Ho, size = RS * Kg * K, L = vector_floats();
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
  // gw [K][Kg][R][S] = acc[((k / L * RS + t) * Kg + c) * L + k % L] (the forward's weight layout: a
  // vector's accumulators contiguous), summed over the chunks
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < Kg; ++c)
      for (int64_t t = 0; t < RS; ++t) {
        float v = 0;
        for (int64_t ch = 0; ch < chunks; ++ch) v += acc[ch * size + ((k / L * RS + t) * Kg + c) * L + k % L];
        gw[(k * Kg + c) * RS + t] = v;
      }
}

}  // namespace convx::cpu::grouped
