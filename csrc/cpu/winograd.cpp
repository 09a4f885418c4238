// Winograd F(4x4, 3x3) for 3x3 / stride-1 convolutions on the CPU (Lavin &
// Gray, "Fast Algorithms for Convolutional Neural Networks", 2016):
//
//   Y = A^T [ (G g G^T) (.) (B^T d B) ] A      per 6x6 input tile d, 4x4 output tile
//
// with the points 0, +-1, +-2, +-1/2 and infinity. A 4x4 output tile costs 36
// multiplies a (c, k) pair instead of 144: the convolution becomes 36
// independent GEMMs, one per transform point xi,
//
//   M_xi [tiles, K] = V_xi [tiles, C] * U_xi [C, K]
//
// How it runs (float32; the register tiles are the GEMM's, gemm.cpp):
//  * the weights are transformed once a call, vectorised along k, straight
//    into the packed-B layout of gemm_packed (no per-block packing of B);
//  * the output tiles (n, th, tw) are cut into blocks of TB tiles; a task is a
//    (block, chunk of K) pair, so small layers still give every thread work;
//  * a task copies each 6-row band of input it needs into a zero-padded NHWC
//    buffer (from NHWC: row copies; from NCHW: a transposition), transforms
//    its tiles vectorised along channels into V [36][TB][C], runs the 36
//    GEMMs into M [36][TB][Kc] (L2-sized) and transforms M into the output,
//    adding the bias (NCHW output through a 16 x Kc tile transposed on store).
//  * every task body is compiled for AVX-512, AVX2 + FMA and the baseline and
//    picked by cpu_isa(), as the GEMM's micro-kernels are.
// Nothing depends on the thread count: each output element is computed by one
// task in a fixed order, so results are bitwise reproducible.
//
// Error: the transforms add and scale by up to 8 and 1/24, so the result's
// rounding error is larger than a direct convolution's: measured against
// float64 (tests/test_winograd.py) it stays within a small multiple of the
// direct error bound (C * 2^-24 * sum |w||x|); float64 never takes this path,
// and convx.backends.cpu.winograd = False turns it off.
#include "winograd.h"

#include "gemm.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

namespace convx::cpu::winograd {
namespace {

std::atomic<bool> g_enabled{[] {
  const char* e = std::getenv("CONVX_CPU_WINOGRAD");
  return !(e && e[0] == '0');
}()};

constexpr int64_t kCAlign = 16;  // channels padded to the widest vector (16 floats)

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Per-thread float buffers, 64-byte aligned, grown on demand and kept (never zero-filled).
float* tls_buffer(int slot, int64_t n) {
  struct Buf {
    void* p = nullptr;
    int64_t cap = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf bufs[4];
  Buf& b = bufs[slot];
  const int64_t bytes = std::max<int64_t>(64, round_up(n * int64_t(sizeof(float)), 64));
  if (b.cap < bytes) {
    std::free(b.p);
    b.p = std::aligned_alloc(64, bytes);
    TORCH_CHECK(b.p != nullptr, "convx: out of memory for a ", bytes, "-byte Winograd buffer");
    b.cap = bytes;
  }
  return static_cast<float*>(b.p);
}

// The packed, transformed weights of one call: 36 * Cp * Kp floats. Kept
// between calls (on the calling thread) so a call does not fault in fresh pages.
float* weight_buffer(int64_t n) { return tls_buffer(3, n); }

#define WINO_INLINE __attribute__((always_inline)) inline
// The vector helpers below are always inlined into the per-ISA task functions;
// no vector crosses a call boundary, so GCC's ABI notes do not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

template <int VB>
struct Vec {
  static constexpr int L = VB / 4;
  typedef float V __attribute__((vector_size(VB)));
  static WINO_INLINE V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static WINO_INLINE void store(float* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static WINO_INLINE V splat(float x) { return V{} + x; }
};

// ---------------------------------------------------------------- weights

// U_xi [Cp, Kp] = (G g G^T)[xi] for every (c, k), vectorised along k, written
// where gemm_packed reads it; this call does the columns of one packed panel
// [j0, j0 + NR) for every c, so each of the 36 destinations is written in
// order. gk(k, c, r, s) gives the filter. Rows c >= C and columns k >= K are zero.
template <int VB, typename G>
WINO_INLINE void transform_weights_panel(int64_t j0, int64_t C, int64_t K, int64_t Kp, int64_t KC, int64_t NR,
                                         int64_t Cp, const G& gk, float* Up) {
  using Vt = Vec<VB>;
  using V = typename Vt::V;
  constexpr int L = Vt::L;
  // t = G g (6 x 3), then u = t G^T (6 x 6); G's rows: (1/4, 0, 0), (-1/6)(1, 1, 1),
  // (-1/6)(1, -1, 1), (1/24, 1/12, 1/6), (1/24, -1/12, 1/6), (0, 0, 1).
  auto gt = [](V a, V b, V c2, V* o) __attribute__((always_inline)) {
    const V s02 = a + c2;
    o[0] = a * 0.25f;
    o[1] = (s02 + b) * (-1.f / 6);
    o[2] = (s02 - b) * (-1.f / 6);
    const V e = a * (1.f / 24) + c2 * (1.f / 6), f = b * (1.f / 12);
    o[3] = e + f;
    o[4] = e - f;
    o[5] = c2;
  };
  const int64_t XS = Cp * Kp;  // one transform point's panel set
  for (int64_t c = 0; c < Cp; ++c) {
    const int64_t pc = c / KC * KC, kc = std::min(KC, Cp - pc);
    float* dst0 = Up + pc * Kp + j0 * kc + (c - pc) * NR;
    for (int64_t k0 = j0; k0 < j0 + NR; k0 += L) {
      float* dst = dst0 + (k0 - j0);
      if (c >= C || k0 >= K) {
        for (int xi = 0; xi < 36; ++xi) Vt::store(dst + xi * XS, V{});
        continue;
      }
      alignas(64) float tmp[9][L];
      const int64_t kn = std::min<int64_t>(L, K - k0);
      for (int64_t l = 0; l < kn; ++l)
        for (int rs = 0; rs < 9; ++rs) tmp[rs][l] = gk(k0 + l, c, rs / 3, rs % 3);
      for (int64_t l = kn; l < L; ++l)
        for (int rs = 0; rs < 9; ++rs) tmp[rs][l] = 0.f;
      V t[6][3];
      for (int s = 0; s < 3; ++s) {
        V col[6];
        gt(Vt::load(tmp[s]), Vt::load(tmp[3 + s]), Vt::load(tmp[6 + s]), col);
        for (int i = 0; i < 6; ++i) t[i][s] = col[i];
      }
      for (int i = 0; i < 6; ++i) {
        V row[6];
        gt(t[i][0], t[i][1], t[i][2], row);
        for (int j = 0; j < 6; ++j) Vt::store(dst + (i * 6 + j) * XS, row[j]);
      }
    }
  }
}

// ---------------------------------------------------------------- the tile transforms

// d: 6 x 6 vectors (rows i, columns j) -> V = B^T d B, stored at v[xi * vstride].
// B^T's rows: (4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
// (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1).
template <typename V>
WINO_INLINE void bt6(const V* d, int64_t step, V* o) {
  const V d0 = d[0], d1 = d[step], d2 = d[2 * step], d3 = d[3 * step], d4 = d[4 * step], d5 = d[5 * step];
  const V a = d4 - d2 * 4.f, b = d3 - d1 * 4.f, e = d4 - d2, f = (d3 - d1) * 2.f;
  o[0] = d0 * 4.f - d2 * 5.f + d4;
  o[1] = a + b;
  o[2] = a - b;
  o[3] = e + f;
  o[4] = e - f;
  o[5] = d1 * 4.f - d3 * 5.f + d5;
}

// A^T's rows: (1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1).
template <typename V>
WINO_INLINE void at6(const V* m, int64_t step, V* o) {
  const V m0 = m[0], m1 = m[step], m2 = m[2 * step], m3 = m[3 * step], m4 = m[4 * step], m5 = m[5 * step];
  const V a = m1 + m2, b = m1 - m2, c = m3 + m4, d = m3 - m4;
  o[0] = m0 + a + c;
  o[1] = b + d * 2.f;
  o[2] = a + c * 4.f;
  o[3] = b + d * 8.f + m5;
}

struct Geometry {
  int64_t N, C, H, W, K, Ho, Wo, pad_t, pad_l;
  int64_t Cp, Kp, TH, TW, Wb;  // padded channels, tiles, band width (4 TW + 2)
  bool nhwc;
};

// The 6-row band of zero-padded input that tile row (n, th) reads: band [6][Wb][Cp].
WINO_INLINE void fill_band(const float* x, const Geometry& g, int64_t n, int64_t th, float* band) {
  const int64_t C = g.C, Cp = g.Cp, Wb = g.Wb;
  for (int i = 0; i < 6; ++i) {
    float* row = band + i * Wb * Cp;
    const int64_t h = th * 4 - g.pad_t + i;
    // columns u of the band read x column u - pad_l
    const int64_t u0 = std::clamp<int64_t>(g.pad_l, 0, Wb), u1 = std::clamp<int64_t>(g.W + g.pad_l, u0, Wb);
    if (h < 0 || h >= g.H || u0 >= u1) {
      std::memset(row, 0, Wb * Cp * sizeof(float));
      continue;
    }
    std::memset(row, 0, u0 * Cp * sizeof(float));
    std::memset(row + u1 * Cp, 0, (Wb - u1) * Cp * sizeof(float));
    if (g.nhwc) {
      const float* xr = x + ((n * g.H + h) * g.W + (u0 - g.pad_l)) * C;
      if (Cp == C) {
        std::memcpy(row + u0 * Cp, xr, (u1 - u0) * C * sizeof(float));
      } else {
        for (int64_t u = u0; u < u1; ++u) {
          std::memcpy(row + u * Cp, xr + (u - u0) * C, C * sizeof(float));
          std::memset(row + u * Cp + C, 0, (Cp - C) * sizeof(float));
        }
      }
    } else {
      // [C][W] -> [W][Cp], 8 channels x 8 columns at a time; band column u reads x column u - pad_l.
      const int64_t HW = g.H * g.W;
      const float* xr = x + (n * C * g.H + h) * g.W + (u0 - g.pad_l);  // xr[c * HW + (u - u0)]
      int64_t c0 = 0;
      for (; c0 + 8 <= C; c0 += 8) {
        int64_t u = u0;
        for (; u + 8 <= u1; u += 8)
          for (int cc = 0; cc < 8; ++cc) {
            const float* src = xr + (c0 + cc) * HW + (u - u0);
            for (int uu = 0; uu < 8; ++uu) row[(u + uu) * Cp + c0 + cc] = src[uu];
          }
        for (; u < u1; ++u)
          for (int cc = 0; cc < 8; ++cc) row[u * Cp + c0 + cc] = xr[(c0 + cc) * HW + (u - u0)];
      }
      for (int64_t u = u0; u < u1; ++u) {
        for (int64_t c = c0; c < C; ++c) row[u * Cp + c] = xr[c * HW + (u - u0)];
        for (int64_t c = C; c < Cp; ++c) row[u * Cp + c] = 0.f;
      }
    }
  }
}

// One task: tiles [t0, t1) of the flattened (n, th, tw) order, output channels [k0, k1).
template <int VB>
WINO_INLINE void task_body(const float* x, const float* Up, const float* bias, float* y, const Geometry& g, int64_t t0,
                           int64_t t1, int64_t k0, int64_t k1, int64_t TB) {
  using Vt = Vec<VB>;
  using V = typename Vt::V;
  constexpr int L = Vt::L;
  const int64_t Cp = g.Cp, Kp = g.Kp, Kc = k1 - k0, nt = t1 - t0;
  float* band = tls_buffer(0, 6 * g.Wb * Cp);
  float* v = tls_buffer(1, 36 * TB * Cp);
  float* m = tls_buffer(2, 36 * TB * Kc + 16 * Kc);
  float* obuf = m + 36 * TB * Kc;  // NCHW: one output tile, [16][Kc]

  // Input transform: V[xi][t][c].
  int64_t band_row = -1;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t row = t / g.TW, tw = t % g.TW;  // row = n * TH + th
    if (row != band_row) {
      fill_band(x, g, row / g.TH, row % g.TH, band);
      band_row = row;
    }
    const float* d0 = band + tw * 4 * Cp;
    float* vt = v + (t - t0) * Cp;
    for (int64_t c = 0; c < Cp; c += L) {
      V d[36], tmp[36];
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j) d[i * 6 + j] = Vt::load(d0 + (i * g.Wb + j) * Cp + c);
      for (int j = 0; j < 6; ++j) bt6(d + j, 6, tmp + j * 6);  // tmp[j][xi1] = (B^T d)[xi1][j]
      for (int i = 0; i < 6; ++i) {
        V o[6];
        bt6(tmp + i, 6, o);  // over j: row xi1 = i
        for (int j = 0; j < 6; ++j) Vt::store(vt + (i * 6 + j) * TB * Cp + c, o[j]);
      }
    }
  }

  // 36 products.
  for (int xi = 0; xi < 36; ++xi)
    gemm_packed<float>(nt, k0, k1, Cp, v + xi * TB * Cp, Cp, Up + xi * Cp * Kp, Kp, m + xi * TB * Kc, Kc);

  // Output transform.
  const int64_t kend = std::min(k1, g.K);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t row = t / g.TW, tw = t % g.TW, n = row / g.TH, th = row % g.TH;
    const int64_t h0 = th * 4, w0 = tw * 4;
    const int64_t hn = std::min<int64_t>(4, g.Ho - h0), wn = std::min<int64_t>(4, g.Wo - w0);
    const float* mt = m + (t - t0) * Kc;
    for (int64_t k = k0; k < kend; k += L) {
      V mm[36], tmp[24];
      for (int xi = 0; xi < 36; ++xi) mm[xi] = Vt::load(mt + xi * TB * Kc + (k - k0));
      for (int j = 0; j < 6; ++j) at6(mm + j, 6, tmp + j * 4);  // tmp[j][i] = (A^T m)[i][j]
      const int64_t kl = std::min<int64_t>(L, g.K - k);
      V b = V{};
      if (bias) {
        alignas(64) float bb[L] = {};
        std::memcpy(bb, bias + k, kl * sizeof(float));
        b = Vt::load(bb);
      }
      for (int i = 0; i < 4; ++i) {
        V o[4];
        at6(tmp + i, 4, o);
        for (int j = 0; j < 4; ++j) {
          o[j] += b;
          if (!g.nhwc) {
            Vt::store(obuf + (i * 4 + j) * Kc + (k - k0), o[j]);
          } else if (i < hn && j < wn) {
            float* dst = y + ((n * g.Ho + h0 + i) * g.Wo + w0 + j) * g.K + k;
            if (kl == L)
              Vt::store(dst, o[j]);
            else
              std::memcpy(dst, &o[j], kl * sizeof(float));
          }
        }
      }
    }
    if (!g.nhwc) {
      const int64_t P = g.Ho * g.Wo;
      float* yt = y + n * g.K * P + h0 * g.Wo + w0;
      for (int64_t k = k0; k < kend; ++k) {
        const float* src = obuf + (k - k0);
        float* dst = yt + k * P;
        for (int64_t i = 0; i < hn; ++i)
          for (int64_t j = 0; j < wn; ++j) dst[i * g.Wo + j] = src[(i * 4 + j) * Kc];
      }
    }
  }
}

template <int VB, typename G>
WINO_INLINE void weights_range(int64_t b, int64_t e, int64_t C, int64_t K, int64_t Kp, int64_t KC, int64_t NR,
                               int64_t Cp, const G& gk, float* Up) {
  for (int64_t j = b; j < e; ++j) transform_weights_panel<VB>(j * NR, C, K, Kp, KC, NR, Cp, gk, Up);
}

struct WeightArgs {
  const float* w;
  int64_t sk, sc;
  bool flip;
  WINO_INLINE float operator()(int64_t k, int64_t c, int r, int s) const {
    return flip ? w[c * sk + k * sc + (2 - r) * 3 + (2 - s)] : w[k * sk + c * sc + r * 3 + s];
  }
};

#define WINO_TARGETS(X)                                                            \
  X(avx512, __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))), 64)     \
  X(avx2, __attribute__((target("avx2,fma"))), 32)                                 \
  X(base, , 16)

#define WINO_DEFINE(name, attr, vb)                                                                               \
  attr void weights_##name(int64_t b, int64_t e, int64_t C, int64_t K, int64_t Kp, int64_t KC, int64_t NR,      \
                           int64_t Cp, const WeightArgs& gk, float* Up) {                                        \
    weights_range<vb>(b, e, C, K, Kp, KC, NR, Cp, gk, Up);                                                       \
  }                                                                                                              \
  attr void task_##name(const float* x, const float* Up, const float* bias, float* y, const Geometry& g,          \
                        int64_t t0, int64_t t1, int64_t k0, int64_t k1, int64_t TB) {                            \
    task_body<vb>(x, Up, bias, y, g, t0, t1, k0, k1, TB);                                                        \
  }
WINO_TARGETS(WINO_DEFINE)
#undef WINO_DEFINE

}  // namespace

bool enabled() { return g_enabled.load(std::memory_order_relaxed); }
void set_enabled(bool on) { g_enabled.store(on, std::memory_order_relaxed); }

// The transformed weights are 4 times the weights and are written and read
// once a call, so a convolution needs enough output tiles to repay them:
// measured here (2-core Xeon), 16 tiles of 256 -> 256 channels ran at 0.55 -
// 0.8x the direct path, 32 tiles and more at 1.1x - 3x.
bool applicable(int64_t N, int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                int64_t dil_h, int64_t dil_w, int64_t groups, int64_t Ho, int64_t Wo) {
  const int64_t tiles = N * ceil_div(Ho, 4) * ceil_div(Wo, 4);
  return R == 3 && S == 3 && stride_h == 1 && stride_w == 1 && dil_h == 1 && dil_w == 1 && groups == 1 &&
         C >= 16 && K >= 16 && Ho >= 4 && Wo >= 4 && tiles >= 24;
}

void conv3x3(const float* x, const float* w, int64_t sk, int64_t sc, bool flip, const float* bias, float* y,
             int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo, int64_t pad_t,
             int64_t pad_l, bool nhwc) {
  Geometry g;
  g.N = N, g.C = C, g.H = H, g.W = W, g.K = K, g.Ho = Ho, g.Wo = Wo, g.pad_t = pad_t, g.pad_l = pad_l;
  g.nhwc = nhwc;
  g.Cp = round_up(C, kCAlign);
  g.Kp = packed_b_cols<float>(K);
  g.TH = ceil_div(Ho, 4), g.TW = ceil_div(Wo, 4), g.Wb = 4 * g.TW + 2;
  const int64_t NR = gemm_nr<float>(), KC = gemm_kc<float>();
  const Isa isa = cpu_isa();

  // Weights: 36 packed [Cp, Kp] panels.
  float* Up = weight_buffer(36 * g.Cp * g.Kp);
  const WeightArgs gk{w, sk, sc, flip};
  at::parallel_for(0, g.Kp / NR, 1, [&](int64_t b, int64_t e) {  // one packed panel of columns a step
    switch (isa) {
      case Isa::Avx512: return weights_avx512(b, e, C, K, g.Kp, KC, NR, g.Cp, gk, Up);
      case Isa::Avx2: return weights_avx2(b, e, C, K, g.Kp, KC, NR, g.Cp, gk, Up);
      default: return weights_base(b, e, C, K, g.Kp, KC, NR, g.Cp, gk, Up);
    }
  });

  // Blocks of TB tiles (V and M of a block about 1 MiB together: L2), and
  // chunks of K so that there are at least 2 tasks a thread.
  const int64_t T = N * g.TH * g.TW;
  const int64_t nt = at::get_num_threads();
  int64_t Kc = g.Kp;
  int64_t TB = std::clamp<int64_t>((int64_t(1) << 20) / (36 * 4 * (g.Cp + std::min<int64_t>(Kc, 256))) / 12 * 12,
                                   12, 96);
  if (const char* e = std::getenv("CONVX_WINOGRAD_TB")) TB = std::max<int64_t>(1, std::atoll(e));
  TB = std::min(TB, T);
  const int64_t blocks = ceil_div(T, TB);
  const int64_t panels = g.Kp / NR;
  const int64_t chunks = std::clamp<int64_t>(ceil_div(2 * nt, blocks), 1, panels);
  Kc = ceil_div(panels, chunks) * NR;
  const int64_t nk = ceil_div(g.Kp, Kc);
  at::parallel_for(0, blocks * nk, 1, [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      const int64_t blk = task / nk, kb = task % nk;
      const int64_t t0 = blk * TB, t1 = std::min(T, t0 + TB);
      const int64_t k0 = kb * Kc, k1 = std::min(g.Kp, k0 + Kc);
      switch (isa) {
        case Isa::Avx512: task_avx512(x, Up, bias, y, g, t0, t1, k0, k1, TB); break;
        case Isa::Avx2: task_avx2(x, Up, bias, y, g, t0, t1, k0, k1, TB); break;
        default: task_base(x, Up, bias, y, g, t0, t1, k0, k1, TB); break;
      }
    }
  });
}

}  // namespace convx::cpu::winograd
