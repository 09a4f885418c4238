// The emulated build of csrc/cuda/tensor_core_probe.cu.
#include "../cuda/tensor_core_probe.cu"
