// The three convolution GEMMs as "problems" (see conv2d.cu's header comment):
// A(m, k), B(k, n) and the store of C(m, n) for forward, data gradient and
// weight gradient, read and written through each tensor's strides. Shared by
// the CUDA-core kernel (conv2d.cu) and the tensor-core kernels (conv2d_tc.cu).
#pragma once

#include "../common/conv_params.h"
#include "../common/cuda_utils.cuh"

#include <ATen/core/Tensor.h>

#include <algorithm>

namespace convx::cuda {
namespace {

// (c, r, s) of a reduction index, in the order the layout prefers.
struct Crs {
  int c, r, s;
};
__device__ __forceinline__ Crs split_crs(int64_t k, int Cg, int R, int S, bool cl) {
  Crs o;
  if (cl) {  // (r, s, c), c fastest
    o.c = int(k % Cg);
    const int rs = int(k / Cg);
    o.r = rs / S;
    o.s = rs % S;
  } else {  // (c, r, s), s fastest
    o.c = int(k / (R * S));
    const int rs = int(k % (R * S));
    o.r = rs / S;
    o.s = rs % S;
  }
  return o;
}

struct Geometry {
  int H, W, Ho, Wo, R, S;
  int stride_h, stride_w, pad_t, pad_l, dil_h, dil_w;
  int Cg, Kg, groups;
};

template <typename T, typename acc_t>
struct ForwardProblem {
  Strided4<const T> x, w;
  Strided4<T> y;
  const T* bias;
  Strided4<const T> res;  // added before the ReLU when res.p is set (the fused inference epilogue)
  bool relu;
  Geometry g;
  bool cl;
  int64_t M, N, K;
  bool a_kfast, b_kfast;

  struct Row {
    const T* p;
    int h0, w0;
    bool ok;
  };
  struct Col {
    const T* p;
    bool ok;
  };
  __device__ Row a_row(int grp, int64_t m) const {
    Row r;
    r.ok = m < M;
    if (!r.ok) m = 0;
    const int64_t P = int64_t(g.Ho) * g.Wo;
    const int64_t n = m / P;
    const int q = int(m % P);
    r.p = x.p + n * x.s0 + int64_t(grp) * g.Cg * x.s1;
    r.h0 = (q / g.Wo) * g.stride_h - g.pad_t;
    r.w0 = (q % g.Wo) * g.stride_w - g.pad_l;
    return r;
  }
  __device__ acc_t a(const Row& r, int64_t k) const {
    const Crs t = split_crs(k, g.Cg, g.R, g.S, cl);
    const int h = r.h0 + t.r * g.dil_h, w = r.w0 + t.s * g.dil_w;
    if (!r.ok || h < 0 || h >= g.H || w < 0 || w >= g.W) return acc_t(0);
    return acc_t(r.p[t.c * x.s1 + h * x.s2 + w * x.s3]);
  }
  __device__ Col b_col(int grp, int64_t n) const {
    Col c;
    c.ok = n < N;
    c.p = w.p + (int64_t(grp) * g.Kg + (c.ok ? n : 0)) * w.s0;
    return c;
  }
  __device__ acc_t b(const Col& c, int64_t k) const {
    if (!c.ok) return acc_t(0);
    const Crs t = split_crs(k, g.Cg, g.R, g.S, cl);
    return acc_t(c.p[t.c * w.s1 + t.r * w.s2 + t.s * w.s3]);
  }
  __device__ void store(int grp, int /*split*/, int64_t m, int64_t n, acc_t v) const {
    const int64_t P = int64_t(g.Ho) * g.Wo;
    const int64_t img = m / P;
    const int q = int(m % P);
    const int64_t oc = int64_t(grp) * g.Kg + n;
    if (bias) v += acc_t(bias[oc]);
    if (res.p) v += acc_t(res(img, oc, q / g.Wo, q % g.Wo));
    if (relu) v = v > acc_t(0) ? v : acc_t(0);
    y(img, oc, q / g.Wo, q % g.Wo) = T(v);
  }
};

template <typename T, typename acc_t>
struct DgradProblem {
  Strided4<const T> dy, w;
  Strided4<T> dx;
  const T* bias;  // per input channel; transposed convolution's bias
  Geometry g;
  bool cl;
  int64_t M, N, K;
  bool a_kfast, b_kfast;

  struct Row {
    const T* p;
    int h, w;
    bool ok;
  };
  struct Col {
    const T* p;
    bool ok;
  };
  __device__ Row a_row(int grp, int64_t m) const {
    Row r;
    r.ok = m < M;
    if (!r.ok) m = 0;
    const int64_t HW = int64_t(g.H) * g.W;
    const int64_t n = m / HW;
    const int q = int(m % HW);
    r.p = dy.p + n * dy.s0 + int64_t(grp) * g.Kg * dy.s1;
    r.h = q / g.W;
    r.w = q % g.W;
    return r;
  }
  __device__ acc_t a(const Row& r, int64_t k) const {
    if (!r.ok) return acc_t(0);
    const Crs t = split_crs(k, g.Kg, g.R, g.S, cl);  // t.c is the output channel here
    const int hn = r.h + g.pad_t - t.r * g.dil_h, wn = r.w + g.pad_l - t.s * g.dil_w;
    if (hn < 0 || wn < 0 || hn % g.stride_h || wn % g.stride_w) return acc_t(0);
    const int ho = hn / g.stride_h, wo = wn / g.stride_w;
    if (ho >= g.Ho || wo >= g.Wo) return acc_t(0);
    return acc_t(r.p[t.c * dy.s1 + ho * dy.s2 + wo * dy.s3]);
  }
  __device__ Col b_col(int grp, int64_t n) const {
    Col c;
    c.ok = n < N;
    c.p = w.p + int64_t(grp) * g.Kg * w.s0 + (c.ok ? n : 0) * w.s1;
    return c;
  }
  __device__ acc_t b(const Col& c, int64_t k) const {
    if (!c.ok) return acc_t(0);
    const Crs t = split_crs(k, g.Kg, g.R, g.S, cl);
    return acc_t(c.p[t.c * w.s0 + t.r * w.s2 + t.s * w.s3]);
  }
  __device__ void store(int grp, int /*split*/, int64_t m, int64_t n, acc_t v) const {
    const int64_t HW = int64_t(g.H) * g.W;
    const int64_t img = m / HW;
    const int q = int(m % HW);
    const int64_t c = int64_t(grp) * g.Cg + n;
    if (bias) v += acc_t(bias[c]);
    dx(img, c, q / g.W, q % g.W) = T(v);
  }
};

template <typename T, typename acc_t>
struct WgradProblem {
  Strided4<const T> dy, x;
  Strided4<T> dw;   // used when splits == 1
  acc_t* ws;        // [splits, K, Cg*R*S] when splits > 1
  int splits;
  Geometry g;
  bool cl;
  int64_t M, N, K;
  bool a_kfast, b_kfast;

  struct Row {
    const T* p;
    bool ok;
  };
  struct Col {
    const T* p;
    int hoff, woff;
    bool ok;
  };
  __device__ Row a_row(int grp, int64_t m) const {
    Row r;
    r.ok = m < M;
    r.p = dy.p + (int64_t(grp) * g.Kg + (r.ok ? m : 0)) * dy.s1;
    return r;
  }
  __device__ acc_t a(const Row& r, int64_t k) const {
    if (!r.ok) return acc_t(0);
    const int64_t P = int64_t(g.Ho) * g.Wo;
    const int64_t n = k / P;
    const int q = int(k % P);
    return acc_t(r.p[n * dy.s0 + (q / g.Wo) * dy.s2 + (q % g.Wo) * dy.s3]);
  }
  __device__ Col b_col(int grp, int64_t n) const {
    Col c;
    c.ok = n < N;
    const Crs t = split_crs(c.ok ? n : 0, g.Cg, g.R, g.S, cl);
    c.p = x.p + (int64_t(grp) * g.Cg + t.c) * x.s1;
    c.hoff = t.r * g.dil_h - g.pad_t;
    c.woff = t.s * g.dil_w - g.pad_l;
    return c;
  }
  __device__ acc_t b(const Col& c, int64_t k) const {
    if (!c.ok) return acc_t(0);
    const int64_t P = int64_t(g.Ho) * g.Wo;
    const int64_t n = k / P;
    const int q = int(k % P);
    const int h = (q / g.Wo) * g.stride_h + c.hoff, w = (q % g.Wo) * g.stride_w + c.woff;
    if (h < 0 || h >= g.H || w < 0 || w >= g.W) return acc_t(0);
    return acc_t(c.p[n * x.s0 + h * x.s2 + w * x.s3]);
  }
  __device__ void store(int grp, int split, int64_t m, int64_t n, acc_t v) const {
    const Crs t = split_crs(n, g.Cg, g.R, g.S, cl);
    const int64_t oc = int64_t(grp) * g.Kg + m;
    if (splits == 1) {
      dw(oc, t.c, t.r, t.s) = T(v);
    } else {
      const int64_t K = int64_t(g.Kg) * g.groups, CRS = int64_t(g.Cg) * g.R * g.S;
      ws[(split * K + oc) * CRS + (int64_t(t.c) * g.R + t.r) * g.S + t.s] = v;
    }
  }
};

template <typename T>
Strided4<T> strided(const at::Tensor& t) {
  return {t.data_ptr<std::remove_const_t<T>>(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// dW[k, c, r, s] = sum over splits of ws[split, k, (c, r, s)], in split order.
template <typename T, typename acc_t>
__global__ void sum_splits_kernel(const acc_t* ws, int splits, int64_t K, int Cg, int R, int S, Strided4<T> dw) {
  const int64_t total = K * Cg * R * S;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    acc_t v = 0;
    for (int sp = 0; sp < splits; ++sp) v += ws[sp * total + i];
    const int s = int(i % S), r = int((i / S) % R), c = int((i / (int64_t(R) * S)) % Cg);
    const int64_t k = i / (int64_t(Cg) * R * S);
    dw(k, c, r, s) = T(v);
  }
}

inline Geometry make_geometry(const Conv2dShape& sh, const Conv2dParams& p) {
  auto fits = [](int64_t v) { return v <= int64_t(INT32_MAX); };
  TORCH_CHECK(fits(sh.H) && fits(sh.W) && fits(sh.Cg * sh.R * sh.S) && fits(sh.Kg * sh.R * sh.S) &&
                  fits(sh.H * sh.W) && fits(sh.Ho * sh.Wo),
              "convx.conv2d (CUDA): a per-image extent exceeds 2^31 elements");
  Geometry g;
  g.H = int(sh.H), g.W = int(sh.W), g.Ho = int(sh.Ho), g.Wo = int(sh.Wo), g.R = int(sh.R), g.S = int(sh.S);
  g.stride_h = int(p.stride_h), g.stride_w = int(p.stride_w), g.pad_t = int(p.pad_t), g.pad_l = int(p.pad_l);
  g.dil_h = int(p.dil_h), g.dil_w = int(p.dil_w);
  g.Cg = int(sh.Cg), g.Kg = int(sh.Kg), g.groups = int(p.groups);
  return g;
}

// The three problems of a convolution (shape sh, layout cl), as conv2d.cu and
// conv2d_tc.cu both launch them. res (optional) and relu: the fused epilogue.
template <typename T, typename acc_t>
ForwardProblem<T, acc_t> forward_problem(const at::Tensor& x, const at::Tensor& w, const at::Tensor& y, const T* bias,
                                         const at::Tensor& res, bool relu, const Geometry& g,
                                         const Conv2dShape& sh, bool cl) {
  ForwardProblem<T, acc_t> prob;
  prob.x = strided<const T>(x);
  prob.w = strided<const T>(w);
  prob.y = strided<T>(y);
  prob.bias = bias;
  prob.res = res.defined() ? strided<const T>(res) : Strided4<const T>{nullptr, 0, 0, 0, 0};
  prob.relu = relu;
  prob.g = g;
  prob.cl = cl;
  prob.M = sh.N * sh.Ho * sh.Wo;
  prob.N = sh.Kg;
  prob.K = sh.Cg * sh.R * sh.S;
  prob.a_kfast = cl;  // channels_last: the reduction's c is the contiguous axis
  prob.b_kfast = true;
  return prob;
}

template <typename T, typename acc_t>
DgradProblem<T, acc_t> dgrad_problem(const at::Tensor& dy, const at::Tensor& w, const at::Tensor& dx, const T* bias,
                                     const Geometry& g, const Conv2dShape& sh, bool cl) {
  DgradProblem<T, acc_t> prob;
  prob.dy = strided<const T>(dy);
  prob.w = strided<const T>(w);
  prob.dx = strided<T>(dx);
  prob.bias = bias;
  prob.g = g;
  prob.cl = cl;
  prob.M = sh.N * sh.H * sh.W;
  prob.N = sh.Cg;
  prob.K = sh.Kg * sh.R * sh.S;
  prob.a_kfast = cl;
  prob.b_kfast = false;
  return prob;
}

template <typename T, typename acc_t>
WgradProblem<T, acc_t> wgrad_problem(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dw,
                                     const Geometry& g, const Conv2dShape& sh, bool cl) {
  WgradProblem<T, acc_t> prob;
  prob.dy = strided<const T>(dy);
  prob.x = strided<const T>(x);
  prob.dw = strided<T>(dw);
  prob.ws = nullptr;
  prob.splits = 1;
  prob.g = g;
  prob.cl = cl;
  prob.M = sh.Kg;
  prob.N = sh.Cg * sh.R * sh.S;
  prob.K = sh.N * sh.Ho * sh.Wo;
  prob.a_kfast = !cl;  // NCHW: dY is contiguous along (h, w)
  prob.b_kfast = !cl;
  return prob;
}

// The weight gradient's split of its long reduction, for a kernel of bm x bn
// tiles: splits until the grid covers the GPU about twice, each split at least
// 512 reduction steps and a multiple of `step` long, at most 64. Returns the
// split count; *k_per_split its length. The count (and so the summation order)
// follows the SM count: results are bitwise reproducible on one GPU model, not
// across models.
inline int64_t wgrad_splits(int64_t M, int64_t N, int64_t K, int groups, int bm, int bn, int step,
                            int64_t* k_per_split) {
  const int64_t tiles = ceil_div<int64_t>(M, bm) * ceil_div<int64_t>(N, bn) * groups;
  int64_t splits = std::max<int64_t>(1, ceil_div<int64_t>(2 * num_sms(), tiles));
  splits = std::min<int64_t>({splits, std::max<int64_t>(1, K / 512), 64});
  *k_per_split = ceil_div<int64_t>(ceil_div<int64_t>(K, splits), step) * step;
  return ceil_div<int64_t>(K, *k_per_split);
}

}  // namespace
}  // namespace convx::cuda
