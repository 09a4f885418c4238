// The emulated build of csrc/cuda/conv2d_tc.cu.
#include "../cuda/conv2d_tc.cu"
