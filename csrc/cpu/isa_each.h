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
#include <type_traits>
#include <vector>

#include <xmmintrin.h>

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

// The ISA for loops that stream memory with little arithmetic (channels_last
// pooling): AVX2 at most. Measured on Zen 4 (2 threads, 8x256x56x56, 2x2
// windows): the AVX-512 builds of the same loops ran slower, average 0.79 ->
// 0.66 ms and max 0.56-1.10 -> 0.37-0.69 ms with AVX2 (torch 0.54, 0.73-1.11).
inline Isa streaming_isa() { return cpu_isa() == Isa::Avx512 ? Isa::Avx2 : cpu_isa(); }

template <typename F>
void each_streaming(int64_t b, int64_t e, const F& f) {
  if (streaming_isa() == Isa::Avx2) return each_avx2(b, e, f);
  return each_base(b, e, f);
}

// n value-initialised elements from a 64-byte boundary (a thread's scratch row: a
// vector access to a std::vector's 16-byte-aligned storage straddles two lines).
template <typename E>
struct Aligned64 {
  explicit Aligned64(int64_t n) : buf(n + 64 / sizeof(E)) {}
  E* data() {
    const auto a = reinterpret_cast<std::uintptr_t>(buf.data());
    return reinterpret_cast<E*>((a + 63) & ~std::uintptr_t(63));
  }
  std::vector<E> buf;
};

// dst[0, n) = src[0, n) for a short run (an im2col row's run, a narrow plane's row): 64-, 32-
// or 16-byte moves, the last one overlapping the one before so as to end at n (a loop of 14
// floats ran one at a time, and std::copy called memmove: each of a 14 x 14 depthwise plane's
// two copies cost as much as its 126 multiply-adds).
template <typename T>
CONVX_ALWAYS_INLINE inline void copy_run(T* __restrict dst, const T* __restrict src, int64_t n) {
  auto move = [&](int64_t i, auto bytes) CONVX_ALWAYS_INLINE {
    char tmp[decltype(bytes)::value];
    __builtin_memcpy(tmp, src + i, sizeof tmp);
    __builtin_memcpy(dst + i, tmp, sizeof tmp);
  };
  const int64_t nb = n * int64_t(sizeof(T));
  if (nb >= 64) {
    constexpr int64_t E = 64 / sizeof(T);
    for (int64_t i = 0; i + E <= n; i += E) move(i, std::integral_constant<int, 64>{});
    if (n % E) move(n - E, std::integral_constant<int, 64>{});
  } else if (nb >= 32) {
    move(0, std::integral_constant<int, 32>{});
    move(n - 32 / int64_t(sizeof(T)), std::integral_constant<int, 32>{});
  } else if (nb >= 16) {
    move(0, std::integral_constant<int, 16>{});
    move(n - 16 / int64_t(sizeof(T)), std::integral_constant<int, 16>{});
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
  }
}

// 64 bytes of A (float or double) as a GCC vector type, for bodies run
// through each(): one zmm, two ymm or four xmm registers, whichever build.
// Arithmetic only: GCC lowers a vector compare or select in such a body before
// it is inlined into the ISA build, one lane at a time (use intrinsics there).
template <typename A>
struct Block {
  static_assert(std::is_same_v<A, float> || std::is_same_v<A, double>);
  static constexpr int n = int(64 / sizeof(A));
  typedef A v __attribute__((vector_size(64)));
};

// n values of T from p as a block of A (converted one by one unless T is A).
template <typename A, typename T>
CONVX_ALWAYS_INLINE inline typename Block<A>::v load_block(const T* p) {
  typename Block<A>::v r;
  if constexpr (std::is_same_v<A, T>) {
    __builtin_memcpy(&r, p, sizeof r);
  } else {
    for (int i = 0; i < Block<A>::n; ++i) r[i] = A(p[i]);
  }
  return r;
}
template <typename A, typename T>
CONVX_ALWAYS_INLINE inline void store_block(T* p, typename Block<A>::v r) {
  if constexpr (std::is_same_v<A, T>) {
    __builtin_memcpy(p, &r, sizeof r);
  } else {
    for (int i = 0; i < Block<A>::n; ++i) p[i] = T(r[i]);
  }
}

// store_block without reading the lines first or keeping them in the caches (non-temporal
// stores): p 64-byte aligned; the writer fences (_mm_sfence) before others read.
// (SSE's 16-byte movntps, in every build: a body run through each() is compiled for the baseline
// before it is inlined, so no wider intrinsic; the write-combining buffers join the four.)
// Whether a loop writing `bytes` of output at y, every stored block at a multiple of `stride`
// bytes from y, stores them so (stream_block): where the output is 8 MiB or more, whose lines
// the caches would mostly give up before it is read, and which otherwise cost a read of each
// line from memory before its write. Channels_last depthwise 3x3 @56, 144 channels, batch 8
// (14 MB out), beside torch in the benchmark's alternating rounds: 0.61-0.92 -> 0.41-0.50 ms
// (torch's own time fell alike, 0.60-0.93 -> 0.41-0.51: it no longer found its input evicted
// by our output); MobileNetV2 channels_last forward and training step, batch 2 and 8: within
// 1 %. Channels_last pooling, batch 8, 2x2: max 64 @224 forward +6-13 % (26 MB out), forward +
// backward +11 % (dX 103 MB), 256 @56 +11 % (dX 26 MB), 512 @28 +5 % (dX 13 MB); but the
// average's forward of 6.4 MB (256 @56) lost 10 % streamed: hence 8 MiB, not less.
// stream_bytes: the Bytes (a multiple of 16) at v stored so at p (16-byte aligned), for vectors of
// any width (grouped.cpp's NCHW rows, gemm.cpp's streamed tiles).
template <int Bytes>
CONVX_ALWAYS_INLINE inline void stream_bytes(void* p, const void* v) {
  for (int q = 0; q < Bytes / 16; ++q) {
    __m128 h;
    __builtin_memcpy(&h, static_cast<const char*>(v) + 16 * q, 16);
    _mm_stream_ps(static_cast<float*>(p) + 4 * q, h);
  }
}
template <typename A>
CONVX_ALWAYS_INLINE inline void stream_block(A* p, typename Block<A>::v r) {
  stream_bytes<64>(p, &r);
}

// A block of A stored into T's: by stream_block where asked and T is A, else store_block.
template <typename T, typename A>
CONVX_ALWAYS_INLINE inline void put_block(T* p, typename Block<A>::v v, bool stream) {
  if constexpr (std::is_same_v<T, A>) {
    if (stream) return stream_block<A>(p, v);
  }
  store_block<A>(p, v);
}

// Results of at least this many bytes are written with streaming stores (stream_stores here,
// layout.h's transposes): above what two cores' L2 keep, where they are on their way to memory.
constexpr int64_t kStreamBytes = int64_t(8) << 20;
inline bool stream_stores(const void* y, int64_t bytes, int64_t stride) {
  return bytes >= kStreamBytes && reinterpret_cast<std::uintptr_t>(y) % 64 == 0 && stride % 64 == 0;
}

// The sum of a block's lanes, by halves (64 -> 32 -> 16 bytes, then the last lanes).
template <typename A>
CONVX_ALWAYS_INLINE inline A lane_sum(typename Block<A>::v v) {
  typedef A half_t __attribute__((vector_size(32)));
  typedef A quarter_t __attribute__((vector_size(16)));
  half_t h0, h1;
  __builtin_memcpy(&h0, &v, 32);
  __builtin_memcpy(&h1, reinterpret_cast<const char*>(&v) + 32, 32);
  const half_t h = h0 + h1;
  quarter_t q0, q1;
  __builtin_memcpy(&q0, &h, 16);
  __builtin_memcpy(&q1, reinterpret_cast<const char*>(&h) + 16, 16);
  const quarter_t q = q0 + q1;
  A s = q[0];
  for (int l = 1; l < int(16 / sizeof(A)); ++l) s += q[l];
  return s;
}

}  // namespace convx::cpu
