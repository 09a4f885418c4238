"""VGG-11/13/16/19 with and without batch norm, AlexNet and LeNet-5, with
torchvision's attribute names (``features.N``, ``classifier.N``) so its
state_dicts load with strict=True. In the batch-norm variants the ReLU is
fused into the batch norm; its slot in ``features`` holds an Identity, so the
indices (and state_dict keys) stay torchvision's."""
from typing import List, Union

import torch
from torch import Tensor, nn

from ._layers import Layers, bn_act, load_weights

__all__ = ["VGG", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "AlexNet",
           "alexnet", "LeNet5", "lenet5"]

CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class _Features(nn.Sequential):
    """features: conv [bn] relu ... maxpool; bn -> relu runs as one kernel on convx."""

    def forward(self, x: Tensor) -> Tensor:
        mods = list(self)
        i = 0
        while i < len(mods):
            m = mods[i]
            if isinstance(m, nn.BatchNorm2d):
                x = bn_act(m, x)
                i += 2  # the fused ReLU's slot
                continue
            x = m(x)
            i += 1
        return x


def make_layers(cfg: List[Union[str, int]], batch_norm: bool, L: Layers, in_channels: int = 3) -> _Features:
    layers: List[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(L.MaxPool2d(2, 2))
            continue
        layers.append(L.Conv2d(in_channels, v, 3, padding=1))
        if batch_norm:
            layers += [L.BatchNorm2d(v, relu=True), nn.Identity()]
        else:
            layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return _Features(*layers)


class VGG(nn.Module):
    def __init__(self, features: nn.Module, num_classes: int = 1000, init_weights: bool = True, dropout: float = 0.5,
                 impl: str = "convx"):
        super().__init__()
        L = Layers(impl)
        self.features = features
        self.avgpool = L.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes))
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:      # N x 3 x 224 x 224
        x = self.features(x)                     # N x 512 x 7 x 7
        x = self.avgpool(x)                      # N x 512 x 7 x 7
        return self.classifier(torch.flatten(x, 1))


def _vgg(cfg, batch_norm, weights=None, impl="convx", in_channels=3, **kwargs) -> VGG:
    model = VGG(make_layers(CFGS[cfg], batch_norm, Layers(impl), in_channels), impl=impl, **kwargs)
    return load_weights(model, weights)


def vgg11(weights=None, **kw): return _vgg("A", False, weights, **kw)
def vgg11_bn(weights=None, **kw): return _vgg("A", True, weights, **kw)
def vgg13(weights=None, **kw): return _vgg("B", False, weights, **kw)
def vgg13_bn(weights=None, **kw): return _vgg("B", True, weights, **kw)
def vgg16(weights=None, **kw): return _vgg("D", False, weights, **kw)
def vgg16_bn(weights=None, **kw): return _vgg("D", True, weights, **kw)
def vgg19(weights=None, **kw): return _vgg("E", False, weights, **kw)
def vgg19_bn(weights=None, **kw): return _vgg("E", True, weights, **kw)


class AlexNet(nn.Module):
    """torchvision's AlexNet (the single-GPU variant of Krizhevsky et al. 2012)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, impl: str = "convx"):
        super().__init__()
        L = Layers(impl)
        self.features = nn.Sequential(
            L.Conv2d(3, 64, 11, 4, 2), nn.ReLU(True), L.MaxPool2d(3, 2),
            L.Conv2d(64, 192, 5, padding=2), nn.ReLU(True), L.MaxPool2d(3, 2),
            L.Conv2d(192, 384, 3, padding=1), nn.ReLU(True),
            L.Conv2d(384, 256, 3, padding=1), nn.ReLU(True),
            L.Conv2d(256, 256, 3, padding=1), nn.ReLU(True), L.MaxPool2d(3, 2))
        self.avgpool = L.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(True), nn.Linear(4096, num_classes))

    def forward(self, x: Tensor) -> Tensor:      # N x 3 x 224 x 224
        x = self.avgpool(self.features(x))       # N x 256 x 6 x 6
        return self.classifier(torch.flatten(x, 1))


def alexnet(weights=None, **kwargs) -> AlexNet:
    return load_weights(AlexNet(**kwargs), weights)


class LeNet5(nn.Module):
    """LeCun et al. 1998, with ReLU and average pooling (the common modern
    reading): 32x32 input, conv 5x5 -> 6, pool, conv 5x5 -> 16, pool,
    fully connected 120 -> 84 -> classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, impl: str = "convx"):
        super().__init__()
        L = Layers(impl)
        self.conv1 = L.Conv2d(in_channels, 6, 5)
        self.pool1 = L.AvgPool2d(2, 2)
        self.conv2 = L.Conv2d(6, 16, 5)
        self.pool2 = L.AvgPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:                # N x 1 x 32 x 32
        x = self.pool1(torch.relu(self.conv1(x)))          # N x 6 x 14 x 14
        x = self.pool2(torch.relu(self.conv2(x)))          # N x 16 x 5 x 5
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(torch.relu(self.fc2(x)))


def lenet5(weights=None, **kwargs) -> LeNet5:
    return load_weights(LeNet5(**kwargs), weights)
