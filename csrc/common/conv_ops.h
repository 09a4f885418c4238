// The convolution-shaped ops of csrc/ops.cpp (conv2d and conv_transpose2d,
// forward and both backwards), written once over a backend that supplies four
// primitives, all in the conv2d frame (input x [N,C,H,W], weight
// [K,C/g,R,S], output y [N,K,Ho,Wo]):
//
//   Backend::forward(x, w, bias*, shape, params)          y = conv(x, w) + bias
//   Backend::forward_fused(x, w, bias*, res*, relu, ...)  relu?(conv(x, w) + bias + res), for inference
//   Backend::data_grad(dy, w, bias*, shape, params)       dx (+ bias per C channel)
//   Backend::weight_grad(dy, x, weight_size, shape, params)  dw
//   Backend::channel_sum(t)                               sum over n, h, w
//
// A transposed convolution is the data gradient of the convolution whose
// weight it shares (torch's definition), so it needs no kernel of its own:
//   conv_transpose2d(x, w)          = data_grad(x, w)      (+ bias)
//   its input gradient              = forward(dy, w)
//   its weight gradient             = weight_grad(x, dy)   (roles swapped)
// output_padding becomes a negative bottom/right padding of that convolution,
// which only enters the output-size arithmetic; kernels index with the
// top/left padding alone.
//
// Every argument check happens here, before a kernel runs.
#pragma once

#include "conv_params.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <tuple>

namespace convx {

inline Conv2dParams make_conv_transpose2d_params(c10::IntArrayRef stride, c10::IntArrayRef padding,
                                                 c10::IntArrayRef output_padding, c10::IntArrayRef dilation,
                                                 int64_t groups) {
  TORCH_CHECK(padding.size() == 2, "expected padding to be a list of 2 values, but got padding=", padding);
  TORCH_CHECK(output_padding.size() == 2,
              "expected output_padding to be a list of 2 values, but got output_padding=", output_padding);
  auto p = make_conv2d_params(stride, {padding[0], padding[0], padding[1], padding[1]}, dilation, groups);
  for (auto v : output_padding) TORCH_CHECK(v >= 0, "negative output_padding is not supported");
  TORCH_CHECK((output_padding[0] < p.stride_h || output_padding[0] < p.dil_h) &&
                  (output_padding[1] < p.stride_w || output_padding[1] < p.dil_w),
              "output padding must be smaller than either stride or dilation, but got output_padding_height: ",
              output_padding[0], " output_padding_width: ", output_padding[1], " stride_height: ", p.stride_h,
              " stride_width: ", p.stride_w, " dilation_height: ", p.dil_h, " dilation_width: ", p.dil_w);
  p.pad_b -= output_padding[0];
  p.pad_r -= output_padding[1];
  return p;
}

// Output extent of a transposed convolution, checked.
inline std::vector<int64_t> conv_transpose2d_output_size(c10::IntArrayRef in, c10::IntArrayRef wt,
                                                         const Conv2dParams& p) {
  TORCH_CHECK(in.size() == 4, "convx.conv_transpose2d: expected 4D (batched) input, but got input of size: ", in);
  TORCH_CHECK(wt.size() == 4, "convx.conv_transpose2d: expected 4D weight [C_in, C_out / groups, R, S], but got ",
              "weight of size: ", wt);
  check_not_empty_spatially(in);
  TORCH_CHECK(wt[0] >= p.groups, "Given groups=", p.groups, ", expected weight to be at least ", p.groups,
              " at dimension 0, but got weight of size [", wt, "] instead");
  TORCH_CHECK(wt[0] % p.groups == 0, "Given groups=", p.groups, ", expected weight to be divisible by ", p.groups,
              " at dimension 0, but got weight of size [", wt, "] instead");
  TORCH_CHECK(wt[0] == in[1], "Given transposed=1, weight of size ", wt, ", expected input", in, " to have ", wt[0],
              " channels, but got ", in[1], " channels instead");
  // Conv frame: pad_t + pad_b = 2 * padding - output_padding.
  const int64_t ho = (in[2] - 1) * p.stride_h - (p.pad_t + p.pad_b) + p.dil_h * (wt[2] - 1) + 1;
  const int64_t wo = (in[3] - 1) * p.stride_w - (p.pad_l + p.pad_r) + p.dil_w * (wt[3] - 1) + 1;
  // An output extent must be positive (torch's float64 / CUDA rule; its float32 oneDNN path returns an empty
  // result for 0), except for an empty batch, whose output images torch lets be empty.
  const bool empty = in[0] == 0 || in[1] == 0;
  TORCH_CHECK(empty ? (ho >= 0 && wo >= 0) : (ho > 0 && wo > 0), "Given input size per channel: (", in[2], " x ",
              in[3], "). Calculated output size per channel: (", ho, " x ", wo, "). Output size is too small");
  return {in[0], wt[1] * p.groups, ho, wo};
}

template <class B>
struct ConvOps {
  static at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           int64_t groups) {
    const auto p = make_conv2d_params(stride, padding, dilation, groups);
    check_same_device_and_dtype(input, weight, "weight");
    check_floating(input, "input");
    check_bias(bias, input, weight);
    const auto sh = conv2d_shape(input.sizes(), weight.sizes(), p);
    if (sh.C == 0) {  // no input channels: torch returns an empty result of 0 channels (not K of bias)
      return at::empty({sh.N, 0, sh.Ho, sh.Wo}, input.options().memory_format(conv_memory_format(input, weight)));
    }
    return B::forward(input, weight, bias.has_value() && bias->defined() ? &*bias : nullptr, sh, p);
  }

  // The inference epilogue in the convolution's own pass: relu(conv(x, w) + bias + residual),
  // what convx.convert(fuse=True) makes of conv -> (folded batch norm) -> (+ identity) -> relu.
  static at::Tensor conv2d_fused(const at::Tensor& input, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups, bool relu) {
    const auto p = make_conv2d_params(stride, padding, dilation, groups);
    check_same_device_and_dtype(input, weight, "weight");
    check_floating(input, "input");
    check_bias(bias, input, weight);
    const auto sh = conv2d_shape(input.sizes(), weight.sizes(), p);
    const bool has_res = residual.has_value() && residual->defined();
    if (has_res) {
      check_same_device_and_dtype(input, *residual, "residual");
      const std::vector<int64_t> out{sh.N, sh.C == 0 ? 0 : sh.K, sh.Ho, sh.Wo};
      TORCH_CHECK(residual->sizes() == c10::IntArrayRef(out), "convx.conv2d_fused: expected residual of size ",
                  c10::IntArrayRef(out), " (the convolution's output), but got ", residual->sizes());
    }
    if (sh.C == 0) {
      return at::empty({sh.N, 0, sh.Ho, sh.Wo}, input.options().memory_format(conv_memory_format(input, weight)));
    }
    return B::forward_fused(input, weight, bias.has_value() && bias->defined() ? &*bias : nullptr,
                            has_res ? &*residual : nullptr, relu, sh, p);
  }

  static at::Tensor conv2d_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                          at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                          at::IntArrayRef dilation, int64_t groups) {
    const auto p = make_conv2d_params(stride, padding, dilation, groups);
    check_same_device_and_dtype(grad_output, weight, "weight");
    check_floating(grad_output, "grad_output");
    const auto sh = conv2d_shape(input_size, weight.sizes(), p);
    check_grad_output(grad_output, sh);
    return B::data_grad(grad_output, weight, nullptr, sh, p);
  }

  static std::tuple<at::Tensor, at::Tensor> conv2d_backward_weight(
      const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef weight_size, at::IntArrayRef stride,
      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, bool bias_defined) {
    const auto p = make_conv2d_params(stride, padding, dilation, groups);
    check_same_device_and_dtype(grad_output, input, "input");
    check_floating(grad_output, "grad_output");
    const auto sh = conv2d_shape(input.sizes(), weight_size, p);
    check_grad_output(grad_output, sh);
    auto gw = B::weight_grad(grad_output, input, weight_size, sh, p);
    auto gb = bias_defined ? B::channel_sum(grad_output) : at::empty({0}, grad_output.options());
    return {gw, gb};
  }

  static at::Tensor conv_transpose2d(const at::Tensor& input, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef output_padding,
                                     at::IntArrayRef dilation, int64_t groups) {
    const auto p = make_conv_transpose2d_params(stride, padding, output_padding, dilation, groups);
    check_same_device_and_dtype(input, weight, "weight");
    check_floating(input, "input");
    const auto out = conv_transpose2d_output_size(input.sizes(), weight.sizes(), p);
    if (bias.has_value() && bias->defined()) {
      TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out[1], "Given transposed=1, weight of size ",
                  weight.sizes(), ", expected bias to be 1-dimensional with ", out[1],
                  " elements, but got bias of size ", bias->sizes(), " instead");
      TORCH_CHECK(bias->scalar_type() == input.scalar_type(), "Input type (", cpp_type_name(input.scalar_type()),
                  ") and bias type (", cpp_type_name(bias->scalar_type()), ") should be the same");
      TORCH_CHECK(bias->device() == input.device(), "Expected bias to be on the same device as input (",
                  input.device(), "), but got bias on ", bias->device());
    }
    // On CUDA torch leaves an output padding that is not below the stride to its
    // native kernel (cuDNN takes none), which returns a contiguous result whatever
    // the operands' layout: so do we (the result made contiguous, where it is not).
    const bool native = B::cuda_rules && (output_padding[0] >= p.stride_h || output_padding[1] >= p.stride_w);
    if (input.numel() == 0 || out[2] == 0 || out[3] == 0) {  // an empty result (an empty batch, or images)
      return at::empty(out, input.options().memory_format(native ? c10::MemoryFormat::Contiguous
                                                                 : conv_memory_format(input, weight)));
    }
    const auto sh = conv2d_shape(out, weight.sizes(), p);
    const auto y = B::data_grad(input, weight, bias.has_value() && bias->defined() ? &*bias : nullptr, sh, p);
    return native ? y.contiguous() : y;
  }

  static at::Tensor conv_transpose2d_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                                    at::IntArrayRef input_size, at::IntArrayRef stride,
                                                    at::IntArrayRef padding, at::IntArrayRef output_padding,
                                                    at::IntArrayRef dilation, int64_t groups) {
    const auto p = make_conv_transpose2d_params(stride, padding, output_padding, dilation, groups);
    check_same_device_and_dtype(grad_output, weight, "weight");
    check_floating(grad_output, "grad_output");
    const auto out = conv_transpose2d_output_size(input_size, weight.sizes(), p);
    TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(out), "convx.conv_transpose2d backward: expected ",
                "grad_output of size ", c10::IntArrayRef(out), ", but got ", grad_output.sizes());
    const auto sh = conv2d_shape(out, weight.sizes(), p);
    return B::forward(grad_output, weight, nullptr, sh, p);
  }

  static std::tuple<at::Tensor, at::Tensor> conv_transpose2d_backward_weight(
      const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef weight_size, at::IntArrayRef stride,
      at::IntArrayRef padding, at::IntArrayRef output_padding, at::IntArrayRef dilation, int64_t groups,
      bool bias_defined) {
    const auto p = make_conv_transpose2d_params(stride, padding, output_padding, dilation, groups);
    check_same_device_and_dtype(grad_output, input, "input");
    check_floating(grad_output, "grad_output");
    const auto out = conv_transpose2d_output_size(input.sizes(), weight_size, p);
    TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(out), "convx.conv_transpose2d backward: expected ",
                "grad_output of size ", c10::IntArrayRef(out), ", but got ", grad_output.sizes());
    const auto sh = conv2d_shape(out, weight_size, p);
    auto gw = B::weight_grad(input, grad_output, weight_size, sh, p);
    auto gb = bias_defined ? B::channel_sum(grad_output) : at::empty({0}, grad_output.options());
    return {gw, gb};
  }
};

#define CONVX_REGISTER_CONV_OPS(m, Backend)                                                          \
  m.impl("conv2d", &::convx::ConvOps<Backend>::conv2d);                                              \
  m.impl("conv2d_fused", &::convx::ConvOps<Backend>::conv2d_fused);                                  \
  m.impl("conv2d_backward_input", &::convx::ConvOps<Backend>::conv2d_backward_input);                \
  m.impl("conv2d_backward_weight", &::convx::ConvOps<Backend>::conv2d_backward_weight);              \
  m.impl("conv_transpose2d", &::convx::ConvOps<Backend>::conv_transpose2d);                          \
  m.impl("conv_transpose2d_backward_input", &::convx::ConvOps<Backend>::conv_transpose2d_backward_input); \
  m.impl("conv_transpose2d_backward_weight", &::convx::ConvOps<Backend>::conv_transpose2d_backward_weight)

}  // namespace convx
