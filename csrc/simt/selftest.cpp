// The emulator's own tests: small kernels, most of them deliberately wrong,
// that tests/test_simt.py runs through convx._simt.selftest(name) and whose
// bugs the runtime must catch (or, for a missing barrier, make visible).
#include "../common/cuda_utils.cuh"
#include "runtime.h"

#include <c10/util/Exception.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace convx::cuda::selftest {
namespace {

// Each thread writes its slot, then reads its neighbour's. Without the
// barrier the neighbour has not run yet: its slot still holds the poison.
__global__ void neighbour(float* out, bool sync) {
  __shared__ float s[64];
  const int t = threadIdx.x;
  s[t] = float(t);
  if (sync) __syncthreads();
  out[blockIdx.x * blockDim.x + t] = s[(t + 1) % blockDim.x];
}

// Only block 0 writes shared memory; the other blocks must not see its values.
__global__ void stale(float* out) {
  __shared__ float s[64];
  if (blockIdx.x == 0) s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

__global__ void divergent_barrier(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 0;
}

__global__ void barrier_after_exit(float* out) {
  if (threadIdx.x == 3) return;
  __syncthreads();
  out[threadIdx.x] = 0;
}

// Lanes 16-31 leave; the rest shuffle with a full mask.
__global__ void partial_mask(float* out) {
  if (threadIdx.x % 32 >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, float(threadIdx.x), 1);
}

// A 48-thread block: warp 1 has 16 lanes, the mask names 32.
__global__ void absent_lanes(float* out) {
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, float(threadIdx.x), 1);
}

// Lane 5 goes to the barrier while the rest of its warp waits for it in a shuffle.
__global__ void deadlock(float* out) {
  float v = 0;
  if (threadIdx.x != 5) v = __shfl_sync(0xffffffffu, 1.0f, 0);
  __syncthreads();
  out[threadIdx.x] = v;
}

// Warp collectives' results, 64 threads: 11 values per thread.
__global__ void collectives(float* out) {
  const int t = threadIdx.x, lane = t % 32;
  float* o = out + t * 11;
  const float v = float(t);
  o[0] = __shfl_xor_sync(0xffffffffu, v, 1);
  o[1] = __shfl_up_sync(0xffffffffu, v, 2);
  o[2] = __shfl_down_sync(0xffffffffu, v, 3);
  o[3] = __shfl_sync(0xffffffffu, v, 7);
  o[4] = __shfl_sync(0xffffffffu, v, 3, 8);
  o[5] = __shfl_down_sync(0xffffffffu, v, 5, 8);
  o[6] = float(__ballot_sync(0xffffffffu, lane % 3 == 0));
  o[7] = float(__any_sync(0xffffffffu, lane == 31));
  o[8] = float(__all_sync(0xffffffffu, lane < 31));
  const double d = __shfl_xor_sync(0xffffffffu, double(t) + 0.25, 16);
  o[9] = float(d);
  __syncwarp();
  o[10] = warp_reduce_sum(v);
}

// Two block reductions back to back (the second must not overwrite the
// first's partial sums while warp 0 still reads them).
__global__ void reduce_twice(float* out) {
  const float a = block_reduce_sum<256>(float(threadIdx.x));
  const float b = block_reduce_sum<256>(float(2 * threadIdx.x + 1));
  if (threadIdx.x == 0) {
    out[2 * blockIdx.x] = a;
    out[2 * blockIdx.x + 1] = b;
  }
}

// One past the end of a shared array: AddressSanitizer's to catch.
__global__ void shared_overrun(float* out) {
  __shared__ float s[32];
  float* p = s;           // through a pointer, so that UBSan's array-bounds check does not see it first
  p[threadIdx.x] = 1.0f;  // launched with 33 threads
  __syncthreads();
  out[threadIdx.x] = s[0];
}

// Dynamic shared memory: reverse a block's values through it.
__global__ void reverse_dynamic(float* out) {
  float* s = dynamic_shared<float>();
  s[threadIdx.x] = float(blockIdx.x * 100 + threadIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

// 49 KiB of static shared memory: nvcc would refuse it.
__global__ void too_much_static_shared(float* out) {
  __shared__ float s[49 * 256];
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[0];
}

__global__ void noop(float* out) {
  if (threadIdx.x == 0 && blockIdx.x == 0) out[0] = 1.0f;
}

__global__ void throws(float*) { TORCH_CHECK(threadIdx.x != 7, "thread 7 says no"); }

struct Case {
  std::function<void(float*)> run;
  size_t out_size;
};

const std::map<std::string, Case>& cases() {
  static const std::map<std::string, Case> all = {
      {"neighbour_synced", {[](float* o) { launch<neighbour>(2, 64, 0, {}, o, true); }, 128}},
      {"neighbour_missing_barrier", {[](float* o) { launch<neighbour>(2, 64, 0, {}, o, false); }, 128}},
      {"stale_shared", {[](float* o) { launch<stale>(4, 64, 0, {}, o); }, 256}},
      {"divergent_barrier", {[](float* o) { launch<divergent_barrier>(1, 64, 0, {}, o); }, 64}},
      {"barrier_after_exit", {[](float* o) { launch<barrier_after_exit>(1, 64, 0, {}, o); }, 64}},
      {"partial_mask", {[](float* o) { launch<partial_mask>(1, 64, 0, {}, o); }, 64}},
      {"absent_lanes", {[](float* o) { launch<absent_lanes>(1, 48, 0, {}, o); }, 48}},
      {"deadlock", {[](float* o) { launch<deadlock>(1, 64, 0, {}, o); }, 64}},
      {"collectives", {[](float* o) { launch<collectives>(1, 64, 0, {}, o); }, 64 * 11}},
      {"reduce_twice", {[](float* o) { launch<reduce_twice>(8, 256, 0, {}, o); }, 16}},
      {"reverse_dynamic", {[](float* o) { launch<reverse_dynamic>(3, 40, 40 * sizeof(float), {}, o); }, 120}},
      {"too_much_static_shared", {[](float* o) { launch<too_much_static_shared>(1, 32, 0, {}, o); }, 32}},
      {"shared_overrun", {[](float* o) { launch<shared_overrun>(1, 33, 0, {}, o); }, 33}},
      {"throws", {[](float* o) { launch<throws>(1, 32, 0, {}, o); }, 32}},
      {"block_1025", {[](float* o) { launch<noop>(1, 1025, 0, {}, o); }, 1}},
      {"block_z_65", {[](float* o) { launch<noop>(1, dim3(1, 1, 65), 0, {}, o); }, 1}},
      {"grid_y_65536", {[](float* o) { launch<noop>(dim3(1, 65536), 32, 0, {}, o); }, 1}},
      {"grid_y_65535", {[](float* o) { launch<noop>(dim3(1, 65535), 1, 0, {}, o); }, 1}},
      {"dynamic_shared_too_big", {[](float* o) { launch<noop>(1, 32, 228 * 1024, {}, o); }, 1}},
  };
  return all;
}

}  // namespace
}  // namespace convx::cuda::selftest

namespace simt {

std::vector<std::string> selftest_names() {
  std::vector<std::string> names;
  for (const auto& [name, c] : convx::cuda::selftest::cases()) names.push_back(name);
  return names;
}

std::vector<float> selftest(const std::string& name) {
  const auto& all = convx::cuda::selftest::cases();
  const auto it = all.find(name);
  TORCH_CHECK(it != all.end(), "convx.simt: no self-test named ", name);
  std::vector<float> out(it->second.out_size, -7.0f);
  it->second.run(out.data());
  return out;
}

}  // namespace simt
