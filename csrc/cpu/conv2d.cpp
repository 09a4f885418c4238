// Conv2d on the CPU: forward, data gradient, weight gradient (+ bias).
//
// Algorithm: im2col + the packed GEMM of gemm.cpp, per image and group, in the
// layout of the input (no layout conversion of the activations):
//
//   NCHW  forward  Y[n,g] [Kg, P]   = W_g  [Kg, CgRS] * col [CgRS, P]
//         dgrad    gcol   [CgRS, P] = W_g^T           * dY[n,g] [Kg, P]  -> col2im
//         wgrad    dW_g   [Kg, CgRS] += dY[n,g] [Kg, P] * col^T
//   NHWC  forward  Y[n]   [P, Kg]   = col [P, RSCg] * Wt_g [RSCg, Kg]
//         dgrad    gcol   [P, RSCg] = dY[n] [P, Kg] * Wk_g [Kg, RSCg]       -> col2im
//         wgrad    dW_g   [Kg, RSCg] += dY^T [Kg, P] * col [P, RSCg]
//
// with P = Ho*Wo. A 1x1 / stride 1 / unpadded convolution skips im2col: the
// input is the column matrix. col2im is written as a gather (each input
// pixel sums the column entries that read it), so it parallelises without
// atomics and the result is the same whatever the thread count.
//
// Threading: with at least as many (image, group) tasks as threads, each
// thread takes whole tasks and runs a serial GEMM; otherwise tasks run one
// after another and the GEMM and im2col split across threads. The weight
// gradient stacks several images into one GEMM (reduction over n*P) so small
// late layers (7x7) still give the GEMM a long inner dimension.
//
// Napkin math (ResNet-50 layer3 3x3, N=8, 256->256 @14): 2*8*196*256*2304 =
// 1.85 GFLOP; at ~150 GFLOP/s on 2 AVX2 cores that is ~12 ms; the im2col
// buffer is 2304*196*4 B = 1.8 MB per image, L2/L3 resident.
//
// float16 / bfloat16 inputs (reached under CPU autocast) are computed in
// float32 and rounded once at the end.
#include "../common/conv_ops.h"
#include "depthwise.h"
#include "few_inputs.h"
#include "few_outputs.h"
#include "gemm.h"
#include "grouped.h"
#include "layout.h"
#include "isa_each.h"
#include "winograd.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

namespace convx::cpu {
namespace {

template <typename F>
void maybe_parallel_for(bool parallel, int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (parallel && !at::in_parallel_region())
    at::parallel_for(begin, end, grain, f);
  else if (begin < end)
    f(begin, end);
}

// xpad [N][Hp][Wp][C] = channels_last x [N][H][W][C] with p's padding (>= 0) as zeros (Hp = H +
// pad_t + pad_b, Wp = W + pad_l + pad_r), its rows split between the threads when `parallel`.
void pad_nhwc(const float* x, int64_t N, int64_t H, int64_t W, int64_t C, const Conv2dParams& p, float* xpad,
              bool parallel) {
  const int64_t Hp = H + p.pad_t + p.pad_b, Wp = W + p.pad_l + p.pad_r;
  maybe_parallel_for(parallel, 0, N * Hp, 8, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t n = row / Hp, h = row % Hp - p.pad_t;
      float* d = xpad + row * Wp * C;
      if (h < 0 || h >= H) {
        std::fill(d, d + Wp * C, 0.f);
        continue;
      }
      std::fill(d, d + p.pad_l * C, 0.f);
      std::memcpy(d + p.pad_l * C, x + (n * H + h) * W * C, W * C * sizeof(float));
      std::fill(d + (p.pad_l + W) * C, d + Wp * C, 0.f);
    }
  });
}

// col [Cg*R*S, P] (row stride ld) from one image x [C, H, W] (contiguous planes),
// channels c0 .. c0+Cg.
// Only rows [row0, row1) of col when given (written from col's first row).
template <typename T>
void im2col_nchw(const T* x, int64_t H, int64_t W, int64_t Cg, int64_t R, int64_t S, int64_t Ho, int64_t Wo,
                 const Conv2dParams& p, T* col, int64_t ld, bool parallel, int64_t ho0 = 0, int64_t ho1 = -1,
                 int64_t row0 = 0, int64_t row1 = -1, bool tap_major = false) {
  // tap_major: rows in (r, s, c) order, a channels_last weight's (whole range only)
  if (ho1 < 0) ho1 = Ho;
  if (row1 < 0) row1 = Cg * R * S;
  const int64_t sw = p.stride_w;
  maybe_parallel_for(parallel, row0, row1, 16, [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t c = row / (R * S), r = (row / S) % R, s = row % S;
      const T* xc = x + c * H * W;
      T* dst = col + ((tap_major ? (r * S + s) * Cg + c : row) - row0) * ld;
      // Output columns [lo, hi) read inside the row (w = w0 + wo * stride in [0, W)): the rest
      // is padding, written as zeros, and the interior is copied without a bounds test a
      // column (a strided copy the compiler vectorises; stride 1 is a memcpy).
      const int64_t w0 = s * p.dil_w - p.pad_l;
      const int64_t lo = std::min(Wo, w0 >= 0 ? 0 : (-w0 + sw - 1) / sw);
      const int64_t hi = std::max(lo, std::min(Wo, W - w0 > 0 ? (W - w0 + sw - 1) / sw : 0));
      for (int64_t ho = ho0; ho < ho1; ++ho) {
        const int64_t h = ho * p.stride_h - p.pad_t + r * p.dil_h;
        T* d = dst + (ho - ho0) * Wo;
        if (h < 0 || h >= H) {
          std::fill(d, d + Wo, T(0));
          continue;
        }
        const T* xr = xc + h * W + w0;
        std::fill(d, d + lo, T(0));
        if (sw == 1)
          std::memcpy(d + lo, xr + lo, (hi - lo) * sizeof(T));
        else if (sw == 2)
          for (int64_t wo = lo; wo < hi; ++wo) d[wo] = xr[2 * wo];
        else
          for (int64_t wo = lo; wo < hi; ++wo) d[wo] = xr[wo * sw];
        std::fill(d + hi, d + Wo, T(0));
      }
    }
  });
}

// x [C, H, W] (channels c0..c0+Cg of this group) += col2im(gcol [Cg*R*S, P]).
// Gather: each input row h sums the (r, ho) pairs that read it.
// bias (optional, per channel of this group) initialises the sum: transposed
// convolution's forward is this gather plus its bias.
template <typename T>
void col2im_nchw(const T* gcol, int64_t H, int64_t W, int64_t Cg, int64_t R, int64_t S, int64_t Ho, int64_t Wo,
                 const Conv2dParams& p, T* gx, const T* bias, bool parallel, int64_t ld = -1) {
  if (ld < 0) ld = Ho * Wo;  // gcol's row stride
  maybe_parallel_for(parallel, 0, Cg * H, 8, [&](int64_t b, int64_t e) {
    for (int64_t ch = b; ch < e; ++ch) {
      const int64_t c = ch / H, h = ch % H;
      T* out = gx + (c * H + h) * W;
      std::fill(out, out + W, bias ? bias[c] : T(0));
      for (int64_t r = 0; r < R; ++r) {
        const int64_t hn = h + p.pad_t - r * p.dil_h;
        if (hn < 0 || hn % p.stride_h) continue;
        const int64_t ho = hn / p.stride_h;
        if (ho >= Ho) continue;
        for (int64_t s = 0; s < S; ++s) {
          const T* g = gcol + ((c * R + r) * S + s) * ld + ho * Wo;
          const int64_t off = s * p.dil_w - p.pad_l;  // w = wo*stride + off
          // wo range with 0 <= wo*stride + off < W
          int64_t wo_lo = off >= 0 ? 0 : (-off + p.stride_w - 1) / p.stride_w;
          int64_t wo_hi = std::min(Wo, (W - off + p.stride_w - 1) / p.stride_w);
          if (p.stride_w == 1) {
            T* o = out + off;
            for (int64_t wo = wo_lo; wo < wo_hi; ++wo) o[wo] += g[wo];
          } else {
            for (int64_t wo = wo_lo; wo < wo_hi; ++wo) out[wo * p.stride_w + off] += g[wo];
          }
        }
      }
    }
  });
}

// col [P, R*S*Cg] (row stride ld) from one NHWC image x [H, W, C], channels c0..c0+Cg.
template <typename T>
void im2col_nhwc(const T* x, int64_t H, int64_t W, int64_t C, int64_t c0, int64_t Cg, int64_t R, int64_t S,
                 int64_t Ho, int64_t Wo, const Conv2dParams& p, T* col, int64_t ld, bool parallel, int64_t pix0 = 0,
                 int64_t pix1 = -1) {
  if (pix1 < 0) pix1 = Ho * Wo;
  maybe_parallel_for(parallel, pix0, pix1, 64, [&](int64_t b, int64_t e) {
    for (int64_t pix = b; pix < e; ++pix) {
      const int64_t ho = pix / Wo, wo = pix % Wo;
      T* d = col + (pix - pix0) * ld;
      for (int64_t r = 0; r < R; ++r) {
        const int64_t h = ho * p.stride_h - p.pad_t + r * p.dil_h;
        for (int64_t s = 0; s < S; ++s, d += Cg) {
          const int64_t w = wo * p.stride_w - p.pad_l + s * p.dil_w;
          if (h < 0 || h >= H || w < 0 || w >= W)
            std::fill(d, d + Cg, T(0));
          else
            std::memcpy(d, x + (h * W + w) * C + c0, Cg * sizeof(T));
        }
      }
    }
  });
}

// Columns [j0, j1) of the NHWC im2col (column j = (r*S + s)*Cg + c) for output
// pixels [pix0, pix1): col [pix1 - pix0, j1 - j0] (row stride j1 - j0), serial.
template <typename T>
void im2col_nhwc_cols(const T* x, int64_t H, int64_t W, int64_t C, int64_t c0, int64_t Cg, int64_t S, int64_t Wo,
                      const Conv2dParams& p, T* col, int64_t pix0, int64_t pix1, int64_t j0, int64_t j1) {
  const int64_t nj = j1 - j0, tap0 = j0 / Cg, tap1 = (j1 - 1) / Cg + 1;
  for (int64_t pix = pix0; pix < pix1; ++pix) {
    const int64_t ho = pix / Wo, wo = pix % Wo;
    T* d = col + (pix - pix0) * nj;
    for (int64_t tap = tap0; tap < tap1; ++tap) {
      const int64_t r = tap / S, s = tap % S;
      const int64_t a = std::max(j0, tap * Cg), b = std::min(j1, (tap + 1) * Cg);  // columns of this tap
      const int64_t h = ho * p.stride_h - p.pad_t + r * p.dil_h, w = wo * p.stride_w - p.pad_l + s * p.dil_w;
      T* dd = d + (a - j0);
      if (h < 0 || h >= H || w < 0 || w >= W)
        std::fill(dd, dd + (b - a), T(0));
      else
        std::memcpy(dd, x + (h * W + w) * C + c0 + (a - tap * Cg), (b - a) * sizeof(T));
    }
  }
}

// gx [H, W, C] channels c0..c0+Cg = col2im(gcol [P, R*S*Cg]), as a gather.
template <typename T>
void col2im_nhwc(const T* gcol, int64_t H, int64_t W, int64_t C, int64_t c0, int64_t Cg, int64_t R, int64_t S,
                 int64_t Ho, int64_t Wo, const Conv2dParams& p, T* gx, const T* bias, bool parallel) {
  maybe_parallel_for(parallel, 0, H * W, 16, [&](int64_t b, int64_t e) {
    for (int64_t pix = b; pix < e; ++pix) {
      const int64_t h = pix / W, w = pix % W;
      T* out = gx + pix * C + c0;
      if (bias)
        std::copy(bias + c0, bias + c0 + Cg, out);
      else
        std::fill(out, out + Cg, T(0));
      for (int64_t r = 0; r < R; ++r) {
        const int64_t hn = h + p.pad_t - r * p.dil_h;
        if (hn < 0 || hn % p.stride_h || hn / p.stride_h >= Ho) continue;
        const int64_t ho = hn / p.stride_h;
        for (int64_t s = 0; s < S; ++s) {
          const int64_t wn = w + p.pad_l - s * p.dil_w;
          if (wn < 0 || wn % p.stride_w || wn / p.stride_w >= Wo) continue;
          const T* g = gcol + (ho * Wo + wn / p.stride_w) * (R * S * Cg) + (r * S + s) * Cg;
          for (int64_t c = 0; c < Cg; ++c) out[c] += g[c];
        }
      }
    }
  });
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Images per GEMM: `stack` (channels_last; NCHW with one group, small images
// and weights packed once, see forward_impl) stacks images until the GEMM has
// >= 256 rows (columns in NCHW), bounded by a column buffer of `cap` elements
// (CRS = 0: no buffer); otherwise one at a time. The chunk count is rounded to
// a multiple of the thread count (or to one chunk whose GEMM is threaded) so
// the threads get equal work.
inline int64_t images_per_gemm(int64_t N, int64_t P, int64_t CRS, int64_t G, bool stack,
                               int64_t cap = int64_t(1) << 23) {
  if (!stack) return 1;
  int64_t nb = std::min<int64_t>(N, ceil_div(256, P));
  nb = std::max<int64_t>(1, std::min<int64_t>(nb, cap / std::max<int64_t>(1, P * CRS)));
  const int64_t nt = at::get_num_threads();
  int64_t chunks = std::max<int64_t>(1, N / nb);
  if (chunks * G >= nt && G < nt) chunks = std::max<int64_t>(nt, chunks / nt * nt);
  else if (chunks * G < nt) chunks = 1;
  return ceil_div(N, chunks);
}

// Run `tasks` (chunk, group) tasks: with at least as many tasks as threads each
// thread takes whole tasks (serial GEMMs, its own column buffer); otherwise the
// tasks run in turn and each one's im2col / GEMM is split across threads.
// The calling thread's column buffer: kept between calls and grown on demand,
// never zero-filled (im2col writes every element; a GEMM output is written
// whole), so a call does not fault in and clear fresh pages (a 224x224 layer
// used to take ~56,000 page faults a call for a whole-image buffer).
template <typename T>
T* workspace(int64_t n, int slot = kConvCol) {  // kConvPadded: the weight gradient's padded input
  return thread_buffer<T>(slot, n);
}

template <typename T, typename Task>
void run_tasks(int64_t tasks, int64_t G, int64_t col_elems, const Task& task) {
  if (tasks >= at::get_num_threads()) {
    at::parallel_for(0, tasks, 1, [&](int64_t b, int64_t e) {
      T* col = workspace<T>(col_elems);
      for (int64_t t = b; t < e; ++t) task(t / G, t % G, col, false);
    });
  } else {
    T* col = workspace<T>(col_elems);
    for (int64_t t = 0; t < tasks; ++t) task(t / G, t % G, col, true);
  }
}

// Column blocks: a one-image im2col is cut into blocks of whole output rows of
// about kColBlock elements (2 MiB of floats: it stays in L2 while the GEMM reads it).
constexpr int64_t kColBlock = int64_t(1) << 19;
inline int64_t rows_per_block(int64_t CRS, int64_t Wo, int64_t Ho) {
  return std::clamp<int64_t>(kColBlock / std::max<int64_t>(1, CRS * Wo), 1, Ho);
}

// ---------------------------------------------------------------- forward

// The channels_last im2col made row by row as the GEMM packs it (gemm_rows):
// row i = output pixel i of the images from x, columns (r*S + s)*Cg + c.
struct Im2colRows {
  const float* x;  // image 0's first pixel, channel c0 of the group
  int64_t H, W, C, Cg, S, Ho, Wo;
  const Conv2dParams* p;
  bool by_columns = false;  // im2col_nhwc_gather: rows i in column order (wo, then ho, of each image)
};

// The same rows read in place (gemm_rows' direct rows) where they can be: one group, dilation 1
// along W, `count` output pixels of one image row whose taps in [k0, k0 + kc) all lie inside the
// image; the reduction blocked at filter rows of S*C floats (seg_len), so a block is whole filter
// rows or a piece of one. The 3-channel stem's forward, batch 8: 26 % of its time was this copy.
bool im2col_nhwc_direct(const void* ctx, int64_t i, int64_t count, int64_t k0, int64_t kc, RowSegments* seg) {
  const Im2colRows& a = *static_cast<const Im2colRows*>(ctx);
  const Conv2dParams& p = *a.p;
  const int64_t P = a.Ho * a.Wo, L = a.S * a.C;
  const int64_t n = i / P, ho = (i - n * P) / a.Wo, wo = i - n * P - ho * a.Wo;
  if (wo + count > a.Wo) return false;  // the pixels run past the end of an output row
  const int64_t r0 = k0 / L, o0 = k0 - r0 * L;
  int64_t runs = 1, len = kc;
  if (o0 + kc > L) {
    if (o0 != 0 || kc % L != 0) return false;
    runs = kc / L, len = L;
  }
  const int64_t h0 = ho * p.stride_h - p.pad_t + r0 * p.dil_h, h1 = h0 + (runs - 1) * p.dil_h;
  const int64_t w0 = wo * p.stride_w - p.pad_l, w1 = (wo + count - 1) * p.stride_w - p.pad_l;
  if (h0 < 0 || h1 >= a.H || w0 + o0 / a.C < 0 || w1 + (o0 + len - 1) / a.C >= a.W) return false;
  seg->a = a.x + ((n * a.H + h0) * a.W + w0) * a.C + o0;
  seg->lda = p.stride_w * a.C;
  seg->step = p.dil_h * a.W * a.C;
  seg->n = runs;
  seg->len = len;
  return true;
}

// Or gathered (gemm_rows' gather): a block of whole filter taps (or a piece of one tap's channels),
// each tap one run, each output pixel's channels read where they lie in x, or a row of zeros where
// the tap falls outside the image. Then a tile's 12 pixels may span two image rows, or an image's
// edge, and still not be copied: with output rows not a multiple of 12 pixels (28, 17, 14) about
// half the tiles crossed a row's end and went through im2col_nhwc_rows. by_columns: the rows of
// the GEMM taken down the image's columns (row i = pixel (ho, wo) of image n, i = (n * Wo + wo) *
// Ho + ho), so that with padding only at the left and right (1x7) a tile's pixels share their taps
// outside the image, and those runs are left out rather than computed as zeros.
int im2col_nhwc_gather(const void* ctx, int64_t i, int64_t count, int64_t k0, int64_t kc, const float* (*at)[16],
                       int64_t* crow) {
  const Im2colRows& a = *static_cast<const Im2colRows*>(ctx);
  const Conv2dParams& p = *a.p;
  const int64_t tap0 = k0 / a.Cg, c0 = k0 - tap0 * a.Cg;
  int64_t runs = 1;
  if (c0 + kc > a.Cg) {
    if (c0 != 0 || kc % a.Cg != 0 || kc / a.Cg > kGatherRuns) return 0;
    runs = kc / a.Cg;
  }
  const int64_t P = a.Ho * a.Wo, n0 = i / P, q0 = i - n0 * P;
  const int64_t ho0 = a.by_columns ? q0 % a.Ho : q0 / a.Wo, wo0 = a.by_columns ? q0 / a.Ho : q0 % a.Wo;
  const float* zeros = gemm_zero_row();
  for (int64_t t = 0; t < runs; ++t) {
    const int64_t r = (tap0 + t) / a.S, s = tap0 + t - r * a.S;
    int64_t n = n0, ho = ho0, wo = wo0;
    for (int64_t j = 0; j < count; ++j) {
      const int64_t h = ho * p.stride_h - p.pad_t + r * p.dil_h, w = wo * p.stride_w - p.pad_l + s * p.dil_w;
      at[t][j] = h >= 0 && h < a.H && w >= 0 && w < a.W ? a.x + ((n * a.H + h) * a.W + w) * a.C + c0 : zeros;
      if (t == 0) crow[j] = (n * a.Ho + ho) * a.Wo + wo;
      if (a.by_columns) {
        if (++ho == a.Ho) {
          ho = 0;
          if (++wo == a.Wo) wo = 0, ++n;
        }
      } else if (++wo == a.Wo) {
        wo = 0;
        if (++ho == a.Ho) ho = 0, ++n;
      }
    }
  }
  return int(runs);
}

// Or, for few channels (a tap's run too short to gather alone), gathered from a zero-padded copy
// of the input (a.x, a.H, a.W its padded geometry, no padding left in a.p; one group, dilation 1
// along W): a block of whole filter rows (or a piece of one) each one run of S*C floats a pixel,
// every tile's rows in place (across image rows and at the edges too, where im2col_nhwc_direct
// failed and im2col_nhwc_rows copied them).
int im2col_nhwc_gather_rows(const void* ctx, int64_t i, int64_t count, int64_t k0, int64_t kc,
                            const float* (*at)[16], int64_t* crow) {
  const Im2colRows& a = *static_cast<const Im2colRows*>(ctx);
  const Conv2dParams& p = *a.p;
  const int64_t L = a.S * a.C, r0 = k0 / L, o0 = k0 - r0 * L;
  int64_t runs = 1;
  if (o0 + kc > L) {
    if (o0 != 0 || kc % L != 0 || kc / L > kGatherRuns) return 0;
    runs = kc / L;
  }
  const int64_t P = a.Ho * a.Wo;
  int64_t n = i / P, ho = (i - n * P) / a.Wo, wo = i - n * P - ho * a.Wo;
  for (int64_t j = 0; j < count; ++j) {
    const float* px = a.x + ((n * a.H + ho * p.stride_h + r0 * p.dil_h) * a.W + wo * p.stride_w) * a.C + o0;
    for (int64_t t = 0; t < runs; ++t) at[t][j] = px + t * p.dil_h * a.W * a.C;
    crow[j] = i + j;
    if (++wo == a.Wo) {
      wo = 0;
      if (++ho == a.Ho) ho = 0, ++n;
    }
  }
  return int(runs);
}

void im2col_nhwc_rows(const void* ctx, int64_t i, int64_t count, int64_t k0, int64_t kc, float* dst) {
  const Im2colRows& a = *static_cast<const Im2colRows*>(ctx);
  const Conv2dParams& p = *a.p;
  const int64_t P = a.Ho * a.Wo;
  int64_t n = i / P, ho = (i - n * P) / a.Wo, wo = i - n * P - ho * a.Wo;  // then counted on, row by row
  const int64_t tap0 = k0 / a.Cg, c0 = k0 - tap0 * a.Cg, r0 = tap0 / a.S, s0 = tap0 - r0 * a.S;
  // One group spanning all channels at dilation 1: a filter row's taps read consecutive pixels,
  // contiguous in memory, so they go as one run (the 3-channel stem: 21 floats, not 7 x 3).
  const bool merge = a.C == a.Cg && p.dil_w == 1;
  const int64_t end = k0 + kc;
  // The rows' copies compiled for the CPU's widest vectors (isa_each.h): runs are short (9 floats
  // for a 3-channel 3x3 layer), where a call to memcpy cost as much as the copy.
  // Whole rows (k0 = 0, kc = R*S*C) of such a layer whose receptive field lies inside the image:
  // one run of S*C floats a filter row, no bounds tests.
  const int64_t R = a.Cg == 0 ? 0 : kc / (a.S * a.Cg), run = a.S * a.C;
  const bool whole = merge && k0 == 0 && kc == R * run;
  const int64_t hspan = (R - 1) * p.dil_h, wspan = a.S - 1;
  each(0, count, [&](int64_t row) CONVX_ALWAYS_INLINE {
    const float* xn = a.x + n * a.H * a.W * a.C;
    const int64_t hb = ho * p.stride_h - p.pad_t, wb = wo * p.stride_w - p.pad_l;
    float* drow = dst + row * kc;
    int64_t c = c0, r = r0, s = s0;
    if (whole && hb >= 0 && hb + hspan < a.H && wb >= 0 && wb + wspan < a.W) {
      const float* src = xn + (hb * a.W + wb) * a.C;
      for (int64_t rr = 0; rr < R; ++rr, src += p.dil_h * a.W * a.C) copy_run(drow + rr * run, src, run);
    } else for (int64_t k = k0; k < end;) {
      int64_t len = std::min(a.Cg - c, end - k);
      const int64_t h = hb + r * p.dil_h, w = wb + s * p.dil_w;
      float* d = drow + (k - k0);
      int64_t taps = 1;
      if (h >= 0 && h < a.H && w >= 0 && w < a.W) {
        if (merge)
          while (k + len < end && s + taps < a.S && w + taps < a.W) len += std::min(a.Cg, end - k - len), ++taps;
        copy_run(d, xn + (h * a.W + w) * a.C + c, len);
      } else {
        for (int64_t j = 0; j < len; ++j) d[j] = 0.f;
      }
      k += len;
      c = 0;
      for (s += taps; s >= a.S; s -= a.S) ++r;
    }
    if (++wo == a.Wo) {
      wo = 0;
      if (++ho == a.Ho) ho = 0, ++n;
    }
  });
}

// A forward with few output pixels in the whole batch against many weights (ResNet-50's
// 512 -> 512 3x3 at 7 x 7, batch 2: 98 pixels, 9.4 MB of weights): in NCHW the weights are the
// GEMM's A read where they are (rows of C*R*S, no packing, no layout copy) and the images'
// im2col side by side its B. In channels_last the same product packed (or converted and packed)
// the weights on every call, which cost more than the product: 3.5 -> 2.4 ms (torch 1.8-2.2).
// NCHW 1x1 layers too (their planes copied side by side; packing 2048 x 512 weights for 98
// pixels cost ~10 % of the layer).
inline bool weights_in_place(const Conv2dShape& sh, const Conv2dParams& p) {
  const int64_t pixels = sh.N * sh.Ho * sh.Wo;
  return p.groups == 1 && pixels <= 256 && sh.K >= 2 * pixels;
}

// A channels_last float32 forward with a spatial kernel whose gathered rows (gemm_rows' gather,
// each of a tile's 12 pixels read where it lies) would crowd L1's sets (an 8-way L1; 512
// channels at stride 2: the pixels 4 KiB apart, every row on one set) reads a copy of the input
// whose pixels are 16 floats further apart (layout.h's channels_last_spaced) and gathers its
// rows there, where they had been copied a tile at a time (im2col_nhwc_rows). For an NCHW input the
// spaced copy is the transpose it had anyway. One group, at least 48 channels in whole blocks of
// the reduction (the gather's own rule in forward_impl), not the column order's padding (pad_t =
// pad_b = 0). Batch 8 unless said, two threads, Zen 4 (8-way L1), in-process A/B against the
// copied rows: 3x3 stride 2 512 @14 channels_last -5 % (0.97 -> 1.01x torch), NCHW -7 % (0.84 ->
// 0.92), batch 4 512 @28 -5 % / -7 %, 1024 @14 -1 %; forward + backward -1 %. (1x1 stride-2
// layers lost: 512 -> 1024 @28 +8 %.)
// The gathered rows' rule on the reduction (forward_impl): blocks of 192 floats or more, whole
// taps or equal pieces of one (Cg within the tile's KC or a multiple of it).
inline bool gather_blocks_ok(int64_t Cg) {
  const int64_t KC = micro_tile<float>().KC, block = Cg <= KC ? KC / Cg * Cg : Cg / ceil_div(Cg, KC);
  return block >= 192 && (Cg <= KC || Cg % KC == 0);
}
// Whether a tile's 12 gathered rows (pixels stride_w apart) would crowd L1's sets (gemm.h).
inline bool gathered_rows_crowd(const Conv2dShape& sh, const Conv2dParams& p) {
  return l1_ways() < 12 && l1_sets_crowded(p.stride_w * sh.C * int64_t(sizeof(float)), 12, 1024);
}
bool pixels_spaced(const Conv2dShape& sh, const Conv2dParams& p) {
  return p.groups == 1 && sh.R * sh.S > 1 && sh.Cg >= 48 && gather_blocks_ok(sh.Cg) &&
         !(p.pad_t == 0 && p.pad_b == 0 && p.pad_l + p.pad_r > 0) && !weights_in_place(sh, p) &&
         gathered_rows_crowd(sh, p);
}
constexpr int64_t kPixelSpacing = 16;  // floats

// xpix: x's pixels' stride in floats (NHWC; 0: sh.C), another only where pixels_spaced
template <typename T>
void forward_impl(const at::Tensor& x, const at::Tensor& w, const at::Tensor* bias, const Conv2dShape& sh,
                  const Conv2dParams& p, bool nhwc, at::Tensor& y, int64_t xpix = 0) {
  const int64_t N = sh.N, G = p.groups, Cg = sh.Cg, Kg = sh.Kg, R = sh.R, S = sh.S;
  const int64_t HW = sh.H * sh.W, P = sh.Ho * sh.Wo, CRS = Cg * R * S;
  const bool direct = p.is_pointwise_identity(R, S);
  const T* xp = x.const_data_ptr<T>();
  const T* bp = bias ? bias->const_data_ptr<T>() : nullptr;
  T* yp = y.mutable_data_ptr<T>();

  // NHWC multiplies by the weight as [G][Kg][R*S*Cg] (its channels_last memory: no copy for a
  // channels_last weight) read transposed by the GEMM's packing (B with unit row stride): a
  // transposed copy per call cost up to 1 ms for ResNet-50's 2048-channel 1x1 weights.
  // A weight in the other layout goes through layout.h's copy into scratch memory (torch's copy
  // into a fresh 9.4 MB tensor took 2.8 ms for 512 x 512 x 3 x 3, mostly page faults: 7 % of
  // ResNet-50's NCHW forward, whose late 3x3 layers compute in channels_last).
  const at::Tensor wt =
      to_format_scratch(w, nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous, kLayoutWeight);
  const T* wp = wt.const_data_ptr<T>();
  const int64_t brs = nhwc ? 1 : CRS, bcs = nhwc ? CRS : 1;  // B = W_g^T [CRS, Kg] (NHWC); A = W_g (NCHW)

  // NHWC stacks nb images per GEMM (their rows are contiguous), so small
  // images still give the GEMM a tall M; NCHW runs one image per GEMM.
  // float32 channels_last with a spatial kernel or stride: the im2col is made as the GEMM packs
  // it (gemm_rows), all images in one product; no im2col matrix (7 MB for ResNet-50's
  // 512-channel stride-2 layer at batch 8) goes through memory.
  const bool in_place = std::is_same_v<T, float> && (!direct || !nhwc) && weights_in_place(sh, p);
  // A channels_last float32 1x1 layer at a stride (unpadded, one group): the pixels it reads
  // copied out first (a quarter of the input at stride 2), then the product of a stride-1 1x1
  // layer (weights packed once, pack_b_once), where its rows had been gathered stride * C floats
  // apart (or, 4 KiB apart on an 8-way L1, copied a tile at a time). Batch 8, two threads,
  // in-process A/B on Zen 4 (ratio to torch): 512 -> 1024 @28 0.91 -> 1.08 (-15 %), 1024 -> 2048
  // @14 -2 %, 64 -> 256 @56 -3 %, 256 -> 512 @56 and batch 2 512 -> 1024 even.
  const bool subsampled = std::is_same_v<T, float> && nhwc && R == 1 && S == 1 && G == 1 && !in_place &&
                          p.dil_h == 1 && p.dil_w == 1 && p.pad_t == 0 && p.pad_b == 0 && p.pad_l == 0 &&
                          p.pad_r == 0 && (p.stride_h > 1 || p.stride_w > 1);
  const bool on_the_fly = std::is_same_v<T, float> && nhwc && !direct && !in_place && !subsampled;
  // NCHW, one group: the weights are the A of every product; packed once here (not once an
  // image and im2col block), and images under 256 pixels go several to a product (columns of
  // a batch, gemm.h) so each block of the weights is read once for all of them (ResNet-50's
  // last 1x1 layers: 4 MB of weights for 49 pixels an image).
  const bool packed = !nhwc && G == 1 && !in_place;
  const int64_t nb = on_the_fly || in_place || subsampled ? N
                     : nhwc ? images_per_gemm(N, P, CRS, G, true)
                            : images_per_gemm(N, P, direct ? 0 : CRS, G, packed && P < 256, int64_t(1) << 20);
  const int64_t rows = rows_per_block(CRS, sh.Wo, sh.Ho);
  const PackedA<T> wpack = packed ? pack_a_once<T>(Kg, CRS, wp, CRS, 1, direct || nb > 1 ? nb * P : rows * sh.Wo)
                                  : PackedA<T>{};
  // NHWC, one group, im2col or none (not on the fly): the weights are B of every chunk's
  // product, packed once here (gemm() packed them again for every chunk of images).
  const PackedB<T> wpack_b = nhwc && G == 1 && !on_the_fly && !in_place
                                 ? pack_b_once<T>(CRS, Kg, wp, brs, bcs, nb * P)
                                 : PackedB<T>{};
  auto task = [&](int64_t chunk, int64_t g, T* col, bool par) {
    const int64_t n = chunk * nb;
    if (!nhwc) {
      const int64_t nn = std::min(nb, N - n);
      const T* xg = xp + (n * sh.C + g * Cg) * HW;
      T* yg = yp + (n * sh.K + g * Kg) * P;
      // the weights packed once (wpack): the products start from the bias (rb), no pass over y first
      const T* rb = wpack.data && bp ? bp + g * Kg : nullptr;
      if (bp && !rb)
        maybe_parallel_for(par, 0, nn * Kg, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, P)),
                           [&](int64_t b0, int64_t e0) {
                             for (int64_t ik = b0; ik < e0; ++ik) {
                               const int64_t i = ik / Kg, k = ik % Kg;
                               std::fill(yg + (i * sh.K + k) * P, yg + (i * sh.K + k + 1) * P, bp[g * Kg + k]);
                             }
                           });
      if (wpack.data && direct)  // B: the images' planes themselves
        return gemm_packed_a<T>(wpack, nn * P, BatchCols{P, sh.C * HW, sh.K * P}, xg, P, yg, P, false, par, rb);
      if (nn > 1) {  // the images' im2col (a 1x1 layer's planes) side by side: col [CRS, nn * P]
        maybe_parallel_for(par, 0, nn, 1, [&](int64_t ib, int64_t ie) {
          for (int64_t i = ib; i < ie; ++i)
            if (direct)
              for (int64_t c = 0; c < Cg; ++c)
                std::copy(xg + (i * sh.C + c) * HW, xg + (i * sh.C + c + 1) * HW, col + c * nn * P + i * P);
            else
              im2col_nchw(xg + i * sh.C * HW, sh.H, sh.W, Cg, R, S, sh.Ho, sh.Wo, p, col + i * P, nn * P, false);
        });
        if (in_place) {  // C [Kg, nn * P] after the im2col in the workspace, then to the images
          T* yb = col + CRS * nn * P;
          gemm<T>(Kg, nn * P, CRS, wp, CRS, 1, col, nn * P, 1, yb, nn * P, 1, false, par);
          for (int64_t i = 0; i < nn; ++i)
            for (int64_t k = 0; k < Kg; ++k) {
              T* dst = yg + (i * sh.K + k) * P;
              const T* src = yb + k * nn * P + i * P;
              if (bp)
                for (int64_t q = 0; q < P; ++q) dst[q] += src[q];
              else
                std::copy(src, src + P, dst);
            }
          return;
        }
        return gemm_packed_a<T>(wpack, nn * P, BatchCols{P, P, sh.K * P}, col, nn * P, yg, P, false, par, rb);
      }
      // yc [Kg, cols] (row stride P) (+)= W_g col [CRS, cols]
      auto product = [&](int64_t cols, const T* colp, T* yc) {
        if (wpack.data)
          gemm_packed_a<T>(wpack, cols, BatchCols{cols, 0, 0}, colp, cols, yc, P, false, par, rb);
        else
          gemm<T>(Kg, cols, CRS, wp + g * Kg * CRS, CRS, 1, colp, cols, 1, yc, P, 1, bp != nullptr, par);
      };
      if (direct) return product(P, xg, yg);
      for (int64_t ho0 = 0; ho0 < sh.Ho; ho0 += rows) {  // blocks of output rows
        const int64_t ho1 = std::min(sh.Ho, ho0 + rows), cols = (ho1 - ho0) * sh.Wo;
        im2col_nchw(xg, sh.H, sh.W, Cg, R, S, sh.Ho, sh.Wo, p, col, cols, par, ho0, ho1);
        product(cols, col, yg + ho0 * sh.Wo);
      }
    } else {
      const int64_t nn = std::min(nb, N - n), M = nn * P;
      const T* xn = xp + n * HW * sh.C;
      T* yg = yp + n * P * sh.K + g * Kg;
      // (the products on the fly and by the packed weights start their tiles from the bias
      // themselves: a separate pass first wrote VGG-16's 103 MB first-layer output, batch 8, on
      // one thread and then read it back, 3.6 -> 8.6 ms with a bias; a 64 -> 256 1x1 @56 1.7 -> 2.4)
      const bool rows_bias = (std::is_same_v<T, float> && on_the_fly) || wpack_b.data;
      if (bp && !rows_bias)
        maybe_parallel_for(par, 0, M, 2048, [&](int64_t b0, int64_t e0) {
          for (int64_t q = b0; q < e0; ++q) std::copy(bp + g * Kg, bp + (g + 1) * Kg, yg + q * sh.K);
        });
      // yc [m, Kg] (row stride K) (+)= a [m, CRS] (row stride lda) W_g^T
      auto product = [&](int64_t m, const T* a, int64_t lda, T* yc) {
        if (wpack_b.data)
          gemm_packed_b<T>(m, a, lda, 1, wpack_b, yc, sh.K, 1, false, par, bp ? bp + g * Kg : nullptr);
        else
          gemm<T>(m, Kg, CRS, a, lda, 1, wp + g * CRS * Kg, brs, bcs, yc, sh.K, 1, bp != nullptr, par);
      };
      if (direct) return product(M, xn + g * Cg, sh.C, yg);
      if (subsampled) {  // xs [M, C]: the pixels (ho * stride_h, wo * stride_w) of each image
        T* xs = workspace<T>(M * Cg, kConvPadded);
        maybe_parallel_for(par, 0, M, std::max<int64_t>(1, 4096 / Cg), [&](int64_t b0, int64_t e0) {
          for (int64_t q = b0; q < e0; ++q) {
            const int64_t n = q / P, ho = q % P / sh.Wo, wo = q % sh.Wo;
            std::memcpy(xs + q * Cg, xn + ((n * sh.H + ho * p.stride_h) * sh.W + wo * p.stride_w) * sh.C,
                        Cg * sizeof(T));
          }
        });
        return product(M, xs, Cg, yg);
      }
      if (in_place) {  // as NCHW's (weights_in_place): the input made NCHW, a tap-major im2col
        T* xt = col + CRS * M;
        T* yb = xt + nn * sh.C * HW;
        if constexpr (std::is_same_v<T, float>) transpose_batch(xn, xt, nn, HW, sh.C);
        maybe_parallel_for(par, 0, nn, 1, [&](int64_t ib, int64_t ie) {
          for (int64_t i = ib; i < ie; ++i)
            im2col_nchw(xt + i * sh.C * HW, sh.H, sh.W, Cg, R, S, sh.Ho, sh.Wo, p, col + i * P, M, false, 0, -1, 0,
                        -1, true);
        });
        gemm<T>(Kg, M, CRS, wp, CRS, 1, col, M, 1, yb, M, 1, false, par);
        for (int64_t q = 0; q < M; ++q)  // yg (+)= yb^T (yg holds the bias when there is one)
          for (int64_t k = 0; k < Kg; ++k) yg[q * sh.K + k] = (bp ? yg[q * sh.K + k] : T(0)) + yb[k * M + q];
        return;
      }
      if constexpr (std::is_same_v<T, float>) {
        if (on_the_fly) {
          // gathered rows where a tap's channels make long runs (at least 48: blocks of at most 5
          // taps; 32- and 24-channel layers ran 5-12 % slower gathered) and a tile's rows do not
          // crowd L1's sets (gemm.h; rows 4 KiB apart on a 12-way L1 did not: 512 channels at
          // stride 2, 2 threads, +6-8 % gathered, 1024 -> 256 1x3 +13 %); down the columns where
          // only the left and right are padded (48 channels: GoogLeNet-style 5x5 @35 +3 %, 1x7
          // @17 +12 %)
          const bool cols = p.pad_t == 0 && p.pad_b == 0 && p.pad_l + p.pad_r > 0 &&
                            !l1_sets_crowded(p.stride_h * sh.W * sh.C * int64_t(sizeof(float)), 12, 1024);
          // (and blocks of the reduction of 192 or more, unless down the columns: 288 -> 384 stride
          // 2 @35 in blocks of 144, 384 -> 384 in blocks of 192 ran 5-7 % slower than through
          // direct() in blocks of 216-230)
          const int64_t KC = micro_tile<float>().KC;
          // (pixels spaced out: pixels_spaced took the same rule's crowded case)
          const bool spaced = xpix > 0 && xpix != sh.C;
          const bool gather =
              spaced || (Cg >= 48 && (cols || (gather_blocks_ok(Cg) && !gathered_rows_crowd(sh, p))));
          const Im2colRows a{xn + g * Cg, sh.H, sh.W, spaced ? xpix : sh.C, Cg, S, sh.Ho, sh.Wo, &p, gather && cols};
          // im2col_nhwc_direct's rows in place (its filter rows S*C contiguous floats: not spaced)
          const bool runs = G == 1 && p.dil_w == 1 && !spaced;
          // A short reduction (C*R*S <= 64: VGG's 3 -> 64 3x3, 27) and a result of 8 MiB or more
          // (the result's own layout: such layers compute in it): the result by streaming stores
          // (gemm_rows' stream), its lines not read before written, where L2 has 2 MiB or more (the
          // Intel Xeon: VGG's first layer @224, batch 8, channels_last (103 MB out), process-
          // alternating A/B: 0.95 -> 1.11x torch (time -22 %); the stem (147) measured even). On Zen
          // 4 (1 MiB) they cost time instead: 2 threads, channels_last, in-process A/B, stores
          // through the caches against streamed: VGG's 3 -> 64 @224 -8 %, stride 2 -5 %, 3 -> 32
          // @224 -8 %, CIFAR's 3 -> 16 @32 batch 128 -9 %, 3 -> 32 @64 batch 32 -12 %, 6 -> 64 @112
          // -5 %. (Winograd's streamed results of the same size kept their gain there: 64 @112 -8 %.)
          const bool stream_ok = l2_bytes() >= (int64_t(2) << 20);
          auto stream_short = [&](const float* yc) {
            return G == 1 && CRS <= 64 && stream_ok &&
                   stream_stores(yc, M * sh.K * int64_t(sizeof(float)), sh.K * int64_t(sizeof(float)));
          };
          // Fewer channels (one group): from a zero-padded copy of the input, a filter row a run
          // (at most kGatherRuns of them a block of the reduction), where a filter row has 80 floats
          // or more. Batch 8, 2 threads, in-process A/B: 16 -> 32 5x5 @28 +14 %, 32 -> 96 5x5 @28
          // +7 %, 32 -> 32 7x7 @28 +22 %, 32 -> 128 5x5 @14 +9 %; shorter rows lost (16 channels
          // 3x3 -5-13 %, 8 channels 5x5 -5 %, 24 channels 3x3 stride 2 -3 %). The copy within the
          // scratch cap (the thread keeps the buffer).
          const int64_t L = S * sh.C, Hp = sh.H + p.pad_t + p.pad_b, Wp = sh.W + p.pad_l + p.pad_r;
          const bool rows_gathered = Cg < 48 && runs && L >= 80 && (L > KC || std::min(KC / L, R) <= kGatherRuns);
          // Few channels and a short reduction (C < 8, C*R*S <= 64: RGB first layers), padded: from
          // the zero-padded copy too, so that only a tile across two output rows is copied (rows()),
          // not also every tile at the image's edges (with bounds tests); no gather (its runs would
          // be S * C floats, 9 for a 3x3). Channels_last, two threads, process-alternating A/B:
          // CIFAR's 3 -> 16 3x3 @32, batch 128, 0.77 -> 0.93x torch (time -21 %), 3 -> 32 @64,
          // batch 32, -10 %; VGG's 3 -> 64 @224 even.
          const bool few = G == 1 && runs && sh.C < 8 && CRS <= 64 &&
                           std::max({p.pad_t, p.pad_b, p.pad_l, p.pad_r}) > 0;
          // (Not with negative padding, a transposed convolution's data gradient cropping its
          // output padding: pad_nhwc took it as lengths.)
          if ((rows_gathered || few) && !spaced && std::min({p.pad_t, p.pad_b, p.pad_l, p.pad_r}) >= 0 &&
              nn * Hp * Wp * sh.C <= kScratchCapFloats) {
            float* xpad = workspace<float>(nn * Hp * Wp * sh.C, kConvPadded);
            pad_nhwc(xn, nn, sh.H, sh.W, sh.C, p, xpad, par);
            Conv2dParams q = p;
            q.pad_t = q.pad_b = q.pad_l = q.pad_r = 0;
            const Im2colRows ap{xpad, Hp, Wp, sh.C, Cg, S, sh.Ho, sh.Wo, &q};
            gemm_rows(M, Kg, CRS, &im2col_nhwc_rows, &ap, wp, brs, bcs, yg, sh.K, false, par,
                      &im2col_nhwc_direct, L, rows_gathered ? &im2col_nhwc_gather_rows : nullptr,
                      bp ? bp + g * Kg : nullptr, 0, stream_short(yg), sh.Wo);
            return;
          }
          // Gathered blocks of one filter row (S taps, S >= 3, of 384 floats or more; kGatherKC caps
          // it): each of a tile's rows then reads one run of S * C contiguous floats of x a block
          // (at stride 2 a filter row's taps are neighbouring pixels), where blocks of up to
          // kGatherKC took two or three filter rows. Batch 8 unless said, two threads, channels_last
          // unless said, process-alternating A/B on an Intel Xeon (AVX-512): 3x3 stride 2 256 @28
          // -5-8 % (NCHW -6 %, batch 2 0 %), 256 @56 -4 %, 128 @56 -6 %, 192 -> 320 @35 (valid) -8 %,
          // 512 @14 -2 % (the same 1536 floats); 5x5 96 -> 128 @28 and 160 -> 192 stride 2 even.
          // Shorter rows lost: 64 @112 stride 2 +3 % (192 floats), 48 -> 64 5x5 @56 +3 %.
          gemm_rows(M, Kg, CRS, &im2col_nhwc_rows, &a, wp + g * CRS * Kg, brs, bcs, yg, sh.K, false, par,
                    runs ? &im2col_nhwc_direct : nullptr, gather ? Cg : runs ? S * sh.C : 0,
                    gather ? &im2col_nhwc_gather : nullptr, bp ? bp + g * Kg : nullptr,
                    gather && S >= 3 && S * Cg >= 384 ? S * Cg : 0, stream_short(yg));
          return;
        }
      }
      if (nn > 1) {  // small images stacked into one GEMM (a bounded buffer, see images_per_gemm)
        maybe_parallel_for(par, 0, nn, 1, [&](int64_t ib, int64_t ie) {  // one region, not one an image
          for (int64_t i = ib; i < ie; ++i)
            im2col_nhwc(xn + i * HW * sh.C, sh.H, sh.W, sh.C, g * Cg, Cg, R, S, sh.Ho, sh.Wo, p, col + i * P * CRS,
                        CRS, false);
        });
        return product(M, col, CRS, yg);
      }
      for (int64_t q0 = 0; q0 < P; q0 += rows * sh.Wo) {  // blocks of output rows of one image
        const int64_t q1 = std::min(P, q0 + rows * sh.Wo);
        im2col_nhwc(xn, sh.H, sh.W, sh.C, g * Cg, Cg, R, S, sh.Ho, sh.Wo, p, col, CRS, par, q0, q1);
        product(q1 - q0, col, CRS, yg + q0 * sh.K);
      }
    }
  };
  const int64_t col_elems = (direct && !in_place) || on_the_fly ? 0
                            : nb > 1 || in_place ? nb * CRS * P + (in_place ? Kg * nb * P + nb * sh.C * HW : 0)
                                                 : CRS * rows * sh.Wo;
  run_tasks<T>(ceil_div(N, nb) * G, G, col_elems, task);
}

// ---------------------------------------------------------------- data gradient

// The channels_last float32 data gradient of a strided layer by the phases of dX: the pixels
// (a + stride_h i, b + stride_w j) of dX receive only the taps (r, s) with r = a + pad_t and s = b +
// pad_l modulo the strides, each from dY's pixel (i + dr, j + ds) (dr = (a + pad_t - r) / stride_h),
// so each phase is a stride-1 product over its taps: rows its pixels, columns C, the reduction its
// taps' K channels, dY's pixels gathered where they lie (gemm_rows' gather, a tap's K floats a run,
// zeros where it falls outside dY) and the results written to the phase's pixels of dX (the
// gather's rows of C). No column matrix is written and scattered back (col2im): 29 MB for
// ResNet-50's 128-channel stride-2 3x3 layer at batch 8, written, read and added. Batch 8 unless
// said, two threads, in-process A/B against that path (torch in parentheses): 3x3 stride 2 128 @56
// 4.25 -> 3.76 ms (3.68), 256 @28 3.97 -> 3.69 (4.07), 512 @14 4.32 -> 4.09 (4.67), 64 @112 6.03
// -> 4.42 (4.04), batch 2 256 @28 1.10 -> 0.97 (0.98), NCHW 128 @56 (through channels_last) 5.08
// -> 4.66 (6.73); 32 -> 64 5x5 stride 2 @56 1.80 -> 1.48 (1.31).
constexpr int64_t kPhaseMaxTaps = 64;
struct PhaseRows {
  const float* gy;  // dY, NHWC (its group's first channel)
  int64_t K, Ho, Wo, H, W;  // dY's channels (a group's) and size, dX's size
  int64_t a, b, sth, stw, Hp, Wp;  // the phase, the strides, its pixel grid
  int64_t taps;
  int64_t dr[kPhaseMaxTaps], ds[kPhaseMaxTaps];  // each tap's offset into dY from (i, j)
  int64_t ldy;  // dY's pixels' stride (all its channels)
};

int phase_rows_gather(const void* ctx, int64_t i, int64_t count, int64_t k0, int64_t kc, const float* (*at)[16],
                      int64_t* crow) {
  const PhaseRows& a = *static_cast<const PhaseRows*>(ctx);
  const int64_t tap0 = k0 / a.K, c0 = k0 - tap0 * a.K;
  int64_t runs = 1;
  if (c0 + kc > a.K) {
    if (c0 != 0 || kc % a.K != 0 || kc / a.K > kGatherRuns) return 0;
    runs = kc / a.K;
  }
  const int64_t P = a.Hp * a.Wp, n0 = i / P, i0 = (i - n0 * P) / a.Wp, j0 = i - n0 * P - i0 * a.Wp;
  const float* zeros = gemm_zero_row();
  for (int64_t t = 0; t < runs; ++t) {
    const int64_t dr = a.dr[tap0 + t], ds = a.ds[tap0 + t];
    int64_t n = n0, pi = i0, pj = j0;
    for (int64_t r = 0; r < count; ++r) {
      const int64_t ho = pi + dr, wo = pj + ds;
      at[t][r] = ho >= 0 && ho < a.Ho && wo >= 0 && wo < a.Wo ? a.gy + ((n * a.Ho + ho) * a.Wo + wo) * a.ldy + c0
                                                              : zeros;
      if (t == 0) crow[r] = (n * a.H + a.a + a.sth * pi) * a.W + a.b + a.stw * pj;
      if (++pj == a.Wp) {
        pj = 0;
        if (++pi == a.Hp) pi = 0, ++n;
      }
    }
  }
  return int(runs);
}

// The same rows copied (gemm_rows' fallback; the gather above finds every block of whole taps or
// pieces of one, as gemm_rows makes them for seg_len = K).
void phase_rows_copy(const void* ctx, int64_t i, int64_t count, int64_t k0, int64_t kc, float* dst) {
  const PhaseRows& a = *static_cast<const PhaseRows*>(ctx);
  const int64_t P = a.Hp * a.Wp;
  for (int64_t r = 0; r < count; ++r) {
    const int64_t q = i + r, n = q / P, pi = (q - n * P) / a.Wp, pj = q - n * P - pi * a.Wp;
    for (int64_t k = k0; k < k0 + kc;) {
      const int64_t tap = k / a.K, c = k - tap * a.K, len = std::min(a.K - c, k0 + kc - k);
      const int64_t ho = pi + a.dr[tap], wo = pj + a.ds[tap];
      float* d = dst + r * kc + (k - k0);
      if (ho >= 0 && ho < a.Ho && wo >= 0 && wo < a.Wo)
        std::memcpy(d, a.gy + ((n * a.Ho + ho) * a.Wo + wo) * a.ldy + c, len * sizeof(float));
      else
        std::fill(d, d + len, 0.f);
      k += len;
    }
  }
}

// Taken for dilation 1, a stride that the kernel covers (every phase has a tap) and K >= 8 (a
// group's: groups of 8 channels or more that grouped.cpp's kernels do not take, channels_last:
// grouped_phase_rows), with at most kPhaseMaxTaps taps a phase, and 256 pixels a phase or more:
// with fewer, each thread packing every phase's weights cost more than the column matrix saved
// (batch 2, NCHW, in-process A/B: 192 -> 320 3x3 stride 2 @17 (valid) 0.60 -> 0.70 ms, 512 @14
// 1.81 -> 1.93). (It had wanted K >= 48, a tap's run long enough to gather; shorter runs still beat the
// column matrix and its scalar col2im. Channels_last, 3x3 stride 2 unless said, process-
// alternating A/B, ratio to torch before -> after: CIFAR's 16 -> 32 @32, batch 128, 0.59 -> 0.77
// (NCHW 0.91 -> 1.15), 64 -> 32 @56 0.67 -> 0.90, 96 -> 32 @28 1.01 -> 1.30, 16 -> 32 @112 0.50
// -> 0.61, 8 -> 16 @112 0.40 -> 0.49, 16 -> 16 5x5 @56 0.42 -> 0.66, 32 -> 8 @28 0.77 -> 0.79.)
bool phase_rows_data_grad(const Conv2dShape& sh, const Conv2dParams& p) {
  return (p.stride_h > 1 || p.stride_w > 1) && p.dil_h == 1 && p.dil_w == 1 &&
         (p.groups == 1 || (sh.Cg >= 8 && !grouped::data_grad_applicable(sh, p))) &&
         sh.N * sh.H * sh.W >= 256 * p.stride_h * p.stride_w &&
         sh.R >= p.stride_h && sh.S >= p.stride_w && sh.Kg >= 8 &&
         ceil_div(sh.R, p.stride_h) * ceil_div(sh.S, p.stride_w) <= kPhaseMaxTaps;
}

// gx [N][H][W][C] = (bias +) the data gradient of dY [N][Ho][Wo][K] through the channels_last
// weight w [K][R][S][Cg]; groups one product a phase and group, dX's and dY's pixels read and
// written where they lie among the other groups' channels.
void phase_rows_dgrad(const float* gy, const float* w, const float* bias, float* gx, const Conv2dShape& sh,
                      const Conv2dParams& p) {
  const int64_t C = sh.C, Cg = sh.Cg, K = sh.Kg, sth = p.stride_h, stw = p.stride_w;
  if (bias)
    at::parallel_for(0, sh.N * sh.H * sh.W, 1024, [&](int64_t b, int64_t e) {
      for (int64_t q = b; q < e; ++q) std::copy(bias, bias + C, gx + q * C);
    });
  // each phase's B [taps * Kg][Cg] of group g: row (t, k) = w[g Kg + k][r_t][s_t][:]
  float* bw = thread_buffer<float>(kLayoutRotated, sh.R * sh.S * K * Cg);
  for (int64_t g = 0; g < p.groups; ++g)
  for (int64_t a = 0; a < sth; ++a)
    for (int64_t b = 0; b < stw; ++b) {
      PhaseRows ph{gy + g * K, K, sh.Ho, sh.Wo, sh.H, sh.W, a, b, sth, stw, 0, 0, 0, {}, {}, sh.K};
      ph.Hp = sh.H > a ? ceil_div(sh.H - a, sth) : 0;
      ph.Wp = sh.W > b ? ceil_div(sh.W - b, stw) : 0;
      if (ph.Hp == 0 || ph.Wp == 0) continue;
      // tap r serves the phase where a + pad_t - r is a multiple of the stride (dr = that / stride,
      // exact for negative multiples too)
      for (int64_t r = 0; r < sh.R; ++r) {
        const int64_t u = a + p.pad_t - r;
        if (u % sth != 0) continue;
        for (int64_t q = 0; q < sh.S; ++q) {
          const int64_t v = b + p.pad_l - q;
          if (v % stw != 0) continue;
          const int64_t t = ph.taps++;
          ph.dr[t] = u / sth;
          ph.ds[t] = v / stw;
          at::parallel_for(0, K, 64, [&](int64_t kb, int64_t ke) {
            for (int64_t k = kb; k < ke; ++k)
              std::memcpy(bw + (t * K + k) * Cg, w + (((g * K + k) * sh.R + r) * sh.S + q) * Cg, Cg * sizeof(float));
          });
        }
      }
      gemm_rows(sh.N * ph.Hp * ph.Wp, Cg, ph.taps * K, &phase_rows_copy, &ph, bw, Cg, 1, gx + g * Cg, C,
                bias != nullptr, true, nullptr, K, &phase_rows_gather);
    }
}

// A strided data gradient with few channels by scatter: each output row's pixels of dY, a
// register tile of them at a time, times the channels_last weight's tap (r, s) ([K][C] of
// [K][R][S][C]) added by the tile itself into the dX pixels that tap reaches (stride * C floats
// apart along a row), the reduction K steps long. dX is made zero-padded (no pixel of a tile falls
// outside it) an image at a time in the thread's buffer, its rows set to zero just before the
// first tile that adds to them, then copied out (with the bias). Whole images a thread, each added
// to in its pixels' order: no dependence on the thread count.
// The phases' products (phase_rows_dgrad) gathered a run of K floats a tap and row, whose
// bookkeeping outweighed reductions that short (a phase's taps times K); the column matrix (the
// NHWC path below) went through memory. Taken for 16 or 32 channels, up to 9 taps and K up to the
// tile's reduction block (256), a stride of 2 or more, two images or more (a padded image within
// the scratch cap). Channels_last, 3x3 stride 2
// unless said, two threads, process-alternating A/B on the Intel Xeon, time before -> after:
// CIFAR's 16 -> 32 @32 (batch 128) -35 % (0.75 -> 1.13x torch; NCHW -20 %), 32 -> 64 @16 -12 %,
// 1x1 16 -> 32 -40 % (0.89 -> 1.57x); batch 8: 32 -> 128 @56 -8 %, 32 -> 256 -9 %, 32 -> 64 1x1
// -10 %, 16 -> 32 @112 -3.5 %, 32 -> 64 @112 -5 %. Not more channels or taps: 64 -> 32 @56 +7 %
// (the 6 x 64 tile), 64 -> 128 1x1 +21 %, 48 -> 96 @56 +79 % (16-row tiles, their partial last
// ones on 28 pixels through a packed copy), 16 -> 32 5x5 @56 +44 % (25 products of 32 steps a tile).
bool scatter_data_grad(const Conv2dShape& sh, const Conv2dParams& p) {
  return (p.stride_h > 1 || p.stride_w > 1) && p.groups == 1 && (sh.C == 16 || sh.C == 32) &&
         sh.R * sh.S <= 9 && sh.K <= micro_tile_whole_cols(sh.C).KC && sh.N >= 2 &&
         std::min({p.pad_t, p.pad_b, p.pad_l, p.pad_r}) >= 0 &&
         (sh.H + p.pad_t + p.pad_b) * (sh.W + p.pad_l + p.pad_r) * sh.C <= kScratchCapFloats;  // a padded image
}

void scatter_dgrad(const float* gy, const float* w, const float* bias, float* gx, const Conv2dShape& sh,
                   const Conv2dParams& p) {
  const int64_t C = sh.C, K = sh.K, RS = sh.R * sh.S, Ho = sh.Ho, Wo = sh.Wo;
  const MicroTile mt = micro_tile_whole_cols(C);
  const int64_t MR = mt.MR, NR = mt.NR, cp = C / NR;
  // B's panels [R * S][C / NR][K][NR]: tap t's weights [K][C] in panels of NR columns
  float* bp = thread_buffer<float>(kLayoutRotated, RS * C * K);
  for (int64_t t = 0; t < RS; ++t)
    for (int64_t u = 0; u < cp; ++u)
      for (int64_t k = 0; k < K; ++k)
        std::memcpy(bp + ((t * cp + u) * K + k) * NR, w + (k * RS + t) * C + u * NR, NR * sizeof(float));
  const int64_t Hp = sh.H + p.pad_t + p.pad_b, Wp = sh.W + p.pad_l + p.pad_r, row = Wp * C;
  at::parallel_for(0, sh.N, 1, [&](int64_t nb, int64_t ne) {
    float* xp = thread_buffer<float>(kConvPadded, Hp * row);
    for (int64_t n = nb; n < ne; ++n) {
      int64_t ready = 0;  // rows of xp set to zero
      for (int64_t ho = 0; ho < Ho; ++ho) {
        const int64_t end = std::min(Hp, ho * p.stride_h + (sh.R - 1) * p.dil_h + 1);
        if (end > ready) std::fill(xp + ready * row, xp + end * row, 0.f), ready = end;
        for (int64_t wo = 0; wo < Wo; wo += MR) {
          const int64_t mr = std::min(MR, Wo - wo);
          const float* a = gy + ((n * Ho + ho) * Wo + wo) * K;
          for (int64_t t = 0; t < RS; ++t) {
            float* c = xp + (ho * p.stride_h + t / sh.S * p.dil_h) * row + (wo * p.stride_w + t % sh.S * p.dil_w) * C;
            for (int64_t u = 0; u < cp; ++u)
              micro_tile_product_a_rows<float>(mt, K, a, K, bp + (t * cp + u) * K * NR, c + u * NR,
                                               p.stride_w * C, mr, true);
          }
        }
      }
      if (ready < Hp) std::fill(xp + ready * row, xp + Hp * row, 0.f);
      float* gxn = gx + n * sh.H * sh.W * C;
      for (int64_t h = 0; h < sh.H; ++h) {
        const float* src = xp + (h + p.pad_t) * row + p.pad_l * C;
        float* dst = gxn + h * sh.W * C;
        if (bias)
          for (int64_t x = 0; x < sh.W; ++x)
            for (int64_t c = 0; c < C; ++c) dst[x * C + c] = src[x * C + c] + bias[c];
        else
          std::memcpy(dst, src, sh.W * C * sizeof(float));
      }
    }
  });
}

template <typename T>
void backward_input_impl(const at::Tensor& gy, const at::Tensor& w, const T* bias, const Conv2dShape& sh,
                         const Conv2dParams& p, bool nhwc, at::Tensor& gx) {
  const int64_t N = sh.N, G = p.groups, Cg = sh.Cg, Kg = sh.Kg, R = sh.R, S = sh.S;
  const int64_t HW = sh.H * sh.W, P = sh.Ho * sh.Wo, CRS = Cg * R * S;
  const bool direct = p.is_pointwise_identity(R, S);
  const T* gyp = gy.const_data_ptr<T>();
  T* gxp = gx.mutable_data_ptr<T>();
  if constexpr (std::is_same_v<T, float>) {
    if (nhwc && scatter_data_grad(sh, p)) {
      const at::Tensor wk = to_format_scratch(w, at::MemoryFormat::ChannelsLast, kLayoutWeight);
      return scatter_dgrad(gyp, wk.const_data_ptr<float>(), bias, gxp, sh, p);
    }
    if (nhwc && phase_rows_data_grad(sh, p)) {
      const at::Tensor wk = to_format_scratch(w, at::MemoryFormat::ChannelsLast, kLayoutWeight);
      return phase_rows_dgrad(gyp, wk.const_data_ptr<float>(), bias, gxp, sh, p);
    }
  }

  // NCHW: W_g^T is a strided view of [K, Cg*R*S]. NHWC: W as [G, Kg, R*S*Cg].
  // (W as [G, Kg, R*S*Cg] is the channels_last weight's memory; a copy goes into scratch memory)
  const at::Tensor wk =
      to_format_scratch(w, nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous, kLayoutWeight);
  const T* wp = wk.const_data_ptr<T>();

  // NCHW, one group: W^T packed once for all images, and images under 256 pixels several to a
  // product (as in the forward).
  const bool packed = !nhwc && G == 1;
  const int64_t nb = nhwc ? images_per_gemm(N, P, CRS, G, true)
                          : images_per_gemm(N, P, direct ? 0 : CRS, G, packed && P < 256, int64_t(1) << 20);
  const PackedA<T> wpack = packed ? pack_a_once<T>(CRS, Kg, wp, 1, CRS, nb * P) : PackedA<T>{};
  // NHWC, one group: W [Kg, CRS] is B of every chunk's product; packed once.
  const PackedB<T> wpack_b = nhwc && G == 1 ? pack_b_once<T>(Kg, CRS, wp, CRS, 1, nb * P) : PackedB<T>{};
  auto task = [&](int64_t chunk, int64_t g, T* col, bool par) {
    const int64_t n = chunk * nb;
    if (!nhwc) {
      const int64_t nn = std::min(nb, N - n);
      const T* gyg = gyp + (n * sh.K + g * Kg) * P;
      T* gxg = gxp + (n * sh.C + g * Cg) * HW;
      // out [CRS, nn * P] (+)= A dY, A = W_g^T [CRS, Kg] (element (crs, k) at k*CRS + crs); out's
      // image i at out + i * image, row stride ldo.
      auto product = [&](T* out, int64_t ldo, int64_t image, bool acc) {
        if (wpack.data)
          gemm_packed_a<T>(wpack, nn * P, BatchCols{P, sh.K * P, image}, gyg, P, out, ldo, acc, par);
        else
          gemm<T>(CRS, P, Kg, wp + g * Kg * CRS, 1, CRS, gyg, P, 1, out, ldo, 1, acc, par);
      };
      if (direct) {
        if (bias)
          for (int64_t i = 0; i < nn; ++i)
            for (int64_t c = 0; c < Cg; ++c)
              std::fill(gxg + (i * sh.C + c) * HW, gxg + (i * sh.C + c + 1) * HW, bias[g * Cg + c]);
        product(gxg, HW, sh.C * HW, bias != nullptr);
      } else {
        product(col, nn * P, P, false);  // col [CRS, nn * P]: the images side by side
        maybe_parallel_for(par && nn > 1, 0, nn, 1, [&](int64_t ib, int64_t ie) {
          for (int64_t i = ib; i < ie; ++i)
            col2im_nchw(col + i * P, sh.H, sh.W, Cg, R, S, sh.Ho, sh.Wo, p, gxg + i * sh.C * HW,
                        bias ? bias + g * Cg : nullptr, par && nn == 1, nn * P);
        });
      }
    } else {
      const int64_t nn = std::min(nb, N - n), M = nn * P;
      const T* gyg = gyp + n * P * sh.K + g * Kg;
      T* gxn = gxp + n * HW * sh.C;
      // out [M, CRS] (row stride ldo) (+)= dY W_g
      auto product = [&](T* out, int64_t ldo, bool acc) {
        if (wpack_b.data)
          gemm_packed_b<T>(M, gyg, sh.K, 1, wpack_b, out, ldo, 1, acc, par);
        else
          gemm<T>(M, CRS, Kg, gyg, sh.K, 1, wp + g * Kg * CRS, CRS, 1, out, ldo, 1, acc, par);
      };
      if (direct) {
        if (bias)
          for (int64_t q = 0; q < M; ++q) std::copy(bias + g * Cg, bias + (g + 1) * Cg, gxn + q * sh.C + g * Cg);
        product(gxn + g * Cg, sh.C, bias != nullptr);
      } else {
        product(col, CRS, false);
        maybe_parallel_for(par && nn > 1, 0, nn, 1, [&](int64_t ib, int64_t ie) {  // one region, not one an image
          for (int64_t i = ib; i < ie; ++i)
            col2im_nhwc(col + i * P * CRS, sh.H, sh.W, sh.C, g * Cg, Cg, R, S, sh.Ho, sh.Wo, p, gxn + i * HW * sh.C,
                        bias, par && nn == 1);
        });
      }
    }
  };
  run_tasks<T>(ceil_div(N, nb) * G, G, direct ? 0 : nb * CRS * P, task);
}

// ---------------------------------------------------------------- weight gradient

// The channels_last float32 weight gradient at stride 1 (any kernel size,
// dilation and padding), with no im2col: the input is zero-padded once into
// xpad [N][Hp][Wp][C] (Hp = H + pad_t + pad_b, Wp = W + pad_l + pad_r), the
// output pixels are counted on that padded grid (q = (n*Hp + ho)*Wp + wo,
// dY taken as 0 where ho >= Ho or wo >= Wo), and then tap (r, s)'s block of
// im2col columns is xpad itself read from pixel q + r*dh*Wp + s*dw: the
// micro-kernel reads it in place (rows C apart), and dY^T, packed once a
// chunk of pixels, serves all taps. Work units are (group, tap, column panel),
// split between the threads in contiguous ranges; each unit sums the chunks in
// order, so the result does not depend on the thread count.
void wgrad_nhwc_shifted(const float* x, const float* gy, float* gw, const Conv2dShape& sh, const Conv2dParams& p) {
  const MicroTile mt = micro_tile_for_rows<float>(sh.Kg);
  const int64_t MR = mt.MR, NR = mt.NR, KC = mt.KC;
  const int64_t C = sh.C, K = sh.K, Cg = sh.Cg, Kg = sh.Kg, R = sh.R, S = sh.S, G = p.groups, CRS = Cg * R * S;
  const int64_t Hp = sh.H + p.pad_t + p.pad_b, Wp = sh.W + p.pad_l + p.pad_r, L = sh.N * Hp * Wp;
  const int64_t tail = ((R - 1) * p.dil_h * Wp + (S - 1) * p.dil_w + 1) * C + NR;
  float* xpad = workspace<float>(L * C + tail, kConvPadded);
  pad_nhwc(x, sh.N, sh.H, sh.W, C, p, xpad, true);
  std::fill(xpad + L * C, xpad + L * C + tail, 0.f);

  const int64_t mp = ceil_div(Kg, MR), np = ceil_div(Cg, NR), units = G * R * S * np;
  at::parallel_for(0, units, 1, [&](int64_t b, int64_t e) {
    float* ap = workspace<float>(mp * MR * KC);
    alignas(64) float tile[12 * 32];
    for (int64_t q0 = 0; q0 < L; q0 += KC) {
      const int64_t kc = std::min(KC, L - q0);
      int64_t packed_g = -1;
      for (int64_t u = b; u < e; ++u) {
        const int64_t g = u / (R * S * np), tap = (u / np) % (R * S), jp = u % np;
        if (g != packed_g) {  // dY^T [Kg, kc] of group g in row panels [mp][kc][MR]
          for (int64_t q = 0; q < kc; ++q) {
            const int64_t qq = q0 + q, n = qq / (Hp * Wp), ho = (qq / Wp) % Hp, wo = qq % Wp;
            const bool valid = ho < sh.Ho && wo < sh.Wo;
            const float* src = gy + ((n * sh.Ho + ho) * sh.Wo + wo) * K + g * Kg;
            for (int64_t ip = 0; ip < mp; ++ip) {
              float* d = ap + (ip * kc + q) * MR;
              const int64_t k0 = ip * MR, kn = valid ? std::min(MR, Kg - k0) : 0;
              for (int64_t i = 0; i < kn; ++i) d[i] = src[k0 + i];
              for (int64_t i = kn; i < MR; ++i) d[i] = 0.f;
            }
          }
          packed_g = g;
        }
        const int64_t r = tap / S, s = tap % S, c0 = jp * NR, nc = std::min(NR, Cg - c0);
        const float* bsrc = xpad + (q0 + r * p.dil_h * Wp + s * p.dil_w) * C + g * Cg + c0;
        float* gwt = gw + g * Kg * CRS + tap * Cg + c0;
        const bool add = q0 > 0;
        for (int64_t ip = 0; ip < mp; ++ip) {
          const int64_t mr = std::min(MR, Kg - ip * MR);
          float* c = gwt + ip * MR * CRS;
          if (nc == NR) {
            micro_tile_product_b_rows<float>(mt, kc, ap + ip * kc * MR, bsrc, C, c, CRS, mr, add);
            continue;
          }
          micro_tile_product_b_rows<float>(mt, kc, ap + ip * kc * MR, bsrc, C, tile, NR, mr, false);
          for (int64_t i = 0; i < mr; ++i)
            for (int64_t j = 0; j < nc; ++j) c[i * CRS + j] = add ? c[i * CRS + j] + tile[i * NR + j] : tile[i * NR + j];
        }
      }
    }
  });
}

// The channels_last float32 weight gradient of group g over output pixels
// [q0, q1) (counted over the whole batch: q = n*Ho*Wo + pixel), columns
// [j0, j1) of dW [Kg, CRS] (column (r*S + s)*Cg + c), written to out (row
// stride CRS, column j0 at out + j0) on the GEMM's register tile with both
// operands packed here: for each chunk of KC pixels (images run together, so
// small images still make long chunks), dY^T's rows go into the tile's row
// panels and the im2col is written straight into its column panels (no im2col
// matrix, no second packing pass). Serial; the chunks are summed in order.
constexpr int64_t kMaxKC = 512;

void wgrad_nhwc_tiles(const float* x, const float* gy, float* out, const Conv2dShape& sh, const Conv2dParams& p,
                      int64_t g, int64_t j0, int64_t j1, int64_t q0, int64_t q1) {
  // Up to 256 columns, an odd number of 16 (and rows of 16): AVX-512's 16 x 16 tile, not the 32
  // columns' with a half-empty last panel (Intel Xeon, batch 8, process-alternating A/B, 12 x 32 ->
  // 16 x 16: 16 -> 96 1x1 @112 3.32 -> 2.11 ms (torch 1.76), 48 -> 288 @56 4.64 -> 3.38, 16 -> 64
  // @56 0.70 -> 0.50; 80 -> 480 @14 -10 %, 112 -> 672 -4 %, 144 -> 48 @28 -5 %, 208 -> 48 -10 %)
  const MicroTile mt = j1 - j0 <= 256 ? micro_tile_for_cols<float>(sh.Kg, j1 - j0) : micro_tile_for_rows<float>(sh.Kg);
  const int64_t MR = mt.MR, NR = mt.NR, KC = mt.KC;
  const int64_t Cg = sh.Cg, Kg = sh.Kg, S = sh.S, CRS = Cg * sh.R * S, P = sh.Ho * sh.Wo;
  const int64_t mp = ceil_div(Kg, MR), np = ceil_div(j1 - j0, NR);
  const bool a_in_place = Kg % MR == 0;  // dY^T's row panels read where they are
  float* ap = workspace<float>(mp * MR * KC + np * NR * KC);
  float* bp = ap + mp * MR * KC;
  alignas(64) float tile[12 * 32];
  // Columns [j0, j1) as runs of one tap's channels within one column panel.
  struct Run {
    int64_t dh, dw, c, panel, pos, len;
  };
  std::vector<Run> runs;
  for (int64_t j = j0; j < j1;) {
    const int64_t tap = j / Cg, tap_end = std::min(j1, (tap + 1) * Cg), pos = (j - j0) % NR;
    const int64_t len = std::min(NR - pos, tap_end - j);
    runs.push_back({(tap / S) * p.dil_h, (tap % S) * p.dil_w, j - tap * Cg, (j - j0) / NR, pos, len});
    j += len;
  }
  // Runs that continue one another in memory as well as in the panel (one group, dilation 1: a
  // filter row's taps are S * C consecutive floats, 9 for a 3-channel first layer) merged into
  // one, copied at once where all its pixels are inside the image; runs[first, first + n) are
  // its pieces, for the edges. (VGG's first layer, channels_last, 224x224: its 27 columns went
  // as 9 copies of 3 floats a pixel; its weight gradient ran at 0.46x torch.)
  struct Merged {
    int64_t first, n, len;
  };
  std::vector<Merged> merged;
  for (int64_t i = 0; i < int64_t(runs.size()); ++i) {
    const Run &u = runs[i];
    if (!merged.empty()) {
      Merged& m = merged.back();
      const Run& f = runs[m.first];
      const Run& v = runs[i - 1];
      if (Cg == sh.C && p.dil_w == 1 && u.dh == f.dh && u.dw == v.dw + 1 && u.panel == f.panel &&
          u.pos == v.pos + v.len && v.c + v.len == Cg && u.c == 0) {
        ++m.n, m.len += u.len;
        continue;
      }
    }
    merged.push_back({i, 1, u.len});
  }
  int64_t pix_x[kMaxKC], pix_h[kMaxKC], pix_w[kMaxKC];
  TORCH_INTERNAL_ASSERT(KC <= kMaxKC);
  for (int64_t c0q = q0; c0q < q1; c0q += KC) {
    const int64_t kc = std::min(KC, q1 - c0q);
    // A: dY^T [Kg, kc] in row panels [mp][kc][MR] (dY's pixels are consecutive across images);
    // B: im2col rows (pixels) in column panels [np][kc][NR], a tap's channels copied as runs
    // within a panel. Both loops compiled for the CPU's widest ISA (isa_each.h).
    // (whole row panels read dY in place: a pixel's MR channels are MR consecutive floats, K
    // apart from the next pixel's; packing them took twice the products' time in VGG's first
    // layer, whose dY is 64 channels of 224x224)
    if (!a_in_place)
      each(0, kc, [&](int64_t q) CONVX_ALWAYS_INLINE {
        const float* src = gy + (c0q + q) * sh.K + g * Kg;
        for (int64_t ip = 0; ip < mp; ++ip) {
          const int64_t k0 = ip * MR, kn = std::min(MR, Kg - k0);
          float* d = ap + (ip * kc + q) * MR;
          for (int64_t i = 0; i < kn; ++i) d[i] = src[k0 + i];
          for (int64_t i = kn; i < MR; ++i) d[i] = 0.f;
        }
      });
    int64_t pn = c0q / P, ph = (c0q % P) / sh.Wo, pw = c0q % sh.Wo;  // the chunk's pixels, counted on
    for (int64_t q = 0; q < kc; ++q) {                                // (no divisions per pixel and tap)
      pix_x[q] = pn * sh.H * sh.W * sh.C + g * Cg;
      pix_h[q] = ph * p.stride_h - p.pad_t;
      pix_w[q] = pw * p.stride_w - p.pad_l;
      if (++pw == sh.Wo) {
        pw = 0;
        if (++ph == sh.Ho) ph = 0, ++pn;
      }
    }
    each(0, kc, [&](int64_t q) CONVX_ALWAYS_INLINE {
      const float* xn = x + pix_x[q];
      for (const Merged& m : merged) {
        const Run& f = runs[m.first];
        const int64_t h = pix_h[q] + f.dh, w = pix_w[q] + f.dw;
        if (h >= 0 && h < sh.H && w >= 0 && w + m.n - 1 < sh.W) {
          copy_run(bp + f.panel * kc * NR + q * NR + f.pos, xn + (h * sh.W + w) * sh.C + f.c, m.len);
          continue;
        }
        for (int64_t i = m.first; i < m.first + m.n; ++i) {
          const Run& u = runs[i];
          const int64_t hu = pix_h[q] + u.dh, wu = pix_w[q] + u.dw;
          float* d = bp + u.panel * kc * NR + q * NR + u.pos;
          if (hu >= 0 && hu < sh.H && wu >= 0 && wu < sh.W) {
            const float* sp = xn + (hu * sh.W + wu) * sh.C + u.c;
            for (int64_t k = 0; k < u.len; ++k) d[k] = sp[k];
          } else {
            for (int64_t k = 0; k < u.len; ++k) d[k] = 0.f;
          }
        }
      }
      if (const int64_t used = (j1 - j0) % NR; used != 0) {
        float* d = bp + ((np - 1) * kc + q) * NR;
        for (int64_t i = used; i < NR; ++i) d[i] = 0.f;
      }
    });
    const bool add = c0q > q0;
    for (int64_t jp = 0; jp < np; ++jp) {
      const int64_t c0 = j0 + jp * NR, nc = std::min(NR, j1 - c0);
      for (int64_t ip = 0; ip < mp; ++ip) {
        const int64_t mr = std::min(MR, Kg - ip * MR);
        float* c = out + ip * MR * CRS + c0;
        if (a_in_place) {
          const float* a = gy + c0q * sh.K + g * Kg + ip * MR;
          const float* b = bp + jp * kc * NR;
          if (nc == NR) {
            micro_tile_product_runs<float>(mt, 1, kc, a, sh.K, 0, b, NR, 0, c, CRS, add);
            continue;
          }
          micro_tile_product_runs<float>(mt, 1, kc, a, sh.K, 0, b, NR, 0, tile, NR, false);
          for (int64_t i = 0; i < MR; ++i)
            for (int64_t j = 0; j < nc; ++j) c[i * CRS + j] = add ? c[i * CRS + j] + tile[i * NR + j] : tile[i * NR + j];
          continue;
        }
        if (nc == NR) {
          micro_tile_product<float>(mt, kc, ap + ip * kc * MR, bp + jp * kc * NR, c, CRS, mr, add);
          continue;
        }
        micro_tile_product<float>(mt, kc, ap + ip * kc * MR, bp + jp * kc * NR, tile, NR, mr, false);
        for (int64_t i = 0; i < mr; ++i)
          for (int64_t j = 0; j < nc; ++j) c[i * CRS + j] = add ? c[i * CRS + j] + tile[i * NR + j] : tile[i * NR + j];
      }
    }
  }
}

// dW summed in `chunks` parts: each part's copy of dW (dw floats; the first is gw
// itself when there is one part), then the copies added in part order into gw.
struct ChunkCopies {
  at::Tensor partial;
  float* data;
  int64_t chunks, dw;
  ChunkCopies(float* gw, int64_t chunks_, int64_t dw_) : data(gw), chunks(chunks_), dw(dw_) {
    if (chunks > 1) {
      partial = at::empty({chunks * dw}, at::kFloat);
      data = partial.data_ptr<float>();
    }
  }
  void sum_into(float* gw) const {
    if (chunks <= 1) return;
    at::parallel_for(0, dw, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        float sum = data[i];
        for (int64_t c = 1; c < chunks; ++c) sum += data[c * dw + i];
        gw[i] = sum;
      }
    });
  }
};

// The channels_last float32 weight gradient with both operands read in place:
// for a tap (r, s), the output pixels whose input pixel lies inside the image
// form a rectangle of rows, and along those rows dY's and X's pixels step by K
// and stride*C floats (the rows by Wo*K and stride*W*C), so the register tile
// reads dY[.., k0:k0+MR] and X[.., c0:c0+NR] where they are, a run a row, with
// no im2col, no padding's pixels computed and nothing packed. Whole tiles only
// (Kg a multiple of the tile's rows, Cg of its columns), and steps under 2 KiB
// (stride_w * C, K < 512 floats): with rows further apart every step of the tile is on a
// new page, and the packed paths measured faster (ResNet-50's 1024 -> 256 1x1
// @14: 1.19x torch packed, 0.93x in place); at exactly 2 KiB (512 channels)
// a step's lines fall in two of L1's 64 sets and the packed paths won too
// (batch 8: 512 -> 128 1x1 @28 2.88 -> 2.61 ms, 128 -> 512 3.06 -> 2.84,
// 512 -> 256 5.70 -> 4.82, 512 3x3 @14 23.1 -> 20.8; torch 2.3, 2.4, 4.3, 19.0).
// A 1x1 layer reads in place up to 256 channels (steps of 1 KiB): from 288 the packed paths won
// (Intel Xeon, batch 8, process-alternating A/B, in place -> packed: 288 @28 3.78 -> 3.55 ms,
// 320 @28 4.64 -> 4.51, 384 @28 6.63 -> 6.19, 384 @14 1.82 -> 1.57, 320 @56 24.1 -> 22.3),
// where 96 @56 (1.71 -> 1.95) and 256 -> 128 @56 (6.86 -> 7.57) kept it.
// The same at stride 2 from 256 channels, X's step 2 KiB (then wgrad_nhwc_tiled; batch 8 unless
// said, two threads, in-process A/B, torch in parentheses): 3x3 256 @28 4.76 -> 4.01 ms (4.69),
// batch 2 1.18 -> 1.00 (1.35), 256 @56 21.1 -> 20.3 (28.5).
// The register tile of wgrad_nhwc_in_place: micro_tile_for_cols' (micro_tile_for_rows', or on
// AVX-512 the 8 x 48 or 16 x 16 tile where those fill whole tiles and the 32 columns do not).
// Before, one group took micro_tile_for_rows' alone, and 48, 80, 144 or 240 input channels went
// through the tiles path's packed panels. Batch 8, channels_last, two threads, Intel Xeon,
// process-alternating A/B, 1x1 (torch): 144 -> 24 @56 1.62 -> 0.88 ms (1.07), 240 -> 40 @28
// 0.85 -> 0.59 (0.76), 48 -> 288 @56 3.86 -> 2.61 (2.8), 48 -> 16 @112 1.72 -> 0.81 (1.0), 16 -> 96
// @112 2.21 -> 1.62 (1.8), 144 -> 48 @28 0.64 -> 0.45; 3x3 80 -> 160 @14 -6 %, 48 @14 -8 %, 112 ->
// 224 @14 -4 %, 16 -> 32 @28 -6 %, 5x5 16 -> 48 @14 -4 % (from the filter-row path); no layer slower.
MicroTile wgrad_tile(const Conv2dShape& sh, const Conv2dParams&) { return micro_tile_for_cols<float>(sh.Kg, sh.Cg); }
bool wgrad_whole_tiles(const Conv2dShape& sh, const Conv2dParams& p) {
  const MicroTile mt = wgrad_tile(sh, p);
  return sh.Kg % mt.MR == 0 && sh.Cg % mt.NR == 0;
}
bool wgrad_in_place(const Conv2dShape& sh, const Conv2dParams& p) {
  const bool pointwise = sh.R == 1 && sh.S == 1;
  return wgrad_whole_tiles(sh, p) && p.stride_w * sh.C <= (pointwise ? 256 : 511) && sh.K < 512;
}

// Where each group's pixels are for wgrad_nhwc_in_place: pixel q of group g of X at
// x + g * x_grp + q * x_pix, of dY at gy + g * y_grp + q * y_pix (floats).
struct GroupLayout {
  int64_t x_pix, x_grp, y_pix, y_grp;
};
GroupLayout interleaved_groups(const Conv2dShape& sh) { return {sh.C, sh.Cg, sh.K, sh.Kg}; }

// Units: (group, tap, block of up to 256 rows of dW, block of up to 256 columns),
// and the output rows cut into chunks (each summed into its own copy of dW, the
// copies added in chunk order) while there are fewer than 8 units: all from the
// shape alone, so the result does not depend on the thread count. Within a unit,
// about 128 output pixels (whole output rows) at a time: each of X's column panels
// meets every row panel of dY while in L1, and a tile's steps touch fewer pages than
// the L1 TLB holds (256 pixels of a 256-channel dY were 64 pages; 128 measured
// 0.96 -> 0.80 ms for 64 -> 64 1x1 @56, batch 8, within noise elsewhere).
void wgrad_nhwc_in_place(const float* x, const float* gy, float* gw, const Conv2dShape& sh, const Conv2dParams& p,
                         const GroupLayout& gl) {
  const MicroTile mt = wgrad_tile(sh, p);
  const int64_t MR = mt.MR, NR = mt.NR, G = p.groups, Kg = sh.Kg, Cg = sh.Cg, RS = sh.R * sh.S;
  const int64_t rows = sh.N * sh.Ho, ldc = RS * Cg;
  constexpr int64_t kUnits = 8, kMinRows = 4, kBlock = 256, kPixels = 128;
  constexpr int64_t kTapsInnerChunks = 16, kTapsInnerRows = 16;
  // blocks of up to kBlock rows and columns, the rows (columns) cut evenly: 320 channels as 160 +
  // 160, not 256 + 64 (the threads' shares of the units then differed fourfold, one thread waiting:
  // batch 8, in place, process-alternating A/B, 1x1 320 @28 7.23 -> 4.61 ms, 288 @28 6.24 -> 3.74,
  // 384 @28 8.63 -> 6.50, 320 @56 37.1 -> 24.1; torch 4.1, 3.3, 5.7, 18.3)
  auto even_block = [](int64_t n, int64_t unit) {  // whole units, at most kBlock (or one unit)
    const int64_t most = std::max<int64_t>(unit, kBlock / unit * unit);
    return std::min(most, ceil_div(ceil_div(n, ceil_div(n, most)), unit) * unit);
  };
  const int64_t bi = even_block(Kg, MR), bj = even_block(Cg, NR);
  const int64_t rb = ceil_div(Kg, bi), cb = ceil_div(Cg, bj), tiles = G * RS * rb * cb;
  const int64_t dw = G * Kg * ldc;
  // the output pixels (ho, wo) whose tap (r, s) lands inside the image: [lo, hi) along each axis
  auto range = [](int64_t pad, int64_t off, int64_t st, int64_t in, int64_t out, int64_t& lo, int64_t& hi) {
    lo = std::clamp<int64_t>(ceil_div(std::max<int64_t>(0, pad - off), st), 0, out);
    hi = in - 1 + pad - off < 0 ? 0 : std::clamp<int64_t>((in - 1 + pad - off) / st + 1, lo, out);
  };
  // Taps inner: where X and dY outgrow L2 and dW is small, the units above streamed both from
  // memory once a tap (and block of dW). Then the output rows in kTapsInnerChunks chunks of at
  // least kTapsInnerRows (each summed into its own copy of dW, as above), and a chunk's blocks of
  // about kPixels output pixels each through every tap and tile while in L1 / L2. Batch 8 unless
  // said, two threads, process-alternating A/B: CIFAR's 16 -> 32 3x3 stride 2 @32, batch 128,
  // 0.52 -> 1.05x torch (time -55 %), 16 -> 32 stride 2 @112 -47 %, 64 @112 stride 2 -24 %, 64
  // @56 stride 2 -21 %; dW up to 512 KiB and groups (a block through every group too): 96 -> 128
  // stride 2 @56 -8 %, 4 groups of 48 stride 2 @56 -12 %, 2 of 64 -11 %, 5 of 48 -13 %. (dW of 128
  // x 128 3x3, 590 KB, measured -3 % at batch 8, +20 % at batch 2, 3 chunks.)
  // dW's block [i0, i1) x [j0, j1) of group g's tap (r, s) at o (+)= its products over nr output rows of
  // image n from h on, the pixels [wlo, wlo + len) of each, both operands read in place
  auto tap_rows = [&](float* o, int64_t g, int64_t r, int64_t s, int64_t n, int64_t h, int64_t nr, int64_t wlo,
                      int64_t len, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const float* a = gy + ((n * sh.Ho + h) * sh.Wo + wlo) * gl.y_pix + g * gl.y_grp;
    const float* bx = x + ((n * sh.H + h * p.stride_h - p.pad_t + r * p.dil_h) * sh.W + wlo * p.stride_w - p.pad_l +
                           s * p.dil_w) * gl.x_pix + g * gl.x_grp;
    for (int64_t j = j0; j < j1; j += NR)
      for (int64_t i = i0; i < i1; i += MR)
        micro_tile_product_runs<float>(mt, nr, len, a + i, gl.y_pix, sh.Wo * gl.y_pix, bx + j, p.stride_w * gl.x_pix,
                                       p.stride_h * sh.W * gl.x_pix, o + i * ldc + j, ldc, true);
  };
  const int64_t in_bytes = (sh.N * sh.H * sh.W * sh.C + sh.N * sh.Ho * sh.Wo * sh.K) * int64_t(sizeof(float));
  if (RS > 1 && rows >= 8 * kTapsInnerRows && in_bytes > l2_bytes() &&
      dw * int64_t(sizeof(float)) <= (int64_t(512) << 10)) {
    const int64_t chunks = std::min(kTapsInnerChunks, rows / kTapsInnerRows), chunk = ceil_div(rows, chunks);
    ChunkCopies copies(gw, chunks, dw);
    float* pp = copies.data;
    const int64_t block = std::max<int64_t>(1, kPixels / sh.Wo);  // output rows a block
    at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        float* out = pp + c * dw;
        std::fill(out, out + dw, 0.f);
        const int64_t t0 = c * chunk, t1 = std::min(rows, t0 + chunk);
        for (int64_t n = t0 / sh.Ho; n * sh.Ho < t1; ++n) {
          const int64_t hb = std::max<int64_t>(0, t0 - n * sh.Ho), he = std::min(sh.Ho, t1 - n * sh.Ho);
          for (int64_t h0 = hb; h0 < he; h0 += block) {
            const int64_t h1 = std::min(he, h0 + block);
            for (int64_t tap = 0; tap < RS; ++tap) {
              const int64_t r = tap / sh.S, s = tap % sh.S;
              int64_t hlo, hhi, wlo, whi;
              range(p.pad_t, r * p.dil_h, p.stride_h, sh.H, sh.Ho, hlo, hhi);
              range(p.pad_l, s * p.dil_w, p.stride_w, sh.W, sh.Wo, wlo, whi);
              const int64_t ha = std::max(h0, hlo), hz = std::min(h1, hhi), len = whi - wlo;
              if (ha >= hz || len <= 0) continue;
              for (int64_t g = 0; g < G; ++g)
                tap_rows(out + g * Kg * ldc + tap * Cg, g, r, s, n, ha, hz - ha, wlo, len, 0, Kg, 0, Cg);
            }
          }
        }
      }
    });
    return copies.sum_into(gw);
  }
  const int64_t chunks =
      tiles >= kUnits ? 1 : std::clamp<int64_t>(ceil_div(kUnits, tiles), 1, std::max<int64_t>(1, rows / kMinRows));
  const int64_t chunk = ceil_div(rows, chunks);
  ChunkCopies copies(gw, chunks, dw);
  float* pp = copies.data;
  at::parallel_for(0, tiles * chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t c = u % chunks, t = u / chunks, g = t / (RS * rb * cb), tap = (t / (rb * cb)) % RS;
      const int64_t i0 = (t / cb) % rb * bi, j0 = t % cb * bj, i1 = std::min(Kg, i0 + bi), j1 = std::min(Cg, j0 + bj);
      const int64_t r = tap / sh.S, s = tap % sh.S, t0 = c * chunk, t1 = std::min(rows, t0 + chunk);
      float* out = pp + c * dw + g * Kg * ldc + tap * Cg;
      for (int64_t k = i0; k < i1; ++k) std::fill(out + k * ldc + j0, out + k * ldc + j1, 0.f);
      int64_t hlo, hhi, wlo, whi;
      range(p.pad_t, r * p.dil_h, p.stride_h, sh.H, sh.Ho, hlo, hhi);
      range(p.pad_l, s * p.dil_w, p.stride_w, sh.W, sh.Wo, wlo, whi);
      const int64_t len = whi - wlo, block = std::max<int64_t>(1, kPixels / std::max<int64_t>(1, len));
      if (len <= 0) continue;
      for (int64_t n = t0 / sh.Ho; n * sh.Ho < t1; ++n) {
        const int64_t hb = std::max(hlo, t0 - n * sh.Ho), he = std::min(hhi, t1 - n * sh.Ho);
        for (int64_t h0 = hb; h0 < he; h0 += block)
          tap_rows(out, g, r, s, n, h0, std::min(block, he - h0), wlo, len, i0, i1, j0, j1);
      }
    }
  });
  copies.sum_into(gw);
}

// The channels_last float32 weight gradient of few-channel layers by filter rows: with the input
// zero-padded once (pad_nhwc), filter row r's S*C columns of dW [K, R*S*C] are, for every output
// pixel, S*C consecutive floats of the padded input (the next pixel's stride*C further), so the
// product is dW_r^T [S*C, K] = sum over the pixels of that run (A, MR of its floats a broadcast,
// read in place) times dY's row (B, read in place: whole tiles of K's columns). The rows of the
// tile are the filter row's floats, not one tap's C channels at a time (16 channels filled half
// of the 32-column tile; 48, three quarters), and no padding pixel of the output is computed (the
// shifted path's). The last row panel of a filter row may read past it (the next floats of the
// padded input, dropped). One group, dilation 1 along W, any stride and dilation along H.
// Batch 8, two threads, torch / convx: 16 -> 32 5x5 @28 0.34 -> 0.86-0.93, 48 -> 64 5x5 @35
// 0.52 -> 0.95, 8 -> 32 3x3 (not Winograd's) @28 0.26 -> 1.31, 24 -> 64 7x7 @28 0.40 -> 0.88; 32 -> 64
// 5x5 @56 (the shifted path's) 0.74 -> 0.98. Under 32 x 32 output pixels the in-place tiles keep
// the layers whose channels fill them (32 or 64 channels 5x5 / 7x7 @14: 0.95-1.13 there, 0.84-0.97
// here), and from 128 channels the other paths (512 -> 512 3x3 stride 2 @14 halved here).
MicroTile wgrad_filter_rows_tile(const Conv2dShape& sh) { return micro_tile_whole_cols(sh.K, sh.S * sh.C); }

bool wgrad_filter_rows(const Conv2dShape& sh, const Conv2dParams& p) {
  return p.groups == 1 && p.dil_w == 1 && sh.S > 1 && sh.K % wgrad_filter_rows_tile(sh).NR == 0;
}

// Units: the output rows in chunks (each summed into its own copy of dW^T, the copies added in
// chunk order: fewer than 8 tiles only, from the shape alone) and each chunk's tiles (filter row,
// row panel, column panel) in `parts` (any split: each tile by one part). A unit runs its tiles on
// blocks of about 2048 output pixels (whole rows), each C tile loaded and stored once a block.
void wgrad_nhwc_filter_rows(const float* x, const float* gy, float* gw, const Conv2dShape& sh,
                            const Conv2dParams& p) {
  const MicroTile mt = wgrad_filter_rows_tile(sh);
  const int64_t MR = mt.MR, NR = mt.NR, C = sh.C, K = sh.K, R = sh.R, wf = sh.S * C, ldc = R * wf;
  // padded along W only: a filter row's taps above or below the image are skipped, not read as zeros
  Conv2dParams pw = p;
  pw.pad_t = pw.pad_b = 0;
  const int64_t Wp = sh.W + p.pad_l + p.pad_r, L = sh.N * sh.H * Wp * C;
  float* xpad = workspace<float>(L + MR, kConvPadded);
  pad_nhwc(x, sh.N, sh.H, sh.W, C, pw, xpad, true);
  std::fill(xpad + L, xpad + L + MR, 0.f);
  const int64_t rows = sh.N * sh.Ho, npr = ceil_div(wf, MR), kp = K / NR, tiles = R * npr * kp;
  constexpr int64_t kChunks = 8, kMinRows = 4, kPixels = 2048;
  const int64_t chunks = tiles >= kChunks ? 1 : std::clamp<int64_t>(rows / kMinRows, 1, kChunks);
  const int64_t chunk = ceil_div(rows, chunks), block = std::max<int64_t>(1, kPixels / sh.Wo);
  const int64_t parts = std::clamp<int64_t>(ceil_div(2 * at::get_num_threads(), chunks), 1, tiles);
  const int64_t per = ceil_div(tiles, parts), dwt = R * npr * MR * K;  // dW^T [R][npr * MR][K]
  float* pp = workspace<float>(chunks * dwt, kConvWgradT);
  at::parallel_for(0, chunks * parts, 1, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t c = u / parts, ta = u % parts * per, tb = std::min(tiles, ta + per);
      const int64_t t0 = c * chunk, t1 = std::min(rows, t0 + chunk);
      float* out = pp + c * dwt;
      // tile t: filter row t / (npr * kp), row panel (t / kp) % npr, column panel t % kp
      auto tile_at = [&](int64_t t) {
        return out + (t / (npr * kp) * npr + t / kp % npr) * MR * K + t % kp * NR;
      };
      for (int64_t t = ta; t < tb; ++t)
        for (int64_t j = 0; j < MR; ++j) std::fill_n(tile_at(t) + j * K, NR, 0.f);
      for (int64_t n = t0 / sh.Ho; n * sh.Ho < t1; ++n) {
        const int64_t hb = std::max<int64_t>(0, t0 - n * sh.Ho), he = std::min(sh.Ho, t1 - n * sh.Ho);
        for (int64_t h0 = hb; h0 < he; h0 += block) {
          const int64_t h1 = std::min(he, h0 + block);
          for (int64_t t = ta; t < tb; ++t) {
            // the output rows [lo, hi) whose filter row r lands inside the image
            const int64_t r = t / (npr * kp), off = r * p.dil_h - p.pad_t;
            const int64_t lo = std::max(h0, ceil_div(std::max<int64_t>(0, -off), p.stride_h));
            const int64_t hi = sh.H - 1 - off < 0 ? 0 : std::min(h1, (sh.H - 1 - off) / p.stride_h + 1);
            if (lo >= hi) continue;
            const float* xa = xpad + (n * sh.H + lo * p.stride_h + off) * Wp * C + t / kp % npr * MR;
            const float* gb = gy + (n * sh.Ho + lo) * sh.Wo * K + t % kp * NR;
            micro_tile_product_runs<float>(mt, hi - lo, sh.Wo, xa, p.stride_w * C, p.stride_h * Wp * C, gb, K,
                                           sh.Wo * K, tile_at(t), K, true);
          }
        }
      }
    }
  });
  at::parallel_for(0, K, 1, [&](int64_t b, int64_t e) {  // dW = the chunks' dW^T summed, transposed
    for (int64_t k = b; k < e; ++k)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < wf; ++j) {
          const float* src = pp + (r * npr * MR + j) * K + k;
          float sum = src[0];
          for (int64_t c = 1; c < chunks; ++c) sum += src[c * dwt];
          gw[k * ldc + r * wf + j] = sum;
        }
  });
}

// t (N, C, H, W; float32) -> dst [G][N][H][W][C / G]: each group's channels by themselves, one
// pixel's Cg floats after another's (channels_last per group). From channels_last a copy of Cg
// floats a pixel, from NCHW a transpose of each image's [Cg][HW] block.
// With padding (pt, pb, pl, pr): each image zero-padded, [G][N][H + pt + pb][W + pl + pr][Cg].
void regroup(const at::Tensor& t, int64_t G, float* dst, int64_t pt = 0, int64_t pb = 0, int64_t pl = 0,
             int64_t pr = 0) {
  const at::Tensor& c = t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast) ? t : t.contiguous();
  const int64_t N = c.size(0), C = c.size(1), H = c.size(2), W = c.size(3), HW = H * W, Cg = C / G;
  const int64_t Hp = H + pt + pb, Wp = W + pl + pr, row = Wp * Cg;
  const bool padded = Hp != H || Wp != W;
  const float* src = c.const_data_ptr<float>();
  const bool nchw = c.is_contiguous();
  at::parallel_for(0, G * N, 1, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t g = u / N, n = u % N;
      float* d = dst + u * Hp * row;
      if (nchw) {
        transpose_batch(src + (n * C + g * Cg) * HW, d, 1, Cg, HW);
        if (padded)  // the rows moved to their padded places, last first (each lands at or past its source)
          for (int64_t h = H - 1; h >= 0; --h) std::memmove(d + (h + pt) * row + pl * Cg, d + h * W * Cg, W * Cg * 4);
      } else {
        const float* s = src + n * HW * C + g * Cg;
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w)
            std::memcpy(d + (h + pt) * row + (w + pl) * Cg, s + (h * W + w) * C, Cg * sizeof(float));
      }
      if (!padded) continue;
      std::fill(d, d + pt * row, 0.f);
      std::fill(d + (pt + H) * row, d + Hp * row, 0.f);
      for (int64_t h = pt; h < pt + H; ++h) {
        std::fill(d + h * row, d + h * row + pl * Cg, 0.f);
        std::fill(d + h * row + (pl + W) * Cg, d + (h + 1) * row, 0.f);
      }
    }
  });
}

// The channels_last float32 weight gradient on wgrad_nhwc_tiles, every group,
// kernel size and stride. Units: (group, block of dW's columns, chunk of the
// pixels); a layer with few columns (few channels, small kernels) has its
// pixels cut into chunks, each summed into its own copy of dW, and the copies
// are added in chunk order. The blocks and chunks depend only on the shape
// (about 8 units), never on the thread count, so neither does the result.
void wgrad_nhwc_tiled(const float* x, const float* gy, float* gw, const Conv2dShape& sh, const Conv2dParams& p) {
  const int64_t NR = micro_tile<float>().NR, G = p.groups, Kg = sh.Kg, CRS = sh.Cg * sh.R * sh.S;
  const int64_t L = sh.N * sh.Ho * sh.Wo;
  constexpr int64_t kUnits = 8, kMinChunk = 256;
  // Few columns (<= 16 panels): one block, so dY^T is packed once a pixel, not once a block; else
  // kUnits blocks of whole panels cut evenly (a block of panels / kUnits panels, the last what
  // was left, made 288 -> 384 3x3 stride 2's 81 panels 9 blocks, 8 of 10 and one of 1: two
  // threads' shares 50 and 31 panels; process-alternating A/B, batch 8: 288 -> 384 @35 26.1 ->
  // 21.4 ms, NCHW 29.9 -> 25.7, 320 @28 13.6 -> 11.2; torch 21.9, 22.1, 12.9)
  const int64_t panels = ceil_div(CRS, NR), blocks = panels <= 16 ? 1 : kUnits;
  auto block_cols = [&](int64_t blk, int64_t& j0, int64_t& j1) {
    j0 = std::min(CRS, blk * panels / blocks * NR), j1 = std::min(CRS, (blk + 1) * panels / blocks * NR);
  };
  const int64_t chunks =
      G * blocks >= kUnits ? 1 : std::clamp<int64_t>(ceil_div(kUnits, G * blocks), 1, std::max<int64_t>(1, L / kMinChunk));
  const int64_t chunk = ceil_div(L, chunks), dw = G * Kg * CRS;
  ChunkCopies copies(gw, chunks, dw);
  float* pp = copies.data;
  at::parallel_for(0, G * blocks * chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t c = u % chunks, blk = (u / chunks) % blocks, g = u / (chunks * blocks);
      const int64_t q0 = c * chunk, q1 = std::min(L, q0 + chunk);
      int64_t j0, j1;
      block_cols(blk, j0, j1);
      float* out = pp + c * dw + g * Kg * CRS;
      if (q0 < q1)
        wgrad_nhwc_tiles(x, gy, out, sh, p, g, j0, j1, q0, q1);
      else
        for (int64_t k = 0; k < Kg; ++k) std::fill(out + k * CRS + j0, out + k * CRS + j1, 0.f);
    }
  });
  copies.sum_into(gw);
}

template <typename T>
void backward_weight_ptr(const T* gyp, const T* xp, const Conv2dShape& sh, const Conv2dParams& p, bool nhwc, T* gw);

// A channels_last 1x1 weight gradient (one group) on wgrad_nhwc_tiled rather than the packed GEMM
// (dW = dY^T X, A = dY^T packed from its columns): the tiles read dY^T's whole row panels in place
// and sum the pixels in 8 chunks, which pays where each chunk is long (>= 4096 pixels in all),
// dW small (<= 512 KiB a copy) and one block of columns (<= 512 input channels). Batch 8 unless
// said, two threads, in-process A/B on a Zen 5 (1 MiB of L2), GEMM -> tiles (torch): 128 -> 512
// @28 2.14 -> 1.92 ms (2.00), 256 -> 512 @28 4.13 -> 3.92 (4.10), 512 -> 256 @28 4.04 -> 3.89
// (3.84), batch 32 128 -> 512 @28 9.20 -> 7.74 (10.4), 512 -> 128 @28 2.05 / 2.07 (1.84). Outside
// that the GEMM kept them: 256 -> 1024 @14 (1568 pixels) 1.91 against 2.53, 544 -> 128 @28 (two
// column blocks) 2.07 against 2.54, 512 -> 2048 @7 1.73 against 4.39. Where L2 has 2 MiB or more
// (the Intel Xeon measured here) the GEMM won from 256 input channels on images under 56 x 56
// (process-alternating A/B, 6 rounds, tiles -> GEMM (torch)): 512 -> 256 @28 7.61 -> 6.63 ms
// (6.4), 256 -> 512 @28 7.29 -> 6.60, 512 -> 128 @28 3.79 -> 3.43, batch 16 512 -> 256 @28 15.4
// -> 13.9, the stride-2 256 -> 512 @56 (28 x 28 after its gather) 8.47 -> 7.36; the tiles kept
// 128 -> 512 @28 (3.49 against 3.59).
bool pointwise_wgrad_tiled(const Conv2dShape& sh, const Conv2dParams& p) {
  const bool gemm_wins = sh.C >= 256 && sh.Ho * sh.Wo < 56 * 56 && l2_bytes() >= (int64_t(2) << 20);
  return p.groups == 1 && sh.C <= 512 && sh.N * sh.Ho * sh.Wo >= 4096 && sh.K * sh.C <= 128 * 1024 && !gemm_wins;
}

// A 1x1 layer's shape with X and dY in each other's roles: its weight gradient is dW^T.
Conv2dShape swapped_roles(const Conv2dShape& sh) {
  Conv2dShape sw = sh;
  std::swap(sw.C, sw.K);
  std::swap(sw.Cg, sw.Kg);
  return sw;
}

// A channels_last 1x1 weight gradient (one group, stride 1, unpadded) whose input channels fill no
// whole tile but whose output channels do, and whose input channels fill the tile's rows (the
// expansions 24 -> 144, 40 -> 240 of MobileNet and EfficientNet, on AVX-512's 8 x 48 tile): dW^T
// taken in place, X's pixels as the tile's rows and dY's as its columns, then transposed (K * C
// floats), rather than dW on the tiles path, which packs X's columns into panels a quarter empty.
// Batch 8, two threads, Intel Xeon, process-alternating A/B, tiles -> swapped (torch): 24 -> 144
// @56 1.39 -> 0.82 ms (0.91), @112 7.39 -> 3.09 (4.5), 40 -> 240 @28 0.96 -> 0.58 (0.70), @56
// 3.39 -> 1.87 (2.0). Where both ways read in place the swap was no rule: 32 -> 192 @112 -16 %,
// 32 -> 64 @112 +9 %, 64 -> 128 @28 +6-11 %, 64 -> 256 @56 +0-4 %; on the packed GEMM it lost at
// 7 x 7 (512 -> 2048 +42 %).
bool pointwise_wgrad_swapped(const Conv2dShape& sh, const Conv2dParams& p) {
  return p.groups == 1 && p.is_pointwise_identity(sh.R, sh.S) && !wgrad_in_place(sh, p) &&
         wgrad_in_place(swapped_roles(sh), p);
}

// The weight gradient. A strided unpadded 1x1 layer (ResNet's downsamples) reads only the pixels
// X[:, :, ::stride_h, ::stride_w]: they are gathered once into the weight gradient's padded-input
// buffer (a quarter of X at stride 2) and the gradient taken as the stride-1 1x1 layer's on them,
// whose paths read X's pixels as one matrix. Before, channels_last went through the packed
// im2col tiles (six chunks of 262 pixels at 512 -> 1024 @28, each summed into its own 2 MB copy
// of dW) and NCHW through its im2col. Batch 8 unless said, two threads, in-process A/B (torch):
// channels_last 512 -> 1024 @28 5.41 -> 3.76 ms (4.05), 1024 -> 2048 @28 18.2 -> 14.4 (18.3),
// batch 2 512 -> 1024 2.24 -> 0.89 (1.02), batch 1 256 -> 512 @56 0.65 -> 0.47 (0.48), 256 -> 512
// @56 4.24 / 4.28 (4.10); NCHW 512 -> 1024 4.12 -> 3.80 (4.53), 256 -> 512 @56 4.86 -> 4.50 (5.64),
// 1024 -> 2048 14.9 -> 14.1 (17.7), 64 -> 128 @56 0.40 -> 0.35 (0.43).
template <typename T>
void backward_weight_impl(const at::Tensor& gy, const at::Tensor& x, const Conv2dShape& sh, const Conv2dParams& p,
                          bool nhwc, T* gw) {
  const T* gyp = gy.const_data_ptr<T>();
  const T* xp = x.const_data_ptr<T>();
  const bool unpadded = p.pad_t == 0 && p.pad_b == 0 && p.pad_l == 0 && p.pad_r == 0;
  if (sh.R != 1 || sh.S != 1 || !unpadded || p.is_pointwise_identity(1, 1))
    return backward_weight_ptr<T>(gyp, xp, sh, p, nhwc, gw);
  const int64_t C = sh.C, H = sh.H, W = sh.W, Ho = sh.Ho, Wo = sh.Wo, sth = p.stride_h, stw = p.stride_w;
  T* xs = workspace<T>(sh.N * C * Ho * Wo, kConvPadded);
  if (nhwc)
    at::parallel_for(0, sh.N * Ho, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {  // output row r: input row (r % Ho) * stride_h of image r / Ho
        const T* src = xp + ((r / Ho) * H + (r % Ho) * sth) * W * C;
        T* dst = xs + r * Wo * C;
        for (int64_t w = 0; w < Wo; ++w) std::memcpy(dst + w * C, src + w * stw * C, C * sizeof(T));
      }
    });
  else
    at::parallel_for(0, sh.N * C, 1, [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl)
        for (int64_t h = 0; h < Ho; ++h) {
          const T* src = xp + (pl * H + h * sth) * W;
          T* dst = xs + (pl * Ho + h) * Wo;
          for (int64_t w = 0; w < Wo; ++w) dst[w] = src[w * stw];
        }
    });
  Conv2dShape s1 = sh;
  s1.H = Ho, s1.W = Wo;
  Conv2dParams p1 = p;
  p1.stride_h = p1.stride_w = p1.dil_h = p1.dil_w = 1;
  backward_weight_ptr<T>(gyp, xs, s1, p1, nhwc, gw);
}

template <typename T>
void backward_weight_ptr(const T* gyp, const T* xp, const Conv2dShape& sh, const Conv2dParams& p, bool nhwc, T* gw) {
  const int64_t N = sh.N, G = p.groups, Cg = sh.Cg, Kg = sh.Kg, R = sh.R, S = sh.S;
  const int64_t HW = sh.H * sh.W, P = sh.Ho * sh.Wo, CRS = Cg * R * S;
  if constexpr (std::is_same_v<T, float>) {
    if (nhwc && pointwise_wgrad_swapped(sh, p)) {  // dW^T as X's and dY's weight gradient, then transposed
      T* gwt = workspace<T>(sh.C * sh.K, kConvWgradSwapped);
      backward_weight_ptr<T>(xp, gyp, swapped_roles(sh), p, nhwc, gwt);
      transpose_batch(gwt, gw, 1, sh.C, sh.K);  // dW^T [C][K] -> dW [K][C]
      return;
    }
    if (nhwc) {
      // The shifted path reads the padded input in place but also computes the padding's pixels and
      // wastes half a tile when Cg < NR: it pays on large images only (measured: 0.65 vs 0.43 of
      // torch at 64 channels @56, 0.74 vs 0.61 @28; 0.75 vs 0.93 @14, 0.57 vs 1.54 @2). Whole tiles
      // read in place (wgrad_in_place) beat it below 32 x 32 output pixels (Inception's 1x7 @17
      // 0.60 -> 0.75x torch, 7x1 0.81 -> 1.17, a 5x5 @28 0.62 -> 0.68) but not above (3x3 64 @56
      // 0.71 -> 0.62, 32 @112 0.70 -> 0.57), and beat the tiles path at stride 2 (128 @56: 0.71 -> 0.92).
      const bool shifted = !p.is_pointwise_identity(R, S) && p.stride_h == 1 && p.stride_w == 1 && sh.Cg >= 8;
      const bool shifted_large = shifted && sh.Ho * sh.Wo >= 1024;
      if (sh.C < 128 && wgrad_filter_rows(sh, p) && (shifted_large || !wgrad_in_place(sh, p)))
        return wgrad_nhwc_filter_rows(xp, gyp, gw, sh, p);
      // Dilated: the shifted path's padding is d times a plain layer's (a 3x3 at dilation 4 on 28 x 28
      // computes 36 x 36 pixels a channel pair, 1.65x), and whole tiles in place beat it whatever
      // the channels (batch 8 unless said, channels_last, two threads, Intel Xeon, torch in
      // parentheses: 512 @28 dilation 4 171 -> 92 ms (100), dilation 2 120 -> 97 (105), batch 4
      // 512 @64 dilation 8 372 -> 249 (253); the tiled path 117 at dilation 4).
      if ((p.dil_h > 1 || p.dil_w > 1) && wgrad_whole_tiles(sh, p))
        return wgrad_nhwc_in_place(xp, gyp, gw, sh, p, interleaved_groups(sh));
      if (shifted_large) return wgrad_nhwc_shifted(xp, gyp, gw, sh, p);
      if (wgrad_in_place(sh, p)) return wgrad_nhwc_in_place(xp, gyp, gw, sh, p, interleaved_groups(sh));
      if (shifted && sh.Ho * sh.Wo > 256) return wgrad_nhwc_shifted(xp, gyp, gw, sh, p);
      if (!p.is_pointwise_identity(R, S) || pointwise_wgrad_tiled(sh, p)) return wgrad_nhwc_tiled(xp, gyp, gw, sh, p);
    }
  }
  // Images per GEMM: enough to make the reduction long, bounded in memory.
  const int64_t max_col = int64_t(1) << 23;  // elements (32 MB in float)
  int64_t nb = std::max<int64_t>(1, std::min<int64_t>(N, (2048 + P - 1) / P));
  // NCHW 1x1 on images of 128 pixels or more: one product an image on the planes themselves
  // (dY's and X's views), not several images' planes copied side by side first (batch 8, Zen 4:
  // 512 -> 256 @28 40 -> 16 ms, torch 15; 1024 -> 256 @14 7.5 -> 6.5, torch 6.9; at 7 x 7 the
  // copies pay: 2048 -> 512 7.7 against 11.9 one an image)
  if (!nhwc && p.is_pointwise_identity(R, S) && P >= 128) nb = 1;
  nb = std::max<int64_t>(1, std::min(nb, max_col / std::max<int64_t>(1, CRS * P)));

  // col (and NCHW's gathered dY) live in the calling thread's workspace: kept
  // between calls, never zero-filled (every element is written before use).
  const bool direct = p.is_pointwise_identity(R, S);
  // One image at a time (large images): the threads split dW's columns
  // (CRS) between them, each building only its columns of the im2col, in
  // blocks of whole output rows of about 1 MiB multiplied in while in L2 (not
  // the whole 9x-expanded image through memory), with one parallel region a
  // group instead of two a block. Every dW element has one thread and a fixed
  // order of images and blocks: the result does not depend on the thread count.
  const int64_t nthr = at::get_num_threads();
  // NCHW: whole 8-row panels of dW^T's block (the columns' share of the work even: 147 of the stem
  // as 80 + 67, not 96 + 51); channels_last: whole 32-column panels of dW's block
  const int64_t unit = nhwc ? 32 : 8;
  const int64_t per = std::max<int64_t>(unit, ceil_div(ceil_div(CRS, nthr), unit) * unit);
  // (rows from CRS, not from a thread's share: the blocks are the reduction's chunks, so they must not
  // depend on the thread count)
  const int64_t rows = std::clamp<int64_t>((int64_t(1) << 18) / std::max<int64_t>(1, CRS * sh.Wo), 1, sh.Ho);
  auto group_blocked = [&](int64_t g, T*, bool par) {
    T* gwg = gw + g * Kg * CRS;
    maybe_parallel_for(par, 0, ceil_div(CRS, per), 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t j0 = t * per, j1 = std::min(CRS, j0 + per), nj = j1 - j0;
        T* col = workspace<T>(per * rows * sh.Wo);
        T* gwt = nhwc ? nullptr : workspace<T>(nj * Kg, kConvWgradT);  // dW^T [nj, Kg]
        for (int64_t n = 0; n < N; ++n) {
          for (int64_t ho0 = 0; ho0 < sh.Ho; ho0 += rows) {
            const int64_t ho1 = std::min(sh.Ho, ho0 + rows), q0 = ho0 * sh.Wo, cols = (ho1 - ho0) * sh.Wo;
            const bool acc = n > 0 || ho0 > 0;
            if (!nhwc) {
              im2col_nchw(xp + (n * sh.C + g * Cg) * HW, sh.H, sh.W, Cg, R, S, sh.Ho, sh.Wo, p, col, cols, false, ho0,
                          ho1, j0, j1);
              // dW^T [nj, Kg] (+)= col [nj, cols] dY^T [cols, Kg]: the im2col's rows are the A the register
              // tile reads in place (dW = dY col^T packed the im2col transposed for every block: the stem's
              // weight gradient, batch 8, 11.3 -> 8.4 ms; torch 6.8-7.0)
              gemm<T>(nj, Kg, cols, col, cols, 1, gyp + (n * sh.K + g * Kg) * P + q0, 1, P, gwt, Kg, 1, acc, false);
            } else {
              im2col_nhwc_cols(xp + n * HW * sh.C, sh.H, sh.W, sh.C, g * Cg, Cg, S, sh.Wo, p, col, q0, q0 + cols, j0,
                               j1);
              gemm<T>(Kg, nj, cols, gyp + (n * P + q0) * sh.K + g * Kg, 1, sh.K, col, nj, 1, gwg + j0, CRS, 1, acc,
                      false);
            }
          }
        }
        if (gwt)
          for (int64_t k = 0; k < Kg; ++k)
            for (int64_t j = 0; j < nj; ++j) gwg[k * CRS + j0 + j] = gwt[j * Kg + k];
      }
    });
  };
  const bool blocked = nb == 1 && !direct;  // (not on the thread count: the path sets the summation order)
  auto group = [&](int64_t g, T* col, bool par) {
    if (blocked) return group_blocked(g, col, par);
    T* gwg = gw + g * Kg * CRS;
    for (int64_t n0 = 0; n0 < N; n0 += nb) {
      const int64_t nn = std::min(nb, N - n0), L = nn * P;
      if (!nhwc) {
        // A = dY [Kg, L] (one image: a view; several: gathered), B = col^T [L, CRS] with col stored
        // [CRS, L] (one unpadded 1x1 image: the input itself).
        T* gyb = col + (direct && nn == 1 ? 0 : CRS * L);
        const T *a = gyb, *b = col;
        if (nn == 1) a = gyp + (n0 * sh.K + g * Kg) * P;
        if (direct && nn == 1) b = xp + (n0 * sh.C + g * Cg) * HW;
        // several images: one parallel region over them (not one per image: small images
        // made the weight gradient 3x torch's time in region overheads)
        maybe_parallel_for(par && nn > 1, 0, nn, 1, [&](int64_t ib, int64_t ie) {
          for (int64_t i = ib; i < ie; ++i) {
            const int64_t n = n0 + i;
            if (!(direct && nn == 1))
              im2col_nchw(xp + (n * sh.C + g * Cg) * HW, sh.H, sh.W, Cg, R, S, sh.Ho, sh.Wo, p, col + i * P, L,
                          par && nn == 1);
            if (nn > 1)
              for (int64_t k = 0; k < Kg; ++k)
                std::memcpy(gyb + k * L + i * P, gyp + (n * sh.K + g * Kg + k) * P, P * sizeof(T));
          }
        });
        gemm<T>(Kg, CRS, L, a, L, 1, b, 1, L, gwg, CRS, 1, n0 > 0, par);
      } else {
        const T* b = col;
        if (direct) {
          b = xp + n0 * HW * sh.C + g * Cg;  // the input's pixels are the rows of col
        } else {
          maybe_parallel_for(par && nn > 1, 0, nn, 1, [&](int64_t ib, int64_t ie) {
            for (int64_t i = ib; i < ie; ++i)
              im2col_nhwc(xp + (n0 + i) * HW * sh.C, sh.H, sh.W, sh.C, g * Cg, Cg, R, S, sh.Ho, sh.Wo, p,
                          col + i * P * CRS, CRS, par && nn == 1);
          });
        }
        // A = dY^T [Kg, L]: element (k, q) at q*K + k.
        gemm<T>(Kg, CRS, L, gyp + n0 * P * sh.K + g * Kg, 1, sh.K, b, direct ? sh.C : CRS, 1, gwg, CRS, 1, n0 > 0,
                par);
      }
    }
  };
  const int64_t col_elems =
      blocked ? 0 : nhwc ? (direct ? 0 : CRS * nb * P) : (CRS + Kg) * nb * P;

  if (G >= nthr) {
    at::parallel_for(0, G, 1, [&](int64_t b, int64_t e) {
      T* col = workspace<T>(col_elems);
      for (int64_t g = b; g < e; ++g) group(g, col, false);
    });
  } else {
    T* col = workspace<T>(col_elems);
    for (int64_t g = 0; g < G; ++g) group(g, col, true);
  }
}

// Sum of dY over n, h, w per channel, accumulated in double.
template <typename T>
void bias_grad_impl(const at::Tensor& gy, int64_t N, int64_t K, int64_t P, bool nhwc, T* gb) {
  const T* g = gy.const_data_ptr<T>();
  at::parallel_for(0, K, 16, [&](int64_t b, int64_t e) {
    std::vector<double> acc(e - b, 0.0);
    for (int64_t n = 0; n < N; ++n) {
      if (nhwc) {
        for (int64_t q = 0; q < P; ++q) {
          const T* row = g + (n * P + q) * K;
          for (int64_t k = b; k < e; ++k) acc[k - b] += row[k];
        }
      } else {
        for (int64_t k = b; k < e; ++k) {
          const T* plane = g + (n * K + k) * P;
          double s = 0;
          for (int64_t q = 0; q < P; ++q) s += plane[q];
          acc[k - b] += s;
        }
      }
    }
    for (int64_t k = b; k < e; ++k) gb[k] = T(acc[k - b]);
  });
}

// Half types are computed in float and rounded once.
at::ScalarType compute_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

void check_cpu_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK(
      t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble || t.scalar_type() == at::kHalf ||
          t.scalar_type() == at::kBFloat16,
      "convx.conv2d (CPU): expected ", name, " to be float32, float64, float16 or bfloat16, but got ",
      t.scalar_type());
}

// The data gradient's shape as a stride-1 forward's: dY's K channels in, dX's C out.
Conv2dShape transposed_shape(const Conv2dShape& sh) {
  return {sh.N, sh.K, sh.Ho, sh.Wo, sh.C, sh.R, sh.S, sh.H, sh.W, sh.Kg, sh.Cg};
}

bool is_depthwise(const Conv2dShape& sh, const Conv2dParams& p) {
  return sh.Cg == 1 && p.groups == sh.C && p.groups > 1;
}

// Winograd F(4x4, 3x3) (winograd.cpp) for float32 3x3 / stride-1 convolutions
// while convx.backends.cpu.winograd is on: the forward convolution, and the
// data gradient as the stride-1 convolution of dY with the rotated weight.
// Whether Winograd reads this weight as channels_last's [K][3][3][C] in place (a dense
// channels_last weight that is not also contiguous) rather than an OIHW copy.
// A channels_last grouped strided forward with groups of 48 channels or more (gathered: a tap's
// channels one run) on 28 x 28 output pixels or more: forward_impl's product on the fly, a group
// at a time over the interleaved channels (compute_format), not a group at a time on copies
// (groups_as_dense: each group's input and result copied out and back) nor regrouped. Batch 8
// unless said, two threads, process-alternating A/B, 3x3 stride 2 from 56 x 56 unless said:
// 2 groups of 64 -18 %, 4 of 48 -16 %, 4 of 56 -15 %, 8 of 56 -14 %, 9 of 48 @28 -10 %, 7 of 112
// @28 -10 %, 2 of 120 -8 %, 5 of 48 -4 %, batch 2 4 of 48 -12 %. (Groups of 24 and 32 channels,
// whose taps it does not gather, measured +10-18 %; under 28 x 28 output pixels, 3 of 80 @28 +20
// % against the regrouped path.)
bool grouped_strided_on_the_fly(const Conv2dShape& sh, const Conv2dParams& p, at::MemoryFormat mf) {
  return mf == at::MemoryFormat::ChannelsLast && p.groups > 1 && !is_depthwise(sh, p) &&
         (p.stride_h > 1 || p.stride_w > 1) && sh.R * sh.S > 1 && sh.Cg >= 48 && sh.Ho * sh.Wo >= 28 * 28;
}

bool wino_reads_krsc(const at::Tensor& w) {
  return !w.is_contiguous() && w.is_contiguous(at::MemoryFormat::ChannelsLast);
}

bool winograd_forward(const Conv2dShape& sh, const Conv2dParams& p) {
  return winograd::enabled() &&
         winograd::applicable(sh.N, sh.C, sh.K, sh.R, sh.S, p.stride_h, p.stride_w, p.dil_h, p.dil_w, p.groups, sh.Ho, sh.Wo);
}
// The layout Winograd computes a 3x3 layer in (both run natively): an NCHW layer's with images of
// up to 14 x 14 in channels_last (its input and result copied, layout.h's scratch tensors), where
// the NCHW transposes into and out of the tiles cost about as much as the copies or more. Batch
// 8, 2 threads, in-process A/B (the order alternating), forward (data gradient): 128 @7 -2 %
// (+14 %), GoogLeNet's 96 -> 208 @14 +5 % (+9 %), 512 @7 +2 % (+2 %), 256 @14 -1 % (+2 %),
// 64 @14 -2 % (0); kept NCHW: 192 @17 +1 % (-2 %), 64 @20 -4 % (0), 128 @28 -3 %, 64 @56 -14 %.
at::MemoryFormat winograd_format(at::MemoryFormat mf, int64_t H, int64_t W) {
  return H * W <= 14 * 14 ? at::MemoryFormat::ChannelsLast : mf;
}
bool winograd_data_grad(const Conv2dShape& sh, const Conv2dParams& p) {
  return winograd::enabled() &&
         winograd::applicable(sh.N, sh.K, sh.C, sh.R, sh.S, p.stride_h, p.stride_w, p.dil_h, p.dil_w, p.groups, sh.H, sh.W);
}

// 1 x r / r x 1 layers (r = 3, 7; Inception's factorised filters) at stride 1, one group: Winograd
// along the line (winograd_line.cpp), in channels_last.
// (the padding across the line: on the axis of the filter's size 1)
int64_t pad_across_line(const Conv2dShape& sh, const Conv2dParams& p) {
  return sh.R == 1 ? p.pad_t + p.pad_b : p.pad_l + p.pad_r;
}
bool winograd_line_forward(const Conv2dShape& sh, const Conv2dParams& p) {
  return winograd::enabled() && winograd::line_applicable(sh.N, sh.C, sh.K, sh.R, sh.S, p.stride_h, p.stride_w,
                                                          p.dil_h, p.dil_w, p.groups, pad_across_line(sh, p), sh.Ho,
                                                          sh.Wo);
}
bool winograd_line_data_grad(const Conv2dShape& sh, const Conv2dParams& p) {
  return winograd::enabled() && winograd::line_applicable(sh.N, sh.K, sh.C, sh.R, sh.S, p.stride_h, p.stride_w,
                                                          p.dil_h, p.dil_w, p.groups, pad_across_line(sh, p), sh.H,
                                                          sh.W);
}
bool winograd_line_weight_grad(const Conv2dShape& sh, const Conv2dParams& p) {
  return winograd::enabled() &&
         winograd::line_weight_grad_applicable(sh.N, sh.C, sh.K, sh.R, sh.S, p.stride_h, p.stride_w, p.dil_h,
                                               p.dil_w, p.groups, pad_across_line(sh, p), sh.Ho, sh.Wo);
}

// A 1 x r / r x 1 layer's forward (x -> y; with the fused epilogue) or data gradient (dY -> dX, the
// weight transposed and reversed) on Winograd along the line, in channels_last; the result in mf.
at::Tensor line_winograd(const at::Tensor& in, const at::Tensor& weight, const at::Tensor* bias,
                         const at::Tensor* residual, bool relu, const Conv2dShape& sh, const Conv2dParams& p,
                         at::MemoryFormat mf, bool data_grad) {
  const auto ct = compute_type(in.scalar_type());
  const auto cl = at::MemoryFormat::ChannelsLast;
  const int64_t r = std::max(sh.R, sh.S), lead = sh.R == 1 ? p.pad_l : p.pad_t;
  const int64_t ci = data_grad ? sh.K : sh.C, hi = data_grad ? sh.Ho : sh.H, wi = data_grad ? sh.Wo : sh.W;
  const int64_t co = data_grad ? sh.C : sh.K, ho = data_grad ? sh.H : sh.Ho, wo = data_grad ? sh.W : sh.Wo;
  auto out = scratch_result({sh.N, co, ho, wo}, in.options().dtype(ct), cl, mf, kLayoutSecond);
  const auto x = to_format_scratch(in.to(ct), cl, kLayoutFirst);
  const bool w_krsc = wino_reads_krsc(weight);
  const auto w = to_format_scratch(weight.to(ct), w_krsc ? cl : at::MemoryFormat::Contiguous, kLayoutWeight);
  at::Tensor b = bias ? bias->to(ct).contiguous() : at::Tensor();
  winograd::conv_line(x.const_data_ptr<float>(), w.const_data_ptr<float>(), sh.C * r, w_krsc ? 1 : r,
                      w_krsc ? sh.C : 1, data_grad, b.defined() ? b.const_data_ptr<float>() : nullptr,
                      out.data_ptr<float>(), sh.N, ci, hi, wi, co, ho, wo, r, sh.R == 1,
                      data_grad ? r - 1 - lead : lead);
  if (residual) out.add_(residual->to(ct));
  if (relu) out.clamp_min_(0);
  return to_format(out, mf).to(in.scalar_type());
}

// Whether a layer's input and output both fit layout.h's scratch buffers (float32).
bool fits_scratch(const Conv2dShape& sh) {
  return sh.N * sh.C * sh.H * sh.W <= kScratchCapFloats && sh.N * sh.K * sh.Ho * sh.Wo <= kScratchCapFloats;
}

// A dilated 3x3 convolution (dilation d along both axes, stride 1, one group, padding a
// multiple of d on the top and left) is d * d ordinary 3x3 convolutions, one on each phase of the
// image (the pixels (i d + a, j d + b) for fixed a, b: output phase (a, b) reads input phase (a, b)
// only, with padding pad / d), so it runs on Winograd as a batch of N d^2 images of
// ceil(H / d) x ceil(W / d) pixels (a phase past the image's edge zero), its outputs then put
// back in place. DeepLab's dilated 3x3 layers, batch 8, two threads, forward (and the data
// gradient, which runs as a forward here): 256 @28 dilation 2 0.95 -> 1.34x torch (channels_last
// 0.94 -> 1.52), 512 @28 dilation 4 0.89 -> 1.36, 256 @56 dilation 2 0.81 -> 1.71 (0.78 -> 2.14);
// weight gradient 256 @28 0.85 -> 1.66. Phases under 4 x 4 pixels (dilation 12 @28) keep the GEMM,
// as do weight gradients whose transforms would not fit Winograd's 64 MB (512 @28 dilation 4: 0.52).
struct Phases {
  int64_t d, Hs, Ws, Hos, Wos;
};
bool dilated_winograd(const Conv2dShape& sh, const Conv2dParams& p, Phases* ph) {
  const int64_t d = p.dil_h;
  if (!winograd::enabled() || sh.R != 3 || sh.S != 3 || p.stride_h != 1 || p.stride_w != 1 || d < 2 ||
      p.dil_w != d || p.groups != 1 || p.pad_t % d != 0 || p.pad_l % d != 0 || !fits_scratch(sh))
    return false;
  *ph = {d, ceil_div(sh.H, d), ceil_div(sh.W, d), ceil_div(sh.Ho, d), ceil_div(sh.Wo, d)};
  return sh.N * d * d * sh.C * ph->Hs * ph->Ws <= kScratchCapFloats &&
         sh.N * d * d * sh.K * ph->Hos * ph->Wos <= kScratchCapFloats &&
         winograd::applicable(sh.N * d * d, sh.C, sh.K, 3, 3, 1, 1, 1, 1, 1, ph->Hos, ph->Wos);
}
// x [N][C][H][W] (or channels_last) -> xs: N d^2 images [C][Hs][Ws] (or [Hs][Ws][C]), image
// (n d + a) d + b holding phase (a, b) of image n, zero past the edge (Hs >= ceil(H / d)).
void gather_phases(const float* x, float* xs, int64_t N, int64_t C, int64_t H, int64_t W, int64_t d, int64_t Hs,
                   int64_t Ws, bool nhwc) {
  const int64_t nd = N * d * d;
  if (nhwc) {
    at::parallel_for(0, nd * Hs, 8, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t u = t / Hs, i = t % Hs, n = u / (d * d), h = i * d + u / d % d, w0 = u % d;
        for (int64_t j = 0; j < Ws; ++j) {
          float* dst = xs + (t * Ws + j) * C;
          const int64_t w = j * d + w0;
          if (h < H && w < W)
            std::memcpy(dst, x + ((n * H + h) * W + w) * C, C * sizeof(float));
          else
            std::fill(dst, dst + C, 0.f);
        }
      }
    });
    return;
  }
  at::parallel_for(0, nd * C, 8, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t u = t / C, c = t % C, n = u / (d * d), a = u / d % d, w0 = u % d;
      const float* src = x + (n * C + c) * H * W;
      float* dst = xs + t * Hs * Ws;
      for (int64_t i = 0; i < Hs; ++i) {
        const int64_t h = i * d + a;
        for (int64_t j = 0; j < Ws; ++j) {
          const int64_t w = j * d + w0;
          dst[i * Ws + j] = h < H && w < W ? src[h * W + w] : 0.f;
        }
      }
    }
  });
}
// The inverse for the outputs: ys (N d^2 images of Hos x Wos, K channels) -> y [N][K][Ho][Wo].
void scatter_phases(const float* ys, float* y, int64_t N, int64_t K, int64_t Ho, int64_t Wo, const Phases& ph,
                    bool nhwc) {
  const int64_t d = ph.d, Hos = ph.Hos, Wos = ph.Wos;
  if (nhwc) {
    at::parallel_for(0, N * Ho, 8, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t n = t / Ho, ho = t % Ho;
        for (int64_t wo = 0; wo < Wo; ++wo) {
          const int64_t u = (n * d + ho % d) * d + wo % d;
          std::memcpy(y + (t * Wo + wo) * K, ys + ((u * Hos + ho / d) * Wos + wo / d) * K, K * sizeof(float));
        }
      }
    });
    return;
  }
  at::parallel_for(0, N * K, 8, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / K, k = t % K;
      float* dst = y + t * Ho * Wo;
      for (int64_t ho = 0; ho < Ho; ++ho)
        for (int64_t wo = 0; wo < Wo; ++wo) {
          const int64_t u = (n * d + ho % d) * d + wo % d;
          dst[ho * Wo + wo] = ys[((u * K + k) * Hos + ho / d) * Wos + wo / d];
        }
    }
  });
}

// One group, a spatial kernel and under 8 input channels (the 3-channel 7x7 stems), both tensors
// under the scratch cap: the float32 data and weight gradients compute in NCHW whatever the layout
// (channels_last's col2im and im2col panels take the channels 3 floats at a time, NCHW's whole
// output rows; dY's and X's copies go through layout.h's transpose into scratch memory).
bool few_channels_nchw_grads(const Conv2dShape& sh, const Conv2dParams& p) {
  return p.groups == 1 && sh.C < 8 && sh.R * sh.S > 1 && fits_scratch(sh);
}

// The layout the kernels compute in. torch's rule picks the result's layout;
// the kernels may compute in the other one and convert (two copies) where
// measured to pay:
//  * grouped (not depthwise) on the GEMM path: NCHW, whose per-group GEMMs
//    have the pixels as their long side; in channels_last each group's GEMM is
//    only Kg wide (groups of 2 to 32 channels take grouped.cpp's kernels
//    instead, decided by the callers: its NCHW kernel for NCHW, its
//    channels_last one for channels_last where it applies; 2-5x faster than
//    the GEMMs);
//  * Winograd (winograd.cpp) computes in the result's layout;
//  * an NCHW convolution with a spatial kernel and few output pixels (<= 64:
//    late ResNet stages, small images): channels_last, where images stack into
//    one GEMM. (For 1x1 layers the copies cost more than that gains.)
//  * an NCHW float32 forward with a spatial kernel, one group, >= 8 channels and
//    input and result under the scratch cap (layout.h; above it the copies are
//    fresh memory: 64 @224 stride 2, 48 -> 68 ms): channels_last, whose im2col is
//    made as the GEMM reads it (no im2col matrix, no second packing pass), the
//    two copies by layout.h's transpose into scratch memory. Measured, NCHW ->
//    channels_last: Inception 1x7 2.65 -> 1.74 ms, 7x1 3.80 -> 2.55, GoogLeNet
//    5x5 4.65 -> 3.75, 128 @56 stride-2 3x3 8.25 -> 7.58. (Data gradients: no
//    gain, or a loss: they keep NCHW.) Under 8 channels with C*R*S >= 96 (the 3-channel
//    7x7 stems) the forward stays NCHW but computes on channels_last rows block by block
//    (forward_nchw_rows), its result transposed while in L2.
at::MemoryFormat compute_format(at::MemoryFormat result, const Conv2dShape& sh, const Conv2dParams& p,
                                bool float_forward = false) {
  if (is_depthwise(sh, p)) return result;
  if (p.groups > 1)
    return float_forward && grouped_strided_on_the_fly(sh, p, result) ? result : at::MemoryFormat::Contiguous;
  if (float_forward && result == at::MemoryFormat::Contiguous && weights_in_place(sh, p)) return result;
  // (up to 4 output channels: grouped.cpp's NCHW kernel reads NCHW where it lies, CpuConv::forward)
  if (float_forward && result == at::MemoryFormat::Contiguous && sh.K <= 4 && grouped::dense_nchw_applicable(sh, p))
    return result;
  if (float_forward && result == at::MemoryFormat::Contiguous && sh.R * sh.S > 1 && sh.Cg >= 8 &&
      fits_scratch(sh))
    return at::MemoryFormat::ChannelsLast;
  if (result == at::MemoryFormat::ChannelsLast || sh.Ho * sh.Wo > 64 || sh.R * sh.S == 1) return result;
  return at::MemoryFormat::ChannelsLast;
}

// Whether an NCHW data gradient runs as the forward convolution of dY with the rotated,
// transposed weight (CpuConv::data_grad), which computes in channels_last with its im2col made
// on the fly (compute_format): float types at stride 1 with one group and a spatial kernel, not
// Winograd's, >= 8 channels of dY, both tensors under the scratch cap, padding within d*(R-1) on
// every side. Measured NCHW: Inception 1x7 0.86 -> 1.09x torch, 7x1 0.73 -> 0.80, GoogLeNet
// 5x5 0.76 -> 0.84. channels_last too since the forward reads its rows in place
// (im2col_nhwc_direct), where dX's channels fill whole 32-column tiles (batch 8: 1x7 128 @17
// 1.79 -> 1.44 ms, 1x7 160 2.95 -> 2.26, 7x1 192 -> 128 2.29 -> 2.15, 5x5 96 -> 32 @28
// 3.45 -> 2.63; but 5x5 128 -> 48 @14, 48 channels in 64-column tiles, 1.49 -> 1.97: kept on
// its own path, until AVX-512's 8 x 48 tile: 48 channels 0.64-0.66 -> 0.81-0.84x torch as the
// forward, 48 -> 64 5x5 @35, 48 -> 128 5x5 @14, 48 -> 96 5x5 @28; 80 channels +8 %, 112-208 even).
// Not where the weights outnumber dY (C*R*S > N*Ho*Wo): their rotation and
// copies, three passes over 9.4 MB for 512 -> 512 3x3 at 7 x 7 and batch 2, cost more than the
// product (0.50x torch that way, 0.70 the other). channels_last: channels a multiple of 16, or 9-15
// (16 -> 32 5x5 @28 +36 %, @56 +44 %, 7x7 +45 %, 1x7 +46 % on the 12 x 16 tile). mf: the result's layout.
// Padding within d*(R-1) on every side: the data gradient as a forward then has padding >= 0.
// Under 8 channels of dY (a decoder's RGB output layer's data gradient) where dX's are a multiple of
// 8: the forward of so few channels takes grouped.cpp's NCHW kernel (dense_nchw_applicable) or,
// channels_last, its zero-padded copy; the column matrix and col2im had run it at a tenth of
// torch's speed. Batch 8, two threads, process-alternating A/B, 3x3: 64 -> 3 @128 NCHW 0.44 ->
// 1.99x torch, channels_last 0.25 -> 0.76; 32 -> 1 @64 0.62 -> 5.35, 0.17 -> 1.08.
bool pads_within_filter(const Conv2dShape& sh, const Conv2dParams& p) {
  return p.pad_t <= p.dil_h * (sh.R - 1) && p.pad_b <= p.dil_h * (sh.R - 1) && p.pad_l <= p.dil_w * (sh.S - 1) &&
         p.pad_r <= p.dil_w * (sh.S - 1);
}
bool data_grad_as_forward(const at::Tensor& gy, at::MemoryFormat mf, const Conv2dShape& sh, const Conv2dParams& p) {
  return (mf == at::MemoryFormat::Contiguous || sh.C % 16 == 0 || (sh.C > 8 && sh.C < 16)) &&
         gy.scalar_type() != at::kDouble && p.stride_h == 1 && p.stride_w == 1 && p.groups == 1 &&
         sh.R * sh.S > 1 && !winograd_data_grad(sh, p) &&
         (sh.K >= 8 || sh.C % 8 == 0) && pads_within_filter(sh, p) && fits_scratch(sh) &&
         sh.C * sh.R * sh.S <= sh.N * sh.Ho * sh.Wo;
}

// An NCHW strided data gradient with a spatial kernel, one group and >= 8 channels of dX computes
// in channels_last (copies of dY and dX through layout.h's scratch tensors): its im2col-free
// channels_last path beats NCHW's columns and col2im. Batch 8, 2 threads, in-process A/B: 3x3
// stride 2 128 @56 5.39 -> 4.73 ms, 256 @28 5.07 -> 4.37, 64 @112 8.02 -> 6.71, 32 -> 64 @147
// (valid) 7.56 -> 6.15; the transposed 4x4 stride 2 512 -> 256 @14 (a data gradient) 15.8 -> 13.9
// (torch 14.6-15.0). Not 1x1 (stride 2, 256 -> 512 @56: 4.30 -> 5.61) nor the 3-channel stem.
// A channels_last grouped strided data gradient by dX's phases (phase_rows_dgrad, a product a
// phase and group over the interleaved channels), not a group at a time on copies (groups_as_dense)
// nor on per-group NCHW GEMMs and col2im (fewer output pixels). Batch 8 unless said, two threads,
// 3x3 stride 2, process-alternating A/B, ratio to torch before -> after: 4 groups of 48 @56 0.65
// -> 0.79, 2 of 64 @56 0.59 -> 0.81, 4 of 24 @56 0.55 -> 0.73, 9 of 48 @28 0.50 -> 1.07, 3 of 80
// @28 0.54 -> 1.04, batch 2 4 of 48 @56 0.68 -> 0.84.
bool grouped_phase_rows(const at::Tensor& gy, at::MemoryFormat mf, const Conv2dShape& sh, const Conv2dParams& p) {
  return gy.scalar_type() != at::kDouble && mf == at::MemoryFormat::ChannelsLast && p.groups > 1 &&
         !is_depthwise(sh, p) && phase_rows_data_grad(sh, p) && fits_scratch(sh);
}

bool strided_data_grad_channels_last(const at::Tensor& gy, const Conv2dShape& sh, const Conv2dParams& p) {
  return gy.scalar_type() != at::kDouble && (p.stride_h > 1 || p.stride_w > 1) && p.groups == 1 &&
         sh.R * sh.S > 1 && sh.C >= 8 && fits_scratch(sh);
}

// The weight gradient's: float32 with a spatial kernel and >= 8 channels a
// group computes in channels_last whatever the layout (its NHWC paths, with
// no im2col matrix, beat NCHW's blocked im2col even with both operands
// converted: 128 channels @28 13.2 -> ~10 ms). Fewer channels (the 3-channel
// stem) stay in the result's layout: channels_last on its own paths (wgrad_nhwc_filter_rows,
// the tiles), which beat the NCHW copies they had been sent through (batch 8 unless said, two
// threads, in-process A/B, torch in parentheses): ResNet's stem 3 -> 64 7x7 stride 2 @224 8.48
// -> 5.08 ms (5.52), batch 2 2.15 -> 1.06 (1.14), Inception-v3's 3 -> 32 3x3 stride 2 @299 5.22
// -> 1.19 (1.19), 3 -> 32 3x3 stride 2 @224 2.83 -> 0.51 (0.48), 4 -> 64 5x5 @112 6.48 -> 3.52
// (3.46), AlexNet's 3 -> 96 11x11 stride 4 4.10 against 6.24 (3.70), 1 -> 32 5x5 @28 0.26 -> 0.07
// (0.14); 3 -> 24 7x7 stride 2 (no whole tiles) 4.98 -> 3.57 (2.33).
at::MemoryFormat weight_grad_format(at::MemoryFormat result, const Conv2dShape& sh, const Conv2dParams& p,
                                    at::ScalarType ct) {
  // (Strided, from 8192 input pixels a plane, NCHW stays NCHW: converting its 26 MB input
  // cost more than the channels_last path saved; batch 8, two threads, in-process A/B, NCHW 3x3
  // stride 2 @112: 64 -> 64 8.3-8.9 -> 6.2-6.3 ms, 32 -> 64 4.6 -> 3.2, 96 -> 96 15.2 -> 11.7
  // (torch 5.3-5.7, 2.9, 10.7); @56 the conversion still paid: 128 -> 128 5.7 against 7.7.)
  const bool strided_large = (p.stride_h > 1 || p.stride_w > 1) && sh.H * sh.W >= 8192;
  if (ct == at::kFloat && p.groups == 1 && !is_depthwise(sh, p) && sh.R * sh.S > 1 && sh.Cg >= 8 &&
      !(strided_large && result == at::MemoryFormat::Contiguous))
    return at::MemoryFormat::ChannelsLast;
  // depthwise, strided: channels_last's row loops, both operands copied there (the NCHW loop went
  // a tap at a time over strided planes). Batch 8, two threads: 96 3x3 stride 2 @112 4.5 -> 2.9
  // ms (torch 2.5), 240 3x3 stride 2 @28 0.59 -> 0.17 (0.49), 672 5x5 stride 2 @14 1.10 -> 0.30;
  // at stride 1 NCHW's own kernel stayed faster (144 3x3 @56 2.2 against 2.9 copied)
  if (ct == at::kFloat && is_depthwise(sh, p) && (p.stride_h > 1 || p.stride_w > 1))
    return at::MemoryFormat::ChannelsLast;
  // From NCHW they compute in NCHW on images over 64 x 64 pixels; on smaller ones NCHW's
  // several-image products (each thread packing every image's transposed im2col) lost to both
  // operands copied to channels_last (in-process A/B, two threads, torch in parentheses): batch 32
  // 3 -> 32 3x3 @32 1.12 -> 0.25 ms (0.22), batch 64 1 -> 32 5x5 @28 1.69 -> 0.46 (0.30), batch 8
  // 3 -> 64 3x3 @32 0.37 -> 0.14 (0.15), @64 0.65 -> 0.48 (0.40), 3 -> 64 7x7 stride 2 @56 0.92 ->
  // 0.46 (0.41); above, the copies cost more (3 -> 32 5x5 @96 1.41 against 2.13, the 7x7 stride-2
  // stem @224 7.3 against 7.4).
  if (ct == at::kFloat && result == at::MemoryFormat::Contiguous && few_channels_nchw_grads(sh, p))
    return sh.H * sh.W <= 4096 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return compute_format(result, sh, p);
}

// A grouped float32 weight gradient at stride 1 that neither grouped.cpp's kernels nor the regrouped
// in-place tiles take (groups of 24, 48, 80 channels; 32 or 64 on images of 32 x 32 pixels or
// more), computed a group at a time as a one-group layer's on copies of the group's X and dY: each
// group then has every path of one group (Winograd's 3x3 weight gradient, the filter rows, the
// swapped 1x1), where the grouped layer had the shifted path's tiles and NCHW its per-group
// im2col GEMMs. Batch 8, two threads, Intel Xeon, process-alternating A/B, before -> after
// (torch): channels_last 2 groups of 48 3x3 @56 12.8 -> 7.7 ms (7.7), 3 of 48 @56 25.4 -> 12.4
// (15.8), 4 of 56 @28 11.7 -> 5.8 (6.1), 4 of 24 @28 3.06 -> 2.17 (1.48), 2 of 32 @56 6.39 -> 4.10,
// @112 25.0 -> 17.6, 1x1 3 groups of 80 @28 2.71 -> 2.37; NCHW 2 of 48 @56 9.89 -> 8.29, 4 of 24
// @28 2.58 -> 2.06, 4 of 32 @56 10.7 -> 9.4. At stride 2 the grouped paths stayed (2 of 48 @112
// 19.5 against 19.6, NCHW 4 of 56 @56 11.0 against 12.3); 9 and 21 groups of 48 at 14 x 14 and 7 x
// 7 keep the regrouped tiles (wgrad_regrouped).
bool wgrad_groups_dense(const Conv2dShape& sh, const Conv2dParams& p) {
  return p.groups > 1 && !is_depthwise(sh, p) && sh.Cg >= 8 && p.stride_h == 1 && p.stride_w == 1 &&
         fits_scratch(sh) && (sh.R * sh.S > 1 || p.is_pointwise_identity(sh.R, sh.S));
}

// A grouped float32 weight gradient on wgrad_nhwc_in_place with each group's X and dY copied out
// first ([G][pixels][Cg], [G][pixels][Kg]: regroup), whatever the layout: groups of whole register
// tiles (wgrad_tile: 32 channels, or 16 in 16 x 16 tiles, on AVX-512; 16 on AVX2), on images of
// fewer than 32 x 32 output pixels (as for one group, the in-place tiles lose above: 2 groups of
// 32 @56 3.7 -> 4.4 ms NCHW). In place their rows were C floats apart (4 KiB at ResNeXt-50's
// 1024 @7: a page a step); they ran on per-group NCHW GEMMs (an im2col per group) or, up to 16
// channels a group, on grouped.cpp's kernels. Batch 8, NCHW / channels_last, torch 0.4-3.0 ms:
// 32 groups of 32 @7 2.55 / 2.78 -> 0.84 / 0.78 ms, 16 of 32 @14 3.57 / 3.96 -> 1.59 / 1.59,
// 8 of 32 @28 5.99 / 6.61 -> 3.31 / 3.26, 8 of 64 @14 4.86 / 5.27 -> 2.78 / 2.70, 8 of 32 stride
// 2 @56 6.67 / 8.58 -> 5.76 / 5.73; 16-channel groups: 32 of 16 @14 1.78 / 1.80 -> 1.00 / 1.10,
// 64 of 16 @7 1.59 / 1.62 -> 0.53 / 0.54, 16 of 16 @14 0.90 / 0.90 -> 0.51 / 0.53, 16 of 16 @28
// 2.73 -> 2.55 NCHW. Channels_last 16-column tiles only up to 16 x 16 output pixels: above,
// grouped.cpp's channels_last kernel wins (16 of 16 @28 2.39 against 2.78; at stride 2 from 56,
// 3.12 against 4.15). Both copies under the scratch cap (they live in the calling thread's
// kConvCol / kConvPadded buffers). mf: the layout of the operands.
// Groups of 48 channels (the 8 x 48 tile) from 28 x 28 output pixels go a group at a time to the
// one-group paths instead (wgrad_groups_dense; 4 groups of 48 @28, batch 8, process-alternating
// A/B: channels_last 4.81 -> 4.10 ms, NCHW 4.91 -> 4.22, torch 3.7 / 4.6), where 32-channel
// groups kept these tiles (2 of 32 @28 1.18 against 1.26 ms) and smaller images did (9 groups of 48
// @14 2.29 against 3.43).
bool wgrad_regrouped(const Conv2dShape& sh, const Conv2dParams& p, at::MemoryFormat mf) {
  const int64_t pixels = sh.Ho * sh.Wo;
  if (pixels >= 28 * 28 && sh.Cg % 32 != 0 && wgrad_groups_dense(sh, p)) return false;
  return p.groups > 1 && !is_depthwise(sh, p) && wgrad_whole_tiles(sh, p) && pixels < 1024 && fits_scratch(sh) &&
         (mf == at::MemoryFormat::Contiguous || wgrad_tile(sh, p).NR >= 32 || pixels <= 256);
}

// A grouped layer's shape and parameters as one group's.
std::pair<Conv2dShape, Conv2dParams> one_group(const Conv2dShape& sh, const Conv2dParams& p) {
  Conv2dShape s1 = sh;
  s1.C = sh.Cg, s1.K = sh.Kg;
  Conv2dParams p1 = p;
  p1.groups = 1;
  return {s1, p1};
}

// wgrad_groups_dense's channels_last float32 groups on Winograd's weight gradient (its one-group
// path): weight_grad3x3 reads each group's channels of X and dY where they lie among the others'
// (pixel strides), rather than copies of them (regroup). Batch 8, two threads, process-alternating
// A/B, ratio to torch before -> after: 2 groups of 24 @56 0.82 -> 0.99, 4 of 24 @28 0.71 -> 0.87,
// 4 of 48 @28 0.90 -> 1.07, 2 of 48 @56 1.06 -> 1.30, 2 of 64 @56 1.38 -> 1.71.
bool wgrad_groups_winograd_in_place(const at::Tensor& gy, const at::Tensor& x, at::MemoryFormat mf,
                                    const Conv2dShape& sh, const Conv2dParams& p) {
  if (gy.scalar_type() != at::kFloat || x.scalar_type() != at::kFloat || mf != at::MemoryFormat::ChannelsLast ||
      !gy.is_contiguous(at::MemoryFormat::ChannelsLast) || !x.is_contiguous(at::MemoryFormat::ChannelsLast) ||
      !wgrad_groups_dense(sh, p) || !winograd::enabled())
    return false;
  const auto [s1, p1] = one_group(sh, p);
  return winograd::weight_grad_applicable(s1.N, s1.C, s1.K, s1.R, s1.S, p1.stride_h, p1.stride_w, p1.dil_h, p1.dil_w,
                                          p1.groups, s1.Ho, s1.Wo);
}

// A grouped forward or data gradient computed a group at a time as a one-group layer's (the
// group's slice of the input copied out, the result copied into its channels), where grouped.cpp
// has no kernel for its groups (Cg == Kg in 2, 4, 8, 16, 32) and the groups are large enough for
// the copies to pay: a spatial kernel, >= 8 channels a group, 28 x 28 output pixels or more. Each
// group then has every path of one group (Winograd at stride 1, the channels_last GEMM's
// gathered rows at stride 2). Batch 8, channels_last unless said, two threads, Intel Xeon,
// process-alternating A/B, forward / data gradient before -> after (torch): 2 groups of 48 @56
// 8.79 / 9.12 -> 7.03 / 8.10 ms (7.09 / 7.41), 2 of 64 @56 15.2 / 15.4 -> 10.5 / 11.6 (12.6 /
// 12.8), 4 of 48 @28 4.17 / 4.29 -> 3.52 / 3.70 (3.43 / 3.52), NCHW 4.62 / 4.62 -> 3.68 / 3.86
// (4.24 / 4.14), stride 2 @56 6.44 / 12.0 -> 5.96 / 7.87 (4.04 / 5.68); 4 of 24 @28 1.87 / 1.99
// either way. Smaller images and 1x1 layers lost (9 groups of 48 @14 2.56 -> 3.16, 1x1 3 of 80 @28
// 1.45 -> 2.02).
bool groups_as_dense(const Conv2dShape& sh, const Conv2dParams& p) {
  const bool kernels = sh.Cg == sh.Kg && (sh.Kg == 2 || sh.Kg == 4 || sh.Kg == 8 || sh.Kg == 16 || sh.Kg == 32);
  return p.groups > 1 && !is_depthwise(sh, p) && sh.Cg >= 8 && sh.Kg >= 8 && !kernels && sh.R * sh.S > 1 &&
         sh.Ho * sh.Wo >= 28 * 28;
}

// A grouped float32 channels_last layer that groups_as_dense computes a group at a time, each
// group on Winograd: conv3x3 reads and writes the group's channels where they lie among the
// others' (its pixel strides), rather than on copies of the group's input and result (a quarter to
// a third of the time). Forward (data gradient) x's (dY's) layer shape sh. Batch 8, 2 threads,
// process-alternating A/B, channels_last, ratio to torch before -> after, forward (data
// gradient): 2 groups of 24 @56 0.84 -> 1.16 (0.87 -> 1.51), 4 of 24 @28 0.83 -> 1.00 (0.80 ->
// 1.00), 2 of 48 @56 1.05 -> 1.19, 4 of 48 @28 1.02 -> 1.08 (1.01 -> 1.09), 2 of 64 @56 1.33 ->
// 1.46.
bool groups_winograd_in_place(const at::Tensor& x, const at::Tensor& w, at::MemoryFormat mf, const Conv2dShape& sh,
                              const Conv2dParams& p) {
  if (x.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat || mf != at::MemoryFormat::ChannelsLast ||
      !x.is_contiguous(at::MemoryFormat::ChannelsLast) || !groups_as_dense(sh, p))
    return false;
  const auto [s1, p1] = one_group(sh, p);
  return winograd_forward(s1, p1);
}

// Those groups on conv3x3, a group's channels read and written in place (pixel strides): the
// forward (flip false; t the layer's shape) or the data gradient (flip: x is dY, t its
// transposed_shape, the weight rotated and transposed by conv3x3 itself). y: channels_last
// [N][t.K][t.Ho][t.Wo]; pad_t, pad_l as conv3x3's.
at::Tensor winograd_groups(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias, bool flip,
                           const Conv2dShape& t, int64_t groups, int64_t pad_t, int64_t pad_l) {
  auto y = at::empty({t.N, t.K, t.Ho, t.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const bool krsc = wino_reads_krsc(weight);
  const at::Tensor w = krsc ? weight : weight.contiguous();
  const at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  const int64_t wc = flip ? t.Kg : t.Cg;  // the weight's input channels a group
  for (int64_t g = 0; g < groups; ++g)
    winograd::conv3x3(x.const_data_ptr<float>() + g * t.Cg, w.const_data_ptr<float>() + g * t.Kg * t.Cg * 9, wc * 9,
                      krsc ? 1 : 9, krsc ? wc : 1, flip, b.defined() ? b.const_data_ptr<float>() + g * t.Kg : nullptr,
                      y.data_ptr<float>() + g * t.Kg, t.N, t.Cg, t.H, t.W, t.Kg, t.Ho, t.Wo, pad_t, pad_l, true, 0,
                      t.C, t.K);
  return y;
}

// im2col_nhwc_rows / _direct for a product over the output pixels from i0 on.
struct RowsFrom {
  const Im2colRows* a;
  int64_t i0;
};
void im2col_nhwc_rows_from(const void* ctx, int64_t i, int64_t count, int64_t k0, int64_t kc, float* dst) {
  const RowsFrom& f = *static_cast<const RowsFrom*>(ctx);
  im2col_nhwc_rows(f.a, f.i0 + i, count, k0, kc, dst);
}
bool im2col_nhwc_direct_from(const void* ctx, int64_t i, int64_t count, int64_t k0, int64_t kc, RowSegments* seg) {
  const RowsFrom& f = *static_cast<const RowsFrom*>(ctx);
  return im2col_nhwc_direct(f.a, f.i0 + i, count, k0, kc, seg);
}

// A grouped float32 forward whose groups' output channels fill whole column panels of the GEMM's
// tile (Kg a multiple of its 32 columns on AVX-512, 16 on AVX2): each group's X copied out first
// (regroup: [G][pixels][Cg]), then per group one product over the batch's output pixels with its
// im2col made as it is read (gemm_rows, a filter row's S*Cg floats one run, or read in place
// where a tile's pixels lie along one image row), written into channels_last y (row stride K);
// units of (group, block of pixels), each product on one thread. In channels_last (result
// layout mf) it replaces the per-group NCHW GEMMs (and grouped.cpp's NCHW kernel read in place
// for 32-channel groups); in NCHW that kernel stays faster except on the smallest images. Batch 8,
// 32-channel groups, medians in one process, NCHW / channels_last (torch 0.68-2.9 ms): 32 groups
// @7 1.23 / 1.26 -> 1.00 / 1.03 ms; channels_last 16 groups @14 1.99 -> 1.72, 8 @14 1.03 -> 0.82,
// 8 @28 3.43 -> 3.28; NCHW 16 @14 1.79 against 1.99, 8 @28 2.98 against 3.48 (kept).
// Also groups of 48 output channels (AVX-512's 8 x 48 tile, whole panels) in either layout, and of
// other multiples of 8 over 16 (partial panels) in channels_last and on NCHW images up to 16 x 16
// pixels, which went through per-group NCHW GEMMs (RegNet's 24- to 112-channel groups). Batch 8,
// forward + backward, process-alternating A/B, Intel Xeon, before -> after (torch / convx after):
// channels_last 2 groups of 48 @56 44.0 -> 33.8 ms (0.74), 4 of 48 @28 21.1 -> 14.2 (0.82), 9 of
// 48 @14 12.3 -> 7.9 (0.91), 21 of 48 @7 10.5 -> 5.0 (1.15), 4 of 48 stride 2 @56 33.1 -> 30.1;
// NCHW 2 of 48 @56 36.4 -> 31.2, 4 of 48 @28 18.5 -> 15.8, 21 of 48 @7 10.1 -> 6.0, 3 of 80 @14
// 8.86 -> 7.50; forward alone, channels_last: 4 of 24 @28 2.15 -> 1.81, 4 of 56 @14 2.71 -> 1.92,
// 3 of 80 @14 3.28 -> 2.10, 4 of 112 @14 7.84 -> 5.30. NCHW above 16 x 16 kept its GEMMs (4 of 24
// @28 6.93 against 7.56, 4 of 56 @28 26.1 against 28.8, 4 of 24 @56 26.4 against 27.1).
bool forward_regrouped_applicable(const Conv2dShape& sh, const Conv2dParams& p, at::MemoryFormat mf) {
  const int64_t pixels = sh.Ho * sh.Wo;
  const bool panels32 = sh.Kg % micro_tile<float>().NR == 0;
  const bool whole = panels32 || sh.Kg == 48, partial = !whole && sh.Kg > 16 && sh.Kg % 8 == 0;
  return p.groups > 1 && !is_depthwise(sh, p) && (whole || partial) && fits_scratch(sh) &&
         (mf == at::MemoryFormat::ChannelsLast || pixels <= 64 || (!panels32 && (sh.Kg == 48 || pixels <= 256)));
}

// xr: regroup(x); w: [K][R][S][Cg] (the channels_last weight); y: channels_last [N][Ho][Wo][K].
void forward_regrouped(const float* xr, const float* w, const float* bias, float* y, const Conv2dShape& sh,
                       const Conv2dParams& p) {
  const int64_t G = p.groups, Cg = sh.Cg, Kg = sh.Kg, M = sh.N * sh.Ho * sh.Wo, CRS = sh.R * sh.S * Cg;
  const bool runs = p.dil_w == 1;  // im2col_nhwc_direct's rows in place
  // (group, block of output rows) units, the groups' products split only as far as the threads need
  // (and a multiple of the threads where a few more blocks make one: RegNet's 9 groups of 48 @14
  // ran as 5 + 4 units on two threads, 10 % of the layer's time waiting)
  const int64_t nt = at::get_num_threads(), cap = M / 96 + 1;
  int64_t blocks = std::clamp<int64_t>(ceil_div(2 * nt, G), 1, cap);
  for (int64_t b = blocks; b <= std::min(cap, blocks + nt); ++b)
    if (G * b % nt == 0) {
      blocks = b;
      break;
    }
  const int64_t rows = ceil_div(ceil_div(M, blocks), 12) * 12;
  at::parallel_for(0, G * blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t g = u / blocks, i0 = u % blocks * rows, m = std::min(M - i0, rows);
      if (m <= 0) continue;
      const Im2colRows a{xr + g * sh.N * sh.H * sh.W * Cg, sh.H, sh.W, Cg, Cg, sh.S, sh.Ho, sh.Wo, &p};
      const RowsFrom from{&a, i0};
      gemm_rows(m, Kg, CRS, &im2col_nhwc_rows_from, &from, w + g * Kg * CRS, 1, CRS, y + i0 * sh.K + g * Kg, sh.K,
                false, false, runs ? &im2col_nhwc_direct_from : nullptr, runs ? sh.S * Cg : 0, nullptr,
                bias ? bias + g * Kg : nullptr);
    }
  });
}

// An NCHW float32 forward with few input channels and a large filter (3-channel 7x7 stems, which
// compute_format keeps in NCHW: under 8 channels its channels_last copies cost more than they
// gained) whose output channels are not whole blocks of 8 (those take grouped.cpp's NCHW kernel,
// grouped::dense_nchw_applicable, since; the figures below predate it): products of
// forward_regrouped's kind over blocks of whole output rows of one
// image (about 256 KiB of result), each made [pixels][K] in the thread's buffer with its im2col
// made as read from a channels_last copy of the input (or read there in place), then transposed
// into the NCHW planes while in L2. The NCHW path's im2col matrix (C*R*S rows of every output
// pixel) went through memory twice, and computing in channels_last outright paid the 26 MB
// result's transpose through memory. Medians, ms, the two paths in alternating processes (torch
// beside each): the stem, batch 8,
// 8.6-9.3 -> 6.7-8.2 (5.5-6.9), batch 2 1.93-2.09 -> 1.69-1.78 (1.43-1.64); 3 -> 64 7x7 @112
// stride 1 8.6-9.2 -> 6.6-7.5 (5.7-6.4); 4 -> 32 5x5 @56 0.80-0.83 -> 0.70-0.71 (0.56-0.62).
// Not below C*R*S = 96, where the NCHW im2col is short and the transpose costs more than it
// saves (3 -> 64 3x3 @224 6.6 -> 10.0, 3 -> 32 3x3 stride 2 @224 1.24 -> 1.64, 1 -> 32 5x5 @28
// 0.08 -> 0.14).
bool forward_nchw_rows_applicable(const Conv2dShape& sh, const Conv2dParams& p) {
  return p.groups == 1 && sh.C < 8 && sh.C * sh.R * sh.S >= 96 && fits_scratch(sh);
}
void forward_nchw_rows(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& sh,
                       const Conv2dParams& p) {
  const int64_t P = sh.Ho * sh.Wo, K = sh.K, CRS = sh.R * sh.S * sh.C;
  const int64_t rows = std::clamp<int64_t>((int64_t(64) << 10) / K / sh.Wo, 1, sh.Ho);
  const int64_t blocks = ceil_div(sh.Ho, rows);
  const bool runs = p.dil_w == 1;  // im2col_nhwc_direct's rows in place
  const Im2colRows a{x, sh.H, sh.W, sh.C, sh.C, sh.S, sh.Ho, sh.Wo, &p};
  at::parallel_for(0, sh.N * blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      const int64_t n = u / blocks, q0 = u % blocks * rows * sh.Wo, m = std::min(P - q0, rows * sh.Wo);
      float* buf = thread_buffer<float>(kConvCol, rows * sh.Wo * K);
      const RowsFrom from{&a, n * P + q0};
      gemm_rows(m, K, CRS, &im2col_nhwc_rows_from, &from, w, 1, CRS, buf, K, false, false,
                runs ? &im2col_nhwc_direct_from : nullptr, runs ? sh.S * sh.C : 0, nullptr, bias);
      const bool stream = sh.N * K * P * int64_t(sizeof(float)) >= kStreamBytes;  // (layout.h)
      transpose_strided(buf, K, y + n * K * P + q0, P, m, K, stream);
    }
  });
}

// A grouped data gradient at stride 1 as the forward convolution of dY with each group's weight
// rotated 180 degrees and transposed, where that forward is the regrouped one (its output
// channels, Cg, fill whole tiles; channels_last, or NCHW up to 64 pixels). Batch 8, medians in
// one process: 32 groups of 32 @7 NCHW / channels_last 1.34 / 1.40 -> 1.08 / 1.14 ms (torch
// 0.86), channels_last 16 of 32 @14 2.03 -> 1.82, 8 of 32 @14 1.01 -> 0.92 (torch 0.69-1.35).
// mf: the result's layout.
// Also groups that take grouped.cpp's Winograd (forward_fused): 32 channels a group, and NCHW 16
// (channels_last 16-channel groups: grouped::data_grad's Winograd, without the rotated copy).
bool regrouped_data_grad(const at::Tensor& gy, at::MemoryFormat mf, const Conv2dShape& sh, const Conv2dParams& p) {
  if (gy.scalar_type() == at::kDouble || p.groups == 1 || p.stride_h != 1 || p.stride_w != 1) return false;
  const Conv2dShape t = transposed_shape(sh);
  return pads_within_filter(sh, p) && !is_depthwise(sh, p) &&
         (forward_regrouped_applicable(t, p, mf) ||
          ((sh.Cg == 32 || mf == at::MemoryFormat::Contiguous) && grouped::winograd_applicable(t, p)));
}

// The data gradient of a 4x4 stride-2 convolution with padding 1 (the forward of a 4x4 stride-2
// transposed convolution: DCGAN's generator, upsampling decoders) as one 3x3 stride-1 convolution
// of dY on Winograd. Output pixel (2m + a, 2j + b) reads dY's rows m - 1 .. m + 1 and columns
// j - 1 .. j + 1 only (phase a = 0: rows m - 1 and m by taps 3 and 1; a = 1: rows m and m + 1
// by taps 2 and 0), so the four phases are 4 C output channels of a 3x3 convolution (each
// phase's filter zero outside its 2 x 2 taps) whose result, [N][4 C][Ho][Wo], is then put in
// place by the output transform itself (winograd::conv3x3's phase_channels): 9 multiply-adds a
// (pixel, c, k) on Winograd's 36 points a 4 x 4 tile against 16 by the GEMM. Two threads, batch
// 8, transposed convolutions beside torch, in-process A/B (the phases then put in place by a
// copy): 256 -> 128 @28 NCHW 0.98 -> 1.13x, channels_last 0.93 -> 0.99; 128 -> 64 @56 0.93 ->
// 1.24, 0.76 -> 1.00; 512 -> 256 @24 channels_last 0.95 -> 1.08; with the phases written in
// place by the output transform, in the benchmark: 128 -> 64 @56 1.39 / 1.11 (NCHW /
// channels_last), 256 -> 128 @28 1.17 / 1.06. Where dY has under 20 x 20 pixels the GEMM stayed
// faster (the weights, 2.25x the layer's, are built and transformed every call, for few tiles):
// @20 +7 %, @16 -5-0 %, @14 -18-22 %, @7 -40 %. Rounding: tests/test_winograd.py (within twice
// the 3x3 layers' bound).
// On an Intel Xeon (2 MiB of L2 a core, the rule's proxy: the one such machine measured) the GEMM
// path won every layer instead (batch 8, two threads, alternating rounds beside torch, the ratio
// to torch NCHW / channels_last, phases -> GEMM: 256 -> 128 @28 0.91 / 0.78 -> 1.17 / 1.00,
// 128 -> 64 @56 1.57 / 0.75 -> 1.72 / 0.92, 256 -> 128 @20 0.87 / 0.75 -> 1.06 / 1.00), so there it
// keeps the GEMM unless winograd::phases() asks for the phases (1; 0 keeps the GEMM everywhere).
bool phase_winograd_data_grad(const at::Tensor& gy, const Conv2dShape& sh, const Conv2dParams& p) {
  const int mode = winograd::phases();
  const bool phases = mode > 0 || (mode < 0 && l2_bytes() < (int64_t(2) << 20));
  return gy.scalar_type() == at::kFloat && winograd::enabled() && phases && p.groups == 1 && sh.R == 4 &&
         sh.S == 4 && p.stride_h == 2 && p.stride_w == 2 && p.dil_h == 1 && p.dil_w == 1 && p.pad_t == 1 &&
         p.pad_l == 1 && p.pad_b == 1 && p.pad_r == 1 && sh.H == 2 * sh.Ho && sh.W == 2 * sh.Wo &&
         sh.Ho * sh.Wo >= 400 &&
         winograd::applicable(sh.N, sh.K, 4 * sh.C, 3, 3, 1, 1, 1, 1, 1, sh.Ho, sh.Wo);
}

at::Tensor phase_winograd_dgrad(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor* bias,
                                const Conv2dShape& sh, at::MemoryFormat mf) {
  const bool nhwc = mf == at::MemoryFormat::ChannelsLast;
  const int64_t N = sh.N, C = sh.C, K = sh.K, Ho = sh.Ho, Wo = sh.Wo, H = sh.H, W = sh.W, C4 = 4 * C;
  const auto gy = to_format_scratch(grad_output, mf, kLayoutFirst);
  const auto wc = weight.contiguous();  // [K][C][4][4]
  const float* w = wc.const_data_ptr<float>();
  // g [4 C][K][3][3]: g[(2a + b) C + c][k][r][s] = w[k][c][tap(a, r)][tap(b, s)]
  float* g = thread_buffer<float>(kLayoutRotated, C4 * K * 9);
  constexpr int kTap[2][3] = {{3, 1, -1}, {-1, 2, 0}};
  at::parallel_for(0, C4, 1, [&](int64_t b0, int64_t e0) {
    for (int64_t o = b0; o < e0; ++o) {
      const int64_t ph = o / C, c = o % C, a = ph / 2, b = ph % 2;
      float* go = g + o * K * 9;
      for (int64_t k = 0; k < K; ++k) {
        const float* wk = w + (k * C + c) * 16;
        for (int r = 0; r < 3; ++r)
          for (int s = 0; s < 3; ++s) {
            const int th = kTap[a][r], tw = kTap[b][s];
            go[k * 9 + r * 3 + s] = th >= 0 && tw >= 0 ? wk[th * 4 + tw] : 0.f;
          }
      }
    }
  });
  // the bias once a phase, added by the output transform
  float* b4 = nullptr;
  if (bias) {
    const at::Tensor bc = bias->contiguous();
    b4 = thread_buffer<float>(kConvPadded, C4);
    for (int64_t q = 0; q < 4; ++q) std::memcpy(b4 + q * C, bc.const_data_ptr<float>(), C * sizeof(float));
  }
  auto gx = at::empty({N, C, H, W}, grad_output.options().memory_format(mf));
  float* out = gx.data_ptr<float>();
  if (!nhwc || C % 16 == 0) {  // the output transform writes each phase in place
    winograd::conv3x3(gy.const_data_ptr<float>(), g, K * 9, 9, 1, false, b4, out, N, K, Ho, Wo, C4, Ho, Wo, 1, 1, nhwc,
                      C);
    return gx;
  }
  // channels_last with channels not a multiple of 16 (the output transform's vectors would cross
  // phases): z [N][Ho][Wo][4 C], then pixel (m, j), phase row a: channels [2 a C, 2 a C + 2 C)
  // of z -> out pixels (2m + a, 2j .. 2j + 1)
  float* z = thread_buffer<float>(kConvCol, N * C4 * Ho * Wo);
  winograd::conv3x3(gy.const_data_ptr<float>(), g, K * 9, 9, 1, false, b4, z, N, K, Ho, Wo, C4, Ho, Wo, 1, 1, true);
  at::parallel_for(0, N * Ho, 1, [&](int64_t b0, int64_t e0) {
    for (int64_t t = b0; t < e0; ++t) {
      const int64_t n = t / Ho, m = t % Ho;
      for (int64_t a = 0; a < 2; ++a)
        for (int64_t j = 0; j < Wo; ++j)
          std::memcpy(out + ((n * H + 2 * m + a) * W + 2 * j) * C, z + (t * Wo + j) * C4 + 2 * a * C,
                      2 * C * sizeof(float));
    }
  });
  return gx;
}

}  // namespace

// The four primitives every convolution-shaped op is built from (see
// common/conv_ops.h): checks have run; shapes are consistent.
struct CpuConv {
  static constexpr bool cuda_rules = false;

  static at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                            const Conv2dShape& sh, const Conv2dParams& p) {
    return forward_fused(input, weight, bias, nullptr, false, sh, p);
  }

  // The epilogue runs on the compute-type result before its one rounding to the input's type.
  // result_format: the result's memory format when the caller decides it (a data gradient as
  // a forward, whose weight is a channels_last scratch tensor whatever the layout).
  static at::Tensor forward_fused(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                                  const at::Tensor* residual, bool relu, const Conv2dShape& sh,
                                  const Conv2dParams& p,
                                  std::optional<at::MemoryFormat> result_format = std::nullopt) {
    check_cpu_dtype(input, "input");
    const auto mf = result_format ? *result_format : conv_memory_format(input, weight);
    const bool strided_on_the_fly = grouped_strided_on_the_fly(sh, p, mf);
    if (groups_winograd_in_place(input, weight, mf, sh, p)) {
      auto y = winograd_groups(input, weight, bias, false, sh, p.groups, p.pad_t, p.pad_l);
      if (residual) y.add_(*residual);
      if (relu) y.clamp_min_(0);
      return y;
    }
    if (input.scalar_type() != at::kDouble && groups_as_dense(sh, p) && !strided_on_the_fly) {
      auto y = at::empty({sh.N, sh.K, sh.Ho, sh.Wo}, input.options().memory_format(mf));
      const auto [s1, p1] = one_group(sh, p);
      for (int64_t g = 0; g < p.groups; ++g) {
        const at::Tensor b = bias ? bias->narrow(0, g * sh.Kg, sh.Kg) : at::Tensor();
        const at::Tensor r = residual ? residual->narrow(1, g * sh.Kg, sh.Kg) : at::Tensor();
        y.narrow(1, g * sh.Kg, sh.Kg)
            .copy_(forward_fused(input.narrow(1, g * sh.Cg, sh.Cg).contiguous(mf), weight.narrow(0, g * sh.Kg, sh.Kg),
                                 bias ? &b : nullptr, residual ? &r : nullptr, relu, s1, p1, mf));
      }
      return y;
    }
    const bool wino = input.scalar_type() != at::kDouble && winograd_forward(sh, p);  // both layouts natively
    // few channels a group (grouped.h): NCHW by the NCHW kernel; channels_last by the channels_last
    // kernel where it applies (2-16 channels a group, whole vectors), else by the NCHW kernel in place
    const auto ct = compute_type(input.scalar_type());
    if (ct == at::kFloat && input.scalar_type() != at::kDouble && winograd_line_forward(sh, p))
      return line_winograd(input, weight, bias, residual, relu, sh, p, mf, false);
    // 32-channel groups in channels_last on AVX-512 with up to 64 output pixels an image: grouped.cpp's
    // kernel, two vectors a group, where most of the GEMM's register tiles cross image rows (batch
    // 8, 32 groups of 32 @7: forward 0.94-1.09 -> 0.87-1.00 ms, data gradient 1.05-1.12 -> 1.01-1.02,
    // torch 0.78-0.92; 512 @14 stride 2: 0.54 -> 0.49). Larger images keep the GEMM (@14 even, @28
    // 3.7-4.3 against 4.0-4.3, @56 15.0 against 16-19); NCHW keeps its paths (with the two layout
    // copies, 1.15 -> 1.18 ms @7).
    // groups of 16 or 32 channels, 3x3 at stride 1 on AVX-512: grouped.cpp's Winograd F(2x2, 3x3)
    // (data gradients come here as the forward of the rotated weight, regrouped_data_grad); in
    // NCHW a group of an image at a time through the thread's pixel-major copies (batch 8, per-round
    // ratios against torch: 512 @14 in 32 groups 1.03-1.11 -> 1.24-1.29, 1024 @7 0.70 -> 1.17;
    // through channels_last copies of the whole tensors 0.81-0.98)
    const bool gwino = ct == at::kFloat && input.scalar_type() != at::kDouble && grouped::winograd_applicable(sh, p);
    if (gwino && mf == at::MemoryFormat::Contiguous) {
      auto y = at::empty({sh.N, sh.K, sh.Ho, sh.Wo}, input.options().dtype(ct));
      const auto x = input.to(ct).contiguous();
      const auto w = to_format_scratch(weight.to(ct), at::MemoryFormat::ChannelsLast, kLayoutWeight);
      at::Tensor b = bias ? bias->to(ct).contiguous() : at::Tensor();
      grouped::forward_nchw_winograd(x.const_data_ptr<float>(), w.const_data_ptr<float>(),
                                     b.defined() ? b.const_data_ptr<float>() : nullptr, y.data_ptr<float>(), sh, p);
      if (residual) y.add_(residual->to(ct));
      if (relu) y.clamp_min_(0);
      return y.to(input.scalar_type());
    }
    Phases ph;
    if (ct == at::kFloat && input.scalar_type() != at::kDouble && dilated_winograd(sh, p, &ph)) {
      const bool nhwc = mf == at::MemoryFormat::ChannelsLast;
      const int64_t nd = sh.N * ph.d * ph.d;
      const auto x = to_format_scratch(input.to(ct), mf, kLayoutFirst);
      float* xs = thread_buffer<float>(kConvCol, nd * sh.C * ph.Hs * ph.Ws);
      float* ys = thread_buffer<float>(kConvPadded, nd * sh.K * ph.Hos * ph.Wos);
      gather_phases(x.const_data_ptr<float>(), xs, sh.N, sh.C, sh.H, sh.W, ph.d, ph.Hs, ph.Ws, nhwc);
      const bool w_krsc = wino_reads_krsc(weight);
      const auto w = to_format_scratch(weight.to(ct), w_krsc ? at::MemoryFormat::ChannelsLast
                                                             : at::MemoryFormat::Contiguous, kLayoutWeight);
      at::Tensor b = bias ? bias->to(ct).contiguous() : at::Tensor();
      winograd::conv3x3(xs, w.const_data_ptr<float>(), sh.C * 9, w_krsc ? 1 : 9, w_krsc ? sh.C : 1, false,
                        b.defined() ? b.const_data_ptr<float>() : nullptr, ys, nd, sh.C, ph.Hs, ph.Ws, sh.K, ph.Hos,
                        ph.Wos, p.pad_t / ph.d, p.pad_l / ph.d, nhwc);
      auto y = at::empty({sh.N, sh.K, sh.Ho, sh.Wo}, input.options().dtype(ct).memory_format(mf));
      scatter_phases(ys, y.data_ptr<float>(), sh.N, sh.K, sh.Ho, sh.Wo, ph, nhwc);
      if (residual) y.add_(residual->to(ct));
      if (relu) y.clamp_min_(0);
      return y.to(input.scalar_type());
    }
    const bool wide = ct == at::kFloat && !wino && input.scalar_type() != at::kDouble &&
                      (gwino || (grouped::wide_applicable(sh, p) && mf == at::MemoryFormat::ChannelsLast &&
                                 sh.Ho * sh.Wo <= 64));
    if (ct == at::kFloat && !wino && !wide && !strided_on_the_fly && forward_regrouped_applicable(sh, p, mf)) {
      auto y = scratch_result({sh.N, sh.K, sh.Ho, sh.Wo}, input.options().dtype(ct), at::MemoryFormat::ChannelsLast,
                              mf, kLayoutSecond);
      if (y.numel() == 0) return to_format(y, mf).to(input.scalar_type());
      // the input zero-padded: every im2col row a filter row's S*Cg floats at a time, no bounds
      // tests (channels_last 8 groups of 32 @28, forward and data gradient: 3.38 -> 3.12 ms, 1-2 %
      // @14; at 7 x 7 the padded copy, 1.65x the input, cost 3 % more than it saved)
      Conv2dShape sp = sh;
      Conv2dParams pp = p;
      if (sh.Ho * sh.Wo > 64) {
        sp.H += p.pad_t + p.pad_b, sp.W += p.pad_l + p.pad_r;
        pp.pad_t = pp.pad_b = pp.pad_l = pp.pad_r = 0;
      }
      float* xr = thread_buffer<float>(kConvCol, sh.N * sh.C * sp.H * sp.W);
      regroup(input.to(ct), p.groups, xr, p.pad_t - pp.pad_t, p.pad_b - pp.pad_b, p.pad_l - pp.pad_l,
              p.pad_r - pp.pad_r);
      auto w = to_format_scratch(weight.to(ct), at::MemoryFormat::ChannelsLast, kLayoutWeight);
      at::Tensor b = bias ? bias->to(ct).contiguous() : at::Tensor();
      forward_regrouped(xr, w.const_data_ptr<float>(), b.defined() ? b.const_data_ptr<float>() : nullptr,
                        y.data_ptr<float>(), sp, pp);
      if (residual) y.add_(residual->to(ct));
      if (relu) y.clamp_min_(0);
      return to_format(y, mf).to(input.scalar_type());
    }
    const bool grp_cl = input.scalar_type() != at::kDouble && (grouped::applicable(sh, p) || wide);
    const bool grp_nchw = !wino && !wide && input.scalar_type() != at::kDouble && grouped::nchw_applicable(sh, p) &&
                          (mf == at::MemoryFormat::Contiguous || !grp_cl);
    const bool grp = !wino && !grp_nchw && grp_cl;
    const auto cf = wino     ? winograd_format(mf, sh.H, sh.W)
                    : grp_nchw ? mf  // (the grouped NCHW kernel reads and writes either layout)
                    : grp      ? at::MemoryFormat::ChannelsLast
                               : compute_format(mf, sh, p, ct == at::kFloat);
    const bool nhwc = cf == at::MemoryFormat::ChannelsLast;
    // computed in the other layout: the operand's copy and the result before its copy back are
    // scratch tensors (layout.h)
    auto y = scratch_result({sh.N, sh.K, sh.Ho, sh.Wo}, input.options().dtype(ct), cf, mf, kLayoutSecond);
    if (y.numel() == 0) return to_format(y, mf).to(input.scalar_type());
    const bool gemm_path = !wino && !grp && !grp_nchw && !is_depthwise(sh, p);
    // (the spaced pixels only where forward_impl's gathered rows take the layer: not the few-output
    // and few-input kernels below)
    const bool spaced = ct == at::kFloat && input.scalar_type() != at::kDouble && gemm_path && nhwc &&
                        !few_outputs::applicable(sh, p) && !(sh.K <= 4 && grouped::dense_nchw_applicable(sh, p)) &&
                        pixels_spaced(sh, p);
    auto x = spaced ? channels_last_spaced(input.to(ct), sh.C + kPixelSpacing, kLayoutFirst)
                    : to_format_scratch(input.to(ct), cf, kLayoutFirst);
    // The GEMM path takes the weight in either layout (forward_impl: a channels_last weight is
    // read in place by the NHWC product); the other kernels want it contiguous. (A channels_last
    // weight went through a contiguous copy and, for NHWC, back: 2 x 9.4 MB a call for
    // 512 x 512 x 3 x 3, ~5% of a stride-2 layer's time.)
    // (grouped.cpp's channels_last kernel takes the weight channels_last, [K][R][S][Cg]; Winograd
    // either layout in place: a channels_last model's 512 x 512 x 3 x 3 weight copied a call
    // cost 512 @7 a fifth of its time, 1.61 -> 1.25x torch)
    const bool w_krsc = wino && wino_reads_krsc(weight);
    auto w = gemm_path ? weight.to(ct)
                       : to_format_scratch(weight.to(ct),
                                           grp || w_krsc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous,
                                           kLayoutWeight);
    at::Tensor b = bias ? bias->to(ct).contiguous() : at::Tensor();
    // NCHW with few input channels and whole blocks of 8 output channels: grouped.cpp's NCHW
    // kernel as one group, vectors along the output rows stored in place (no im2col, no
    // transposes). Batch 8, two threads, in-process A/B against the paths below (ratio to torch):
    // the 3 -> 64 7x7 stride-2 stem @224 0.98 -> 1.18 (time -20 %), VGG's 3 -> 64 3x3 @224 1.22 ->
    // 2.13 (-42 %), 4 -> 32 5x5 @56 0.72 -> 1.03, 3 -> 32 3x3 stride 2 @224 0.98 -> 1.24, CIFAR's
    // 3 -> 16 3x3 @32 (batch 128) 0.88 -> 1.65, 3 -> 64 3x3 @64 1.31 -> 1.43.
    // Up to 4 output channels (dense_nchw_applicable), either layout: the same kernel, channels_last
    // read and written by its strides. Against the GEMM's 16-column (or wider) tiles, batch 8 unless
    // said, two threads, process-alternating A/B on the Intel Xeon: 64 -> 3 3x3 @128 0.61 -> 2.84x
    // torch NCHW, 0.55 -> 1.15 channels_last; 32 -> 1 @64 0.74 -> 3.30; 256 -> 1 @64 0.68 -> 2.24;
    // 16 -> 3 @32, batch 128 (CIFAR's stem's data gradient as the forward of dY, NCHW) 0.72 -> 2.75,
    // channels_last 0.61 -> 1.39.
    // Not channels_last 1x1 layers: read by strides plane by plane, 64 -> 1 @128 and 256 -> 3 @64
    // ran 30-40 % slower there than the GEMM reading the pixels' channels in place.
    // channels_last over a multiple of 16 input channels: few_outputs.cpp, vectors along the input
    // channels read where they lie, a block of pixels' sums at once (in-process ratio to torch,
    // batch 8, two threads, Intel Xeon): 64 -> 3 3x3 @128 1.15 -> 2.4, 256 -> 1 3x3 @64 0.99 ->
    // 4.7, 64 -> 1 1x1 @128 (the GEMM) 0.73 -> 2.0.
    if (ct == at::kFloat && gemm_path && nhwc && few_outputs::applicable(sh, p)) {
      const auto wc = to_format_scratch(w, at::MemoryFormat::ChannelsLast, kLayoutWeight);
      few_outputs::forward_nhwc(x.const_data_ptr<float>(), wc.const_data_ptr<float>(),
                                b.defined() ? b.const_data_ptr<float>() : nullptr, y.data_ptr<float>(), sh, p);
    } else if (ct == at::kFloat && gemm_path && (!nhwc || (sh.K <= 4 && sh.R * sh.S > 1)) &&
        grouped::dense_nchw_applicable(sh, p)) {
      const auto wc = to_format_scratch(w, at::MemoryFormat::Contiguous, kLayoutWeight);
      grouped::forward_nchw(x.const_data_ptr<float>(), wc.const_data_ptr<float>(),
                            b.defined() ? b.const_data_ptr<float>() : nullptr, y.data_ptr<float>(), sh, p, nhwc);
    } else if (ct == at::kFloat && gemm_path && !nhwc && forward_nchw_rows_applicable(sh, p)) {
      // (x may be a scratch copy in kLayoutFirst already; kConvPadded is free on this path)
      const auto xc = to_format_scratch(x, at::MemoryFormat::ChannelsLast, kConvPadded);
      const auto wc = to_format_scratch(w, at::MemoryFormat::ChannelsLast, kLayoutWeight);
      forward_nchw_rows(xc.const_data_ptr<float>(), wc.const_data_ptr<float>(),
                        b.defined() ? b.const_data_ptr<float>() : nullptr, y.data_ptr<float>(), sh, p);
    } else if (grp_nchw) {
      grouped::forward_nchw(x.const_data_ptr<float>(), w.const_data_ptr<float>(),
                            b.defined() ? b.const_data_ptr<float>() : nullptr, y.data_ptr<float>(), sh, p, nhwc);
    } else if (wino) {  // float32 here (half types are computed in float32)
      winograd::conv3x3(x.const_data_ptr<float>(), w.const_data_ptr<float>(), sh.Cg * 9, w_krsc ? 1 : 9,
                        w_krsc ? sh.Cg : 1, false,
                        b.defined() ? b.const_data_ptr<float>() : nullptr, y.data_ptr<float>(), sh.N, sh.C, sh.H,
                        sh.W, sh.K, sh.Ho, sh.Wo, p.pad_t, p.pad_l, nhwc);
    } else if (grp) {
      grouped::forward(x.const_data_ptr<float>(), w.const_data_ptr<float>(),
                       b.defined() ? b.const_data_ptr<float>() : nullptr, y.data_ptr<float>(), sh, p);
    } else AT_DISPATCH_FLOATING_TYPES(ct, "conv2d_forward_cpu", [&] {
      if (is_depthwise(sh, p))
        depthwise::forward<scalar_t>(x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                     b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(), sh,
                                     p, nhwc);
      else
        forward_impl<scalar_t>(x, w, b.defined() ? &b : nullptr, sh, p, nhwc, y, spaced ? sh.C + kPixelSpacing : 0);
    });
    if (residual) y.add_(residual->to(ct));
    if (relu) y.clamp_min_(0);
    return to_format(y, mf).to(input.scalar_type());
  }

  static at::Tensor data_grad(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor* bias,
                              const Conv2dShape& sh, const Conv2dParams& p) {
    check_cpu_dtype(grad_output, "grad_output");
    const auto mf = conv_memory_format(grad_output, weight);
    const bool grouped_phases = grouped_phase_rows(grad_output, mf, sh, p);
    const Conv2dShape tr = transposed_shape(sh);  // dX = dY (*) W^T
    // Up to 4 channels of dY over a multiple of 16 of dX at stride 1 (few_outputs.cpp: each dX pixel's
    // channel vectors summed over its taps and dY's channels): channels_last, and NCHW (dY and dX
    // through layout copies) where it is not the forward of dY, whose weights outnumber dY there
    // (the GEMM's 4-step products and col2im had run it at 0.4x torch). Batch 8, two threads,
    // ratio to torch: 256 -> 4 3x3 @14 0.38 -> 1.65 channels_last, 0.40 -> 2.15 NCHW; 64 -> 1 1x1
    // @128 channels_last 1.04 -> 1.64.
    if (grad_output.scalar_type() == at::kFloat && few_outputs::data_grad_applicable(sh, p) &&
        (mf == at::MemoryFormat::ChannelsLast ||
         (sh.R * sh.S > 1 && !data_grad_as_forward(grad_output, mf, sh, p)))) {
      const auto cl = at::MemoryFormat::ChannelsLast;
      auto gx = scratch_result({sh.N, sh.C, sh.H, sh.W}, grad_output.options(), cl, mf, kLayoutSecond);
      if (gx.numel() == 0) return to_format(gx, mf);
      const auto gy = to_format_scratch(grad_output, cl, kLayoutFirst);
      const auto w = to_format_scratch(weight, cl, kLayoutWeight);
      const at::Tensor b = bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
      few_outputs::data_grad_nhwc(gy.const_data_ptr<float>(), w.const_data_ptr<float>(),
                                  b.defined() ? b.const_data_ptr<float>() : nullptr, gx.mutable_data_ptr<float>(), sh,
                                  p);
      return to_format(gx, mf);
    }
    if (p.stride_h == 1 && p.stride_w == 1 && groups_winograd_in_place(grad_output, weight, mf, tr, p)) {
      // dX = dY (*) rot180(W)^T a group at a time, dY's and dX's pixels among the other groups'
      return winograd_groups(grad_output, weight, bias, true, tr, p.groups, 2 - p.pad_t, 2 - p.pad_l);
    }
    if (grad_output.scalar_type() != at::kDouble && groups_as_dense(sh, p) && !grouped_phases) {
      auto gx = at::empty({sh.N, sh.C, sh.H, sh.W}, grad_output.options().memory_format(mf));
      const auto [s1, p1] = one_group(sh, p);
      for (int64_t g = 0; g < p.groups; ++g) {
        const at::Tensor b = bias ? bias->narrow(0, g * sh.Cg, sh.Cg) : at::Tensor();
        gx.narrow(1, g * sh.Cg, sh.Cg)
            .copy_(data_grad(grad_output.narrow(1, g * sh.Kg, sh.Kg).contiguous(mf), weight.narrow(0, g * sh.Kg, sh.Kg),
                             bias ? &b : nullptr, s1, p1));
      }
      return gx;
    }
    if (phase_winograd_data_grad(grad_output, sh, p))
      return phase_winograd_dgrad(grad_output, weight, bias, sh, mf);
    if (grad_output.scalar_type() != at::kDouble && winograd_line_data_grad(sh, p))
      return line_winograd(grad_output, weight, bias, nullptr, false, sh, p, mf, true);  // dX = dY (*) W reversed
    if (regrouped_data_grad(grad_output, mf, sh, p) || data_grad_as_forward(grad_output, mf, sh, p)) {
      // dX = dY (*) W rotated 180 degrees and transposed (within each group), at stride 1 with
      // padding d*(R-1) - pad; grouped, on the regrouped forward
      Conv2dParams q = p;
      q.pad_t = p.dil_h * (sh.R - 1) - p.pad_t, q.pad_b = p.dil_h * (sh.R - 1) - p.pad_b;
      q.pad_l = p.dil_w * (sh.S - 1) - p.pad_l, q.pad_r = p.dil_w * (sh.S - 1) - p.pad_r;
      const Conv2dShape t = transposed_shape(sh);
      // (channels_last, the layout that forward computes in, in scratch memory: no copy there)
      const at::Tensor wr = rotated_weight_scratch(weight, kLayoutRotated, kLayoutWeight, p.groups);
      return forward_fused(grad_output, wr, bias, nullptr, false, t, q, mf);
    }
    const bool wino = grad_output.scalar_type() != at::kDouble && winograd_data_grad(sh, p);
    const bool grp_cl = grad_output.scalar_type() != at::kDouble && grouped::data_grad_applicable(sh, p);
    const bool grp_nchw = !wino && grad_output.scalar_type() != at::kDouble &&
                          grouped::data_grad_nchw_applicable(sh, p) && (mf == at::MemoryFormat::Contiguous || !grp_cl);
    const bool grp = !wino && !grp_nchw && grp_cl;
    const bool few = grad_output.scalar_type() == at::kFloat && few_channels_nchw_grads(sh, p);
    const auto cf = wino     ? winograd_format(mf, sh.Ho, sh.Wo)
                    : grp_nchw ? mf
                    : grp      ? at::MemoryFormat::ChannelsLast
                    : few      ? at::MemoryFormat::Contiguous
                    : strided_data_grad_channels_last(grad_output, sh, p) || grouped_phases
                        ? at::MemoryFormat::ChannelsLast
                                                                          : compute_format(mf, sh, p);
    const bool nhwc = cf == at::MemoryFormat::ChannelsLast;
    const auto ct = compute_type(grad_output.scalar_type());
    auto gx = scratch_result({sh.N, sh.C, sh.H, sh.W}, grad_output.options().dtype(ct), cf, mf, kLayoutSecond);
    if (gx.numel() == 0) return to_format(gx, mf).to(grad_output.scalar_type());
    at::Tensor b = bias ? bias->to(ct).contiguous() : at::Tensor();
    if (grad_output.numel() == 0) {
      if (b.defined()) gx.copy_(b.view({1, -1, 1, 1}).expand_as(gx));
      else gx.zero_();
      return to_format(gx, mf).to(grad_output.scalar_type());
    }
    auto gy = to_format_scratch(grad_output.to(ct), cf, kLayoutFirst);
    // As in the forward: backward_input_impl takes either layout (for NHWC a channels_last weight
    // is already the [G][Kg][R*S*Cg] it multiplies by).
    const bool gemm_path = !wino && !grp && !grp_nchw && !is_depthwise(sh, p);
    const bool w_krsc = wino && wino_reads_krsc(weight);
    auto w = gemm_path ? weight.to(ct)
                       : to_format_scratch(weight.to(ct), w_krsc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous,
                                           kLayoutWeight);
    if (grp_nchw) {
      grouped::data_grad_nchw(gy.const_data_ptr<float>(), w.const_data_ptr<float>(),
                              b.defined() ? b.const_data_ptr<float>() : nullptr, gx.data_ptr<float>(), sh, p, nhwc);
    } else if (wino) {  // dX = dY (*) rot180(W)^T at stride 1, padding 2 - pad
      winograd::conv3x3(gy.const_data_ptr<float>(), w.const_data_ptr<float>(), sh.Cg * 9, w_krsc ? 1 : 9,
                        w_krsc ? sh.Cg : 1, true,
                        b.defined() ? b.const_data_ptr<float>() : nullptr, gx.data_ptr<float>(), sh.N, sh.K, sh.Ho,
                        sh.Wo, sh.C, sh.H, sh.W, 2 - p.pad_t, 2 - p.pad_l, nhwc);
    } else if (grp) {
      grouped::data_grad(gy.const_data_ptr<float>(), w.const_data_ptr<float>(),
                         b.defined() ? b.const_data_ptr<float>() : nullptr, gx.data_ptr<float>(), sh, p);
    } else AT_DISPATCH_FLOATING_TYPES(ct, "conv2d_backward_input_cpu", [&] {
      const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
      if (is_depthwise(sh, p))
        depthwise::data_grad<scalar_t>(gy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bp,
                                       gx.data_ptr<scalar_t>(), sh, p, nhwc);
      else
        backward_input_impl<scalar_t>(gy, w, bp, sh, p, nhwc, gx);
    });
    return to_format(gx, mf).to(grad_output.scalar_type());
  }

  // The gradient takes the layout of the activations, as torch's does.
  static at::Tensor weight_grad(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef weight_size,
                                const Conv2dShape& sh, const Conv2dParams& p) {
    check_cpu_dtype(grad_output, "grad_output");
    const auto mf = conv_memory_format(grad_output, input);
    const auto dt = grad_output.scalar_type();
    const auto ct = compute_type(dt);
    // Winograd computes in the layout given (its dW [K][R][S][C] is the channels_last weight)
    const bool wino = ct == at::kFloat && winograd::enabled() &&
                      winograd::weight_grad_applicable(sh.N, sh.C, sh.K, sh.R, sh.S, p.stride_h, p.stride_w, p.dil_h,
                                                       p.dil_w, p.groups, sh.Ho, sh.Wo);
    // 1 x r / r x 1: Winograd along the line (winograd_line.cpp), in channels_last (its dW
    // [K][taps][C] is the channels_last weight)
    if (ct == at::kFloat && winograd_line_weight_grad(sh, p)) {
      auto gw = scratch_result(weight_size, grad_output.options().dtype(ct), at::MemoryFormat::ChannelsLast, mf,
                               kLayoutWeight);
      const auto gy = to_format_scratch(grad_output.to(ct), at::MemoryFormat::ChannelsLast, kLayoutFirst);
      const auto x = to_format_scratch(input.to(ct), at::MemoryFormat::ChannelsLast, kLayoutSecond);
      winograd::weight_grad_line(x.const_data_ptr<float>(), gy.const_data_ptr<float>(), gw.mutable_data_ptr<float>(),
                                 sh.N, sh.C, sh.H, sh.W, sh.K, sh.Ho, sh.Wo, std::max(sh.R, sh.S), sh.R == 1,
                                 sh.R == 1 ? p.pad_l : p.pad_t);
      return to_format(gw, mf).to(dt);
    }
    // a float32 kernel writing the channels_last dW [K][R][S][C] from channels_last X and dY (copies
    // where they are not)
    using NhwcWeightGrad = void (*)(const float*, const float*, float*, const Conv2dShape&, const Conv2dParams&);
    auto channels_last_kernel = [&](NhwcWeightGrad kernel) {
      auto gw = scratch_result(weight_size, grad_output.options().dtype(ct), at::MemoryFormat::ChannelsLast, mf,
                               kLayoutWeight);
      if (grad_output.numel() == 0) return gw.zero_().contiguous(mf).to(dt);
      const auto gy = to_format_scratch(grad_output.to(ct), at::MemoryFormat::ChannelsLast, kLayoutFirst);
      const auto x = to_format_scratch(input.to(ct), at::MemoryFormat::ChannelsLast, kLayoutSecond);
      kernel(x.const_data_ptr<float>(), gy.const_data_ptr<float>(), gw.mutable_data_ptr<float>(), sh, p);
      return to_format(gw, mf).to(dt);
    };
    // Up to 4 output channels over a multiple of 16 input channels (few_outputs.cpp: dW's channel
    // vectors for a tap held in registers along each output row), where the GEMM's tiles (dW's 3
    // rows on 8-row tiles) computed mostly padding: channels_last, and NCHW with a spatial filter
    // (X copied channels_last; an NCHW 1x1's GEMM on the planes themselves beat the copy). Batch 8,
    // two threads, ratio to torch: 64 -> 3 3x3 @128 0.84 -> 2.1 channels_last, 0.99 -> 1.40 NCHW;
    // 256 -> 1 3x3 @64 0.97 -> 3.4, 0.84 -> 1.48; 64 -> 1 1x1 @128 channels_last 0.60 -> 1.2-1.5.
    if (ct == at::kFloat && few_outputs::applicable(sh, p) &&
        (mf == at::MemoryFormat::ChannelsLast || sh.R * sh.S > 1))
      return channels_last_kernel(&few_outputs::weight_grad_nhwc);
    // RGB stems' channels_last weight gradient (few_inputs.cpp: vectors along dW's output channels,
    // each input value a broadcast operand), where the GEMM's filter-row tiles read dY's 16-64
    // columns for 9-21 rows. Batch 8 unless said, two threads, process-alternating A/B: the 3 -> 64
    // 7x7 stride-2 stem @224 -9.5 % (0.92 -> 1.06x torch), 3 -> 64 5x5 @112 -12 %, CIFAR's 3 -> 16
    // @32 (batch 128) -7 %. Not NCHW (dY's copy to channels_last: the stem +51 %).
    if (ct == at::kFloat && mf == at::MemoryFormat::ChannelsLast && few_inputs::weight_grad_applicable(sh, p))
      return channels_last_kernel([](const float* x, const float* gy, float* gw, const Conv2dShape& sh,
                                     const Conv2dParams& p) {
        // (on X zero-padded: every tap in bounds)
        Conv2dShape sp = sh;
        Conv2dParams pp = p;
        sp.H += p.pad_t + p.pad_b, sp.W += p.pad_l + p.pad_r;
        pp.pad_t = pp.pad_b = pp.pad_l = pp.pad_r = 0;
        float* xpad = thread_buffer<float>(kConvPadded, sh.N * sp.H * sp.W * sh.C);
        pad_nhwc(x, sh.N, sh.H, sh.W, sh.C, p, xpad, true);
        few_inputs::weight_grad_nhwc(xpad, gy, gw, sp, pp);
      });
    // dilated 3x3: Winograd's weight gradient over the batch of the phases of X and dY (dW sums
    // over the batch, so over the phases too)
    Phases ph;
    if (ct == at::kFloat && dilated_winograd(sh, p, &ph) &&
        winograd::weight_grad_applicable(sh.N * ph.d * ph.d, sh.C, sh.K, 3, 3, 1, 1, 1, 1, 1, ph.Hos, ph.Wos)) {
      const bool nhwc = mf == at::MemoryFormat::ChannelsLast;
      const int64_t nd = sh.N * ph.d * ph.d;
      auto gw = scratch_result(weight_size, grad_output.options().dtype(ct), mf, mf, kLayoutWeight);
      if (grad_output.numel() == 0) return gw.zero_().to(dt);
      const auto x = to_format_scratch(input.to(ct), mf, kLayoutFirst);
      const auto gy = to_format_scratch(grad_output.to(ct), mf, kLayoutSecond);
      float* xs = thread_buffer<float>(kConvCol, nd * sh.C * ph.Hs * ph.Ws);
      float* gys = thread_buffer<float>(kConvPadded, nd * sh.K * ph.Hos * ph.Wos);
      gather_phases(x.const_data_ptr<float>(), xs, sh.N, sh.C, sh.H, sh.W, ph.d, ph.Hs, ph.Ws, nhwc);
      gather_phases(gy.const_data_ptr<float>(), gys, sh.N, sh.K, sh.Ho, sh.Wo, ph.d, ph.Hos, ph.Wos, nhwc);
      winograd::weight_grad3x3(xs, gys, gw.mutable_data_ptr<float>(), nhwc, nd, sh.C, ph.Hs, ph.Ws, sh.K, ph.Hos,
                               ph.Wos, p.pad_t / ph.d, p.pad_l / ph.d, nhwc);
      return gw.to(dt);
    }
    // few channels a group (grouped.h, both writing [K][Cg][R][S]): NCHW by the NCHW kernel (up to
    // 16 channels a group), else the channels_last kernel whatever the layout
    const bool regrouped = !wino && ct == at::kFloat && wgrad_regrouped(sh, p, mf);
    const bool grp_nchw = !wino && !regrouped && ct == at::kFloat && mf == at::MemoryFormat::Contiguous &&
                          grouped::weight_grad_nchw_applicable(sh, p);
    const bool grp = !wino && !regrouped && !grp_nchw && ct == at::kFloat && grouped::applicable(sh, p);
    if (!wino && !regrouped && !grp_nchw && !grp && wgrad_groups_winograd_in_place(grad_output, input, mf, sh, p)) {
      // each group on Winograd reading its channels of X and dY where they lie (pixel strides C, K)
      auto gw = at::empty(weight_size, grad_output.options().memory_format(at::MemoryFormat::ChannelsLast));
      for (int64_t g = 0; g < p.groups; ++g)
        winograd::weight_grad3x3(input.const_data_ptr<float>() + g * sh.Cg,
                                 grad_output.const_data_ptr<float>() + g * sh.Kg,
                                 gw.mutable_data_ptr<float>() + g * sh.Kg * 9 * sh.Cg, true, sh.N, sh.Cg, sh.H, sh.W,
                                 sh.Kg, sh.Ho, sh.Wo, p.pad_t, p.pad_l, true, sh.C, sh.K);
      return gw;
    }
    if (!wino && !regrouped && !grp_nchw && !grp && ct == at::kFloat && wgrad_groups_dense(sh, p)) {
      // each group's X and dY copied out ([G][pixels][Cg], regroup) and its weight gradient taken as
      // a one-group layer's on them, into its rows of dW. The copies are channels_last tensors,
      // which the one-group op reads in place (it takes no layout scratch: kLayoutFirst and
      // kLayoutSecond hold them) and whose dW it returns channels_last, [Kg][R][S][Cg].
      const auto cl = at::MemoryFormat::ChannelsLast;
      auto gw = at::empty(weight_size, grad_output.options().dtype(ct).memory_format(cl));
      if (grad_output.numel() == 0) return gw.zero_().contiguous(mf).to(dt);
      const int64_t xg = sh.N * sh.H * sh.W * sh.Cg, yg = sh.N * sh.Ho * sh.Wo * sh.Kg;
      const int64_t wg = sh.Kg * sh.Cg * sh.R * sh.S;
      float* xr = thread_buffer<float>(kLayoutFirst, p.groups * xg);
      float* yr = thread_buffer<float>(kLayoutSecond, p.groups * yg);
      regroup(input.to(ct), p.groups, xr);
      regroup(grad_output.to(ct), p.groups, yr);
      const auto [s1, p1] = one_group(sh, p);
      const auto opts = grad_output.options().dtype(ct);
      const std::vector<int64_t> xs{sh.N, sh.Cg, sh.H, sh.W}, ys{sh.N, sh.Kg, sh.Ho, sh.Wo};
      for (int64_t g = 0; g < p.groups; ++g) {
        const auto xt = at::from_blob(xr + g * xg, xs, c10::get_channels_last_strides_2d(xs), opts);
        const auto yt = at::from_blob(yr + g * yg, ys, c10::get_channels_last_strides_2d(ys), opts);
        const auto r = weight_grad(yt, xt, {sh.Kg, sh.Cg, sh.R, sh.S}, s1, p1).contiguous(cl);
        std::memcpy(gw.mutable_data_ptr<float>() + g * wg, r.const_data_ptr<float>(), wg * sizeof(float));
      }
      return to_format(gw, mf).to(dt);
    }
    if (regrouped) {
      // [K][R][S][Cg]: the channels_last weight
      auto gw = scratch_result(weight_size, grad_output.options().dtype(ct), at::MemoryFormat::ChannelsLast, mf,
                               kLayoutWeight);
      if (grad_output.numel() == 0) return gw.zero_().contiguous(mf).to(dt);
      float* xr = thread_buffer<float>(kConvCol, sh.N * sh.C * sh.H * sh.W);
      float* yr = thread_buffer<float>(kConvPadded, sh.N * sh.K * sh.Ho * sh.Wo);
      regroup(input.to(ct), p.groups, xr);
      regroup(grad_output.to(ct), p.groups, yr);
      wgrad_nhwc_in_place(xr, yr, gw.mutable_data_ptr<float>(), sh, p,
                          {sh.Cg, sh.N * sh.H * sh.W * sh.Cg, sh.Kg, sh.N * sh.Ho * sh.Wo * sh.Kg});
      return to_format(gw, mf).to(dt);
    }
    const auto cf = grp        ? at::MemoryFormat::ChannelsLast
                    : grp_nchw ? at::MemoryFormat::Contiguous
                    : wino     ? mf
                               : weight_grad_format(mf, sh, p, ct);
    const bool nhwc = cf == at::MemoryFormat::ChannelsLast;
    const auto gwf = grp || grp_nchw ? at::MemoryFormat::Contiguous : cf;
    // computed in the other layout: a scratch tensor before its copy (a fresh 9.4 MB one for
    // 512 x 512 x 3 x 3 faulted in its pages on every call, then the copy's too: 6.5 -> ~3 ms)
    auto gw = scratch_result(weight_size, grad_output.options().dtype(ct), gwf, mf, kLayoutWeight);
    if (grad_output.numel() == 0) return gw.zero_().contiguous(mf).to(dt);
    auto gy = to_format_scratch(grad_output.to(ct), cf, kLayoutFirst);
    auto x = to_format_scratch(input.to(ct), cf, kLayoutSecond);
    if (wino)
      winograd::weight_grad3x3(x.const_data_ptr<float>(), gy.const_data_ptr<float>(), gw.mutable_data_ptr<float>(),
                               nhwc, sh.N, sh.C, sh.H, sh.W, sh.K, sh.Ho, sh.Wo, p.pad_t, p.pad_l, nhwc);
    else if (grp)
      grouped::weight_grad(x.const_data_ptr<float>(), gy.const_data_ptr<float>(), gw.mutable_data_ptr<float>(), sh, p);
    else if (grp_nchw)
      grouped::weight_grad_nchw(x.const_data_ptr<float>(), gy.const_data_ptr<float>(), gw.mutable_data_ptr<float>(),
                                sh, p);
    else AT_DISPATCH_FLOATING_TYPES(ct, "conv2d_backward_weight_cpu", [&] {
      if (is_depthwise(sh, p)) {
        // [K, 1, R, S] is the same memory in both layouts.
        depthwise::weight_grad<scalar_t>(gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                         gw.mutable_data_ptr<scalar_t>(), sh, p, nhwc);
      } else {
        // NHWC accumulates [K, R, S, Cg], which is exactly channels_last [K, Cg, R, S].
        backward_weight_impl<scalar_t>(gy, x, sh, p, nhwc, gw.mutable_data_ptr<scalar_t>());
      }
    });
    return to_format(gw, mf).to(dt);
  }

  // Per-channel sum over n, h, w (the bias gradient).
  static at::Tensor channel_sum(const at::Tensor& t) {
    const auto dt = t.scalar_type();
    const auto ct = compute_type(dt);
    auto out = at::empty({t.size(1)}, t.options().dtype(ct));
    if (t.numel() == 0) return out.zero_().to(dt);
    const auto mf = t.suggest_memory_format();
    auto tc = to_format(t.to(ct), mf);
    AT_DISPATCH_FLOATING_TYPES(ct, "channel_sum_cpu", [&] {
      bias_grad_impl<scalar_t>(tc, t.size(0), t.size(1), t.size(2) * t.size(3), mf == at::MemoryFormat::ChannelsLast,
                               out.mutable_data_ptr<scalar_t>());
    });
    return out.to(dt);
  }
};

TORCH_LIBRARY_IMPL(convx, CPU, m) {
  CONVX_REGISTER_CONV_OPS(m, CpuConv);
}

}  // namespace convx::cpu
