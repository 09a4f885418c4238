// Pooling on the CPU: max, average, adaptive average, adaptive max; forward
// and backward. Window arithmetic: common/pool_params.h.
//
// Forward reads each input byte about k*k/stride^2 times from cache and writes
// each output once. NCHW runs one plane per task; channels_last runs one
// output pixel per task with the channel loop innermost (contiguous, so the
// compiler vectorises it).
//
// Backward is a scatter, done sequentially within each plane (NCHW) or each
// (image, channel block) (channels_last), with those units spread over
// threads: every gradient element has one writer and a fixed summation order,
// so it is deterministic with no atomics, and costs O(outputs x taps). (The
// CUDA kernels gather instead, which suits thousands of threads.)
//
// Max semantics are torch's: a NaN in the window wins (the last NaN's index),
// ties keep the first index, and an all -inf window returns -inf with the
// index of its first valid element.
#include "../common/pool_ops.h"
#include "isa_each.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace convx::cpu {
namespace {

template <typename T>
inline bool is_nan(T v) {
  return v != v;
}

// Taps of one window axis that fall inside [0, n): i in [lo, hi) (step s).
struct Taps {
  int64_t lo, hi;
};
inline Taps clip(int64_t begin, int64_t taps, int64_t step, int64_t n) {
  int64_t lo = 0, hi = taps;
  if (begin < 0) lo = (-begin + step - 1) / step;
  if (begin + (taps - 1) * step >= n) hi = begin >= n ? 0 : (n - 1 - begin) / step + 1;
  return {lo, std::max(lo, hi)};
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
        const int64_t h0 = ah.begin(oh), sh = ah.step();
        const Taps ti = clip(h0, ah.taps(oh), sh, H);
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const int64_t w0 = aw.begin(ow), sw = aw.step();
          const Taps tj = clip(w0, aw.taps(ow), sw, W);
          const int64_t o = pl * Ho * Wo + oh * Wo + ow;
          if (is_max) {
            acc_t best = -std::numeric_limits<acc_t>::infinity();
            // The first valid tap; -1 for a window that dilation puts wholly in the padding (torch's CPU
            // kernel gives a position that is not in the window there, sometimes not even in the plane).
            int64_t bi = ti.lo < ti.hi && tj.lo < tj.hi ? (h0 + ti.lo * sh) * W + (w0 + tj.lo * sw) : -1;
            for (int64_t i = ti.lo; i < ti.hi; ++i) {
              const T* row = xp + (h0 + i * sh) * W + w0;
              for (int64_t j = tj.lo; j < tj.hi; ++j) {
                const acc_t v = acc_t(row[j * sw]);
                if (v > best || v != v) {
                  best = v;
                  bi = (h0 + i * sh) * W + w0 + j * sw;
                }
              }
            }
            y[o] = T(best);
            ind[o] = bi;
          } else {
            acc_t sum = 0;
            for (int64_t i = ti.lo; i < ti.hi; ++i) {
              const T* row = xp + (h0 + i * sh) * W + w0;
              for (int64_t j = tj.lo; j < tj.hi; ++j) sum += acc_t(row[j * sw]);
            }
            y[o] = T(sum / acc_t(p.div(ah, aw, oh, ow)));
          }
        }
      }
    }
  });
}

// channels_last forward. The running index is kept as a float lane beside
// the running max (exact below 2^24 positions per plane) so the compare and
// both selects run at one vector width; it is widened to int64 once per pixel.
template <typename T>
void forward_nhwc(const T* x, T* y, int64_t* ind, int64_t N, int64_t C, const PoolPlan& p, bool is_max) {
  using acc_t = at::opmath_type<T>;
  using idx_t = std::conditional_t<std::is_same_v<acc_t, double>, double, float>;
  const PoolAxis &ah = p.h, &aw = p.w;
  const int64_t H = ah.in, W = aw.in, Ho = ah.out, Wo = aw.out;
  TORCH_CHECK(H * W < (int64_t(1) << 24), "convx max_pool2d (CPU, channels_last): plane of ", H * W,
              " positions exceeds 2^24");
  at::parallel_for(0, N * Ho * Wo, 16, [&](int64_t b, int64_t e) {
    std::vector<acc_t> acc_buf(C);
    std::vector<idx_t> idx_buf(C);
    acc_t* __restrict acc = acc_buf.data();
    idx_t* __restrict idx = idx_buf.data();
    each(b, e, [&](int64_t t) CONVX_ALWAYS_INLINE {  // the channel loops in the CPU's widest vectors
      const int64_t n = t / (Ho * Wo), oh = (t / Wo) % Ho, ow = t % Wo;
      const int64_t h0 = ah.begin(oh), th = ah.taps(oh), sh = ah.step();
      const int64_t w0 = aw.begin(ow), tw = aw.taps(ow), sw = aw.step();
      bool first = true;
      for (int64_t i = 0; i < th; ++i) {
        const int64_t h = h0 + i * sh;
        if (h < 0 || h >= H) continue;
        for (int64_t j = 0; j < tw; ++j) {
          const int64_t w = w0 + j * sw;
          if (w < 0 || w >= W) continue;
          const T* __restrict xp = x + ((n * H + h) * W + w) * C;
          const idx_t here = idx_t(h * W + w);
          if (first) {
            // The first valid tap seeds the running max (torch's -inf start
            // with the first valid index gives the same result, NaN included).
            for (int64_t c = 0; c < C; ++c) acc[c] = acc_t(xp[c]);
            if (is_max)
              for (int64_t c = 0; c < C; ++c) idx[c] = here;
            first = false;
          } else if (is_max) {
            for (int64_t c = 0; c < C; ++c) {
              const acc_t v = acc_t(xp[c]);
              const bool take = (v > acc[c]) | (v != v);
              acc[c] = take ? v : acc[c];
              idx[c] = take ? here : idx[c];
            }
          } else {
            for (int64_t c = 0; c < C; ++c) acc[c] += acc_t(xp[c]);
          }
        }
      }
      if (first) {  // no tap inside the image (dilation can put a whole window in the padding): -inf, index -1
        for (int64_t c = 0; c < C; ++c) acc[c] = is_max ? -std::numeric_limits<acc_t>::infinity() : acc_t(0);
        for (int64_t c = 0; c < C; ++c) idx[c] = idx_t(-1);
      }
      T* __restrict yp = y + t * C;
      if (is_max) {
        int64_t* __restrict bi = ind + t * C;
        for (int64_t c = 0; c < C; ++c) yp[c] = T(acc[c]);
        for (int64_t c = 0; c < C; ++c) bi[c] = int64_t(idx[c]);
      } else {
        const acc_t d = acc_t(p.div(ah, aw, oh, ow));
        for (int64_t c = 0; c < C; ++c) yp[c] = T(acc[c] / d);
      }
    });
  });
}

// One plane of an NCHW gradient: gx[H*W] = scatter of gy[Ho*Wo].
template <typename T>
void scatter_plane(const T* gy, const int64_t* ind, T* gx, const PoolPlan& p, bool is_max) {
  using acc_t = at::opmath_type<T>;
  const PoolAxis &ah = p.h, &aw = p.w;
  const int64_t H = ah.in, W = aw.in, Ho = ah.out, Wo = aw.out;
  if (is_max) {
    // An index outside the plane is skipped: the forward gives -1 for a window that dilation puts
    // wholly in the padding, and the op may be handed any indices. (torch's CPU kernel gives such a
    // window an index past the plane and its backward writes there, corrupting the heap.)
    std::fill(gx, gx + H * W, T(0));
    for (int64_t o = 0; o < Ho * Wo; ++o) {
      const int64_t i = ind[o];
      if (i >= 0 && i < H * W) gx[i] = T(acc_t(gx[i]) + acc_t(gy[o]));
    }
    return;
  }
  std::vector<acc_t> acc(H * W, acc_t(0));
  for (int64_t oh = 0; oh < Ho; ++oh) {
    const int64_t h0 = ah.begin(oh), th = ah.taps(oh);
    for (int64_t ow = 0; ow < Wo; ++ow) {
      const int64_t w0 = aw.begin(ow), tw = aw.taps(ow);
      const acc_t g = acc_t(gy[oh * Wo + ow]) / acc_t(p.div(ah, aw, oh, ow));
      for (int64_t h = std::max<int64_t>(h0, 0); h < std::min(h0 + th, H); ++h) {
        acc_t* row = acc.data() + h * W;
        for (int64_t w = std::max<int64_t>(w0, 0); w < std::min(w0 + tw, W); ++w) row[w] += g;
      }
    }
  }
  for (int64_t i = 0; i < H * W; ++i) gx[i] = T(acc[i]);
}

template <typename T>
void backward_nchw(const T* gy, const int64_t* ind, T* gx, int64_t planes, const PoolPlan& p, bool is_max) {
  const int64_t HW = p.h.in * p.w.in, O = p.h.out * p.w.out;
  at::parallel_for(0, planes, 1, [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl)
      scatter_plane(gy + pl * O, is_max ? ind + pl * O : nullptr, gx + pl * HW, p, is_max);
  });
}

// channels_last: each task owns image n, channels [c0, c1).
template <typename T>
void backward_nhwc(const T* gy, const int64_t* ind, T* gx, int64_t N, int64_t C, const PoolPlan& p, bool is_max) {
  using acc_t = at::opmath_type<T>;
  const PoolAxis &ah = p.h, &aw = p.w;
  const int64_t H = ah.in, W = aw.in, Ho = ah.out, Wo = aw.out;
  constexpr int64_t CB = 64;
  const int64_t nblk = (C + CB - 1) / CB;
  // float / double accumulate straight into dX; half types through a float buffer.
  constexpr bool direct = std::is_same_v<acc_t, T>;
  at::parallel_for(0, N * nblk, 1, [&](int64_t b, int64_t e) {
    std::vector<acc_t> buf;
    each(b, e, [&](int64_t t) CONVX_ALWAYS_INLINE {
      const int64_t n = t / nblk, c0 = (t % nblk) * CB, cn = std::min(CB, C - c0);
      // acc[q * ldq + c]: pixel q, channel c0 + c
      acc_t* acc;
      int64_t ldq;
      if constexpr (direct) {
        acc = reinterpret_cast<acc_t*>(gx) + n * H * W * C + c0;
        ldq = C;
        for (int64_t q = 0; q < H * W; ++q) std::fill(acc + q * ldq, acc + q * ldq + cn, acc_t(0));
      } else {
        buf.assign(H * W * cn, acc_t(0));
        acc = buf.data();
        ldq = cn;
      }
      for (int64_t oh = 0; oh < Ho; ++oh) {
        const int64_t h0 = ah.begin(oh), th = ah.taps(oh);
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const int64_t o = ((n * Ho + oh) * Wo + ow) * C + c0;
          const T* __restrict g = gy + o;
          if (is_max) {
            const int64_t* id = ind + o;
            for (int64_t c = 0; c < cn; ++c)  // out-of-plane indices skipped, as in scatter_plane
              if (id[c] >= 0 && id[c] < H * W) acc[id[c] * ldq + c] += acc_t(g[c]);
            continue;
          }
          const int64_t w0 = aw.begin(ow), tw = aw.taps(ow);
          const acc_t inv = acc_t(1) / acc_t(p.div(ah, aw, oh, ow));
          for (int64_t h = std::max<int64_t>(h0, 0); h < std::min(h0 + th, H); ++h)
            for (int64_t w = std::max<int64_t>(w0, 0); w < std::min(w0 + tw, W); ++w) {
              acc_t* __restrict a = acc + (h * W + w) * ldq;
              for (int64_t c = 0; c < cn; ++c) a[c] += acc_t(g[c]) * inv;
            }
        }
      }
      if constexpr (!direct) {
        for (int64_t q = 0; q < H * W; ++q) {
          T* __restrict out = gx + ((n * H * W) + q) * C + c0;
          const acc_t* a = acc + q * cn;
          for (int64_t c = 0; c < cn; ++c) out[c] = T(a[c]);
        }
      }
    });
  });
}

// Global average (adaptive to 1x1, ResNet's head): a plain reduction per
// plane (NCHW) or per channel (channels_last), and a broadcast backward.
template <typename T>
void global_avg_forward(const T* x, T* y, int64_t N, int64_t C, int64_t HW, bool nhwc) {
  using acc_t = at::opmath_type<T>;
  if (!nhwc) {
    at::parallel_for(0, N * C, 16, [&](int64_t b, int64_t e) {
      for (int64_t pl = b; pl < e; ++pl) {
        const T* __restrict xp = x + pl * HW;
        acc_t s = 0;
        for (int64_t i = 0; i < HW; ++i) s += acc_t(xp[i]);
        y[pl] = T(s / acc_t(HW));
      }
    });
    return;
  }
  at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
    std::vector<acc_t> acc(C);
    for (int64_t n = b; n < e; ++n) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t q = 0; q < HW; ++q) {
        const T* __restrict xp = x + (n * HW + q) * C;
        acc_t* __restrict a = acc.data();
        for (int64_t c = 0; c < C; ++c) a[c] += acc_t(xp[c]);
      }
      for (int64_t c = 0; c < C; ++c) y[n * C + c] = T(acc[c] / acc_t(HW));
    }
  });
}

template <typename T>
void global_avg_backward(const T* gy, T* gx, int64_t N, int64_t C, int64_t HW, bool nhwc) {
  using acc_t = at::opmath_type<T>;
  at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      if (!nhwc) {
        for (int64_t c = 0; c < C; ++c) std::fill(gx + (n * C + c) * HW, gx + (n * C + c + 1) * HW,
                                                  T(acc_t(gy[n * C + c]) / acc_t(HW)));
      } else {
        for (int64_t q = 0; q < HW; ++q) {
          T* __restrict out = gx + (n * HW + q) * C;
          for (int64_t c = 0; c < C; ++c) out[c] = T(acc_t(gy[n * C + c]) / acc_t(HW));
        }
      }
    }
  });
}

bool is_global_avg(const PoolPlan& p, bool is_max) {
  return !is_max && p.h.adaptive && p.h.out == 1 && p.w.out == 1;
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
      if (is_global_avg(p, is_max))
        global_avg_forward<scalar_t>(x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), N, C, p.h.in * p.w.in,
                                     nhwc);
      else if (nhwc)
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
      if (is_global_avg(p, is_max))
        global_avg_backward<scalar_t>(gy.const_data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), N, C,
                                      p.h.in * p.w.in, nhwc);
      else if (nhwc)
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
