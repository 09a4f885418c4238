// The one TORCH_LIBRARY(convx, m), over the schemas of common/schemas.h.
// Backends register their kernels in their own files
// (cpu/*.cpp: TORCH_LIBRARY_IMPL(convx, CPU, m); cuda/*.cu: ... CUDA ...).
// Python (convx/ops.py) adds the fake (meta) kernels and autograd formulas.
#include "common/schemas.h"
#include "cpu/gemm.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(convx, m) {
  convx::define_schemas(m);
  // Which instruction set the CPU GEMM runs with here ("avx512", "avx2", "base"):
  // the CPU's feature bits, capped by CONVX_CPU_ISA.
  m.def("cpu_isa() -> str", [] { return std::string(convx::cpu::cpu_isa_name()); });
}

// Not differentiable by design: batch_norm's backward accounts for the
// statistics, and in-place add+ReLU is for inference. Autograd passes them
// through so their outputs carry no graph.
TORCH_LIBRARY_IMPL(convx, Autograd, m) {
  m.impl("batch_norm_stats", torch::CppFunction::makeFallthrough());
  m.impl("add_relu_", torch::CppFunction::makeFallthrough());
  m.impl("tensor_core_probe", torch::CppFunction::makeFallthrough());
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
