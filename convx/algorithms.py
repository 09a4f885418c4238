"""Which CUDA kernel a convolution runs: the rule of csrc/cuda/conv2d_tc.cu and conv2d.cu, in Python.

    >>> convx.algorithms.conv2d_cuda((256, 64, 56, 56), (64, 64, 3, 3), torch.float16, padding=1)
    {'forward': 'tensor cores, cp.async pipeline (tc_fast_kernel)', 'data_grad': ..., 'weight_grad': ...}

``python -m convx info --conv N,C,H,W,K,R,S[,stride,pad,dil,groups] --dtype float16`` prints it.
The C++ rule is the authority; tests/test_conv2d_tc.py checks that this one names the
kernels the emulator's launch log shows, over a sweep of shapes, dtypes and layouts.
It assumes dense tensors with 16-byte aligned data (what torch allocates); a strided
view whose channels are not contiguous goes to the gather kernel instead of the pipeline.
"""
import math

import torch

FAST = "tensor cores, cp.async pipeline (tc_fast_kernel)"
FAST_NCHW = "tensor cores, cp.async pipeline (tc_fast_kernel) on channels_last copies of the NCHW tensors"
GATHER = "tensor cores, strided gather (tc_gather_kernel)"
CORES = "CUDA cores (igemm_kernel)"


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def conv2d_cuda(input_size, weight_size, dtype, stride=1, padding=0, dilation=1, groups=1, channels_last=True,
                allow_tf32=None, capability=(9, 0), num_sms=132):
    """{'forward', 'data_grad', 'weight_grad'}: the kernel each pass runs on a GPU of ``capability``.

    ``allow_tf32`` defaults to ``torch.backends.cudnn.allow_tf32`` (torch's rule for
    float32 convolutions); ``channels_last`` is the layout the convolution computes in
    (channels_last when the input or the weight is).
    """
    n, c, h, w = input_size
    k, cg, r, s = weight_size
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    ph, pw = _pair(padding)
    ho = (h + 2 * ph - dh * (r - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (s - 1) - 1) // sw + 1
    kg = k // groups
    if allow_tf32 is None:
        allow_tf32 = torch.backends.cudnn.allow_tf32
    tc_type = dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and allow_tf32)
    tc = tc_type and capability[0] >= 8
    vec = 16 // torch.empty((), dtype=dtype).element_size()

    def plan(cols, red, rows=None):
        return tc and cols >= 16 and red >= 16 and (rows is None or rows >= 16)

    def forward_splits(m, cols, red):
        tiles = math.ceil(m / 128) * math.ceil(cols / 128) * groups
        ktiles = math.ceil(red / (4 * vec))  # k per 64-byte stage: 32 halves or 16 floats
        splits = 1 if tiles >= num_sms else math.ceil(num_sms / tiles)
        splits = max(1, min(splits, ktiles // 8, 16))
        per = math.ceil(ktiles / splits)
        n = math.ceil(ktiles / per)
        return f", split-K x{n} (sum_forward_splits_kernel)" if n > 1 else ""

    out = {}
    fwd = plan(kg, cg * r * s)
    fast = FAST if channels_last else FAST_NCHW  # NCHW: copied to channels_last and back
    out["forward"] = ((fast if cg % vec == 0 else GATHER) + forward_splits(n * ho * wo, kg, cg * r * s)
                      if fwd else CORES)
    dgrad = plan(cg, kg * r * s)
    if dgrad and kg % vec == 0 and sh == sw == 1:
        out["data_grad"] = fast + forward_splits(n * h * w, cg, kg * r * s)  # the flipped-weight forward
    else:
        out["data_grad"] = GATHER if dgrad else CORES
    red = n * ho * wo
    if plan(cg * r * s, red, rows=kg):
        tiles = math.ceil(kg / 128) * math.ceil(cg * r * s / 128) * groups
        splits = max(1, math.ceil(2 * num_sms / tiles))
        splits = min(splits, max(1, red // 512), 64)
        kps = math.ceil(math.ceil(red / splits) / 64) * 64
        splits = math.ceil(red / kps)
        out["weight_grad"] = GATHER + (f", split-K x{splits} (sum_splits_kernel)" if splits > 1 else "")
    else:
        out["weight_grad"] = CORES
    return out
