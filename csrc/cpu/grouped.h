// Grouped convolution with few channels a group (ResNeXt's 32 groups of 4, 8
// or 16), channels_last, float32: direct loops vectorised along the output
// channels instead of one tiny GEMM a group (whose product is 4 x 36 there).
//
// With Cg == Kg channels a group dividing the vector width, the input channels
// a lane k needs are those of k's own group, and they sit in the same vector
// positions as the group's outputs: for each tap, one load of the input pixel
// at the output block's channel offset, then for c < Cg a shuffle that
// broadcasts element c of each group of Kg lanes, times the weight vector
// w[k][c][tap] (taken along k), accumulated:
//
//   y[p, k0:k0+L] = b + sum_{tap, c} shuffle_c(x[p + tap, k0:k0+L]) * wv[tap][c][k0:k0+L]
//
// One FMA and one shuffle a multiply-add of Cg lanes. A group as wide as the vector (16 channels
// on AVX-512) has no shuffle (each input channel a broadcast operand) and reads a copy of the
// input in zero-padded blocks of the vector's channels ([C / L][N][H'][W'][L]), whose pixels
// are a vector apart rather than C floats apart. The data gradient at
// stride 1 is the same loop over dY with the rotated weight (for a group,
// dX[c] sums w[k][c] dY[k] over the group's k: Cg == Kg makes it the same
// shape). Compiled for AVX-512, AVX2 + FMA and the baseline, picked by cpu_isa().
#pragma once

#include "../common/conv_params.h"

#include <cstdint>

namespace convx::cpu::grouped {

// Whether a float32 channels_last convolution takes this path: groups > 1,
// Cg == Kg in {2, 4, 8, 16} and dividing the widest vector the CPU runs.
bool applicable(const Conv2dShape& sh, const Conv2dParams& p);

// y [N, Ho, Wo, K] (NHWC) = conv(x [N, H, W, C] NHWC, w [K, Cg, R, S] channels_last: [K][R][S][Cg]) + bias.
// 3x3 at stride 1 and dilation 1 with 16 or 32 channels a group on AVX-512 (winograd_applicable):
// Winograd F(2x2, 3x3) (grouped.cpp; off with winograd::enabled()), as is the data gradient below.
bool winograd_applicable(const Conv2dShape& sh, const Conv2dParams& p);
// The same in NCHW: x [N, C, H, W] and y [N, K, Ho, Wo] contiguous, w channels_last as forward()'s.
void forward_nchw_winograd(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& sh,
                           const Conv2dParams& p);
void forward(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& sh,
             const Conv2dParams& p);

// Whether a float32 forward takes forward() with groups of 32 channels (Cg == Kg == 32, AVX-512:
// two vectors a group, each broadcast input channel multiplying both vectors' weights).
bool wide_applicable(const Conv2dShape& sh, const Conv2dParams& p);

// Whether the data gradient takes it: the forward's condition at stride 1, or at any stride with
// dilation 1 (one job a phase of dX).
bool data_grad_applicable(const Conv2dShape& sh, const Conv2dParams& p);
// gx [N, H, W, C] (NHWC) = the data gradient of the convolution above, from gy [N, Ho, Wo, K] (NHWC), + bias.
void data_grad(const float* gy, const float* w, const float* bias, float* gx, const Conv2dShape& sh,
               const Conv2dParams& p);

// gw [K, Cg, R, S] (contiguous) = the weight gradient of the convolution above, from x and gy (NHWC),
// under the forward's condition (any stride): for each tap, dY's vector times X's shuffled one.
void weight_grad(const float* x, const float* gy, float* gw, const Conv2dShape& sh, const Conv2dParams& p);

// NCHW (float32, Cg == Kg in {2, 4, 8, 16, 32}, filters of up to 64 taps, strides
// up to 4, any CPU): the same convolution read in its own layout, vectorised
// along the output rows (each group's planes copied a block of rows at a time
// into a zero-padded buffer, split into stride phases), no layout copies of the
// operands or the result. The data gradient at stride 1.
bool nchw_applicable(const Conv2dShape& sh, const Conv2dParams& p);
// One group of few input channels (C < 8: the 3-channel stems and first layers) and K a multiple of
// 8 output channels, the same limits on taps and strides: forward_nchw as a single group (Cg = C,
// Kg = K), whose planes of so few channels stay in L1 while every block of 8 output channels reads them.
// Or of up to 4 output channels, any C (a decoder's RGB or mask output layer, the 3-channel stem's
// data gradient as the forward of dY): vectors along the output rows where the GEMM's tiles of 16
// or more output channels computed mostly padding.
bool dense_nchw_applicable(const Conv2dShape& sh, const Conv2dParams& p);
bool data_grad_nchw_applicable(const Conv2dShape& sh, const Conv2dParams& p);
// y [N, K, Ho, Wo] = conv(x [N, C, H, W], w [K, Cg, R, S] contiguous) + bias; x and y contiguous
// in NCHW, or with nhwc in channels_last (read and written in place: each task's planes are made
// from the pixels' channels, its results stored back a pixel at a time).
void forward_nchw(const float* x, const float* w, const float* bias, float* y, const Conv2dShape& sh,
                  const Conv2dParams& p, bool nhwc);
// gx [N, C, H, W] = the data gradient from gy [N, K, Ho, Wo], + bias (per input channel); the layouts
// as forward_nchw's.
void data_grad_nchw(const float* gy, const float* w, const float* bias, float* gx, const Conv2dShape& sh,
                    const Conv2dParams& p, bool nhwc);

// The weight gradient of that NCHW convolution (up to 16 channels a group, filters of up to 64
// taps): gw [K, Cg, R, S]
// from x [N, C, H, W] and gy [N, K, Ho, Wo], all contiguous; the same bits on any thread count.
bool weight_grad_nchw_applicable(const Conv2dShape& sh, const Conv2dParams& p);
void weight_grad_nchw(const float* x, const float* gy, float* gw, const Conv2dShape& sh, const Conv2dParams& p);

}  // namespace convx::cpu::grouped
