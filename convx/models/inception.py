"""Inception-v3 as torchvision has it (Szegedy et al., "Rethinking the
Inception Architecture"): 299x299 input, a convolutional stem, three 35x35
InceptionA modules, a grid reduction, four 17x17 InceptionC modules whose
7x7 convolutions are factorized into 1x7 and 7x1, another reduction, two
8x8 InceptionE modules with split 1x3 / 3x1 branches, and an auxiliary
classifier on the 17x17 grid in training. Every BasicConv2d is conv ->
bn -> relu, the bn -> relu one fused kernel on convx.

Attribute names are torchvision's (``Mixed_6b.branch7x7_2.conv``), so its
state_dicts load with strict=True. The smallest input is 75x75; in training
the auxiliary classifier (5x5/3 pool, then a 5x5 convolution on the 17x17
grid) needs the full 299x299 (or ``aux_logits=False``)."""
from collections import namedtuple
from typing import Optional

import torch
from torch import Tensor, nn

from .. import functional as CF
from ._layers import Layers, bn_act, load_weights

__all__ = ["Inception3", "InceptionOutputs", "inception_v3"]

InceptionOutputs = namedtuple("InceptionOutputs", ["logits", "aux_logits"])


class BasicConv2d(nn.Module):
    def __init__(self, L: Layers, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = L.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = L.BatchNorm2d(out_channels, relu=True, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return bn_act(self.bn, self.conv(x))


def _pool3x3(L: Layers, x: Tensor) -> Tensor:
    """The branch pools' 3x3 / stride 1 / pad 1 average (padding counted, as torch's default)."""
    if L.convx:
        return CF.avg_pool2d(x, 3, 1, 1)
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1)


def _reduce_pool(L: Layers, x: Tensor) -> Tensor:
    return CF.max_pool2d(x, 3, 2) if L.convx else torch.nn.functional.max_pool2d(x, 3, 2)


class InceptionA(nn.Module):
    """35x35: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1."""

    def __init__(self, L: Layers, in_channels: int, pool_features: int):
        super().__init__()
        self._L = L
        self.branch1x1 = BasicConv2d(L, in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(L, in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(L, 48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(L, in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(L, 64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(L, 96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(L, in_channels, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_pool3x3(self._L, x))], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17: 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max pool 3x3/2."""

    def __init__(self, L: Layers, in_channels: int):
        super().__init__()
        self._L = L
        self.branch3x3 = BasicConv2d(L, in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(L, in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(L, 64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(L, 96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, _reduce_pool(self._L, x)], 1)


class InceptionC(nn.Module):
    """17x17 with factorized 7x7s: 1x1 | 1x1 -> 1x7 -> 7x1 | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 | avg pool -> 1x1."""

    def __init__(self, L: Layers, in_channels: int, channels_7x7: int):
        super().__init__()
        self._L = L
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(L, in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(L, in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(L, c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(L, c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(L, in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(L, c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(L, c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(L, c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(L, c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(L, in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = conv(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_pool3x3(self._L, x))], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max pool 3x3/2."""

    def __init__(self, L: Layers, in_channels: int):
        super().__init__()
        self._L = L
        self.branch3x3_1 = BasicConv2d(L, in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(L, 192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(L, in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(L, 192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(L, 192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(L, 192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, _reduce_pool(self._L, x)], 1)


class InceptionE(nn.Module):
    """8x8 with split branches: 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | avg pool -> 1x1."""

    def __init__(self, L: Layers, in_channels: int):
        super().__init__()
        self._L = L
        self.branch1x1 = BasicConv2d(L, in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(L, in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(L, 384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(L, 384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(L, in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(L, 448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(L, 384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(L, 384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(L, in_channels, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(_pool3x3(self._L, x))], 1)


class InceptionAux(nn.Module):
    """The auxiliary classifier on the 17x17 grid: avg pool 5x5/3 -> 1x1 -> 5x5 -> global pool -> fc."""

    def __init__(self, L: Layers, in_channels: int, num_classes: int):
        super().__init__()
        self._L = L
        self.conv0 = BasicConv2d(L, in_channels, 128, kernel_size=1)
        self.conv1 = BasicConv2d(L, 128, 768, kernel_size=5)
        self.conv1.stddev = 0.01  # as torchvision (set on the unit, so its conv keeps the default 0.1)
        self.fc = nn.Linear(768, num_classes)
        self.fc.stddev = 0.001
        self.pool = L.AvgPool2d(kernel_size=5, stride=3)
        self.avgpool = L.AdaptiveAvgPool2d((1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.conv0(self.pool(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Inception3(nn.Module):
    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = False,
                 init_weights: Optional[bool] = True, dropout: float = 0.5, impl: str = "convx"):
        super().__init__()
        L = Layers(impl)
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = BasicConv2d(L, 3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(L, 32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(L, 32, 64, kernel_size=3, padding=1)
        self.maxpool1 = L.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(L, 64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(L, 80, 192, kernel_size=3)
        self.maxpool2 = L.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(L, 192, pool_features=32)
        self.Mixed_5c = InceptionA(L, 256, pool_features=64)
        self.Mixed_5d = InceptionA(L, 288, pool_features=64)
        self.Mixed_6a = InceptionB(L, 288)
        self.Mixed_6b = InceptionC(L, 768, channels_7x7=128)
        self.Mixed_6c = InceptionC(L, 768, channels_7x7=160)
        self.Mixed_6d = InceptionC(L, 768, channels_7x7=160)
        self.Mixed_6e = InceptionC(L, 768, channels_7x7=192)
        self.AuxLogits = InceptionAux(L, 768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(L, 768)
        self.Mixed_7b = InceptionE(L, 1280)
        self.Mixed_7c = InceptionE(L, 2048)
        self.avgpool = L.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(2048, num_classes)
        if init_weights or init_weights is None:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    std = float(getattr(m, "stddev", 0.1))
                    torch.nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-2, b=2)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    def _transform_input(self, x: Tensor) -> Tensor:
        """ImageNet-normalised input -> the [-1, 1] scaling the original weights were trained with."""
        if self.transform_input:
            x = torch.cat((torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5,
                           torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5,
                           torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5), 1)
        return x

    def forward(self, x: Tensor):
        x = self._transform_input(x)                                   # N x 3 x 299 x 299
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # N x 64 x 147 x 147
        x = self.maxpool1(x)                                           # N x 64 x 73 x 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                  # N x 192 x 71 x 71
        x = self.maxpool2(x)                                           # N x 192 x 35 x 35
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))             # N x 288 x 35 x 35
        x = self.Mixed_6a(x)                                           # N x 768 x 17 x 17
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # N x 768 x 17 x 17
        aux = self.AuxLogits(x) if self.AuxLogits is not None and self.training else None
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))             # N x 2048 x 8 x 8
        x = torch.flatten(self.dropout(self.avgpool(x)), 1)            # N x 2048
        x = self.fc(x)
        if self.training and self.aux_logits:
            return InceptionOutputs(x, aux)
        return x


def inception_v3(weights=None, **kwargs) -> Inception3:
    return load_weights(Inception3(**kwargs), weights)
