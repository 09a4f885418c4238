// Pooling on CUDA: max, average, adaptive average, adaptive max; forward and
// backward. Window arithmetic: common/pool_params.h (shared with the CPU).
//
// Forward: one thread per output element, in the output's memory order, so
// writes are coalesced; channels_last puts neighbouring threads on
// neighbouring channels, so reads are coalesced too. Inputs are read through
// their strides (any layout, no copy).
//
// Backward: one thread per input element sums the gradients of the outputs
// that read it (a gather). No atomics, so it is deterministic: the adaptive
// and average-pool backwards that torch refuses under
// torch.use_deterministic_algorithms(True) (pytorch issue 50198) just run.
//
// Max pooling over a window that holds only -inf (or only padding-adjacent
// -inf values): convx returns the window's first valid position, as torch's
// CPU and NCHW CUDA kernels do; torch's channels_last CUDA kernel returns
// index 0 there instead. The values agree; only that index differs.
//
// Napkin math: max-pool 3x3/2 at 112x112x64 (N=256, bf16) reads 411 MB and
// writes 103 MB (+ 411 MB of int64 indices when they are kept): memory bound.
#include "../common/cuda_utils.cuh"
#include "../common/pool_ops.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>

namespace convx::cuda {
namespace {

constexpr int kThreads = 256;

struct Decoded {
  int64_t n, c, h, w;
};
// Element t of a [N, C, H, W] tensor stored NCHW or NHWC.
__device__ __forceinline__ Decoded decode(int64_t t, int64_t C, int64_t H, int64_t W, bool nhwc) {
  Decoded d;
  if (nhwc) {
    d.c = t % C;
    t /= C;
    d.w = t % W;
    t /= W;
    d.h = t % H;
    d.n = t / H;
  } else {
    d.w = t % W;
    t /= W;
    d.h = t % H;
    t /= H;
    d.c = t % C;
    d.n = t / C;
  }
  return d;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) pool_forward_kernel(Strided4<const T> x, T* y, int64_t* ind,
                                                                 int64_t total, int64_t C, PoolAxis ah, PoolAxis aw,
                                                                 AvgDivisor div, bool is_max, bool nhwc) {
  using acc_t = at::opmath_type<T>;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const Decoded o = decode(t, C, ah.out, aw.out, nhwc);
    const int64_t h0 = ah.begin(o.h), th = ah.taps(o.h), sh = ah.step();
    const int64_t w0 = aw.begin(o.w), tw = aw.taps(o.w), sw = aw.step();
    const T* xp = x.p + o.n * x.s0 + o.c * x.s1;
    if (is_max) {
      acc_t best = -std::numeric_limits<acc_t>::infinity();
      int64_t bi = -1;
      for (int64_t i = 0; i < th; ++i) {
        const int64_t h = h0 + i * sh;
        if (h < 0 || h >= ah.in) continue;
        for (int64_t j = 0; j < tw; ++j) {
          const int64_t w = w0 + j * sw;
          if (w < 0 || w >= aw.in) continue;
          const acc_t v = acc_t(xp[h * x.s2 + w * x.s3]);
          if (v > best || v != v || bi < 0) {
            best = v;
            bi = h * aw.in + w;
          }
        }
      }
      y[t] = T(best);
      ind[t] = bi;
    } else {
      acc_t sum = 0;
      for (int64_t i = 0; i < th; ++i) {
        const int64_t h = h0 + i * sh;
        if (h < 0 || h >= ah.in) continue;
        for (int64_t j = 0; j < tw; ++j) {
          const int64_t w = w0 + j * sw;
          if (w >= 0 && w < aw.in) sum += acc_t(xp[h * x.s2 + w * x.s3]);
        }
      }
      y[t] = T(sum / acc_t(div(ah, aw, o.h, o.w)));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) pool_backward_kernel(Strided4<const T> gy, Strided4<const int64_t> ind,
                                                                  T* gx, int64_t total, int64_t C, PoolAxis ah,
                                                                  PoolAxis aw, AvgDivisor div, bool is_max,
                                                                  bool nhwc) {
  using acc_t = at::opmath_type<T>;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const Decoded d = decode(t, C, ah.in, aw.in, nhwc);
    int64_t oh_lo, oh_hi, ow_lo, ow_hi;
    ah.touching(d.h, oh_lo, oh_hi);
    aw.touching(d.w, ow_lo, ow_hi);
    const int64_t here = d.h * aw.in + d.w;
    acc_t s = 0;
    for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
      if (!ah.reads(oh, d.h)) continue;
      for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
        if (!aw.reads(ow, d.w)) continue;
        const acc_t g = acc_t(gy(d.n, d.c, oh, ow));
        if (is_max) {
          if (ind(d.n, d.c, oh, ow) == here) s += g;
        } else {
          s += g / acc_t(div(ah, aw, oh, ow));
        }
      }
    }
    gx[t] = T(s);
  }
}

unsigned grid_for(int64_t total) {
  return unsigned(std::min<int64_t>(ceil_div<int64_t>(total, kThreads), int64_t(1) << 20));
}

struct CudaPool {
  // indices false (max pooling's values alone): the indices are made all the same (the
  // caller drops them); only the CPU has a values-only kernel.
  static std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x, const PoolPlan& p, bool is_max,
                                                    bool /*indices*/ = true) {
    TORCH_CHECK(on_device(x), "convx pooling (CUDA): expected a tensor on ", device_name());
    DeviceGuard guard(x.device());
    const auto mf = x.suggest_memory_format();
    const bool nhwc = mf == at::MemoryFormat::ChannelsLast;
    auto y = at::empty(p.out_size, x.options().memory_format(mf));
    at::Tensor ind;
    if (is_max) ind = at::empty(p.out_size, x.options().dtype(at::kLong).memory_format(mf));
    const int64_t total = y.numel();
    if (total == 0) return {y, ind};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool2d_forward_cuda", [&] {
      Strided4<const scalar_t> xs{x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
      launch<pool_forward_kernel<scalar_t>>(grid_for(total), kThreads, 0, current_stream(), xs,
                                            y.data_ptr<scalar_t>(), is_max ? ind.data_ptr<int64_t>() : nullptr, total,
                                            p.out_size[1], p.h, p.w, p.div, is_max, nhwc);
    });
    return {y, ind};
  }

  static at::Tensor backward(const at::Tensor& gy, const at::Tensor& indices, at::IntArrayRef input_size,
                             const PoolPlan& p, bool is_max) {
    TORCH_CHECK(on_device(gy), "convx pooling (CUDA): expected a tensor on ", device_name());
    DeviceGuard guard(gy.device());
    const auto mf = gy.suggest_memory_format();
    const bool nhwc = mf == at::MemoryFormat::ChannelsLast;
    auto gx = at::empty(input_size, gy.options().memory_format(mf));
    const int64_t total = gx.numel();
    if (total == 0) return gx;
    if (gy.numel() == 0) return gx.zero_();
    Strided4<const int64_t> is{nullptr, 0, 0, 0, 0};
    if (is_max) is = {indices.const_data_ptr<int64_t>(), indices.stride(0), indices.stride(1), indices.stride(2),
                      indices.stride(3)};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "pool2d_backward_cuda", [&] {
      Strided4<const scalar_t> gs{gy.const_data_ptr<scalar_t>(), gy.stride(0), gy.stride(1), gy.stride(2),
                                  gy.stride(3)};
      launch<pool_backward_kernel<scalar_t>>(grid_for(total), kThreads, 0, current_stream(), gs, is,
                                             gx.data_ptr<scalar_t>(), total, input_size[1], p.h, p.w, p.div, is_max,
                                             nhwc);
    });
    return gx;
  }
};

}  // namespace

CONVX_DEVICE_LIBRARY_IMPL(m) {
  CONVX_REGISTER_POOL_OPS(m, CudaPool);
}

}  // namespace convx::cuda
