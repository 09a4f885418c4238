// Tensor-core and asynchronous-copy instructions: the only inline PTX in convx.
//
//   mma_f16 / mma_bf16   mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32
//   mma_tf32             mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
//   ldmatrix<N, trans>   ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16
//   cp_async_ca<B>       cp.async.ca.shared.global, B = 4, 8 or 16 bytes, zero-fill past src_bytes
//   cp_async_cg          cp.async.cg.shared.global, 16 bytes (bypasses L1)
//   cp_async_commit / cp_async_wait<N>   commit_group / wait_group N
//   to_tf32              cvt.rna.tf32.f32 (round to nearest, ties away: what a kernel applies
//                        when it stages float32 through registers; raw float32 bits given
//                        to mma_tf32 lose their low 13 mantissa bits instead)
//
// Under nvcc these are the PTX instructions. Under the emulator (CONVX_SIMT)
// mma and ldmatrix are warp collectives (simt::warp_op) that gather all 32
// lanes' registers and compute what the PTX ISA specifies, with the fragment
// layouts of its sections "Matrix Fragments for mma.m16n8k16 with
// floating point type" and "... mma.m16n8k8 (.tf32)", and "Warp-level matrix
// load instruction: ldmatrix"; with g = lane / 4 and t = lane % 4:
//
//   m16n8k16 A (16 x 16, row)  a[r], halves h:  row g + 8 (r & 1),  col 2t + h + 8 (r >> 1)
//   m16n8k16 B (16 x 8, col)   b[r], halves h:  k 2t + h + 8 r,     col g
//   m16n8k8  A (16 x 8, tf32)  a[r]:            row g + 8 (r & 1),  col t + 4 (r >> 1)
//   m16n8k8  B (8 x 8, tf32)   b[r]:            k t + 4 r,          col g
//   C / D (16 x 8, f32)        c[i]:            row g + 8 (i >> 1), col 2t + (i & 1)
//   ldmatrix: lanes 8j .. 8j+7 give the row addresses of matrix j; register j of
//   lane l holds row l / 4, 16-bit columns 2 (l % 4), +1 of matrix j (.trans:
//   rows 2 (l % 4), +1 of column l / 4).
//
// tests/test_tensor_core.py checks these against a second statement of the
// same facts (CuTe's SM80 MMA / LDSM thread-value layouts) and, once a GPU has
// run scripts/probe_tensor_cores.py, against the hardware's own answers.
// Emulated products are exact and summed in double, rounded to float once;
// tf32 operands are truncated to 10 mantissa bits as the hardware reads them.
// Emulated cp.async copies at the wait_group that covers it (destination
// poisoned with 0xFF until then), so a missing wait reads NaNs.
#pragma once

#include "device.cuh"

#include <cstdint>

#if defined(CONVX_SIMT)

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace convx::cuda::tc {
namespace emu {

inline float half_at(uint32_t reg, int h) { return float(c10::Half(uint16_t(reg >> (16 * h)), c10::Half::from_bits())); }
inline float bf16_at(uint32_t reg, int h) {
  return float(c10::BFloat16(uint16_t(reg >> (16 * h)), c10::BFloat16::from_bits()));
}
inline float tf32_of(uint32_t reg) {
  const uint32_t b = reg & 0xFFFFE000u;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

struct MmaLane {
  float* d;
  const uint32_t* a;
  const uint32_t* b;
  const float* c;
};

// D = A B + C for one m16n8k16 (kind 0: f16, 1: bf16) or m16n8k8 (kind 2: tf32).
template <int Kind>
void mma_complete(void* const* lanes) {
  float A[16][16], B[16][8];
  double D[16][8];
  for (int l = 0; l < 32; ++l) {
    if (!lanes[l]) throw std::runtime_error("mma.sync needs all 32 lanes");
    const auto* x = static_cast<const MmaLane*>(lanes[l]);
    const int g = l / 4, t = l % 4;
    if (Kind == 2) {
      for (int r = 0; r < 4; ++r) A[g + 8 * (r & 1)][t + 4 * (r >> 1)] = tf32_of(x->a[r]);
      for (int r = 0; r < 2; ++r) B[t + 4 * r][g] = tf32_of(x->b[r]);
    } else {
      for (int r = 0; r < 4; ++r)
        for (int h = 0; h < 2; ++h)
          A[g + 8 * (r & 1)][2 * t + h + 8 * (r >> 1)] = Kind == 0 ? half_at(x->a[r], h) : bf16_at(x->a[r], h);
      for (int r = 0; r < 2; ++r)
        for (int h = 0; h < 2; ++h) B[2 * t + h + 8 * r][g] = Kind == 0 ? half_at(x->b[r], h) : bf16_at(x->b[r], h);
    }
    for (int i = 0; i < 4; ++i) D[g + 8 * (i >> 1)][2 * t + (i & 1)] = x->c[i];
  }
  const int K = Kind == 2 ? 8 : 16;
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n)
      for (int k = 0; k < K; ++k) D[m][n] += double(A[m][k]) * double(B[k][n]);
  for (int l = 0; l < 32; ++l) {
    auto* x = static_cast<const MmaLane*>(lanes[l]);
    const int g = l / 4, t = l % 4;
    for (int i = 0; i < 4; ++i) x->d[i] = float(D[g + 8 * (i >> 1)][2 * t + (i & 1)]);
  }
}

struct LdmLane {
  uint32_t* r;
  const void* row;
};

// Shared-memory bank conflicts of ldmatrix: a matrix's eight 16-byte rows are
// one wavefront when they fall in eight different 16-byte bank groups
// (address / 16 mod 8); each further row in an occupied group costs one more.
inline long ldmatrix_extra_wavefronts = 0;

template <int N, bool Trans>
void ldmatrix_complete(void* const* lanes) {
  uint16_t M[N][8][8];
  for (int l = 0; l < 32; ++l)
    if (!lanes[l]) throw std::runtime_error("ldmatrix needs all 32 lanes");
  for (int j = 0; j < N; ++j) {
    int per_group[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < 8; ++i)
      ++per_group[(reinterpret_cast<uintptr_t>(static_cast<const LdmLane*>(lanes[8 * j + i])->row) >> 4) & 7];
    ldmatrix_extra_wavefronts += *std::max_element(per_group, per_group + 8) - 1;
  }
  for (int j = 0; j < N; ++j)
    for (int i = 0; i < 8; ++i) {
      const void* p = static_cast<const LdmLane*>(lanes[8 * j + i])->row;
      if (reinterpret_cast<uintptr_t>(p) % 16)
        throw std::runtime_error("ldmatrix: lane " + std::to_string(8 * j + i) + "'s row address is not 16-byte aligned");
      std::memcpy(M[j][i], p, 16);
    }
  for (int l = 0; l < 32; ++l) {
    auto* x = static_cast<const LdmLane*>(lanes[l]);
    const int g = l / 4, t = l % 4;
    for (int j = 0; j < N; ++j) {
      const uint16_t lo = Trans ? M[j][2 * t][g] : M[j][g][2 * t];
      const uint16_t hi = Trans ? M[j][2 * t + 1][g] : M[j][g][2 * t + 1];
      x->r[j] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
  }
}

}  // namespace emu

#define CONVX_TC_OP(name, fn, lane) ::simt::warp_op(name, fn, 0xffffffffu, &lane, __FILE__, __LINE__)

inline void mma_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  emu::MmaLane x{d, a, b, c};
  CONVX_TC_OP("mma.sync.m16n8k16.f16", emu::mma_complete<0>, x);
}
inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  emu::MmaLane x{d, a, b, c};
  CONVX_TC_OP("mma.sync.m16n8k16.bf16", emu::mma_complete<1>, x);
}
inline void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  emu::MmaLane x{d, a, b, c};
  CONVX_TC_OP("mma.sync.m16n8k8.tf32", emu::mma_complete<2>, x);
}

// N = 1, 2 or 4 matrices; `row` is this lane's row address in shared memory.
template <int N, bool Trans = false>
inline void ldmatrix(uint32_t (&r)[N], const void* row) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
  emu::LdmLane x{r, row};
  CONVX_TC_OP(Trans ? "ldmatrix.trans" : "ldmatrix", (emu::ldmatrix_complete<N, Trans>), x);
}

template <int Bytes>
inline void cp_async_ca(void* smem, const void* gmem, int src_bytes) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async.ca copies 4, 8 or 16 bytes");
  if (reinterpret_cast<uintptr_t>(smem) % Bytes || (src_bytes && reinterpret_cast<uintptr_t>(gmem) % Bytes))
    throw std::runtime_error("cp.async: addresses must be aligned to the copy size");
  ::simt::async_copy(smem, gmem, Bytes, src_bytes);
}
inline void cp_async_cg(void* smem, const void* gmem, int src_bytes) {
  if (reinterpret_cast<uintptr_t>(smem) % 16 || (src_bytes && reinterpret_cast<uintptr_t>(gmem) % 16))
    throw std::runtime_error("cp.async: addresses must be aligned to the copy size");
  ::simt::async_copy(smem, gmem, 16, src_bytes);
}
inline void cp_async_commit() { ::simt::async_commit(); }
template <int N>
inline void cp_async_wait() {
  ::simt::async_wait(N);
}

inline float to_tf32(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  if (std::isfinite(x)) b = (b + 0x1000u) & 0xFFFFE000u;  // nearest, ties away from zero
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// Extra ldmatrix wavefronts (bank conflicts) since the last call; -1 where not
// measured (on a GPU: use Nsight Compute's l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld).
inline long take_ldmatrix_conflicts() {
  const long v = emu::ldmatrix_extra_wavefronts;
  emu::ldmatrix_extra_wavefronts = 0;
  return v;
}

#undef CONVX_TC_OP

}  // namespace convx::cuda::tc

#else  // nvcc

// Architectures before sm_80 (a default build includes sm_75) lack these
// instructions: there the wrappers trap, and the host never launches a
// tensor-core kernel (conv2d_tc.cu checks compute_capability_major() >= 8).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define CONVX_TC_ASM(...) __trap()
#else
#define CONVX_TC_ASM(...) asm volatile(__VA_ARGS__)
#endif

namespace convx::cuda::tc {

__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                        const float (&c)[4]) {
  CONVX_TC_ASM(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
}
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                         const float (&c)[4]) {
  CONVX_TC_ASM(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
}
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                         const float (&c)[4]) {
  CONVX_TC_ASM(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
}

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

template <int N, bool Trans = false>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[N], const void* row) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
  const unsigned a = smem_addr(row);
  if constexpr (N == 1) {
    if constexpr (Trans)
      CONVX_TC_ASM("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
    else
      CONVX_TC_ASM("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
  } else if constexpr (N == 2) {
    if constexpr (Trans)
      CONVX_TC_ASM("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
    else
      CONVX_TC_ASM("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
  } else {
    if constexpr (Trans)
      CONVX_TC_ASM("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                   : "r"(a));
    else
      CONVX_TC_ASM("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                   : "r"(a));
  }
}

template <int Bytes>
__device__ __forceinline__ void cp_async_ca(void* smem, const void* gmem, int src_bytes) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async.ca copies 4, 8 or 16 bytes");
  CONVX_TC_ASM("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_addr(smem)), "l"(gmem), "n"(Bytes),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_cg(void* smem, const void* gmem, int src_bytes) {
  CONVX_TC_ASM("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { CONVX_TC_ASM("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  CONVX_TC_ASM("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

inline long take_ldmatrix_conflicts() { return -1; }

__device__ __forceinline__ float to_tf32(float x) {
  uint32_t r = 0;
  CONVX_TC_ASM("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return __uint_as_float(r);
}

}  // namespace convx::cuda::tc

#undef CONVX_TC_ASM

#endif
