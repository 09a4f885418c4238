"""MobileNetV2 as torchvision has it (Sandler et al., "Inverted Residuals and
Linear Bottlenecks"): inverted residual blocks of 1x1 expansion -> 3x3
depthwise -> 1x1 linear projection, ReLU6 after the first two, the input
added back where shapes allow. On convx the depthwise convolutions run on
its direct depthwise kernels and each block's projection batch norm adds the
residual in the same pass.

Attribute names are torchvision's (``features.2.conv.1.0``), so its
state_dicts load with strict=True."""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import Layers, bn_act, load_weights

__all__ = ["MobileNetV2", "mobilenet_v2"]


def _make_divisible(v: float, divisor: int, min_value: Optional[int] = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without going more than 10% below ``v``."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation with ReLU6: keys ``0`` (conv), ``1`` (bn)."""

    def __init__(self, L: Layers, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1):
        super().__init__(L.Conv2d(in_planes, out_planes, kernel_size, stride, (kernel_size - 1) // 2,
                                  groups=groups, bias=False),
                         L.BatchNorm2d(out_planes))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(self[1](self[0](x)))


class _Body(nn.Sequential):
    """The block's layers; the last batch norm adds the residual (one kernel on convx)."""

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        for m in list(self)[:-1]:
            x = m(x)
        return bn_act(self[-1], x, residual)


class InvertedResidual(nn.Module):
    def __init__(self, L: Layers, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(L, inp, hidden_dim, kernel_size=1))
        layers += [ConvBNReLU6(L, hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
                   L.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                   L.BatchNorm2d(oup)]
        self.conv = _Body(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x, x if self.use_res_connect else None)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0,
                 inverted_residual_setting: Optional[List[List[int]]] = None, round_nearest: int = 8,
                 dropout: float = 0.2, in_channels: int = 3, impl: str = "convx"):
        super().__init__()
        L = Layers(impl)
        if inverted_residual_setting is None:
            inverted_residual_setting = [  # expansion t, channels c, repeats n, first stride s
                [1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                [6, 320, 1, 1]]
        if len(inverted_residual_setting) == 0 or len(inverted_residual_setting[0]) != 4:
            raise ValueError("inverted_residual_setting should be non-empty or a 4-element list, got "
                             f"{inverted_residual_setting}")
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: List[nn.Module] = [ConvBNReLU6(L, in_channels, input_channel, stride=2)]
        for t, c, n, s in inverted_residual_setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(L, input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(ConvBNReLU6(L, input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.avgpool = L.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def mobilenet_v2(weights=None, **kwargs) -> MobileNetV2:
    return load_weights(MobileNetV2(**kwargs), weights)
