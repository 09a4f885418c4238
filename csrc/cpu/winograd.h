// Winograd F(4x4, 3x3) convolution on the CPU (float32): 3x3 kernels, stride 1,
// dilation 1, one group; forward, data gradient and weight gradient. See
// winograd.cpp for the algorithm and its error.
#pragma once

#include <cstdint>

namespace convx::cpu::winograd {

// The switch (torch.ops.convx.cpu_winograd / convx.backends.cpu.winograd).
bool enabled();
void set_enabled(bool on);
// Winograd for the 4x4 stride-2 data gradient (the transposed 4x4 stride-2 forward) by its
// output phases (conv2d.cpp's phase_winograd_data_grad), when enabled(): 1 taken, 0 not,
// -1 (the default) where this machine measured it faster (torch.ops.convx.cpu_winograd_phases /
// convx.backends.cpu.winograd_phases).
int phases();
void set_phases(int mode);

// Whether a float32 convolution of this geometry takes the Winograd path
// (when enabled): a 3x3 kernel at stride 1, dilation 1, one group, 16 or more
// channels in and out, and enough output tiles to repay the weight transform.
bool applicable(int64_t N, int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                int64_t dil_h, int64_t dil_w, int64_t groups, int64_t Ho, int64_t Wo);

// y [N, K, Ho, Wo] = bias + sum_{c,r,s} g(k, c, r, s) x[n, c, ho - pad_t + r, wo - pad_l + s]
// (positions outside x read 0; pad_t / pad_l may be negative). x and y are
// contiguous NCHW, or NHWC when `nhwc`. The filter g is read from w:
//   flip == false: g(k, c, r, s) = w[k*sk + c*sc + (r*3 + s)*ts]           (the forward convolution)
//   flip == true:  g(k, c, r, s) = w[c*sk + k*sc + ((2-r)*3 + (2-s))*ts]   (the data gradient: w
//                  transposed and rotated, for the stride-1 convolution of dY)
// with ts == 1 (an OIHW weight: sk = 9 C, sc = 9 forward) or sc == 1 (channels_last's KRSC: the
// taps ts = C apart, sk = 9 C forward; flipped, the forward weight's 9 K and K), read in place.
// phase_channels > 0 (K = 4 phase_channels; NHWC: a multiple of 16): output channel k is channel
// k % phase_channels of phase (a, b) = (k / phase_channels) / 2, % 2, written to pixel
// (2 ho + a, 2 wo + b) of y [N][phase_channels][2 Ho][2 Wo] (NHWC: [N][2 Ho][2 Wo][phase_channels];
// conv2d.cpp's transposed 4x4 stride 2). NHWC: ldx, ldy > 0 the strides of x's and y's pixels
// (floats; a group's channels among more: x + g Cg, ldx the layer's C), else C and K.
void conv3x3(const float* x, const float* w, int64_t sk, int64_t sc, int64_t ts, bool flip, const float* bias, float* y,
             int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo, int64_t pad_t,
             int64_t pad_l, bool nhwc, int64_t phase_channels = 0, int64_t ldx = 0, int64_t ldy = 0);

// The weight gradient of a float32 3x3 / stride-1 convolution (geometry as
// applicable's) by the same tiles: dw[k][c][r][s] (krsc == false) or
// dw[k][r][s][c] (krsc) = sum over n, ho, wo of dy[n, k, ho, wo] x[n, c, ho - pad_t + r, wo - pad_l + s];
// x and dy contiguous NCHW, or NHWC when `nhwc`. Taken (weight_grad_applicable)
// with at least kWgradMinTiles output tiles (kWgradMinTilesLarge where C * K >= 128 * 128), 3 a row,
// and C * K <= 256 * 256, or past that with kWgradMinBlockTiles tiles whose transforms fit 64 MB
// (36 x tiles x (2 C + K) floats).
constexpr int64_t kWgradMinTiles = 128;
constexpr int64_t kWgradMinTilesLarge = 32;
constexpr int64_t kWgradMinBlockTiles = 32;  // C * K over 256 * 256 (weight_grad3x3's block mode)
bool weight_grad_applicable(int64_t N, int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h,
                            int64_t stride_w, int64_t dil_h, int64_t dil_w, int64_t groups, int64_t Ho, int64_t Wo);
// NHWC: ldx, ldy > 0 the strides of x's and dy's pixels (a group's channels among more), as conv3x3's.
void weight_grad3x3(const float* x, const float* dy, float* dw, bool krsc, int64_t N, int64_t C, int64_t H, int64_t W,
                    int64_t K, int64_t Ho, int64_t Wo, int64_t pad_t, int64_t pad_l, bool nhwc, int64_t ldx = 0,
                    int64_t ldy = 0);

// Winograd F(m, r) along one axis (winograd_line.cpp): float32 1 x r and r x 1 convolutions,
// r = 3 or 7, at stride 1, dilation 1, one group, no padding across the line (pad_unit: the
// padding on the axis of size 1), 16 or more channels in and out and 48 tiles or more.
bool line_applicable(int64_t N, int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                     int64_t dil_h, int64_t dil_w, int64_t groups, int64_t pad_unit, int64_t Ho, int64_t Wo);
// y [N, Ho, Wo, K] (NHWC) = bias + sum_{c,j} g(k, c, j) x[n, pixel j - pad along the line, c] for
// the r taps along W (along_w: a 1 x r filter, Ho == H) or along H (r x 1, Wo == W); x NHWC, the
// filter read in place as conv3x3's (tap j at j * ts; flip: transposed and reversed, the data
// gradient's). Positions outside x read 0.
void conv_line(const float* x, const float* w, int64_t sk, int64_t sc, int64_t ts, bool flip, const float* bias,
               float* y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t Ho, int64_t Wo, int64_t r,
               bool along_w, int64_t pad);

// The weight gradient of such a layer by the same tiles (F(r, m)): dw [K][taps][C] (channels_last's
// layout) = sum over n and the output pixels of dy[.., k] x[.., tap - pad along the line, c]; x and
// dy NHWC. Taken (line_weight_grad_applicable) for 7 taps where line_applicable is and the
// transforms of every tile fit 64 MiB.
bool line_weight_grad_applicable(int64_t N, int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h,
                                 int64_t stride_w, int64_t dil_h, int64_t dil_w, int64_t groups, int64_t pad_unit,
                                 int64_t Ho, int64_t Wo);
void weight_grad_line(const float* x, const float* dy, float* dw, int64_t N, int64_t C, int64_t H, int64_t W,
                      int64_t K, int64_t Ho, int64_t Wo, int64_t r, bool along_w, int64_t pad);

}  // namespace convx::cpu::winograd
