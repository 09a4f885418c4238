// A vector of VB bytes of floats (GCC vector types) for the Winograd task bodies
// (winograd.cpp, winograd_line.cpp): always inlined into functions compiled for
// AVX-512, AVX2 + FMA or the baseline, so no vector crosses a call boundary; and
// the channel padding and index arithmetic both files share.
#pragma once

#include <cstdint>
#include <cstring>

// (GCC's notes on the ABI of vectors passed by value: none crosses a call boundary)
#pragma GCC diagnostic ignored "-Wpsabi"

namespace convx::cpu {

constexpr int64_t kCAlign = 16;  // channels padded to the widest vector (16 floats)

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
// a / b rounded towards minus infinity (b > 0)
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

template <int VB>
struct Vec {
  static constexpr int L = VB / 4;
  typedef float V __attribute__((vector_size(VB)));
  static __attribute__((always_inline)) inline V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  // n < L floats, the rest 0
  static __attribute__((always_inline)) inline V load_part(const float* p, int64_t n) {
    V v{};
    std::memcpy(&v, p, n * sizeof(float));
    return v;
  }
  static __attribute__((always_inline)) inline void store(float* p, const V& v) { std::memcpy(p, &v, sizeof(V)); }
  static __attribute__((always_inline)) inline V splat(float x) { return V{} + x; }
};

}  // namespace convx::cpu
