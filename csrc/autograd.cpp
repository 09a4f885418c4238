// Autograd for the ops a training step calls most (conv2d, conv2d_fused,
// batch_norm, add_relu, the four poolings), registered in C++ (TORCH_LIBRARY_IMPL(convx,
// Autograd, m)): no Python runs per call, forward or backward. Python's
// register_autograd cost about 20 us per forward and 70 us per backward of a
// convolution, more than the kernels of a small network's layers
// (ResNet-20 on 8x8 images; see README "Measured").
//
// The formulas are those convx/ops.py documents, written with convx ops only:
// the backward ops go through the dispatcher with autograd when the graph of
// the backward is being recorded (create_graph: double backward, gradient
// penalties; their own formulas stay in convx/ops.py), and below autograd
// otherwise (nothing to record, so nothing to pay). The fake kernels stay in
// Python; torch.compile traces through these functions like any other.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace convx {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using at::IntArrayRef;
using at::Tensor;
using OptTensor = std::optional<Tensor>;

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using Conv2dSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, IntArrayRef, IntArrayRef, IntArrayRef,
                         int64_t);
using Conv2dFusedSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, IntArrayRef,
                              IntArrayRef, IntArrayRef, int64_t, bool);
using BwdInputSig = Tensor(const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, int64_t);
using BwdWeightSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef,
                                                IntArrayRef, int64_t, bool);
using BatchNormSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                            const OptTensor&, double, bool, bool);
using BatchNormBwdSig = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                                   const Tensor&, const OptTensor&, const OptTensor&,
                                                                   double, bool, bool, std::array<bool, 4>);
using AddReluSig = Tensor(const Tensor&, const Tensor&);

// A backward op called from a backward formula: through autograd when the
// backward itself is being recorded, below it otherwise.
template <typename Sig, typename... Args>
decltype(auto) call_in_backward(const c10::TypedOperatorHandle<Sig>& h, Args&&... args) {
  if (at::GradMode::is_enabled()) return h.call(std::forward<Args>(args)...);
  at::AutoDispatchBelowADInplaceOrView below;
  return h.call(std::forward<Args>(args)...);
}

// Whether a call records anything: grad mode on with an input that requires a gradient, or an
// input carrying a forward-mode tangent. When not (inference, torch.no_grad, frozen layers), the
// *_autograd functions below call the op beneath autograd at once: a Function's context and its
// saved data cost more than a small op (batch_norm on 8 channels, no_grad: 6.2 -> 4.5 us an op
// call, 3.1 with batch norm's grain below it; torch's 2.8).
inline const Tensor& tensor_of(const Tensor& t) { return t; }
inline const Tensor& tensor_of(const OptTensor& t) {
  static const Tensor none;
  return t.has_value() ? *t : none;
}
template <typename... Ts>
bool records(const Ts&... ts) {
  const bool graph = at::GradMode::is_enabled() && ((tensor_of(ts).defined() && tensor_of(ts).requires_grad()) || ...);
  return graph || ((tensor_of(ts).defined() && tensor_of(ts)._fw_grad(0).defined()) || ...);
}
template <typename Sig, typename... Args>
decltype(auto) call_below(const c10::TypedOperatorHandle<Sig>& h, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView below;
  return h.call(std::forward<Args>(args)...);
}

// The gradient with the weight's strides (the layout contract AccumulateGrad and
// DDP's buckets check exactly): convx/ops.py's _strides_of.
Tensor strides_of(const Tensor& g, const Tensor& w) {
  if (g.strides() == w.strides() || g.sizes() != w.sizes()) return g;
  for (auto mf : {at::MemoryFormat::Contiguous, at::MemoryFormat::ChannelsLast})
    if (g.is_contiguous(mf) && w.is_contiguous(mf)) return g.as_strided(w.sizes(), w.strides());
  if (w.dim() == 4 && w.is_contiguous(at::MemoryFormat::ChannelsLast))
    return g.contiguous(at::MemoryFormat::ChannelsLast);
  return g;
}

// needs_input_grad counts the tensors given (an absent optional has no edge):
// whether forward argument `arg` needs a gradient, given which arguments are
// tensors (bit i of `present`: argument i holds a tensor).
bool needs(AutogradContext* ctx, int64_t present, int arg) {
  if (!((present >> arg) & 1)) return false;
  return ctx->needs_input_grad(__builtin_popcountll(uint64_t(present) & ((uint64_t(1) << arg) - 1)));
}

bool given(const OptTensor& t) { return t.has_value() && t->defined(); }

int64_t present_mask(std::initializer_list<bool> given) {
  int64_t m = 0, i = 0;
  for (bool b : given) m |= int64_t(b) << i++;
  return m;
}

struct ConvArgs {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups;
};

void save_args(AutogradContext* ctx, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  ctx->saved_data["stride"] = stride.vec();
  ctx->saved_data["padding"] = padding.vec();
  ctx->saved_data["dilation"] = dilation.vec();
  ctx->saved_data["groups"] = groups;
}

ConvArgs load_args(AutogradContext* ctx) {
  return {ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
          ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["groups"].toInt()};
}

// (grad_input, grad_weight, grad_bias) of conv2d, each undefined where not needed.
std::array<Tensor, 3> conv2d_grads(const Tensor& grad, const Tensor& input, const Tensor& weight, const ConvArgs& a,
                                   bool need_x, bool need_w, bool need_b) {
  std::array<Tensor, 3> out;
  if (input.size(1) == 0) {  // no input channels: the output was empty (torch's rule), so are the gradients
    if (need_x) out[0] = at::zeros(input.sizes(), input.options());
    if (need_w) out[1] = at::zeros_like(weight);
    if (need_b) out[2] = at::zeros({weight.size(0)}, weight.options());
    return out;
  }
  static const auto bwd_input = op<BwdInputSig>("convx::conv2d_backward_input");
  static const auto bwd_weight = op<BwdWeightSig>("convx::conv2d_backward_weight");
  if (need_x)
    out[0] = call_in_backward(bwd_input, grad, weight, input.sizes(), a.stride, a.padding, a.dilation, a.groups);
  if (need_w || need_b) {
    auto [gw, gb] = call_in_backward(bwd_weight, grad, input, weight.sizes(), a.stride, a.padding, a.dilation,
                                     a.groups, need_b);
    if (need_w) out[1] = strides_of(gw, weight);
    if (need_b) out[2] = gb;
  }
  return out;
}

struct Conv2dFunction : torch::autograd::Function<Conv2dFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight, const OptTensor& bias,
                        IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
    static const auto h = op<Conv2dSig>("convx::conv2d");
    Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      y = h.call(input, weight, bias, stride, padding, dilation, groups);
    }
    ctx->save_for_backward({input, weight});
    save_args(ctx, stride, padding, dilation, groups);
    ctx->saved_data["present"] = present_mask({true, true, given(bias)});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t present = ctx->saved_data["present"].toInt();
    auto g = conv2d_grads(grads[0], saved[0], saved[1], load_args(ctx), needs(ctx, present, 0),
                          needs(ctx, present, 1), needs(ctx, present, 2));
    return {g[0], g[1], g[2], Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor conv2d_autograd(const Tensor& input, const Tensor& weight, const OptTensor& bias, IntArrayRef stride,
                       IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  static const auto h = op<Conv2dSig>("convx::conv2d");
  if (!records(input, weight, bias)) return call_below(h, input, weight, bias, stride, padding, dilation, groups);
  return Conv2dFunction::apply(input, weight, bias, stride, padding, dilation, groups);
}

// relu(conv + bias + residual): the ReLU's mask, then the convolution's own
// backward; the residual gets the masked gradient as it is.
struct Conv2dFusedFunction : torch::autograd::Function<Conv2dFusedFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight, const OptTensor& bias,
                        const OptTensor& residual, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                        int64_t groups, bool relu) {
    static const auto h = op<Conv2dFusedSig>("convx::conv2d_fused");
    Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      y = h.call(input, weight, bias, residual, stride, padding, dilation, groups, relu);
    }
    ctx->save_for_backward({input, weight, relu ? y : Tensor()});
    save_args(ctx, stride, padding, dilation, groups);
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["present"] = present_mask({true, true, given(bias), given(residual)});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t present = ctx->saved_data["present"].toInt();
    Tensor grad = grads[0];
    if (ctx->saved_data["relu"].toBool()) grad = grad.mul(saved[2].gt(0).to(grad.scalar_type()));
    auto g = conv2d_grads(grad, saved[0], saved[1], load_args(ctx), needs(ctx, present, 0),
                          needs(ctx, present, 1), needs(ctx, present, 2));
    return {g[0], g[1], g[2], needs(ctx, present, 3) ? grad : Tensor(), Tensor(), Tensor(), Tensor(), Tensor(),
            Tensor()};
  }
};

Tensor conv2d_fused_autograd(const Tensor& input, const Tensor& weight, const OptTensor& bias,
                             const OptTensor& residual, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                             int64_t groups, bool relu) {
  static const auto h = op<Conv2dFusedSig>("convx::conv2d_fused");
  if (!records(input, weight, bias, residual))
    return call_below(h, input, weight, bias, residual, stride, padding, dilation, groups, relu);
  return Conv2dFusedFunction::apply(input, weight, bias, residual, stride, padding, dilation, groups, relu);
}

// Batch norm (with the fused residual and ReLU): one backward kernel gives all
// four gradients; mean and var come from batch_norm_stats (not differentiated:
// in training the backward accounts for the batch statistics).
struct BatchNormFunction : torch::autograd::Function<BatchNormFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& mean, const Tensor& var,
                        const OptTensor& weight, const OptTensor& bias, const OptTensor& residual, double eps,
                        bool training, bool relu) {
    static const auto h = op<BatchNormSig>("convx::batch_norm");
    Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      y = h.call(input, mean, var, weight, bias, residual, eps, training, relu);
    }
    ctx->save_for_backward({input, mean, var, weight.value_or(Tensor()), relu ? y : Tensor()});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["training"] = training;
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["present"] =
        present_mask({true, true, true, given(weight), given(bias), given(residual)});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto h = op<BatchNormBwdSig>("convx::batch_norm_backward");
    const auto s = ctx->get_saved_variables();
    const int64_t present = ctx->saved_data["present"].toInt();
    const bool nx = needs(ctx, present, 0), nw = needs(ctx, present, 3), nb = needs(ctx, present, 4),
               nr = needs(ctx, present, 5);
    auto opt = [](const Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); };
    auto [gx, gw, gb, gr] =
        call_in_backward(h, grads[0], s[0], s[1], s[2], opt(s[3]), opt(s[4]), ctx->saved_data["eps"].toDouble(),
                         ctx->saved_data["training"].toBool(), ctx->saved_data["relu"].toBool(),
                         std::array<bool, 4>{nx, nw, nb, nr});
    return {nx ? gx : Tensor(), Tensor(), Tensor(), nw ? gw : Tensor(), nb ? gb : Tensor(), nr ? gr : Tensor(),
            Tensor(), Tensor(), Tensor()};
  }
};

Tensor batch_norm_autograd(const Tensor& input, const Tensor& mean, const Tensor& var, const OptTensor& weight,
                           const OptTensor& bias, const OptTensor& residual, double eps, bool training, bool relu) {
  static const auto h = op<BatchNormSig>("convx::batch_norm");
  if (!records(input, mean, var, weight, bias, residual))
    return call_below(h, input, mean, var, weight, bias, residual, eps, training, relu);
  return BatchNormFunction::apply(input, mean, var, weight, bias, residual, eps, training, relu);
}

struct AddReluFunction : torch::autograd::Function<AddReluFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& self, const Tensor& other) {
    static const auto h = op<AddReluSig>("convx::add_relu");
    Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      y = h.call(self, other);
    }
    ctx->save_for_backward({y});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto h = op<AddReluSig>("convx::add_relu_backward");
    const auto g = call_in_backward(h, grads[0], ctx->get_saved_variables()[0]);
    return {ctx->needs_input_grad(0) ? g : Tensor(), ctx->needs_input_grad(1) ? g : Tensor()};
  }
};

Tensor add_relu_autograd(const Tensor& self, const Tensor& other) {
  static const auto h = op<AddReluSig>("convx::add_relu");
  if (!records(self, other)) return call_below(h, self, other);
  return AddReluFunction::apply(self, other);
}

// Pooling. The input gradient takes the input's memory format, as torch's
// does; the backward kernels write in their grad_output's format, so that is
// aligned first (a no-op in the usual case, where the gradient arrives in the
// output's format; a 1x1 output is both layouts at once, hence the second
// alignment). Indices are not differentiable and their (absent) gradient is
// not materialised: a zero int64 tensor the size of the output per call.
using MaxPoolSig = std::tuple<Tensor, Tensor>(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef,
                                              bool);
using MaxPoolBwdSig = Tensor(const Tensor&, const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef,
                             IntArrayRef, bool);
using AvgPoolSig = Tensor(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, bool, bool, std::optional<int64_t>);
using AvgPoolBwdSig = Tensor(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, bool, bool,
                             std::optional<int64_t>);
using AdaptiveMaxSig = std::tuple<Tensor, Tensor>(const Tensor&, IntArrayRef);
using AdaptiveMaxBwdSig = Tensor(const Tensor&, const Tensor&, IntArrayRef);
using AdaptiveAvgSig = Tensor(const Tensor&, IntArrayRef);
using AdaptiveAvgBwdSig = Tensor(const Tensor&, IntArrayRef);

void save_pool_input(AutogradContext* ctx, const Tensor& input) {
  ctx->set_materialize_grads(false);
  ctx->saved_data["input_size"] = input.sizes().vec();
  ctx->saved_data["channels_last"] = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

at::MemoryFormat pool_format(AutogradContext* ctx) {
  return ctx->saved_data["channels_last"].toBool() ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

struct MaxPool2dFunction : torch::autograd::Function<MaxPool2dFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, IntArrayRef kernel, IntArrayRef stride,
                               IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
    static const auto h = op<MaxPoolSig>("convx::max_pool2d");
    Tensor y, ind;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(y, ind) = h.call(input, kernel, stride, padding, dilation, ceil_mode);
    }
    ctx->mark_non_differentiable({ind});
    ctx->save_for_backward({ind});
    save_pool_input(ctx, input);
    ctx->saved_data["kernel"] = kernel.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["ceil_mode"] = ceil_mode;
    return {y, ind};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined() || !ctx->needs_input_grad(0)) return {Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    static const auto h = op<MaxPoolBwdSig>("convx::max_pool2d_backward");
    const auto mf = pool_format(ctx);
    auto& d = ctx->saved_data;
    auto gx = call_in_backward(h, grads[0].contiguous(mf), ctx->get_saved_variables()[0],
                               d["input_size"].toIntVector(), d["kernel"].toIntVector(), d["stride"].toIntVector(),
                               d["padding"].toIntVector(), d["dilation"].toIntVector(), d["ceil_mode"].toBool());
    return {gx.contiguous(mf), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

std::tuple<Tensor, Tensor> max_pool2d_autograd(const Tensor& input, IntArrayRef kernel, IntArrayRef stride,
                                               IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  static const auto h = op<MaxPoolSig>("convx::max_pool2d");
  if (!records(input)) return call_below(h, input, kernel, stride, padding, dilation, ceil_mode);
  auto out = MaxPool2dFunction::apply(input, kernel, stride, padding, dilation, ceil_mode);
  return {out[0], out[1]};
}

// max_pool2d_values: the values alone when no gradient is recorded; with one, max_pool2d's
// function (its indices feed the backward) and its values.
using MaxPoolValuesSig = Tensor(const Tensor&, IntArrayRef, IntArrayRef, IntArrayRef, IntArrayRef, bool);
Tensor max_pool2d_values_autograd(const Tensor& input, IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding,
                                  IntArrayRef dilation, bool ceil_mode) {
  static const auto h = op<MaxPoolValuesSig>("convx::max_pool2d_values");
  if (!records(input)) return call_below(h, input, kernel, stride, padding, dilation, ceil_mode);
  return MaxPool2dFunction::apply(input, kernel, stride, padding, dilation, ceil_mode)[0];
}

struct AdaptiveMaxPool2dFunction : torch::autograd::Function<AdaptiveMaxPool2dFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, IntArrayRef output_size) {
    static const auto h = op<AdaptiveMaxSig>("convx::adaptive_max_pool2d");
    Tensor y, ind;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      std::tie(y, ind) = h.call(input, output_size);
    }
    ctx->mark_non_differentiable({ind});
    ctx->save_for_backward({ind});
    save_pool_input(ctx, input);
    return {y, ind};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined() || !ctx->needs_input_grad(0)) return {Tensor(), Tensor()};
    static const auto h = op<AdaptiveMaxBwdSig>("convx::adaptive_max_pool2d_backward");
    const auto mf = pool_format(ctx);
    auto gx = call_in_backward(h, grads[0].contiguous(mf), ctx->get_saved_variables()[0],
                               ctx->saved_data["input_size"].toIntVector());
    return {gx.contiguous(mf), Tensor()};
  }
};

std::tuple<Tensor, Tensor> adaptive_max_pool2d_autograd(const Tensor& input, IntArrayRef output_size) {
  static const auto h = op<AdaptiveMaxSig>("convx::adaptive_max_pool2d");
  if (!records(input)) return call_below(h, input, output_size);
  auto out = AdaptiveMaxPool2dFunction::apply(input, output_size);
  return {out[0], out[1]};
}

struct AvgPool2dFunction : torch::autograd::Function<AvgPool2dFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, IntArrayRef kernel, IntArrayRef stride,
                        IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                        std::optional<int64_t> divisor_override) {
    static const auto h = op<AvgPoolSig>("convx::avg_pool2d");
    Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      y = h.call(input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override);
    }
    save_pool_input(ctx, input);
    ctx->saved_data["kernel"] = kernel.vec();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["ceil_mode"] = ceil_mode;
    ctx->saved_data["count_include_pad"] = count_include_pad;
    ctx->saved_data["divisor_override"] = divisor_override;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined() || !ctx->needs_input_grad(0))
      return {Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
    static const auto h = op<AvgPoolBwdSig>("convx::avg_pool2d_backward");
    const auto mf = pool_format(ctx);
    auto& d = ctx->saved_data;
    auto gx = call_in_backward(h, grads[0].contiguous(mf), d["input_size"].toIntVector(), d["kernel"].toIntVector(),
                               d["stride"].toIntVector(), d["padding"].toIntVector(), d["ceil_mode"].toBool(),
                               d["count_include_pad"].toBool(), d["divisor_override"].toOptional<int64_t>());
    return {gx.contiguous(mf), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor avg_pool2d_autograd(const Tensor& input, IntArrayRef kernel, IntArrayRef stride, IntArrayRef padding,
                           bool ceil_mode, bool count_include_pad, std::optional<int64_t> divisor_override) {
  static const auto h = op<AvgPoolSig>("convx::avg_pool2d");
  if (!records(input)) return call_below(h, input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override);
  return AvgPool2dFunction::apply(input, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override);
}

struct AdaptiveAvgPool2dFunction : torch::autograd::Function<AdaptiveAvgPool2dFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, IntArrayRef output_size) {
    static const auto h = op<AdaptiveAvgSig>("convx::adaptive_avg_pool2d");
    Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      y = h.call(input, output_size);
    }
    save_pool_input(ctx, input);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined() || !ctx->needs_input_grad(0)) return {Tensor(), Tensor()};
    static const auto h = op<AdaptiveAvgBwdSig>("convx::adaptive_avg_pool2d_backward");
    const auto mf = pool_format(ctx);
    auto gx = call_in_backward(h, grads[0].contiguous(mf), ctx->saved_data["input_size"].toIntVector());
    return {gx.contiguous(mf), Tensor()};
  }
};

Tensor adaptive_avg_pool2d_autograd(const Tensor& input, IntArrayRef output_size) {
  static const auto h = op<AdaptiveAvgSig>("convx::adaptive_avg_pool2d");
  if (!records(input)) return call_below(h, input, output_size);
  return AdaptiveAvgPool2dFunction::apply(input, output_size);
}

}  // namespace
}  // namespace convx

TORCH_LIBRARY_IMPL(convx, Autograd, m) {
  m.impl("max_pool2d", &convx::max_pool2d_autograd);
  m.impl("max_pool2d_values", &convx::max_pool2d_values_autograd);
  m.impl("adaptive_max_pool2d", &convx::adaptive_max_pool2d_autograd);
  m.impl("avg_pool2d", &convx::avg_pool2d_autograd);
  m.impl("adaptive_avg_pool2d", &convx::adaptive_avg_pool2d_autograd);
  m.impl("conv2d", &convx::conv2d_autograd);
  m.impl("conv2d_fused", &convx::conv2d_fused_autograd);
  m.impl("batch_norm", &convx::batch_norm_autograd);
  m.impl("add_relu", &convx::add_relu_autograd);
}
