// The weight gradient of layers with few input channels (RGB stems: 3 -> 16-64 channels, 3x3 to
// 7x7) in channels_last, float32: vectors along dW's output channels, one zmm a 16 of them, each
// accumulating dY's pixel vector times a broadcast input value of one (tap, channel):
//
//   dW^T[j, k0:k0+16] += x[p + tap(j), c(j)] * dY[p, k0:k0+16]     (j = (r * S + s) * C + c)
//
// A block of up to 28 j's times up to 4 vectors of k stays in registers while it runs over a chunk
// of output rows (dY's pixels loaded once a block, each x value a broadcast operand), where the
// GEMM's tiles had 27 or 147 rows of a 9- or 12-row tile and dY's 16-64 columns. The input is read
// from a zero-padded copy (conv2d.cpp's pad_nhwc: every tap in bounds). Chunks of output rows fixed
// by the shape, their partial sums added in chunk order: the same bits on any thread count.
// Compiled for AVX-512, AVX2 + FMA and the baseline (isa_each.h's each()).
#pragma once

#include "../common/conv_params.h"

#include <cstdint>

namespace convx::cpu::few_inputs {

// One group, up to 4 input channels and C*R*S <= 256, output channels a multiple of 16 up to 64,
// padding >= 0.
bool weight_grad_applicable(const Conv2dShape& sh, const Conv2dParams& p);

// gw [K][R][S][C] (the channels_last weight) from x [N, H, W, C] and gy [N, Ho, Wo, K] (NHWC), x
// zero-padded already (sh.H, sh.W its padded size; p's padding 0: every tap in bounds).
void weight_grad_nhwc(const float* x, const float* gy, float* gw, const Conv2dShape& sh, const Conv2dParams& p);

}  // namespace convx::cpu::few_inputs
