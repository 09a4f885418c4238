"""DenseNet-BC as torchvision has it: every layer sees the concatenation of
all earlier feature maps in its block, through a pre-activation bottleneck
(bn -> relu -> 1x1 conv -> bn -> relu -> 3x3 conv); transition layers
(bn -> relu -> 1x1 conv -> 2x2 average pool) halve channels and size between
blocks. On convx every bn -> relu is one fused kernel.

Attribute names are torchvision's (``features.denseblock1.denselayer1.norm1``),
so its state_dicts load with strict=True; the older key spelling of the
published checkpoint files (``denselayer1.norm.1.weight``) is accepted too.
``memory_efficient=True`` recomputes each layer's concatenation and
bottleneck in the backward pass (torch.utils.checkpoint) instead of keeping
them, as torchvision's does."""
import re
from collections import OrderedDict
from typing import List, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from ._layers import Layers, bn_act, load_weights

__all__ = ["DenseNet", "densenet121", "densenet161", "densenet169", "densenet201"]


class _DenseLayer(nn.Module):
    def __init__(self, L: Layers, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float,
                 memory_efficient: bool = False):
        super().__init__()
        self.norm1 = L.BatchNorm2d(num_input_features, relu=True)
        self.conv1 = L.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = L.BatchNorm2d(bn_size * growth_rate, relu=True)
        self.conv2 = L.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def bottleneck(self, *features: Tensor) -> Tensor:
        return self.conv1(bn_act(self.norm1, torch.cat(features, 1)))

    def forward(self, features: List[Tensor]) -> Tensor:
        if self.memory_efficient and any(t.requires_grad for t in features):
            out = cp.checkpoint(self.bottleneck, *features, use_reentrant=False)
        else:
            out = self.bottleneck(*features)
        out = self.conv2(bn_act(self.norm2, out))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class _DenseBlock(nn.ModuleDict):
    def __init__(self, L: Layers, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int,
                 drop_rate: float, memory_efficient: bool = False):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(L, num_input_features + i * growth_rate, growth_rate,
                                                              bn_size, drop_rate, memory_efficient))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Module):
    def __init__(self, L: Layers, num_input_features: int, num_output_features: int):
        super().__init__()
        self.norm = L.BatchNorm2d(num_input_features, relu=True)
        self.conv = L.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = L.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.conv(bn_act(self.norm, x)))


class _Features(nn.Sequential):
    """torchvision's ``features`` Sequential (conv0, norm0, pool0, blocks,
    transitions, norm5); batch norms run through bn_act (their ReLU fused)."""

    def forward(self, x: Tensor) -> Tensor:
        for m in self:
            x = bn_act(m, x) if isinstance(m, nn.BatchNorm2d) else m(x)
        return x


class DenseNet(nn.Module):
    """DenseNet-BC. growth_rate: channels each layer adds (k); block_config:
    layers per block; bn_size: bottleneck width as a multiple of k."""

    def __init__(self, growth_rate: int = 32, block_config: Tuple[int, ...] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, drop_rate: float = 0, num_classes: int = 1000,
                 memory_efficient: bool = False, in_channels: int = 3, impl: str = "convx"):
        super().__init__()
        L = Layers(impl)
        self.features = _Features(OrderedDict([
            ("conv0", L.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", L.BatchNorm2d(num_init_features, relu=True)),
            ("pool0", L.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(L, num_layers, num_features, bn_size,
                                                                       growth_rate, drop_rate, memory_efficient))
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(L, num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", L.BatchNorm2d(num_features, relu=True))  # the final relu, fused
        self.avgpool = L.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))


# The published checkpoints spell ``denselayer1.norm1.weight`` as ``denselayer1.norm.1.weight``.
_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                      r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _densenet(growth_rate, block_config, num_init_features, weights, **kwargs) -> DenseNet:
    model = DenseNet(growth_rate, block_config, num_init_features, **kwargs)
    if isinstance(weights, str):
        weights = torch.load(weights, map_location="cpu", weights_only=True)
    if weights is not None:
        weights = OrderedDict((_OLD_KEY.sub(r"\1\2", k), v) for k, v in weights.items())
    return load_weights(model, weights)


def densenet121(weights=None, **kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 24, 16), 64, weights, **kwargs)


def densenet161(weights=None, **kwargs) -> DenseNet:
    return _densenet(48, (6, 12, 36, 24), 96, weights, **kwargs)


def densenet169(weights=None, **kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 32, 32), 64, weights, **kwargs)


def densenet201(weights=None, **kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 48, 32), 64, weights, **kwargs)
