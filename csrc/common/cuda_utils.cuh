// Small CUDA helpers shared by the convx kernels.
#pragma once

#include "device.cuh"

#include <cstdint>

namespace convx::cuda {

template <typename T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

template <typename acc_t>
__device__ acc_t warp_reduce_sum(acc_t v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a block of `kThreads` threads; the result is valid in thread 0.
// Fixed reduction tree: the same inputs give the same bits every run.
template <int kThreads, typename acc_t>
__device__ acc_t block_reduce_sum(acc_t v) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block size");
  __shared__ acc_t partial[kThreads / 32];
  v = warp_reduce_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? partial[threadIdx.x] : acc_t(0);
  if (warp == 0) v = warp_reduce_sum(v);
  // A second call must not overwrite `partial` while warp 0 still reads it.
  __syncthreads();
  return v;
}

// A 4D tensor seen through its strides, so every memory format (and
// non-contiguous views) is read in place.
template <typename T>
struct Strided4 {
  T* p;
  int64_t s0, s1, s2, s3;
  __device__ T& operator()(int64_t a, int64_t b, int64_t c, int64_t d) const {
    return p[a * s0 + b * s1 + c * s2 + d * s3];
  }
};

}  // namespace convx::cuda
