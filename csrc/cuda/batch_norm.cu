// Batch normalization and the fused residual tail on CUDA (ops and
// semantics: common/norm_ops.h; CPU twin: cpu/batch_norm.cpp).
//
// Statistics: Welford per thread, merged across the block and then across
// splits with Chan's formula, each merge in a fixed tree order: one read of x,
// numerically sound (no E[x^2] - E[x]^2), deterministic. Statistics are
// float32 for half types.
//   NCHW: grid (C, splits over images); the channel's planes are contiguous.
//   NHWC: grid (C/32, splits over pixels), block 32 x 8: 32 neighbouring
//         channels per warp, so every load is coalesced.
// A one-thread-per-channel kernel merges the splits, writes mean / var and
// updates the running statistics (unbiased variance, momentum).
//
// Forward: y = act(x * scale[c] + shift[c] (+ residual)), one pass.
// Backward: a reduction over (dy, y, x) in the same grid shapes giving
// sum(dz) and sum(dz * (x - mean)) per channel (and writing dz as the
// residual's gradient when asked), then one elementwise pass for dx.
//
// Bytes per element (bf16, training, BN + add + ReLU): forward reads x twice
// and the residual once and writes y: 8 B; backward reads dy, y, x and
// writes dresidual, then reads dresidual and x and writes dx: 12 B. torch's
// eager bn -> add -> relu moves about 2x that (each op reads and writes the
// whole tensor, and the add / relu backwards materialise their gradients).
#include "../common/cuda_utils.cuh"
#include "../common/norm_ops.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

namespace convx::cuda {
namespace {

constexpr int kThreads = 256;

using Geom = NormGeom;
inline Geom geom(const at::Tensor& x) { return norm_geom(x); }
inline at::MemoryFormat fmt(const Geom& g) { return g.format(); }

// ---------------------------------------------------------------- reductions

// The count is an integer: a float count stops being exact past 2^24.
template <typename acc_t>
struct Welford {
  int64_t n;
  acc_t mean, m2;
  __device__ void add(acc_t x) {
    n += 1;
    const acc_t d = x - mean;
    mean += d / acc_t(n);
    m2 += d * (x - mean);
  }
  __device__ void merge(const Welford& o) {
    if (o.n == 0) return;
    if (n == 0) {
      *this = o;
      return;
    }
    const int64_t tot = n + o.n;
    const acc_t d = o.mean - mean, wo = acc_t(double(o.n) / double(tot));
    mean += d * wo;
    m2 += o.m2 + d * d * acc_t(double(n) * wo);
    n = tot;
  }
};

template <typename acc_t>
struct Sum2 {
  acc_t a, b;
  __device__ void merge(const Sum2& o) {
    a += o.a;
    b += o.b;
  }
};

// Statistics: element value -> Welford.
template <typename T, typename acc_t>
struct StatsOp {
  using Acc = Welford<acc_t>;
  const T* x;
  __device__ void add(Acc& a, int64_t i, int64_t) const { a.add(acc_t(x[i])); }
};

// Backward sums: dz = dy (* [y > 0]); (sum dz, sum dz * (x - mean)); optionally store dz.
template <typename T, typename acc_t>
struct BwdOp {
  using Acc = Sum2<acc_t>;
  const T *dy, *y, *x;
  const acc_t* mean;
  T* dz_out;
  __device__ void add(Acc& a, int64_t i, int64_t c) const {
    acc_t d = acc_t(dy[i]);
    if (y && acc_t(y[i]) <= acc_t(0)) d = acc_t(0);
    if (dz_out) dz_out[i] = T(d);
    a.a += d;
    a.b += d * (acc_t(x[i]) - mean[c]);
  }
};

// Fixed-order tree merge of `count` accumulators in shared memory, stride `step`.
template <typename Acc>
__device__ void tree_merge(Acc* sh, int lane, int count, int step) {
  for (int s = count / 2; s > 0; s /= 2) {
    __syncthreads();
    if (lane < s) sh[lane * step].merge(sh[(lane + s) * step]);
  }
  __syncthreads();
}

// NCHW: block (c, split) reduces channel c over images [n0, n1).
template <typename Op>
__global__ void __launch_bounds__(kThreads) reduce_nchw(Op op, int64_t N, int64_t C, int64_t HW, int splits,
                                                         typename Op::Acc* ws) {
  using Acc = typename Op::Acc;
  __shared__ Acc sh[kThreads];
  const int64_t c = blockIdx.x;
  const int s = blockIdx.y;
  const int64_t n0 = N * s / splits, n1 = N * (s + 1) / splits;
  Acc a{};
  const int64_t len = (n1 - n0) * HW;
  for (int64_t j = threadIdx.x; j < len; j += kThreads) {
    const int64_t n = n0 + j / HW, i = j % HW;
    op.add(a, (n * C + c) * HW + i, c);
  }
  sh[threadIdx.x] = a;
  tree_merge(sh, threadIdx.x, kThreads, 1);
  if (threadIdx.x == 0) ws[int64_t(s) * C + c] = sh[0];
}

// NHWC: block (channel tile, split), threads (32 channels) x (8 rows).
template <typename Op>
__global__ void __launch_bounds__(kThreads) reduce_nhwc(Op op, int64_t P, int64_t C, int splits,
                                                         typename Op::Acc* ws) {
  using Acc = typename Op::Acc;
  __shared__ Acc sh[kThreads];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t c = int64_t(blockIdx.x) * 32 + tx;
  const int s = blockIdx.y;
  const int64_t p0 = P * s / splits, p1 = P * (s + 1) / splits;
  Acc a{};
  if (c < C)
    for (int64_t p = p0 + ty; p < p1; p += 8) op.add(a, p * C + c, c);
  sh[threadIdx.x] = a;
  // merge the 8 rows of each channel column: lane = ty, stride 32
  for (int st = 4; st > 0; st /= 2) {
    __syncthreads();
    if (ty < st) sh[threadIdx.x].merge(sh[threadIdx.x + st * 32]);
  }
  __syncthreads();
  if (ty == 0 && c < C) ws[int64_t(s) * C + c] = sh[tx];
}

template <typename Op>
int launch_reduce(const Op& op, const Geom& g, at::Tensor& ws_t, const at::TensorOptions& opts) {
  using Acc = typename Op::Acc;
  auto stream = current_stream();
  const int64_t target = 2 * num_sms();
  int splits;
  if (!g.nhwc) {
    splits = int(std::clamp<int64_t>(ceil_div<int64_t>(target, g.C), 1, std::min<int64_t>(g.N, 65535)));
  } else {
    const int64_t tiles = ceil_div<int64_t>(g.C, 32);
    splits = int(std::clamp<int64_t>(ceil_div<int64_t>(target, tiles), 1,
                                     std::min<int64_t>(ceil_div<int64_t>(g.N * g.HW, 64), 65535)));
  }
  ws_t = at::empty({int64_t(splits) * g.C * int64_t(sizeof(Acc))}, opts.dtype(at::kByte));
  Acc* ws = reinterpret_cast<Acc*>(ws_t.data_ptr());
  if (!g.nhwc) {
    TORCH_CHECK(g.C <= INT32_MAX, "too many channels");
    launch<reduce_nchw<Op>>(dim3(unsigned(g.C), unsigned(splits)), kThreads, 0, stream, op, g.N, g.C, g.HW, splits,
                            ws);
  } else {
    launch<reduce_nhwc<Op>>(dim3(unsigned(ceil_div<int64_t>(g.C, 32)), unsigned(splits)), kThreads, 0, stream, op,
                            g.N * g.HW, g.C, splits, ws);
  }
  return splits;
}

// ---------------------------------------------------------------- per-channel finishing kernels

template <typename acc_t, typename S, typename R>
__global__ void stats_finalize(const Welford<acc_t>* ws, int splits, int64_t C, S* mean, S* var, R* rm, R* rv,
                               double momentum, double unbias) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  Welford<acc_t> a = ws[c];
  for (int s = 1; s < splits; ++s) a.merge(ws[int64_t(s) * C + c]);
  const acc_t v = a.m2 / acc_t(a.n);
  mean[c] = S(a.mean);
  var[c] = S(v);
  if (rm) {
    rm[c] = R((1 - momentum) * double(rm[c]) + momentum * double(a.mean));
    rv[c] = R((1 - momentum) * double(rv[c]) + momentum * double(v) * unbias);
  }
}

// scale / shift (forward) or A, B, C0 (backward) per channel, in acc_t.
template <typename acc_t, typename S, typename W>
__global__ void affine_coeffs(const S* mean, const S* var, const W* w, const W* b, double eps, int64_t C,
                              acc_t* scale, acc_t* shift) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  const acc_t inv = acc_t(1) / sqrt(acc_t(var[c]) + acc_t(eps));
  const acc_t k = (w ? acc_t(w[c]) : acc_t(1)) * inv;
  scale[c] = k;
  shift[c] = (b ? acc_t(b[c]) : acc_t(0)) - acc_t(mean[c]) * k;
}

template <typename acc_t, typename S, typename W>
__global__ void backward_coeffs(const Sum2<acc_t>* ws, int splits, int64_t C, const S* mean, const S* var,
                                const W* w, double eps, double count, bool training, acc_t* coef, W* gw, W* gb) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  Sum2<acc_t> a = ws[c];
  for (int s = 1; s < splits; ++s) a.merge(ws[int64_t(s) * C + c]);
  const acc_t inv = acc_t(1) / sqrt(acc_t(var[c]) + acc_t(eps));
  const acc_t k = (w ? acc_t(w[c]) : acc_t(1)) * inv;
  if (training) {
    const acc_t mg = a.a / acc_t(count), mgx = a.b / acc_t(count) * inv * inv;
    coef[c] = k;
    coef[C + c] = -k * mgx;
    coef[2 * C + c] = -k * mg + k * mgx * acc_t(mean[c]);
  } else {
    coef[c] = k;
    coef[C + c] = 0;
    coef[2 * C + c] = 0;
  }
  if (gw) gw[c] = W(a.b * inv);
  if (gb) gb[c] = W(a.a);
}

// ---------------------------------------------------------------- elementwise

__device__ __forceinline__ int64_t channel_of(int64_t i, int64_t C, int64_t HW, bool nhwc) {
  return nhwc ? i % C : (i / HW) % C;
}

template <typename T, typename acc_t>
__global__ void apply_kernel(const T* x, const T* r, T* y, const acc_t* scale, const acc_t* shift, int64_t E,
                             int64_t C, int64_t HW, bool nhwc, bool relu) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < E; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(i, C, HW, nhwc);
    acc_t v = acc_t(x[i]) * scale[c] + shift[c];
    if (r) v += acc_t(r[i]);
    if (relu) v = v <= acc_t(0) ? acc_t(0) : v;  // NaN stays NaN, as torch.relu
    y[i] = T(v);
  }
}

template <typename T, typename acc_t>
__global__ void dx_kernel(const T* dy, const T* y, const T* dz, const T* x, T* dx, const acc_t* coef, int64_t E,
                          int64_t C, int64_t HW, bool nhwc, bool training) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < E; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(i, C, HW, nhwc);
    acc_t d;
    if (dz) {
      d = acc_t(dz[i]);
    } else {
      d = acc_t(dy[i]);
      if (y && acc_t(y[i]) <= acc_t(0)) d = acc_t(0);
    }
    // Eval mode reads no x: a NaN there must not reach dx (torch's rule).
    dx[i] = T(training ? coef[c] * d + coef[C + c] * acc_t(x[i]) + coef[2 * C + c] : coef[c] * d);
  }
}

template <typename T>
__global__ void add_relu_kernel(const T* a, const T* b, T* out, int64_t E) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < E; i += int64_t(gridDim.x) * blockDim.x) {
    const acc_t v = acc_t(a[i]) + acc_t(b[i]);
    out[i] = T(v <= acc_t(0) ? acc_t(0) : v);
  }
}

template <typename T>
__global__ void relu_backward_kernel(const T* g, const T* y, T* out, int64_t E) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < E; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = acc_t(y[i]) <= acc_t(0) ? T(0) : g[i];  // NaN passes, as threshold_backward
}

unsigned elementwise_grid(int64_t E) {
  return unsigned(std::min<int64_t>(ceil_div<int64_t>(E, kThreads), int64_t(num_sms()) * 16));
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

struct CudaNorm {
  static void stats(const at::Tensor& input, at::Tensor& mean, at::Tensor& var, const at::Tensor* rm,
                    const at::Tensor* rv, double momentum, int64_t count) {
    DeviceGuard guard(input.device());
    const double unbias = double(count) / double(count - 1);
    const Geom g = geom(input);
    auto x = input.contiguous(fmt(g));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_stats_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      using S = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      at::Tensor ws;
      const int splits = launch_reduce(StatsOp<scalar_t, acc_t>{x.const_data_ptr<scalar_t>()}, g, ws, x.options());
      const auto* wsp = reinterpret_cast<const Welford<acc_t>*>(ws.const_data_ptr());
      const unsigned blocks = unsigned(ceil_div<int64_t>(g.C, 128));
      auto stream = current_stream();
      if (!rm) {
        launch<stats_finalize<acc_t, S, S>>(blocks, 128, 0, stream, wsp, splits, g.C, mean.data_ptr<S>(),
                                            var.data_ptr<S>(), static_cast<S*>(nullptr), static_cast<S*>(nullptr),
                                            0.0, 1.0);
        return;
      }
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rm->scalar_type(), "bn_running", [&] {
        launch<stats_finalize<acc_t, S, scalar_t>>(blocks, 128, 0, stream, wsp, splits, g.C, mean.data_ptr<S>(),
                                                   var.data_ptr<S>(), rm->data_ptr<scalar_t>(),
                                                   rv->data_ptr<scalar_t>(), momentum, unbias);
      });
    });
  }

  static at::Tensor apply(const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
                          const at::Tensor* weight, const at::Tensor* bias, const at::Tensor* residual, double eps,
                          bool relu) {
    DeviceGuard guard(input.device());
    const Geom g = geom(input);
    auto x = input.contiguous(fmt(g));
    at::Tensor r = residual ? residual->contiguous(fmt(g)) : at::Tensor();
    auto y = at::empty_like(x, fmt(g));
    const int64_t E = y.numel();
    if (E == 0) return y;
    auto stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      auto coef = at::empty({2 * g.C}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      acc_t* cp = coef.data_ptr<acc_t>();
      auto mu = mean.contiguous(), va = var.to(mean.scalar_type()).contiguous();
      const at::Tensor w = weight ? weight->to(mean.scalar_type()).contiguous() : at::Tensor();
      const at::Tensor b = bias ? bias->to(mean.scalar_type()).contiguous() : at::Tensor();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean.scalar_type(), "bn_coeffs", [&] {
        using S = scalar_t;
        launch<affine_coeffs<acc_t, S, S>>(unsigned(ceil_div<int64_t>(g.C, 128)), 128, 0, stream,
                                           mu.const_data_ptr<S>(), va.const_data_ptr<S>(), ptr_or_null<S>(w),
                                           ptr_or_null<S>(b), eps, g.C, cp, cp + g.C);
      });
      launch<apply_kernel<scalar_t, acc_t>>(elementwise_grid(E), kThreads, 0, stream, x.const_data_ptr<scalar_t>(),
                                            ptr_or_null<scalar_t>(r), y.data_ptr<scalar_t>(), cp, cp + g.C, E, g.C,
                                            g.HW, g.nhwc, relu);
    });
    return y;
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
      const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var,
      const at::Tensor* weight, const at::Tensor* output, double eps, bool training, bool relu,
      std::array<bool, 4> mask) {
    DeviceGuard guard(input.device());
    const Geom g = geom(input);
    auto x = input.contiguous(fmt(g));
    auto gy = grad_out.contiguous(fmt(g));
    at::Tensor y = relu ? output->contiguous(fmt(g)) : at::Tensor();
    const auto wdt = weight ? weight->scalar_type() : stat_type(x.scalar_type());
    at::Tensor gx = mask[0] ? at::empty_like(x, fmt(g)) : at::empty({0}, x.options());
    at::Tensor gw = at::empty({mask[1] ? g.C : 0}, x.options().dtype(wdt));
    at::Tensor gb = at::empty({mask[2] ? g.C : 0}, x.options().dtype(wdt));
    at::Tensor gr = mask[3] ? at::empty_like(x, fmt(g)) : at::empty({0}, x.options());
    const int64_t E = x.numel();
    if (E == 0) {
      gw.zero_();
      gb.zero_();
      return {gx, gw, gb, gr};
    }
    auto stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "batch_norm_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
      auto mu = mean.to(acc_type).contiguous(), va = var.to(acc_type).contiguous();
      const at::Tensor w = weight ? weight->to(acc_type).contiguous() : at::Tensor();
      BwdOp<scalar_t, acc_t> op{gy.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(y), x.const_data_ptr<scalar_t>(),
                                mu.const_data_ptr<acc_t>(), mask[3] ? gr.data_ptr<scalar_t>() : nullptr};
      at::Tensor ws;
      const int splits = launch_reduce(op, g, ws, x.options());
      auto coef = at::empty({3 * g.C}, x.options().dtype(acc_type));
      auto gwa = at::empty({g.C}, x.options().dtype(acc_type)), gba = at::empty({g.C}, x.options().dtype(acc_type));
      launch<backward_coeffs<acc_t, acc_t, acc_t>>(
          unsigned(ceil_div<int64_t>(g.C, 128)), 128, 0, stream, reinterpret_cast<const Sum2<acc_t>*>(ws.const_data_ptr()),
          splits, g.C, mu.const_data_ptr<acc_t>(), va.const_data_ptr<acc_t>(), ptr_or_null<acc_t>(w), eps,
          double(g.N * g.HW), training, coef.data_ptr<acc_t>(), gwa.data_ptr<acc_t>(), gba.data_ptr<acc_t>());
      if (mask[0]) {
        launch<dx_kernel<scalar_t, acc_t>>(elementwise_grid(E), kThreads, 0, stream, gy.const_data_ptr<scalar_t>(),
                                           ptr_or_null<scalar_t>(y), mask[3] ? gr.const_data_ptr<scalar_t>() : nullptr,
                                           x.const_data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                                           coef.const_data_ptr<acc_t>(), E, g.C, g.HW, g.nhwc, training);
      }
      if (mask[1]) gw.copy_(gwa);
      if (mask[2]) gb.copy_(gba);
    });
    return {gx, gw, gb, gr};
  }

  static void add_relu(const at::Tensor& a, const at::Tensor& b, at::Tensor& out) {
    DeviceGuard guard(out.device());
    const auto mf = out.suggest_memory_format();
    auto ac = a.contiguous(mf), bc = b.contiguous(mf);
    const int64_t E = out.numel();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "add_relu_cuda", [&] {
      launch<add_relu_kernel<scalar_t>>(elementwise_grid(E), kThreads, 0, current_stream(),
                                        ac.const_data_ptr<scalar_t>(), bc.const_data_ptr<scalar_t>(),
                                        out.data_ptr<scalar_t>(), E);
    });
  }

  static at::Tensor relu_backward(const at::Tensor& grad_out, const at::Tensor& output) {
    DeviceGuard guard(output.device());
    const auto mf = output.suggest_memory_format();
    auto g = grad_out.contiguous(mf), y = output.contiguous(mf);
    auto gx = at::empty_like(y, mf);
    const int64_t E = gx.numel();
    if (E == 0) return gx;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gx.scalar_type(), "relu_backward_cuda", [&] {
      launch<relu_backward_kernel<scalar_t>>(elementwise_grid(E), kThreads, 0, current_stream(),
                                             g.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                                             gx.data_ptr<scalar_t>(), E);
    });
    return gx;
  }
};

}  // namespace

CONVX_DEVICE_LIBRARY_IMPL(m) {
  CONVX_REGISTER_NORM_OPS(m, CudaNorm);
}

}  // namespace convx::cuda
