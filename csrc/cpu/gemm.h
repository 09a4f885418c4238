// A packed, register-blocked GEMM for the CPU kernels (float and double).
//
//   C[m, n] (+)= sum_k A[m, k] * B[k, n]
//
// Every operand is addressed through a (row stride, column stride) pair, so the
// convolution code hands it NCHW or NHWC views, transposed or not, without a
// copy. The loop nest is the BLIS one (Goto & van de Geijn, "Anatomy of
// High-Performance Matrix Multiplication"): B is packed into KC x NR slivers
// that stay in L1, A into MC x KC blocks that stay in L2, and a micro-kernel
// keeps an MR x NR tile of C in registers (6 x 16 floats = 12 ymm registers).
//
// The micro-kernel is written with GCC vector types and compiled three times:
// AVX-512 (12 x 32 floats), AVX2 + FMA (6 x 16) and the baseline ISA, chosen
// once at load time from the CPU's feature bits (CONVX_CPU_ISA=avx2|base
// caps the choice), so the extension runs on any x86-64 and uses what it has.
#pragma once

#include <cstdint>

namespace convx::cpu {

enum class Isa { Base = 0, Avx2 = 1, Avx512 = 2 };
// The instruction set the GEMM (and the kernels that follow it) run with.
Isa cpu_isa();
const char* cpu_isa_name();

template <typename T>
void gemm(
    int64_t M, int64_t N, int64_t K,
    const T* A, int64_t rsa, int64_t csa,
    const T* B, int64_t rsb, int64_t csb,
    T* C, int64_t rsc, int64_t csc,
    bool accumulate,  // false: C = A B; true: C += A B
    bool parallel);   // split C across at::parallel_for threads

// A GEMM whose B is packed once and reused by many products (Winograd's 36
// transformed weights): B [K, N] is packed whole, in the widest kernel's
// format ([K/KC chunks][N/NR panels][kc][NR], columns past N zero), and
// gemm_packed multiplies row-major A [M, K] (unit column stride) by the
// columns [n0, n1) of it (multiples of gemm_nr, or n1 = the padded width)
// into C [M, n1 - n0] (C points at column n0; row stride ldc; columns past N get zeros), serially.
template <typename T>
int gemm_nr();  // column tile of the kernel gemm_packed uses (16 or 32 floats)
template <typename T>
int64_t gemm_kc();  // rows of B per packed chunk (element (k, n) sits at
                    // (k/KC)*KC*Np + (n/NR)*kc*NR + (k%KC)*NR + n%NR, kc = that chunk's rows)
template <typename T>
int64_t packed_b_cols(int64_t N);  // N rounded up to gemm_nr
template <typename T>
void pack_b_whole(int64_t K, int64_t N, const T* B, int64_t rsb, int64_t csb, T* dst);  // dst: K * packed_b_cols(N)
template <typename T>
void gemm_packed(int64_t M, int64_t n0, int64_t n1, int64_t K, const T* A, int64_t lda, const T* Bp, int64_t Np,
                 T* C, int64_t ldc);

}  // namespace convx::cpu
