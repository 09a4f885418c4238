// The tensor-core convolutions (conv2d_tc.cu), called by conv2d.cu ahead of
// its CUDA-core kernel: each returns false, having done nothing, where the
// tensor cores do not take the case (float64; float32 without
// torch.backends.cudnn.allow_tf32; fewer than 16 columns or reduction steps
// per group, e.g. depthwise), and otherwise fills the preallocated output.
#pragma once

#include "../common/conv_params.h"

#include <ATen/core/Tensor.h>

namespace convx::cuda {

enum class TcOp { Forward, DataGrad, WeightGrad };
struct TcPlan {
  bool use = false;   // tensor cores at all
  bool fast = false;  // the cp.async pipeline (else the strided gather)
};
// `fast_ok`: the layout / alignment conditions of the fast path hold.
TcPlan tc_plan(at::ScalarType dtype, bool fast_ok, const Conv2dShape& sh, const Conv2dParams& p, TcOp op);

// `residual` (optional) and `relu`: the fused epilogue, applied in the store.
bool tc_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                const at::Tensor& residual, bool relu, const at::Tensor& y, const Conv2dShape& sh,
                const Conv2dParams& p, bool cl);
bool tc_data_grad(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& bias,
                  const at::Tensor& dx, const Conv2dShape& sh, const Conv2dParams& p, bool cl);
bool tc_weight_grad(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& dw,
                    const Conv2dShape& sh, const Conv2dParams& p, bool cl);

}  // namespace convx::cuda
