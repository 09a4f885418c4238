// Conv2d on CUDA: forward, data gradient, weight gradient (+ bias gradient).
//
// Algorithm: tiled implicit GEMM, no im2col buffer. One kernel template,
// `igemm_kernel`, computes C[m, n] = sum_k A(m, k) B(k, n) in 64 x 64 tiles of
// C with a 16-deep reduction step staged through shared memory; each of the
// 256 threads owns a 4 x 4 register tile and accumulates in float (double for
// float64). What A, B and C are is a "problem" struct:
//
//   problem   M              N              K (reduction)   A(m,k)         B(k,n)
//   forward   N*Ho*Wo        K/groups       C/g * R * S     input gather   weight
//   dgrad     N*H*W          C/groups       K/g * R * S     dY gather      weight
//   wgrad     K/groups       C/g * R * S    N*Ho*Wo         dY             input gather
//
// with the group in blockIdx.z (launches take at most 65,535 groups each, so
// a depthwise convolution with more channels than that runs in several). Every tensor is read and written through its
// four strides, so NCHW, channels_last and non-contiguous views run in place,
// and the output is allocated in torch's memory format. For channels_last the
// reduction index is ordered (r, s, c) so neighbouring threads read
// neighbouring channels; for NCHW it is (c, r, s).
//
// Weight gradient: its output is small and its reduction long, so it splits
// the reduction over blockIdx.z (split-K) into a float workspace and a second
// kernel sums the splits in a fixed order: deterministic, no atomics.
//
// Versions and choice: this is the portable, correct-for-every-case path
// (every dtype, stride, dilation, padding, group count, layout). The
// tensor-core kernels (conv2d_tc.cu: mma.sync for float16 / bfloat16, and
// float32 as TF32 where torch.backends.cudnn.allow_tf32) go first where
// they take the case; this kernel is the fallback (float64, exact float32,
// depthwise and few-channel groups, GPUs before sm_80).
//
// Napkin math for the tile: per 16-deep step a block loads (64 + 64) * 16
// elements and does 64 * 64 * 16 FMAs, i.e. 32 FMAs per loaded element; the
// gathers are L1/L2 hits for all but the first touch. Expect a few TFLOP/s in
// float32 on an H100 (CUDA cores, no tensor cores), far from its ~50 TFLOP/s
// FP32 peak: this is the fallback, not the fast path.
#include "../common/conv_ops.h"
#include "../common/cuda_utils.cuh"
#include "conv2d_problems.cuh"
#include "conv2d_tc.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace convx::cuda {
namespace {

constexpr int BM = 64, BN = 64, BK = 16, kThreads = 256;

template <typename acc_t, typename Problem>
__global__ void __launch_bounds__(kThreads) igemm_kernel(Problem prob, int group0, int splits, int64_t k_per_split) {
  __shared__ acc_t As[BK][BM + 4];
  __shared__ acc_t Bs[BK][BN + 4];
  const int tid = threadIdx.x;
  const int64_t m0 = int64_t(blockIdx.x) * BM, n0 = int64_t(blockIdx.y) * BN;
  const int grp = group0 + int(blockIdx.z) / splits, split = int(blockIdx.z) % splits;
  const int64_t k_begin = split * k_per_split;
  const int64_t k_end = min(prob.K, k_begin + k_per_split);

  // Load mapping: "k fast" puts 16 neighbouring threads on 16 neighbouring k
  // (coalesced when k is the contiguous axis), otherwise 64 threads on m.
  int a_m[4], a_k[4], b_n[4], b_k[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if (prob.a_kfast) { a_k[i] = tid % BK; a_m[i] = tid / BK + 16 * i; }
    else { a_m[i] = tid % BM; a_k[i] = tid / BM + 4 * i; }
    if (prob.b_kfast) { b_k[i] = tid % BK; b_n[i] = tid / BK + 16 * i; }
    else { b_n[i] = tid % BN; b_k[i] = tid / BN + 4 * i; }
  }
  typename Problem::Row rows[4];
  typename Problem::Col cols[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    rows[i] = prob.a_row(grp, m0 + a_m[i]);
    cols[i] = prob.b_col(grp, n0 + b_n[i]);
  }

  const int tx = tid % 16, ty = tid / 16;
  acc_t acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = acc_t(0);

  for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t ka = k0 + a_k[i], kb = k0 + b_k[i];
      As[a_k[i]][a_m[i]] = ka < k_end ? prob.a(rows[i], ka) : acc_t(0);
      Bs[b_k[i]][b_n[i]] = kb < k_end ? prob.b(cols[i], kb) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      acc_t av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= prob.M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n < prob.N) prob.store(grp, split, m, n, acc[i][j]);
    }
  }
}

// db[k] = sum over n, h, w of dY[n, k, h, w]: one block per channel.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) bias_grad_kernel(Strided4<const T> dy, int64_t N, int Ho, int Wo, T* db) {
  const int64_t k = blockIdx.x;
  const int64_t P = int64_t(Ho) * Wo, total = N * P;
  acc_t v = 0;
  for (int64_t i = threadIdx.x; i < total; i += kThreads) {
    const int64_t n = i / P;
    const int q = int(i % P);
    v += acc_t(dy(n, k, q / Wo, q % Wo));
  }
  v = block_reduce_sum<kThreads>(v);
  if (threadIdx.x == 0) db[k] = T(v);
}

// gridDim.z = (groups in this launch) x splits; more groups than fit in
// gridDim.z (65,535) run in several launches.
template <typename acc_t, typename Problem>
void launch_igemm(const Problem& prob, int groups, int splits, int64_t k_per_split) {
  const int64_t gx = ceil_div<int64_t>(prob.M, BM), gy = ceil_div<int64_t>(prob.N, BN);
  TORCH_CHECK(gx <= INT32_MAX && gy <= max_grid_yz() && splits <= max_grid_yz(),
              "convx.conv2d (CUDA): problem too large for the grid (", gx, ", ", gy, ", ", splits, ")");
  const int per_launch = max_grid_yz() / splits;
  for (int g0 = 0; g0 < groups; g0 += per_launch) {
    const int ng = std::min(per_launch, groups - g0);
    const dim3 grid{unsigned(gx), unsigned(gy), unsigned(ng * splits)};
    launch<igemm_kernel<acc_t, Problem>>(grid, kThreads, 0, current_stream(), prob, g0, splits, k_per_split);
  }
}

bool is_cl(at::MemoryFormat mf) { return mf == at::MemoryFormat::ChannelsLast; }

void check_cuda(const at::Tensor& t) {
  TORCH_CHECK(on_device(t), "convx.conv2d (CUDA): expected a tensor on ", device_name(), ", but got one on ",
              t.device());
}

// The kernels index bias[c] densely: a strided view is copied first.
at::Tensor dense_bias(const at::Tensor* bias) { return bias ? bias->contiguous() : at::Tensor(); }

template <typename T>
const T* opt_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// torch's rule on CUDA: channels_last when either operand is, except for
// float64, which cuDNN computes (and torch returns) contiguous.
at::MemoryFormat cuda_conv_memory_format(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == at::kDouble ? at::MemoryFormat::Contiguous : conv_memory_format(a, b);
}

}  // namespace

// The four primitives of common/conv_ops.h; checks have run.
struct CudaConv {
  // torch's CUDA layout rules apply (common/conv_ops.h).
  static constexpr bool cuda_rules = true;

  static at::Tensor forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                            const Conv2dShape& sh, const Conv2dParams& p) {
    return forward_fused(input, weight, bias, nullptr, false, sh, p);
  }

  // The residual and the ReLU are applied in the kernels' store (ForwardProblem::store).
  static at::Tensor forward_fused(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                                  const at::Tensor* residual, bool relu, const Conv2dShape& sh,
                                  const Conv2dParams& p) {
    check_cuda(input);
    DeviceGuard guard(input.device());
    const auto mf = cuda_conv_memory_format(input, weight);
    const at::Tensor b = dense_bias(bias);
    auto y = at::empty({sh.N, sh.K, sh.Ho, sh.Wo}, input.options().memory_format(mf));
    if (y.numel() == 0) return y;
    const bool cl = is_cl(mf);
    const at::Tensor res = residual ? *residual : at::Tensor();
    if (tc_forward(input, weight, b, res, relu, y, sh, p, cl)) return y;
    const auto g = make_geometry(sh, p);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "conv2d_forward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto prob = forward_problem<scalar_t, acc_t>(input, weight, y, opt_ptr<scalar_t>(b), res, relu, g, sh, cl);
      launch_igemm<acc_t>(prob, g.groups, 1, prob.K);
    });
    return y;
  }

  static at::Tensor data_grad(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor* bias,
                              const Conv2dShape& sh, const Conv2dParams& p) {
    check_cuda(grad_output);
    DeviceGuard guard(grad_output.device());
    const auto mf = cuda_conv_memory_format(grad_output, weight);
    const at::Tensor b = dense_bias(bias);
    auto dx = at::empty({sh.N, sh.C, sh.H, sh.W}, grad_output.options().memory_format(mf));
    if (dx.numel() == 0) return dx;
    const bool cl = is_cl(mf);
    if (tc_data_grad(grad_output, weight, b, dx, sh, p, cl)) return dx;
    const auto g = make_geometry(sh, p);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                    "conv2d_backward_input_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto prob = dgrad_problem<scalar_t, acc_t>(grad_output, weight, dx, opt_ptr<scalar_t>(b), g, sh, cl);
      launch_igemm<acc_t>(prob, g.groups, 1, prob.K);
    });
    return dx;
  }

  static at::Tensor weight_grad(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef weight_size,
                                const Conv2dShape& sh, const Conv2dParams& p) {
    check_cuda(grad_output);
    DeviceGuard guard(grad_output.device());
    const auto mf = cuda_conv_memory_format(grad_output, input);
    auto dw = at::empty(weight_size, grad_output.options().memory_format(mf));
    if (grad_output.numel() == 0) return dw.zero_();
    const bool cl = is_cl(mf);
    if (tc_weight_grad(grad_output, input, dw, sh, p, cl)) return dw;
    const auto g = make_geometry(sh, p);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                    "conv2d_backward_weight_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      auto prob = wgrad_problem<scalar_t, acc_t>(grad_output, input, dw, g, sh, cl);
      int64_t kps = 0;
      const int64_t splits = wgrad_splits(prob.M, prob.N, prob.K, g.groups, BM, BN, BK, &kps);
      at::Tensor ws;
      prob.splits = int(splits);
      if (splits > 1) {
        ws = at::empty({splits, sh.K * sh.Cg * sh.R * sh.S},
                       grad_output.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        prob.ws = ws.data_ptr<acc_t>();
      }
      launch_igemm<acc_t>(prob, g.groups, int(splits), kps);
      if (splits > 1) {
        const int64_t total = sh.K * sh.Cg * sh.R * sh.S;
        const int blocks = int(std::min<int64_t>(ceil_div<int64_t>(total, kThreads), 4096));
        launch<sum_splits_kernel<scalar_t, acc_t>>(blocks, kThreads, 0, current_stream(), prob.ws, int(splits), sh.K,
                                                   g.Cg, g.R, g.S, strided<scalar_t>(dw));
      }
    });
    return dw;
  }

  static at::Tensor channel_sum(const at::Tensor& t) {
    check_cuda(t);
    DeviceGuard guard(t.device());
    auto out = at::empty({t.size(1)}, t.options());
    if (t.numel() == 0) return out.zero_();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "channel_sum_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      launch<bias_grad_kernel<scalar_t, acc_t>>(unsigned(t.size(1)), kThreads, 0, current_stream(),
                                                strided<const scalar_t>(t), t.size(0), int(t.size(2)),
                                                int(t.size(3)), out.data_ptr<scalar_t>());
    });
    return out;
  }
};

CONVX_DEVICE_LIBRARY_IMPL(m) {
  CONVX_REGISTER_CONV_OPS(m, CudaConv);
}

}  // namespace convx::cuda
