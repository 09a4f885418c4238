"""Drop-in modules: each subclasses its torch.nn twin (same constructor,
parameters, buffers, ``extra_repr`` and state_dict keys) and replaces only
``forward`` with convx's kernels."""
import copy

import torch
import torch.nn.functional as F
from typing import Optional

from torch import Tensor
from torch.nn.modules.utils import _pair

from . import functional as CF
from .distributed import SyncBatchNormFunction


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` on convx kernels.

    Beyond torch: ``padding='same'`` is accepted with ``stride > 1``
    (TensorFlow 'SAME' padding, see :func:`convx.functional.conv2d`);
    ``activation="relu"`` and ``forward(input, residual)`` compute
    ``relu(conv(input) + bias + residual)`` in the convolution's own pass (what
    ``convx.convert(model, fuse=True)`` builds in eval mode from
    conv -> batch norm -> (+ identity) -> relu).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, activation=None):
        strided_same = isinstance(padding, str) and padding == "same" and _pair(stride) != (1, 1)
        super().__init__(in_channels, out_channels, kernel_size, 1 if strided_same else stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        if strided_same:
            self.stride = _pair(stride)
        if activation not in (None, "relu"):
            raise ValueError(f"convx.Conv2d: activation must be None or 'relu', got {activation!r}")
        self.activation = activation

    def extra_repr(self):
        s = super().extra_repr()
        return s + f", activation={self.activation!r}" if getattr(self, "activation", None) else s

    def forward(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        relu = getattr(self, "activation", None) == "relu"
        if self.padding_mode == "zeros":
            return CF.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                             residual=residual, relu=relu)
        if isinstance(self.padding, str) and self.padding == "same":
            t, b, l, r = CF.conv2d_padding("same", input.shape[-2:], self.kernel_size, self.stride, self.dilation)
            pad = (l, r, t, b)
        else:
            pad = self._reversed_padding_repeated_twice
        return CF.conv2d(F.pad(input, pad, mode=self.padding_mode), self.weight, self.bias, self.stride, 0,
                         self.dilation, self.groups, residual=residual, relu=relu)


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` on convx kernels, ``output_size=`` included."""

    def forward(self, input: Tensor, output_size=None) -> Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        return CF.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                   self.groups, self.dilation)


class MaxPool2d(torch.nn.MaxPool2d):
    def forward(self, input: Tensor):
        return CF.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(torch.nn.AvgPool2d):
    def forward(self, input: Tensor) -> Tensor:
        return CF.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    def forward(self, input: Tensor) -> Tensor:
        return CF.adaptive_avg_pool2d(input, self.output_size)


class AdaptiveMaxPool2d(torch.nn.AdaptiveMaxPool2d):
    def forward(self, input: Tensor):
        return CF.adaptive_max_pool2d(input, self.output_size, self.return_indices)


def _bias_kw(bias):
    """torch.nn's batch norms take ``bias=`` (an affine scale without a shift)
    in recent releases (2.14 does, 2.11 does not): pass it only when it is not
    the default, so that on an older torch the default works and
    ``bias=False`` fails as torch's own module does there (TypeError)."""
    return {} if bias is True else {"bias": bias}


class _BatchNormTail:
    """The forward shared by convx's BatchNorm1d/2d/3d: torch's
    ``_BatchNorm.forward`` bookkeeping, then one convx kernel that can also
    add a residual and apply a ReLU."""

    def _init_activation(self, activation):
        if activation not in (None, "relu"):
            raise ValueError(f"convx.{type(self).__name__}: activation must be None or 'relu', got {activation!r}")
        self.activation = activation

    def extra_repr(self):
        s = super().extra_repr()
        return s + f", activation={self.activation!r}" if getattr(self, "activation", None) else s

    def forward(self, input: Tensor, residual: Tensor = None) -> Tensor:
        self._check_input_dim(input)
        # torch.nn.modules.batchnorm._BatchNorm.forward's bookkeeping, verbatim in effect.
        if self.momentum is None:
            factor = 0.0
        else:
            factor = self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
            else:
                factor = self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_stats = not self.training or self.track_running_stats
        return CF.batch_norm(input, self.running_mean if use_stats else None,
                             self.running_var if use_stats else None, self.weight, self.bias, bn_training, factor,
                             self.eps, residual=residual, relu=getattr(self, "activation", None) == "relu")


class BatchNorm2d(_BatchNormTail, torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` on convx kernels (identical parameters,
    buffers and state_dict, ``num_batches_tracked`` included).

    Extras: ``activation="relu"`` fuses a ReLU into the same pass, and
    ``forward(input, residual)`` adds a residual before the activation, so
    ``BatchNorm2d(C, activation="relu")(x, identity)`` is a ResNet block's
    bn2 -> + identity -> relu in one kernel, forward and backward.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device=None,
                 dtype=None, activation=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, **_bias_kw(bias))
        self._init_activation(activation)


class BatchNorm1d(_BatchNormTail, torch.nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` on convx kernels: input ``(N, C)`` or
    ``(N, C, L)``; the same extras as :class:`BatchNorm2d`."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device=None,
                 dtype=None, activation=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, **_bias_kw(bias))
        self._init_activation(activation)


class BatchNorm3d(_BatchNormTail, torch.nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` on convx kernels: input ``(N, C, D, H, W)``
    (channels_last_3d stays a view); the same extras as :class:`BatchNorm2d`."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, device=None,
                 dtype=None, activation=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, **_bias_kw(bias))
        self._init_activation(activation)


class SyncBatchNorm(_BatchNormTail, torch.nn.SyncBatchNorm):
    """``torch.nn.SyncBatchNorm`` on convx kernels: in training under an
    initialised ``torch.distributed`` process group of more than one rank,
    the batch statistics are those of the batches of all ranks together (one
    ``all_gather`` forward, one ``all_reduce`` backward; see
    :mod:`convx.distributed`); otherwise it is :class:`BatchNorm2d` (any
    input rank >= 2). The same extras: ``activation="relu"`` and
    ``forward(input, residual)``.

    Beyond torch: CPU tensors work (gloo), where torch.nn.SyncBatchNorm
    raises; a rank's local batch may be empty, and batch sizes may differ.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None, activation=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, process_group, device, dtype,
                         **_bias_kw(bias))
        self._init_activation(activation)

    def forward(self, input: Tensor, residual: Tensor = None) -> Tensor:
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        group = self.process_group or (torch.distributed.group.WORLD if torch.distributed.is_available() else None)
        if not (self.training and torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size(group) > 1):
            return super().forward(input, residual)
        CF._check_residual(input, residual)
        CF._check_bn_params(input, (("weight", self.weight), ("bias", self.bias)))
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        track = self.track_running_stats
        x, res = CF._as_4d(input), None if residual is None else CF._as_4d(residual)
        y = SyncBatchNormFunction.apply(x, self.weight, self.bias, res, self.running_mean if track else None,
                                        self.running_var if track else None, self.eps, factor, group,
                                        torch.distributed.get_world_size(group),
                                        getattr(self, "activation", None) == "relu")
        return y if input.dim() == 4 else y.view(input.shape)

    @classmethod
    def adopt(cls, module, process_group=None):
        """Make the batch norm ``module`` itself (torch's or convx's, 1d/2d/3d) a convx.SyncBatchNorm: the
        same object, parameters, buffers and hooks; a fused ReLU is kept."""
        activation = getattr(module, "activation", None)
        module.__class__ = cls
        module.process_group = process_group
        module.activation = activation
        return module

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Every BatchNorm1d/2d/3d in ``module`` (torch's or convx's) becomes a
        convx.SyncBatchNorm holding the same parameter and buffer tensors (a
        fused ReLU is kept); like torch's, returns the converted module (a new
        object only where ``module`` itself is a batch norm)."""
        out = module
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            out = cls.adopt(shallow_clone(module), process_group)
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out


def shallow_clone(m: torch.nn.Module) -> torch.nn.Module:
    """A second module object holding the same parameter and buffer tensors,
    so that changing the clone's attributes (or class) leaves ``m`` as it was."""
    c = copy.copy(m)
    c._parameters = dict(m._parameters)
    c._buffers = dict(m._buffers)
    c._modules = dict(m._modules)
    return c


class AddReLU(torch.nn.Module):
    """``relu(x + residual)`` in one pass; ``inplace=True`` for inference."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return CF.add_relu(x, residual, self.inplace)
