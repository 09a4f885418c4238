// The emulated build of csrc/cuda/batch_norm.cu: the same source, compiled by g++
// against the SIMT runtime (csrc/common/device.cuh picks it with CONVX_SIMT).
#include "../cuda/batch_norm.cu"
