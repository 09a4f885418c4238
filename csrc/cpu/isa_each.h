// Loops whose body is compiled for the CPU's widest vector ISA.
//
// `each(b, e, f)` calls f(t) for t in [b, e) through one of three builds of
// the loop (AVX-512, AVX2 + FMA, baseline x86-64), picked by cpu_isa() (the
// CPU's feature bits, capped by CONVX_CPU_ISA). The body, an always-inline
// lambda, is inlined into each build and vectorised with its ISA: the files
// using it are otherwise compiled for baseline x86-64 (4 floats a register).
#pragma once

#include "gemm.h"

#include <cstdint>

#define CONVX_ALWAYS_INLINE __attribute__((always_inline))

namespace convx::cpu {

template <typename F>
__attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma"))) void each_avx512(int64_t b, int64_t e,
                                                                                         const F& f) {
  for (int64_t t = b; t < e; ++t) f(t);
}
template <typename F>
__attribute__((target("avx2,fma"))) void each_avx2(int64_t b, int64_t e, const F& f) {
  for (int64_t t = b; t < e; ++t) f(t);
}
template <typename F>
void each_base(int64_t b, int64_t e, const F& f) {
  for (int64_t t = b; t < e; ++t) f(t);
}
template <typename F>
void each(int64_t b, int64_t e, const F& f) {
  switch (cpu_isa()) {
    case Isa::Avx512: return each_avx512(b, e, f);
    case Isa::Avx2: return each_avx2(b, e, f);
    default: return each_base(b, e, f);
  }
}

}  // namespace convx::cpu
