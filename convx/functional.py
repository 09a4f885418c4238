"""Functional API: the same signatures as ``torch.nn.functional``.

Shapes: ``input`` is ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``;
``weight`` is ``(C_out, C_in / groups, kH, kW)``; ``bias`` is ``(C_out,)``.
"""
import functools
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

_ops = torch.ops.convx

_IntOr2 = Union[int, Sequence[int]]


def _require_tensor(t, name: str, fn: str):
    """torch's TypeError for a non-tensor where a tensor belongs (its functional ops are C++ bindings)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}(): argument '{name}' must be Tensor, not {type(t).__name__}")


def _pair(v, name: str) -> List[int]:
    if isinstance(v, int):
        return [v, v]
    v = list(v)
    if len(v) == 1:
        return [int(v[0]), int(v[0])]
    if len(v) != 2:
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of 2 values to match the "
            f"convolution dimensions, but got {name}={v}")
    return [int(v[0]), int(v[1])]


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> Tuple[int, int]:
    """(before, after) padding of one axis for padding='same'.

    With stride 1 this is torch's rule (total dilation*(kernel-1), the odd
    element after). With stride > 1 it is TensorFlow's 'SAME': the output has
    ceil(size / stride) elements and the padding needed for that is split with
    the extra element after. torch.nn.functional.conv2d rejects stride > 1;
    convx accepts it.
    """
    eff = dilation * (kernel - 1) + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def conv2d_padding(padding, input_hw: Sequence[int], kernel_hw: Sequence[int], stride: Sequence[int],
                   dilation: Sequence[int]) -> List[int]:
    """Any padding torch accepts (int, pair, 'valid', 'same') as [top, bottom, left, right]."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding == "same":
            t, b = same_padding(input_hw[0], kernel_hw[0], stride[0], dilation[0])
            l, r = same_padding(input_hw[1], kernel_hw[1], stride[1], dilation[1])
            return [t, b, l, r]
        raise RuntimeError(f"Invalid padding string: '{padding}'")
    ph, pw = _pair(padding, "padding")
    return [ph, ph, pw, pw]


def _batched(input: Tensor, name: str) -> Tuple[Tensor, bool]:
    if input.dim() not in (3, 4):
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to {name}, but got input of size: {list(input.shape)}")
    if input.dim() == 3:
        return input.unsqueeze(0), True
    return input, False


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: _IntOr2 = 1,
           padding: Union[str, _IntOr2] = 0, dilation: _IntOr2 = 1, groups: int = 1, *,
           residual: Optional[Tensor] = None, relu: bool = False) -> Tensor:
    """2D convolution, ``torch.nn.functional.conv2d``'s signature and semantics.

    input ``(N, C_in, H, W)`` or ``(C_in, H, W)`` -> ``(N, C_out, H_out, W_out)``
    (or unbatched), with ``H_out = (H + pad_top + pad_bottom - dilation*(kH-1) - 1) // stride + 1``.

    ``padding='same'`` also works with ``stride > 1`` (TensorFlow 'SAME':
    ``H_out = ceil(H / stride)``, the odd padding element at the bottom/right),
    where torch raises. The result is channels_last if the input or the
    weight is, as with torch.

    Beyond torch (keyword-only): ``residual`` (the output's shape) is added and
    ``relu=True`` applies a ReLU, in the convolution's own pass
    (``torch.ops.convx.conv2d_fused``): ``relu(conv2d(x, w, b) + residual)``,
    the inference tail of a ResNet block once batch norm is folded in.
    """
    _require_tensor(input, "input", "conv2d")
    _require_tensor(weight, "weight", "conv2d")
    x, unbatched = _batched(input, "conv2d")
    if weight.dim() != 4:
        raise RuntimeError(
            f"convx.conv2d: expected weight of size (C_out, C_in / groups, kH, kW), but got weight of size "
            f"{list(weight.shape)}")
    s = _pair(stride, "stride")
    d = _pair(dilation, "dilation")
    pad = conv2d_padding(padding, x.shape[-2:], weight.shape[-2:], s, d)
    if residual is None and not relu:
        y = _ops.conv2d(x, weight, bias, s, pad, d, int(groups))
    else:
        if residual is not None:
            _require_tensor(residual, "residual", "conv2d")
            residual = residual.unsqueeze(0) if unbatched else residual
        y = _ops.conv2d_fused(x, weight, bias, residual, s, pad, d, int(groups), bool(relu))
    return y.squeeze(0) if unbatched else y


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: _IntOr2 = 1,
                     padding: _IntOr2 = 0, output_padding: _IntOr2 = 0, groups: int = 1,
                     dilation: _IntOr2 = 1) -> Tensor:
    """Transposed 2D convolution, ``torch.nn.functional.conv_transpose2d``'s
    signature (note: ``groups`` before ``dilation``).

    input ``(N, C_in, H, W)`` or ``(C_in, H, W)``, weight ``(C_in, C_out / groups, kH, kW)``
    -> ``(N, C_out, H_out, W_out)`` with
    ``H_out = (H - 1)*stride - 2*padding + dilation*(kH - 1) + output_padding + 1``.
    """
    _require_tensor(input, "input", "conv_transpose2d")
    _require_tensor(weight, "weight", "conv_transpose2d")
    x, unbatched = _batched(input, "conv_transpose2d")
    if weight.dim() != 4:
        raise RuntimeError(f"convx.conv_transpose2d: expected weight of size (C_in, C_out / groups, kH, kW), but "
                           f"got weight of size {list(weight.shape)}")
    y = _ops.conv_transpose2d(x, weight, bias, _pair(stride, "stride"), _pair(padding, "padding"),
                              _pair(output_padding, "output_padding"), _pair(dilation, "dilation"), int(groups))
    return y.squeeze(0) if unbatched else y


def _pool_batched(input: Tensor, message: str) -> Tuple[Tensor, bool]:
    _require_tensor(input, "input", "pool2d")
    if input.dim() not in (3, 4):
        raise RuntimeError(message)
    return (input.unsqueeze(0), True) if input.dim() == 3 else (input, False)


def _pool_stride(stride, kernel):
    if stride is None or (not isinstance(stride, int) and len(stride) == 0):
        return list(kernel)
    return _pair(stride, "stride")


def max_pool2d(input: Tensor, kernel_size: _IntOr2, stride: Optional[_IntOr2] = None, padding: _IntOr2 = 0,
               dilation: _IntOr2 = 1, ceil_mode: bool = False, return_indices: bool = False):
    """2D max pooling, ``torch.nn.functional.max_pool2d``'s signature.

    ``(N, C, H, W)`` or ``(C, H, W)`` -> ``(N, C, H_out, W_out)``. A NaN in a
    window gives NaN; ties give the first index; indices are flat ``h*W + w``
    positions in each plane, as torch's (they feed ``max_unpool2d``).
    """
    x, unbatched = _pool_batched(input, "non-empty 3D or 4D (batch mode) tensor expected for input")
    k = _pair(kernel_size, "kernel_size")
    args = (x, k, _pool_stride(stride, k), _pair(padding, "padding"), _pair(dilation, "dilation"), bool(ceil_mode))
    if not return_indices:
        # no index tensor unless a gradient needs one (max_pool2d_values' autograd kernel)
        y = _ops.max_pool2d_values(*args)
        return y.squeeze(0) if unbatched else y
    y, ind = _ops.max_pool2d(*args)
    if unbatched:
        y, ind = y.squeeze(0), ind.squeeze(0)
    return y, ind


def avg_pool2d(input: Tensor, kernel_size: _IntOr2, stride: Optional[_IntOr2] = None, padding: _IntOr2 = 0,
               ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: Optional[int] = None) -> Tensor:
    """2D average pooling, ``torch.nn.functional.avg_pool2d``'s signature."""
    x, unbatched = _pool_batched(input, "non-empty 3D or 4D (batch mode) tensor expected for input")
    k = _pair(kernel_size, "kernel_size")
    y = _ops.avg_pool2d(x, k, _pool_stride(stride, k), _pair(padding, "padding"), bool(ceil_mode),
                        bool(count_include_pad), divisor_override)
    return y.squeeze(0) if unbatched else y


def _adaptive_size(output_size, input: Tensor) -> List[int]:
    if isinstance(output_size, int):
        return [output_size, output_size]
    size = list(output_size)
    if len(size) == 1:
        size = size * 2
    if len(size) != 2:
        raise RuntimeError(f"adaptive pooling: output_size must be 2, but got {output_size}")
    return [input.shape[-2 + i] if v is None else int(v) for i, v in enumerate(size)]


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """2D adaptive average pooling; ``output_size`` an int or a pair whose
    ``None`` entries keep the input's size. Output larger than input works."""
    x, unbatched = _pool_batched(input, f"adaptive_avg_pool2d(): Expected 3D or 4D tensor, but got: "
                                        f"{list(input.shape)}")
    size = _adaptive_size(output_size, x)
    if size == [1, 1] and x.numel() == 0:
        # torch computes a 1x1 output as a mean, which takes empty images too (giving NaN); so does convx
        return input.mean((-2, -1), keepdim=True)
    y = _ops.adaptive_avg_pool2d(x, size)
    return y.squeeze(0) if unbatched else y


def adaptive_max_pool2d(input: Tensor, output_size, return_indices: bool = False):
    """2D adaptive max pooling; same window rule and index convention as torch."""
    x, unbatched = _pool_batched(input, f"adaptive_max_pool2d(): Expected 3D or 4D tensor, but got: "
                                        f"{list(input.shape)}")
    size = _adaptive_size(output_size, x)
    if min(size) < 0:
        raise RuntimeError(f"adaptive_max_pool2d: elements of output_size must be greater than or equal to 0 but "
                           f"received {{{size[0]}, {size[1]}}}")
    y, ind = _ops.adaptive_max_pool2d(x, size)
    if unbatched:
        y, ind = y.squeeze(0), ind.squeeze(0)
    return (y, ind) if return_indices else y


def _as_4d(t: Tensor) -> Tensor:
    """(N, C, *rest) as a 4-D view with the same per-channel elements:
    (N, C) -> (N, C, 1, 1), (N, C, L) -> (N, C, L, 1), (N, C, D, H, W, ...) ->
    (N, C, D, H*W*...). The merged axes of a channels_last_3d tensor stay a
    view (channels_last in 4-D); other layouts that cannot merge are copied."""
    if t.dim() == 4:
        return t
    if t.dim() == 2:
        return t.reshape(t.shape[0], t.shape[1], 1, 1)
    if t.dim() == 3:
        return t.unsqueeze(-1)
    return t.flatten(3)


def _check_residual(input: Tensor, residual: Optional[Tensor]):
    """The fused residual: the input's size, dtype and device (checked before any statistics are written)."""
    if residual is None:
        return
    if residual.shape != input.shape:
        raise RuntimeError(f"batch_norm: residual must have the input's size {list(input.shape)}, but got "
                           f"{list(residual.shape)}")
    if residual.dtype != input.dtype or residual.device != input.device:
        raise RuntimeError(f"input and residual must have the same dtype and device, but got {input.dtype} on "
                           f"{input.device} and {residual.dtype} on {residual.device}")


def _check_bn_params(input: Tensor, named):
    """Per-channel tensors ((name, tensor or None), ...): C elements, running statistics 1-D, torch's CPU
    dtype rule (the input's, or float32 for a float16 / bfloat16 input), the input's device."""
    c = input.shape[1]
    dtypes = (input.dtype, torch.float32) if input.dtype in (torch.float16, torch.bfloat16) else (input.dtype,)
    for name, t in named:
        if t is None:
            continue
        _require_tensor(t, name, "batch_norm")
        if t.numel() != c:
            raise RuntimeError(f"{name} should contain {c} elements not {t.numel()}")
        if name.startswith("running") and t.dim() != 1:
            raise RuntimeError(f"batch_norm: expected {name} to be 1-dimensional, but got size {list(t.shape)}")
        if t.dtype not in dtypes:
            raise RuntimeError(f"mixed dtype (CPU): expect parameter to have scalar type of "
                               f"{str(dtypes[-1]).replace('torch.', '').capitalize()} ({name} is "
                               f"{t.dtype}, input {input.dtype})")
        if t.device != input.device:
            raise RuntimeError(f"Expected all tensors to be on the same device, but got {name} on {t.device}, "
                               f"input on {input.device}")


@functools.lru_cache(maxsize=None)
def _torch_rejects_zero_eps():
    """Whether this torch's batch_norm refuses eps=0 in evaluation too (torch
    2.11 does; later releases refuse it only in training): asked once, of a
    one-element call."""
    try:
        F.batch_norm(torch.ones(1, 1), torch.zeros(1), torch.ones(1), training=False, eps=0.0)
    except ValueError:
        return True
    return False


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, residual: Optional[Tensor] = None,
               relu: bool = False) -> Tensor:
    """Batch normalization, ``torch.nn.functional.batch_norm``'s signature, for
    input ``(N, C, *)`` of any rank >= 2 (BatchNorm1d's ``(N, C)`` and
    ``(N, C, L)``, 2d's ``(N, C, H, W)``, 3d's ``(N, C, D, H, W)``); plus, in
    the same single pass over memory, an optional ``residual`` added after
    the affine transform and an optional ReLU: ``relu(bn(input) + residual)``
    is the tail of a ResNet block.

    In training the batch statistics normalize (biased variance) and, when
    given, ``running_mean`` / ``running_var`` are updated in place with
    ``momentum`` (unbiased variance), as torch does.
    """
    _require_tensor(input, "input", "batch_norm")
    if input.dim() == 0 and training:  # torch.nn.functional's batch-size check indexes the shape
        raise IndexError("batch_norm: expected input of size (N, C, *), but got a 0-dimensional tensor")
    if input.dim() < 2:
        raise RuntimeError(f"batch_norm: expected input of size (N, C, *) with at least 2 dimensions, but got "
                           f"input of size {list(input.shape)}")
    if training and (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    # Everything is checked before the statistics pass, which updates the
    # running statistics in place: a bad argument must leave them untouched.
    size = input.shape
    c = size[1]
    if training:  # torch.nn.functional's own checks, made for every input
        if input.numel() and input.numel() // c <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
        if eps <= 0.0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    elif eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    elif eps == 0.0 and _torch_rejects_zero_eps():
        raise ValueError(f"batch_norm eps must be positive, but got {eps}")
    _check_residual(input, residual)
    if input.numel() == 0:
        # torch returns an empty batch as it is, without looking at the statistics or the affine parameters
        y = input.clone()
        y = y + residual if residual is not None else y
        return y.relu() if relu else y
    _check_bn_params(input, (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                             ("bias", bias)))
    if not training and running_mean is None:
        raise RuntimeError("running_mean must be defined in evaluation mode")
    if not training and running_var is None:
        raise RuntimeError("running_var must be defined in evaluation mode")
    x = _as_4d(input)
    if residual is not None:
        residual = _as_4d(residual)
    if training:
        # The statistics are not differentiated on their own: batch_norm's backward accounts for them.
        mean, var = _ops.batch_norm_stats(x.detach(), running_mean, running_var, float(momentum))
    else:
        mean, var = running_mean, running_var
    y = _ops.batch_norm(x, mean, var, weight, bias, residual, float(eps), bool(training), bool(relu))
    return y if input.dim() == 4 else y.view(size)  # splitting the merged axis is always a view


def batch_norm_relu(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                    weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, training: bool = False,
                    momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``relu(batch_norm(input, ...))`` in one pass (forward and backward)."""
    return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, relu=True)


def batch_norm_add_relu(input: Tensor, residual: Tensor, running_mean: Optional[Tensor],
                        running_var: Optional[Tensor], weight: Optional[Tensor] = None,
                        bias: Optional[Tensor] = None, training: bool = False, momentum: float = 0.1,
                        eps: float = 1e-5) -> Tensor:
    """``relu(batch_norm(input, ...) + residual)``: the end of a ResNet block
    (bn2 -> + identity -> relu) in one kernel, forward and backward."""
    return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, residual=residual,
                      relu=True)


def add_relu(input: Tensor, other: Tensor, inplace: bool = False) -> Tensor:
    """``relu(input + other)`` in one pass. ``inplace=True`` writes into
    ``input`` and is for inference: it refuses tensors that need gradients
    (use the out-of-place form when training)."""
    if inplace:
        if torch.is_grad_enabled() and (input.requires_grad or other.requires_grad):
            raise RuntimeError("convx.add_relu(inplace=True) does not support autograd; use inplace=False when the "
                               "inputs require grad")
        _ops.add_relu_(input, other)
        return input
    return _ops.add_relu(input, other)
