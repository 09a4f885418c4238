// The emulated build of csrc/cuda/pool2d.cu: the same source, compiled by g++
// against the SIMT runtime (csrc/common/device.cuh picks it with CONVX_SIMT).
#include "../cuda/pool2d.cu"
