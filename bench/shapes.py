"""The layer shapes of ../shared/SHAPES.md, as data shared by the benchmarks.

A conv layer: (name, C, H, K, R, stride, pad, groups[, dilation]). Square inputs; R and pad
are an int (square kernel) or a (height, width) pair (Inception-v3's 1x7 / 7x1).
"""
RESNET50 = [
    ("r50.stem", 3, 224, 64, 7, 2, 3, 1),
    ("r50.l1.1x1_64_64", 64, 56, 64, 1, 1, 0, 1),
    ("r50.l1.3x3_64", 64, 56, 64, 3, 1, 1, 1),
    ("r50.l1.1x1_64_256", 64, 56, 256, 1, 1, 0, 1),
    ("r50.l1.1x1_256_64", 256, 56, 64, 1, 1, 0, 1),
    ("r50.l2.1x1_256_128", 256, 56, 128, 1, 1, 0, 1),
    ("r50.l2.3x3_128_s2", 128, 56, 128, 3, 2, 1, 1),
    ("r50.l2.1x1_128_512", 128, 28, 512, 1, 1, 0, 1),
    ("r50.l2.1x1_512_128", 512, 28, 128, 1, 1, 0, 1),
    ("r50.l2.3x3_128", 128, 28, 128, 3, 1, 1, 1),
    ("r50.l2.down_256_512_s2", 256, 56, 512, 1, 2, 0, 1),
    ("r50.l3.1x1_512_256", 512, 28, 256, 1, 1, 0, 1),
    ("r50.l3.3x3_256_s2", 256, 28, 256, 3, 2, 1, 1),
    ("r50.l3.1x1_256_1024", 256, 14, 1024, 1, 1, 0, 1),
    ("r50.l3.1x1_1024_256", 1024, 14, 256, 1, 1, 0, 1),
    ("r50.l3.3x3_256", 256, 14, 256, 3, 1, 1, 1),
    ("r50.l3.down_512_1024_s2", 512, 28, 1024, 1, 2, 0, 1),
    ("r50.l4.1x1_1024_512", 1024, 14, 512, 1, 1, 0, 1),
    ("r50.l4.3x3_512_s2", 512, 14, 512, 3, 2, 1, 1),
    ("r50.l4.1x1_512_2048", 512, 7, 2048, 1, 1, 0, 1),
    ("r50.l4.1x1_2048_512", 2048, 7, 512, 1, 1, 0, 1),
    ("r50.l4.3x3_512", 512, 7, 512, 3, 1, 1, 1),
    ("r50.l4.down_1024_2048_s2", 1024, 14, 2048, 1, 2, 0, 1),
]
RESNET50_BODY = [l for l in RESNET50 if l[0] != "r50.stem"]

VGG16 = [
    ("vgg16.224_3_64", 3, 224, 64, 3, 1, 1, 1),
    ("vgg16.224_64_64", 64, 224, 64, 3, 1, 1, 1),
    ("vgg16.112_64_128", 64, 112, 128, 3, 1, 1, 1),
    ("vgg16.112_128_128", 128, 112, 128, 3, 1, 1, 1),
    ("vgg16.56_128_256", 128, 56, 256, 3, 1, 1, 1),
    ("vgg16.56_256_256", 256, 56, 256, 3, 1, 1, 1),
    ("vgg16.28_256_512", 256, 28, 512, 3, 1, 1, 1),
    ("vgg16.28_512_512", 512, 28, 512, 3, 1, 1, 1),
    ("vgg16.14_512_512", 512, 14, 512, 3, 1, 1, 1),
]

GOOGLENET = [
    ("gnet.stem", 3, 224, 64, 7, 2, 3, 1),
    ("gnet.56_64_64", 64, 56, 64, 1, 1, 0, 1),
    ("gnet.56_64_192", 64, 56, 192, 3, 1, 1, 1),
    ("gnet.3a.1x1_192_64", 192, 28, 64, 1, 1, 0, 1),
    ("gnet.3a.3x3_96_128", 96, 28, 128, 3, 1, 1, 1),
    ("gnet.3a.3x3_16_32", 16, 28, 32, 3, 1, 1, 1),
    ("gnet.3b.3x3_128_192", 128, 28, 192, 3, 1, 1, 1),
    ("gnet.3b.3x3_32_96", 32, 28, 96, 3, 1, 1, 1),
    ("gnet.4a.1x1_480_192", 480, 14, 192, 1, 1, 0, 1),
    ("gnet.4a.3x3_96_208", 96, 14, 208, 3, 1, 1, 1),
    ("gnet.4a.3x3_16_48", 16, 14, 48, 3, 1, 1, 1),
    ("gnet.4e.1x1_528_256", 528, 14, 256, 1, 1, 0, 1),
    ("gnet.4e.3x3_160_320", 160, 14, 320, 3, 1, 1, 1),
    ("gnet.5b.1x1_832_384", 832, 7, 384, 1, 1, 0, 1),
    ("gnet.5b.3x3_48_128", 48, 7, 128, 3, 1, 1, 1),
]

# Inception-v3's factorized layers (not in SHAPES.md): asymmetric kernels must not be slow
INCEPTION_V3 = [
    ("iv3.stem.3x3_32_64", 32, 147, 64, 3, 1, 1, 1),
    ("iv3.5b.5x5_48_64", 48, 35, 64, 5, 1, 2, 1),
    ("iv3.6b.1x7_128", 128, 17, 128, (1, 7), 1, (0, 3), 1),
    ("iv3.6b.7x1_128_192", 128, 17, 192, (7, 1), 1, (3, 0), 1),
    ("iv3.6e.1x7_192", 192, 17, 192, (1, 7), 1, (0, 3), 1),
    ("iv3.6e.7x1_192", 192, 17, 192, (7, 1), 1, (3, 0), 1),
    ("iv3.7b.1x3_384", 384, 8, 384, (1, 3), 1, (0, 1), 1),
    ("iv3.7b.3x1_384", 384, 8, 384, (3, 1), 1, (1, 0), 1),
]

# The original GoogLeNet's 5x5 branches (torchvision's GoogLeNet has 3x3 there): 16-32 input
# channels, a filter row of 80-160 floats (the channels_last forward's padded-copy gather)
GOOGLENET_5X5 = [
    ("gnet.v1.3a.5x5_16_32", 16, 28, 32, 5, 1, 2, 1),
    ("gnet.v1.4e.5x5_32_128", 32, 14, 128, 5, 1, 2, 1),
]

OTHER = [
    ("dw3x3.56_144", 144, 56, 144, 3, 1, 1, 144),
    ("dw3x3.14_576", 576, 14, 576, 3, 1, 1, 576),
    ("grouped32.56_128", 128, 56, 128, 3, 1, 1, 32),
]

# ResNeXt-50 32x4d's other grouped 3x3 layers (not in SHAPES.md): 32 groups of 8, 16 and 32
# channels, and the stride-2 one opening stage 2 (OTHER has stage 1's, 32 groups of 4)
RESNEXT = [
    ("rx50.2.grouped32.s2_256", 256, 56, 256, 3, 2, 1, 32),
    ("rx50.2.grouped32.28_256", 256, 28, 256, 3, 1, 1, 32),
    ("rx50.3.grouped32.14_512", 512, 14, 512, 3, 1, 1, 32),
    ("rx50.4.grouped32.7_1024", 1024, 7, 1024, 3, 1, 1, 32),
]

# Output channels that no register tile's width divides (16, 48, 80, 112: the 12 x 16, 8 x 48 and
# narrow-panel tiles), and MobileNetV2 / EfficientNet-B0's depthwise layers (5x5, stride 2; not in
# SHAPES.md)
WIDTHS = [
    ("gnet.v1.3a.1x1_192_16", 192, 28, 16, 1, 1, 0, 1),
    ("iv3.5b.1x1_192_48", 192, 35, 48, 1, 1, 0, 1),
    ("effnet.4.1x1_240_80", 240, 14, 80, 1, 1, 0, 1),
    ("effnet.5.1x1_480_112", 480, 14, 112, 1, 1, 0, 1),
]
MOBILE = [
    ("mnv2.dw3x3.112_96_s2", 96, 112, 96, 3, 2, 1, 96),
    ("effnet.dw5x5.56_144_s2", 144, 56, 144, 5, 2, 2, 144),
    ("effnet.dw5x5.28_240", 240, 28, 240, 5, 1, 2, 240),
    ("effnet.dw5x5.14_672_s2", 672, 14, 672, 5, 2, 2, 672),
    ("effnet.dw5x5.7_1152", 1152, 7, 1152, 5, 1, 2, 1152),
]

# RegNet's grouped 3x3 layers, whose groups (24, 48, 56 channels) no grouped.cpp kernel takes
# (RegNetX-3.2GF: 48-channel groups; RegNetY-1.6GF: 24; RegNetX-1.6GF: 56), and MobileNetV2 /
# EfficientNet-B0's 1x1 expansions whose input channels fill no register tile (the swapped weight
# gradient; not in SHAPES.md)
REGNET = [
    ("regnetx32.1.grouped2.56_96", 96, 56, 96, 3, 1, 1, 2),
    ("regnetx32.2.grouped4.28_192", 192, 28, 192, 3, 1, 1, 4),
    ("regnetx32.2.grouped4.s2_192", 192, 56, 192, 3, 2, 1, 4),
    ("regnetx32.3.grouped9.14_432", 432, 14, 432, 3, 1, 1, 9),
    ("regnety16.1.grouped2.56_48", 48, 56, 48, 3, 1, 1, 2),
    ("regnetx16.2.grouped4.28_224", 224, 28, 224, 3, 1, 1, 4),
    ("mnv2.1x1_24_144", 24, 56, 144, 1, 1, 0, 1),
    ("effnet.1x1_40_240", 40, 28, 240, 1, 1, 0, 1),
]

# CIFAR's ResNet (He et al. 2016, 20-110 layers, 1x1 projection shortcuts), 32 x 32 images: few
# channels (16-64), run at the batch it trains at (CONVX_BENCH_CPU_N=128; not in SHAPES.md):
#   CONVX_BENCH_SET=all CONVX_BENCH_CPU_N=128 pytest bench/bench_conv2d.py -k cifar ...
CIFAR = [
    ("cifar.stem_3_16", 3, 32, 16, 3, 1, 1, 1),
    ("cifar.3x3_16", 16, 32, 16, 3, 1, 1, 1),
    ("cifar.3x3_16_32_s2", 16, 32, 32, 3, 2, 1, 1),
    ("cifar.1x1_16_32_s2", 16, 32, 32, 1, 2, 0, 1),
    ("cifar.3x3_32", 32, 16, 32, 3, 1, 1, 1),
    ("cifar.3x3_32_64_s2", 32, 16, 64, 3, 2, 1, 1),
    ("cifar.3x3_64", 64, 8, 64, 3, 1, 1, 1),
]

# Layers of few output channels (not in SHAPES.md): a U-Net-style decoder's RGB output and a
# segmentation head's single-channel 1x1 and 3x3 outputs
FEW_OUTPUTS = [
    ("decoder.out_64_3", 64, 128, 3, 3, 1, 1, 1),
    ("seghead.3x3_256_1", 256, 64, 1, 3, 1, 1, 1),
    ("seghead.1x1_64_1", 64, 128, 1, 1, 1, 0, 1),
]

# DeepLab-v3's dilated 3x3 layers (ResNet-50 at output stride 8: layer 3 at dilation 2, layer 4 at 4;
# the ninth field is the dilation)
DILATED = [
    ("deeplab.l3.3x3_256_d2", 256, 28, 256, 3, 1, 2, 1, 2),
    ("deeplab.l4.3x3_512_d4", 512, 28, 512, 3, 1, 4, 1, 4),
]

QUICK = RESNET50 + [GOOGLENET[9], VGG16[0]] + INCEPTION_V3[2:4] + OTHER
ALL = (RESNET50 + VGG16 + GOOGLENET + GOOGLENET_5X5 + INCEPTION_V3 + OTHER + RESNEXT + WIDTHS + MOBILE + DILATED +
       REGNET + CIFAR + FEW_OUTPUTS)


def kernel_hw(v):
    """An int or a (height, width) pair as a pair."""
    return (v, v) if isinstance(v, int) else tuple(v)
