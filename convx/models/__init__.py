"""Models built from convx modules with torchvision's attribute names, so a
torchvision state_dict loads with ``strict=True``. Every constructor takes
``weights`` (a state_dict or a path to one), the usual torchvision keyword
arguments, and ``impl="torch"`` for the identical model on torch.nn (the twin
that benchmarks and the demo compare against)."""
from .densenet import DenseNet, densenet121, densenet161, densenet169, densenet201
from .googlenet import GoogLeNet, GoogLeNetOutputs, googlenet
from .inception import Inception3, InceptionOutputs, inception_v3
from .mobilenet import MobileNetV2, mobilenet_v2
from .resnet import (BasicBlock, Bottleneck, ResNet, ResNet20, resnet18, resnet20, resnet34, resnet50, resnet101,
                     resnet152, resnext50_32x4d, wide_resnet50_2)
from .unet import UNet, unet
from .vgg import (VGG, AlexNet, LeNet5, alexnet, lenet5, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19,
                  vgg19_bn)

__all__ = [
    "ResNet", "ResNet20", "BasicBlock", "Bottleneck", "VGG", "AlexNet", "LeNet5", "GoogLeNet", "GoogLeNetOutputs",
    "DenseNet", "Inception3", "InceptionOutputs", "MobileNetV2", "UNet",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2", "resnet20",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "alexnet", "lenet5",
    "googlenet", "densenet121", "densenet161", "densenet169", "densenet201", "inception_v3", "mobilenet_v2", "unet",
]
