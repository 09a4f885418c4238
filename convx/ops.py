"""Fake (meta) kernels and autograd formulas for every ``torch.ops.convx`` op.

The schemas live in csrc/ops.cpp; the CPU and CUDA kernels register themselves
from csrc/cpu and csrc/cuda. Here each op gets:

* ``register_fake``: output shape, dtype and strides exactly as the real
  kernel returns them, so torch.compile and opcheck can trace it;
* ``register_autograd``: its backward, written with convx ops only, so every
  order of derivative (gradient penalties, gradgradcheck) runs convx kernels.
"""
import torch
from torch._prims_common import suggest_memory_format

_ops = torch.ops.convx


# ---------------------------------------------------------------- shapes


def _out_size(n, lo, hi, k, s, d):
    return (n + lo + hi - d * (k - 1) - 1) // s + 1


def _conv_memory_format(a, b):
    """torch's rule: the result is channels_last if either operand is."""
    if torch.channels_last in (suggest_memory_format(a), suggest_memory_format(b)):
        return torch.channels_last
    return torch.contiguous_format


def _empty(like, size, memory_format, dtype=None):
    t = like.new_empty(size, dtype=dtype or like.dtype)
    return t if memory_format == torch.contiguous_format else t.contiguous(memory_format=memory_format)


# ---------------------------------------------------------------- conv2d


@torch.library.register_fake("convx::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    torch._check(input.dim() == 4, lambda: f"convx.conv2d: expected 4D input, got {tuple(input.shape)}")
    torch._check(weight.dim() == 4, lambda: f"convx.conv2d: expected 4D weight, got {tuple(weight.shape)}")
    n, _, h, w = input.shape
    k, _, r, s = weight.shape
    ho = _out_size(h, padding[0], padding[1], r, stride[0], dilation[0])
    wo = _out_size(w, padding[2], padding[3], s, stride[1], dilation[1])
    return _empty(input, (n, k, ho, wo), _conv_memory_format(input, weight))


@torch.library.register_fake("convx::conv2d_backward_input")
def _conv2d_backward_input_fake(grad_output, weight, input_size, stride, padding, dilation, groups):
    return _empty(grad_output, tuple(input_size), _conv_memory_format(grad_output, weight))


@torch.library.register_fake("convx::conv2d_backward_weight")
def _conv2d_backward_weight_fake(grad_output, input, weight_size, stride, padding, dilation, groups, bias_defined):
    gw = _empty(grad_output, tuple(weight_size), _conv_memory_format(grad_output, input))
    gb = grad_output.new_empty((weight_size[0] if bias_defined else 0,))
    return gw, gb


def _conv2d_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.args = (list(stride), list(padding), list(dilation), groups)


def _conv2d_backward(ctx, grad):
    input, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    gx = gw = gb = None
    if need_x:
        gx = _ops.conv2d_backward_input(grad, weight, list(input.shape), *ctx.args)
    if need_w or need_b:
        gw, gb = _ops.conv2d_backward_weight(grad, input, list(weight.shape), *ctx.args, bool(need_b))
        gw = gw if need_w else None
        gb = gb if need_b else None
    return gx, gw, gb, None, None, None, None


torch.library.register_autograd("convx::conv2d", _conv2d_backward, setup_context=_conv2d_setup)


# d(grad_input)/d(grad_output) is the forward convolution; d/d(weight) is the
# weight gradient with the incoming gradient standing in for the input.
def _bwd_input_setup(ctx, inputs, output):
    grad_output, weight, input_size, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(grad_output, weight)
    ctx.args = (list(stride), list(padding), list(dilation), groups)


def _bwd_input_backward(ctx, ggx):
    grad_output, weight = ctx.saved_tensors
    d_gy = d_w = None
    if ctx.needs_input_grad[0]:
        d_gy = _ops.conv2d(ggx, weight, None, *ctx.args)
    if ctx.needs_input_grad[1]:
        d_w = _ops.conv2d_backward_weight(grad_output, ggx, list(weight.shape), *ctx.args, False)[0]
    return d_gy, d_w, None, None, None, None, None


torch.library.register_autograd("convx::conv2d_backward_input", _bwd_input_backward, setup_context=_bwd_input_setup)


def _bwd_weight_setup(ctx, inputs, output):
    grad_output, input, weight_size, stride, padding, dilation, groups, bias_defined = inputs
    ctx.save_for_backward(grad_output, input)
    ctx.args = (list(stride), list(padding), list(dilation), groups)
    ctx.bias_defined = bias_defined


def _bwd_weight_backward(ctx, ggw, ggb):
    grad_output, input = ctx.saved_tensors
    d_gy = d_x = None
    if ctx.needs_input_grad[0]:
        d_gy = _ops.conv2d(input, ggw, ggb if ctx.bias_defined else None, *ctx.args)
    if ctx.needs_input_grad[1]:
        d_x = _ops.conv2d_backward_input(grad_output, ggw, list(input.shape), *ctx.args)
    return d_gy, d_x, None, None, None, None, None, None


torch.library.register_autograd("convx::conv2d_backward_weight", _bwd_weight_backward, setup_context=_bwd_weight_setup)
