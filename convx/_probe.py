"""What each tensor-core wrapper must return, from a second statement of the facts.

``csrc/common/tensor_core.cuh`` states the mma / ldmatrix fragment layouts as
the PTX ISA writes them (row = g + 8 (r & 1), ...). This module states them
again the way CuTe publishes them for SM80: thread-value layouts, a shape and a
stride per operand (``MMA_Traits<SM80_16x8x16_F32F16F16F32_TN>``,
``Copy_Traits<SM75_U32x4_LDSM_N>``, ...), evaluated here by a 10-line layout
function. ``tensor_core_probe`` results (emulated in the tests, the hardware's
in ``scripts/probe_tensor_cores.py``) are checked against :func:`expected`.
"""
import numpy as np

# (shape, stride) pairs; a layout maps (thread, value) to an offset.
_SM80_16x8_ROW = (((4, 8), (2, 2)), ((32, 1), (16, 8)))  # C / D: (T32, V4) -> m + 16 n
MMA = {
    # instruction: (A: (T32, V) -> m + 16 k, B: (T32, V) -> n + 8 k, C, K, values per register)
    "mma.m16n8k16.f16": ((((4, 8), (2, 2, 2)), ((32, 1), (16, 8, 128))),
                         (((4, 8), (2, 2)), ((16, 1), (8, 64))), _SM80_16x8_ROW, 16, 2),
    "mma.m16n8k16.bf16": ((((4, 8), (2, 2, 2)), ((32, 1), (16, 8, 128))),
                          (((4, 8), (2, 2)), ((16, 1), (8, 64))), _SM80_16x8_ROW, 16, 2),
    "mma.m16n8k8.tf32": ((((4, 8), (2, 2)), ((16, 1), (8, 64))),
                         (((4, 8), 2), ((8, 1), 32)), _SM80_16x8_ROW, 8, 1),
}
# ldmatrix: (source layout: (T32, bit) -> bit, destination layout: (T32, bit) -> bit), matrices
LDSM = {
    "ldmatrix.x1": ((((8, 4), 128), ((128, 0), 1)), ((32, 32), (32, 1)), 1),
    "ldmatrix.x2": ((((16, 2), 128), ((128, 0), 1)), ((32, (32, 2)), (32, (1, 1024))), 2),
    "ldmatrix.x4": (((32, 128), (128, 1)), ((32, (32, 4)), (32, (1, 1024))), 4),
    "ldmatrix.x1.trans": ((((8, 4), 128), ((128, 0), 1)), (((4, 8), (16, 2)), ((256, 16), (1, 128))), 1),
    "ldmatrix.x2.trans": ((((16, 2), 128), ((128, 0), 1)),
                          (((4, 8), (16, 2, 2)), ((256, 16), (1, 128, 1024))), 2),
    "ldmatrix.x4.trans": (((32, 128), (128, 1)), (((4, 8), (16, 2, 4)), ((256, 16), (1, 128, 1024))), 4),
}
CP_ASYNC = {"cp.async.ca.4": 4, "cp.async.ca.8": 8, "cp.async.ca.16": 16, "cp.async.cg.16": 16}
INSTRUCTIONS = list(MMA) + list(LDSM) + list(CP_ASYNC)


def _size(shape):
    return int(np.prod([_size(s) for s in shape])) if isinstance(shape, tuple) else shape


def _apply(shape, stride, i):
    """Offset of index i in a (nested) mode, first sub-mode fastest (CuTe's colexicographic order)."""
    if not isinstance(shape, tuple):
        return (i % shape) * stride
    off = 0
    for s, d in zip(shape, stride):
        off += _apply(s, d, i % _size(s))
        i //= _size(s)
    return off


def layout(spec, thread, value):
    shape, stride = spec
    return _apply(shape[0], stride[0], thread) + _apply(shape[1], stride[1], value)


def _bits16(x, dtype):
    import torch
    return torch.tensor(np.asarray(x, np.float32)).to(dtype).view(torch.int16).numpy().astype(np.uint16)


def mma_input(instruction, seed=0):
    """Registers for 32 lanes: a0..a3, b0, b1, c0..c3 (int32), small integers so every sum is exact."""
    import torch
    A_spec, B_spec, C_spec, K, per_reg = MMA[instruction]
    rng = np.random.default_rng(seed)
    A = rng.integers(-8, 9, (16, K)).astype(np.float32)
    B = rng.integers(-8, 9, (K, 8)).astype(np.float32)
    C = rng.integers(-64, 65, (16, 8)).astype(np.float32)
    regs = np.zeros((32, 10), np.uint32)
    nval = 4 * per_reg
    for lane in range(32):
        for v in range(nval):
            a = layout(A_spec, lane, v)
            b = layout(B_spec, lane, v % (2 * per_reg)) if v < 2 * per_reg else None
            if per_reg == 2:
                dtype = torch.bfloat16 if instruction.endswith("bf16") else torch.float16
                regs[lane, v // 2] |= np.uint32(_bits16(A[a % 16, a // 16], dtype)) << np.uint32(16 * (v % 2))
                if b is not None:
                    regs[lane, 4 + v // 2] |= np.uint32(_bits16(B[b // 8, b % 8], dtype)) << np.uint32(16 * (v % 2))
            else:
                regs[lane, v] = np.float32(A[a % 16, a // 16]).view(np.uint32)
                if b is not None:
                    regs[lane, 4 + v] = np.float32(B[b // 8, b % 8]).view(np.uint32)
        for i in range(4):
            c = layout(C_spec, lane, i)
            regs[lane, 6 + i] = np.float32(C[c % 16, c // 16]).view(np.uint32)
    return torch.from_numpy(regs.view(np.int32).copy())


def _decode(instruction, regs):
    """(A, B, C) as float64 matrices from lane registers, through the CuTe layouts."""
    import torch
    A_spec, B_spec, C_spec, K, per_reg = MMA[instruction]
    regs = regs.numpy().view(np.uint32)
    A, B, C = np.zeros((16, K)), np.zeros((K, 8)), np.zeros((16, 8))
    dtype = torch.bfloat16 if instruction.endswith("bf16") else torch.float16

    def val(word, h):
        if per_reg == 1:
            return float(np.uint32(word & 0xFFFFE000).view(np.float32))  # tf32: the top 19 bits
        bits = np.array([(int(word) >> (16 * h)) & 0xFFFF], np.uint16).view(np.int16)
        return float(torch.from_numpy(bits).view(dtype).float().item())

    for lane in range(32):
        for v in range(4 * per_reg):
            a = layout(A_spec, lane, v)
            A[a % 16, a // 16] = val(regs[lane, v // per_reg], v % per_reg)
            if v < 2 * per_reg:
                b = layout(B_spec, lane, v)
                B[b // 8, b % 8] = val(regs[lane, 4 + v // per_reg], v % per_reg)
        for i in range(4):
            c = layout(C_spec, lane, i)
            C[c % 16, c // 16] = float(regs[lane, 6 + i].view(np.float32))
    return A, B, C


def ldmatrix_input(seed=0):
    """The shared-memory row each lane points at: a permutation of 0..31."""
    import torch
    return torch.from_numpy(np.random.default_rng(seed).permutation(32).astype(np.int32))


def cp_async_input(instruction, seed=0):
    """Per lane (word offset into the data, source bytes), then 256 data words."""
    import torch
    size = CP_ASYNC[instruction]
    rng = np.random.default_rng(seed)
    words = size // 4
    head = np.zeros((32, 2), np.int32)
    head[:, 0] = rng.integers(0, 256 // words - 1, 32) * words  # aligned to the copy size
    head[:, 1] = rng.choice(np.arange(0, size + 1, 4), 32)  # 0 .. size bytes, zero-fill for the rest
    data = rng.integers(1, 2**31 - 1, 256).astype(np.int32)
    return torch.from_numpy(np.concatenate([head.ravel(), data]))


def make_input(instruction, seed=0):
    if instruction in MMA:
        return mma_input(instruction, seed)
    if instruction in LDSM:
        return ldmatrix_input(seed)
    return cp_async_input(instruction, seed)


def expected(instruction, inp):
    """What the instruction must leave in each lane (int32 [32, n]), from the CuTe layouts."""
    if instruction in MMA:
        A, B, C = _decode(instruction, inp)
        D = A @ B + C
        out = np.zeros((32, 4), np.float32)
        for lane in range(32):
            for i in range(4):
                c = layout(MMA[instruction][2], lane, i)
                out[lane, i] = D[c % 16, c // 16]
        return out.view(np.int32)
    if instruction in LDSM:
        src, dst, n = LDSM[instruction]
        rows = inp.numpy()
        # source bit -> (supplying lane, bit in its 128-bit row); that row holds codes 8 r .. 8 r + 7
        where = {}
        for lane in range(32):
            for b in range(128):
                where.setdefault(layout(src, lane, b), (lane, b))
        out = np.zeros((32, n), np.uint32)
        for lane in range(32):
            for v in range(32 * n):
                if v % 16:
                    continue
                src_lane, b = where[layout(dst, lane, v)]
                code = int(rows[src_lane]) * 8 + b // 16
                out[lane, v // 32] |= np.uint32(code << (16 * ((v % 32) // 16)))
        return out.view(np.int32)
    size = CP_ASYNC[instruction]
    x = inp.numpy()
    head, data = x[:64].reshape(32, 2), x[64:]
    out = np.full((32, 4), 0x77777777, np.int64)
    for lane in range(32):
        off, nbytes = head[lane]
        for w in range(size // 4):
            out[lane, w] = data[off + w] if 4 * w < nbytes else 0
    return out.astype(np.uint32).view(np.int32)
