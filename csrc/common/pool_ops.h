// The pooling ops of csrc/ops.cpp, written once over a backend (CPU or CUDA)
// that supplies two kernels:
//   Backend::forward(x, plan, is_max, indices = true)     -> (y, indices or undefined)
//   Backend::backward(gy, indices, input_size, plan, is_max) -> grad_input
// Every argument check happens here, before either runs.
#pragma once

#include "pool_params.h"

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

namespace convx {

struct PoolPlan {
  PoolAxis h, w;
  AvgDivisor div{true, 0};
  std::vector<int64_t> out_size;  // [N, C, Ho, Wo]
};

inline PoolPlan plan_pool(c10::IntArrayRef in, c10::IntArrayRef kernel, c10::IntArrayRef stride,
                          c10::IntArrayRef padding, c10::IntArrayRef dilation, bool ceil_mode, const char* name) {
  const auto a = pool2d_args(kernel, stride, padding, dilation);
  const auto [ho, wo] = check_pool2d(in, a, ceil_mode, name);
  PoolPlan p{pool_axis(in[2], ho, a.kh, a.sh, a.ph, a.dh), pool_axis(in[3], wo, a.kw, a.sw, a.pw, a.dw)};
  p.out_size = {in[0], in[1], ho, wo};
  return p;
}

inline PoolPlan plan_adaptive(c10::IntArrayRef in, c10::IntArrayRef out, const char* name) {
  check_adaptive(in, out, name);
  PoolPlan p{adaptive_axis(in[2], out[0]), adaptive_axis(in[3], out[1])};
  p.out_size = {in[0], in[1], out[0], out[1]};
  return p;
}

inline void set_avg_divisor(PoolPlan& p, bool count_include_pad, std::optional<int64_t> divisor_override) {
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, "divisor must be not zero");
  p.div = AvgDivisor{count_include_pad, divisor_override.value_or(0)};
}

inline void check_pool_grad(const at::Tensor& gy, const PoolPlan& p, const at::Tensor* indices) {
  TORCH_CHECK(gy.sizes() == c10::IntArrayRef(p.out_size), "convx pooling backward: expected grad_output of size ",
              c10::IntArrayRef(p.out_size), ", but got ", gy.sizes());
  TORCH_CHECK(at::isFloatingType(gy.scalar_type()), "convx pooling: expected a floating point grad_output");
  if (indices) {
    TORCH_CHECK(indices->sizes() == gy.sizes() && indices->scalar_type() == at::kLong,
                "convx pooling backward: expected int64 indices of size ", gy.sizes(), ", but got ",
                indices->scalar_type(), " ", indices->sizes());
    TORCH_CHECK(indices->device() == gy.device(), "convx pooling backward: indices on ", indices->device(),
                " but grad_output on ", gy.device());
  }
}

inline void check_pool_input(const at::Tensor& x) {
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "convx pooling: expected a floating point input, but got ",
              x.scalar_type());
}

template <class Backend>
struct PoolOps {
  static std::tuple<at::Tensor, at::Tensor> max_pool2d(const at::Tensor& x, at::IntArrayRef kernel,
                                                       at::IntArrayRef stride, at::IntArrayRef padding,
                                                       at::IntArrayRef dilation, bool ceil_mode) {
    check_pool_input(x);
    const auto plan = plan_pool(x.sizes(), kernel, stride, padding, dilation, ceil_mode, "max_pool2d");
    return Backend::forward(x, plan, true);
  }
  // The values alone (torch's max_pool2d without return_indices): no int64 index tensor made
  // where the backend can skip it. Its autograd kernel (csrc/autograd.cpp) goes through
  // max_pool2d when a gradient is recorded.
  static at::Tensor max_pool2d_values(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
    check_pool_input(x);
    const auto plan = plan_pool(x.sizes(), kernel, stride, padding, dilation, ceil_mode, "max_pool2d");
    return std::get<0>(Backend::forward(x, plan, true, false));
  }
  static at::Tensor max_pool2d_backward(const at::Tensor& gy, const at::Tensor& indices, at::IntArrayRef input_size,
                                        at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, bool ceil_mode) {
    const auto plan = plan_pool(input_size, kernel, stride, padding, dilation, ceil_mode, "max_pool2d");
    check_pool_grad(gy, plan, &indices);
    return Backend::backward(gy, indices, input_size, plan, true);
  }
  static at::Tensor avg_pool2d(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride,
                               at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                               std::optional<int64_t> divisor_override) {
    check_pool_input(x);
    auto plan = plan_pool(x.sizes(), kernel, stride, padding, {1, 1}, ceil_mode, "avg_pool2d");
    set_avg_divisor(plan, count_include_pad, divisor_override);
    return std::get<0>(Backend::forward(x, plan, false));
  }
  static at::Tensor avg_pool2d_backward(const at::Tensor& gy, at::IntArrayRef input_size, at::IntArrayRef kernel,
                                        at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode,
                                        bool count_include_pad, std::optional<int64_t> divisor_override) {
    auto plan = plan_pool(input_size, kernel, stride, padding, {1, 1}, ceil_mode, "avg_pool2d");
    set_avg_divisor(plan, count_include_pad, divisor_override);
    check_pool_grad(gy, plan, nullptr);
    return Backend::backward(gy, at::Tensor(), input_size, plan, false);
  }
  static at::Tensor adaptive_avg_pool2d(const at::Tensor& x, at::IntArrayRef output_size) {
    check_pool_input(x);
    auto plan = plan_adaptive(x.sizes(), output_size, "adaptive_avg_pool2d");
    return std::get<0>(Backend::forward(x, plan, false));
  }
  static at::Tensor adaptive_avg_pool2d_backward(const at::Tensor& gy, at::IntArrayRef input_size) {
    TORCH_CHECK(gy.dim() == 4, "adaptive_avg_pool2d_backward: expected 4D grad_output");
    auto plan = plan_adaptive(input_size, {gy.size(2), gy.size(3)}, "adaptive_avg_pool2d");
    check_pool_grad(gy, plan, nullptr);
    return Backend::backward(gy, at::Tensor(), input_size, plan, false);
  }
  static std::tuple<at::Tensor, at::Tensor> adaptive_max_pool2d(const at::Tensor& x, at::IntArrayRef output_size) {
    check_pool_input(x);
    auto plan = plan_adaptive(x.sizes(), output_size, "adaptive_max_pool2d");
    return Backend::forward(x, plan, true);
  }
  static at::Tensor adaptive_max_pool2d_backward(const at::Tensor& gy, const at::Tensor& indices,
                                                 at::IntArrayRef input_size) {
    TORCH_CHECK(gy.dim() == 4, "adaptive_max_pool2d_backward: expected 4D grad_output");
    auto plan = plan_adaptive(input_size, {gy.size(2), gy.size(3)}, "adaptive_max_pool2d");
    check_pool_grad(gy, plan, &indices);
    return Backend::backward(gy, indices, input_size, plan, true);
  }
};

#define CONVX_REGISTER_POOL_OPS(m, Backend)                                              \
  m.impl("max_pool2d", &::convx::PoolOps<Backend>::max_pool2d);                          \
  m.impl("max_pool2d_values", &::convx::PoolOps<Backend>::max_pool2d_values);            \
  m.impl("max_pool2d_backward", &::convx::PoolOps<Backend>::max_pool2d_backward);        \
  m.impl("avg_pool2d", &::convx::PoolOps<Backend>::avg_pool2d);                          \
  m.impl("avg_pool2d_backward", &::convx::PoolOps<Backend>::avg_pool2d_backward);        \
  m.impl("adaptive_avg_pool2d", &::convx::PoolOps<Backend>::adaptive_avg_pool2d);        \
  m.impl("adaptive_avg_pool2d_backward", &::convx::PoolOps<Backend>::adaptive_avg_pool2d_backward); \
  m.impl("adaptive_max_pool2d", &::convx::PoolOps<Backend>::adaptive_max_pool2d);        \
  m.impl("adaptive_max_pool2d_backward", &::convx::PoolOps<Backend>::adaptive_max_pool2d_backward)

}  // namespace convx
