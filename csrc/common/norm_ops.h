// Batch normalization and the fused residual tail, written once over a
// backend (CPU or CUDA). Ops (schemas in csrc/ops.cpp):
//
//   batch_norm_stats(x, running_mean!, running_var!, momentum) -> (mean, var)
//       batch mean and biased variance per channel (float32 for half inputs);
//       when running stats are given they are updated in place with the
//       unbiased variance. Not differentiable: batch_norm's backward accounts
//       for the statistics' dependence on x.
//   batch_norm(x, mean, var, weight?, bias?, residual?, eps, training, relu) -> y
//       y = act((x - mean) / sqrt(var + eps) * weight + bias + residual)
//       in one pass; with training=True, mean/var are taken to be x's batch
//       statistics (for the backward).
//   batch_norm_backward(dy, x, mean, var, weight?, y?, eps, training, relu, mask[4])
//       -> (dx, dweight, dbias, dresidual)
//   add_relu(a, b) -> relu(a + b); add_relu_(a!, b); add_relu_backward(dy, y) -> dy * (y > 0)
//
// Backends supply:
//   B::stats(x, mean, var, rm*, rv*, momentum, count)
//       fill mean/var ([C], float or double); update rm/rv in place when given
//   B::apply(x, mean, var, w, b, r, eps, relu) -> y
//   B::backward(dy, x, mean, var, w, y, eps, training, relu, mask) -> 4 tensors
//   B::add_relu(a, b, out), B::relu_backward(dy, y) -> dx
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <array>
#include <optional>
#include <tuple>

namespace convx {

inline void check_bn_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, name, ": expected 4D input [N, C, H, W], but got input of size ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), name, ": expected a floating point input, but got ",
              x.scalar_type());
}

inline const at::Tensor* opt(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? &*t : nullptr;
}

inline void check_per_channel(const at::Tensor* t, const at::Tensor& x, const char* name) {
  if (!t) return;
  const int64_t C = x.size(1);
  TORCH_CHECK(t->numel() == C, name, " should contain ", C, " elements not ", t->numel());
  TORCH_CHECK(t->device() == x.device(), name, " is on ", t->device(), " but input is on ", x.device());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), name, " must be a floating point tensor");
}

inline void check_same_shape(const at::Tensor& a, const at::Tensor& b, const char* aname, const char* bname) {
  TORCH_CHECK(a.sizes() == b.sizes(), aname, " and ", bname, " must have the same size, but got ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(a.device() == b.device(), aname, " is on ", a.device(), " but ", bname, " is on ", b.device());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), aname, " and ", bname, " must have the same dtype, but got ",
              a.scalar_type(), " and ", b.scalar_type());
}

// [N, C, H, W] seen as N*HW positions of C channels, in NCHW or channels_last.
struct NormGeom {
  int64_t N, C, HW;
  bool nhwc;
  at::MemoryFormat format() const { return nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous; }
};

inline NormGeom norm_geom(const at::Tensor& x) {
  return {x.size(0), x.size(1), x.size(2) * x.size(3), x.suggest_memory_format() == at::MemoryFormat::ChannelsLast};
}

// The statistics' dtype: float32 for half types, else the input's.
inline at::ScalarType stat_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

template <class B>
struct NormOps {
  static std::tuple<at::Tensor, at::Tensor> batch_norm_stats(const at::Tensor& x,
                                                             const std::optional<at::Tensor>& running_mean,
                                                             const std::optional<at::Tensor>& running_var,
                                                             double momentum) {
    check_bn_input(x, "batch_norm_stats");
    const at::Tensor *rm = opt(running_mean), *rv = opt(running_var);
    check_per_channel(rm, x, "running_mean");
    check_per_channel(rv, x, "running_var");
    TORCH_CHECK((rm == nullptr) == (rv == nullptr), "running_mean and running_var must both be given or both None");
    const int64_t count = x.size(0) * x.size(2) * x.size(3);
    TORCH_CHECK(count > 1 || x.numel() == 0, "Expected more than 1 value per channel when training, got input size ",
                x.sizes());
    auto opts = x.options().dtype(stat_type(x.scalar_type()));
    auto mean = at::empty({x.size(1)}, opts), var = at::empty({x.size(1)}, opts);
    if (x.numel() == 0) {
      // torch leaves the running statistics alone on an empty batch.
      mean.fill_(0);
      var.fill_(0);
      return {mean, var};
    }
    if (rm) {
      TORCH_CHECK(rm->is_contiguous() && rv->is_contiguous() && rm->scalar_type() == rv->scalar_type(),
                  "running_mean and running_var must be contiguous and of one dtype");
    }
    B::stats(x, mean, var, rm, rv, momentum, count);
    return {mean, var};
  }

  static at::Tensor batch_norm(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
                               const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& residual, double eps, bool training, bool relu) {
    check_bn_input(x, "batch_norm");
    check_per_channel(&mean, x, "running_mean");
    check_per_channel(&var, x, "running_var");
    check_per_channel(opt(weight), x, "weight");
    check_per_channel(opt(bias), x, "bias");
    if (opt(residual)) check_same_shape(x, *residual, "input", "residual");
    TORCH_CHECK(!training || eps > 0, "batch_norm eps must be positive during training, but got ", eps);
    return B::apply(x, mean, var, opt(weight), opt(bias), opt(residual), eps, relu);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_backward(
      const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& var,
      const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& output, double eps, bool training,
      bool relu, std::array<bool, 4> mask) {
    check_bn_input(x, "batch_norm_backward");
    check_same_shape(x, grad_out, "input", "grad_output");
    check_per_channel(&mean, x, "mean");
    check_per_channel(&var, x, "var");
    check_per_channel(opt(weight), x, "weight");
    TORCH_CHECK(!relu || opt(output), "batch_norm_backward: relu=True needs the forward output");
    if (opt(output)) check_same_shape(x, *output, "input", "output");
    return B::backward(grad_out, x, mean, var, opt(weight), opt(output), eps, training, relu, mask);
  }

  static at::Tensor add_relu(const at::Tensor& a, const at::Tensor& b) {
    check_same_shape(a, b, "self", "other");
    TORCH_CHECK(at::isFloatingType(a.scalar_type()), "add_relu: expected floating point tensors, but got ",
                a.scalar_type());
    auto out = at::empty_like(a, a.suggest_memory_format());
    if (out.numel()) B::add_relu(a, b, out);
    return out;
  }

  // In place into any self torch can write in place: the kernels write a
  // dense buffer in a standard memory format, so any other layout (a
  // permuted or strided view) is computed into a temporary and copied back.
  // Like torch's in-place ops, it rejects a self with internal overlap and an
  // other that partially overlaps self (full overlap, add_relu_(x, x), is fine).
  static void add_relu_(at::Tensor a, const at::Tensor& b) {
    check_same_shape(a, b, "self", "other");
    TORCH_CHECK(at::isFloatingType(a.scalar_type()), "add_relu_: expected floating point tensors, but got ",
                a.scalar_type());
    at::assert_no_internal_overlap(a);
    at::assert_no_partial_overlap(a, b);
    if (!a.numel()) return;
    const auto mf = a.suggest_memory_format();
    if (a.is_contiguous(mf)) {
      B::add_relu(a, b, a);
    } else {
      auto out = at::empty_like(a, mf);
      B::add_relu(a, b, out);
      a.copy_(out);
    }
  }

  static at::Tensor add_relu_backward(const at::Tensor& grad_out, const at::Tensor& output) {
    check_same_shape(grad_out, output, "grad_output", "output");
    return B::relu_backward(grad_out, output);
  }
};

#define CONVX_REGISTER_NORM_OPS(m, Backend)                                     \
  m.impl("batch_norm_stats", &::convx::NormOps<Backend>::batch_norm_stats);     \
  m.impl("batch_norm", &::convx::NormOps<Backend>::batch_norm);                 \
  m.impl("batch_norm_backward", &::convx::NormOps<Backend>::batch_norm_backward); \
  m.impl("add_relu", &::convx::NormOps<Backend>::add_relu);                     \
  m.impl("add_relu_", &::convx::NormOps<Backend>::add_relu_);                   \
  m.impl("add_relu_backward", &::convx::NormOps<Backend>::add_relu_backward)

}  // namespace convx
