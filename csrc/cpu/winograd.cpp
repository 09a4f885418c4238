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
// How it runs (float32; the register tile is the GEMM's, gemm.cpp):
//  * the output tiles (n, th, tw) are cut into blocks of up to 96; a task is a
//    (block, share of the output channels) pair, so small layers still give
//    every thread work;
//  * a task copies each 6-row band of input it needs into a zero-padded NHWC
//    buffer (from NHWC: row copies; from NCHW: a transposing copy), transforms
//    its tiles vectorised along channels into V [36][tiles][C]; the products
//    read each V_xi's rows where they are, a last partial panel by the
//    exact-height tile (up to 16 output channels: AVX-512's 16-column tile);
//  * for each panel of NR output channels and chunk of KC input channels it
//    transforms that piece of the weights (read in place, OIHW or channels_last;
//    vectorised along k, two rows of the 6 x 6 points at a time, 12 x KC x NR
//    floats: L2-sized, so the transformed weights, 4x the weights, never go
//    to memory) and runs the micro-kernel over the block's row panels for
//    each of those points, into M [36][tiles][Kc];
//  * once a panel's products are done it transforms its slice of M into the
//    output, adding the bias (NCHW output through a 16 x Kc tile transposed on
//    store);
//  * every task body is compiled for AVX-512, AVX2 + FMA and the baseline and
//    picked by cpu_isa(), as the GEMM's micro-kernels are.
// Nothing depends on the thread count: each output element is computed by one
// task in a fixed order, so results are bitwise reproducible.
//
// The weight gradient (weight_grad3x3, below) runs the same transforms the
// other way round: 36 products M_xi [C, K] reducing over the tiles, in
// chunks of tiles whose transforms are made just before (L2-sized when M is
// small, each of 4 fixed streams of chunks with its own M, summed in order at
// the end; shared by the threads otherwise), then dW = G^T M G; with C x K
// over 256 x 256 (late layers, few tiles), every tile's transforms at once, then
// blocks of about 64 x 64 (c, k) whose M is made and turned into dW in L2. Its error
// against float64 (tests/test_winograd.py): at most 14 * 2^-24 times the
// largest sum |x||dy| of the filter's 9 taps on the test shapes (the direct
// product: under 1).
//
// Error: the transforms add and scale by up to 8 and 1/24, so the result's
// rounding error is larger than a direct convolution's: measured against
// float64 (tests/test_winograd.py) it stays within a small multiple of the
// direct error bound (C * 2^-24 * sum |w||x|); float64 never takes this path,
// and convx.backends.cpu.winograd = False turns it off.
#include "winograd.h"

#include "gemm.h"
#include "isa_each.h"
#include "layout.h"
#include "vec.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <xmmintrin.h>

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
std::atomic<int> g_phases{-1};  // phases(): -1 the machine's choice, 0 off, 1 on



// Per-thread float buffers (gemm.h's thread_buffer, Winograd's own slots 0-5).
float* tls_buffer(int slot, int64_t n) { return thread_buffer<float>(kWinogradFirst + slot, n); }

#define WINO_INLINE __attribute__((always_inline)) inline
// The vector helpers (vec.h, and below) are always inlined into the per-ISA task
// functions; no vector crosses a call boundary, so GCC's ABI notes do not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

// ---------------------------------------------------------------- weights

// U_xi = (G g G^T)[xi] for the output channels [j0, j0 + NR) (one GEMM column
// panel), the input channels [pc, pc + kc) (one reduction chunk) and the points
// of rows [i0, i0 + ni) of the 6 x 6 (xi = 6 i + j), vectorised along k, into
// u[xi - 6 i0][c - pc][k - j0] (slices XS floats apart): the B operand of the
// tile products. The filter comes as wt [Cp][9][Kp] (zero-padded; see gather_panel).
// A row at a time: row i of t = G g is G's row i applied to g's three rows
// (3 x 3 loads, kept in L1 for the next row), then row i of u = t_i G^T, 6
// stores. The stores are the cost: a call of all 36 points wrote 36 streams
// a multiple of 4 KiB apart (one L1 set) into a piece larger than Zen 4's L2
// (36 x 256 x 32 floats), 40 % of a 512-channel layer's time at 7 x 7.
template <int VB>
WINO_INLINE void transform_weights_piece(int64_t j0, int64_t pc, int64_t kc, int64_t NR, int64_t Kp,
                                         const float* wt, float* u, int64_t XS, int i0, int ni) {
  using Vt = Vec<VB>;
  using V = typename Vt::V;
  constexpr int L = Vt::L;
  // G's rows: (1/4, 0, 0), (-1/6)(1, 1, 1), (-1/6)(1, -1, 1), (1/24, 1/12, 1/6), (1/24, -1/12, 1/6), (0, 0, 1).
  auto grow = [](int i, V a, V b, V c2) __attribute__((always_inline)) {
    switch (i) {
      case 0: return a * 0.25f;
      case 1: return (a + c2 + b) * (-1.f / 6);
      case 2: return (a + c2 - b) * (-1.f / 6);
      case 3: return a * (1.f / 24) + c2 * (1.f / 6) + b * (1.f / 12);
      case 4: return a * (1.f / 24) + c2 * (1.f / 6) - b * (1.f / 12);
      default: return c2;
    }
  };
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
  for (int64_t c = pc; c < pc + kc; ++c) {
    const float* src = wt + c * 9 * Kp;
    for (int64_t k0 = j0; k0 < j0 + NR; k0 += L) {
      float* dst = u + (c - pc) * NR + (k0 - j0);
      V g9[9];
      for (int rs = 0; rs < 9; ++rs) g9[rs] = Vt::load(src + rs * Kp + k0);
      for (int i = i0; i < i0 + ni; ++i) {
        V row[6];
        gt(grow(i, g9[0], g9[3], g9[6]), grow(i, g9[1], g9[4], g9[7]), grow(i, g9[2], g9[5], g9[8]), row);
        for (int j = 0; j < 6; ++j) Vt::store(dst + ((i - i0) * 6 + j) * XS, row[j]);
      }
    }
  }
}

// The filter taps-major for one panel of output channels [k0, k0 + NR):
// dst [Cp][9][NR], dst[c][r*3+s][k - k0] = g(k, c, r, s), zero for c >= C or
// k >= K, so the transforms read whole vectors along k. g is w itself, or
// for the data gradient w transposed and rotated (see winograd.h). Each task
// gathers the panels it uses into an L2-sized buffer: the weights are read
// from memory once a call and nothing weight-sized is written.
struct WeightArgs {
  const float* w;
  int64_t sk, sc;
  bool flip;
  int64_t ts;  // the taps' stride: 1 (OIHW), or the channels' count (KRSC, sc == 1)
};

// dst[j][i] = src[i * rs + j] for i < ni (rows of dst past ni: 0 .. NR), j < nj; dst rows ldd apart.
// 16 columns at a time, all rows of them (4 x 4 transpositions): dst's 16 rows are written whole
// before the next, and each source line read once. (Four rows at a time, all columns, swept dst,
// 9C rows of NR floats, NR / 4 times 16 bytes a row: a 512-channel layer's panel is 590 KB, and
// the gathers took 9 % of its time at 7 x 7.)
inline void transpose_rows(const float* src, int64_t rs, int64_t ni, int64_t nj, float* dst, int64_t NR,
                           int64_t ldd) {
  const int64_t ni4 = ni / 4 * 4, nj4 = nj / 4 * 4;
  for (int64_t jb = 0; jb < nj4; jb += 16) {
    const int64_t je = std::min(jb + 16, nj4);
    for (int64_t i = 0; i < ni4; i += 4) {
      const float *r0 = src + i * rs, *r1 = r0 + rs, *r2 = r1 + rs, *r3 = r2 + rs;
      for (const float* r : {r0, r1, r2, r3}) _mm_prefetch(reinterpret_cast<const char*>(r + jb + 64), _MM_HINT_T0);
      for (int64_t j = jb; j < je; j += 4) {
        __m128 x0 = _mm_loadu_ps(r0 + j), x1 = _mm_loadu_ps(r1 + j), x2 = _mm_loadu_ps(r2 + j), x3 = _mm_loadu_ps(r3 + j);
        _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
        _mm_storeu_ps(dst + (j + 0) * ldd + i, x0);
        _mm_storeu_ps(dst + (j + 1) * ldd + i, x1);
        _mm_storeu_ps(dst + (j + 2) * ldd + i, x2);
        _mm_storeu_ps(dst + (j + 3) * ldd + i, x3);
      }
    }
  }
  for (int64_t i = 0; i < ni4; ++i)
    for (int64_t j = nj4; j < nj; ++j) dst[j * ldd + i] = src[i * rs + j];
  for (int64_t i = ni4; i < ni; ++i)
    for (int64_t j = 0; j < nj; ++j) dst[j * ldd + i] = src[i * rs + j];
  for (int64_t j = 0; j < nj; ++j) std::fill(dst + j * ldd + ni, dst + j * ldd + NR, 0.f);
}

void gather_panel(const WeightArgs& wa, int64_t k0, int64_t C, int64_t K, int64_t Cp, int64_t NR, float* dst) {
  const int64_t nk = std::clamp<int64_t>(K - k0, 0, NR);
  if (nk == 0) {
    std::fill(dst, dst + 9 * Cp * NR, 0.f);
    return;
  }
  if (wa.ts == 1 && !wa.flip) {
    // rows k of w are [C][9] contiguous: one transposition of nk x 9C
    transpose_rows(wa.w + k0 * wa.sk, wa.sk, nk, 9 * C, dst, NR, NR);
  } else if (wa.ts == 1) {
    // g(k, c, r, s) = w[c][k][2-r][2-s]: per c a transposition of nk x 9, then the taps reversed
    for (int64_t c = 0; c < C; ++c) {
      float* d = dst + c * 9 * NR;
      transpose_rows(wa.w + c * wa.sk + k0 * wa.sc, wa.sc, nk, 9, d, NR, NR);
      for (int rs = 0; rs < 4; ++rs) std::swap_ranges(d + rs * NR, d + (rs + 1) * NR, d + (8 - rs) * NR);
    }
  } else if (!wa.flip) {
    // KRSC, rows k of w are [9][C]: per tap a transposition of nk x C into rows 9 apart
    for (int rs = 0; rs < 9; ++rs) transpose_rows(wa.w + k0 * wa.sk + rs * wa.ts, wa.sk, nk, C, dst + rs * NR, NR, 9 * NR);
  } else {
    // KRSC flipped, g(k, c, r, s) = w[c][2-r][2-s][k]: runs of nk along k
    for (int64_t c = 0; c < C; ++c)
      for (int rs = 0; rs < 9; ++rs) {
        float* d = dst + (c * 9 + rs) * NR;
        std::memcpy(d, wa.w + c * wa.sk + (8 - rs) * wa.ts + k0, nk * sizeof(float));
        std::fill(d + nk, d + NR, 0.f);
      }
  }
  std::fill(dst + 9 * C * NR, dst + 9 * Cp * NR, 0.f);
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
  int64_t MR, NR, KC;          // the GEMM's register tile and reduction chunk
  MicroTile mt;                // (the tile itself, for the products)
  bool nhwc;
  bool stream = false;  // conv3x3's NHWC result by streaming stores (isa_each.h's stream_stores)
  int64_t ldx = 0, ldy = 0;  // NHWC: x's and y's pixels' strides (C and K, or a group's among more)
  int64_t phase_channels = 0;  // conv3x3's: channel k of phase k / (K / 4) of y, 2 Ho x 2 Wo (winograd.h)
};

Geometry geometry(const MicroTile& mt, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho,
                  int64_t Wo, int64_t pad_t, int64_t pad_l, bool nhwc) {
  Geometry g;
  g.N = N, g.C = C, g.H = H, g.W = W, g.K = K, g.Ho = Ho, g.Wo = Wo, g.pad_t = pad_t, g.pad_l = pad_l;
  g.nhwc = nhwc;
  g.MR = mt.MR, g.NR = mt.NR, g.KC = mt.KC, g.mt = mt;
  g.Cp = round_up(C, kCAlign);
  g.Kp = round_up(K, g.NR);
  g.TH = ceil_div(Ho, 4), g.TW = ceil_div(Wo, 4), g.Wb = 4 * g.TW + 2;
  g.ldx = C, g.ldy = K;
  return g;
}

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
      const float* xr = x + ((n * g.H + h) * g.W + (u0 - g.pad_l)) * g.ldx;
      if (Cp == C && g.ldx == C) {
        std::memcpy(row + u0 * Cp, xr, (u1 - u0) * C * sizeof(float));
      } else {
        for (int64_t u = u0; u < u1; ++u) {
          std::memcpy(row + u * Cp, xr + (u - u0) * g.ldx, C * sizeof(float));
          std::memset(row + u * Cp + C, 0, (Cp - C) * sizeof(float));
        }
      }
    } else {
      // [C][W] -> [W][Cp] by layout.h's 8 x 8 transposes; band column u reads x column u - pad_l.
      // (A scalar copy was a sixth of an NCHW layer's time: 64 @56, batch 8.)
      const int64_t HW = g.H * g.W;
      const float* xr = x + (n * C * g.H + h) * g.W + (u0 - g.pad_l);  // xr[c * HW + (u - u0)]
      transpose_strided(xr, HW, row + u0 * Cp, Cp, C, u1 - u0);
      if (Cp > C)
        for (int64_t u = u0; u < u1; ++u) std::memset(row + u * Cp + C, 0, (Cp - C) * sizeof(float));
    }
  }
}

// One 6x6 tile of a band (d0: its first column, band width Wb, Cp channels)
// -> V = B^T d B, vectorised along channels, point xi at vt[xi * vs].
template <int VB>
WINO_INLINE void input_tile_transform(const float* d0, int64_t Wb, int64_t Cp, float* vt, int64_t vs) {
  using Vt = Vec<VB>;
  using V = typename Vt::V;
  for (int64_t c = 0; c < Cp; c += Vt::L) {
    V d[36], tmp[36];
    for (int i = 0; i < 6; ++i)
      for (int j = 0; j < 6; ++j) d[i * 6 + j] = Vt::load(d0 + (i * Wb + j) * Cp + c);
    for (int j = 0; j < 6; ++j) bt6(d + j, 6, tmp + j * 6);  // tmp[j][xi1] = (B^T d)[xi1][j]
    for (int i = 0; i < 6; ++i) {
      V o[6];
      bt6(tmp + i, 6, o);  // over j: row xi1 = i
      for (int j = 0; j < 6; ++j) Vt::store(vt + (i * 6 + j) * vs + c, o[j]);
    }
  }
}

// One task: tiles [t0, t1) of the flattened (n, th, tw) order, output channels [k0, k1).
template <int VB>
WINO_INLINE void task_body(const float* x, const WeightArgs& wa, const float* bias, float* y, const Geometry& g,
                           int64_t t0, int64_t t1, int64_t k0, int64_t k1, int64_t TB) {
  using Vt = Vec<VB>;
  using V = typename Vt::V;
  constexpr int L = Vt::L;
  const int64_t Cp = g.Cp, Kc = k1 - k0, nt = t1 - t0, MR = g.MR, NR = g.NR;
  float* band = tls_buffer(0, 6 * g.Wb * Cp);
  // The 36 points' slices are 64 bytes more than their size apart: at sizes of
  // a multiple of 4 KiB they would all map to one L1 set (and 4K-alias).
  const int64_t vs = TB * Cp + 16, ms = TB * Kc + 16;
  float* v = tls_buffer(1, 36 * vs);
  float* m = tls_buffer(2, 36 * ms + 32 * Kc);
  float* obuf = m + 36 * ms;      // NCHW: one output tile, [16][Kc]
  float* obuf_t = obuf + 16 * Kc;  // and transposed, [Kc][16]

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
    input_tile_transform<VB>(d0, g.Wb, Cp, vt, vs);
  }

  // 36 products M_xi [nt, Kc] = V_xi [nt, Cp] U_xi [Cp, Kc], U transformed by
  // pieces of one column panel (NR output channels) and one reduction chunk
  // (KC input channels): u[xi][kc][NR].
  // (the points' slices 64 bytes more than their size apart, as V's)
  const int64_t nchunks = ceil_div(Cp, g.KC), XS = std::min(g.KC, Cp) * NR + 16, piece = 36 * XS;
  // The products read V_xi's rows where they are (vrows: V_xi + the chunk's first channel, Cp
  // apart; a last partial panel by the exact-height tile). The large-weights order below had kept
  // a packed copy of all 36 points beside V: 512 @7, batch 8, 2.9 -> 2.3-2.6 ms read in place, @14
  // and @28 within 2 %. The small-weights order packed each V_xi into the tile's row panels until
  // l1_sets_crowded stopped counting lines on every call: read in place, channels_last, batch 8,
  // 2 threads, process-alternating A/B, 64 @56 -11 % (NCHW -2 %), 48 @56 -4 %, 64 -> 80 @28 -4 %;
  // AVX2 64 @56 -6 % (NCHW -10 %), 16 @32 batch 128 -10 %.
  const MicroTile mtile = g.mt;
  auto product_rows = [&](const float* vrows, const float* up, int64_t kc, float* c, bool add)
                          __attribute__((always_inline)) {
    for (int64_t ir = 0; ir < nt; ir += MR)
      micro_tile_product_a_rows<float>(mtile, kc, vrows + ir * Cp, Cp, up, c + ir * Kc, Kc, std::min(MR, nt - ir), add);
  };
  // Output transform of channels [kb, ke) (of this task's [k0, k1)), run as soon as their
  // products are complete, while M's slices of them are in L2.
  auto out_transform = [&](int64_t kb, int64_t ke) __attribute__((always_inline)) {
    const int64_t kend = std::min(ke, g.K);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row = t / g.TW, tw = t % g.TW, n = row / g.TH, th = row % g.TH;
      const int64_t h0 = th * 4, w0 = tw * 4;
      const int64_t hn = std::min<int64_t>(4, g.Ho - h0), wn = std::min<int64_t>(4, g.Wo - w0);
      const float* mt = m + (t - t0) * Kc;
      for (int64_t k = kb; k < kend; k += L) {
        V tmp[24];
        // tmp[j][i] = (A^T m)[i][j], a column of m at a time (all 36 loaded first went through the
        // stack: 16 @32, batch 128, one thread, 5.75 -> 4.44 ms)
        for (int j = 0; j < 6; ++j) {
          V col[6];
          for (int i = 0; i < 6; ++i) col[i] = Vt::load(mt + (i * 6 + j) * ms + (k - k0));
          at6(col, 1, tmp + j * 4);
        }
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
              const int64_t pc = g.phase_channels, ph = pc ? k / pc : 0;
              float* dst = pc ? y + ((n * 2 * g.Ho + 2 * (h0 + i) + ph / 2) * 2 * g.Wo + 2 * (w0 + j) + ph % 2) * pc +
                                    (k - ph * pc)
                              : y + ((n * g.Ho + h0 + i) * g.Wo + w0 + j) * g.ldy + k;
              if (kl == L && g.stream)
                stream_bytes<VB>(dst, &o[j]);
              else if (kl == L)
                Vt::store(dst, o[j]);
              else
                std::memcpy(dst, &o[j], kl * sizeof(float));
            }
          }
        }
      }
      if (!g.nhwc && g.phase_channels) {  // channel k: (phase, c) of y [N][K / 4][2 Ho][2 Wo]
        const int64_t pc = g.phase_channels, W2 = 2 * g.Wo;
        for (int64_t k = kb; k < kend; ++k) {
          const int64_t ph = k / pc, c = k - ph * pc;
          const float* src = obuf + (k - k0);
          float* dst = y + ((n * pc + c) * 2 * g.Ho + 2 * h0 + ph / 2) * W2 + 2 * w0 + ph % 2;
          for (int64_t i = 0; i < hn; ++i)
            for (int64_t j = 0; j < wn; ++j) dst[2 * i * W2 + 2 * j] = src[(i * 4 + j) * Kc];
        }
      } else if (!g.nhwc) {
        // the tile's [16][Kc] -> [Kc][16] by layout.h's 8 x 8 transposes, then each channel's
        // 4 x 4 pixels a row at a time (a scalar scatter cost as much as the input's copy)
        const int64_t P = g.Ho * g.Wo;
        float* yt = y + n * g.K * P + h0 * g.Wo + w0;
        transpose_strided(obuf + (kb - k0), Kc, obuf_t, 16, 16, kend - kb);
        for (int64_t k = kb; k < kend; ++k) {
          const float* src = obuf_t + (k - kb) * 16;
          float* dst = yt + k * P;
          if (wn == 4)
            for (int64_t i = 0; i < hn; ++i) std::memcpy(dst + i * g.Wo, src + i * 4, 4 * sizeof(float));
          else
            for (int64_t i = 0; i < hn; ++i)
              for (int64_t j = 0; j < wn; ++j) dst[i * g.Wo + j] = src[i * 4 + j];
        }
      }
    }
  };
  const int64_t panel_w = Cp * 9 * NR;  // one gathered panel of weights
  if (int64_t(sizeof(float)) * piece * (Kc / NR) * nchunks <= (int64_t(1) << 20)) {
    // Small weights (e.g. 64 x 64 channels): every piece of this task's channels
    // first (at most 1 MiB, L2), then point by point V_xi multiplied by all of them.
    float* u = tls_buffer(4, piece * (Kc / NR) * nchunks);
    float* wl = tls_buffer(5, panel_w);
    for (int64_t jr = k0; jr < k1; jr += NR) {
      gather_panel(wa, jr, g.C, g.K, Cp, NR, wl);
      for (int64_t pc = 0; pc < Cp; pc += g.KC)
        transform_weights_piece<VB>(0, pc, std::min(g.KC, Cp - pc), NR, NR, wl,
                                    u + ((jr - k0) / NR * nchunks + pc / g.KC) * piece, XS, 0, 6);
    }
    for (int xi = 0; xi < 36; ++xi)
      for (int64_t jr = k0; jr < k1; jr += NR)
        for (int64_t pc = 0; pc < Cp; pc += g.KC)
          product_rows(v + xi * vs + pc, u + ((jr - k0) / NR * nchunks + pc / g.KC) * piece + xi * XS,
                       std::min(g.KC, Cp - pc), m + xi * ms + (jr - k0), pc > 0);
    out_transform(k0, k1);
  } else {
    // Large weights: V's rows read in place (product_rows); one piece of U at a
    // time, kRows rows of the 6 x 6 points (kRows x 6 x KC x NR floats, L2-sized,
    // so the transformed weights, 4x the weights, never go to memory), each U_xi
    // piece reused from L1 by every row panel of the block.
    constexpr int kRows = 2;
    float* u = tls_buffer(4, kRows * 6 * XS);
    float* wl = tls_buffer(5, panel_w);

    for (int64_t jr = k0; jr < k1; jr += NR) {
      gather_panel(wa, jr, g.C, g.K, Cp, NR, wl);
      for (int64_t pc = 0; pc < Cp; pc += g.KC) {
        const int64_t kc = std::min(g.KC, Cp - pc);
        for (int i0 = 0; i0 < 6; i0 += kRows) {
          transform_weights_piece<VB>(0, pc, kc, NR, NR, wl, u, XS, i0, kRows);
          for (int xi = 6 * i0; xi < 6 * (i0 + kRows); ++xi)
            product_rows(v + xi * vs + pc, u + (xi - 6 * i0) * XS, kc, m + xi * ms + (jr - k0), pc > 0);
        }
      }
      out_transform(jr, jr + NR);
    }
  }
}

// ---------------------------------------------------------------- weight gradient
//
// dL/dg = G^T [ sum over tiles (A dY A^T) (.) (B^T d B) ] G   (the forward's
// transforms, transposed): per transform point xi, M_xi [C, K] = sum_t
// V_xi[t, c] dU_xi[t, k] (the product runs as M_xi^T = V_xi^T dU_xi: rows c in
// the micro-kernel's row panels, packed from V; columns k read from dU in
// place), then dW[k, c] = G^T M[., c, k] G. A 4x4 output tile costs 36
// multiplies a (c, k) pair instead of 144.

// A's rows (A = (A^T)^T, 6 x 4): (1,0,0,0), (1,1,1,1), (1,-1,1,-1), (1,2,4,8), (1,-2,4,-8), (0,0,0,1).
template <typename V>
WINO_INLINE void a6(const V* d, int64_t step, V* o) {
  const V d0 = d[0], d1 = d[step], d2 = d[2 * step], d3 = d[3 * step];
  const V e = d0 + d2, f = d1 + d3, e4 = d0 + d2 * 4.f, f8 = d1 * 2.f + d3 * 8.f;
  o[0] = d0;
  o[1] = e + f;
  o[2] = e - f;
  o[3] = e4 + f8;
  o[4] = e4 - f8;
  o[5] = d3;
}

// G^T's rows (3 x 6): (1/4, -1/6, -1/6, 1/24, 1/24, 0), (0, -1/6, 1/6, 1/12, -1/12, 0), (0, -1/6, -1/6, 1/6, 1/6, 1).
template <typename V>
WINO_INLINE void gt6(const V* m, int64_t step, V* o) {
  const V m0 = m[0], m1 = m[step], m2 = m[2 * step], m3 = m[3 * step], m4 = m[4 * step], m5 = m[5 * step];
  const V s12 = (m1 + m2) * (-1.f / 6), s34 = m3 + m4;
  o[0] = m0 * 0.25f + s12 + s34 * (1.f / 24);
  o[1] = (m2 - m1) * (1.f / 6) + (m3 - m4) * (1.f / 12);
  o[2] = s12 + s34 * (1.f / 6) + m5;
}

// The 4-row band of dY that tile row (n, th) covers, zero past Ho / Wo: band [4][4 TW][Kp].
WINO_INLINE void fill_dy_band(const float* dy, const Geometry& g, int64_t n, int64_t th, float* band) {
  const int64_t K = g.K, Kp = g.Kp, Wb = 4 * g.TW;
  for (int i = 0; i < 4; ++i) {
    float* row = band + i * Wb * Kp;
    const int64_t h = th * 4 + i;
    if (h >= g.Ho) {
      std::memset(row, 0, Wb * Kp * sizeof(float));
      continue;
    }
    std::memset(row + g.Wo * Kp, 0, (Wb - g.Wo) * Kp * sizeof(float));
    if (g.nhwc) {
      const float* src = dy + ((n * g.Ho + h) * g.Wo) * g.ldy;
      for (int64_t u = 0; u < g.Wo; ++u) {
        std::memcpy(row + u * Kp, src + u * g.ldy, K * sizeof(float));
        std::memset(row + u * Kp + K, 0, (Kp - K) * sizeof(float));
      }
    } else {  // [K][Wo] -> [Wo][Kp] (layout.h's transposes, as fill_band's)
      const int64_t P = g.Ho * g.Wo;
      const float* src = dy + n * K * P + h * g.Wo;  // src[k * P + u]
      transpose_strided(src, P, row, Kp, K, g.Wo);
      if (Kp > K)
        for (int64_t u = 0; u < g.Wo; ++u) std::memset(row + u * Kp + K, 0, (Kp - K) * sizeof(float));
    }
  }
}

// Tiles [t0, t1) of the chunk starting at tc: V [36][TB][Cp] (stride vs a point)
// and dU [36][TB][Kp] (stride us).
template <int VB>
WINO_INLINE void wgrad_transforms(const float* x, const float* dy, const Geometry& g, int64_t tc, int64_t t0,
                                  int64_t t1, float* v, int64_t vs, float* du, int64_t us) {
  using Vt = Vec<VB>;
  using V = typename Vt::V;
  constexpr int L = Vt::L;
  const int64_t Cp = g.Cp, Kp = g.Kp;
  float* band = tls_buffer(0, 6 * g.Wb * Cp);
  float* dband = tls_buffer(1, 4 * 4 * g.TW * Kp);
  int64_t band_row = -1;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t row = t / g.TW, tw = t % g.TW;
    if (row != band_row) {
      fill_band(x, g, row / g.TH, row % g.TH, band);
      fill_dy_band(dy, g, row / g.TH, row % g.TH, dband);
      band_row = row;
    }
    const float* d0 = band + tw * 4 * Cp;
    float* vt = v + (t - tc) * Cp;
    input_tile_transform<VB>(d0, g.Wb, Cp, vt, vs);
    const float* e0 = dband + tw * 4 * Kp;
    float* ut = du + (t - tc) * Kp;
    for (int64_t k = 0; k < Kp; k += L) {
      V d[16], tmp[24];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) d[i * 4 + j] = Vt::load(e0 + (i * 4 * g.TW + j) * Kp + k);
      for (int j = 0; j < 4; ++j) a6(d + j, 4, tmp + j * 6);  // tmp[j][xi1] = (A d)[xi1][j]
      for (int i = 0; i < 6; ++i) {
        V o[6];
        a6(tmp + i, 6, o);  // over j
        for (int j = 0; j < 6; ++j) Vt::store(ut + (i * 6 + j) * us + k, o[j]);
      }
    }
  }
}

// M [36][Cp][Kp]'s points' slices (Cp x Kp floats) 64 bytes more than that apart: at a
// multiple of 4 KiB the 36 loads of a (c, k) vector below all fell into one L1 set.
inline int64_t wgrad_ms(const Geometry& g) { return g.Cp * g.Kp + 16; }

// dW from M for the input channels [c0, c1) and output channels [k0, k1): dW[k][c][r][s]
// (kcrs) or dW[k][r][s][c] (krsc). m: M's element (c0, k0) of point 0, points ms apart, rows
// ldm apart; k0 a multiple of L. 16 channels at a time into a [16][9][L] block, then written
// in runs along dW's rows (c then the taps, or in KRSC the channels): written a float at a
// time in place, a (c, k) vector's 9 L floats went to 9 L lines, and the stores and the loads
// were each half of the function's time (256 @14: 10 % of the layer's forward + backward).
template <int VB>
WINO_INLINE void wgrad_output(const float* m, int64_t ms, int64_t ldm, const Geometry& g, int64_t c0, int64_t c1,
                              int64_t k0, int64_t k1, bool krsc, float* dw) {
  using Vt = Vec<VB>;
  using V = typename Vt::V;
  constexpr int L = Vt::L;
  constexpr int64_t CB = 16;
  alignas(64) float ob[CB][9][L];
  for (int64_t cb = c0; cb < c1; cb += CB) {
    const int64_t nc = std::min(CB, c1 - cb);
    for (int64_t k = k0; k < k1; k += L) {
      for (int64_t c = cb; c < cb + nc; ++c) {
        V mm[36], tmp[18];
        for (int xi = 0; xi < 36; ++xi) mm[xi] = Vt::load(m + xi * ms + (c - c0) * ldm + (k - k0));
        for (int j = 0; j < 6; ++j) gt6(mm + j, 6, tmp + j * 3);  // tmp[j][r] = (G^T m)[r][j]
        for (int r = 0; r < 3; ++r) {
          V o[3];
          gt6(tmp + r, 3, o);
          for (int s = 0; s < 3; ++s) Vt::store(ob[c - cb][r * 3 + s], o[s]);
        }
      }
      const int64_t kl = std::min<int64_t>(L, k1 - k);
      for (int64_t kk = 0; kk < kl; ++kk) {
        if (krsc) {
          for (int rs = 0; rs < 9; ++rs) {
            float* d = dw + ((k + kk) * 9 + rs) * g.C + cb;
            for (int64_t c = 0; c < nc; ++c) d[c] = ob[c][rs][kk];
          }
        } else {
          float* d = dw + ((k + kk) * g.C + cb) * 9;
          for (int64_t c = 0; c < nc; ++c)
            for (int rs = 0; rs < 9; ++rs) d[c * 9 + rs] = ob[c][rs][kk];
        }
      }
    }
  }
}

#define WINO_TARGETS(X)                                                            \
  X(avx512, __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))), 64)     \
  X(avx2, __attribute__((target("avx2,fma"))), 32)                                 \
  X(base, , 16)

#define WINO_DEFINE(name, attr, vb)                                                                      \
  attr void task_##name(const float* x, const WeightArgs& wa, const float* bias, float* y, const Geometry& g, \
                        int64_t t0, int64_t t1, int64_t k0, int64_t k1, int64_t TB) {                   \
    task_body<vb>(x, wa, bias, y, g, t0, t1, k0, k1, TB);                                               \
  }
WINO_TARGETS(WINO_DEFINE)
#undef WINO_DEFINE

#define WINO_DEFINE_WGRAD(name, attr, vb)                                                                      \
  attr void wgrad_transforms_##name(const float* x, const float* dy, const Geometry& g, int64_t tc, int64_t t0, \
                                    int64_t t1, float* v, int64_t vs, float* du, int64_t us) {                 \
    wgrad_transforms<vb>(x, dy, g, tc, t0, t1, v, vs, du, us);                                                 \
  }                                                                                                            \
  attr void wgrad_output_##name(const float* m, int64_t ms, int64_t ldm, const Geometry& g, int64_t c0,            \
                                int64_t c1, int64_t k0, int64_t k1, bool krsc, float* dw) {                     \
    wgrad_output<vb>(m, ms, ldm, g, c0, c1, k0, k1, krsc, dw);                                                 \
  }
WINO_TARGETS(WINO_DEFINE_WGRAD)
#undef WINO_DEFINE_WGRAD

}  // namespace

bool enabled() { return g_enabled.load(std::memory_order_relaxed); }
void set_enabled(bool on) { g_enabled.store(on, std::memory_order_relaxed); }
int phases() { return g_phases.load(std::memory_order_relaxed); }
void set_phases(int mode) { g_phases.store(mode < 0 ? -1 : mode > 0 ? 1 : 0, std::memory_order_relaxed); }

// The weights are transformed on every call (36 values for 9, by each task for
// its channels), so a convolution needs enough output tiles to repay that:
// measured (2-core Xeon, when the transformed weights still went through
// memory), 16 tiles of 256 -> 256 channels ran at 0.55 - 0.8x the direct path,
// 32 tiles and more at 1.1x - 3x; 24 was the threshold. With the transforms
// by L2-sized pieces, fewer tiles pay too, while C x K <= tiles x 128 x 1024 (the
// transform's share grows with the weights), with 32 input channels or more
// and 64 output channels (the tiniest layers are overhead). Zen 5, 2 threads,
// channels_last, in-process A/B against the GEMM path: 512 @7 batch 4 (16
// tiles) 3.58 -> 1.54 ms (torch 2.48), batch 2 1.70 -> 0.96, batch 1 1.14 ->
// 0.72; 1024 @7 batch 2 6.6 -> 6.1; 768 @7 batch 2 3.45 -> 2.34; 256 @14 batch 1
// 0.54 -> 0.39; 128 @14 batch 1 (NCHW) 0.25 -> 0.13; but 1024 @7 batch 1 (4 tiles)
// 3.0 -> 5.9, 2048 -> 512 @4 batch 2 3.8 -> 7.5, 1024 -> 16 @8 batch 1 0.20 -> 0.34.
// Under 64 output channels (one or two column panels: thin products) it takes 64 tiles:
// DenseNet's 128 -> 32 at batch 2, @14 (32 tiles) 0.071 -> 0.091 ms on Winograd, @7 0.029 ->
// 0.043, 128 -> 48 @14 0.101 -> 0.111; @28 (98 tiles) 0.25 -> 0.15, @56 0.98 -> 0.50.
bool applicable(int64_t N, int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                int64_t dil_h, int64_t dil_w, int64_t groups, int64_t Ho, int64_t Wo) {
  const int64_t tiles = N * ceil_div(Ho, 4) * ceil_div(Wo, 4);
  const bool many = tiles >= (K >= 64 ? 24 : 64);
  const bool few_pay = tiles >= 4 && C >= 32 && K >= 64 && C * K <= tiles * 128 * 1024;
  return R == 3 && S == 3 && stride_h == 1 && stride_w == 1 && dil_h == 1 && dil_w == 1 && groups == 1 &&
         C >= 16 && K >= 16 && Ho >= 4 && Wo >= 4 && (many || few_pay);
}

void conv3x3(const float* x, const float* w, int64_t sk, int64_t sc, int64_t ts, bool flip, const float* bias, float* y,
             int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo, int64_t pad_t,
             int64_t pad_l, bool nhwc, int64_t phase_channels, int64_t ldx, int64_t ldy) {
  TORCH_CHECK(phase_channels == 0 || (K == 4 * phase_channels && (!nhwc || phase_channels % kCAlign == 0)),
              "convx: winograd::conv3x3: phase_channels ", phase_channels, " for K = ", K);
  // Up to 16 output channels on AVX-512's 16-column tile, not its 32-column one half empty (16 ->
  // 16 @32, batch 128, channels_last, 2 threads, process-alternating A/B: -19 %, NCHW -16 %; 32 ->
  // 16 -33 %). Larger layers whose channels fill no whole 32 kept the wide tile: a 16-column
  // one measured 48 @56 -3-9 %, GoogLeNet's 96 -> 208 @14 -6-11 %, but 64 -> 80 @28 +7-11 %,
  // 832 -> 48 @7 +3 %.
  const MicroTile wide = micro_tile<float>();
  // Blocks of TB tiles (up to 96, a multiple of the row tile) and the row tile itself, 12 or
  // AVX-512's 8 rows, chosen together: the fewest tiles on the busiest thread, each block counted
  // kBlockRows rows more for the weights it transforms (so fewer, larger blocks on a near tie), the
  // 8-row tile only where that is fewer. GoogLeNet's 96 -> 208 @14 at batch 8 has 128 tiles: 72 +
  // 56 on 12-row tiles, 64 + 64 on 8-row ones (and 512 tiles blocks of 96 rather than 24). Batch 8
  // unless said, 2 threads, in-process A/B against blocks by tiles alone on the 12-row tile (Zen 4):
  // 96 -> 208 @14 -7 % channels_last, -11 % NCHW, forward + backward -5 %; 256 @14 -7 % (forward +
  // backward NCHW -6 %); 128 @32 batch 4 -12 %; 64 @32 -9 % (forward + backward -3 %); 64 @56,
  // 256 @14 batch 2, 16 @32 batch 128 even. (Which tile computes a row does not change its sums.)
  const int64_t T = N * ceil_div(Ho, 4) * ceil_div(Wo, 4);
  const int64_t nt = at::get_num_threads();
  constexpr int64_t kBlockRows = 8;
  auto plan = [&](int64_t MR) -> std::pair<int64_t, int64_t> {  // (the busiest thread's rows, TB)
    if (T <= 96) return {ceil_div(T, MR) * MR, T};
    int64_t best = -1, TB = 96 / MR * MR;
    for (int64_t tb = 96 / MR * MR; tb >= 2 * MR; tb -= MR) {
      const int64_t cost = ceil_div(ceil_div(T, tb), nt) * (tb + kBlockRows);
      if (best < 0 || cost < best) best = cost, TB = tb;
    }
    return {best, TB};
  };
  const MicroTile eight = micro_tile_for_rows<float>(8);
  const bool short_rows = T > 96 && eight.MR < wide.MR && plan(eight.MR).first < plan(wide.MR).first;
  const MicroTile mt = K <= 16 && 16 % wide.NR != 0 ? micro_tile_whole_cols(16) : short_rows ? eight : wide;
  Geometry g = geometry(mt, N, C, H, W, K, Ho, Wo, pad_t, pad_l, nhwc);
  g.phase_channels = phase_channels;
  TORCH_CHECK(nhwc || (ldx == 0 && ldy == 0), "convx: winograd::conv3x3: pixel strides for NCHW");
  if (ldx > 0) g.ldx = ldx;
  if (ldy > 0) g.ldy = ldy;
  // An NHWC result of 8 MiB or more by streaming stores (its lines not read from memory before
  // written): batch 8 unless said, 2 threads, process-alternating A/B: 16 @32 batch 128 -8 %, 64
  // @112 -7 %, 128 @28 batch 32 -16 %.
  g.stream = nhwc && phase_channels == 0 && g.ldy == K &&
             stream_stores(y, N * Ho * Wo * K * int64_t(sizeof(float)), K * int64_t(sizeof(float)));
  const Isa isa = cpu_isa();
  const WeightArgs wa{w, sk, sc, flip, ts};

  // Chunks of the output channels so that there are at least 2 tasks a thread. Each task
  // transforms the weights of its channels.
  const int64_t TB = plan(g.MR).second;
  const int64_t blocks = ceil_div(T, TB);
  const int64_t panels = g.Kp / g.NR;
  const int64_t chunks = std::clamp<int64_t>(ceil_div(2 * nt, blocks), 1, panels);
  const int64_t Kc = ceil_div(panels, chunks) * g.NR;
  const int64_t nk = ceil_div(g.Kp, Kc);
  at::parallel_for(0, blocks * nk, 1, [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      const int64_t blk = task / nk, kb = task % nk;
      const int64_t t0 = blk * TB, t1 = std::min(T, t0 + TB);
      const int64_t k0 = kb * Kc, k1 = std::min(g.Kp, k0 + Kc);
      switch (isa) {
        case Isa::Avx512: task_avx512(x, wa, bias, y, g, t0, t1, k0, k1, TB); break;
        case Isa::Avx2: task_avx2(x, wa, bias, y, g, t0, t1, k0, k1, TB); break;
        default: task_base(x, wa, bias, y, g, t0, t1, k0, k1, TB); break;
      }
    }
    if (g.stream) _mm_sfence();  // the streamed stores seen before another thread reads y
  });
}

// Whether a weight gradient's transforms of all its tiles at once, and V's packed copy, fit the
// block mode's budget (weight_grad3x3): 36 x tiles x (2 Cp + Kp) floats up to 64 MB (512
// channels @14, batch 8: 28 MB).
inline bool wgrad_by_blocks(int64_t tiles, int64_t Cp, int64_t Kp) {
  return 36 * tiles * (2 * Cp + Kp) * int64_t(sizeof(float)) <= (int64_t(64) << 20);
}

// The weight gradient wants many tiles: its 36 products reduce over the tiles,
// and M (36 x C x K floats) is written (large M: read and written once per
// chunk of tiles) and transformed at the end. Measured here (2-core Xeon,
// batch 8 unless noted, against the direct paths): 64 ch @56 8.5-11.5 ->
// 4.2-6.6 ms, 128 @28 8.4-8.9 -> 4.6, 256 @28 -> 1.7x torch's, 128 @14 2.8-3.2
// -> 1.8-1.9, 16 @112 5.7-7.6 -> 2.8-4.2; slower: 512 @14 (M 38 MB) 31-34 ->
// 37-45 ms, 512 @7 and 512 @14 at batch 2 (32 tiles) 2-3x, 8x8 images (2
// tiles a row, the bands' copies dominate) 16 and 32 channels 0.26-0.34 ->
// 0.36-0.44 ms. Past 256 x 256 channels, by blocks (weight_grad3x3) from 32 tiles
// (7x7 images too), one thread, batch 8, per-round ratios against torch: 512 @7
// 1.06-1.17 -> 1.67-1.80, 512 @14 0.80 -> 1.80. (The block mode at 256 x 256 and
// under: 1.50-2.00 against the streams' and shared M's 1.91-2.45.) At 256 x 256 and under,
// C x K of 128 x 128 or more pays from kWgradMinTilesLarge tiles (Zen 5, 2 threads, weight gradient
// alone, in-process A/B against the GEMM path: 128 @28 batch 2, 98 tiles, 1.01 -> 0.60 ms; 128 @14
// batch 2 0.25-0.28 -> 0.15-0.17; 256 @14 batch 4 2.08 -> 1.08, batch 2 1.00-1.32 -> 0.93-0.99;
// GoogLeNet's 96 -> 208 @14 batch 2 0.32 -> 0.20; but 64 x 64 @28 and @14 even or slower, and 16 tiles
// (256 @14 batch 1) 0.53 -> 0.77).
bool weight_grad_applicable(int64_t N, int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h,
                            int64_t stride_w, int64_t dil_h, int64_t dil_w, int64_t groups, int64_t Ho, int64_t Wo) {
  const int64_t tiles = N * ceil_div(Ho, 4) * ceil_div(Wo, 4);
  if (!(R == 3 && S == 3 && stride_h == 1 && stride_w == 1 && dil_h == 1 && dil_w == 1 && groups == 1 && C >= 16 &&
        K >= 16 && Ho >= 4 && Wo >= 4))
    return false;
  if (C * K <= 256 * 256)
    return ceil_div(Wo, 4) >= 3 && (tiles >= kWgradMinTiles || (tiles >= kWgradMinTilesLarge && C * K >= 128 * 128));
  return tiles >= kWgradMinBlockTiles && wgrad_by_blocks(tiles, round_up(C, kCAlign), round_up(K, kCAlign));
}

void weight_grad3x3(const float* x, const float* dy, float* dw, bool krsc, int64_t N, int64_t C, int64_t H, int64_t W,
                    int64_t K, int64_t Ho, int64_t Wo, int64_t pad_t, int64_t pad_l, bool nhwc, int64_t ldx,
                    int64_t ldy) {
  // Up to 16 output channels on AVX-512's 16 x 16 tile, as conv3x3's forward, not a 32-column one
  // half empty (16 @32, batch 128, 2 threads, process-alternating A/B: channels_last -29 %, NCHW
  // -32 %; 16 @112 and @56, batch 8, -33 %)
  const MicroTile rows_mt = micro_tile_for_rows<float>(C);
  const MicroTile mt = K <= 16 && 16 % rows_mt.NR != 0 ? micro_tile_whole_cols(16) : rows_mt;
  Geometry g = geometry(mt, N, C, H, W, K, Ho, Wo, pad_t, pad_l, nhwc);
  TORCH_CHECK(nhwc || (ldx == 0 && ldy == 0), "convx: winograd::weight_grad3x3: pixel strides for NCHW");
  if (ldx > 0) g.ldx = ldx;
  if (ldy > 0) g.ldy = ldy;
  const Isa isa = cpu_isa();
  const int64_t T = N * g.TH * g.TW, MR = g.MR, NR = g.NR, msize = 36 * wgrad_ms(g);
  const int64_t cpanels = ceil_div(g.Cp, MR), units = 36 * cpanels;
  auto output = [&](const float* m, int64_t ms, int64_t ldm, int64_t c0, int64_t c1, int64_t k0, int64_t k1) {
    switch (isa) {
      case Isa::Avx512: return wgrad_output_avx512(m, ms, ldm, g, c0, c1, k0, k1, krsc, dw);
      case Isa::Avx2: return wgrad_output_avx2(m, ms, ldm, g, c0, c1, k0, k1, krsc, dw);
      default: return wgrad_output_base(m, ms, ldm, g, c0, c1, k0, k1, krsc, dw);
    }
  };
  auto transforms = [&](int64_t tc, int64_t b, int64_t e, float* v, int64_t vs, float* du, int64_t us) {
    switch (isa) {
      case Isa::Avx512: return wgrad_transforms_avx512(x, dy, g, tc, b, e, v, vs, du, us);
      case Isa::Avx2: return wgrad_transforms_avx2(x, dy, g, tc, b, e, v, vs, du, us);
      default: return wgrad_transforms_base(x, dy, g, tc, b, e, v, vs, du, us);
    }
  };
  // M_xi^T [Cp, Kp] (+)= V_xi^T [Cp, kc] dU_xi [kc, Kp] for units [u0, u1): one unit a (point, row panel of c).
  auto products = [&](int64_t u0, int64_t u1, int64_t kc, const float* v, int64_t vs, const float* du, int64_t us,
                      float* m, bool add) {
    float* apb = tls_buffer(2, MR * g.KC);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t xi = u / cpanels, c0 = (u % cpanels) * MR, mr = std::min(MR, g.Cp - c0);
      const float* vx = v + xi * vs;
      // V_xi [kc][Cp] is the panel itself where Cp == MR (16 channels on the 16 x 16 tile: 16 @32,
      // batch 128, -15 %)
      const float* ap = vx;
      if (g.Cp != MR) {
        float* d = apb;
        for (int64_t t = 0; t < kc; ++t, d += MR) {  // (memcpy a row: 64 channels 4-6 % slower)
          const float* src = vx + t * g.Cp + c0;
          for (int64_t i = 0; i < mr; ++i) d[i] = src[i];
          for (int64_t i = mr; i < MR; ++i) d[i] = 0.f;
        }
        ap = apb;
      }
      float* mrow = m + xi * wgrad_ms(g) + c0 * g.Kp;
      for (int64_t j = 0; j < g.Kp; j += NR)
        micro_tile_product_b_rows<float>(mt, kc, ap, du + xi * us + j, g.Kp, mrow + j, g.Kp, mr, add);
    }
  };
  if (C * K > 256 * 256) {  // (weight_grad_applicable: then wgrad_by_blocks)
    // Large M, few tiles (a late layer: 512 channels @7 or @14): every tile's transforms at
    // once (36 x T x (Cp + Kp) floats), then blocks of about 64 x 64 (c, k), each one's M for
    // the 36 points made in the thread's L2 (36 x 64 x 64 floats, 590 KB) and transformed to
    // dW there: M (36 x C x K floats, 38 MB at 512 x 512) never goes to memory, and each block
    // reads V's and dU's slices of its channels (1 / 8 of them at 512 channels).
    // V then packed into the products' row panels once ([xi][c panel][t][MR]), not once a block
    const int64_t vs = T * g.Cp + 16, us = T * g.Kp + 16, pps = T * MR;
    auto tbuf = at::empty({36 * (vs + us) + 36 * cpanels * pps + NR}, at::kFloat);
    float* v = tbuf.data_ptr<float>();
    float* du = v + 36 * vs;
    float* vp = du + 36 * us;
    at::parallel_for(0, T, 8, [&](int64_t b, int64_t e) { transforms(0, b, e, v, vs, du, us); });
    at::parallel_for(0, units, 8, [&](int64_t b, int64_t e) {
      for (int64_t u = b; u < e; ++u) {
        const int64_t xi = u / cpanels, cp = u % cpanels * MR, mr = std::min(MR, g.Cp - cp);
        const float* src = v + xi * vs + cp;
        float* d = vp + u * pps;
        for (int64_t t = 0; t < T; ++t, d += MR) {
          for (int64_t i = 0; i < mr; ++i) d[i] = src[t * g.Cp + i];
          for (int64_t i = mr; i < MR; ++i) d[i] = 0.f;
        }
      }
    });
    const int64_t CB = std::max<int64_t>(1, 64 / MR) * MR, KB = std::max<int64_t>(1, 64 / NR) * NR;
    const int64_t nbc = ceil_div(g.Cp, CB), nbk = ceil_div(g.Kp, KB), bms = CB * KB + 16;
    at::parallel_for(0, nbc * nbk, 1, [&](int64_t b, int64_t e) {
      float* mb = tls_buffer(3, 36 * bms);
      for (int64_t blk = b; blk < e; ++blk) {
        const int64_t c0 = blk / nbk * CB, k0 = blk % nbk * KB;
        const int64_t c1 = std::min(g.Cp, c0 + CB), k1 = std::min(g.Kp, k0 + KB);
        for (int xi = 0; xi < 36; ++xi)
          for (int64_t cp = c0; cp < c1; cp += MR) {
            const int64_t mr = std::min(MR, g.Cp - cp);
            const float* ap = vp + (xi * cpanels + cp / MR) * pps;
            for (int64_t pc = 0; pc < T; pc += g.KC) {
              const int64_t kc = std::min(g.KC, T - pc);
              for (int64_t j = k0; j < k1; j += NR)
                micro_tile_product_b_rows<float>(mt, kc, ap + pc * MR, du + xi * us + pc * g.Kp + j, g.Kp,
                                                 mb + xi * bms + (cp - c0) * KB + (j - k0), KB, mr, pc > 0);
            }
          }
        output(mb, bms, KB, c0, std::min(c1, C), k0, std::min(k1, K));
      }
    });
    return;
  }
  at::Tensor mbuf;
  float* m;
  if (int64_t(sizeof(float)) * msize <= (int64_t(1) << 20)) {
    // Small M (e.g. 64 x 64 channels): kStreams fixed streams of chunks, each
    // run by one thread start to end with its own M (L2-resident, as is its
    // L2-sized chunk of transforms), the streams' M summed in order at the end.
    constexpr int64_t kStreams = 4;
    const int64_t TBmax = std::clamp<int64_t>((int64_t(1) << 18) / (36 * (g.Cp + g.Kp)) / 8 * 8, 16, g.KC);
    // chunks of up to TBmax tiles, as many as a multiple of the streams: 128 tiles were 56 + 56 +
    // 16, two chunks for one thread and one for the other (2 threads, in-process A/B, batch 8, 64
    // channels @14: 0.27 -> 0.17 ms, 32 @14 0.12 -> 0.07; @28 and @20 -10 %)
    const int64_t TB = std::min(TBmax, ceil_div(T, ceil_div(ceil_div(T, TBmax), kStreams) * kStreams));
    const int64_t vs = TB * g.Cp + 16, us = TB * g.Kp + 16, nch = ceil_div(T, TB);
    mbuf = at::empty({(kStreams + 1) * msize}, at::kFloat);
    m = mbuf.data_ptr<float>();
    float* parts = m + msize;
    at::parallel_for(0, kStreams, 1, [&](int64_t b, int64_t e) {
      float* v = tls_buffer(3, 36 * (vs + us) + NR);
      float* du = v + 36 * vs;
      for (int64_t st = b; st < e; ++st) {
        float* ms = parts + st * msize;
        if (st >= nch) std::fill(ms, ms + msize, 0.f);
        for (int64_t ch = st; ch < nch; ch += kStreams) {
          const int64_t tc = ch * TB, kc = std::min(TB, T - tc);
          transforms(tc, tc, tc + kc, v, vs, du, us);
          products(0, units, kc, v, vs, du, us, ms, ch != st);
        }
      }
    });
    at::parallel_for(0, msize, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        float sum = parts[i];
        for (int64_t st = 1; st < kStreams; ++st) sum += parts[st * msize + i];
        m[i] = sum;
      }
    });
  } else {
    // Large M: chunks of tiles in turn, their transforms (36 x TB x (Cp + Kp)
    // floats, about 4 MiB) shared by the threads, which split the products.
    const int64_t TB = std::clamp<int64_t>((int64_t(1) << 20) / (36 * (g.Cp + g.Kp)) / 8 * 8, 32, g.KC);
    const int64_t vs = TB * g.Cp + 16, us = TB * g.Kp + 16;
    auto tbuf = at::empty({36 * (vs + us) + NR}, at::kFloat);
    float* v = tbuf.data_ptr<float>();
    float* du = v + 36 * vs;
    mbuf = at::empty({msize}, at::kFloat);
    m = mbuf.data_ptr<float>();
    for (int64_t tc = 0; tc < T; tc += TB) {
      const int64_t kc = std::min(TB, T - tc);
      at::parallel_for(tc, tc + kc, 8, [&](int64_t b, int64_t e) { transforms(tc, b, e, v, vs, du, us); });
      at::parallel_for(0, units, 1, [&](int64_t b, int64_t e) { products(b, e, kc, v, vs, du, us, m, tc > 0); });
    }
  }
  at::parallel_for(0, C, 4, [&](int64_t b, int64_t e) { output(m + b * g.Kp, wgrad_ms(g), g.Kp, b, e, 0, K); });
}

}  // namespace convx::cpu::winograd
