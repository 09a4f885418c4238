"""ResNet built from convx modules, torchvision's layout and attribute names
(v1.5: the stride sits on the 3x3), so torchvision state_dicts load with
strict=True. Each block ends in one fused kernel: bn -> + identity -> relu.

Also ResNet-20, the small ResNet of the original paper's CIFAR experiments
(3 stages of 16/32/64 channels, 3 basic blocks each, projection shortcuts)."""
from typing import List, Optional, Type, Union

import torch
from torch import Tensor, nn

from ._layers import Layers, bn_act, load_weights

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "resnext50_32x4d", "wide_resnet50_2", "resnet20"]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, L: Layers, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = L.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = L.BatchNorm2d(planes, relu=True)
        self.conv2 = L.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = L.BatchNorm2d(planes, relu=True)  # relu(bn2(x) + identity)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = bn_act(self.bn1, self.conv1(x))
        return bn_act(self.bn2, self.conv2(out), identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, L: Layers, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = L.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = L.BatchNorm2d(width, relu=True)
        self.conv2 = L.Conv2d(width, width, 3, stride, dilation, dilation, groups, bias=False)
        self.bn2 = L.BatchNorm2d(width, relu=True)
        self.conv3 = L.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = L.BatchNorm2d(planes * self.expansion, relu=True)  # relu(bn3(x) + identity)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = bn_act(self.bn1, self.conv1(x))
        out = bn_act(self.bn2, self.conv2(out))
        return bn_act(self.bn3, self.conv3(out), identity)


class ResNet(nn.Module):
    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], layers: List[int], num_classes: int = 1000,
                 zero_init_residual: bool = False, groups: int = 1, width_per_group: int = 64,
                 replace_stride_with_dilation: Optional[List[bool]] = None, in_channels: int = 3,
                 impl: str = "convx"):
        super().__init__()
        L = self._L = Layers(impl)
        self.inplanes = 64
        self.dilation = 1
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None or a 3-element tuple, got "
                             f"{replace_stride_with_dilation}")
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = L.Conv2d(in_channels, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = L.BatchNorm2d(self.inplanes, relu=True)
        self.maxpool = L.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, replace_stride_with_dilation[2])
        self.avgpool = L.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _init_resnet(self, zero_init_residual)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        L = self._L
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(L.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       L.BatchNorm2d(planes * block.expansion))
        layers = [block(L, self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                        previous_dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(L, self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:      # N x 3 x 224 x 224
        x = bn_act(self.bn1, self.conv1(x))      # N x 64 x 112 x 112
        x = self.maxpool(x)                      # N x 64 x 56 x 56
        x = self.layer1(x)                       # N x 256 x 56 x 56 (bottleneck)
        x = self.layer2(x)                       # N x 512 x 28 x 28
        x = self.layer3(x)                       # N x 1024 x 14 x 14
        x = self.layer4(x)                       # N x 2048 x 7 x 7
        x = self.avgpool(x)                      # N x 2048 x 1 x 1
        return self.fc(torch.flatten(x, 1))


def _init_resnet(model: nn.Module, zero_init_residual: bool):
    """He (Kaiming) initialisation, torchvision's recipe."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, Bottleneck):
                nn.init.constant_(m.bn3.weight, 0)
            elif isinstance(m, BasicBlock):
                nn.init.constant_(m.bn2.weight, 0)


def _resnet(block, layers, weights=None, **kwargs) -> ResNet:
    return load_weights(ResNet(block, layers, **kwargs), weights)


def resnet18(weights=None, **kwargs) -> ResNet:
    return _resnet(BasicBlock, [2, 2, 2, 2], weights, **kwargs)


def resnet34(weights=None, **kwargs) -> ResNet:
    return _resnet(BasicBlock, [3, 4, 6, 3], weights, **kwargs)


def resnet50(weights=None, **kwargs) -> ResNet:
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, **kwargs)


def resnet101(weights=None, **kwargs) -> ResNet:
    return _resnet(Bottleneck, [3, 4, 23, 3], weights, **kwargs)


def resnet152(weights=None, **kwargs) -> ResNet:
    return _resnet(Bottleneck, [3, 8, 36, 3], weights, **kwargs)


def resnext50_32x4d(weights=None, **kwargs) -> ResNet:
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, groups=32, width_per_group=4, **kwargs)


def wide_resnet50_2(weights=None, **kwargs) -> ResNet:
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, width_per_group=128, **kwargs)


class ResNet20(nn.Module):
    """He et al. 2016, section 4.2: 6n+2 layers with n = 3; 3x3 convs on
    16/32/64 channels, stride 2 at the start of stages 2 and 3, global average
    pooling and a linear classifier. Shortcuts that change shape are 1x1
    projections (the paper's option B)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, depth: int = 20, impl: str = "convx"):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        L = self._L = Layers(impl)
        self.conv1 = L.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = L.BatchNorm2d(16, relu=True)
        self.inplanes = 16
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.avgpool = L.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        _init_resnet(self, zero_init_residual=False)

    def _make_layer(self, planes, blocks, stride):
        L = self._L
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(L.Conv2d(self.inplanes, planes, 1, stride, bias=False), L.BatchNorm2d(planes))
        layers = [BasicBlock(L, self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(L, planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:      # N x C x 32 x 32 (CIFAR) or 8 x 8 (digits)
        x = bn_act(self.bn1, self.conv1(x))      # N x 16 x H x W
        x = self.layer3(self.layer2(self.layer1(x)))  # N x 64 x H/4 x W/4
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(weights=None, **kwargs) -> ResNet20:
    return load_weights(ResNet20(**kwargs), weights)
