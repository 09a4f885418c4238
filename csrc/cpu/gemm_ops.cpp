// Diagnostics of the CPU GEMM, as ops for the tests and the benchmarks:
//   torch.ops.convx.cpu_gemm(a, b)            a @ b through convx's packed GEMM (2-D, float32/float64)
//   torch.ops.convx.cpu_winograd(enabled=None) the Winograd switch (convx.backends.cpu.winograd)
//   torch.ops.convx.cpu_winograd_phases(mode=None) the 4x4 stride-2 phases' switch (convx.backends.cpu.winograd_phases)
//   torch.ops.convx.cpu_to_format(t, channels_last) t in NCHW or channels_last through layout.h's copy
//   torch.ops.convx.cpu_fma_peak(iterations, threads=1)  the float32 FMA rate in GFLOP/s of `threads`
//                                            cores at once, measured by a loop of independent FMAs in the
//                                            widest vectors cpu_isa() allows
#include "gemm.h"
#include "layout.h"
#include "winograd.h"

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <vector>

namespace convx::cpu {
namespace {

at::Tensor cpu_gemm(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0), "cpu_gemm: expected a (M, K) and b (K, N), got ",
              a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && (a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble),
              "cpu_gemm: expected two float32 or two float64 tensors");
  auto c = at::empty({a.size(0), b.size(1)}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "cpu_gemm", [&] {
    gemm<scalar_t>(a.size(0), b.size(1), a.size(1), a.const_data_ptr<scalar_t>(), a.stride(0), a.stride(1),
                   b.const_data_ptr<scalar_t>(), b.stride(0), b.stride(1), c.data_ptr<scalar_t>(), c.stride(0), 1,
                   false, true);
  });
  return c;
}

at::Tensor cpu_to_format(const at::Tensor& t, bool channels_last) {
  const auto mf = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return t.is_contiguous(mf) ? t.clone(mf) : to_format(t, mf);  // never t itself (an op's result)
}

// acc[i] = acc[i] * x + y, NA independent chains of VB-byte vectors (enough to
// cover the FMA latency on both pipes), 2 * NA * (VB / 4) flops a step.
template <int VB, int NA, typename F = float>  // F: a dependent type, so GCC applies vector_size(VB)
__attribute__((always_inline)) inline double fma_loop(int64_t iterations) {
  typedef F V __attribute__((vector_size(VB)));
  V acc[NA];
  V x, y;
  for (int j = 0; j < VB / 4; ++j) x[j] = 0.999999f, y[j] = 1e-7f;
  for (int i = 0; i < NA; ++i) acc[i] = y * float(i + 1);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t n = 0; n < iterations; ++n) {
#pragma GCC unroll 32
    for (int i = 0; i < NA; ++i) acc[i] = acc[i] * x + y;  // NA chains the compiler cannot merge (no fast-math)
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float sink = 0;
  for (int i = 0; i < NA; ++i) sink += acc[i][0];
  asm volatile("" ::"r"(sink));
  return 2.0 * NA * (VB / 4) * double(iterations) / s / 1e9;
}
__attribute__((target("avx512f,fma"))) double peak_avx512(int64_t it) { return fma_loop<64, 24>(it); }
__attribute__((target("avx2,fma"))) double peak_avx2(int64_t it) { return fma_loop<32, 12>(it); }
double peak_base(int64_t it) { return fma_loop<16, 12>(it); }

double fma_peak_one(int64_t iterations) {
  switch (cpu_isa()) {
    case Isa::Avx512: return peak_avx512(iterations);
    case Isa::Avx2: return peak_avx2(iterations);
    default: return peak_base(iterations);
  }
}

// threads > 1: that many threads run the loop at once and their rates are summed, the ceiling
// of a product split between them (both cores of a 2-core Zen 5 busy: 1-3 % under twice one).
double cpu_fma_peak(int64_t iterations, int64_t threads) {
  TORCH_CHECK(iterations > 0, "cpu_fma_peak: expected iterations > 0, got ", iterations);
  TORCH_CHECK(threads >= 1 && threads <= at::get_num_threads(), "cpu_fma_peak: expected threads in [1, ",
              at::get_num_threads(), "] (torch.get_num_threads()), got ", threads);
  if (threads == 1) return fma_peak_one(iterations);
  // The threads' flops over the wall time of all of them: loops that did not overlap count as
  // one core's rate, not as the sum.
  std::vector<double> gflop(threads, 0.0);
  const auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const auto s0 = std::chrono::steady_clock::now();
      const double rate = fma_peak_one(iterations);
      gflop[t] = rate * std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
    }
  });
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double sum = 0;
  for (double g : gflop) sum += g;
  return sum / wall;
}

// The Winograd switch: sets it when `enabled` is given; returns the setting in force.
bool cpu_winograd(std::optional<bool> enabled) {
  if (enabled.has_value()) winograd::set_enabled(*enabled);
  return winograd::enabled();
}

// The switch for Winograd's 4x4 stride-2 phases: sets it when `mode` is given (-1 the machine's
// choice, 0 off, 1 on); returns the setting in force.
int64_t cpu_winograd_phases(std::optional<int64_t> mode) {
  if (mode.has_value()) winograd::set_phases(int(std::clamp<int64_t>(*mode, -1, 1)));
  return winograd::phases();
}

}  // namespace
}  // namespace convx::cpu

TORCH_LIBRARY_FRAGMENT(convx, m) {
  m.def("cpu_gemm(Tensor a, Tensor b) -> Tensor");
  m.def("cpu_to_format(Tensor t, bool channels_last) -> Tensor");
  m.def("cpu_fma_peak(int iterations, int threads=1) -> float", &convx::cpu::cpu_fma_peak);
  m.def("cpu_winograd(bool? enabled=None) -> bool", &convx::cpu::cpu_winograd);
  m.def("cpu_winograd_phases(int? mode=None) -> int", &convx::cpu::cpu_winograd_phases);
}
TORCH_LIBRARY_IMPL(convx, CPU, m) { 
  m.impl("cpu_gemm", &convx::cpu::cpu_gemm);
  m.impl("cpu_to_format", &convx::cpu::cpu_to_format);
}
