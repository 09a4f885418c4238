"""U-Net (Ronneberger et al., 2015): a contracting path of double 3x3
convolutions and 2x2 max pooling, then an expanding path that up-samples
with 2x2 transposed convolutions (stride 2, halving the channels),
concatenates the feature map of the same level from the contracting path
(centre-cropped to size), and applies another double convolution; a 1x1
convolution maps to the classes.

The defaults are the paper's network: 1 input channel, 2 classes, 4
down-samplings, 64 channels at the top, unpadded convolutions, so a 572x572
tile gives a 388x388 segmentation map. ``padding=1`` keeps sizes (outputs
the size of inputs divisible by 2**depth); ``batch_norm=True`` puts a batch
norm before each ReLU (fused into one kernel on convx), the common modern
variant."""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import Layers, bn_act, load_weights

__all__ = ["UNet", "unet"]


class DoubleConv(nn.Module):
    """(3x3 conv -> [bn] -> relu) twice."""

    def __init__(self, L: Layers, in_channels: int, out_channels: int, padding: int, batch_norm: bool):
        super().__init__()
        self.conv1 = L.Conv2d(in_channels, out_channels, 3, padding=padding, bias=not batch_norm)
        self.bn1 = L.BatchNorm2d(out_channels, relu=True) if batch_norm else None
        self.conv2 = L.Conv2d(out_channels, out_channels, 3, padding=padding, bias=not batch_norm)
        self.bn2 = L.BatchNorm2d(out_channels, relu=True) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
            x = conv(x)
            x = F.relu(x) if bn is None else bn_act(bn, x)
        return x


def _center_crop(x: Tensor, size: Sequence[int]) -> Tensor:
    top = (x.shape[-2] - size[0]) // 2
    left = (x.shape[-1] - size[1]) // 2
    return x[..., top:top + size[0], left:left + size[1]]


class UNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 2, depth: int = 4, width: int = 64,
                 padding: int = 0, batch_norm: bool = False, impl: str = "convx"):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"UNet: depth and width must be positive, got depth={depth}, width={width}")
        if padding not in (0, 1):
            raise ValueError(f"UNet: padding must be 0 (the paper's unpadded convolutions) or 1, got {padding}")
        L = Layers(impl)
        self.depth, self.padding = depth, padding
        chans = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([DoubleConv(L, in_channels if i == 0 else chans[i - 1], chans[i], padding,
                                              batch_norm) for i in range(depth + 1)])
        self.pool = L.MaxPool2d(2)
        self.up = nn.ModuleList([L.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2)
                                 for i in reversed(range(depth))])
        self.decode = nn.ModuleList([DoubleConv(L, chans[i + 1], chans[i], padding, batch_norm)
                                     for i in reversed(range(depth))])
        self.head = L.Conv2d(width, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):  # He initialisation, as the paper
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def output_size(self, size: int) -> int:
        """The output's height (or width) for an input of this height (or width)."""
        shrink = 0 if self.padding else 4
        for _ in range(self.depth):
            size = (size - shrink) // 2
        size -= shrink
        for _ in range(self.depth):
            size = size * 2 - shrink
        return size

    def forward(self, x: Tensor) -> Tensor:
        skips: List[Tensor] = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth:
                skips.append(x)
                x = self.pool(x)
        for up, block, skip in zip(self.up, self.decode, reversed(skips)):
            x = up(x)
            x = block(torch.cat([_center_crop(skip, x.shape[-2:]), x], 1))
        return self.head(x)


def unet(weights=None, **kwargs) -> UNet:
    return load_weights(UNet(**kwargs), weights)
