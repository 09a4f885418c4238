// Every convx schema, in one place. csrc/ops.cpp defines them as
// torch.ops.convx.* (CPU and CUDA kernels); the emulated CUDA backend
// (csrc/simt/module.cpp) defines the same schemas as torch.ops.convx_simt.*,
// so both run exactly the same host code over their kernels.
//
// Padding is always four explicit numbers [top, bottom, left, right]: the
// Python layer turns int / tuple / 'valid' / 'same' (including TensorFlow-style
// asymmetric 'same' with stride > 1) into them, so the kernels know one form.
#pragma once

#include <torch/library.h>

#include <string>
#include <vector>

namespace convx {

inline const std::vector<const char*>& schemas() {
  static const std::vector<const char*> all = {
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, int[2] dilation, "
          "int groups) -> Tensor",
      // relu?(conv2d + bias + residual) in one pass: the inference epilogue.
      "conv2d_fused(Tensor input, Tensor weight, Tensor? bias, Tensor? residual, int[2] stride, int[4] padding, "
          "int[2] dilation, int groups, bool relu) -> Tensor",
      "conv2d_backward_input(Tensor grad_output, Tensor weight, int[] input_size, int[2] stride, "
          "int[4] padding, int[2] dilation, int groups) -> Tensor",
      // Returns (grad_weight, grad_bias); grad_bias is empty when bias_defined is false.
      "conv2d_backward_weight(Tensor grad_output, Tensor input, int[] weight_size, int[2] stride, "
          "int[4] padding, int[2] dilation, int groups, bool bias_defined) -> (Tensor, Tensor)",

      // Transposed convolution: weight [C_in, C_out / groups, R, S], torch's padding / output_padding.
      "conv_transpose2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
          "int[2] output_padding, int[2] dilation, int groups) -> Tensor",
      "conv_transpose2d_backward_input(Tensor grad_output, Tensor weight, int[] input_size, int[2] stride, "
          "int[2] padding, int[2] output_padding, int[2] dilation, int groups) -> Tensor",
      "conv_transpose2d_backward_weight(Tensor grad_output, Tensor input, int[] weight_size, int[2] stride, "
          "int[2] padding, int[2] output_padding, int[2] dilation, int groups, bool bias_defined) -> (Tensor, Tensor)",

      // Pooling. Indices are flat positions h * W + w within each plane, as torch's.
      "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
          "bool ceil_mode) -> (Tensor, Tensor)",
      "max_pool2d_values(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
          "bool ceil_mode) -> Tensor",
      "max_pool2d_backward(Tensor grad_output, Tensor indices, int[] input_size, int[2] kernel_size, "
          "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor",
      "avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, "
          "bool count_include_pad, int? divisor_override) -> Tensor",
      "avg_pool2d_backward(Tensor grad_output, int[] input_size, int[2] kernel_size, int[2] stride, "
          "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor",
      "adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor",
      "adaptive_avg_pool2d_backward(Tensor grad_output, int[] input_size) -> Tensor",
      "adaptive_max_pool2d(Tensor input, int[2] output_size) -> (Tensor, Tensor)",
      "adaptive_max_pool2d_backward(Tensor grad_output, Tensor indices, int[] input_size) -> Tensor",

      // Batch normalization, with the residual tail fused in (see csrc/common/norm_ops.h).
      // batch_norm_stats updates the running statistics in place when they are given.
      "batch_norm_stats(Tensor input, Tensor(a!)? running_mean, Tensor(b!)? running_var, float momentum) "
          "-> (Tensor mean, Tensor var)",
      "batch_norm(Tensor input, Tensor mean, Tensor var, Tensor? weight, Tensor? bias, Tensor? residual, "
          "float eps, bool training, bool relu) -> Tensor",
      "batch_norm_backward(Tensor grad_output, Tensor input, Tensor mean, Tensor var, Tensor? weight, "
          "Tensor? output, float eps, bool training, bool relu, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)",
      "add_relu(Tensor self, Tensor other) -> Tensor",
      "add_relu_(Tensor(a!) self, Tensor other) -> ()",
      "add_relu_backward(Tensor grad_output, Tensor output) -> Tensor",

      // Diagnostics: one warp runs one tensor-core / cp.async instruction on the
      // given lane registers (csrc/cuda/tensor_core_probe.cu). CUDA and emulated only.
      "tensor_core_probe(str instruction, Tensor input) -> Tensor",
  };
  return all;
}

// The op name of each schema ("conv2d", ...).
inline std::vector<std::string> schema_names() {
  std::vector<std::string> names;
  for (const char* s : schemas()) {
    const std::string t(s);
    names.push_back(t.substr(0, t.find('(')));
  }
  return names;
}

inline void define_schemas(torch::Library& m) {
  for (const char* s : schemas()) m.def(s);
}

}  // namespace convx
