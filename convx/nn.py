"""Drop-in modules: each subclasses its torch.nn twin (same constructor,
parameters, buffers, ``extra_repr`` and state_dict keys) and replaces only
``forward`` with convx's kernels."""
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair

from . import functional as CF


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` on convx kernels.

    Beyond torch: ``padding='same'`` is accepted with ``stride > 1``
    (TensorFlow 'SAME' padding, see :func:`convx.functional.conv2d`).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None):
        strided_same = isinstance(padding, str) and padding == "same" and _pair(stride) != (1, 1)
        super().__init__(in_channels, out_channels, kernel_size, 1 if strided_same else stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        if strided_same:
            self.stride = _pair(stride)

    def forward(self, input: Tensor) -> Tensor:
        if self.padding_mode == "zeros":
            return CF.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if isinstance(self.padding, str) and self.padding == "same":
            t, b, l, r = CF.conv2d_padding("same", input.shape[-2:], self.kernel_size, self.stride, self.dilation)
            pad = (l, r, t, b)
        else:
            pad = self._reversed_padding_repeated_twice
        return CF.conv2d(F.pad(input, pad, mode=self.padding_mode), self.weight, self.bias, self.stride, 0,
                         self.dilation, self.groups)


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
