// The tensor-core probe: one warp runs one wrapper of common/tensor_core.cuh on
// register contents the caller chooses and returns what each lane holds after
// it. On a GPU (scripts/probe_tensor_cores.py) this records the hardware's
// answer; on the emulator (tests/test_tensor_core.py) the same kernels show
// the emulator's, so both are checked against one independent statement of
// the fragment layouts, and the emulator against the hardware's recorded
// answers where a GPU has produced them.
//
//   instruction              input (int32)                         output (int32)
//   mma.m16n8k16.f16|bf16    [32, 10]: a0..a3, b0, b1, c0..c3      [32, 4]: d0..d3 (float bits)
//   mma.m16n8k8.tf32         (c as float bits)
//   ldmatrix.x{1,2,4}[.trans]  [32]: the shared-memory row (0..31)   [32, N]: registers
//                            each lane points at; row r holds the
//                            16-bit codes 8r .. 8r + 7
//   cp.async.ca.{4,8,16}     [64 + data]: per lane (word offset     [32, 4]: the lane's 16-byte
//   cp.async.cg.16           into data, src_bytes), then data       destination (0x77 bytes
//   cp.async.nowait          (nowait: reads before the wait)        where nothing was copied)
//   stats.ldmatrix_conflicts  (ignored)                            [1]: extra ldmatrix wavefronts
//                            (bank conflicts) since the last call; -1 on a GPU (not counted)
#include "../common/cuda_utils.cuh"
#include "../common/tensor_core.cuh"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <string>

namespace convx::cuda {
namespace {

template <int Kind>
__global__ void probe_mma_kernel(const int32_t* in, int32_t* out) {
  const int l = threadIdx.x;
  uint32_t a[4], b[2];
  float c[4], d[4];
  for (int i = 0; i < 4; ++i) a[i] = uint32_t(in[l * 10 + i]);
  for (int i = 0; i < 2; ++i) b[i] = uint32_t(in[l * 10 + 4 + i]);
  for (int i = 0; i < 4; ++i) c[i] = __int_as_float(in[l * 10 + 6 + i]);
  if (Kind == 0) tc::mma_f16(d, a, b, c);
  if (Kind == 1) tc::mma_bf16(d, a, b, c);
  if (Kind == 2) tc::mma_tf32(d, a, b, c);
  for (int i = 0; i < 4; ++i) out[l * 4 + i] = __float_as_int(d[i]);
}

template <int N, bool Trans>
__global__ void probe_ldmatrix_kernel(const int32_t* rows, int32_t* out) {
  __shared__ __align__(16) uint16_t tile[32 * 8];
  const int l = threadIdx.x;
  for (int i = 0; i < 8; ++i) tile[l * 8 + i] = uint16_t(l * 8 + i);
  __syncwarp();
  uint32_t r[N];
  tc::ldmatrix<N, Trans>(r, &tile[rows[l] * 8]);
  for (int j = 0; j < N; ++j) out[l * N + j] = int32_t(r[j]);
}

// Mode 4, 8, 16: cp.async.ca of that size; 17: cp.async.cg (16 bytes); 0: ca 16, read before the wait.
template <int Mode>
__global__ void probe_cp_async_kernel(const int32_t* in, int32_t* out) {
  __shared__ __align__(16) int32_t dst[32 * 4];
  const int l = threadIdx.x;
  for (int i = 0; i < 4; ++i) dst[l * 4 + i] = 0x77777777;
  __syncwarp();
  const int32_t* src = in + 64 + in[2 * l];
  const int src_bytes = in[2 * l + 1];
  if (Mode == 17) tc::cp_async_cg(&dst[l * 4], src, src_bytes);
  else tc::cp_async_ca<(Mode == 0 || Mode == 17 ? 16 : Mode)>(&dst[l * 4], src, src_bytes);
  tc::cp_async_commit();
  int32_t early[4];
  for (int i = 0; i < 4; ++i) early[i] = dst[l * 4 + i];
  tc::cp_async_wait<0>();
  __syncwarp();
  for (int i = 0; i < 4; ++i) out[l * 4 + i] = Mode == 0 ? early[i] : dst[l * 4 + i];
}

at::Tensor tensor_core_probe(c10::string_view instruction, const at::Tensor& input) {
  TORCH_CHECK(on_device(input) && input.scalar_type() == at::kInt && input.is_contiguous(),
              "tensor_core_probe: expected a contiguous int32 tensor on ", device_name());
  DeviceGuard guard(input.device());
  const std::string ins(instruction);
  const int32_t* in = input.const_data_ptr<int32_t>();
  auto make = [&](int64_t cols) { return at::empty({32, cols}, input.options()); };
  auto run = [&](auto kernel, const at::Tensor& out) {
    launch<decltype(kernel)::value>(1, 32, 0, current_stream(), in, out.data_ptr<int32_t>());
    return out;
  };
  auto need = [&](int64_t n) {
    TORCH_CHECK(input.numel() >= n, "tensor_core_probe: ", ins, " needs at least ", n, " input elements");
  };
  using std::integral_constant;
  if (ins == "stats.ldmatrix_conflicts") return at::full({1}, tc::take_ldmatrix_conflicts(), input.options());
  if (ins.rfind("mma.", 0) == 0) {
    need(320);
    if (ins == "mma.m16n8k16.f16") return run(integral_constant<decltype(&probe_mma_kernel<0>), &probe_mma_kernel<0>>{}, make(4));
    if (ins == "mma.m16n8k16.bf16") return run(integral_constant<decltype(&probe_mma_kernel<1>), &probe_mma_kernel<1>>{}, make(4));
    if (ins == "mma.m16n8k8.tf32") return run(integral_constant<decltype(&probe_mma_kernel<2>), &probe_mma_kernel<2>>{}, make(4));
  } else if (ins.rfind("ldmatrix.", 0) == 0) {
    need(32);
#define CONVX_LDM(name, n, t)                                                                                   \
  if (ins == name) return run(integral_constant<decltype(&probe_ldmatrix_kernel<n, t>), &probe_ldmatrix_kernel<n, t>>{}, make(n));
    CONVX_LDM("ldmatrix.x1", 1, false)
    CONVX_LDM("ldmatrix.x2", 2, false)
    CONVX_LDM("ldmatrix.x4", 4, false)
    CONVX_LDM("ldmatrix.x1.trans", 1, true)
    CONVX_LDM("ldmatrix.x2.trans", 2, true)
    CONVX_LDM("ldmatrix.x4.trans", 4, true)
#undef CONVX_LDM
  } else if (ins.rfind("cp.async.", 0) == 0) {
    need(64);
#define CONVX_CPA(name, mode) \
  if (ins == name) return run(integral_constant<decltype(&probe_cp_async_kernel<mode>), &probe_cp_async_kernel<mode>>{}, make(4));
    CONVX_CPA("cp.async.ca.4", 4)
    CONVX_CPA("cp.async.ca.8", 8)
    CONVX_CPA("cp.async.ca.16", 16)
    CONVX_CPA("cp.async.cg.16", 17)
    CONVX_CPA("cp.async.nowait", 0)
#undef CONVX_CPA
  }
  TORCH_CHECK(false, "tensor_core_probe: unknown instruction '", ins, "'");
}

}  // namespace

CONVX_DEVICE_LIBRARY_IMPL(m) { m.impl("tensor_core_probe", &tensor_core_probe); }

}  // namespace convx::cuda
