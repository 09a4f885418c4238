// Pooling on the CPU: max, average, adaptive average, adaptive max; forward
// and backward. Window arithmetic: common/pool_params.h.
//
// Forward reads each input byte about k*k/stride^2 times from cache and writes
// each output once. NCHW runs one plane per task; channels_last runs one
// output pixel per task with the channel loop innermost (contiguous, so the
// compiler vectorises it).
//
// Backward is a gather: every input element sums the gradients of the outputs
// that read it (max: only where the stored index points at it), so it needs no
// atomics and no zero-fill pass, and is deterministic.
//
// Max semantics are torch's: a NaN in the window wins (the last NaN's index),
// ties keep the first index, and an all -inf window returns -inf with the
// index of its first valid element.
#include "../common/pool_ops.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

namespace convx::cpu {
namespace {

template <typename T>
inline bool is_nan(T v) {
  return v != v;
}

template <typename T>
void forward_nchw(const T* x, T* y, int64_t* ind, int64_t planes, const PoolPlan& p, bool is_max) {
  using acc_t = at::opmath_type<T>;
  const PoolAxis &ah = p.h, &aw = p.w;
  const int64_t H = ah.in, W = aw.in, Ho = ah.out, Wo = aw.out;
  at::parallel_for(0, planes, 1, [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      const T* xp = x + pl * H * W;
      for (int64_t oh = 0; oh < Ho; ++oh) {
        const int64_t h0 = ah.begin(oh), th = ah.taps(oh), sh = ah.step();
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const int64_t w0 = aw.begin(ow), tw = aw.taps(ow), sw = aw.step();
          const int64_t o = pl * Ho * Wo + oh * Wo + ow;
          if (is_max) {
            acc_t best = -std::numeric_limits<acc_t>::infinity();
            int64_t bi = -1;
            for (int64_t i = 0; i < th; ++i) {
              const int64_t h = h0 + i * sh;
              if (h < 0 || h >= H) continue;
              for (int64_t j = 0; j < tw; ++j) {
                const int64_t w = w0 + j * sw;
                if (w < 0 || w >= W) continue;
                const acc_t v = acc_t(xp[h * W + w]);
                if (v > best || is_nan(v) || bi < 0) {
                  best = v;
                  bi = h * W + w;
                }
              }
            }
            y[o] = T(best);
            ind[o] = bi;
          } else {
            acc_t sum = 0;
            for (int64_t i = 0; i < th; ++i) {
              const int64_t h = h0 + i * sh;
              if (h < 0 || h >= H) continue;
              for (int64_t j = 0; j < tw; ++j) {
                const int64_t w = w0 + j * sw;
                if (w >= 0 && w < W) sum += acc_t(xp[h * W + w]);
              }
            }
            y[o] = T(sum / acc_t(p.div(ah, aw, oh, ow)));
          }
        }
      }
    }
  });
}

template <typename T>
void forward_nhwc(const T* x, T* y, int64_t* ind, int64_t N, int64_t C, const PoolPlan& p, bool is_max) {
  using acc_t = at::opmath_type<T>;
  const PoolAxis &ah = p.h, &aw = p.w;
  const int64_t H = ah.in, W = aw.in, Ho = ah.out, Wo = aw.out;
  at::parallel_for(0, N * Ho * Wo, 16, [&](int64_t b, int64_t e) {
    std::vector<acc_t> acc(C);
    std::vector<int64_t> bi(C);
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / (Ho * Wo), oh = (t / Wo) % Ho, ow = t % Wo;
      const int64_t h0 = ah.begin(oh), th = ah.taps(oh), sh = ah.step();
      const int64_t w0 = aw.begin(ow), tw = aw.taps(ow), sw = aw.step();
      std::fill(acc.begin(), acc.end(), is_max ? -std::numeric_limits<acc_t>::infinity() : acc_t(0));
      std::fill(bi.begin(), bi.end(), int64_t(-1));
      for (int64_t i = 0; i < th; ++i) {
        const int64_t h = h0 + i * sh;
        if (h < 0 || h >= H) continue;
        for (int64_t j = 0; j < tw; ++j) {
          const int64_t w = w0 + j * sw;
          if (w < 0 || w >= W) continue;
          const T* xp = x + ((n * H + h) * W + w) * C;
          if (is_max) {
            const int64_t here = h * W + w;
            for (int64_t c = 0; c < C; ++c) {
              const acc_t v = acc_t(xp[c]);
              if (v > acc[c] || is_nan(v) || bi[c] < 0) {
                acc[c] = v;
                bi[c] = here;
              }
            }
          } else {
            for (int64_t c = 0; c < C; ++c) acc[c] += acc_t(xp[c]);
          }
        }
      }
      T* yp = y + t * C;
      if (is_max) {
        for (int64_t c = 0; c < C; ++c) yp[c] = T(acc[c]);
        std::copy(bi.begin(), bi.end(), ind + t * C);
      } else {
        const acc_t d = acc_t(p.div(ah, aw, oh, ow));
        for (int64_t c = 0; c < C; ++c) yp[c] = T(acc[c] / d);
      }
    }
  });
}

template <typename T>
void backward_nchw(const T* gy, const int64_t* ind, T* gx, int64_t planes, const PoolPlan& p, bool is_max) {
  using acc_t = at::opmath_type<T>;
  const PoolAxis &ah = p.h, &aw = p.w;
  const int64_t H = ah.in, W = aw.in, Ho = ah.out, Wo = aw.out;
  at::parallel_for(0, planes, 1, [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      const T* g = gy + pl * Ho * Wo;
      const int64_t* id = is_max ? ind + pl * Ho * Wo : nullptr;
      for (int64_t h = 0; h < H; ++h) {
        int64_t oh_lo, oh_hi;
        ah.touching(h, oh_lo, oh_hi);
        for (int64_t w = 0; w < W; ++w) {
          int64_t ow_lo, ow_hi;
          aw.touching(w, ow_lo, ow_hi);
          acc_t s = 0;
          for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
            if (!ah.reads(oh, h)) continue;
            for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
              if (!aw.reads(ow, w)) continue;
              const int64_t o = oh * Wo + ow;
              if (is_max) {
                if (id[o] == h * W + w) s += acc_t(g[o]);
              } else {
                s += acc_t(g[o]) / acc_t(p.div(ah, aw, oh, ow));
              }
            }
          }
          gx[(pl * H + h) * W + w] = T(s);
        }
      }
    }
  });
}

template <typename T>
void backward_nhwc(const T* gy, const int64_t* ind, T* gx, int64_t N, int64_t C, const PoolPlan& p, bool is_max) {
  using acc_t = at::opmath_type<T>;
  const PoolAxis &ah = p.h, &aw = p.w;
  const int64_t H = ah.in, W = aw.in, Ho = ah.out, Wo = aw.out;
  at::parallel_for(0, N * H * W, 16, [&](int64_t b, int64_t e) {
    std::vector<acc_t> acc(C);
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / (H * W), h = (t / W) % H, w = t % W;
      int64_t oh_lo, oh_hi, ow_lo, ow_hi;
      ah.touching(h, oh_lo, oh_hi);
      aw.touching(w, ow_lo, ow_hi);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const int64_t here = h * W + w;
      for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
        if (!ah.reads(oh, h)) continue;
        for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
          if (!aw.reads(ow, w)) continue;
          const int64_t o = ((n * Ho + oh) * Wo + ow) * C;
          if (is_max) {
            for (int64_t c = 0; c < C; ++c)
              if (ind[o + c] == here) acc[c] += acc_t(gy[o + c]);
          } else {
            const acc_t d = acc_t(p.div(ah, aw, oh, ow));
            for (int64_t c = 0; c < C; ++c) acc[c] += acc_t(gy[o + c]) / d;
          }
        }
      }
      T* out = gx + t * C;
      for (int64_t c = 0; c < C; ++c) out[c] = T(acc[c]);
    }
  });
}

struct CpuPool {
  static std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& input, const PoolPlan& p, bool is_max) {
    TORCH_CHECK(input.device().is_cpu(), "convx pooling (CPU): expected a CPU tensor");
    const auto mf = input.suggest_memory_format();
    const bool nhwc = mf == at::MemoryFormat::ChannelsLast;
    auto y = at::empty(p.out_size, input.options().memory_format(mf));
    at::Tensor ind;
    if (is_max) ind = at::empty(p.out_size, input.options().dtype(at::kLong).memory_format(mf));
    if (y.numel() == 0) return {y, ind};
    auto x = input.contiguous(mf);
    const int64_t N = p.out_size[0], C = p.out_size[1];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool2d_forward_cpu", [&] {
      int64_t* ip = is_max ? ind.data_ptr<int64_t>() : nullptr;
      if (nhwc)
        forward_nhwc<scalar_t>(x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), ip, N, C, p, is_max);
      else
        forward_nchw<scalar_t>(x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), ip, N * C, p, is_max);
    });
    return {y, ind};
  }

  static at::Tensor backward(const at::Tensor& grad_output, const at::Tensor& indices, at::IntArrayRef input_size,
                             const PoolPlan& p, bool is_max) {
    TORCH_CHECK(grad_output.device().is_cpu(), "convx pooling (CPU): expected a CPU tensor");
    const auto mf = grad_output.suggest_memory_format();
    const bool nhwc = mf == at::MemoryFormat::ChannelsLast;
    auto gx = at::empty(input_size, grad_output.options().memory_format(mf));
    if (gx.numel() == 0) return gx;
    if (grad_output.numel() == 0) return gx.zero_();
    auto gy = grad_output.contiguous(mf);
    at::Tensor ind = is_max ? indices.contiguous(mf) : at::Tensor();
    const int64_t N = input_size[0], C = input_size[1];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "pool2d_backward_cpu", [&] {
      const int64_t* ip = is_max ? ind.const_data_ptr<int64_t>() : nullptr;
      if (nhwc)
        backward_nhwc<scalar_t>(gy.const_data_ptr<scalar_t>(), ip, gx.data_ptr<scalar_t>(), N, C, p, is_max);
      else
        backward_nchw<scalar_t>(gy.const_data_ptr<scalar_t>(), ip, gx.data_ptr<scalar_t>(), N * C, p, is_max);
    });
    return gx;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(convx, CPU, m) {
  CONVX_REGISTER_POOL_OPS(m, CpuPool);
}

}  // namespace convx::cpu
