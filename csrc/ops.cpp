// The one TORCH_LIBRARY(convx, m): every schema lives here, backward ops
// included. Backends register their kernels in their own files
// (cpu/*.cpp: TORCH_LIBRARY_IMPL(convx, CPU, m); cuda/*.cu: ... CUDA ...).
// Python (convx/ops.py) adds the fake (meta) kernels and autograd formulas.
//
// Padding is always four explicit numbers [top, bottom, left, right]: the
// Python layer turns int / tuple / 'valid' / 'same' (including TensorFlow-style
// asymmetric 'same' with stride > 1) into them, so the kernels know one form.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(convx, m) {
  m.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, int[2] dilation, "
      "int groups) -> Tensor");
  m.def(
      "conv2d_backward_input(Tensor grad_output, Tensor weight, int[] input_size, int[2] stride, "
      "int[4] padding, int[2] dilation, int groups) -> Tensor");
  // Returns (grad_weight, grad_bias); grad_bias is empty when bias_defined is false.
  m.def(
      "conv2d_backward_weight(Tensor grad_output, Tensor input, int[] weight_size, int[2] stride, "
      "int[4] padding, int[2] dilation, int groups, bool bias_defined) -> (Tensor, Tensor)");

  // Transposed convolution: weight [C_in, C_out / groups, R, S], torch's padding / output_padding.
  m.def(
      "conv_transpose2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] output_padding, int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv_transpose2d_backward_input(Tensor grad_output, Tensor weight, int[] input_size, int[2] stride, "
      "int[2] padding, int[2] output_padding, int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv_transpose2d_backward_weight(Tensor grad_output, Tensor input, int[] weight_size, int[2] stride, "
      "int[2] padding, int[2] output_padding, int[2] dilation, int groups, bool bias_defined) -> (Tensor, Tensor)");

  // Pooling. Indices are flat positions h * W + w within each plane, as torch's.
  m.def(
      "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
      "bool ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "max_pool2d_backward(Tensor grad_output, Tensor indices, int[] input_size, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) -> Tensor");
  m.def(
      "avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, bool ceil_mode, "
      "bool count_include_pad, int? divisor_override) -> Tensor");
  m.def(
      "avg_pool2d_backward(Tensor grad_output, int[] input_size, int[2] kernel_size, int[2] stride, "
      "int[2] padding, bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, int[] input_size) -> Tensor");
  m.def("adaptive_max_pool2d(Tensor input, int[2] output_size) -> (Tensor, Tensor)");
  m.def("adaptive_max_pool2d_backward(Tensor grad_output, Tensor indices, int[] input_size) -> Tensor");

  // Batch normalization, with the residual tail fused in (see csrc/common/norm_ops.h).
  // batch_norm_stats updates the running statistics in place when they are given.
  m.def(
      "batch_norm_stats(Tensor input, Tensor(a!)? running_mean, Tensor(b!)? running_var, float momentum) "
      "-> (Tensor mean, Tensor var)");
  m.def(
      "batch_norm(Tensor input, Tensor mean, Tensor var, Tensor? weight, Tensor? bias, Tensor? residual, "
      "float eps, bool training, bool relu) -> Tensor");
  m.def(
      "batch_norm_backward(Tensor grad_output, Tensor input, Tensor mean, Tensor var, Tensor? weight, "
      "Tensor? output, float eps, bool training, bool relu, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("add_relu(Tensor self, Tensor other) -> Tensor");
  m.def("add_relu_(Tensor(a!) self, Tensor other) -> ()");
  m.def("add_relu_backward(Tensor grad_output, Tensor output) -> Tensor");
}

// Not differentiable by design: batch_norm's backward accounts for the
// statistics, and in-place add+ReLU is for inference. Autograd passes them
// through so their outputs carry no graph.
TORCH_LIBRARY_IMPL(convx, Autograd, m) {
  m.impl("batch_norm_stats", torch::CppFunction::makeFallthrough());
  m.impl("add_relu_", torch::CppFunction::makeFallthrough());
}

namespace convx {
namespace {

// Under torch.autocast a convx convolution runs in the autocast dtype, exactly
// as aten::conv2d does (it is on autocast's lower-precision list on CPU and CUDA).
template <c10::DeviceType device_type>
at::Tensor conv2d_autocast(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                           int64_t groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(device_type));
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("convx::conv2d", "").typed<decltype(
      conv2d_autocast<device_type>)>();
  const auto dt = at::autocast::get_lower_precision_fp_from_device_type(device_type);
  return op.call(at::autocast::cached_cast(dt, input, device_type), at::autocast::cached_cast(dt, weight, device_type),
                 at::autocast::cached_cast(dt, bias, device_type), stride, padding, dilation, groups);
}

}  // namespace
}  // namespace convx

TORCH_LIBRARY_IMPL(convx, Autocast, m) {
  m.impl("conv2d", &convx::conv2d_autocast<c10::DeviceType::CUDA>);
}
TORCH_LIBRARY_IMPL(convx, AutocastCPU, m) {
  m.impl("conv2d", &convx::conv2d_autocast<c10::DeviceType::CPU>);
}

// `import convx._C` loads this library (and so runs the registrations above);
// the module itself is empty. No pybind11: that keeps the build light.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
