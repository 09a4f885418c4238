// See gemm.h for the algorithm. Napkin math for our 2-core AVX2 machine:
// 2 FMA pipes x 8 floats x 2 flops x ~3 GHz ~= 96 GFLOP/s per core in float32.
#include "gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace convx::cpu {
namespace {

template <typename T>
struct Blocking;
template <>
struct Blocking<float> {
  static constexpr int MR = 6, NR = 16;
  static constexpr int64_t KC = 256, MC = 144, NC = 3072;
};
template <>
struct Blocking<double> {
  static constexpr int MR = 6, NR = 8;
  static constexpr int64_t KC = 256, MC = 96, NC = 1536;
};

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// Per-thread packing buffers, 64-byte aligned, grown on demand and kept.
template <typename T>
T* scratch(int slot, int64_t n) {
  thread_local std::unique_ptr<void, FreeDeleter> bufs[2];
  thread_local int64_t caps[2] = {0, 0};
  const int64_t bytes = n * int64_t(sizeof(T));
  if (caps[slot] < bytes) {
    const int64_t rounded = (bytes + 63) / 64 * 64;
    bufs[slot].reset(std::aligned_alloc(64, rounded));
    TORCH_CHECK(bufs[slot] != nullptr, "convx: out of memory packing a GEMM panel");
    caps[slot] = rounded;
  }
  return static_cast<T*>(bufs[slot].get());
}

// The register tile: acc[MR][NR] += a[:, k] (x) b[k, :], k = 0..kc-1.
// a is packed MR-major per k, b NR-major per k.
template <typename T, int MR, int NR>
__attribute__((always_inline)) inline void ukernel_body(int64_t kc, const T* __restrict a, const T* __restrict b,
                                                        T* __restrict out) {
  constexpr int VL = 32 / int(sizeof(T));
  constexpr int NV = NR / VL;
  typedef T V __attribute__((vector_size(32)));
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = V{} ;
  for (int64_t k = 0; k < kc; ++k) {
    V bv[NV];
    for (int j = 0; j < NV; ++j) std::memcpy(&bv[j], b + j * VL, sizeof(V));
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i];
      for (int j = 0; j < NV; ++j) acc[i][j] += ai * bv[j];
    }
    a += MR;
    b += NR;
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) std::memcpy(out + i * NR + j * VL, &acc[i][j], sizeof(V));
}

// Two builds of the register tile: AVX2 + FMA, and the baseline ISA. The
// choice is made once, from the CPU's feature bits (not its model name: an
// AMD EPYC has AVX2 and FMA but is no "haswell").
template <typename T>
__attribute__((target("avx2,fma"))) void ukernel_avx2(int64_t kc, const T* a, const T* b, T* out) {
  ukernel_body<T, Blocking<T>::MR, Blocking<T>::NR>(kc, a, b, out);
}
template <typename T>
void ukernel_base(int64_t kc, const T* a, const T* b, T* out) {
  ukernel_body<T, Blocking<T>::MR, Blocking<T>::NR>(kc, a, b, out);
}

bool cpu_has_avx2_fma() {
  static const bool v = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return v;
}

template <typename T>
using UKernel = void (*)(int64_t, const T*, const T*, T*);

template <typename T>
UKernel<T> select_ukernel() {
  return cpu_has_avx2_fma() ? &ukernel_avx2<T> : &ukernel_base<T>;
}

template <typename T>
void pack_a(int64_t mc, int64_t kc, const T* A, int64_t rsa, int64_t csa, T* dst) {
  constexpr int MR = Blocking<T>::MR;
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    const int64_t mr = std::min<int64_t>(MR, mc - i0);
    const T* a = A + i0 * rsa;
    for (int64_t k = 0; k < kc; ++k) {
      int64_t i = 0;
      for (; i < mr; ++i) dst[i] = a[i * rsa + k * csa];
      for (; i < MR; ++i) dst[i] = T(0);
      dst += MR;
    }
  }
}

template <typename T>
void pack_b(int64_t kc, int64_t nc, const T* B, int64_t rsb, int64_t csb, T* dst) {
  constexpr int NR = Blocking<T>::NR;
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    const int64_t nr = std::min<int64_t>(NR, nc - j0);
    const T* b = B + j0 * csb;
    if (csb == 1 && nr == NR) {
      for (int64_t k = 0; k < kc; ++k, dst += NR) std::memcpy(dst, b + k * rsb, NR * sizeof(T));
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

template <typename T>
void gemm_serial(
    int64_t M, int64_t N, int64_t K,
    const T* A, int64_t rsa, int64_t csa,
    const T* B, int64_t rsb, int64_t csb,
    T* C, int64_t rsc, int64_t csc, bool accumulate) {
  using Bk = Blocking<T>;
  constexpr int MR = Bk::MR, NR = Bk::NR;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) C[i * rsc + j * csc] = T(0);
    return;
  }
  T* bpack = scratch<T>(0, Bk::KC * ((std::min(N, Bk::NC) + NR - 1) / NR * NR));
  T* apack = scratch<T>(1, Bk::KC * ((std::min(M, Bk::MC) + MR - 1) / MR * MR));
  alignas(64) T tile[MR * NR];
  static const UKernel<T> ukernel = select_ukernel<T>();
  for (int64_t jc = 0; jc < N; jc += Bk::NC) {
    const int64_t nc = std::min(Bk::NC, N - jc);
    for (int64_t pc = 0; pc < K; pc += Bk::KC) {
      const int64_t kc = std::min(Bk::KC, K - pc);
      const bool add = accumulate || pc > 0;
      pack_b(kc, nc, B + pc * rsb + jc * csb, rsb, csb, bpack);
      for (int64_t ic = 0; ic < M; ic += Bk::MC) {
        const int64_t mc = std::min(Bk::MC, M - ic);
        pack_a(mc, kc, A + ic * rsa + pc * csa, rsa, csa, apack);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int64_t nr = std::min<int64_t>(NR, nc - jr);
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t mr = std::min<int64_t>(MR, mc - ir);
            ukernel(kc, apack + ir * kc, bpack + jr * kc, tile);
            T* c = C + (ic + ir) * rsc + (jc + jr) * csc;
            if (csc == 1) {
              for (int64_t i = 0; i < mr; ++i) {
                T* ci = c + i * rsc;
                const T* ti = tile + i * NR;
                if (add)
                  for (int64_t j = 0; j < nr; ++j) ci[j] += ti[j];
                else
                  for (int64_t j = 0; j < nr; ++j) ci[j] = ti[j];
              }
            } else {
              for (int64_t i = 0; i < mr; ++i)
                for (int64_t j = 0; j < nr; ++j) {
                  T& dst = c[i * rsc + j * csc];
                  dst = add ? dst + tile[i * NR + j] : tile[i * NR + j];
                }
            }
          }
        }
      }
    }
  }
}

}  // namespace

template <typename T>
void gemm(
    int64_t M, int64_t N, int64_t K,
    const T* A, int64_t rsa, int64_t csa,
    const T* B, int64_t rsb, int64_t csb,
    T* C, int64_t rsc, int64_t csc, bool accumulate, bool parallel) {
  using Bk = Blocking<T>;
  const int64_t nt = parallel ? at::get_num_threads() : 1;
  const double flops = 2.0 * double(M) * double(N) * double(K);
  if (nt <= 1 || flops < 2e6 || at::in_parallel_region()) {
    gemm_serial(M, N, K, A, rsa, csa, B, rsb, csb, C, rsc, csc, accumulate);
    return;
  }
  // Split the larger side of C into one stripe per thread (tile aligned). Each
  // thread packs its own panels; every C element is written by one thread,
  // so the result does not depend on scheduling.
  if (N >= M) {
    const int64_t step = (N + nt - 1) / nt;
    const int64_t chunk = (step + Bk::NR - 1) / Bk::NR * Bk::NR;
    at::parallel_for(0, (N + chunk - 1) / chunk, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t j0 = t * chunk, nj = std::min(chunk, N - j0);
        gemm_serial(M, nj, K, A, rsa, csa, B + j0 * csb, rsb, csb, C + j0 * csc, rsc, csc, accumulate);
      }
    });
  } else {
    const int64_t step = (M + nt - 1) / nt;
    const int64_t chunk = (step + Bk::MR - 1) / Bk::MR * Bk::MR;
    at::parallel_for(0, (M + chunk - 1) / chunk, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t i0 = t * chunk, mi = std::min(chunk, M - i0);
        gemm_serial(mi, N, K, A + i0 * rsa, rsa, csa, B, rsb, csb, C + i0 * rsc, rsc, csc, accumulate);
      }
    });
  }
}

template void gemm<float>(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, int64_t,
                          float*, int64_t, int64_t, bool, bool);
template void gemm<double>(int64_t, int64_t, int64_t, const double*, int64_t, int64_t, const double*, int64_t,
                           int64_t, double*, int64_t, int64_t, bool, bool);

}  // namespace convx::cpu
