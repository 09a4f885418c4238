"""convx: handwritten CUDA kernels and C++ CPU fallbacks for the layers of
convolutional networks, registered as PyTorch ops (``torch.ops.convx.*``) with
autograd, fake kernels for torch.compile, and drop-in ``nn.Module`` twins.

    import convx
    conv = convx.Conv2d(64, 128, 3, padding=1)      # used exactly like torch.nn.Conv2d
    y = convx.functional.conv2d(x, w, b, stride=2)  # like torch.nn.functional.conv2d
"""
import torch  # noqa: F401  (loads libtorch before our extension)

from ._version_check import check_torch_version

check_torch_version()  # before loading _C: an extension built for another torch may not even load
from . import _C  # noqa: F401  (registers torch.ops.convx.*)
from . import simt  # noqa: F401  (the emulated CUDA backend, where built)
from . import ops  # noqa: F401  (fake kernels + autograd)
from . import backends, distributed, functional
from . import models
from .convert import convert
from .convx_version import __version__
from .nn import (AdaptiveAvgPool2d, AdaptiveMaxPool2d, AddReLU, AvgPool2d, BatchNorm1d, BatchNorm2d, BatchNorm3d,
                 Conv2d, ConvTranspose2d, MaxPool2d, SyncBatchNorm)

__all__ = ["Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
           "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "AddReLU",
           "backends", "distributed", "functional", "models", "convert", "__version__"]
