// Window arithmetic for every 2D pooling (max, average, adaptive), shared by
// the CPU and CUDA kernels (host + device), and the argument checks that run
// before any of them (wording follows aten/src/ATen/native/Pool.h).
//
// One axis of a pooling is a `PoolAxis`: output o reads the input positions
//   begin(o) + j * step(),  j = 0 .. taps(o) - 1   (those inside [0, in))
// Regular pooling: begin = o*stride - pad, taps = kernel, step = dilation.
// Adaptive pooling: begin = floor(o*in/out), end = ceil((o+1)*in/out), step 1.
//
// Backward passes are gathers: each input position asks which outputs read it
// (`touching`), so they need no atomics and are deterministic on every device.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <optional>

namespace convx {

struct PoolAxis {
  int64_t in, out, k, s, p, d;
  bool adaptive;

  C10_HOST_DEVICE int64_t begin(int64_t o) const { return adaptive ? (o * in) / out : o * s - p; }
  C10_HOST_DEVICE int64_t taps(int64_t o) const {
    return adaptive ? ((o + 1) * in + out - 1) / out - (o * in) / out : k;
  }
  C10_HOST_DEVICE int64_t step() const { return adaptive ? 1 : d; }
  // Outputs [lo, hi) that may read input position i (each still checked with reads()).
  C10_HOST_DEVICE void touching(int64_t i, int64_t& lo, int64_t& hi) const {
    if (adaptive) {
      lo = (i * out) / in;
      hi = ((i + 1) * out + in - 1) / in;
    } else {
      const int64_t a = i + p - (k - 1) * d;
      lo = a <= 0 ? 0 : (a + s - 1) / s;
      hi = (i + p) / s + 1;
    }
    lo = lo < 0 ? 0 : lo;
    hi = hi > out ? out : hi;
  }
  C10_HOST_DEVICE bool reads(int64_t o, int64_t i) const {
    const int64_t off = i - begin(o);
    if (off < 0 || off % step()) return false;
    return off / step() < taps(o);
  }
};

// Average pooling's divisor for output (oh, ow), exactly as torch computes it.
struct AvgDivisor {
  bool count_include_pad;
  int64_t divisor_override;  // 0: none

  C10_HOST_DEVICE int64_t operator()(const PoolAxis& h, const PoolAxis& w, int64_t oh, int64_t ow) const {
    if (divisor_override) return divisor_override;
    return extent(h, oh) * extent(w, ow);
  }
  // One axis's factor of the divisor (without an override): the window's
  // extent, inside the padded input or inside the input.
  C10_HOST_DEVICE int64_t extent(const PoolAxis& a, int64_t o) const {
    if (a.adaptive) return a.taps(o);
    int64_t s = o * a.s - a.p, e = s + a.k;
    e = e < a.in + a.p ? e : a.in + a.p;
    if (count_include_pad) return e - s;
    s = s > 0 ? s : 0;
    e = e < a.in ? e : a.in;
    return e - s;
  }
};

// torch's pooling_output_shape (with its ceil_mode rule: the last window
// must start inside the input or its left padding).
inline int64_t pool_out_size(int64_t in, int64_t k, int64_t pad, int64_t s, int64_t d, bool ceil_mode) {
  const int64_t num = in + 2 * pad - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  int64_t out = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;
  if (ceil_mode && (out - 1) * s >= in + pad) --out;
  return out;
}

struct Pool2dArgs {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
};

// Validates kernel/stride/padding/dilation and the input, returns (Ho, Wo).
inline std::pair<int64_t, int64_t> check_pool2d(c10::IntArrayRef in, const Pool2dArgs& a, bool ceil_mode,
                                                const char* name) {
  TORCH_CHECK(in.size() == 4, name, ": expected a 4D input [N, C, H, W], but got input of size ", in);
  TORCH_CHECK(a.sh != 0 && a.sw != 0, "stride should not be zero");
  TORCH_CHECK(a.kh > 0 && a.kw > 0, "kernel size should be greater than zero, but got kH: ", a.kh, " kW: ", a.kw);
  TORCH_CHECK(a.sh > 0 && a.sw > 0, "stride should be greater than zero, but got dH: ", a.sh, " dW: ", a.sw);
  TORCH_CHECK(a.dh > 0 && a.dw > 0, "dilation should be greater than zero, but got dilationH: ", a.dh,
              " dilationW: ", a.dw);
  TORCH_CHECK(a.ph >= 0 && a.pw >= 0, "pad must be non-negative, but got padH: ", a.ph, " padW: ", a.pw);
  TORCH_CHECK(a.ph <= ((a.kh - 1) * a.dh + 1) / 2 && a.pw <= ((a.kw - 1) * a.dw + 1) / 2,
              "pad should be at most half of effective kernel size, but got pad=", a.ph > a.pw ? a.ph : a.pw,
              ", kernel_size=", a.ph > a.pw ? a.kh : a.kw, " and dilation=", a.ph > a.pw ? a.dh : a.dw);
  // torch's second rule (it matters for max pooling with dilation): the kernel itself, not dilated.
  TORCH_CHECK(a.pw <= a.kw / 2 && a.ph <= a.kh / 2, "pad should be smaller than or equal to half of kernel size, but ",
              "got padW = ", a.pw, ", padH = ", a.ph, ", kW = ", a.kw, ", kH = ", a.kh);
  TORCH_CHECK(in[1] > 0 && in[2] > 0 && in[3] > 0,
              "Expected 3D or 4D (batch mode) tensor with optional 0 dim batch size for input, but got:", in);
  const int64_t ho = pool_out_size(in[2], a.kh, a.ph, a.sh, a.dh, ceil_mode);
  const int64_t wo = pool_out_size(in[3], a.kw, a.pw, a.sw, a.dw, ceil_mode);
  TORCH_CHECK(ho >= 1 && wo >= 1, "Given input size: (", in[1], "x", in[2], "x", in[3],
              "). Calculated output size: (", in[1], "x", ho, "x", wo, "). Output size is too small");
  return {ho, wo};
}

inline Pool2dArgs pool2d_args(c10::IntArrayRef kernel, c10::IntArrayRef stride, c10::IntArrayRef padding,
                              c10::IntArrayRef dilation) {
  auto two = [](c10::IntArrayRef v, const char* what) {
    TORCH_CHECK(v.size() == 2, "convx pooling: expected ", what, " as 2 values, but got ", v);
    return v;
  };
  two(kernel, "kernel_size");
  two(stride, "stride");
  two(padding, "padding");
  two(dilation, "dilation");
  return {kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1]};
}

inline void check_adaptive(c10::IntArrayRef in, c10::IntArrayRef out, const char* name) {
  TORCH_CHECK(in.size() == 4, name, "(): Expected 3D or 4D tensor, but got: ", in);
  TORCH_CHECK(out.size() == 2, name, ": output_size must be 2");
  TORCH_CHECK(out[0] >= 0 && out[1] >= 0, name, ": elements of output_size must be greater than or equal to 0 ",
              "but received {", out[0], ", ", out[1], "}");
  for (int i = 1; i < 4; ++i) {
    TORCH_CHECK(in[i] > 0, name, "(): Expected input to have non-zero size for non-batch dimensions, but input has ",
                "sizes ", in, " with dimension ", i, " being empty");
  }
}

inline PoolAxis pool_axis(int64_t in, int64_t out, int64_t k, int64_t s, int64_t p, int64_t d) {
  return {in, out, k, s, p, d, false};
}
inline PoolAxis adaptive_axis(int64_t in, int64_t out) { return {in, out, 0, 1, 0, 1, true}; }

}  // namespace convx
