// Winograd F(m, r) along one axis, for 1 x r and r x 1 convolutions (Inception's
// 1x7 / 7x1 and 1x3 / 3x1 factorised layers) on the CPU, float32, channels_last.
//
//   y = A^T [ (G g) (.) (B^T d) ]    per input segment d of a = m + r - 1 pixels, m outputs
//
// A tile of m outputs costs a multiplies a (c, k) pair instead of m r: the
// convolution becomes a independent GEMMs M_xi [tiles, K] = V_xi [tiles, C] U_xi [C, K].
// The matrices are Cook-Toom's from a - 1 finite points and infinity:
//   A^T = V_m^T,  G = V_r,  B^T = V_a^{-T}
// where V_n [a x n] is the Vandermonde matrix of the points (the point at
// infinity's row: (0, ..., 0, 1)), since the product sum_l d_l (h * g)_l of a
// sequence d with a polynomial product h * g is sum_i h_i y_i. B^T's rows are
// scaled to largest magnitude 1 and G's by the inverse (computed in double at
// first use, stored as float).
//
// Which F(m, r): the fewest products along a line, a * ceil(Lo / m), among
// r = 7: F(2, 7) (points 0, +-1, +-2, +-1/2) and F(4, 7) (and -3/2, 3/4);
// r = 3: F(2, 3) (0, +-1), F(4, 3) (0, +-1, +-2) and F(6, 3) (as F(2, 7)). Their
// error against float64 (tests/test_winograd.py), in 2^-24 times the largest
// sum |w||x| within r - 1 positions: F(4, 7) about 20-32 on random data with
// channels of mixed scales, F(2, 7) 9, F(6, 3) 17, F(4, 3) 10, F(2, 3) 3 (the
// 2-D F(4x4, 3x3): 39; a direct product: about 12 at the element).
//
// How it runs: the weights are transformed once a call into GEMM column panels
// u [K / NR][a][Cp][NR] (a / r times the weights: 1.4x for F(4, 7)), shared by
// the threads. A task is a block of up to 96 tiles and a share of the output
// channels: it transforms its tiles' inputs (vectorised along the channels)
// into V [a][tiles][Cp], packs each V_xi into the GEMM's row panels, then per
// panel of NR output channels runs the a products into M [a][tiles][NR] (L2)
// and transforms them into the output, adding the bias. Each output element is
// made by one task in a fixed order: bitwise reproducible whatever the threads.
// Every task body is compiled for AVX-512, AVX2 + FMA and the baseline and
// picked by cpu_isa(), as the GEMM's micro-kernels are. NCHW tensors come here
// through channels_last copies (conv2d.cpp).
#include "winograd.h"

#include "gemm.h"
#include "vec.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>

namespace convx::cpu::winograd {
namespace {

constexpr int kMaxA = 10, kMaxM = 7, kMaxR = 7;  // (the weight gradient's F(r, m): up to 7 outputs)


// Per-thread float buffers: Winograd's slots (gemm.h), free while this path runs.
float* line_buffer(int slot, int64_t n) { return thread_buffer<float>(kWinogradFirst + slot, n); }

struct Transforms {
  int m = 0, r = 0, a = 0;
  float AT[kMaxM][kMaxA] = {}, G[kMaxA][kMaxR] = {}, BT[kMaxA][kMaxA] = {};
};

// The finite points of F(m, r) by a = m + r - 1 (with infinity, a points).
const double* points_for(int a) {
  static const double p4[] = {0, 1, -1};
  static const double p6[] = {0, 1, -1, 2, -2};
  static const double p8[] = {0, 1, -1, 2, -2, 0.5, -0.5};
  static const double p10[] = {0, 1, -1, 2, -2, 0.5, -0.5, -1.5, 0.75};
  switch (a) {
    case 4: return p4;
    case 6: return p6;
    case 8: return p8;
    case 10: return p10;
    default: return nullptr;
  }
}

Transforms make_transforms(int m, int r) {
  Transforms t;
  t.m = m, t.r = r, t.a = m + r - 1;
  const int a = t.a;
  const double* pts = points_for(a);
  TORCH_CHECK(pts && m <= kMaxM && r <= kMaxR, "convx: winograd line: no points for F(", m, ", ", r, ")");
  auto vander = [&](int j, int i, int n) {  // V_n[j][i]
    if (j == a - 1) return i == n - 1 ? 1.0 : 0.0;
    return std::pow(pts[j], i);
  };
  // V_a^{-1} by Gauss-Jordan elimination with partial pivoting.
  double v[kMaxA][2 * kMaxA] = {};
  for (int j = 0; j < a; ++j) {
    for (int i = 0; i < a; ++i) v[j][i] = vander(j, i, a);
    v[j][a + j] = 1;
  }
  for (int col = 0; col < a; ++col) {
    int piv = col;
    for (int j = col + 1; j < a; ++j)
      if (std::fabs(v[j][col]) > std::fabs(v[piv][col])) piv = j;
    std::swap(v[col], v[piv]);
    const double d = v[col][col];
    for (int i = 0; i < 2 * a; ++i) v[col][i] /= d;
    for (int j = 0; j < a; ++j) {
      if (j == col || v[j][col] == 0) continue;
      const double f = v[j][col];
      for (int i = 0; i < 2 * a; ++i) v[j][i] -= f * v[col][i];
    }
  }
  // B^T[j][l] = (V_a^{-1})[l][j]; row j scaled by 1 / s_j, G's row j by s_j.
  for (int j = 0; j < a; ++j) {
    double s = 0;
    for (int l = 0; l < a; ++l) s = std::max(s, std::fabs(v[l][a + j]));
    for (int l = 0; l < a; ++l) t.BT[j][l] = float(v[l][a + j] / s);
    for (int k = 0; k < r; ++k) t.G[j][k] = float(vander(j, k, r) * s);
    for (int i = 0; i < m; ++i) t.AT[i][j] = float(vander(j, i, m));
  }
  return t;
}

const Transforms& transforms(int m, int r) {
  static Transforms cache[kMaxM + 1][kMaxR + 1];
  static std::once_flag once[kMaxM + 1][kMaxR + 1];
  std::call_once(once[m][r], [&] { cache[m][r] = make_transforms(m, r); });
  return cache[m][r];
}

// The tile length for r taps and lo outputs along the line: the fewest products, a * ceil(lo / m).
int pick_m(int r, int64_t lo) {
  static const int m7[] = {2, 4}, m3[] = {2, 4, 6};
  const int* ms = r == 7 ? m7 : m3;
  const int n = r == 7 ? 2 : 3;
  int best = ms[0];
  for (int i = 1; i < n; ++i)
    if ((ms[i] + r - 1) * ceil_div(lo, ms[i]) < (best + r - 1) * ceil_div(lo, best)) best = ms[i];
  return best;
}

struct LineGeometry {
  int64_t N, C, H, W, K, Ho, Wo, pad;  // NHWC; pad: the leading padding along the line
  bool along_w;                        // 1 x r (taps along W) or r x 1
  int64_t Lin, Lout, TL, T;            // along the line: input and output length, tiles a line; all tiles
  int64_t Cp, Kp, KC;
  int MR, NR;
};

#define LINE_INLINE __attribute__((always_inline)) inline
// The vector helpers (vec.h, and below) are always inlined into the per-ISA task
// functions; no vector crosses a call boundary, so GCC's ABI notes do not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

// Tile t's input pixel of point j (nullptr: padding) and output pixel i (nullptr: past the end).
LINE_INLINE const float* tile_input(const float* x, const LineGeometry& g, int m, int64_t t, int j) {
  const int64_t line = t / g.TL, tl = t % g.TL, pos = tl * m - g.pad + j;
  if (pos < 0 || pos >= g.Lin) return nullptr;
  if (g.along_w) return x + (line * g.W + pos) * g.C;  // line = n * H + h
  const int64_t n = line / g.Wo, w = line % g.Wo;      // t = ((n * Wo + w) * TL + tl)
  return x + ((n * g.H + pos) * g.W + w) * g.C;
}
LINE_INLINE float* tile_output(float* y, const LineGeometry& g, int m, int64_t t, int i) {
  const int64_t line = t / g.TL, tl = t % g.TL, pos = tl * m + i;
  if (pos >= g.Lout) return nullptr;
  if (g.along_w) return y + (line * g.Wo + pos) * g.K;
  const int64_t n = line / g.Wo, w = line % g.Wo;
  return y + ((n * g.Ho + pos) * g.Wo + w) * g.K;
}

// ---------------------------------------------------------------- weight gradient
//
// dW[k][c][j] = sum over tiles of the correlation of the tile's a inputs x with its m values of dY:
// F(r, m) (the same a points), dW = A'^T [ (G' dY) (.) (B'^T x) ] summed over the tiles, so per
// point M_xi [C, K] = sum_t V_xi[t][c] dU_xi[t][k] (V = B'^T x, dU = G' dY), then
// dW[., ., j] = sum_xi A'^T[j][xi] M_xi: a products of C x K x tiles instead of r of C x K x
// pixels (F(4, 7): 10 x 5 tiles against 7 x 17 pixels a line of 17).

// V[xi][t][c] = sum_j B'^T[xi][j] x_j[c] and dU[xi][t][k] = sum_i G'[xi][i] dy_i[k] for tiles [t0, t1).
template <int VB, int A, int MO>
LINE_INLINE void wgrad_transforms(const float* x, const float* dy, const LineGeometry& g, const Transforms& tf,
                                  int64_t t0, int64_t t1, float* v, int64_t vs, float* du, int64_t us) {
  using Vt = Vec<VB>;
  using V = typename Vt::V;
  constexpr int L = Vt::L;
  float bt[A][A], gt[A][MO];
  for (int i = 0; i < A; ++i)
    for (int j = 0; j < A; ++j) bt[i][j] = tf.BT[i][j];
  for (int i = 0; i < A; ++i)
    for (int j = 0; j < MO; ++j) gt[i][j] = tf.G[i][j];
  for (int64_t t = t0; t < t1; ++t) {
    const float* d[A];
    for (int j = 0; j < A; ++j) d[j] = tile_input(x, g, MO, t, j);
    float* vt = v + t * g.Cp;
    for (int64_t c = 0; c < g.Cp; c += L) {
      V dv[A];
      const int64_t cl = std::min<int64_t>(L, g.C - c);
      for (int j = 0; j < A; ++j)
        dv[j] = !d[j] || cl <= 0 ? V{} : cl == L ? Vt::load(d[j] + c) : Vt::load_part(d[j] + c, cl);
      for (int xi = 0; xi < A; ++xi) {
        V sum = dv[0] * bt[xi][0];
        for (int j = 1; j < A; ++j) sum += dv[j] * bt[xi][j];
        Vt::store(vt + xi * vs + c, sum);
      }
    }
    const float* e[MO];
    for (int i = 0; i < MO; ++i) e[i] = tile_output(const_cast<float*>(dy), g, MO, t, i);
    float* ut = du + t * g.Kp;
    for (int64_t k = 0; k < g.Kp; k += L) {
      V ev[MO];
      const int64_t kl = std::min<int64_t>(L, g.K - k);
      for (int i = 0; i < MO; ++i)
        ev[i] = !e[i] || kl <= 0 ? V{} : kl == L ? Vt::load(e[i] + k) : Vt::load_part(e[i] + k, kl);
      for (int xi = 0; xi < A; ++xi) {
        V sum = ev[0] * gt[xi][0];
        for (int i = 1; i < MO; ++i) sum += ev[i] * gt[xi][i];
        Vt::store(ut + xi * us + k, sum);
      }
    }
  }
}

// dw[k][j][c] (channels_last's [K][taps][C]) = sum_xi A'^T[j][xi] M_xi[c][k] for c in [c0, c1).
template <int VB, int A, int RO>
LINE_INLINE void wgrad_output(const float* m, int64_t ms, const LineGeometry& g, const Transforms& tf, int64_t c0,
                              int64_t c1, float* dw) {
  using Vt = Vec<VB>;
  using V = typename Vt::V;
  constexpr int L = Vt::L;
  float at[RO][A];
  for (int j = 0; j < RO; ++j)
    for (int xi = 0; xi < A; ++xi) at[j][xi] = tf.AT[j][xi];
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t k = 0; k < g.K; k += L) {
      V mv[A];
      for (int xi = 0; xi < A; ++xi) mv[xi] = Vt::load(m + xi * ms + c * g.Kp + k);
      const int64_t kl = std::min<int64_t>(L, g.K - k);
      for (int j = 0; j < RO; ++j) {
        V sum = mv[0] * at[j][0];
        for (int xi = 1; xi < A; ++xi) sum += mv[xi] * at[j][xi];
        alignas(64) float o[L];
        Vt::store(o, sum);
        for (int64_t q = 0; q < kl; ++q) dw[((k + q) * RO + j) * g.C + c] = o[q];
      }
    }
}

template <int VB>
LINE_INLINE void wgrad_transforms_any(const float* x, const float* dy, const LineGeometry& g, const Transforms& tf,
                                      int64_t t0, int64_t t1, float* v, int64_t vs, float* du, int64_t us) {
  switch (tf.m * 16 + tf.r) {  // F(r, m): tf.m = r taps out, tf.r = m values of dY a tile (7 taps only)
    case 7 * 16 + 2: return wgrad_transforms<VB, 8, 2>(x, dy, g, tf, t0, t1, v, vs, du, us);
    case 7 * 16 + 4: return wgrad_transforms<VB, 10, 4>(x, dy, g, tf, t0, t1, v, vs, du, us);
    default: TORCH_CHECK(false, "convx: winograd line: F(", tf.m, ", ", tf.r, ") is not built");
  }
}
template <int VB>
LINE_INLINE void wgrad_output_any(const float* m, int64_t ms, const LineGeometry& g, const Transforms& tf,
                                  int64_t c0, int64_t c1, float* dw) {
  switch (tf.m * 16 + tf.a) {
    case 7 * 16 + 8: return wgrad_output<VB, 8, 7>(m, ms, g, tf, c0, c1, dw);
    case 7 * 16 + 10: return wgrad_output<VB, 10, 7>(m, ms, g, tf, c0, c1, dw);
    default: TORCH_CHECK(false, "convx: winograd line: F(", tf.m, ", ", tf.r, ") is not built");
  }
}

// u[jp][xi][c][NR] = sum_j G[xi][j] g(k = jp NR + kk, c, j) for the panels [p0, p1) (zero past C, K).
template <int VB>
LINE_INLINE void weight_panels(const float* w, int64_t sk, int64_t sc, int64_t ts, bool flip,
                               const LineGeometry& g, const Transforms& tf, float* u, int64_t p0, int64_t p1) {
  using Vt = Vec<VB>;
  using V = typename Vt::V;
  constexpr int L = Vt::L;
  const int64_t NR = g.NR, Cp = g.Cp;
  const int r = tf.r, a = tf.a;
  float* wl = line_buffer(4, r * Cp * NR);  // [j][c][NR]
  for (int64_t jp = p0; jp < p1; ++jp) {
    std::fill(wl, wl + r * Cp * NR, 0.0f);
    for (int64_t kk = 0; kk < NR && jp * NR + kk < g.K; ++kk) {
      const int64_t k = jp * NR + kk;
      for (int64_t c = 0; c < g.C; ++c)
        for (int j = 0; j < r; ++j)
          wl[(j * Cp + c) * NR + kk] = flip ? w[c * sk + k * sc + (r - 1 - j) * ts] : w[k * sk + c * sc + j * ts];
    }
    float* up = u + jp * a * Cp * NR;
    for (int64_t c = 0; c < Cp; ++c)
      for (int64_t kk = 0; kk < NR; kk += L) {
        V wv[kMaxR];
        for (int j = 0; j < r; ++j) wv[j] = Vt::load(wl + (j * Cp + c) * NR + kk);
        for (int xi = 0; xi < a; ++xi) {
          V s = wv[0] * tf.G[xi][0];
          for (int j = 1; j < r; ++j) s += wv[j] * tf.G[xi][j];
          Vt::store(up + (xi * Cp + c) * NR + kk, s);
        }
      }
  }
}

// One task: tiles [t0, t1), output channel panels [p0, p1). M, R: F(M, R).
template <int VB, int M, int R>
LINE_INLINE void line_task(const float* x, const float* u, const float* bias, float* y, const LineGeometry& g,
                           const Transforms& tf, int64_t TB, int64_t t0, int64_t t1, int64_t p0, int64_t p1) {
  using Vt = Vec<VB>;
  using V = typename Vt::V;
  constexpr int L = Vt::L, A = M + R - 1;
  const int64_t Cp = g.Cp, C = g.C, NR = g.NR, MR = g.MR, nt = t1 - t0;
  const int64_t ntp = round_up(nt, MR);
  // the points' slices 64 bytes more than their size apart (a multiple of 4 KiB would put them on one L1 set)
  const int64_t vs = TB * Cp + 16, ps = round_up(TB, MR) * Cp + 16, ms = round_up(TB, MR) * NR + 16;
  float* v = line_buffer(0, A * vs);
  float* vp = line_buffer(1, A * ps);
  float* mm = line_buffer(2, A * ms);
  float bt[A][A], at[M][A];
  for (int i = 0; i < A; ++i)
    for (int j = 0; j < A; ++j) bt[i][j] = tf.BT[i][j];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < A; ++j) at[i][j] = tf.AT[i][j];

  // Input transform: V[xi][t][c] = sum_j B^T[xi][j] d_j[c].
  for (int64_t t = t0; t < t1; ++t) {
    const float* d[A];
    for (int j = 0; j < A; ++j) d[j] = tile_input(x, g, M, t, j);
    float* vt = v + (t - t0) * Cp;
    for (int64_t c = 0; c < Cp; c += L) {
      V dv[A];
      const int64_t cl = std::min<int64_t>(L, C - c);
      for (int j = 0; j < A; ++j)
        dv[j] = !d[j] || cl <= 0 ? V{} : cl == L ? Vt::load(d[j] + c) : Vt::load_part(d[j] + c, cl);
      for (int xi = 0; xi < A; ++xi) {
        V s = dv[0] * bt[xi][0];
        for (int j = 1; j < A; ++j) s += dv[j] * bt[xi][j];
        Vt::store(vt + xi * vs + c, s);
      }
    }
  }
  for (int xi = 0; xi < A; ++xi) pack_a_panels<float>(nt, Cp, v + xi * vs, Cp, vp + xi * ps);
  const MicroTile mtile = micro_tile<float>();

  for (int64_t jp = p0; jp < p1; ++jp) {
    const float* up = u + jp * A * Cp * NR;
    for (int xi = 0; xi < A; ++xi)
      for (int64_t pc = 0; pc < Cp; pc += g.KC) {
        const int64_t kc = std::min(g.KC, Cp - pc);
        for (int64_t ir = 0; ir < nt; ir += MR)  // (a last partial panel by the exact-height tile, in place)
          if (nt - ir < MR)
            micro_tile_product_a_rows<float>(mtile, kc, v + xi * vs + ir * Cp + pc, Cp, up + (xi * Cp + pc) * NR,
                                             mm + xi * ms + ir * NR, NR, nt - ir, pc > 0);
          else
            micro_tile_product<float>(mtile, kc, vp + xi * ps + pc * ntp + ir * kc, up + (xi * Cp + pc) * NR,
                                      mm + xi * ms + ir * NR, NR, MR, pc > 0);
      }
    // Output transform of this panel: y[i] = bias + sum_xi A^T[i][xi] M_xi.
    const int64_t kb = jp * NR, ke = std::min(g.K, kb + NR);
    for (int64_t t = t0; t < t1; ++t) {
      float* o[M];
      for (int i = 0; i < M; ++i) o[i] = tile_output(y, g, M, t, i);
      const float* mt = mm + (t - t0) * NR;
      for (int64_t k = kb; k < ke; k += L) {
        V mv[A];
        for (int xi = 0; xi < A; ++xi) mv[xi] = Vt::load(mt + xi * ms + (k - kb));
        const int64_t kl = std::min<int64_t>(L, ke - k);
        const V b = !bias ? V{} : kl == L ? Vt::load(bias + k) : Vt::load_part(bias + k, kl);
        for (int i = 0; i < M; ++i) {
          if (!o[i]) continue;
          V s = b;
          for (int xi = 0; xi < A; ++xi) s += mv[xi] * at[i][xi];
          if (kl == L)
            Vt::store(o[i] + k, s);
          else
            std::memcpy(o[i] + k, &s, kl * sizeof(float));
        }
      }
    }
  }
}

template <int VB>
LINE_INLINE void line_task_any(const float* x, const float* u, const float* bias, float* y, const LineGeometry& g,
                               const Transforms& tf, int64_t TB, int64_t t0, int64_t t1, int64_t p0, int64_t p1) {
  switch (tf.r * 16 + tf.m) {
    case 7 * 16 + 2: return line_task<VB, 2, 7>(x, u, bias, y, g, tf, TB, t0, t1, p0, p1);
    case 7 * 16 + 4: return line_task<VB, 4, 7>(x, u, bias, y, g, tf, TB, t0, t1, p0, p1);
    case 3 * 16 + 2: return line_task<VB, 2, 3>(x, u, bias, y, g, tf, TB, t0, t1, p0, p1);
    case 3 * 16 + 4: return line_task<VB, 4, 3>(x, u, bias, y, g, tf, TB, t0, t1, p0, p1);
    case 3 * 16 + 6: return line_task<VB, 6, 3>(x, u, bias, y, g, tf, TB, t0, t1, p0, p1);
    default: TORCH_CHECK(false, "convx: winograd line: F(", tf.m, ", ", tf.r, ") is not built");
  }
}

#define LINE_TARGETS(X)                                                        \
  X(avx512, __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))), 64) \
  X(avx2, __attribute__((target("avx2,fma"))), 32)                             \
  X(base, , 16)

#define LINE_DEFINE(name, attr, vb)                                                                            \
  attr void weights_##name(const float* w, int64_t sk, int64_t sc, int64_t ts, bool flip, const LineGeometry& g, \
                           const Transforms& tf, float* u, int64_t p0, int64_t p1) {                          \
    weight_panels<vb>(w, sk, sc, ts, flip, g, tf, u, p0, p1);                                                  \
  }                                                                                                            \
  attr void task_##name(const float* x, const float* u, const float* bias, float* y, const LineGeometry& g,    \
                        const Transforms& tf, int64_t TB, int64_t t0, int64_t t1, int64_t p0, int64_t p1) {    \
    line_task_any<vb>(x, u, bias, y, g, tf, TB, t0, t1, p0, p1);                                              \
  }
LINE_TARGETS(LINE_DEFINE)
#undef LINE_DEFINE

#define LINE_DEFINE_WGRAD(name, attr, vb)                                                                          \
  attr void wgrad_transforms_##name(const float* x, const float* dy, const LineGeometry& g, const Transforms& tf, \
                                    int64_t t0, int64_t t1, float* v, int64_t vs, float* du, int64_t us) {         \
    wgrad_transforms_any<vb>(x, dy, g, tf, t0, t1, v, vs, du, us);                                                  \
  }                                                                                                                \
  attr void wgrad_output_##name(const float* m, int64_t ms, const LineGeometry& g, const Transforms& tf,          \
                                int64_t c0, int64_t c1, float* dw) {                                               \
    wgrad_output_any<vb>(m, ms, g, tf, c0, c1, dw);                                                                 \
  }
LINE_TARGETS(LINE_DEFINE_WGRAD)
#undef LINE_DEFINE_WGRAD

LineGeometry line_geometry(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo, int m,
                           bool along_w, int64_t pad, const MicroTile& mt) {
  LineGeometry g{};
  g.N = N, g.C = C, g.H = H, g.W = W, g.K = K, g.Ho = Ho, g.Wo = Wo, g.pad = pad, g.along_w = along_w;
  TORCH_CHECK(along_w ? H == Ho : W == Wo, "convx: winograd line: the other axis must keep its size");
  g.Lin = along_w ? W : H, g.Lout = along_w ? Wo : Ho;
  g.TL = ceil_div(g.Lout, m);
  g.T = N * (along_w ? Ho : Wo) * g.TL;
  g.Cp = round_up(C, kCAlign), g.MR = mt.MR, g.NR = mt.NR, g.KC = mt.KC;
  g.Kp = round_up(K, g.NR);
  return g;
}

}  // namespace

// One pass of the weight transform (a x C x K multiply-adds of r each) and a
// block of tiles' transforms repay themselves from a few dozen tiles on.
bool line_applicable(int64_t N, int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                     int64_t dil_h, int64_t dil_w, int64_t groups, int64_t pad_unit, int64_t Ho, int64_t Wo) {
  if (!((R == 1 && (S == 3 || S == 7)) || (S == 1 && (R == 3 || R == 7)))) return false;
  const int64_t r = std::max(R, S), lo = R == 1 ? Wo : Ho, other = R == 1 ? Ho : Wo;
  const int m = pick_m(int(r), lo);
  // (the transformed weights, shared: a x Cp x Kp floats, at most 64 MiB)
  const bool fits = (m + r - 1) * round_up(C, kCAlign) * round_up(K, 32) <= (int64_t(16) << 20);
  return stride_h == 1 && stride_w == 1 && dil_h == 1 && dil_w == 1 && groups == 1 && pad_unit == 0 && C >= 16 &&
         K >= 16 && fits && N * other * ceil_div(lo, m) >= 48;
}

void conv_line(const float* x, const float* w, int64_t sk, int64_t sc, int64_t ts, bool flip, const float* bias,
               float* y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo, int64_t r,
               bool along_w, int64_t pad) {
  const MicroTile mt = micro_tile<float>();
  const Transforms& tf = transforms(pick_m(int(r), along_w ? Wo : Ho), int(r));
  const LineGeometry g = line_geometry(N, C, H, W, K, Ho, Wo, tf.m, along_w, pad, mt);
  const Isa isa = cpu_isa();
  const int64_t panels = g.Kp / g.NR;

  // The weights, once: u [panels][a][Cp][NR] in this thread's buffer (read by all).
  float* u = line_buffer(5, panels * tf.a * g.Cp * g.NR);
  at::parallel_for(0, panels, 1, [&](int64_t b, int64_t e) {
    switch (isa) {
      case Isa::Avx512: return weights_avx512(w, sk, sc, ts, flip, g, tf, u, b, e);
      case Isa::Avx2: return weights_avx2(w, sk, sc, ts, flip, g, tf, u, b, e);
      default: return weights_base(w, sk, sc, ts, flip, g, tf, u, b, e);
    }
  });

  // Blocks of TB tiles: the multiple of the row tile up to 96 that spreads most evenly over the
  // threads, small enough for 2 blocks a thread where there are 2 row tiles a block (each task
  // transforms its block's inputs: 4 tasks of one block of 85 tiles, batch 1, made them 4 times,
  // 0.95x torch); then shares of the panels so that each thread has 2 tasks or more.
  const int64_t T = g.T, nth = at::get_num_threads();
  const int64_t top = std::clamp<int64_t>(round_up(ceil_div(T, 2 * nth), g.MR), 2 * g.MR, 96);
  int64_t TB = std::min<int64_t>(T, top);
  if (T > top) {
    int64_t best = -1;
    for (int64_t tb = top; tb >= 2 * g.MR; tb -= g.MR) {
      const int64_t load = ceil_div(ceil_div(T, tb), nth) * tb;
      if (best < 0 || load * 100 < best * 97) best = load, TB = tb;
    }
  }
  const int64_t blocks = ceil_div(T, TB);
  const int64_t chunks = std::clamp<int64_t>(ceil_div(2 * nth, blocks), 1, panels);
  const int64_t pchunk = ceil_div(panels, chunks), nk = ceil_div(panels, pchunk);
  at::parallel_for(0, blocks * nk, 1, [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      const int64_t blk = task / nk, kb = task % nk;
      const int64_t t0 = blk * TB, t1 = std::min(T, t0 + TB);
      const int64_t p0 = kb * pchunk, p1 = std::min(panels, p0 + pchunk);
      switch (isa) {
        case Isa::Avx512: task_avx512(x, u, bias, y, g, tf, TB, t0, t1, p0, p1); break;
        case Isa::Avx2: task_avx2(x, u, bias, y, g, tf, TB, t0, t1, p0, p1); break;
        default: task_base(x, u, bias, y, g, tf, TB, t0, t1, p0, p1); break;
      }
    }
  });
}

// The weight gradient's transforms of every tile at once: a x T x (Cp + Kp) floats, up to 64 MiB;
// 7 taps only. Batch 8, 2 threads, in-process A/B against the GEMM path: 1x7 128 @17 1.08 ->
// 0.79 ms, 192 @17 2.34 -> 1.47, 7x1 128 -> 192 1.63 -> 1.30; but 3 taps (F(3, 4): 6 products
// for 12, and both operands transformed) 384 @8 0.98 -> 1.14, 64 @56 1.65 -> 2.24.
bool line_weight_grad_applicable(int64_t N, int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h,
                                 int64_t stride_w, int64_t dil_h, int64_t dil_w, int64_t groups, int64_t pad_unit,
                                 int64_t Ho, int64_t Wo) {
  if (!line_applicable(N, C, K, R, S, stride_h, stride_w, dil_h, dil_w, groups, pad_unit, Ho, Wo)) return false;
  const int64_t r = std::max(R, S), lo = R == 1 ? Wo : Ho, other = R == 1 ? Ho : Wo;
  const int m = pick_m(int(r), lo);
  const int64_t T = N * other * ceil_div(lo, m);
  return r == 7 && (m + r - 1) * T * (round_up(C, kCAlign) + round_up(K, 32)) <= (int64_t(16) << 20);
}

void weight_grad_line(const float* x, const float* dy, float* dw, int64_t N, int64_t C, int64_t H, int64_t W,
                      int64_t K, int64_t Ho, int64_t Wo, int64_t r, bool along_w, int64_t pad) {
  const MicroTile mt = micro_tile_for_rows<float>(C);
  const int m = pick_m(int(r), along_w ? Wo : Ho);
  const Transforms& tf = transforms(int(r), m);  // F(r, m): r taps from m values of dY
  const LineGeometry g = line_geometry(N, C, H, W, K, Ho, Wo, m, along_w, pad, mt);
  const Isa isa = cpu_isa();
  const int a = tf.a;
  const int64_t T = g.T, MR = g.MR, NR = g.NR, Cp = g.Cp, Kp = g.Kp;
  // (slices 64 bytes more than their size apart: see line_task)
  const int64_t vs = T * Cp + 16, us = T * Kp + 16, ms = Cp * Kp + 16;
  auto buf = at::empty({a * (vs + us + ms)}, at::kFloat);
  float* v = buf.data_ptr<float>();
  float* du = v + a * vs;
  float* mm = du + a * us;
  at::parallel_for(0, T, 8, [&](int64_t b, int64_t e) {
    switch (isa) {
      case Isa::Avx512: return wgrad_transforms_avx512(x, dy, g, tf, b, e, v, vs, du, us);
      case Isa::Avx2: return wgrad_transforms_avx2(x, dy, g, tf, b, e, v, vs, du, us);
      default: return wgrad_transforms_base(x, dy, g, tf, b, e, v, vs, du, us);
    }
  });
  // M_xi [Cp, Kp] = V_xi^T dU_xi, a point a task: chunks of KC tiles, dU's chunk (L2) read by
  // every row panel of c, each panel of V^T copied into the tile's [kc][MR] order first.
  at::parallel_for(0, a, 1, [&](int64_t b, int64_t e) {
    float* ap = line_buffer(0, g.KC * MR);
    for (int64_t xi = b; xi < e; ++xi)
      for (int64_t pc = 0; pc < T; pc += g.KC) {
        const int64_t kc = std::min(g.KC, T - pc);
        for (int64_t c0 = 0; c0 < Cp; c0 += MR) {
          const int64_t mr = std::min(MR, Cp - c0);
          const float* src = v + xi * vs + pc * Cp + c0;
          for (int64_t t = 0; t < kc; ++t) {
            float* d = ap + t * MR;
            for (int64_t i = 0; i < mr; ++i) d[i] = src[t * Cp + i];
            for (int64_t i = mr; i < MR; ++i) d[i] = 0.f;
          }
          for (int64_t j = 0; j < Kp; j += NR)
            micro_tile_product_b_rows<float>(mt, kc, ap, du + xi * us + pc * Kp + j, Kp, mm + xi * ms + c0 * Kp + j,
                                             Kp, mr, pc > 0);
        }
      }
  });
  at::parallel_for(0, C, 4, [&](int64_t b, int64_t e) {
    switch (isa) {
      case Isa::Avx512: return wgrad_output_avx512(mm, ms, g, tf, b, e, dw);
      case Isa::Avx2: return wgrad_output_avx2(mm, ms, g, tf, b, e, dw);
      default: return wgrad_output_base(mm, ms, g, tf, b, e, dw);
    }
  });
}

}  // namespace convx::cpu::winograd
