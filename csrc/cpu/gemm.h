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

#include <algorithm>
#include <cstdint>

namespace convx::cpu {

enum class Isa { Base = 0, Avx2 = 1, Avx512 = 2 };

// Per-thread scratch buffers for the CPU kernels: 64-byte aligned, grown on
// demand and kept between calls, never zero-filled (so a call neither faults
// in nor clears fresh pages). Each user owns its slots, so buffers used at the
// same time never share one: the GEMM's packing 0-1, the convolution's
// im2col / padded input 2-3, Winograd 4-9, an A or a B packed once for
// several products (PackedA, PackedB below) 10-11, a convolution's operands
// copied to the layout it computes in (layout.h's scratch tensors) 12-13, its
// weight in that layout 14, a data gradient's rotated (or per-phase) weight 15, an NCHW weight
// gradient's transposed block or a channels_last one's dW^T by filter rows 16 and
// gemm_packed_a's column panels that cross images 17, a channels_last 1x1 weight gradient taken with
// X and dY swapped (its dW^T) 18.
enum ThreadBufferSlot {
  kGemmPackB = 0, kGemmPackA = 1, kConvCol = 2, kConvPadded = 3, kWinogradFirst = 4, kGemmPackedA = 10,
  kGemmPackedB = 11, kLayoutFirst = 12, kLayoutSecond = 13, kLayoutWeight = 14, kLayoutRotated = 15,
  kConvWgradT = 16, kGemmBatchC = 17, kConvWgradSwapped = 18, kThreadBufferSlots = 19
};
void* thread_buffer(int slot, int64_t bytes);
template <typename T>
T* thread_buffer(int slot, int64_t n) {
  return static_cast<T*>(thread_buffer(slot, n * int64_t(sizeof(T))));
}
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

// An A operand packed once and multiplied by several B (an NCHW layer's weights
// by each image of the batch and each block of its im2col): gemm() packs A
// again for every product, which for a late ResNet layer (7x7 or 14x14 pixels
// an image, 2048 x 512 weights) costs a tenth of the product or more. The
// packing lives in the calling thread's kGemmPackedA buffer (valid until that
// thread packs another A); other threads may read it meanwhile. n_hint: the
// column count of the products (it picks the register tile, as gemm() does).
// float32 rows contiguous along k are not packed: the products read them in place
// (lda > 0), as long as A lives.
template <typename T>
struct PackedA {
  const T* data = nullptr;
  int64_t M = 0, K = 0;
  const void* kernel = nullptr;  // the tile it was packed for (gemm.cpp)
  int64_t lda = 0;  // > 0: not packed, A's rows read where they are (data = A, row stride lda)
};
template <typename T>
PackedA<T> pack_a_once(int64_t M, int64_t K, const T* A, int64_t rsa, int64_t csa, int64_t n_hint);
// The same for a B operand (a channels_last layer's weights, B of every
// image's product): packed once into the calling thread's kGemmPackedB
// buffer; m_hint: the products' row count (it picks the register tile).
template <typename T>
struct PackedB {
  const T* data = nullptr;
  int64_t K = 0, N = 0;
  const void* kernel = nullptr;
};
template <typename T>
PackedB<T> pack_b_once(int64_t K, int64_t N, const T* B, int64_t rsb, int64_t csb, int64_t m_hint);
// C [M, b.N] (+)= A B with the packed B; otherwise as gemm().
template <typename T>
// bias (with accumulate false): C = A B + bias[j], the tiles' accumulators starting from it where A's
// rows are read in place (csa == 1).
void gemm_packed_b(int64_t M, const T* A, int64_t rsa, int64_t csa, const PackedB<T>& b, T* C, int64_t rsc,
                   int64_t csc, bool accumulate, bool parallel, const T* bias = nullptr);

// The columns of B and C gathered from a batch of images: column j is pixel
// p = j % P of image n = j / P, at B + n * b_image + k * rsb + p and
// C + n * c_image + i * rsc + p. One product then covers several small images
// (an NCHW layer of 7x7 or 14x14 pixels), each block of A read once for all of
// them. {N, 0, 0}: a plain matrix with unit column strides.
struct BatchCols {
  int64_t P, b_image, c_image;
};
// C [a.M, N] (+)= A B with the packed A over the columns of a batch (unit column
// strides); split between the threads as gemm() is.
template <typename T>
// rbias (with accumulate false): C = A B + rbias[i] along row i (an NCHW layer's bias by output
// channel), the tiles' accumulators starting from it: no separate pass over C.
void gemm_packed_a(const PackedA<T>& a, int64_t N, const BatchCols& bc, const T* B, int64_t rsb, T* C, int64_t rsc,
                   bool accumulate, bool parallel, const T* rbias = nullptr);

// Whether `rows` rows of row_bytes each, stride_bytes apart, put more than 6 lines on one of L1's
// 64 sets (64-byte lines; 32 KiB 8-way and 48 KiB 12-way caches alike): rows a multiple of 4 KiB
// apart all land on the same sets, and a register tile's 12 rows of A read in place then evict
// each other (Zen 4's 8-way L1: a 3136 x 256 x 1024 product, A's rows 4 KiB apart, 60 GFLOP/s
// a core against 80-100 with the rows 64 bytes further apart). Such rows are copied first.
inline bool l1_sets_crowded(int64_t stride_bytes, int rows, int64_t row_bytes) {
  const int64_t lines = std::min<int64_t>(64, (row_bytes + 63) / 64);
  // rows within 384 consecutive lines put at most 6 on any set (the test is per product call:
  // Winograd's 16-channel tiles spent a tenth of their time counting)
  if (rows <= 0 || (stride_bytes >= 0 && ((int64_t(rows - 1) * stride_bytes) >> 6) + lines <= 6 * 64)) return false;
  int count[64] = {};
  for (int i = 0; i < rows; ++i) {
    const int64_t first = (int64_t(i) * stride_bytes) >> 6;
    for (int64_t l = 0; l < lines; ++l)
      if (++count[(first + l) & 63] > 6) return true;
  }
  return false;
}

// The L1 data cache's ways (Linux's sysfs; 8 where it does not say; CONVX_CPU_L1_WAYS overrides
// it, read once): a tile's 12 rows on one set fit a 12-way L1 (Zen 5, Intel's 48 KiB L1) but not
// an 8-way one (Zen 4).
int l1_ways();
// The L2 cache's size in bytes (sysfs; 1 MiB where it does not say).
int64_t l2_bytes();

// C [M, N] (row stride rsc, unit column stride) (+)= A [M, K] B [K, N] (float32),
// A never stored whole: rows(ctx, i, count, k0, kc, dst) writes A[i + r][k0, k0 + kc)
// to dst + r * kc for r < count (a register tile's rows) when the GEMM needs them
// (an im2col made on the fly, L1-sized at a time). Rows are split between the
// threads (each row of C made by one thread: no dependence on the thread count).
using RowsFn = void (*)(const void* ctx, int64_t i, int64_t count, int64_t k0, int64_t kc, float* dst);
// Optionally, rows read where they are (an implicit GEMM): direct(ctx, i, count, k0, kc, &seg)
// returns true when A[i + r][k0, k0 + kc) is, for every r < count, seg.n runs of seg.len
// elements (kc = n * len), run t at seg.a + r * seg.lda + t * seg.step (a channels_last
// convolution's MR output pixels along one image row: a filter row's S*C input floats each,
// stride*C apart, the next filter row W*C further); false sends the rows through rows().
// seg_len > 0: blocks of the reduction never split a run of seg_len elements at a multiple of
// it, and hold whole such runs when they fit (else equal pieces of one).
struct RowSegments {
  const float* a;
  int64_t lda, step, n, len;
};
using DirectFn = bool (*)(const void* ctx, int64_t i, int64_t count, int64_t k0, int64_t kc, RowSegments* seg);
// And optionally, rows gathered where they are, one pointer a row and run: gather(ctx, i, count, k0,
// kc, at, crow) returns n (1 <= n <= kGatherRuns; 0: it cannot) and sets at[t][r] (t < n, r < count)
// to where A[i + r][k0 + t * kc / n, k0 + (t + 1) * kc / n) lies contiguous, or to gemm_zero_row()
// for zeros, and crow[r] to the row of C that row of A makes (i + r, or another: rows in any order,
// each row of C once; then gather() must find every block). A channels_last convolution's output
// pixels, a filter tap's channels a run: a tile's pixels may span two image rows, or the image's
// edge (its taps outside read as zeros), and still not be copied. The rows then do not go through
// direct() or rows().
// With gather(), the reduction's blocks hold up to kGatherKC elements (and kGatherRuns runs).
constexpr int kGatherRuns = 12;
constexpr int64_t kGatherKC = 1536;
using GatherFn = int (*)(const void* ctx, int64_t i, int64_t count, int64_t k0, int64_t kc, const float* (*at)[16],
                         int64_t* crow);
constexpr int64_t kGemmZeroRow = kGatherKC;  // gemm_zero_row()'s floats: at least any block of the reduction
const float* gemm_zero_row();
// bias (with accumulate false): C = A B + bias[n], the tiles' accumulators starting from it in the
// first reduction block, not all of C set to it beforehand (a pass through memory).
// gather_block > 0: the gathered rows' blocks hold at most that many elements (and kGatherKC).
// stream: C, written once (accumulate false, the reduction one block), by streaming stores from the
// tiles whose rows direct() finds (AVX-512's and AVX2's float kernels), C's rows 16-byte aligned
// (64-byte aligned rows make whole lines): for a large result not read soon (isa_each.h's
// stream_stores).
// row_len > 0: direct() finds a tile's rows only within runs of row_len rows (an image row of
// output pixels); such runs a multiple of 8 and not of 12 take AVX-512's 8-row tile (no gather()).
void gemm_rows(int64_t M, int64_t N, int64_t K, RowsFn rows, const void* ctx, const float* B, int64_t rsb,
               int64_t csb, float* C, int64_t rsc, bool accumulate, bool parallel, DirectFn direct = nullptr,
               int64_t seg_len = 0, GatherFn gather = nullptr, const float* bias = nullptr,
               int64_t gather_block = 0, bool stream = false, int64_t row_len = 0);

// The register tile as a building block, for products that pack their own
// operands (Winograd's 36 small GEMMs, csrc/cpu/winograd.cpp). The tile is
// that of the widest kernel for large products (12 x 32 floats on AVX-512,
// 6 x 16 otherwise). A is packed per chunk of KC reduction rows into panels of
// MR rows ([chunk][M/MR panels][kc][MR]; rows past M zero); B is one panel of
// NR columns ([kc][NR]).
struct MicroTile {
  int MR, NR;
  int64_t KC;
  const void* kernel = nullptr;  // which build (gemm.cpp); pass the tile back to the products below
};
template <typename T>
MicroTile micro_tile();
// The tile for products of `rows` rows (a weight gradient's output channels):
// on AVX-512, 8 x 32 where 8-row panels waste less than 12-row ones (16 rows:
// 2 full panels instead of 12 + 4), else micro_tile().
template <typename T>
MicroTile micro_tile_for_rows(int64_t rows);
// The tile for whole tiles of `rows` x `cols` (a weight gradient's Kg x Cg): on AVX-512 where cols
// is not a multiple of the 32 columns, 8 x 48 where it is of 48 and rows of 8, else 16 x 16 where
// it is of 16 and rows of 16; else micro_tile_for_rows(rows).
template <typename T>
MicroTile micro_tile_for_cols(int64_t rows, int64_t cols);
// The float tile with the most columns that divide `cols` (AVX-512: 6 x 64, 12 x 32 or 16 x 16;
// else micro_tile()): C's columns in whole tiles, the fewest loads of A a step (products whose
// rows A reads in place, MR broadcasts a step, and whose columns are a layer's output channels).
// rows > 0 (the products' rows, in panels of MR): on AVX-512, for 16 or 32 columns (not 64) the
// 9 x 16 or 9 x 32 tile where 9-row panels pad a tenth fewer rows (or more) than 12- and 16-row
// ones, else for 16 columns 12 x 16 where 12-row panels pad a tenth fewer than 16-row ones.
MicroTile micro_tile_whole_cols(int64_t cols, int64_t rows = 0);
// A [M, K] (row-major, row stride lda) -> packed (round_up(M, MR) * K elements).
template <typename T>
void pack_a_panels(int64_t M, int64_t K, const T* A, int64_t lda, T* dst);
// C[mr, NR] (row stride ldc) (+)= Ap (one MR-row panel, kc deep) * Bp (kc x NR); mr <= MR rows stored.
template <typename T>
void micro_tile_product(int64_t kc, const T* Ap, const T* Bp, T* C, int64_t ldc, int64_t mr, bool add);
// The same with A unpacked: mr rows of kc contiguous elements, lda apart, read in place (rows on
// crowded L1 sets, l1_sets_crowded, and partial panels without an exact-height kernel through a
// packed copy); kc <= the tile's KC.
template <typename T>
void micro_tile_product_a_rows(const MicroTile& mt, int64_t kc, const T* A, int64_t lda, const T* Bp, T* C,
                               int64_t ldc, int64_t mr, bool add);
// The same with B unpacked: kc rows of NR contiguous elements, ldb apart.
template <typename T>
void micro_tile_product_b_rows(int64_t kc, const T* Ap, const T* B, int64_t ldb, T* C, int64_t ldc, int64_t mr,
                               bool add);
// C[MR, NR] (+)= A B with both operands in place, over nrows runs of kc steps: in run t,
// A is kc rows of MR contiguous elements lda apart from A + t * arow (a row-major block:
// the tile reads A^T), B kc rows of NR ldb apart from B + t * brow (pixels of several
// image rows, the gaps between the runs skipped). Whole tiles only (every element read).
template <typename T>
void micro_tile_product_runs(const MicroTile& mt, int64_t nrows, int64_t kc, const T* A, int64_t lda, int64_t arow,
                             const T* B, int64_t ldb, int64_t brow, T* C, int64_t ldc, bool add);
// Both on a given tile (from micro_tile_for_rows; its MR panels).
template <typename T>
void micro_tile_product(const MicroTile& mt, int64_t kc, const T* Ap, const T* Bp, T* C, int64_t ldc, int64_t mr,
                        bool add);
template <typename T>
void micro_tile_product_b_rows(const MicroTile& mt, int64_t kc, const T* Ap, const T* B, int64_t ldb, T* C,
                               int64_t ldc, int64_t mr, bool add);

}  // namespace convx::cpu
