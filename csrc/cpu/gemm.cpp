// See gemm.h for the algorithm. Napkin math per core at ~3 GHz with 2 FMA pipes:
// AVX2 8 floats x 2 x 2 ~= 96 GFLOP/s, AVX-512 16 floats x 2 x 2 ~= 192 GFLOP/s
// in float32 (half that in float64; AVX-512 clocks run lower under load).
#include "gemm.h"
#include "isa_each.h"
#include "layout.h"

#include <ATen/Parallel.h>

#include <xmmintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace convx::cpu {
namespace {

// The register tile: C[MR][NR] (+)= a[:, k] (x) b[k, :], k = 0..kc-1, with a
// packed MR-major per k and b NR-major per k; the tile goes straight to C
// (row stride rsc, unit column stride), added to it when `add`.
// ROWS: a is not packed but MR rows of row-major A (row stride lda, unit
// stride along k), read where they are (gemm_serial and gemm_rows_serial take
// it for every A with rows contiguous along k: packing cost 8-13 % of a 1x1 or
// on-the-fly im2col layer's time, and the rows stay in L1 while in use).
// BROWS: b is not packed but kc rows of NR contiguous elements, ldb apart, and
// a steps lda a k (MR: a packed panel; more: MR contiguous elements of each of
// kc rows of a row-major operand, read in place); and the k loop runs nrows
// times, a and b starting arow and brow further each time (runs of pixels of
// an image's rows, gaps between them skipped).
// SEG (with ROWS): the k loop runs nrows times too, a and b starting arow and brow further
// each time (an implicit GEMM's runs: gemm_rows' direct rows).
// PF (with ROWS): pf is the next MR rows of A (lda apart, as a's), the tile's next A, which
// the k loop prefetches into L1 a line a step (row after row, then the next line of each).
// bias / rbias (with !add): C = A B + bias[j] (NR columns) / + rbias[i] (MR rows), the
// accumulators starting from them (a layer's bias, no pass over C of its own).
template <typename T, int MR, int NR, int VB, bool ROWS = false, bool BROWS = false, bool SEG = false,
          bool PF = false, bool NT = false>
__attribute__((always_inline)) inline void ukernel_body(int64_t kc, const T* __restrict a, const T* __restrict b,
                                                        T* __restrict c, int64_t rsc, bool add, int64_t lda = 0,
                                                        int64_t ldb = 0, int64_t nrows = 1, int64_t arow = 0,
                                                        int64_t brow = 0, const T* pf = nullptr,
                                                        const T* bias = nullptr, const T* rbias = nullptr) {
  constexpr int VL = VB / int(sizeof(T));
  constexpr int NV = NR / VL;
  typedef T V __attribute__((vector_size(VB)));
  // Every loop over the tile is unrolled whole, so acc lives in registers throughout: GCC
  // left the 24-iteration nests rolled, kept acc in a stack array and copied it in and out
  // around the k loop (measured in L1: 140 -> 167 GFLOP/s at kc = 16, 180 -> 189 at 64).
  V acc[MR][NV];
  // bias (with !add): C = A B + bias, the accumulators starting from it
  V bv0[NV];
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) {
    bv0[j] = V{};
    if (bias && !add) std::memcpy(&bv0[j], bias + j * VL, sizeof(V));
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = bv0[j];
  // rbias (with !add): C = A B + rbias[i] along each row (an NCHW layer's bias by output channel)
  if (rbias && !add)
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] += rbias[i];
  // The C tile's lines are requested for writing now, so their misses (C is
  // often far out of cache: a 1x1 convolution's output) overlap the k loop.
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NR * int(sizeof(T)); j += 64)
      if (!NT || add) __builtin_prefetch(reinterpret_cast<const char*>(c + i * rsc) + j, 1, 3);
  for (int64_t row = 0; row < (BROWS || SEG ? nrows : 1); ++row) {
    const T* __restrict ak = a + (BROWS || SEG ? row * arow : 0);
    const T* __restrict bk = b + (BROWS || SEG ? row * brow : 0);
    const T* pfrow = pf;  // PF: the line prefetched next, in row pfr of the next tile's A
    const T* pfcol = pf;
    int pfr = 0;
    for (int64_t k = 0; k < kc; ++k) {
      // The next tile's A (PF): where A is read in place from memory (a 1x1 layer's activations
      // of 25 MB), the first of the tiles that read each MR rows waited on them: the rows are
      // MR streams advancing a float a step, which the hardware prefetchers took too late
      // (25088 x 256 x 128 from DRAM, one thread: 145 -> 195 GFLOP/s). kc / MR lines of each of
      // the MR rows over the k loop: all of them for floats where MR <= 16.
      if constexpr (PF) {
        __builtin_prefetch(pfrow, 0, 3);
        pfrow += lda;
        if (++pfr == MR) {
          pfr = 0;
          pfcol += 64 / int(sizeof(T));
          pfrow = pfcol;
        }
      }
      // B's panel 8 steps ahead. In the ROWS order B's
      // panels come from L2 while A's rows stay in L1, and the hardware prefetcher alone left
      // the FMAs waiting (a 6272 x 256 x 256 product, one thread: 200 -> 208 GFLOP/s in a
      // harness); where the panel is in L1 already it costs a load slot a line.
      if constexpr (!BROWS) {
#pragma GCC unroll 4
        for (int j = 0; j < NR * int(sizeof(T)); j += 64)
          __builtin_prefetch(reinterpret_cast<const char*>(bk + 8 * NR) + j, 0, 3);
      } else {
        // BROWS: B's row and A's 8 steps ahead. Each step is on new lines of both (a weight
        // gradient's pixels: dY's and X's channels, K and C floats apart), which came from L2
        // with the FMAs waiting on them (batch 8, channels_last 1x1 weight gradients: 256 -> 128
        // @56 5.03 -> 4.58 ms, 64 -> 256 @56 2.77 -> 2.45; Inception's 1x7 @17 1.72 -> 1.55).
#pragma GCC unroll 4
        for (int j = 0; j < NR * int(sizeof(T)); j += 64)
          __builtin_prefetch(reinterpret_cast<const char*>(bk + 8 * ldb) + j, 0, 3);
        __builtin_prefetch(ak + 8 * lda, 0, 3);
      }
      V bv[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) std::memcpy(&bv[j], bk + j * VL, sizeof(V));
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const T ai = ROWS ? ak[i * lda] : ak[i];
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] += ai * bv[j];
      }
      ak += ROWS ? 1 : BROWS ? lda : MR;
      bk += BROWS ? ldb : NR;
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      V v = acc[i][j];
      if (add) {
        V old;
        std::memcpy(&old, c + i * rsc + j * VL, sizeof(V));
        v += old;
      }
      if constexpr (NT) {
        if (!add) {
          stream_bytes<VB>(c + i * rsc + j * VL, &v);
          continue;
        }
      }
      std::memcpy(c + i * rsc + j * VL, &v, sizeof(V));
    }
}

template <typename T>
using UKernel = void (*)(int64_t, const T*, const T*, T*, int64_t, bool, const T* rbias);
template <typename T>
using UKernelRows = void (*)(int64_t, const T*, int64_t, const T*, T*, int64_t, bool, const T* pf, const T* bias,
                             const T* rbias);
template <typename T>
using UKernelBRows = void (*)(int64_t, const T*, int64_t, const T*, int64_t, T*, int64_t, bool, int64_t, int64_t,
                              int64_t);
template <typename T>
using UKernelRowsSeg = void (*)(int64_t, const T*, int64_t, const T*, T*, int64_t, bool, int64_t, int64_t, int64_t,
                                const T* bias);

// One build of the register tile per instruction set, chosen once at load
// time from the CPU's feature bits (not its model name: an AMD EPYC has AVX2
// and FMA but is no "haswell"). Tiles: AVX-512 12 x 32 floats / 12 x 16
// doubles (24 of the 32 zmm registers accumulate; b is two zmm loads a step and
// a[i] a broadcast operand of the FMA), AVX2 6 x 16 / 6 x 8 (12 of 16 ymm).
template <typename T, int MR, int NR>
__attribute__((target("avx512f,avx512vl,avx512dq,fma"))) void ukernel_avx512(int64_t kc, const T* a, const T* b,
                                                                              T* c, int64_t rsc, bool add,
                                                                              const T* rbias) {
  ukernel_body<T, MR, NR, 64>(kc, a, b, c, rsc, add, 0, 0, 1, 0, 0, nullptr, nullptr, rbias);
}
template <typename T, int MR, int NR>
__attribute__((target("avx2,fma"))) void ukernel_avx2(int64_t kc, const T* a, const T* b, T* c, int64_t rsc,
                                                      bool add, const T* rbias) {
  ukernel_body<T, MR, NR, 32>(kc, a, b, c, rsc, add, 0, 0, 1, 0, 0, nullptr, nullptr, rbias);
}
template <typename T, int MR, int NR>
void ukernel_base(int64_t kc, const T* a, const T* b, T* c, int64_t rsc, bool add, const T* rbias) {
  ukernel_body<T, MR, NR, 16>(kc, a, b, c, rsc, add, 0, 0, 1, 0, 0, nullptr, nullptr, rbias);
}
template <typename T, int MR, int NR>
__attribute__((target("avx512f,avx512vl,avx512dq,fma"))) void ukernel_rows_avx512(int64_t kc, const T* a,
                                                                                   int64_t lda, const T* b, T* c,
                                                                                   int64_t rsc, bool add,
                                                                                   const T* pf, const T* bias,
                                                                                   const T* rbias) {
  if (pf)
    ukernel_body<T, MR, NR, 64, true, false, false, true>(kc, a, b, c, rsc, add, lda, 0, 1, 0, 0, pf, bias, rbias);
  else
    ukernel_body<T, MR, NR, 64, true>(kc, a, b, c, rsc, add, lda, 0, 1, 0, 0, nullptr, bias, rbias);
}
template <typename T, int MR, int NR>
__attribute__((target("avx2,fma"))) void ukernel_rows_avx2(int64_t kc, const T* a, int64_t lda, const T* b, T* c,
                                                           int64_t rsc, bool add, const T* pf, const T* bias,
                                                           const T* rbias) {
  if (pf)
    ukernel_body<T, MR, NR, 32, true, false, false, true>(kc, a, b, c, rsc, add, lda, 0, 1, 0, 0, pf, bias, rbias);
  else
    ukernel_body<T, MR, NR, 32, true>(kc, a, b, c, rsc, add, lda, 0, 1, 0, 0, nullptr, bias, rbias);
}
template <typename T, int MR, int NR>
void ukernel_rows_base(int64_t kc, const T* a, int64_t lda, const T* b, T* c, int64_t rsc, bool add, const T* pf,
                       const T* bias, const T* rbias) {
  if (pf)
    ukernel_body<T, MR, NR, 16, true, false, false, true>(kc, a, b, c, rsc, add, lda, 0, 1, 0, 0, pf, bias, rbias);
  else
    ukernel_body<T, MR, NR, 16, true>(kc, a, b, c, rsc, add, lda, 0, 1, 0, 0, nullptr, bias, rbias);
}
template <typename T, int MR, int NR>
__attribute__((target("avx512f,avx512vl,avx512dq,fma"))) void ukernel_brows_avx512(int64_t kc, const T* a,
                                                                                    int64_t lda, const T* b,
                                                                                    int64_t ldb, T* c, int64_t rsc,
                                                                                    bool add, int64_t nrows,
                                                                                    int64_t arow, int64_t brow) {
  ukernel_body<T, MR, NR, 64, false, true>(kc, a, b, c, rsc, add, lda, ldb, nrows, arow, brow);
}
template <typename T, int MR, int NR>
__attribute__((target("avx2,fma"))) void ukernel_brows_avx2(int64_t kc, const T* a, int64_t lda, const T* b,
                                                            int64_t ldb, T* c, int64_t rsc, bool add, int64_t nrows,
                                                            int64_t arow, int64_t brow) {
  ukernel_body<T, MR, NR, 32, false, true>(kc, a, b, c, rsc, add, lda, ldb, nrows, arow, brow);
}
template <typename T, int MR, int NR>
void ukernel_brows_base(int64_t kc, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t rsc, bool add,
                        int64_t nrows, int64_t arow, int64_t brow) {
  ukernel_body<T, MR, NR, 16, false, true>(kc, a, b, c, rsc, add, lda, ldb, nrows, arow, brow);
}

// NT: C (with !add) written by streaming stores (gemm_rows' stream)
template <typename T, int MR, int NR, bool NT = false>
__attribute__((target("avx512f,avx512vl,avx512dq,fma"))) void ukernel_rows_seg_avx512(
    int64_t kc, const T* a, int64_t lda, const T* b, T* c, int64_t rsc, bool add, int64_t nrows, int64_t arow,
    int64_t brow, const T* bias) {
  ukernel_body<T, MR, NR, 64, true, false, true, false, NT>(kc, a, b, c, rsc, add, lda, 0, nrows, arow, brow,
                                                              nullptr, bias);
}
template <typename T, int MR, int NR, bool NT = false>
__attribute__((target("avx2,fma"))) void ukernel_rows_seg_avx2(int64_t kc, const T* a, int64_t lda, const T* b, T* c,
                                                               int64_t rsc, bool add, int64_t nrows, int64_t arow,
                                                               int64_t brow, const T* bias) {
  ukernel_body<T, MR, NR, 32, true, false, true, false, NT>(kc, a, b, c, rsc, add, lda, 0, nrows, arow, brow,
                                                              nullptr, bias);
}
template <typename T, int MR, int NR>
void ukernel_rows_seg_base(int64_t kc, const T* a, int64_t lda, const T* b, T* c, int64_t rsc, bool add,
                           int64_t nrows, int64_t arow, int64_t brow, const T* bias) {
  ukernel_body<T, MR, NR, 16, true, false, true>(kc, a, b, c, rsc, add, lda, 0, nrows, arow, brow, nullptr, bias);
}

// The register tile with A's rows gathered (gemm_rows' gather): n runs of len steps, run t's MR rows
// at a[t][0 .. MR) (a[t][i][k]) and its B koff[t] rows into the block's panel (b + koff[t] * NR).
// Twelve row pointers, the step and B's take 14 of the 15 general registers.
template <typename T, int MR, int NR, int VB>
__attribute__((always_inline)) inline void ukernel_gather_body(int n, int64_t len, const int64_t* koff,
                                                               const T* const (*a)[16], const T* b,
                                                               T* const* crow, int64_t coff, bool add,
                                                               const T* bias) {
  constexpr int VL = VB / int(sizeof(T));
  constexpr int NV = NR / VL;
  typedef T V __attribute__((vector_size(VB)));
  V acc[MR][NV];
  V bv0[NV];  // bias (with !add): the accumulators start from it
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) {
    bv0[j] = V{};
    if (bias && !add) std::memcpy(&bv0[j], bias + j * VL, sizeof(V));
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = bv0[j];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NR * int(sizeof(T)); j += 64)
      __builtin_prefetch(reinterpret_cast<const char*>(crow[i] + coff) + j, 1, 3);
  for (int t = 0; t < n; ++t) {
    const T* row[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) row[i] = a[t][i];
    const T* __restrict bk = b + koff[t] * NR;
    for (int64_t k = 0; k < len; ++k) {
#pragma GCC unroll 4
      for (int j = 0; j < NR * int(sizeof(T)); j += 64)
        __builtin_prefetch(reinterpret_cast<const char*>(bk + 8 * NR) + j, 0, 3);
      V bv[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) std::memcpy(&bv[j], bk + j * VL, sizeof(V));
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const T ai = row[i][k];
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] += ai * bv[j];
      }
      bk += NR;
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    T* c = crow[i] + coff;
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      V v = acc[i][j];
      if (add) {
        V old;
        std::memcpy(&old, c + j * VL, sizeof(V));
        v += old;
      }
      std::memcpy(c + j * VL, &v, sizeof(V));
    }
  }
}
using UKernelGather = void (*)(int, int64_t, const int64_t*, const float* const (*)[16], const float*, float* const*,
                               int64_t, bool, const float* bias);
template <int MR, int NR>
__attribute__((target("avx512f,avx512vl,avx512dq,fma"))) void ukernel_gather_avx512(
    int n, int64_t len, const int64_t* koff, const float* const (*a)[16], const float* b, float* const* crow,
    int64_t coff, bool add, const float* bias) {
  ukernel_gather_body<float, MR, NR, 64>(n, len, koff, a, b, crow, coff, add, bias);
}
template <int MR, int NR>
__attribute__((target("avx2,fma"))) void ukernel_gather_avx2(int n, int64_t len, const int64_t* koff,
                                                             const float* const (*a)[16], const float* b,
                                                             float* const* crow, int64_t coff, bool add,
                                                             const float* bias) {
  ukernel_gather_body<float, MR, NR, 32>(n, len, koff, a, b, crow, coff, add, bias);
}
template <int MR, int NR>
void ukernel_gather_base(int n, int64_t len, const int64_t* koff, const float* const (*a)[16], const float* b,
                         float* const* crow, int64_t coff, bool add, const float* bias) {
  ukernel_gather_body<float, MR, NR, 16>(n, len, koff, a, b, crow, coff, add, bias);
}

// A kernel and its blocking: KC x NR slivers of B stay in L1 (48 KiB on these
// Xeons), MC x KC blocks of A in L2.
template <typename T>
struct Kernel {
  int MR, NR;
  int64_t KC, MC, NC;
  UKernel<T> uk;
  UKernelRows<T> ur;  // the same tile reading A unpacked (row-major rows)
  UKernelBRows<T> ub;  // the same tile reading B unpacked (rows of NR, ldb apart), A stepping lda
  const char* isa;
  UKernelRowsSeg<T> urs;  // ur over runs (SEG)
  // AVX-512 floats: the MR x 16 tile (uk's and ur's), for a last column panel of at most 16
  // columns, packed 16 wide (gemm_serial), which the 32-column tile computed padded to 32
  UKernel<T> uk_narrow = nullptr;
  UKernelRows<T> ur_narrow = nullptr;
  UKernelRowsSeg<T> urs_narrow = nullptr;
  // ur for m < MR rows (ur_part[m], m = 1 .. MR - 1; the same NR columns and B panels): a last,
  // partial row panel read in place and stored straight into C, where it went through a packed
  // copy, the whole MR-row tile and a scalar copy out of a tile buffer (ResNet-50's channels_last
  // 1024 -> 256 1x1 @14, batch 8: 776 rows a thread, the last 8 of them 3 % of the layer's time)
  const UKernelRows<T>* ur_part = nullptr;
  // urs writing C by streaming stores (float: AVX-512's and AVX2's tiles; gemm_rows' stream)
  UKernelRowsSeg<T> urs_nt = nullptr;
};

// k with its urs_nt set
template <typename T>
Kernel<T> with_nt(Kernel<T> k, UKernelRowsSeg<T> urs_nt) {
  k.urs_nt = urs_nt;
  return k;
}

// ur_part's table for AVX-512's tiles of NR columns: entry m reads m rows (entry 0 unused).
template <typename T, int NR, int... M>
const UKernelRows<T>* rows_parts_avx512(std::integer_sequence<int, M...>) {
  static const UKernelRows<T> table[] = {nullptr, &ukernel_rows_avx512<T, M + 1, NR>...};
  return table;
}
template <typename T>
const UKernelRows<T>* rows_parts_12x32() {
  if constexpr (std::is_same_v<T, float>)
    return rows_parts_avx512<T, 32>(std::make_integer_sequence<int, 11>{});
  else
    return nullptr;
}

Isa detect_isa() {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq");
  Isa best = avx512 ? Isa::Avx512 : avx2 ? Isa::Avx2 : Isa::Base;
  // CONVX_CPU_ISA=avx512|avx2|base picks a lower one (tests run every path on one machine).
  if (const char* env = std::getenv("CONVX_CPU_ISA")) {
    const std::string want(env);
    const Isa asked = want == "base" ? Isa::Base : want == "avx2" ? Isa::Avx2 : want == "avx512" ? Isa::Avx512 : best;
    if (int(asked) < int(best)) best = asked;
  }
  return best;
}

template <typename T, Isa I>
const Kernel<T>& kernel_of() {
  static const Kernel<T> k = [] {
    constexpr bool f = std::is_same_v<T, float>;
    switch (I) {
      case Isa::Avx512:
        return f ? Kernel<T>{12, 32, 256, 240, 3072, &ukernel_avx512<T, 12, 32>, &ukernel_rows_avx512<T, 12, 32>,
                             &ukernel_brows_avx512<T, 12, 32>, "avx512", &ukernel_rows_seg_avx512<T, 12, 32>,
                             &ukernel_avx512<T, 12, 16>, &ukernel_rows_avx512<T, 12, 16>,
                             &ukernel_rows_seg_avx512<T, 12, 16>,
                             rows_parts_12x32<T>(), &ukernel_rows_seg_avx512<T, 12, 32, true>}
                 : Kernel<T>{12, 16, 256, 120, 1536, &ukernel_avx512<T, 12, 16>, &ukernel_rows_avx512<T, 12, 16>,
                             &ukernel_brows_avx512<T, 12, 16>, "avx512", &ukernel_rows_seg_avx512<T, 12, 16>};
      case Isa::Avx2:
        return f ? with_nt(Kernel<T>{6, 16, 256, 144, 3072, &ukernel_avx2<T, 6, 16>, &ukernel_rows_avx2<T, 6, 16>,
                                     &ukernel_brows_avx2<T, 6, 16>, "avx2", &ukernel_rows_seg_avx2<T, 6, 16>},
                           &ukernel_rows_seg_avx2<T, 6, 16, true>)
                 : Kernel<T>{6, 8, 256, 96, 1536, &ukernel_avx2<T, 6, 8>, &ukernel_rows_avx2<T, 6, 8>,
                             &ukernel_brows_avx2<T, 6, 8>, "avx2", &ukernel_rows_seg_avx2<T, 6, 8>};
      default:
        return f ? Kernel<T>{6, 16, 256, 144, 3072, &ukernel_base<T, 6, 16>, &ukernel_rows_base<T, 6, 16>,
                             &ukernel_brows_base<T, 6, 16>, "base", &ukernel_rows_seg_base<T, 6, 16>}
                 : Kernel<T>{6, 8, 256, 96, 1536, &ukernel_base<T, 6, 8>, &ukernel_rows_base<T, 6, 8>,
                             &ukernel_brows_base<T, 6, 8>, "base", &ukernel_rows_seg_base<T, 6, 8>};
    }
  }();
  return k;
}

// AVX-512's 8 x 32 tile (16 accumulators), for products whose row count
// fills 8-row panels better than 12-row ones (micro_tile_for_rows).
template <typename T>
const Kernel<T>& kernel_avx512_short() {
  static const Kernel<T> k =
      std::is_same_v<T, float>
          ? Kernel<T>{8, 32, 256, 240, 3072, &ukernel_avx512<T, 8, 32>, &ukernel_rows_avx512<T, 8, 32>,
                      &ukernel_brows_avx512<T, 8, 32>, "avx512", &ukernel_rows_seg_avx512<T, 8, 32>,
                      &ukernel_avx512<T, 8, 16>, &ukernel_rows_avx512<T, 8, 16>, &ukernel_rows_seg_avx512<T, 8, 16>}
          : Kernel<T>{8, 16, 256, 120, 1536, &ukernel_avx512<T, 8, 16>, &ukernel_rows_avx512<T, 8, 16>,
                      &ukernel_brows_avx512<T, 8, 16>, "avx512", &ukernel_rows_seg_avx512<T, 8, 16>};
  return k;
}

// AVX-512's 6 x 64 tile (24 accumulators), for float products of 33-64 columns
// (a 1x1 channels_last layer with 64 output channels): each 6 rows of A meet all
// the columns at once, where the 12 x 32 tile read A's rows once per 32 columns
// (25088 x 64 x 256, one thread: 191 -> 213 GFLOP/s; 25088 x 64 x 64: 162 -> 181).
// 6 x 64 = 12 x 32 floats: the tile buffers (tile[12 * 32]) hold it too.
template <typename T>
const Kernel<T>& kernel_avx512_n64() {
  static_assert(std::is_same_v<T, float>, "the 6 x 64 tile is float32's");
  static const Kernel<T> k = with_nt(Kernel<T>{6, 64, 256, 240, 3072, &ukernel_avx512<T, 6, 64>,
                                               &ukernel_rows_avx512<T, 6, 64>, &ukernel_brows_avx512<T, 6, 64>,
                                               "avx512", &ukernel_rows_seg_avx512<T, 6, 64>},
                                     &ukernel_rows_seg_avx512<T, 6, 64, true>);
  return k;
}

// AVX-512's 16 x 16 float tile (16 accumulators, one zmm of B a step): whole tiles for 16-channel
// groups' weight gradients (conv2d.cpp's regrouped path), which the 32-column tiles would half waste.
const Kernel<float>& kernel_avx512_n16() {
  static const Kernel<float> k{16, 16, 256, 240, 3072, &ukernel_avx512<float, 16, 16>,
                               &ukernel_rows_avx512<float, 16, 16>, &ukernel_brows_avx512<float, 16, 16>, "avx512",
                               &ukernel_rows_seg_avx512<float, 16, 16>};
  return k;
}

// AVX-512's 9-row tiles: a 3x3 filter row over 3 channels exactly (an RGB first layer's weight
// gradient by filter rows, conv2d.cpp's wgrad_nhwc_filter_rows: A's rows those 9 floats), for 16
// and 32 output channels (micro_tile_whole_cols).
const Kernel<float>& kernel_avx512_9x16() {
  static const Kernel<float> k{9, 16, 256, 240, 3072, &ukernel_avx512<float, 9, 16>,
                               &ukernel_rows_avx512<float, 9, 16>, &ukernel_brows_avx512<float, 9, 16>, "avx512",
                               &ukernel_rows_seg_avx512<float, 9, 16>};
  return k;
}
const Kernel<float>& kernel_avx512_9x32() {
  static const Kernel<float> k{9, 32, 256, 240, 3072, &ukernel_avx512<float, 9, 32>,
                               &ukernel_rows_avx512<float, 9, 32>, &ukernel_brows_avx512<float, 9, 32>, "avx512",
                               &ukernel_rows_seg_avx512<float, 9, 32>};
  return k;
}

// AVX-512's 12 x 16 float tile (12 accumulators, one zmm of B a step, A's element its FMA's
// broadcast operand), for products of 9-16 columns: a convolution with 16 output channels, a data
// gradient with 16 input channels, groups of 16, which took the AVX2 6 x 16 tile at half the FMA
// width. Batch 8, two threads: 192 -> 16 1x1 @28 channels_last +46 %, 32 -> 16 5x5 @28 +61-64 %,
// 64 -> 16 3x3 stride 2 @56 +52 %, 3 -> 16 stride 2 @224 +29 %, 16 -> 16 1x1 @56 +25 %, ResNeXt's
// 32 groups of 32 @7 +42 % (channels_last) and 32 groups of 8 @28 +40 % (NCHW); no layer slower.
const Kernel<float>& kernel_avx512_n16w() {
  static const Kernel<float> k =
      with_nt(Kernel<float>{12, 16, 256, 240, 3072, &ukernel_avx512<float, 12, 16>,
                            &ukernel_rows_avx512<float, 12, 16>, &ukernel_brows_avx512<float, 12, 16>, "avx512",
                            &ukernel_rows_seg_avx512<float, 12, 16>},
              &ukernel_rows_seg_avx512<float, 12, 16, true>);
  return k;
}

// AVX-512's 8 x 48 float tile (24 accumulators, three zmm of B and 8 broadcasts a step), for
// products of 33-48 columns (48 output channels; 48-channel data gradients as the forward), which
// the 6 x 64 tile computed a quarter padded: batch 8, channels_last, two threads, 192 -> 48 1x1 @35
// +35 %, 480 -> 48 @14 +35 %, 256 -> 48 3x3 stride 2 @28 +33 %, 64 -> 48 5x5 @35 +27 %.
const Kernel<float>& kernel_avx512_n48() {
  static const Kernel<float> k =
      with_nt(Kernel<float>{8, 48, 256, 240, 3072, &ukernel_avx512<float, 8, 48>, &ukernel_rows_avx512<float, 8, 48>,
                            &ukernel_brows_avx512<float, 8, 48>, "avx512", &ukernel_rows_seg_avx512<float, 8, 48>},
              &ukernel_rows_seg_avx512<float, 8, 48, true>);
  return k;
}

// The kernel for one product: the widest the CPU has, except that a product
// with few rows or columns (grouped convolutions with 4 or 8 channels a group)
// takes the AVX2 6 x 16 tile on an AVX-512 machine, whose 12 x 32 tile would
// compute mostly padding there; 9-16 columns (and more than 8 rows), the 12 x 16 tile, 33-48 the
// 8 x 48 one.
template <typename T>
const Kernel<T>& kernel_for(int64_t M, int64_t N) {
  switch (cpu_isa()) {
    case Isa::Avx512:
      if constexpr (std::is_same_v<T, float>)
        if (M > 8 && N > 8 && N <= 16) return kernel_avx512_n16w();
      if (M <= 8 || N <= 16) return kernel_of<T, Isa::Avx2>();
      if constexpr (std::is_same_v<T, float>)
        if (N > 32 && N <= 48) return kernel_avx512_n48();
      // A few row panels (one block of A): 8-row panels where they pad fewer rows (64 rows:
      // 8 x 8 rather than 5 x 12 and a 12-row tile computing 4).
      if (M <= 240 && (M + 7) / 8 * 8 < (M + 11) / 12 * 12) return kernel_avx512_short<T>();
      if constexpr (std::is_same_v<T, float>)
        if (M > 240 && N > 32 && N <= 64) return kernel_avx512_n64<T>();
      return kernel_of<T, Isa::Avx512>();
    case Isa::Avx2: return kernel_of<T, Isa::Avx2>();
    default: return kernel_of<T, Isa::Base>();
  }
}

// The gathered-rows MR x 16 tile of a kernel with a narrow tile (uk_narrow), for a last panel of
// at most 16 columns.
UKernelGather gather_kernel_narrow(const Kernel<float>& kn) {
  if (&kn == &kernel_of<float, Isa::Avx512>()) return &ukernel_gather_avx512<12, 16>;
  if (&kn == &kernel_avx512_short<float>()) return &ukernel_gather_avx512<8, 16>;
  return nullptr;
}

// The gathered-rows tile of gemm_rows' kernels (kernel_for's float tiles; nullptr for others).
UKernelGather gather_kernel(const Kernel<float>& kn) {
  if (&kn == &kernel_of<float, Isa::Avx512>()) return &ukernel_gather_avx512<12, 32>;
  if (&kn == &kernel_avx512_short<float>()) return &ukernel_gather_avx512<8, 32>;
  if (&kn == &kernel_avx512_n64<float>()) return &ukernel_gather_avx512<6, 64>;
  if (&kn == &kernel_avx512_n16w()) return &ukernel_gather_avx512<12, 16>;
  if (&kn == &kernel_avx512_n48()) return &ukernel_gather_avx512<8, 48>;
  if (&kn == &kernel_of<float, Isa::Avx2>()) return &ukernel_gather_avx2<6, 16>;
  if (&kn == &kernel_of<float, Isa::Base>()) return &ukernel_gather_base<6, 16>;
  return nullptr;
}

// A's rows contiguous along k (csa == 1: the NHWC im2col, row-major operands):
// the MR x kc block is transposed 8 x 8 at a time in AVX registers where the CPU has AVX2 and MR is
// a multiple of 8 (layout.h's transpose_strided), else 4 x 4 in SSE registers (baseline x86-64),
// instead of one strided element at a time.
inline void pack_a_rows_f32(int MR, int64_t mc, int64_t kc, const float* A, int64_t rsa, float* dst) {
  // (channels_last stride-2 3x3 forwards, whose weights are B's transposed columns, batch 8, 2
  // threads, in-process A/B: 512 @14 +2 %, 256 @14 -> 512 +2 %, 256 @28 +1 %)
  const bool avx = MR % 8 == 0 && cpu_isa() != Isa::Base;
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    const int64_t mr = std::min<int64_t>(MR, mc - i0);
    const float* a = A + i0 * rsa;
    float* d = dst + i0 * kc;  // this panel: kc x MR
    int64_t i = 0;
    if (avx) {
      transpose_strided(a, rsa, d, MR, mr, kc);
      i = mr;
    }
    for (; i + 4 <= mr; i += 4) {
      const float* r0 = a + i * rsa;
      const float* r1 = r0 + rsa;
      const float* r2 = r1 + rsa;
      const float* r3 = r2 + rsa;
      int64_t k = 0;
      for (; k + 4 <= kc; k += 4) {
        __m128 x0 = _mm_loadu_ps(r0 + k), x1 = _mm_loadu_ps(r1 + k), x2 = _mm_loadu_ps(r2 + k),
               x3 = _mm_loadu_ps(r3 + k);
        _MM_TRANSPOSE4_PS(x0, x1, x2, x3);
        _mm_storeu_ps(d + (k + 0) * MR + i, x0);
        _mm_storeu_ps(d + (k + 1) * MR + i, x1);
        _mm_storeu_ps(d + (k + 2) * MR + i, x2);
        _mm_storeu_ps(d + (k + 3) * MR + i, x3);
      }
      for (; k < kc; ++k) {
        d[k * MR + i] = r0[k];
        d[k * MR + i + 1] = r1[k];
        d[k * MR + i + 2] = r2[k];
        d[k * MR + i + 3] = r3[k];
      }
    }
    for (; i < mr; ++i)
      for (int64_t k = 0; k < kc; ++k) d[k * MR + i] = a[i * rsa + k];
    for (int64_t ii = mr; ii < MR; ++ii)
      for (int64_t k = 0; k < kc; ++k) d[k * MR + ii] = 0.f;
  }
}

// A panel row (6 to 32 elements): an inline copy, not a library call per row
// (at 128 bytes the call cost about as much as the copy).
template <typename T>
inline void copy_short(T* __restrict dst, const T* __restrict src, int n) {
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    T t0 = src[j], t1 = src[j + 1], t2 = src[j + 2], t3 = src[j + 3];
    dst[j] = t0, dst[j + 1] = t1, dst[j + 2] = t2, dst[j + 3] = t3;
  }
  for (; j < n; ++j) dst[j] = src[j];
}

// kc steps of W contiguous elements, csa apart, to dst W at a time: a fixed-size copy the
// compiler makes whole vector moves (a packed channels_last weight gradient, whose A is
// dY^T, 512 -> 128 1x1 @28: pack_a 3.7 -> 2.9 % of its profile's samples, the kernel 30 %).
template <int W, typename T>
inline void copy_steps(int64_t kc, const T* __restrict a, int64_t csa, T* __restrict dst) {
  for (int64_t k = 0; k < kc; ++k, dst += W) std::memcpy(dst, a + k * csa, W * sizeof(T));
}

template <typename T>
void pack_a(int MR, int64_t mc, int64_t kc, const T* A, int64_t rsa, int64_t csa, T* dst) {
  if constexpr (std::is_same_v<T, float>) {
    if (csa == 1) return pack_a_rows_f32(MR, mc, kc, A, rsa, dst);
  }
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    const int64_t mr = std::min<int64_t>(MR, mc - i0);
    const T* a = A + i0 * rsa;
    if (rsa == 1 && mr == MR) {  // columns of A contiguous (a transposed operand): MR elements a step
      switch (MR) {
        case 6: copy_steps<6>(kc, a, csa, dst); break;
        case 8: copy_steps<8>(kc, a, csa, dst); break;
        case 12: copy_steps<12>(kc, a, csa, dst); break;
        default:
          for (int64_t k = 0; k < kc; ++k) copy_short(dst + k * MR, a + k * csa, MR);
      }
      dst += kc * MR;
      continue;
    }
    for (int64_t k = 0; k < kc; ++k) {
      int64_t i = 0;
      for (; i < mr; ++i) dst[i] = a[i * rsa + k * csa];
      for (; i < MR; ++i) dst[i] = T(0);
      dst += MR;
    }
  }
}

// Rows of B contiguous (csb == 1), whole panels of NR columns: copied k-major, each
// row's nc columns read start to end (a sequential stream the prefetcher follows,
// where the panel-major order read kc rows NR elements at a time) with the widest
// vector copy the CPU has.
template <int VB>
__attribute__((always_inline)) inline void pack_b_rows_body(int NR, int64_t kc, int64_t panels, const float* B,
                                                            int64_t rsb, float* dst) {
  typedef float V __attribute__((vector_size(VB)));
  constexpr int VL = VB / 4;
  const int64_t step = kc * NR;
  for (int64_t k = 0; k < kc; ++k) {
    const float* b = B + k * rsb;
    float* d = dst + k * NR;
    for (int64_t p = 0; p < panels; ++p, b += NR, d += step)
      for (int j = 0; j < NR; j += VL) {
        V v;
        std::memcpy(&v, b + j, sizeof(V));
        std::memcpy(d + j, &v, sizeof(V));
      }
  }
}
__attribute__((target("avx512f"))) void pack_b_rows_avx512(int NR, int64_t kc, int64_t panels, const float* B,
                                                            int64_t rsb, float* dst) {
  pack_b_rows_body<64>(NR, kc, panels, B, rsb, dst);
}
__attribute__((target("avx2"))) void pack_b_rows_avx2(int NR, int64_t kc, int64_t panels, const float* B, int64_t rsb,
                                                      float* dst) {
  pack_b_rows_body<32>(NR, kc, panels, B, rsb, dst);
}
void pack_b_rows_base(int NR, int64_t kc, int64_t panels, const float* B, int64_t rsb, float* dst) {
  pack_b_rows_body<16>(NR, kc, panels, B, rsb, dst);
}

template <typename T>
void pack_b(int NR, int64_t kc, int64_t nc, const T* B, int64_t rsb, int64_t csb, T* dst) {
  if constexpr (std::is_same_v<T, float>) {
    // Columns of B contiguous (B is a transposed operand, e.g. the NCHW weight
    // gradient's col^T): the same 4 x 4 transposing copy as A's rows.
    if (rsb == 1 && csb != 1) return pack_a_rows_f32(NR, nc, kc, B, csb, dst);
    if (csb == 1 && nc >= NR) {
      const int64_t panels = nc / NR;
      const Isa isa = cpu_isa();
      if (isa == Isa::Avx512 && NR % 16 == 0)
        pack_b_rows_avx512(NR, kc, panels, B, rsb, dst);
      else if (isa != Isa::Base && NR % 8 == 0)
        pack_b_rows_avx2(NR, kc, panels, B, rsb, dst);
      else
        pack_b_rows_base(NR, kc, panels, B, rsb, dst);
      const int64_t done = panels * NR;
      if (done == nc) return;
      B += done, dst += done * kc, nc -= done;
    }
  }
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    const int64_t nr = std::min<int64_t>(NR, nc - j0);
    const T* b = B + j0 * csb;
    if (csb == 1 && nr == NR) {
      for (int64_t k = 0; k < kc; ++k, dst += NR) copy_short(dst, b + k * rsb, NR);
      continue;
    }
    for (int64_t k = 0; k < kc; ++k) {
      int64_t j = 0;
      for (; j < nr; ++j) dst[j] = b[k * rsb + j * csb];
      for (; j < NR; ++j) dst[j] = T(0);
      dst += NR;
    }
  }
}

// Whether nc columns end in a panel of at most 16 that the kernel's MR x 16 tile takes (uk_narrow).
template <typename T>
bool narrow_tail(const Kernel<T>& kn, int64_t nc) {
  return kn.uk_narrow && nc % kn.NR > 0 && nc % kn.NR <= 16;
}
// B [kc, nc] packed as pack_b does, but (narrow) a last panel of at most 16 columns 16 wide
// (narrow_tail), after the whole ones.
template <typename T>
void pack_b_narrow(const Kernel<T>& kn, int64_t kc, int64_t nc, const T* B, int64_t rsb, int64_t csb, T* dst,
                   bool narrow = true) {
  if (!narrow || !narrow_tail(kn, nc)) return pack_b(kn.NR, kc, nc, B, rsb, csb, dst);
  const int64_t whole = nc - nc % kn.NR;
  pack_b(kn.NR, kc, whole, B, rsb, csb, dst);
  pack_b(16, kc, nc - whole, B + whole * csb, rsb, csb, dst + whole * kc);
}
// The columns of nc packed that way: whole panels, the narrow one 16 wide. A count not a multiple
// of NR tells gemm_serial that a B packed whole (pack_b_once) has a narrow last panel.
template <typename T>
int64_t packed_b_cols(const Kernel<T>& kn, int64_t nc, bool narrow = true) {
  return narrow && narrow_tail(kn, nc) ? nc - nc % kn.NR + 16 : (nc + kn.NR - 1) / kn.NR * kn.NR;
}

// Columns of B packed at a time. With one block of A (M <= MC) the packed B is
// read once per block of columns, so a smaller block keeps it in L2 between its
// packing and its use: 512 KiB of packed B instead of 3 MiB (measured on a 2 MiB-L2
// Xeon: 64 x 3136 x 256 went from ~120 to ~150 GFLOP/s a core; products with
// several blocks of A, which reuse the packed B across them, keep NC).
template <typename T>
int64_t block_n(const Kernel<T>& kn, int64_t M) {
  if (M > kn.MC) return kn.NC;
  const int64_t nc = (int64_t(512) << 10) / (kn.KC * int64_t(sizeof(T))) / kn.NR * kn.NR;
  return std::clamp<int64_t>(nc, kn.NR, kn.NC);
}

template <typename T>
void gemm_serial(
    const Kernel<T>& kn, int64_t M, int64_t N, int64_t K,
    const T* A, int64_t rsa, int64_t csa,
    const T* B, int64_t rsb, int64_t csb,
    T* C, int64_t rsc, int64_t csc, bool accumulate,
    const T* bpacked = nullptr, int64_t Np = 0, int64_t col0 = 0, const T* bias = nullptr) {
  // bpacked: B packed whole (pack_b_once; Np columns: packed_b_cols), this
  // product's columns starting at its column col0 (a multiple of NR).
  // bias (accumulate false): C = A B + bias[j], the first block's tiles starting from it where A's
  // rows are read in place (csa == 1), else C set to it first.
  const int MR = kn.MR, NR = kn.NR;
  if (M <= 0 || N <= 0) return;
  if (bias && (csa != 1 || K <= 0)) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * rsc + j * csc] = bias[j];
    accumulate = true, bias = nullptr;
  }
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) C[i * rsc + j * csc] = T(0);
    return;
  }
  const int64_t NC = block_n(kn, M);
  T* bbuf = bpacked ? nullptr : thread_buffer<T>(kGemmPackB, kn.KC * ((std::min(N, NC) + NR - 1) / NR * NR));
  T* apack = thread_buffer<T>(kGemmPackA, kn.KC * ((std::min(M, kn.MC) + MR - 1) / MR * MR));
  alignas(64) T tile[12 * 32];
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc);
    for (int64_t pc = 0; pc < K; pc += kn.KC) {
      const int64_t kc = std::min(kn.KC, K - pc);
      const bool add = accumulate || pc > 0;
      const T* bpack = bbuf;
      // A last column panel of at most 16 columns on the MR x 16 tile (uk_narrow), packed 16 wide
      // after the others: 98 columns (an NCHW 7 x 7 layer at batch 2, weights read in place)
      // were 4 panels of 32, a quarter of the products padding.
      const int64_t jtail = nc - nc % NR;
      const bool narrow = narrow_tail(kn, nc) && (!bpacked || Np % NR != 0);
      if (bpacked)
        bpack = bpacked + pc * Np + (col0 + jc) * kc;
      else
        pack_b_narrow(kn, kc, nc, B + pc * rsb + jc * csb, rsb, csb, bbuf);
      auto tile_of = [&](int64_t jr) { return narrow && jr == jtail ? 16 : NR; };  // a panel's width
      // C[mr, nr] at c (+)= the tile buffer's (row stride tn): a partial tile, or C not row-major
      // (bj: the bias of its columns, added where the tile's product did not start from it)
      auto from_tile = [&](T* c, int64_t mr, int64_t nr, int tn, const T* bj = nullptr) {
        for (int64_t i = 0; i < mr; ++i)
          for (int64_t j = 0; j < nr; ++j) {
            T& dst = c[i * rsc + j * csc];
            dst = add ? dst + tile[i * tn + j] : bj ? bj[j] + tile[i * tn + j] : tile[i * tn + j];
          }
      };
      const T* b0 = bias && pc == 0 ? bias + jc : nullptr;  // the first block's tiles start from it
      // Rows of A contiguous along k: read unpacked, in place (the ROWS tile). An MR x kc
      // slice of A (12 KB) stays in L1 while it meets up to 512 KiB of packed B panels (L2),
      // then the next slice. Packing A cost 13% of a channels_last 1x1 layer's time (A is
      // its activations, read once); this order measured 0-13% faster than packing on
      // 1x1-layer products (M = 1568-25088, N = 64-1024, K = 64-1024).
      const bool rows = csa == 1;
      const int64_t jgroup = std::max<int64_t>(NR, (int64_t(512) << 10) / (kc * int64_t(sizeof(T))) / NR * NR);
      for (int64_t ic = 0; ic < M; ic += kn.MC) {
        const int64_t mc = std::min(kn.MC, M - ic);
        if (rows) {
          const int64_t mfull = mc / MR * MR;
          const T* ablk = A + ic * rsa + pc;
          // rows that would crowd L1's sets are read from a copy, kc apart (l1_sets_crowded)
          const bool copy = l1_sets_crowded(rsa * int64_t(sizeof(T)), MR, kc * int64_t(sizeof(T)));
          for (int64_t jg = 0; jg < nc; jg += jgroup)
            for (int64_t ir = 0; ir < mfull; ir += MR) {
              const T* arows = ablk + ir * rsa;
              int64_t lda = rsa;
              if (copy) {
                for (int i = 0; i < MR; ++i) std::memcpy(apack + i * kc, arows + i * rsa, kc * sizeof(T));
                arows = apack, lda = kc;
              }
              for (int64_t jr = jg; jr < std::min(nc, jg + jgroup); jr += NR) {
                const int64_t nr = std::min<int64_t>(NR, nc - jr);
                T* c = C + (ic + ir) * rsc + (jc + jr) * csc;
                if (csc == 1 && nr == NR) {
                  // the first of the MR rows' tiles prefetches the next MR rows (PF)
                  const bool next = jr == jg && ic + ir + 2 * MR <= M;
                  kn.ur(kc, arows, lda, bpack + jr * kc, c, rsc, add, next && !copy ? ablk + (ir + MR) * rsa : nullptr,
                        b0 ? b0 + jr : nullptr, nullptr);
                  continue;
                }
                const int tn = tile_of(jr);
                // (a partial panel's bias added in the copy: the kernel would read tn of it)
                (tn == NR ? kn.ur : kn.ur_narrow)(kc, arows, lda, bpack + jr * kc, tile, tn, false, nullptr,
                                                  nr == tn && b0 ? b0 + jr : nullptr, nullptr);
                from_tile(c, MR, nr, tn, nr < tn && b0 ? b0 + jr : nullptr);
              }
            }
          if (mfull == mc) continue;
          // the last, partial row panel: its rows in place on ur_part's tile of that many rows
          // where the kernel has one, its whole column panels straight into C
          const int64_t mr = mc - mfull;
          const bool part = kn.ur_part && csc == 1;
          if (part)
            for (int64_t jr = 0; jr < nc; jr += NR)
              if (nc - jr >= NR && tile_of(jr) == NR)
                kn.ur_part[mr](kc, ablk + mfull * rsa, rsa, bpack + jr * kc, C + (ic + mfull) * rsc + jc + jr, rsc,
                               add, nullptr, b0 ? b0 + jr : nullptr, nullptr);
          if (part && nc % NR == 0) continue;
          // else (or for its last, partial column panel) the packed path below
          pack_a(MR, mc - mfull, kc, ablk + mfull * rsa, rsa, csa, apack);
          for (int64_t jr = part ? nc - nc % NR : 0; jr < nc; jr += NR) {
            const int64_t nr = std::min<int64_t>(NR, nc - jr);
            T* c = C + (ic + mfull) * rsc + (jc + jr) * csc;
            const int tn = tile_of(jr);
            (tn == NR ? kn.uk : kn.uk_narrow)(kc, apack, bpack + jr * kc, tile, tn, false, nullptr);
            from_tile(c, mr, nr, tn, b0 ? b0 + jr : nullptr);
          }
          continue;
        }
        pack_a(MR, mc, kc, A + ic * rsa + pc * csa, rsa, csa, apack);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int64_t nr = std::min<int64_t>(NR, nc - jr);
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t mr = std::min<int64_t>(MR, mc - ir);
            T* c = C + (ic + ir) * rsc + (jc + jr) * csc;
            if (csc == 1 && mr == MR && nr == NR) {  // a whole tile: straight into C
              kn.uk(kc, apack + ir * kc, bpack + jr * kc, c, rsc, add, nullptr);
              continue;
            }
            const int tn = tile_of(jr);
            (tn == NR ? kn.uk : kn.uk_narrow)(kc, apack + ir * kc, bpack + jr * kc, tile, tn, false, nullptr);
            from_tile(c, mr, nr, tn);
          }
        }
      }
    }
  }
}

// Columns [first, first + nr) of a batch (nr <= 64, a register tile's columns) as runs inside one image:
// run r is columns j[r] .. j[r] + len[r] of the panel, at off[r] (image n at
// n * image, pixel p at p).
struct ColumnRuns {
  int n = 0;
  int64_t j[64], off[64], len[64];
  ColumnRuns(int64_t first, int64_t nr, int64_t P, int64_t image) {
    for (int64_t jj = 0; jj < nr; ++n) {
      const int64_t col = first + jj, img = col / P, p = col - img * P;
      j[n] = jj, off[n] = img * image + p, len[n] = std::min(nr - jj, P - p);
      jj += len[n];
    }
  }
};

// B's columns [j0, j0 + nc) of a batch (BatchCols, gemm.h) packed as pack_b does (panels of
// NR, zero past nc): row k of every panel, then row k + 1 (k-major, as pack_b_rows), so each
// image's row of B is read start to end. A panel inside one image is one copy of NR elements
// (VB-byte vector moves); one across images (or the last, partial one) goes by its runs.
// Panel-major, each panel read kc rows a plane apart (784 bytes @14): their lines left L1
// before the next panel came for the rest (ResNet-50's NCHW 1024 -> 256 1x1 @14, batch 8: the
// packing 27 % of the kernel's time).
template <int VB, typename T>
__attribute__((always_inline)) inline void pack_b_batch_body(int NR, int64_t kc, int64_t j0, int64_t nc, const T* B,
                                                             int64_t rsb, const BatchCols& bc, T* dst) {
  constexpr int VL = VB / int(sizeof(T));
  typedef T V __attribute__((vector_size(VB)));
  const int64_t panels = (nc + NR - 1) / NR;
  // per panel: its source offset when inside one image (whole), else the index of its runs
  std::vector<int64_t> off(panels);
  std::vector<ColumnRuns> cut;
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t first = j0 + p * NR, nr = std::min<int64_t>(NR, nc - p * NR), img = first / bc.P;
    if (nr == NR && (first + NR - 1) / bc.P == img && NR % VL == 0) {
      off[p] = img * bc.b_image + (first - img * bc.P);
    } else {
      off[p] = -1 - int64_t(cut.size());
      cut.emplace_back(first, nr, bc.P, bc.b_image);
    }
  }
  for (int64_t k = 0; k < kc; ++k) {
    const T* b = B + k * rsb;
    for (int64_t p = 0; p < panels; ++p) {
      T* d = dst + p * NR * kc + k * NR;
      if (off[p] >= 0) {
        const T* src = b + off[p];
        for (int j = 0; j < NR; j += VL) {
          V v;
          std::memcpy(&v, src + j, sizeof(V));
          std::memcpy(d + j, &v, sizeof(V));
        }
        continue;
      }
      const ColumnRuns& runs = cut[-1 - off[p]];
      int64_t nr = 0;
      for (int r = 0; r < runs.n; ++r) {
        copy_short(d + runs.j[r], b + runs.off[r], int(runs.len[r]));
        nr += runs.len[r];
      }
      for (int64_t j = nr; j < NR; ++j) d[j] = T(0);
    }
  }
}
__attribute__((target("avx512f"))) void pack_b_batch_avx512(int NR, int64_t kc, int64_t j0, int64_t nc,
                                                             const float* B, int64_t rsb, const BatchCols& bc,
                                                             float* dst) {
  pack_b_batch_body<64>(NR, kc, j0, nc, B, rsb, bc, dst);
}
__attribute__((target("avx2"))) void pack_b_batch_avx2(int NR, int64_t kc, int64_t j0, int64_t nc, const float* B,
                                                       int64_t rsb, const BatchCols& bc, float* dst) {
  pack_b_batch_body<32>(NR, kc, j0, nc, B, rsb, bc, dst);
}
template <typename T>
void pack_b_batch(int NR, int64_t kc, int64_t j0, int64_t nc, const T* B, int64_t rsb, const BatchCols& bc, T* dst) {
  if constexpr (std::is_same_v<T, float>) {
    const Isa isa = cpu_isa();
    if (isa == Isa::Avx512) return pack_b_batch_avx512(NR, kc, j0, nc, B, rsb, bc, dst);
    if (isa == Isa::Avx2) return pack_b_batch_avx2(NR, kc, j0, nc, B, rsb, bc, dst);
  }
  pack_b_batch_body<16>(NR, kc, j0, nc, B, rsb, bc, dst);
}

// C [M, N] (+)= A B over the columns [col0, col0 + N) of a batch (BatchCols):
// A packed whole (pack_a_once: [K / KC blocks][Mp / MR panels][kc][MR]), this
// product's rows starting at its row `row0` (a multiple of MR; C points at that
// row). A column panel inside one image goes straight to C, tile by tile. One
// across an image boundary (or the last, partial one) is summed over the
// reduction's blocks in a scratch panel of the calling thread ([rows][width],
// every tile whole) and goes to C once, run by run: through the tile buffer it
// went to C once a block (ResNet-50's NCHW 2048 -> 512 1x1 @7, batch 8: 49-pixel
// images, most of the 32-column panels across two). A last panel of at most 16
// columns runs on the MR x 16 tile (392 columns: 12 panels of 32 and 8 columns
// computed 16 wide, not 32).
template <typename T>
void gemm_batch_serial(const Kernel<T>& kn, int64_t M, int64_t N, int64_t K, const T* packed, int64_t Mp, int64_t row0,
                       const T* B, int64_t rsb, const BatchCols& bc, int64_t col0, T* C, int64_t rsc, bool accumulate,
                       int64_t lda = 0, const T* rbias = nullptr) {
  const int MR = kn.MR, NR = kn.NR;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t j = col0; j < col0 + N; ++j)
        for (int64_t i = 0; i < M; ++i) C[j / bc.P * bc.c_image + i * rsc + j % bc.P] = rbias ? rbias[row0 + i] : T(0);
    return;
  }
  const int64_t NC = block_n(kn, M), Mr = (M + MR - 1) / MR * MR;
  T* bpack = thread_buffer<T>(kGemmPackB, kn.KC * ((std::min(N, NC) + NR - 1) / NR * NR));
  alignas(64) T tile[12 * 32];
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc);
    const int64_t ntail = nc % NR, jtail = nc - ntail;
    const bool narrow = narrow_tail(kn, nc);
    const int64_t panels = (nc + NR - 1) / NR;
    // per panel: where it starts in C (straight to C) or its scratch panel's offset (-1 - offset)
    std::vector<int64_t> at(panels);
    int64_t scratch_elems = 0;
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t jr = p * NR, nr = std::min<int64_t>(NR, nc - jr);
      const int tw = narrow && jr == jtail ? 16 : NR;
      const ColumnRuns rn(col0 + jc + jr, nr, bc.P, bc.c_image);
      if (rn.n == 1 && nr == tw) {
        at[p] = rn.off[0];
      } else {
        at[p] = -1 - scratch_elems;
        scratch_elems += Mr * tw;
      }
    }
    T* scratch = scratch_elems ? thread_buffer<T>(kGemmBatchC, scratch_elems) : nullptr;
    for (int64_t pc = 0; pc < K; pc += kn.KC) {
      const int64_t kc = std::min(kn.KC, K - pc);
      const bool add = accumulate || pc > 0;
      // columns [j, j + cols) of the block into panels of w: a run inside one image as a plain
      // matrix, packed k-major with vector copies (pack_b); across images a run of columns at a
      // time (the stem's NCHW forward, batch 8: 10 % of its time in the run-by-run copy)
      auto pack_cols = [&](int w, int64_t j, int64_t cols, T* dst) {
        const int64_t first = col0 + jc + j, img = first / bc.P;
        if ((first + cols - 1) / bc.P == img)
          pack_b(w, kc, cols, B + pc * rsb + img * bc.b_image + (first - img * bc.P), rsb, int64_t(1), dst);
        else
          pack_b_batch(w, kc, first, cols, B + pc * rsb, rsb, bc, dst);
      };
      if (narrow) {
        if (jtail > 0) pack_cols(NR, 0, jtail, bpack);
        pack_cols(16, jtail, ntail, bpack + jtail * kc);
      } else {
        pack_cols(NR, 0, nc, bpack);
      }
      for (int64_t ic = 0; ic < M; ic += kn.MC) {
        const int64_t mc = std::min(kn.MC, M - ic);
        const T* apack = packed + pc * Mp + (row0 + ic) * kc;
        // A read in place (lda): its full row panels by the ROWS tile, a last partial one packed
        // into the thread's buffer
        const T* arows = lda ? packed + (row0 + ic) * lda + pc : nullptr;
        const int64_t mfull = lda ? mc / MR * MR : mc;
        T* apart = nullptr;
        if (lda && mfull < mc) {
          apart = thread_buffer<T>(kGemmPackA, MR * kc);
          pack_a(MR, mc - mfull, kc, arows + mfull * lda, lda, int64_t(1), apart);
        }
        // the tile product of row panel ir against B's panel bp into c (row stride ldc)
        auto tile_at = [&](int64_t ir, int tw, const T* bp, T* c, int64_t ldc, bool addc) {
          // rbias: the first block's whole row panels start from it (bias_rows: a partial one's)
          const T* rb = rbias && pc == 0 && ir + MR <= mc ? rbias + row0 + ic + ir : nullptr;
          if (!lda) return (tw == NR ? kn.uk : kn.uk_narrow)(kc, apack + ir * kc, bp, c, ldc, addc, rb);
          if (ir >= mfull) return (tw == NR ? kn.uk : kn.uk_narrow)(kc, apart, bp, c, ldc, addc, rb);
          (tw == NR ? kn.ur : kn.ur_narrow)(kc, arows + ir * lda, lda, bp, c, ldc, addc, nullptr, nullptr, rb);
        };
        // the bias added to a partial row panel's mr rows of tw (row stride ldc) after the first block
        auto bias_rows = [&](int64_t ir, int64_t mr, int tw, T* c, int64_t ldc) {
          if (!rbias || pc > 0 || mr == MR) return;
          for (int64_t i = 0; i < mr; ++i)
            for (int j = 0; j < tw; ++j) c[i * ldc + j] += rbias[row0 + ic + ir + i];
        };
        for (int64_t p = 0; p < panels; ++p) {
          const int64_t jr = p * NR;
          const int tw = narrow && jr == jtail ? 16 : NR;
          const T* bp = bpack + jr * kc;
          if (at[p] < 0) {  // summed in the scratch panel (rows of tw), every tile whole
            T* s = scratch + (-1 - at[p]) + ic * tw;
            for (int64_t ir = 0; ir < mc; ir += MR) {
              tile_at(ir, tw, bp, s + ir * tw, tw, pc > 0);
              bias_rows(ir, std::min<int64_t>(MR, mc - ir), tw, s + ir * tw, tw);
            }
            continue;
          }
          T* cp = C + ic * rsc + at[p];
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t mr = std::min<int64_t>(MR, mc - ir);
            if (mr == MR) {
              tile_at(ir, tw, bp, cp + ir * rsc, rsc, add);
              continue;
            }
            tile_at(ir, tw, bp, tile, tw, false);
            bias_rows(ir, mr, tw, tile, tw);
            for (int64_t i = 0; i < mr; ++i) {
              T* c = cp + (ir + i) * rsc;
              const T* t = tile + i * tw;
              if (add)
                for (int j = 0; j < tw; ++j) c[j] += t[j];
              else
                for (int j = 0; j < tw; ++j) c[j] = t[j];
            }
          }
        }
      }
    }
    // the scratch panels to C, run by run
    for (int64_t p = 0; p < panels; ++p) {
      if (at[p] >= 0) continue;
      const int64_t jr = p * NR;
      const int tw = narrow && jr == jtail ? 16 : NR;
      const ColumnRuns rn(col0 + jc + jr, std::min<int64_t>(NR, nc - jr), bc.P, bc.c_image);
      const T* s = scratch + (-1 - at[p]);
      for (int64_t i = 0; i < M; ++i, s += tw)
        for (int r = 0; r < rn.n; ++r) {
          T* c = C + i * rsc + rn.off[r];
          const T* t = s + rn.j[r];
          if (accumulate)
            for (int64_t j = 0; j < rn.len[r]; ++j) c[j] += t[j];
          else
            for (int64_t j = 0; j < rn.len[r]; ++j) c[j] = t[j];
        }
    }
  }
}

// gemm_serial with A's rows made by a callback (gemm_rows in gemm.h): each MR x kc
// block of A is written row by row into an L1-sized buffer, then transposed into
// the micro-kernel's panel; B is packed as in gemm_serial.
void gemm_rows_serial(const Kernel<float>& kn, int64_t M, int64_t N, int64_t K, RowsFn rows, const void* ctx,
                      const float* B, int64_t rsb, int64_t csb, float* C, int64_t rsc, bool accumulate,
                      DirectFn direct = nullptr, int64_t seg_len = 0, GatherFn gather = nullptr,
                      int64_t gather_kc = 0, const float* bias = nullptr, bool stream = false) {
  const int MR = kn.MR, NR = kn.NR;
  const UKernelGather ug = gather && seg_len > 0 ? gather_kernel(kn) : nullptr;
  const UKernelGather ug_narrow = ug && kn.uk_narrow ? gather_kernel_narrow(kn) : nullptr;
  // a last panel of at most 16 columns on the MR x 16 tile where the kernel has one for each way
  // the rows are read
  const bool narrow_ok = kn.ur_narrow && kn.urs_narrow && (!ug || ug_narrow);
  if (M > 0 && N > 0 && K <= 0 && bias && !accumulate)
    for (int64_t i = 0; i < M; ++i) std::memcpy(C + i * rsc, bias, N * sizeof(float));
  if (M <= 0 || N <= 0 || K <= 0) return;
  const int64_t NC = block_n(kn, M);
  // Gathered rows (gather_kc > 0: gemm_rows' product has 8 tiles of rows or more, whatever share of
  // them this call has, so the blocks and the sums' order do not depend on the thread count) in
  // blocks of up to gather_kc (kGatherKC, or gemm_rows' gather_block): a tile's accumulators then
  // stay in registers over up to kGatherRuns taps, where blocks of 256 (one 256-channel tap) stored
  // and reloaded them every tap; the tile's B panel (kc x NR) then comes from L2, not L1.
  // Channels_last, batch 8, two threads, process-alternating A/B (ratio to torch, medians of 3):
  // stride-2 3x3 256 @28 0.94 -> 0.98, 128 @56 0.95 -> 0.97, 512 @14 1.00 -> 1.07, 64 @112 0.90
  // -> 0.92, 192 -> 320 @17 (valid) 1.07 -> 1.12; 5x5 32 -> 64 @56 0.92 -> 0.94; batch 2 256 @28
  // 1.06 -> 1.11. Fewer rows kept 256: batch 1 512 @7 (49 rows) 1.16 -> 1.12.
  const int64_t KC = gather && gather_kc > 0 ? gather_kc : kn.KC;
  float* arows = thread_buffer<float>(kGemmPackA, MR * KC);  // MR rows of kc
  alignas(64) float tile[12 * 32];
  // the reduction's blocks: KC, or aligned to the runs of seg_len (gemm.h)
  auto block_at = [&](int64_t pc) -> int64_t {
    if (seg_len <= 0) return std::min(KC, K - pc);
    if (seg_len <= KC) return std::min(std::min<int64_t>(KC / seg_len, gather ? kGatherRuns : KC) * seg_len, K - pc);
    const int64_t pieces = (seg_len + KC - 1) / KC, piece = (seg_len + pieces - 1) / pieces;
    return std::min({piece, seg_len - pc % seg_len, K - pc});
  };
  // stream: the tiles of rows read in place write C by streaming stores where the kernel has them
  // and the reduction is one block (C written once, not read back)
  const bool nt_c = stream && kn.urs_nt && !accumulate && block_at(0) >= K;
  // A tile's gathered rows (gather() in gemm.h), its runs whose rows are all zeros left out, and
  // its rows of C
  bool permuted = false;  // some row of A is not that row of C (no rows() or direct() then)
  struct Gathered {
    int n;
    int64_t len, koff[kGatherRuns];
    const float* at[kGatherRuns][16];
    float* c[16];
  };
  auto gather_tile = [&](int64_t ir, int64_t mr, int64_t pc, int64_t kc, Gathered& g) -> bool {
    int64_t crow[16];
    const int n = gather(ctx, ir, mr, pc, kc, g.at, crow);
    if (n <= 0) return false;
    for (int i = 0; i < MR; ++i) {
      g.c[i] = i < mr ? C + crow[i] * rsc : nullptr;
      permuted = permuted || (i < mr && crow[i] != ir + i);
    }
    g.n = 0, g.len = kc / n;
    for (int t = 0; t < n; ++t) {  // the runs kept moved down over those left out
      bool zeros = true;
      for (int i = 0; i < MR; ++i) {
        const float* a = i < mr ? g.at[t][i] : gemm_zero_row();
        g.at[g.n][i] = a;
        zeros = zeros && a == gemm_zero_row();
      }
      if (!zeros) g.koff[g.n++] = t * g.len;
    }
    return true;
  };
  // Rows [i0, i1) of C's columns [jc, jc + nc) (+)= their A rows' block [pc, pc + kc) times B's
  // packed block (bpack: panels [nc / NR][kc][NR]).
  auto rows_block = [&](int64_t i0, int64_t i1, int64_t jc, int64_t nc, int64_t pc, int64_t kc, const float* bpack) {
    const bool add = accumulate || pc > 0;
    // bias: the first block's tiles start their accumulators from it (C's columns jc + jr on)
    const float* b0 = bias && pc == 0 ? bias + jc : nullptr;
    // a last panel of at most 16 columns packed 16 wide (pack_b_narrow) on the MR x 16 tile
    const int64_t jtail = narrow_ok && narrow_tail(kn, nc) ? nc - nc % NR : nc;
    auto width = [&](int64_t jr) { return jr == jtail ? 16 : NR; };
    // Each MR rows of A are read where made (the ROWS tile, rows kc apart, L1-hot), not
    // transposed into a panel first (that cost about what the product did with one or two
    // column panels, 8% of a stride-2 3x3 layer's time with four), and meet up to 512 KiB of
    // B's panels (L2) before the next MR rows are made (more columns: the rows are made again
    // for each 512 KiB group). Rows that direct() finds in place are not made at all.
    const int64_t jgroup = std::max<int64_t>(NR, (int64_t(512) << 10) / (kc * int64_t(sizeof(float))) / NR * NR);
    // Rows [r0, r1) made by rows() or found by direct(), each MR rows meeting up to jgroup columns
    auto made = [&](int64_t r0, int64_t r1) {
      // l1_sets_crowded for the last (lda, len) direct() gave (the same for most tiles; counting
      // the sets each tile cost a 27-float first layer's tiles 5 % of their time)
      int64_t seen_lda = -1, seen_len = -1;
      bool crowded = false;
      for (int64_t jg = 0; jg < nc; jg += jgroup)
        for (int64_t ir = r0; ir < r1; ir += MR) {
          const int64_t mr = std::min<int64_t>(MR, M - ir);
          RowSegments sg;
          bool in_place = direct && mr == MR && direct(ctx, ir, mr, pc, kc, &sg);
          if (in_place && (sg.lda != seen_lda || sg.len != seen_len)) {
            seen_lda = sg.lda, seen_len = sg.len;
            crowded = l1_sets_crowded(sg.lda * int64_t(sizeof(float)), MR, sg.len * int64_t(sizeof(float)));
          }
          in_place = in_place && !crowded;
          if (!in_place) {
            rows(ctx, ir, mr, pc, kc, arows);
            if (mr < MR) std::fill(arows + mr * kc, arows + MR * kc, 0.f);
          }
          for (int64_t jr = jg; jr < std::min(nc, jg + jgroup); jr += NR) {
            const int64_t nr = std::min<int64_t>(NR, nc - jr), tw = width(jr);
            float* c = C + ir * rsc + (jc + jr);
            const bool whole = mr == MR && nr == tw;
            if (mr < MR && nr == NR && tw == NR && kn.ur_part) {  // a partial row panel: mr rows straight to C
              kn.ur_part[mr](kc, arows, kc, bpack + jr * kc, c, rsc, add, nullptr, b0 ? b0 + jr : nullptr, nullptr);
              continue;
            }
            float* dst = whole ? c : tile;
            const int64_t ldd = whole ? rsc : tw;
            const bool addd = whole && add;
            // the bias where the panel is whole (the kernel reads tw of it), else in the copy below
            const float* bk = b0 && nr == tw ? b0 + jr : nullptr;
            if (in_place)
              (tw != NR ? kn.urs_narrow : nt_c && whole && !addd ? kn.urs_nt : kn.urs)(
                  sg.len, sg.a, sg.lda, bpack + jr * kc, dst, ldd, addd, sg.n, sg.step, sg.len * tw, bk);
            else
              (tw == NR ? kn.ur : kn.ur_narrow)(kc, arows, kc, bpack + jr * kc, dst, ldd, addd, nullptr, bk,
                                                nullptr);
            if (whole) continue;
            const float* bc = b0 && !bk ? b0 + jr : nullptr;
            for (int64_t i = 0; i < mr; ++i)
              for (int64_t j = 0; j < nr; ++j)
                c[i * rsc + j] = add ? c[i * rsc + j] + tile[i * tw + j] : (bc ? bc[j] : 0.f) + tile[i * tw + j];
          }
        }
    };
    if (!ug) return made(i0, i1);
    // Rows gather() finds (gemm.h), nothing copied: up to kTiles tiles' rows at a time, and B's
    // column panels the outer loop, each (kc x NR, up to 32 KiB) staying in L1 while the tiles
    // read it; a tile's runs whose rows are all zeros are left out (the taps outside the image),
    // and a tile with none left adds nothing. Copied rows meeting the panels from L2 in turn
    // (made()), ResNet-50's 128-channel stride-2 3x3 layer ran 5 % slower, Inception-v3's 7x1
    // layer 9 % (padding's rows computed), one thread.
    constexpr int kTiles = 32;
    Gathered gs[2][kTiles];
    int64_t ready = 0;  // tiles of gs[cur] gathered ahead (the next group's, while this one ran)
    int cur = 0;
    for (int64_t r0 = i0; r0 < i1; r0 += kTiles * MR) {
      Gathered* g = gs[cur];
      const int64_t r1 = std::min(i1, r0 + kTiles * MR), tiles = (r1 - r0 + MR - 1) / MR;
      bool found = true;
      for (int64_t t = ready; t < tiles && found; ++t)
        found = gather_tile(r0 + t * MR, std::min<int64_t>(MR, M - r0 - t * MR), pc, kc, g[t]);
      ready = 0;
      if (!found) {
        TORCH_CHECK(!permuted, "convx: gemm_rows: rows in another order not found by gather()");
        made(r0, r1);
        continue;
      }
      // The next group's rows gathered, and prefetched into L1 a tile's at a time, while this group
      // meets the first column panel: a layer's input larger than the caches came from memory with
      // the FMAs waiting (64 -> 64 3x3 stride 2 @112, batch 8, 26 MB: 3 % faster, one thread).
      Gathered* gn = gs[1 - cur];
      const int64_t n0 = r1, n1 = std::min(i1, n0 + kTiles * MR), ntiles = n0 < n1 ? (n1 - n0 + MR - 1) / MR : 0;
      for (int64_t jr = 0; jr < nc; jr += NR) {
        const int64_t nr = std::min<int64_t>(NR, nc - jr), tw = width(jr);
        const UKernelGather ugj = tw == NR ? ug : ug_narrow;
        for (int64_t t = 0; t < tiles; ++t) {
          if (jr == 0 && t < ntiles && ready == t &&
              gather_tile(n0 + t * MR, std::min<int64_t>(MR, M - n0 - t * MR), pc, kc, gn[t])) {
            ++ready;
            const Gathered& q = gn[t];
            for (int u = 0; u < q.n; ++u)
              for (int i = 0; i < MR; ++i)
                if (q.at[u][i] != gemm_zero_row())
                  for (int64_t l = 0; l < q.len * int64_t(sizeof(float)); l += 64)
                    __builtin_prefetch(reinterpret_cast<const char*>(q.at[u][i]) + l, 0, 3);
          }
          if (g[t].n == 0 && add) continue;
          const int64_t ir = r0 + t * MR, mr = std::min<int64_t>(MR, M - ir);
          // the bias where the panel is whole (the kernel reads tw of it), else in the copy below
          const float* bj = b0 && nr == tw ? b0 + jr : nullptr;
          if (mr == MR && nr == tw) {
            ugj(g[t].n, g[t].len, g[t].koff, g[t].at, bpack + jr * kc, g[t].c, jc + jr, add, bj);
            continue;
          }
          float* trow[16];
          for (int i = 0; i < MR; ++i) trow[i] = tile + i * tw;
          ugj(g[t].n, g[t].len, g[t].koff, g[t].at, bpack + jr * kc, trow, 0, false, bj);
          const float* bc = b0 && !bj ? b0 + jr : nullptr;
          for (int64_t i = 0; i < mr; ++i) {
            float* c = g[t].c[i] + jc + jr;
            for (int64_t j = 0; j < nr; ++j)
              c[j] = add ? c[j] + tile[i * tw + j] : (bc ? bc[j] : 0.f) + tile[i * tw + j];
          }
        }
      }
      cur = 1 - cur;
    }
  };
  // All of B packed at once where it takes at most 1 MiB (one column block, several reduction
  // blocks): then the rows go in chunks of ~128 KiB of C, each through every reduction block
  // while in L2. Block by block over all the rows, C (3.2 MB for a 128 -> 128 stride-2 3x3
  // layer at batch 8) went through memory once a block (six times for that layer).
  const int64_t ncp = packed_b_cols(kn, N, narrow_ok);
  if (N <= NC && K > block_at(0) && K * ncp * int64_t(sizeof(float)) <= (int64_t(1) << 20)) {
    float* bpack = thread_buffer<float>(kGemmPackB, K * ncp);
    for (int64_t pc = 0, kc = 0; pc < K; pc += kc) {
      kc = block_at(pc);
      pack_b_narrow(kn, kc, N, B + pc * rsb, rsb, csb, bpack + pc * ncp, narrow_ok);
    }
    const int64_t chunk = std::max<int64_t>(1, (int64_t(128) << 10) / (ncp * int64_t(sizeof(float))) / MR) * MR;
    for (int64_t i0 = 0; i0 < M; i0 += chunk)
      for (int64_t pc = 0, kc = 0; pc < K; pc += kc) {
        kc = block_at(pc);
        rows_block(i0, std::min(M, i0 + chunk), 0, N, pc, kc, bpack + pc * ncp);
      }
    return;
  }
  float* bpack = thread_buffer<float>(kGemmPackB, KC * ((std::min(N, NC) + NR - 1) / NR * NR));
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc);
    for (int64_t pc = 0, kc = 0; pc < K; pc += kc) {
      kc = block_at(pc);
      pack_b_narrow(kn, kc, nc, B + pc * rsb + jc * csb, rsb, csb, bpack, narrow_ok);
      rows_block(0, M, jc, nc, pc, kc, bpack);
    }
  }
  if (nt_c) _mm_sfence();
}

}  // namespace

void gemm_rows(int64_t M, int64_t N, int64_t K, RowsFn rows, const void* ctx, const float* B, int64_t rsb,
               int64_t csb, float* C, int64_t rsc, bool accumulate, bool parallel, DirectFn direct, int64_t seg_len,
               GatherFn gather, const float* bias, int64_t gather_block, bool stream, int64_t row_len) {
  // Gathered rows on the 12 x 32 tile rather than 6 x 64 (33-64 columns): the tile's B panel, 256
  // steps of 64 floats, did not fit L1 (Zen 5, 1 MiB of L2: 64 -> 64 3x3 stride 2 @112, batch 8,
  // one thread: 5 % slower).
  const Kernel<float>& fit = kernel_for<float>(M, N);
  // Where L2 has 2 MiB or more (the Intel Xeon measured here) the 6 x 64 tile won instead: its
  // B panel streams from L2 while each tile's gathered rows are read once, not once per 32
  // columns (batch 8, two threads, process-alternating A/B on an Intel Xeon: 64 3x3 stride 2
  // @112 -8-10 %, @56 -6-10 % (NCHW -7 %), 48 -> 64 5x5 @35 -3 %, 128 -> 64 1x7 @17 -4 %).
  const bool wide_gather = l2_bytes() >= (int64_t(2) << 20);
  // Output rows of a multiple of 8 pixels (not of 12) on the 8-row tile, every tile then read in
  // place, where the 12-row tiles crossing two rows went through rows()' copies (CIFAR's 3 -> 16
  // 3x3 @32: a third of the layer's time). Not where the 12-row tiles' streaming stores write C.
  // Channels_last, 2 threads, in-process A/B on Zen 4: 3 -> 16 3x3 @32, batch 128, -22 % (0.83 ->
  // 1.08x torch), 3 -> 32 -11 %, 3 -> 32 @64 batch 32 -3 %; VGG's 3 -> 64 @224 (the 6 x 64 tile)
  // and 3 -> 16 @224 (224 pixels: one tile in 19 crossed) even.
  const bool eight = !gather && row_len > 0 && row_len % 8 == 0 && row_len % fit.MR != 0 &&
                     (&fit == &kernel_of<float, Isa::Avx512>() || &fit == &kernel_avx512_n16w()) &&
                     (!stream || N < fit.NR);
  const Kernel<float>& kn =
      eight ? kernel_avx512_short<float>()
      : gather && !wide_gather && &fit == &kernel_avx512_n64<float>() ? kernel_of<float, Isa::Avx512>() : fit;
  const int64_t gather_kc =
      gather && M >= 8 * kn.MR ? (gather_block > 0 ? std::min(gather_block, kGatherKC) : kGatherKC) : 0;
  const int64_t nt = parallel ? at::get_num_threads() : 1;
  if (nt <= 1 || 2.0 * double(M) * double(N) * double(K) < 2e6 || at::in_parallel_region())
    return gemm_rows_serial(kn, M, N, K, rows, ctx, B, rsb, csb, C, rsc, accumulate, direct, seg_len, gather,
                            gather_kc, bias, stream);
  // Rows split between the threads (each makes only its rows of A; B is packed by each), unless
  // there are few rows, or fewer than twice the columns and those enough for whole panels a
  // thread: then columns (A's rows made, or read in place, by every thread; B's panels packed
  // once). Each thread packing all of a late layer's weights (4608 x 512 for a 512-channel
  // stride-2 3x3) cost more than every thread reading the rows; channels_last forwards, two
  // threads, batch 8, in-process A/B (40 rounds, the order alternating): 512 @14 stride-2 3x3
  // +11 %, 256 @14 stride 2 +7 %, 1024 -> 2048 1x1 stride 2 @14 +14 %, 192 -> 384 @14 stride 2
  // (batch 4) +6 %, 256 @28 stride 2 (batch 2) +3 %; 1568 rows against 256 columns lost 2 %.
  const bool cols_first = M < 2 * N && N >= 4 * kn.NR * nt;
  if (M >= 4 * kn.MR * nt && !cols_first) {
    const int64_t chunk = ((M + nt - 1) / nt + kn.MR - 1) / kn.MR * kn.MR;
    struct Shift {
      RowsFn rows;
      DirectFn direct;
      GatherFn gather;
      const void* ctx;
      int64_t i0;
    };
    at::parallel_for(0, (M + chunk - 1) / chunk, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t i0 = t * chunk, mi = std::min(chunk, M - i0);
        const Shift sh{rows, direct, gather, ctx, i0};
        gemm_rows_serial(
            kn, mi, N, K,
            [](const void* c, int64_t i, int64_t count, int64_t k0, int64_t kc, float* dst) {
              const Shift* s = static_cast<const Shift*>(c);
              s->rows(s->ctx, s->i0 + i, count, k0, kc, dst);
            },
            &sh, B, rsb, csb, C + i0 * rsc, rsc, accumulate,
            direct ? DirectFn([](const void* c, int64_t i, int64_t count, int64_t k0, int64_t kc, RowSegments* sg) {
              const Shift* s = static_cast<const Shift*>(c);
              return s->direct(s->ctx, s->i0 + i, count, k0, kc, sg);
            })
                   : DirectFn(nullptr),
            seg_len,
            gather ? GatherFn([](const void* c, int64_t i, int64_t count, int64_t k0, int64_t kc,
                                 const float* (*at)[16], int64_t* crow) {
              const Shift* s = static_cast<const Shift*>(c);
              const int n = s->gather(s->ctx, s->i0 + i, count, k0, kc, at, crow);
              for (int64_t r = 0; r < count; ++r) crow[r] -= s->i0;
              return n;
            })
                   : GatherFn(nullptr),
            gather_kc, bias, stream);
      }
    });
  } else {
    const int64_t chunk = ((N + nt - 1) / nt + kn.NR - 1) / kn.NR * kn.NR;
    at::parallel_for(0, (N + chunk - 1) / chunk, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t j0 = t * chunk, nj = std::min(chunk, N - j0);
        gemm_rows_serial(kn, M, nj, K, rows, ctx, B + j0 * csb, rsb, csb, C + j0, rsc, accumulate, direct, seg_len,
                         gather, gather_kc, bias ? bias + j0 : nullptr, stream);
      }
    });
  }
}

namespace {
// The sysfs directory of cpu0's cache of `level` whose type is not "Instruction" ("" if none).
std::string cache_dir(int level) {
  for (int i = 0; i < 5; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream lv(dir + "level"), type(dir + "type");
    int l = 0;
    std::string t;
    if (lv >> l && type >> t && l == level && t != "Instruction") return dir;
  }
  return "";
}
}  // namespace

int l1_ways() {
  static const int ways = [] {
    // CONVX_CPU_L1_WAYS=n says n instead (tests run both sides of the rules on one machine)
    if (const char* env = std::getenv("CONVX_CPU_L1_WAYS"))
      if (const int n = std::atoi(env); n > 0) return n;
    const std::string dir = cache_dir(1);
    std::ifstream w(dir + "ways_of_associativity");
    int n = 0;
    return !dir.empty() && w >> n && n > 0 ? n : 8;
  }();
  return ways;
}

int64_t l2_bytes() {
  static const int64_t bytes = [] {
    const std::string dir = cache_dir(2);
    std::ifstream size(dir + "size");
    int64_t kib = 0;
    std::string unit;  // "2048K"
    if (dir.empty() || !(size >> kib) || kib <= 0) return int64_t(1) << 20;
    size >> unit;
    return unit == "M" ? kib << 20 : kib << 10;
  }();
  return bytes;
}

const float* gemm_zero_row() {
  alignas(64) static const float zeros[kGemmZeroRow] = {};
  return zeros;
}

void* thread_buffer(int slot, int64_t bytes) {
  struct Buf {
    void* p = nullptr;
    int64_t cap = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf bufs[kThreadBufferSlots];
  TORCH_CHECK(slot >= 0 && slot < kThreadBufferSlots, "convx: no thread buffer slot ", slot);
  Buf& b = bufs[slot];
  const int64_t rounded = std::max<int64_t>(64, (bytes + 63) / 64 * 64);
  if (b.cap < rounded) {
    std::free(b.p);
    b.p = std::aligned_alloc(64, rounded);
    b.cap = b.p ? rounded : 0;
    TORCH_CHECK(b.p != nullptr, "convx: out of memory for a ", rounded, "-byte CPU kernel buffer");
  }
  return b.p;
}

Isa cpu_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

const char* cpu_isa_name() {
  switch (cpu_isa()) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "base";
  }
}

// Run a product as one serial call, or split between the threads: C cut into
// one tile-aligned stripe a thread, by rows unless the columns are at least
// twice as many (or the rows too few for whole tiles a thread). Each stripe packs its
// own panels and every C element is written by one thread, so the result does
// not depend on scheduling. stripe(i0, mi, j0, nj): rows [i0, i0 + mi) and
// columns [j0, j0 + nj) of C.
// Rows up to twice the columns: each thread then reads half of A and packs all of B, rather
// than all of A (two threads, Zen 5: 2048^3 432 -> 480 GFLOP/s, 1024 x 1024 x 4096 421 -> 454,
// 392 x 512 x 4608 386 -> 427); from twice on the columns won (512 x 2048 x 2048 428 -> 455,
// 64 x 4096 x 4096 246 -> 320).
template <typename T, typename Stripe>
void split_product(const Kernel<T>& kn, int64_t M, int64_t N, int64_t K, bool parallel, const Stripe& stripe) {
  const int64_t nt = parallel ? at::get_num_threads() : 1;
  if (nt <= 1 || 2.0 * double(M) * double(N) * double(K) < 2e6 || at::in_parallel_region())
    return stripe(int64_t(0), M, int64_t(0), N);
  if (N >= 2 * M || (N >= M && M < 4 * kn.MR * nt)) {
    const int64_t chunk = ((N + nt - 1) / nt + kn.NR - 1) / kn.NR * kn.NR;
    at::parallel_for(0, (N + chunk - 1) / chunk, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) stripe(int64_t(0), M, t * chunk, std::min(chunk, N - t * chunk));
    });
  } else {
    const int64_t chunk = ((M + nt - 1) / nt + kn.MR - 1) / kn.MR * kn.MR;
    at::parallel_for(0, (M + chunk - 1) / chunk, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) stripe(t * chunk, std::min(chunk, M - t * chunk), int64_t(0), N);
    });
  }
}

// pack(pc, kc) for each block of KC reduction rows, split between the threads
// where there are several and `elems` (the operand's size) is worth it (4 MB of
// weights: ~5% of a layer's time packed by one thread while the other waits).
template <typename Pack>
void pack_blocks(int64_t K, int64_t KC, int64_t elems, const Pack& pack) {
  const int64_t blocks = (K + KC - 1) / KC;
  auto run = [&](int64_t b, int64_t e) {
    for (int64_t pc = b * KC; pc < std::min(K, e * KC); pc += KC) pack(pc, std::min(KC, K - pc));
  };
  if (blocks > 1 && elems >= (int64_t(1) << 16) && !at::in_parallel_region())
    at::parallel_for(0, blocks, 1, run);
  else
    run(0, blocks);
}

template <typename T>
void gemm(
    int64_t M, int64_t N, int64_t K,
    const T* A, int64_t rsa, int64_t csa,
    const T* B, int64_t rsb, int64_t csb,
    T* C, int64_t rsc, int64_t csc, bool accumulate, bool parallel) {
  const Kernel<T>& kn = kernel_for<T>(M, N);
  split_product(kn, M, N, K, parallel, [&](int64_t i0, int64_t mi, int64_t j0, int64_t nj) {
    gemm_serial(kn, mi, nj, K, A + i0 * rsa, rsa, csa, B + j0 * csb, rsb, csb, C + i0 * rsc + j0 * csc, rsc, csc,
                accumulate);
  });
}

template <typename T>
PackedB<T> pack_b_once(int64_t K, int64_t N, const T* B, int64_t rsb, int64_t csb, int64_t m_hint) {
  // Over 64 columns too, the 6 x 64 tile where L1 has 8 ways (Zen 4): a channels_last layer's
  // pixels (A's rows, read in place) meet each B panel of 64 columns once, not twice, and rows 4 KiB
  // apart (1024 channels) are read where they are, 6 a tile, where 12 crowded L1's sets and were
  // copied (7 % of the layer's time). Batch 8, 2 threads, channels_last, in-process A/B against the
  // 12 x 32 tile (Zen 4): 1x1 1024 -> 256 @14 -4 % (forward + backward -2 %), 1024 -> 512 @7 -5 %,
  // 512 -> 128 @28 -3 %, 64 -> 256 @56 -3 %; 512 -> 1024 stride 2 @28, 256 -> 1024 @14, 2048 -> 512
  // @7 even. (NCHW products, the weights their A, ran 4-6 % slower on it: kernel_for unchanged.)
  const Kernel<T>* six = nullptr;
  if constexpr (std::is_same_v<T, float>)
    if (cpu_isa() == Isa::Avx512 && l1_ways() < 12 && m_hint > 240 && N > 64)
      six = &kernel_avx512_n64<T>();
  const Kernel<T>& kn = six ? *six : kernel_for<T>(m_hint, N);
  const int64_t Np = packed_b_cols(kn, N);
  T* dst = thread_buffer<T>(kGemmPackedB, std::max<int64_t>(1, Np * K));
  // Blocks of KC reduction rows, each [Np / NR panels][kc][NR] (what gemm_serial packs a block of B
  // into), a narrow last panel [kc][16] after them.
  pack_blocks(K, kn.KC, N * K, [&](int64_t pc, int64_t kc) {
    pack_b_narrow(kn, kc, N, B + pc * rsb, rsb, csb, dst + pc * Np);
  });
  return PackedB<T>{dst, K, N, &kn};
}

template <typename T>
void gemm_packed_b(int64_t M, const T* A, int64_t rsa, int64_t csa, const PackedB<T>& b, T* C, int64_t rsc,
                   int64_t csc, bool accumulate, bool parallel, const T* bias) {
  const Kernel<T>& kn = *static_cast<const Kernel<T>*>(b.kernel);
  const int64_t Np = packed_b_cols(kn, b.N);
  split_product(kn, M, b.N, b.K, parallel, [&](int64_t i0, int64_t mi, int64_t j0, int64_t nj) {
    gemm_serial(kn, mi, nj, b.K, A + i0 * rsa, rsa, csa, static_cast<const T*>(nullptr), 0, 0,
                C + i0 * rsc + j0 * csc, rsc, csc, accumulate, b.data, Np, j0, bias ? bias + j0 : nullptr);
  });
}

template <typename T>
PackedA<T> pack_a_once(int64_t M, int64_t K, const T* A, int64_t rsa, int64_t csa, int64_t n_hint) {
  const Kernel<T>& kn = kernel_for<T>(M, n_hint);
  const int64_t Mp = (M + kn.MR - 1) / kn.MR * kn.MR;
  // float32 rows contiguous along k (an NCHW layer's weights, [K][C*R*S]): not packed at all, the
  // products read them in place (the ROWS tile), unless they would crowd L1's sets. 2 threads,
  // batch 8, in-process A/B: ResNet-50's NCHW 1x1 layers +0-17 % (512 -> 2048 @7 +13 %, 1024 ->
  // 2048 stride 2 @14 +17 %, 2048 -> 512 @7 +4 %), where packing 4 MB of weights a call had cost
  // 9 % of the 2048 -> 512 layer's samples.
  if (std::is_same_v<T, float> && csa == 1 &&
      (l1_ways() >= 12 || !l1_sets_crowded(rsa * int64_t(sizeof(T)), kn.MR, int64_t(kn.KC * sizeof(T)))))
    return PackedA<T>{A, M, K, &kn, rsa};
  T* dst = thread_buffer<T>(kGemmPackedA, std::max<int64_t>(1, Mp * K));
  // Blocks of KC reduction rows, each [Mp / MR panels][kc][MR] (the layout gemm_batch_serial reads).
  pack_blocks(K, kn.KC, M * K, [&](int64_t pc, int64_t kc) {
    pack_a(kn.MR, M, kc, A + pc * csa, rsa, csa, dst + pc * Mp);
  });
  return PackedA<T>{dst, M, K, &kn};
}

template <typename T>
void gemm_packed_a(const PackedA<T>& a, int64_t N, const BatchCols& bc, const T* B, int64_t rsb, T* C, int64_t rsc,
                   bool accumulate, bool parallel, const T* rbias) {
  const Kernel<T>& kn = *static_cast<const Kernel<T>*>(a.kernel);
  const int64_t Mp = (a.M + kn.MR - 1) / kn.MR * kn.MR;
  auto stripe = [&](int64_t i0, int64_t mi, int64_t j0, int64_t nj) {
    gemm_batch_serial(kn, mi, nj, a.K, a.data, Mp, i0, B, rsb, bc, j0, C + i0 * rsc, rsc, accumulate, a.lda, rbias);
  };
  split_product(kn, a.M, N, a.K, parallel, stripe);
}

template <typename T>
MicroTile micro_tile() {
  const Kernel<T>& kn = kernel_for<T>(1 << 20, 1 << 20);
  return MicroTile{kn.MR, kn.NR, kn.KC, &kn};
}

template <typename T>
MicroTile micro_tile_for_rows(int64_t rows) {
  const MicroTile wide = micro_tile<T>();
  if (cpu_isa() != Isa::Avx512 || (rows + 7) / 8 * 8 >= (rows + wide.MR - 1) / wide.MR * wide.MR) return wide;
  const Kernel<T>& kn = kernel_avx512_short<T>();
  return MicroTile{kn.MR, kn.NR, kn.KC, &kn};
}

template <typename T>
MicroTile micro_tile_for_cols(int64_t rows, int64_t cols) {
  const MicroTile mt = micro_tile_for_rows<T>(rows);
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_isa() == Isa::Avx512 && cols % mt.NR != 0 && cols % 48 == 0 && rows % 8 == 0) {
      const Kernel<float>& kn = kernel_avx512_n48();
      return MicroTile{kn.MR, kn.NR, kn.KC, &kn};
    }
    if (cpu_isa() == Isa::Avx512 && cols % mt.NR != 0 && cols % 16 == 0 && rows % 16 == 0) {
      const Kernel<float>& kn = kernel_avx512_n16();
      return MicroTile{kn.MR, kn.NR, kn.KC, &kn};
    }
  }
  return mt;
}

MicroTile micro_tile_whole_cols(int64_t cols, int64_t rows) {
  if (cpu_isa() == Isa::Avx512) {
    const Kernel<float>& kn = cols % 64 == 0 ? kernel_avx512_n64<float>()
                              : cols % 32 == 0 ? kernel_of<float, Isa::Avx512>()
                              : cols % 16 == 0 ? kernel_avx512_n16()
                                               : kernel_of<float, Isa::Avx512>();
    // rows given (a product's row count, in panels of MR): for 16 or 32 columns (not 64) 9-row
    // panels where they pad a tenth fewer rows (or more) than the 12- or 16-row ones, else for 16
    // columns 12-row panels where they pad a tenth fewer than 16-row ones. CIFAR's 3 -> 16 3x3
    // stem @32 (a filter row of 9 floats), batch 128, channels_last weight gradient
    // (wgrad_nhwc_filter_rows), process-alternating A/B on the Intel Xeon: 16 x 16 -> 12 x 16
    // -20 %, -> 9 x 16 -10 % more (0.72 -> 0.94x torch; NCHW 0.68 -> 0.83); 3 -> 32 3x3 stride 2
    // @224, batch 8, 12 x 32 -> 9 x 32 -8 % (0.93 -> 1.07); 8 -> 16 3x3 @56 (24 floats) on 12 x 16
    // -6 %. A few rows fewer did not pay: 16 -> 32 5x5 @28 (80 floats) on 9 x 32 +1.5 %, 24 -> 48
    // 5x5 (120) on 12 x 16 +1.3 %. Nor 64 columns: VGG's 3 -> 64 @224 ran 19 % slower on 9 x 32
    // than on 6 x 64 (24 accumulators, 12 rows of which 9 used), the 7x7 stem (21 floats) 7 % on
    // 7 x 32 and 37 % on 3 x 64 (whose B, dY's rows, came from L2 twice as often).
    auto padded = [&](int64_t mr) { return (rows + mr - 1) / mr * mr; };
    const bool n16 = &kn == &kernel_avx512_n16(), n32 = cols % 32 == 0 && cols % 64 != 0;
    const int64_t now = n16 ? std::min(padded(12), padded(16)) : padded(12);
    if (rows > 0 && (n16 || n32) && 10 * padded(9) <= 9 * now) {
      const Kernel<float>& k9 = n16 ? kernel_avx512_9x16() : kernel_avx512_9x32();
      return MicroTile{k9.MR, k9.NR, k9.KC, &k9};
    }
    if (rows > 0 && n16 && 10 * padded(12) <= 9 * padded(16)) {
      const Kernel<float>& k12 = kernel_avx512_n16w();
      return MicroTile{k12.MR, k12.NR, k12.KC, &k12};
    }
    return MicroTile{kn.MR, kn.NR, kn.KC, &kn};
  }
  return micro_tile<float>();
}

template <typename T>
void pack_a_panels(int64_t M, int64_t K, const T* A, int64_t lda, T* dst) {
  const Kernel<T>& kn = kernel_for<T>(1 << 20, 1 << 20);
  const int64_t Mp = (M + kn.MR - 1) / kn.MR * kn.MR;
  for (int64_t pc = 0; pc < K; pc += kn.KC)
    pack_a(kn.MR, M, std::min(kn.KC, K - pc), A + pc, lda, int64_t(1), dst + pc * Mp);
}

template <typename T>
void micro_tile_product(const MicroTile& mt, int64_t kc, const T* Ap, const T* Bp, T* C, int64_t ldc, int64_t mr,
                        bool add) {
  const Kernel<T>& kn = *static_cast<const Kernel<T>*>(mt.kernel);
  if (mr == kn.MR) return kn.uk(kc, Ap, Bp, C, ldc, add, nullptr);
  alignas(64) T tile[12 * 32];
  kn.uk(kc, Ap, Bp, tile, kn.NR, false, nullptr);
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < kn.NR; ++j) C[i * ldc + j] = add ? C[i * ldc + j] + tile[i * kn.NR + j] : tile[i * kn.NR + j];
}

template <typename T>
void micro_tile_product(int64_t kc, const T* Ap, const T* Bp, T* C, int64_t ldc, int64_t mr, bool add) {
  micro_tile_product<T>(micro_tile<T>(), kc, Ap, Bp, C, ldc, mr, add);
}

template <typename T>
void micro_tile_product_b_rows(int64_t kc, const T* Ap, const T* B, int64_t ldb, T* C, int64_t ldc, int64_t mr,
                               bool add) {
  micro_tile_product_b_rows<T>(micro_tile<T>(), kc, Ap, B, ldb, C, ldc, mr, add);
}

template <typename T>
void micro_tile_product_b_rows(const MicroTile& mt, int64_t kc, const T* Ap, const T* B, int64_t ldb, T* C,
                               int64_t ldc, int64_t mr, bool add) {
  const Kernel<T>& kn = *static_cast<const Kernel<T>*>(mt.kernel);
  if (mr == kn.MR) return kn.ub(kc, Ap, kn.MR, B, ldb, C, ldc, add, 1, 0, 0);
  alignas(64) T tile[12 * 32];
  kn.ub(kc, Ap, kn.MR, B, ldb, tile, kn.NR, false, 1, 0, 0);
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < kn.NR; ++j) C[i * ldc + j] = add ? C[i * ldc + j] + tile[i * kn.NR + j] : tile[i * kn.NR + j];
}

template <typename T>
void micro_tile_product_a_rows(const MicroTile& mt, int64_t kc, const T* A, int64_t lda, const T* Bp, T* C,
                               int64_t ldc, int64_t mr, bool add) {
  const Kernel<T>& kn = *static_cast<const Kernel<T>*>(mt.kernel);
  if (!l1_sets_crowded(lda * int64_t(sizeof(T)), kn.MR, kc * int64_t(sizeof(T)))) {
    if (mr == kn.MR) return kn.ur(kc, A, lda, Bp, C, ldc, add, nullptr, nullptr, nullptr);
    if (kn.ur_part) return kn.ur_part[mr](kc, A, lda, Bp, C, ldc, add, nullptr, nullptr, nullptr);
  }
  alignas(64) T panel[16 * 256];  // (MR <= 16, kc <= KC = 256)
  pack_a(kn.MR, mr, kc, A, lda, int64_t(1), panel);
  micro_tile_product<T>(mt, kc, panel, Bp, C, ldc, mr, add);
}

template <typename T>
void micro_tile_product_runs(const MicroTile& mt, int64_t nrows, int64_t kc, const T* A, int64_t lda, int64_t arow,
                             const T* B, int64_t ldb, int64_t brow, T* C, int64_t ldc, bool add) {
  static_cast<const Kernel<T>*>(mt.kernel)->ub(kc, A, lda, B, ldb, C, ldc, add, nrows, arow, brow);
}

template MicroTile micro_tile<float>();
template void micro_tile_product_runs<float>(const MicroTile&, int64_t, int64_t, const float*, int64_t, int64_t,
                                             const float*, int64_t, int64_t, float*, int64_t, bool);
template MicroTile micro_tile_for_rows<float>(int64_t);
template MicroTile micro_tile_for_cols<float>(int64_t, int64_t);
template void micro_tile_product<float>(const MicroTile&, int64_t, const float*, const float*, float*, int64_t,
                                        int64_t, bool);
template void micro_tile_product_b_rows<float>(const MicroTile&, int64_t, const float*, const float*, int64_t,
                                               float*, int64_t, int64_t, bool);
template void micro_tile_product_b_rows<float>(int64_t, const float*, const float*, int64_t, float*, int64_t, int64_t,
                                               bool);
template void pack_a_panels<float>(int64_t, int64_t, const float*, int64_t, float*);
template void micro_tile_product<float>(int64_t, const float*, const float*, float*, int64_t, int64_t, bool);
template void micro_tile_product_a_rows<float>(const MicroTile&, int64_t, const float*, int64_t, const float*, float*,
                                               int64_t, int64_t, bool);

template PackedB<float> pack_b_once<float>(int64_t, int64_t, const float*, int64_t, int64_t, int64_t);
template PackedB<double> pack_b_once<double>(int64_t, int64_t, const double*, int64_t, int64_t, int64_t);
template void gemm_packed_b<float>(int64_t, const float*, int64_t, int64_t, const PackedB<float>&, float*, int64_t,
                                   int64_t, bool, bool, const float*);
template void gemm_packed_b<double>(int64_t, const double*, int64_t, int64_t, const PackedB<double>&, double*,
                                    int64_t, int64_t, bool, bool, const double*);
template PackedA<float> pack_a_once<float>(int64_t, int64_t, const float*, int64_t, int64_t, int64_t);
template PackedA<double> pack_a_once<double>(int64_t, int64_t, const double*, int64_t, int64_t, int64_t);
template void gemm_packed_a<float>(const PackedA<float>&, int64_t, const BatchCols&, const float*, int64_t, float*,
                                   int64_t, bool, bool, const float*);
template void gemm_packed_a<double>(const PackedA<double>&, int64_t, const BatchCols&, const double*, int64_t, double*,
                                    int64_t, bool, bool, const double*);
template void gemm<float>(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, int64_t,
                          float*, int64_t, int64_t, bool, bool);
template void gemm<double>(int64_t, int64_t, int64_t, const double*, int64_t, int64_t, const double*, int64_t,
                           int64_t, double*, int64_t, int64_t, bool, bool);

}  // namespace convx::cpu
