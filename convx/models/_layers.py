"""The layer set a model is built from: convx's modules, or torch.nn's for
the twin that convx is compared against. Both give identical state_dict keys."""
import torch
import torch.nn.functional as F
from torch import nn

from .. import nn as cnn


class Layers:
    def __init__(self, impl: str = "convx"):
        if impl not in ("convx", "torch"):
            raise ValueError(f"impl must be 'convx' or 'torch', got {impl!r}")
        self.convx = impl == "convx"
        m = cnn if self.convx else nn
        self.Conv2d = m.Conv2d
        self.ConvTranspose2d = m.ConvTranspose2d
        self.MaxPool2d = m.MaxPool2d
        self.AvgPool2d = m.AvgPool2d
        self.AdaptiveAvgPool2d = m.AdaptiveAvgPool2d
        self.AdaptiveMaxPool2d = m.AdaptiveMaxPool2d

    def BatchNorm2d(self, num_features, relu=False, **kw):
        """A batch norm whose ReLU (and residual add) is fused on convx; on
        torch the caller applies them with bn_act()."""
        if self.convx:
            return cnn.BatchNorm2d(num_features, activation="relu" if relu else None, **kw)
        bn = nn.BatchNorm2d(num_features, **kw)
        bn._convx_relu = relu
        return bn


def bn_act(bn: nn.Module, x: torch.Tensor, residual: torch.Tensor = None) -> torch.Tensor:
    """bn(x) (+ residual) (-> relu): one fused kernel for a convx.BatchNorm2d,
    torch's eager sequence otherwise."""
    if isinstance(bn, cnn._BatchNormTail):  # convx's BatchNorm2d, SyncBatchNorm, ...
        return bn(x, residual)
    y = bn(x)
    if residual is not None:
        y = y + residual
    return F.relu(y) if getattr(bn, "_convx_relu", False) else y


def load_weights(model: nn.Module, weights):
    """Load a state_dict (or a path to one saved with torch.save) strictly."""
    if weights is None:
        return model
    state = torch.load(weights, map_location="cpu", weights_only=True) if isinstance(weights, str) else weights
    model.load_state_dict(state, strict=True)
    return model
