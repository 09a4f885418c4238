// What differs between the two builds of csrc/cuda/*.cu, and nothing else:
//
//   nvcc (CONVX_SIMT undefined)          g++ -DCONVX_SIMT (csrc/simt/*.cpp)
//   the CUDA runtime and c10::cuda       the CPU emulator, csrc/simt/simt.h
//   kernels registered as convx::*       registered as convx_simt::* on CPU
//   on CUDA tensors                      tensors, taking and returning CPU tensors
//
// Kernel files use only this header's names for the host side: `launch`
// (the one launch helper: `<<<>>>` plus the launch check under nvcc),
// `current_stream()`, `DeviceGuard`, `on_device(t)`, `num_sms()`, `max_grid_yz()`,
// `compute_capability_major()` and
// `CONVX_DEVICE_LIBRARY_IMPL(m)`; kernels take dynamic shared memory through
// `dynamic_shared<T>()`. Kernel bodies have no #ifdef.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <utility>

#if defined(CONVX_SIMT)

#include "../simt/simt.h"

namespace convx::cuda {

using Stream = simt::Stream;
inline Stream current_stream() { return {}; }

struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};

// The emulated device's memory is the host's: its tensors are CPU tensors.
inline bool on_device(const at::Tensor& t) { return t.is_cpu(); }
inline const char* device_name() { return "the emulated CUDA device (CPU tensors)"; }

// The emulated device reports an H100's multiprocessor count, so grid and
// split decisions are the GPU's.
inline int num_sms() { return simt::device_props().multiprocessors; }
// gridDim.y / gridDim.z limit (tests may lower it to reach multi-launch paths).
inline int max_grid_yz() { return simt::device_props().max_grid_yz; }
// The emulated device is an sm_90 (tensor-core kernels need 8 or more).
inline int compute_capability_major() { return 9; }

template <class... P, class... A>
void launch_as(void (*kernel)(P...), const char* name, dim3 grid, dim3 block, size_t smem, A&&... args) {
  struct Ctx {
    void (*k)(P...);
    std::tuple<std::decay_t<P>...> params;
  } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  // Each thread gets its own copy of the parameters, as on the device.
  simt::launch({name, grid, block, smem, reinterpret_cast<const void*>(kernel)},
               [](void* c) {
                 auto* x = static_cast<Ctx*>(c);
                 std::apply(x->k, x->params);
               },
               &ctx);
}

// The block's dynamic shared memory (the launch's `smem` bytes).
template <typename T>
__device__ T* dynamic_shared() {
  return static_cast<T*>(simt::dynamic_shared_memory());
}

template <auto Kernel, class... A>
void launch(dim3 grid, dim3 block, size_t smem, Stream, A&&... args) {
  launch_as(Kernel, simt::kernel_name<Kernel>(), grid, block, smem, std::forward<A>(args)...);
}

}  // namespace convx::cuda

#define CONVX_DEVICE_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(convx_simt, CPU, m)

#else  // nvcc

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

namespace convx::cuda {

using Stream = cudaStream_t;
inline Stream current_stream() { return c10::cuda::getCurrentCUDAStream(); }
using DeviceGuard = c10::cuda::CUDAGuard;
inline bool on_device(const at::Tensor& t) { return t.is_cuda(); }
inline const char* device_name() { return "a CUDA device"; }

// Multiprocessor count of the current device (cached per device).
inline int num_sms() {
  static int cache[64] = {0};
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 64 && cache[dev]) return cache[dev];
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
  if (dev < 64) cache[dev] = v;
  return v;
}

constexpr int max_grid_yz() { return 65535; }

// Compute capability major version of the current device (cached per device).
inline int compute_capability_major() {
  static int cache[64] = {0};
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 64 && cache[dev]) return cache[dev];
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, dev));
  if (dev < 64) cache[dev] = v;
  return v;
}

// The block's dynamic shared memory (the launch's `smem` bytes).
template <typename T>
__device__ T* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char convx_dynamic_shared[];
  return reinterpret_cast<T*>(convx_dynamic_shared);
}

// A GPU whose architecture the build left out: say which, and how to fix it.
[[noreturn]] inline void no_kernel_image(cudaError_t err) {
  int dev = 0;
  cudaGetDevice(&dev);
  cudaDeviceProp p{};
  cudaGetDeviceProperties(&p, dev);
  TORCH_CHECK(false, "convx has no CUDA kernels for this GPU's architecture, sm_", p.major, p.minor, " (", p.name,
              "; ", cudaGetErrorString(err), "): rebuild convx with TORCH_CUDA_ARCH_LIST=\"", p.major, ".", p.minor,
              "\" (or unset, on this machine, to build for the visible GPU). `python -m convx info` lists the "
              "architectures this build has.");
}

template <auto Kernel, class... A>
void launch(dim3 grid, dim3 block, size_t smem, Stream stream, A&&... args) {
  Kernel<<<grid, block, smem, stream>>>(std::forward<A>(args)...);
  const cudaError_t err = cudaGetLastError();
  if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction) no_kernel_image(err);
  C10_CUDA_CHECK(err);
}

}  // namespace convx::cuda

#define CONVX_DEVICE_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(convx, CUDA, m)

#endif
