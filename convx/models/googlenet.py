"""GoogLeNet (Inception v1) as torchvision has it: batch-normalised
BasicConv2d units (bn -> relu fused into one kernel on convx), the "5x5"
branch as a 3x3, two auxiliary classifiers in training, and
``transform_input``. Attribute names are torchvision's
(``inception3a.branch2.0.conv``), so its state_dicts load with strict=True."""
from collections import namedtuple
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import Layers, bn_act, load_weights

__all__ = ["GoogLeNet", "GoogLeNetOutputs", "googlenet"]

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])


class BasicConv2d(nn.Module):
    def __init__(self, L: Layers, in_channels, out_channels, **kwargs):
        super().__init__()
        self.conv = L.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = L.BatchNorm2d(out_channels, relu=True, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return bn_act(self.bn, self.conv(x))


class Inception(nn.Module):
    def __init__(self, L: Layers, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(L, in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(L, in_channels, ch3x3red, kernel_size=1),
                                     BasicConv2d(L, ch3x3red, ch3x3, kernel_size=3, padding=1))
        # torchvision keeps a 3x3 here where the paper has a 5x5 (see its issue 906)
        self.branch3 = nn.Sequential(BasicConv2d(L, in_channels, ch5x5red, kernel_size=1),
                                     BasicConv2d(L, ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(L.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(L, in_channels, pool_proj, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    def __init__(self, L: Layers, in_channels, num_classes, dropout=0.7):
        super().__init__()
        self._L = L
        self.conv = BasicConv2d(L, in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:      # aux1: N x 512 x 14 x 14, aux2: N x 528 x 14 x 14
        pool = self._L.AdaptiveAvgPool2d((4, 4))
        x = self.conv(pool(x))                   # N x 128 x 4 x 4
        x = F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)
        return self.fc2(self.dropout(x))


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = False,
                 init_weights: Optional[bool] = True, dropout: float = 0.2, dropout_aux: float = 0.7,
                 impl: str = "convx"):
        super().__init__()
        L = Layers(impl)
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.conv1 = BasicConv2d(L, 3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = L.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(L, 64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(L, 64, 192, kernel_size=3, padding=1)
        self.maxpool2 = L.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(L, 192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(L, 256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = L.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(L, 480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(L, 512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(L, 512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(L, 512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(L, 528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = L.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(L, 832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(L, 832, 384, 192, 384, 48, 128, 128)
        if aux_logits:
            self.aux1 = InceptionAux(L, 512, num_classes, dropout=dropout_aux)
            self.aux2 = InceptionAux(L, 528, num_classes, dropout=dropout_aux)
        else:
            self.aux1 = None
            self.aux2 = None
        self.avgpool = L.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)
        if init_weights:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    torch.nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    def _transform_input(self, x: Tensor) -> Tensor:
        if self.transform_input:
            x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
            x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
            x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
            x = torch.cat((x_ch0, x_ch1, x_ch2), 1)
        return x

    def forward(self, x: Tensor):
        x = self._transform_input(x)             # N x 3 x 224 x 224
        x = self.maxpool1(self.conv1(x))         # N x 64 x 56 x 56
        x = self.conv3(self.conv2(x))            # N x 192 x 56 x 56
        x = self.maxpool2(x)                     # N x 192 x 28 x 28
        x = self.inception3b(self.inception3a(x))  # N x 480 x 28 x 28
        x = self.maxpool3(x)                     # N x 480 x 14 x 14
        x = self.inception4a(x)                  # N x 512 x 14 x 14
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # N x 528 x 14 x 14
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.inception4e(x)                  # N x 832 x 14 x 14
        x = self.maxpool4(x)                     # N x 832 x 7 x 7
        x = self.inception5b(self.inception5a(x))  # N x 1024 x 7 x 7
        x = torch.flatten(self.avgpool(x), 1)    # N x 1024
        x = self.fc(self.dropout(x))
        if self.training and self.aux_logits:
            return GoogLeNetOutputs(x, aux2, aux1)
        return x


def googlenet(weights=None, **kwargs) -> GoogLeNet:
    return load_weights(GoogLeNet(**kwargs), weights)
