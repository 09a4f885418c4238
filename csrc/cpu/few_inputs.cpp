// See few_inputs.h.
#include "few_inputs.h"

#include "gemm.h"
#include "isa_each.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

namespace convx::cpu::few_inputs {
namespace {

using V = Block<float>::v;  // 16 floats: one zmm, two ymm or four xmm registers
constexpr int kLanes = Block<float>::n;

// A filter row's taps over the channels, S * C floats: the run a pixel's input makes in the padded
// copy at dilation 1 (its J values a block: 9 for a 3x3 over 3 channels, 15 for 5x5, 21 for 7x7).
// Where the GEMM's filter-row tiles stay ahead: a 3x3 over 3 channels into 32 or 64 output channels
// (27 multiply-adds a vector of dY, each read once a block of k: VGG's 3 -> 64 @224 +55 %, its dY
// 102 MB read a line of four a pixel at a time; 3 -> 32 stride 2 even).
bool run_length_ok(int64_t L, int64_t K) { return (L == 9 && K == 16) || L == 15 || L == 21; }

struct Args {
  const float* xp;  // the zero-padded input, [N][Hp][Wp][C]
  const float* gy;  // [N][Ho][Wo][K]
  int64_t Hp, Wp, C, K, Ho, Wo, sh, sw, dh;
};

// acc (RB filter rows from r, each J values, times the vector of dY's channels kv * 16 ..) at buf
// (filter row r's J values at buf + r * J * K, row stride K) += the sum over the output rows
// [row0, row1) and their pixels: dY's vector loaded once a pixel for RB * J multiply-adds, each
// input value their broadcast operand.
template <int J, int RB>
CONVX_ALWAYS_INLINE inline void run_block(const Args& a, int64_t row0, int64_t row1, int64_t r, int64_t kv,
                                          float* buf) {
  V acc[RB][J];
#pragma GCC unroll 4
  for (int q = 0; q < RB; ++q)
#pragma GCC unroll 32
    for (int j = 0; j < J; ++j) acc[q][j] = load_block<float>(buf + (q * J + j) * a.K);
  const int64_t xs = a.sw * a.C, rs = a.dh * a.Wp * a.C;
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t n = row / a.Ho, ho = row - n * a.Ho;
    const float* xr = a.xp + ((n * a.Hp + ho * a.sh + r * a.dh) * a.Wp) * a.C;
    const float* dr = a.gy + row * a.Wo * a.K + kv * kLanes;
    for (int64_t wo = 0; wo < a.Wo; ++wo) {
      const float* px = xr + wo * xs;
      const V d = load_block<float>(dr + wo * a.K);
#pragma GCC unroll 4
      for (int q = 0; q < RB; ++q)
#pragma GCC unroll 32
        for (int j = 0; j < J; ++j) acc[q][j] += px[q * rs + j] * d;
    }
  }
#pragma GCC unroll 4
  for (int q = 0; q < RB; ++q)
#pragma GCC unroll 32
    for (int j = 0; j < J; ++j) store_block<float>(buf + (q * J + j) * a.K, acc[q][j]);
}

}  // namespace

bool weight_grad_applicable(const Conv2dShape& sh, const Conv2dParams& p) {
  return p.groups == 1 && sh.C <= 4 && sh.K % kLanes == 0 && sh.K <= 64 && p.dil_w == 1 &&
         run_length_ok(sh.S * sh.C, sh.K) && std::min({p.pad_t, p.pad_b, p.pad_l, p.pad_r}) >= 0;
}

void weight_grad_nhwc(const float* x, const float* gy, float* gw, const Conv2dShape& sh, const Conv2dParams& p) {
  const int64_t C = sh.C, K = sh.K, R = sh.R, S = sh.S, L = S * C;
  // chunks of output rows fixed by the shape (about 64 pixels' rows or more each, at most 32)
  const int64_t rows = sh.N * sh.Ho;
  const int64_t chunks = std::clamp<int64_t>(rows * sh.Wo / 2048, 1, 32), per = (rows + chunks - 1) / chunks;
  // each chunk's dW^T [R * L][K] (the channels_last weight's [K][R][S][C] transposed)
  const int64_t part = R * L * K;
  float* parts = thread_buffer<float>(kConvCol, chunks * part);
  const Args a{x, gy, sh.H, sh.W, C, K, sh.Ho, sh.Wo, p.stride_h, p.stride_w, p.dil_h};
  // a block: one vector of dY's channels and all three filter rows of a 3x3 over 3 channels (27
  // accumulators), else one filter row
  const int64_t rb = L == 9 && R == 3 ? 3 : 1;
  // each chunk's rows in pieces of about 256 KiB of dY, each piece meeting every block while in L2
  const int64_t piece = std::max<int64_t>(1, (int64_t(256) << 10) / (sh.Wo * K * int64_t(sizeof(float))));
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t ch = cb; ch < ce; ++ch) {
      float* buf = parts + ch * part;
      std::memset(buf, 0, part * sizeof(float));
      const int64_t c0 = ch * per, c1 = std::min(rows, c0 + per);
      for (int64_t row0 = c0; row0 < c1; row0 += piece) {
        const int64_t row1 = std::min(c1, row0 + piece);
        each(0, R / rb * (K / kLanes), [=](int64_t t) CONVX_ALWAYS_INLINE {
          const int64_t r = t % (R / rb) * rb, kv = t / (R / rb);
          float* bb = buf + r * L * K + kv * kLanes;
          if (rb == 3) return run_block<9, 3>(a, row0, row1, r, kv, bb);
          if (L == 9) return run_block<9, 1>(a, row0, row1, r, kv, bb);
          if (L == 15) return run_block<15, 1>(a, row0, row1, r, kv, bb);
          return run_block<21, 1>(a, row0, row1, r, kv, bb);
        });
      }
    }
  });
  // dW [K][R*L] = the chunks' sums in chunk order, transposed
  at::parallel_for(0, K, 1, [&](int64_t kb, int64_t ke) {
    for (int64_t k = kb; k < ke; ++k)
      for (int64_t j = 0; j < R * L; ++j) {
        float s = parts[j * K + k];
        for (int64_t ch = 1; ch < chunks; ++ch) s += parts[ch * part + j * K + k];
        gw[k * R * L + j] = s;
      }
  });
}

}  // namespace convx::cpu::few_inputs
