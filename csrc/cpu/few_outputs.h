// Convolutions with a few output channels (1 to 4: a decoder's RGB or mask output, a
// segmentation head's logits), one group, float32, channels_last: direct loops vectorised along
// the input channels, which these layers have many of, where the GEMM's register tiles of 8 to
// 32 output channels (or of dW's 8 rows) computed mostly padding.
//
//   forward:  y[p, k] = b[k] + sum over taps t and channel vectors v of lane_sum(x[p + t, v] * w[k, t, v])
//             (a block of pixels' K sums at once, each tap's weight vectors loaded once for them)
//   weight gradient: dW[k, t, v] += sum over p of dY[p, k] * x[p + t, v]
//             (dW's K x (a block of channel vectors) for one tap held in registers along a run
//             of an output row's pixels)
//
// Compiled for AVX-512, AVX2 + FMA and the baseline (isa_each.h's each()).
#pragma once

#include "../common/conv_params.h"

#include <cstdint>

namespace convx::cpu::few_outputs {

// One group, 1 to 4 output channels, input channels a multiple of 16.
bool applicable(const Conv2dShape& sh, const Conv2dParams& p);

// y [N, Ho, Wo, K] (NHWC) = conv(x [N, H, W, C] NHWC, w [K][R][S][C] (the channels_last weight)) + bias.
void forward_nhwc(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& sh,
                  const Conv2dParams& p);

// Whether the data gradient takes data_grad_nhwc: applicable() at stride 1.
bool data_grad_applicable(const Conv2dShape& sh, const Conv2dParams& p);
// gx [N, H, W, C] (NHWC) = the data gradient from gy [N, Ho, Wo, K] (NHWC) and w [K][R][S][C], + bias
// (per input channel: a transposed convolution's).
void data_grad_nhwc(const float* gy, const float* w, const float* bias, float* gx, const Conv2dShape& sh,
                    const Conv2dParams& p);

// gw [K][R][S][C] (the channels_last weight) = the weight gradient from x [N, H, W, C] and gy
// [N, Ho, Wo, K] (NHWC). Threads split dW's channels (blocks fixed by the shape: the same bits on
// any thread count).
void weight_grad_nhwc(const float* x, const float* gy, float* gw, const Conv2dShape& sh, const Conv2dParams& p);

}  // namespace convx::cpu::few_outputs
