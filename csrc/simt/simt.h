// The CUDA C++ dialect our kernels use, for g++: the second build of
// csrc/cuda/*.cu runs them on a CPU emulator of the CUDA execution model
// (csrc/simt/runtime.cpp). Included only through csrc/common/device.cuh.
//
// Model (see the README's "How CUDA code is verified without a GPU"):
// - A launch runs its blocks one at a time, in a seeded random order.
// - A block's threads are fibers on one OS thread, switched only at
//   __syncthreads, __syncwarp and warp collectives. After each barrier the
//   warps are put in a seeded random order (lanes of a warp together, in a
//   random order) and the first runnable thread in that order runs until it
//   blocks: a warp runs ahead of the others up to its next barrier, and a
//   thread that never blocks runs to its end before the next one starts.
// - __shared__ arrays are function-local statics (one block runs at a time, so
//   one copy is enough, and AddressSanitizer sees an overrun as a
//   global-buffer-overflow); the runtime fills them with 0xFF bytes (a NaN
//   for every float type) at the start of each block.
// - Barrier divergence, collectives whose mask names lanes that are absent or
//   have exited, and deadlocks are errors naming the kernel, block and thread.
#pragma once

#include <math.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

namespace simt {

// Device limits the emulated device reports and enforces: an H100 SXM's.
struct DeviceProps {
  int multiprocessors = 132;
  int max_threads_per_block = 1024;
  int max_block_dim_z = 64;
  int64_t max_grid_x = 2147483647;
  int max_grid_yz = 65535;
  size_t max_dynamic_shared = 227 * 1024;  // the opt-in limit, static + dynamic
  size_t max_static_shared = 48 * 1024;
  int warp_size = 32;
};
const DeviceProps& device_props();
// Tests may lower a limit to reach code paths that real sizes reach only with
// huge tensors (e.g. max_grid_yz for the multi-launch group split).
DeviceProps& mutable_device_props();

struct Stream {};

// One launch: runs every block before it returns; throws c10::Error on a bad
// configuration or a detected bug (divergent barrier, partial-mask
// collective, deadlock, an exception in a thread).
struct LaunchSpec {
  const char* kernel;
  dim3 grid, block;
  size_t dynamic_shared;
  const void* kernel_address;  // finds the kernel's static __shared__ arrays
};
void launch(const LaunchSpec& spec, void (*body)(void*), void* ctx);

// The executing thread's coordinates (valid inside a kernel).
struct ThreadState {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
extern thread_local ThreadState* current_thread;

void syncthreads(const char* file, int line);

enum class Collective : int { SyncWarp, Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All, Op };
// Every lane of `mask` must arrive at the same collective; returns what this
// lane receives (shuffles: the source lane's 8 bytes; votes: the ballot).
uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int arg, int width, const char* file,
                         int line);

// A warp-wide operation on every lane's registers (the tensor-core wrappers
// of csrc/common/tensor_core.cuh: mma, ldmatrix): each lane of `mask` passes a
// pointer to its own operands; when the last lane arrives, `complete` runs once
// with the 32 pointers (nullptr for lanes outside `mask`) while the others
// wait, as with any collective. Lanes must meet at the same op and call site.
using WarpOp = void (*)(void* const* lanes);
void warp_op(const char* name, WarpOp complete, unsigned mask, void* mine, const char* file, int line);

void* dynamic_shared_memory();

// Asynchronous copies (cp.async) of the executing thread: issued copies wait
// here, their destinations poisoned, until a wait_group covers their group.
struct AsyncCopy {
  void* dst;
  const void* src;
  int bytes, src_bytes;
  long group;  // -1: not committed yet
};
void async_copy(void* dst, const void* src, int bytes, int src_bytes);
void async_commit();
void async_wait(int newest_pending);

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type wider than 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// The kernel's name as the compiler spells it, without convx's namespaces:
// "igemm_kernel<float, ForwardProblem<float, float> >".
const char* intern_kernel_name(const char* pretty_function);
template <auto Kernel>
const char* kernel_name() {
  static const char* name = intern_kernel_name(__PRETTY_FUNCTION__);
  return name;
}

}  // namespace simt

#define threadIdx (::simt::current_thread->thread_idx)
#define blockIdx (::simt::current_thread->block_idx)
#define blockDim (::simt::current_thread->block_dim)
#define gridDim (::simt::current_thread->grid_dim)
#define warpSize 32

#define __syncthreads() ::simt::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::simt::syncwarp_impl(__FILE__, __LINE__ __VA_OPT__(,) __VA_ARGS__)
#define __shfl_sync(mask, v, src, ...) ::simt::shfl_impl(::simt::Collective::Shfl, mask, v, src, __FILE__, __LINE__ __VA_OPT__(,) __VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) ::simt::shfl_impl(::simt::Collective::ShflUp, mask, v, d, __FILE__, __LINE__ __VA_OPT__(,) __VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) ::simt::shfl_impl(::simt::Collective::ShflDown, mask, v, d, __FILE__, __LINE__ __VA_OPT__(,) __VA_ARGS__)
#define __shfl_xor_sync(mask, v, m, ...) ::simt::shfl_impl(::simt::Collective::ShflXor, mask, v, m, __FILE__, __LINE__ __VA_OPT__(,) __VA_ARGS__)
#define __ballot_sync(mask, p) unsigned(::simt::warp_collective(::simt::Collective::Ballot, mask, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, p) int(::simt::warp_collective(::simt::Collective::Any, mask, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __all_sync(mask, p) int(::simt::warp_collective(::simt::Collective::All, mask, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))

namespace simt {
inline void syncwarp_impl(const char* file, int line, unsigned mask = 0xffffffffu) {
  warp_collective(Collective::SyncWarp, mask, 0, 0, 32, file, line);
}
template <typename T>
inline T shfl_impl(Collective kind, unsigned mask, T v, int arg, const char* file, int line, int width = 32) {
  return from_bits<T>(warp_collective(kind, mask, to_bits(v), arg, width, file, line));
}
}  // namespace simt

// ---------------------------------------------------------------- device functions

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// Atomics: one block's fibers run on one OS thread and switch only at
// barriers and collectives, and launches are serialised, so a plain
// read-modify-write is atomic here.
template <typename T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
  const T old = *p;
  *p = old < v ? v : old;
  return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
  const T old = *p;
  *p = v < old ? v : old;
  return old;
}
template <typename T>
inline T atomicCAS(T* p, T compare, T v) {
  const T old = *p;
  if (old == compare) *p = v;
  return old;
}
template <typename T>
inline T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}

// CUDA's global min / max overloads.
#define SIMT_MINMAX(T)                                  \
  inline T min(T a, T b) { return b < a ? b : a; }      \
  inline T max(T a, T b) { return a < b ? b : a; }
SIMT_MINMAX(int)
SIMT_MINMAX(unsigned)
SIMT_MINMAX(long)
SIMT_MINMAX(unsigned long)
SIMT_MINMAX(long long)
SIMT_MINMAX(unsigned long long)
#undef SIMT_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline int __float_as_int(float f) {
  int x;
  std::memcpy(&x, &f, 4);
  return x;
}
inline unsigned __float_as_uint(float f) {
  unsigned x;
  std::memcpy(&x, &f, 4);
  return x;
}
inline float __uint_as_float(unsigned x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
