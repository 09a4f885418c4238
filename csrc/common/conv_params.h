// Output-size arithmetic and argument checks shared by the CPU and CUDA
// convolution kernels. Everything here runs before any kernel is launched, so
// a bad argument raises with nothing written.
//
// Messages follow torch's wording (aten/src/ATen/native/Convolution.cpp) so a
// user who switches from torch.nn.functional.conv2d sees the error they know.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/MemoryFormat.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <vector>

namespace convx {

// All padding is explicit and may be asymmetric (TensorFlow-style 'SAME' with
// stride > 1 pads more at the bottom/right); Python turns 'same'/'valid'/int/
// tuple padding into these four numbers.
struct Conv2dParams {
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_t = 0, pad_b = 0, pad_l = 0, pad_r = 0;
  int64_t dil_h = 1, dil_w = 1;
  int64_t groups = 1;

  bool is_pointwise_identity(int64_t R, int64_t S) const {
    // 1x1, stride 1, no padding: the input itself is the im2col matrix.
    return R == 1 && S == 1 && stride_h == 1 && stride_w == 1 && pad_t == 0 &&
        pad_b == 0 && pad_l == 0 && pad_r == 0;
  }
};

inline std::string sizes_str(c10::IntArrayRef s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

inline Conv2dParams make_conv2d_params(
    c10::IntArrayRef stride,
    c10::IntArrayRef padding,
    c10::IntArrayRef dilation,
    int64_t groups) {
  TORCH_CHECK(
      stride.size() == 2,
      "expected stride to be a list of 2 values to match the convolution dimensions, but got stride=",
      stride);
  TORCH_CHECK(
      padding.size() == 4,
      "convx: expected padding as 4 values [top, bottom, left, right], but got padding=",
      padding);
  TORCH_CHECK(
      dilation.size() == 2,
      "expected dilation to be a list of 2 values to match the convolution dimensions, but got dilation=",
      dilation);
  for (auto p : padding) {
    TORCH_CHECK(p >= 0, "negative padding is not supported");
  }
  for (auto s : stride) {
    TORCH_CHECK(s > 0, "non-positive stride is not supported");
  }
  for (auto d : dilation) {
    TORCH_CHECK(d > 0, "dilation should be greater than zero, but got ", dilation);
  }
  TORCH_CHECK(groups > 0, "non-positive groups is not supported");
  Conv2dParams p;
  p.stride_h = stride[0];
  p.stride_w = stride[1];
  p.pad_t = padding[0];
  p.pad_b = padding[1];
  p.pad_l = padding[2];
  p.pad_r = padding[3];
  p.dil_h = dilation[0];
  p.dil_w = dilation[1];
  p.groups = groups;
  return p;
}

// Output extent of one spatial axis. Callers check first that the padded
// input is at least the dilated kernel, so the numerator is never negative.
inline int64_t conv_out_size(int64_t in, int64_t pad_lo, int64_t pad_hi, int64_t k, int64_t stride, int64_t dil) {
  return (in + pad_lo + pad_hi - dil * (k - 1) - 1) / stride + 1;
}

inline void check_padded_size(int64_t H, int64_t W, int64_t R, int64_t S, const Conv2dParams& p) {
  const int64_t ph = H + p.pad_t + p.pad_b, pw = W + p.pad_l + p.pad_r;
  const int64_t kh = p.dil_h * (R - 1) + 1, kw = p.dil_w * (S - 1) + 1;
  TORCH_CHECK(
      ph >= kh && pw >= kw,
      "Calculated padded input size per channel: (", ph, " x ", pw, "). Kernel size: (", kh, " x ", kw,
      "). Kernel size can't be greater than actual input size");
}

// torch convolves empty batches and zero channels, not empty images (even padded ones).
inline void check_not_empty_spatially(c10::IntArrayRef in) {
  TORCH_CHECK(
      in.size() != 4 || in[0] == 0 || in[1] == 0 || (in[2] > 0 && in[3] > 0),
      "Only zero batch or zero channel inputs are supported, but got input shape: ", in);
}

inline void check_same_device_and_dtype(const at::Tensor& input, const at::Tensor& weight, const char* weight_name) {
  TORCH_CHECK(
      input.device() == weight.device(),
      "Expected ", weight_name, " to be on the same device as input (", input.device(), "), but got ",
      weight_name, " on ", weight.device());
  TORCH_CHECK(
      input.scalar_type() == weight.scalar_type(),
      "expected scalar type ", input.scalar_type(), " but found ", weight.scalar_type(),
      " (convx: input and ", weight_name, " must have the same dtype)");
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(
      at::isFloatingType(t.scalar_type()),
      "convx: expected ", name, " to be a floating point tensor, but got dtype ", t.scalar_type());
}

// Shapes of a forward convolution, validated. The same struct describes the
// two backward passes, which are handed the forward's input/weight sizes.
struct Conv2dShape {
  int64_t N, C, H, W;   // input  [N, C, H, W]
  int64_t K, R, S;      // weight [K, C / groups, R, S]
  int64_t Ho, Wo;       // output [N, K, Ho, Wo]
  int64_t Cg, Kg;       // channels per group
};

inline Conv2dShape conv2d_shape(c10::IntArrayRef in, c10::IntArrayRef wt, const Conv2dParams& p) {
  TORCH_CHECK(
      in.size() == 4, "convx.conv2d: expected 4D (batched) input [N, C, H, W], but got input of size: ", in);
  TORCH_CHECK(
      wt.size() == 4, "convx.conv2d: expected 4D weight [K, C / groups, R, S], but got weight of size: ", wt);
  check_not_empty_spatially(in);
  Conv2dShape s;
  s.N = in[0], s.C = in[1], s.H = in[2], s.W = in[3];
  s.K = wt[0], s.R = wt[2], s.S = wt[3];
  TORCH_CHECK(
      s.K % p.groups == 0, "Given groups=", p.groups, ", expected weight to be divisible by ", p.groups,
      " at dimension 0, but got weight of size [", wt, "] instead");
  TORCH_CHECK(
      wt[1] * p.groups == s.C, "Given groups=", p.groups, ", weight of size ", wt, ", expected input", in,
      " to have ", wt[1] * p.groups, " channels, but got ", s.C, " channels instead");
  // Zero input channels (then the weight's dimension 1 is 0 too) give the bias, as torch's do.
  TORCH_CHECK(s.K > 0 && s.R > 0 && s.S > 0 && (wt[1] > 0 || s.C == 0), "convx.conv2d: weight has a zero dimension: ",
              wt);
  check_padded_size(s.H, s.W, s.R, s.S, p);
  s.Ho = conv_out_size(s.H, p.pad_t, p.pad_b, s.R, p.stride_h, p.dil_h);
  s.Wo = conv_out_size(s.W, p.pad_l, p.pad_r, s.S, p.stride_w, p.dil_w);
  s.Cg = s.C / p.groups;
  s.Kg = s.K / p.groups;
  return s;
}

// torch names dtypes in this message by their C++ type ("float", "c10::Half").
inline const char* cpp_type_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float";
    case at::kDouble: return "double";
    case at::kHalf: return "c10::Half";
    case at::kBFloat16: return "c10::BFloat16";
    default: return c10::toString(t);
  }
}

inline void check_bias(const std::optional<at::Tensor>& bias, const at::Tensor& input, const at::Tensor& weight) {
  if (!bias.has_value() || !bias->defined()) return;
  TORCH_CHECK(
      bias->dim() == 1 && bias->size(0) == weight.size(0), "Given weight of size ", weight.sizes(),
      ", expected bias to be 1-dimensional with ", weight.size(0), " elements, but got bias of size ",
      bias->sizes(), " instead");
  TORCH_CHECK(
      bias->scalar_type() == input.scalar_type(), "Input type (", cpp_type_name(input.scalar_type()),
      ") and bias type (", cpp_type_name(bias->scalar_type()), ") should be the same");
  TORCH_CHECK(
      bias->device() == input.device(), "Expected bias to be on the same device as input (", input.device(),
      "), but got bias on ", bias->device());
}

// The gradient given to a backward op must have the forward's output shape.
inline void check_grad_output(const at::Tensor& grad, const Conv2dShape& s) {
  TORCH_CHECK(
      grad.dim() == 4 && grad.size(0) == s.N && grad.size(1) == s.K && grad.size(2) == s.Ho && grad.size(3) == s.Wo,
      "convx.conv2d backward: expected grad_output of size [", s.N, ", ", s.K, ", ", s.Ho, ", ", s.Wo,
      "], but got ", grad.sizes());
}

// torch's rule (cudnn_conv_suggest_memory_format / mkldnn_conv_use_channels_last):
// the result is channels_last if either operand is.
inline c10::MemoryFormat conv_memory_format(const at::Tensor& a, const at::Tensor& b) {
  const auto cl = c10::MemoryFormat::ChannelsLast;
  return (a.suggest_memory_format() == cl || b.suggest_memory_format() == cl) ? cl : c10::MemoryFormat::Contiguous;
}

}  // namespace convx
