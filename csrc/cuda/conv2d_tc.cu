// Conv2d on tensor cores: forward, data gradient and weight gradient as
// implicit GEMMs (the problems of conv2d_problems.cuh) on mma.sync.
//
//   element     instruction                       per 32-byte k-step
//   float16     mma.m16n8k16.f32.f16.f16.f32      one mma (16 k)
//   bfloat16    mma.m16n8k16.f32.bf16.bf16.f32    one mma (16 k)
//   float32     mma.m16n8k8.f32.tf32.tf32.f32     one mma (8 k), only where
//               torch.backends.cudnn.allow_tf32 (torch's rule for convolutions)
//
// Tile: 128 x 128 outputs per block of 256 threads (8 warps, 4 along M x 2
// along N, 32 x 64 per warp: 2 x 8 mma tiles, 64 float accumulators per
// thread), 64 bytes of k per stage (32 halves or 16 floats). Shared memory
// holds A and B as [row][64 bytes] with k contiguous; the four 16-byte chunks
// of row r are stored at chunk c ^ ((r >> 1) & 3), so the eight 16-byte rows
// one ldmatrix phase reads fall in eight different bank groups (no
// conflicts). Fragments come from ldmatrix.x4 (A: one per 16 x 32-byte block;
// B: one per two n8 tiles); the same byte addressing serves 16-bit elements
// and tf32, whose fragments are the 16-bit ones with 32-bit words.
//
// Two ways to fill the stages:
// - "fast" (forward, channels_last, C/groups a multiple of 16 bytes, 16-byte
//   aligned tensors): every 16 bytes of a tile row are 8 channels (4 floats)
//   at one (r, s), copied by one cp.async.cg with zero-fill for padding and
//   tails; a 3-stage pipeline (48 KiB) overlaps the copies with the mma.
//   Stride-1 data gradients run here too, as the forward convolution of dY
//   with the flipped, transposed weight. An NCHW operand that would qualify as
//   channels_last is copied to channels_last, and the result copied back
//   (via_channels_last below).
// - "gather" (everything else: strides, dilation, odd channel counts
//   such as the 3-channel stem or 1x7 layers, weight gradients): each thread
//   reads its elements through the problem's strided a(m, k) / b(k, n),
//   rounds them to the element type (tf32: cvt.rna) and stores them as
//   16-byte chunks; the next tile's loads are issued before the current
//   tile's mma (register double buffering). Weight gradients split the long
//   reduction into a float workspace (conv2d.cu's split rule), summed in order.
//
// Resources (sm_90, ptxas; tests/test_tensor_core_sass.py reads them back with
// cuobjdump -res-usage and checks these limits, and the emulator's launch log
// checks the shared memory):
//   tc_fast_kernel:    <= 168 registers, 0 bytes local (no spills), 49152 bytes dynamic shared
//   tc_gather_kernel:  <= 168 registers, 0 bytes local (no spills), 16384 bytes dynamic shared
// (measured with nvcc 13.0: 128 to 159 and 156 to 162 registers across the
// instantiations; the 64 accumulators and 2 x 4 + 8 x 2 fragment registers
// dominate. Above 128 registers one block of 256 threads fits an SM at a time:
// 8 warps, with the 3-stage cp.async pipeline covering the memory latency.
// Capping the fast kernel at 128 registers (__launch_bounds__(256, 2), two
// blocks an SM) made ptxas spill 8 bytes in its TF32 instantiation, so it is
// not capped; which is faster is for the first GPU run to say.)
#include "../common/tensor_core.cuh"
#include "conv2d_problems.cuh"
#include "conv2d_tc.h"

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>

#include <cstring>

namespace convx::cuda {
namespace {

constexpr int kBM = 128, kBN = 128, kRowBytes = 64, kTcThreads = 256, kStages = 3;
constexpr int kTileBytes = (kBM + kBN) * kRowBytes;  // one stage: A then B

__device__ __forceinline__ int swizzled(int row, int chunk) { return row * kRowBytes + ((chunk ^ ((row >> 1) & 3)) << 4); }

template <typename E>
struct Elem;
template <>
struct Elem<at::Half> {
  using bits = uint16_t;
  __device__ static uint16_t from(float v) { return at::Half(v).x; }
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { tc::mma_f16(d, a, b, d); }
};
template <>
struct Elem<at::BFloat16> {
  using bits = uint16_t;
  __device__ static uint16_t from(float v) { return at::BFloat16(v).x; }
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { tc::mma_bf16(d, a, b, d); }
};
template <>
struct Elem<float> {
  using bits = uint32_t;
  __device__ static uint32_t from(float v) { return __float_as_uint(tc::to_tf32(v)); }
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { tc::mma_tf32(d, a, b, d); }
};

// The fast path's forward problem: channels_last input and weight, C/groups * sizeof(E) % 16 == 0.
template <typename E>
struct FastForward {
  const E* x;  // [N][H][W][C] with strides (the channel stride is 1)
  const E* w;  // [K][R][S][C/groups] dense
  int64_t xs0, xs2, xs3;
  Geometry g;
  int64_t M, K;  // rows N * Ho * Wo; reduction C/groups * R * S
};

// One warp's 2 x 8 mma tiles over one stage of shared memory.
template <typename E>
__device__ __forceinline__ void mma_stage(const unsigned char* As, const unsigned char* Bs, int warp_m, int warp_n,
                                          int lane, float (&acc)[2][8][4]) {
#pragma unroll
  for (int ks = 0; ks < 2; ++ks) {
    uint32_t a[2][4], b[8][2];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      const int row = warp_m * 32 + mi * 16 + (lane % 16);
      tc::ldmatrix<4>(a[mi], As + swizzled(row, 2 * ks + lane / 16));
    }
#pragma unroll
    for (int nj = 0; nj < 4; ++nj) {
      const int row = warp_n * 64 + nj * 16 + (lane / 16) * 8 + (lane % 8);
      uint32_t r[4];
      tc::ldmatrix<4>(r, Bs + swizzled(row, 2 * ks + (lane / 8) % 2));
      b[2 * nj][0] = r[0];
      b[2 * nj][1] = r[1];
      b[2 * nj + 1][0] = r[2];
      b[2 * nj + 1][1] = r[3];
    }
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
      for (int ni = 0; ni < 8; ++ni) Elem<E>::mma(acc[mi][ni], a[mi], b[ni]);
  }
}

template <typename Problem>
__device__ __forceinline__ void store_tile(const Problem& prob, int grp, int split, int64_t m0, int64_t n0,
                                           int warp_m, int warp_n, int lane, const float (&acc)[2][8][4]) {
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 8; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t m = m0 + warp_m * 32 + mi * 16 + g + 8 * (i >> 1);
        const int64_t n = n0 + warp_n * 64 + ni * 8 + 2 * t + (i & 1);
        if (m < prob.M && n < prob.N) prob.store(grp, split, m, n, acc[mi][ni][i]);
      }
}

// The gather path: any problem, any layout; one 64-byte stage, loads of the
// next stage held in registers while the current one computes.
template <typename E, typename Problem>
__global__ void __launch_bounds__(kTcThreads) tc_gather_kernel(Problem prob, int group0, int splits,
                                                               int64_t k_per_split) {
  using bits = typename Elem<E>::bits;
  constexpr int kPer = kRowBytes / 2 / int(sizeof(bits));  // elements per thread per row half
  unsigned char* smem = dynamic_shared<unsigned char>();
  unsigned char* As = smem;
  unsigned char* Bs = smem + kBM * kRowBytes;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_m = warp % 4, warp_n = warp / 4;
  const int64_t m0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  const int grp = group0 + int(blockIdx.z) / splits, split = int(blockIdx.z) % splits;
  const int64_t k_begin = split * k_per_split;
  const int64_t k_end = min(prob.K, k_begin + k_per_split);

  // Thread tid fills row tid / 2 of A and of B, bytes 32 * (tid % 2) .. + 32.
  const int row = tid / 2, half = tid % 2;
  const auto arow = prob.a_row(grp, m0 + row);
  const auto bcol = prob.b_col(grp, n0 + row);
  constexpr int kStep = kRowBytes / int(sizeof(bits));  // k per stage
  bits ra[kPer], rb[kPer];
  auto load = [&](int64_t k0) {
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int64_t k = k0 + half * kPer + j;
      ra[j] = Elem<E>::from(k < k_end ? float(prob.a(arow, k)) : 0.f);
      rb[j] = Elem<E>::from(k < k_end ? float(prob.b(bcol, k)) : 0.f);
    }
  };
  auto store = [&]() {
    constexpr int kChunk = 16 / int(sizeof(bits));
#pragma unroll
    for (int c = 0; c < kPer / kChunk; ++c) {
      uint4 va, vb;
      std::memcpy(&va, &ra[c * kChunk], 16);
      std::memcpy(&vb, &rb[c * kChunk], 16);
      *reinterpret_cast<uint4*>(As + swizzled(row, 2 * half + c)) = va;
      *reinterpret_cast<uint4*>(Bs + swizzled(row, 2 * half + c)) = vb;
    }
  };

  float acc[2][8][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 8; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0.f;

  if (k_begin < k_end) load(k_begin);
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kStep) {
    store();
    __syncthreads();
    if (k0 + kStep < k_end) load(k0 + kStep);
    mma_stage<E>(As, Bs, warp_m, warp_n, lane, acc);
    __syncthreads();
  }
  store_tile(prob, grp, split, m0, n0, warp_m, warp_n, lane, acc);
}

// The fast path: cp.async.cg of 16-byte channel runs, kStages stages.
template <typename E, typename Problem>
__global__ void __launch_bounds__(kTcThreads) tc_fast_kernel(FastForward<E> f, Problem prob, int group0, int splits,
                                                             int kt_per_split) {
  constexpr int kVec = 16 / int(sizeof(E));           // channels per 16-byte chunk
  constexpr int kStep = kRowBytes / int(sizeof(E));   // k per stage
  unsigned char* smem = dynamic_shared<unsigned char>();
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int warp_m = warp % 4, warp_n = warp / 4;
  const int64_t m0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  const int grp = group0 + int(blockIdx.z) / splits, split = int(blockIdx.z) % splits;
  const Geometry& g = f.g;

  // Thread tid copies chunk tid % 4 of rows tid / 4 and tid / 4 + 64, of A and of B.
  const int chunk = tid % 4;
  const E* a_base[2];
  int a_h0[2], a_w0[2];
  bool a_ok[2], b_ok[2];
  const E* b_base[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = tid / 4 + 64 * i;
    const int64_t m = m0 + r;
    a_ok[i] = m < f.M;
    const int64_t P = int64_t(g.Ho) * g.Wo;
    const int64_t mm = a_ok[i] ? m : 0;
    const int q = int(mm % P);
    a_base[i] = f.x + (mm / P) * f.xs0 + int64_t(grp) * g.Cg;
    a_h0[i] = (q / g.Wo) * g.stride_h - g.pad_t;
    a_w0[i] = (q % g.Wo) * g.stride_w - g.pad_l;
    const int64_t n = n0 + r;
    b_ok[i] = n < prob.N;
    b_base[i] = f.w + (int64_t(grp) * g.Kg + (b_ok[i] ? n : 0)) * f.K;
  }
  const int kt_begin = split * kt_per_split;
  const int ktiles = min(int(ceil_div<int64_t>(f.K, kStep)) - kt_begin, kt_per_split);  // this split's
  auto load = [&](int stage, int kt_rel) {
    const int kt = kt_begin + kt_rel;
    unsigned char* As = smem + stage * kTileBytes;
    unsigned char* Bs = As + kBM * kRowBytes;
    const int64_t k = int64_t(kt) * kStep + chunk * kVec;
    const bool k_ok = k < f.K;
    const int c = int(k % g.Cg), rs = int(k / g.Cg);
    const int r = rs / g.S, s = rs % g.S;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = tid / 4 + 64 * i;
      const int h = a_h0[i] + r * g.dil_h, w = a_w0[i] + s * g.dil_w;
      const bool ok = k_ok && a_ok[i] && h >= 0 && h < g.H && w >= 0 && w < g.W;
      const E* src = ok ? a_base[i] + h * f.xs2 + w * f.xs3 + c : f.x;
      tc::cp_async_cg(As + swizzled(row, chunk), src, ok ? 16 : 0);
      const bool okb = k_ok && b_ok[i];
      tc::cp_async_cg(Bs + swizzled(row, chunk), okb ? b_base[i] + k : f.w, okb ? 16 : 0);
    }
  };

  float acc[2][8][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 8; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0.f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) load(s, s);
    tc::cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    tc::cp_async_wait<kStages - 2>();
    __syncthreads();  // stage kt is everyone's now; stage kt - 1 is free
    const int next = kt + kStages - 1;
    if (next < ktiles) load(next % kStages, next);
    tc::cp_async_commit();
    const unsigned char* As = smem + (kt % kStages) * kTileBytes;
    mma_stage<E>(As, As + kBM * kRowBytes, warp_m, warp_n, lane, acc);
  }
  tc::cp_async_wait<0>();
  store_tile(prob, grp, split, m0, n0, warp_m, warp_n, lane, acc);
}

// Split-K for forward problems: each split stores its partial sums here, and
// sum_forward_splits_kernel adds them in split order and runs the real store
// (bias, residual, ReLU, the output's strides). Deterministic, no atomics.
template <typename Problem>
struct SplitForward : Problem {
  float* ws;  // [splits][groups][M][N]
  int groups;
  __device__ void store(int grp, int split, int64_t m, int64_t n, float v) const {
    ws[((int64_t(split) * groups + grp) * this->M + m) * this->N + n] = v;
  }
};

template <typename Problem>
__global__ void sum_forward_splits_kernel(Problem prob, const float* ws, int splits, int groups) {
  const int64_t mn = prob.M * prob.N, total = mn * groups;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    float v = 0.f;
    for (int sp = 0; sp < splits; ++sp) v += ws[sp * total + i];
    const int64_t r = i % mn;
    prob.store(int(i / mn), 0, r / prob.N, r % prob.N, v);
  }
}

// W'[g, c][r][s][k] = W[g, k][R-1-r][S-1-s][c]: the data gradient of a stride-1
// convolution is the forward convolution of dY with W' (channels_last, dense).
template <typename T>
__global__ void flip_weight_kernel(Strided4<const T> w, int groups, int Kg, int Cg, int R, int S, T* out) {
  const int64_t total = int64_t(groups) * Kg * Cg * R * S;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    // out index: ((gc * R + r) * S + s) * Kg + k, gc = grp * Cg + c
    const int k = int(i % Kg);
    const int s = int((i / Kg) % S), r = int((i / (int64_t(Kg) * S)) % R);
    const int64_t gc = i / (int64_t(Kg) * S * R);
    const int grp = int(gc / Cg), c = int(gc % Cg);
    out[i] = w(int64_t(grp) * Kg + k, c, R - 1 - r, S - 1 - s);
  }
}

bool tf32_allowed() { return at::globalContext().allowTF32CuDNN(at::Float32Op::CONV); }

template <typename Problem>
void launch_grid(const Problem& prob, int groups, int splits, auto&& fn) {
  const int64_t gx = ceil_div<int64_t>(prob.M, kBM), gy = ceil_div<int64_t>(prob.N, kBN);
  TORCH_CHECK(gx <= INT32_MAX && gy <= max_grid_yz() && splits <= max_grid_yz(),
              "convx.conv2d (CUDA): problem too large for the grid (", gx, ", ", gy, ", ", splits, ")");
  const int per_launch = max_grid_yz() / splits;
  for (int g0 = 0; g0 < groups; g0 += per_launch) {
    const int ng = std::min(per_launch, groups - g0);
    fn(dim3{unsigned(gx), unsigned(gy), unsigned(ng * splits)}, g0);
  }
}

template <typename E, typename Problem>
void launch_gather(const Problem& prob, int groups, int splits, int64_t k_per_split) {
  launch_grid(prob, groups, splits, [&](dim3 grid, int g0) {
    launch<tc_gather_kernel<E, Problem>>(grid, kTcThreads, size_t(kTileBytes), current_stream(), prob, g0, splits,
                                         k_per_split);
  });
}

// Reduction splits for a forward problem: where the output tiles cover fewer
// than the GPU's SMs (small spatial layers: ResNet-50's 7x7 stage at small
// batches), split the reduction until they cover it, each split at least 8
// stages long, at most 16 splits.
int forward_splits(int64_t M, int64_t N, int64_t K, int groups, int k_step, int* kt_per_split) {
  const int64_t tiles = ceil_div<int64_t>(M, kBM) * ceil_div<int64_t>(N, kBN) * groups;
  const int64_t ktiles = ceil_div<int64_t>(K, k_step);
  int64_t splits = tiles >= num_sms() ? 1 : ceil_div<int64_t>(num_sms(), tiles);
  splits = std::max<int64_t>(1, std::min<int64_t>({splits, ktiles / 8, 16}));
  const int64_t per = ceil_div<int64_t>(ktiles, splits);
  *kt_per_split = int(per);
  return int(ceil_div<int64_t>(ktiles, per));
}

// A forward problem on the fast or the gather kernel, split-K where it pays.
template <typename E, typename Problem>
void run_forward(const Problem& prob, int groups, const FastForward<E>* fast, const at::Tensor& like) {
  constexpr int kStep = kRowBytes / int(sizeof(E));
  int kt_per_split = 0;
  const int splits = forward_splits(prob.M, prob.N, prob.K, groups, kStep, &kt_per_split);
  auto run = [&](const auto& p) {
    using P = std::decay_t<decltype(p)>;
    if (fast) {
      launch_grid(p, groups, splits, [&](dim3 grid, int g0) {
        launch<tc_fast_kernel<E, P>>(grid, kTcThreads, size_t(kStages) * kTileBytes, current_stream(), *fast, p, g0,
                                     splits, kt_per_split);
      });
    } else {
      launch_gather<E>(p, groups, splits, int64_t(kt_per_split) * kStep);
    }
  };
  if (splits == 1) return run(prob);
  at::Tensor ws = at::empty({int64_t(splits) * groups * prob.M * prob.N}, like.options().dtype(at::kFloat));
  SplitForward<Problem> sp;
  static_cast<Problem&>(sp) = prob;
  sp.ws = ws.data_ptr<float>();
  sp.groups = groups;
  run(sp);
  const int64_t total = int64_t(groups) * prob.M * prob.N;
  launch<sum_forward_splits_kernel<Problem>>(unsigned(std::min<int64_t>(ceil_div<int64_t>(total, 256), 4096)), 256,
                                             0, current_stream(), prob, sp.ws, splits, groups);
}

// The element types tensor-core kernels are built for (float: as TF32).
#define CONVX_DISPATCH_TC(type, name, ...)                 \
  AT_DISPATCH_SWITCH(type, name, AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__))

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The fast path's conditions on the input ([N][C][H][W] sizes, any strides).
bool fast_input(const at::Tensor& x, int64_t Cg) {
  const int64_t v = 16 / int64_t(x.element_size());
  return x.stride(1) == 1 && Cg % v == 0 && x.stride(0) % v == 0 && x.stride(2) % v == 0 && x.stride(3) % v == 0 &&
         aligned16(x.const_data_ptr());
}

}  // namespace

TcPlan tc_plan(at::ScalarType dtype, bool dgrad_or_fwd_fast_ok, const Conv2dShape& sh, const Conv2dParams& p,
               TcOp op) {
  TcPlan plan;
  if (dtype == at::kDouble || compute_capability_major() < 8) return plan;
  if (dtype == at::kFloat && !tf32_allowed()) return plan;
  // Columns (n) and reduction (k) per group: a tile of 128 x 128 with fewer
  // than 16 useful columns, or a reduction shorter than one mma, is CUDA-core work
  // (depthwise and small-group convolutions).
  int64_t n = 0, k = 0;
  switch (op) {
    case TcOp::Forward: n = sh.Kg, k = sh.Cg * sh.R * sh.S; break;
    case TcOp::DataGrad: n = sh.Cg, k = sh.Kg * sh.R * sh.S; break;
    case TcOp::WeightGrad: n = sh.Cg * sh.R * sh.S, k = sh.N * sh.Ho * sh.Wo; break;
  }
  const int64_t m = op == TcOp::WeightGrad ? sh.Kg : 0;
  if (n < 16 || k < 16 || (op == TcOp::WeightGrad && m < 16)) return plan;
  plan.use = true;
  plan.fast = dgrad_or_fwd_fast_ok && (op == TcOp::Forward || (op == TcOp::DataGrad && p.stride_h == 1 &&
                                                                p.stride_w == 1));
  return plan;
}

// An NCHW operand whose channels_last copy the pipeline kernel would take is copied,
// the pipeline runs on the copy, and its channels_last result is copied into the NCHW
// output. On the H200 (fp16, N=256, 2026-12-04) the pipeline ran the ResNet-50
// layers 3-14x faster than the gathering kernel that NCHW took (r50.l3.3x3_256:
// 0.41 against 5.7 ms), while the two copies move twice the operand's and the
// result's bytes (about 51 MB there: some hundredths of a millisecond at an
// H200's copy rate, about 4 TB/s). Not yet timed on a GPU.
static bool via_channels_last(const at::Tensor& t, int64_t channels_per_group, bool cl) {
  return !cl && channels_per_group % (16 / int64_t(t.element_size())) == 0;
}

bool tc_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                const at::Tensor& residual, bool relu, const at::Tensor& y, const Conv2dShape& sh,
                const Conv2dParams& p, bool cl) {
  if (via_channels_last(input, sh.Cg, cl) && tc_plan(input.scalar_type(), true, sh, p, TcOp::Forward).fast) {
    const auto clf = at::MemoryFormat::ChannelsLast;
    const at::Tensor yc = at::empty(y.sizes(), y.options().memory_format(clf));
    tc_forward(input.contiguous(clf), weight, bias, residual, relu, yc, sh, p, true);
    y.copy_(yc);
    return true;
  }
  const bool fast_ok = cl && fast_input(input, sh.Cg);
  const TcPlan plan = tc_plan(input.scalar_type(), fast_ok, sh, p, TcOp::Forward);
  if (!plan.use) return false;
  const Geometry g = make_geometry(sh, p);
  CONVX_DISPATCH_TC(input.scalar_type(), "conv2d_forward_tc", [&] {
    {
      const auto prob = forward_problem<scalar_t, float>(
          input, weight, y, bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, residual, relu, g, sh, cl);
      if (plan.fast) {
        at::Tensor w = weight.contiguous(at::MemoryFormat::ChannelsLast);
        // cp.async reads 16-byte runs: a weight view at an odd storage offset is copied first
        if (!aligned16(w.const_data_ptr())) w = w.clone(at::MemoryFormat::ChannelsLast);
        FastForward<scalar_t> f{input.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), input.stride(0),
                                input.stride(2), input.stride(3), g, prob.M, prob.K};
        run_forward<scalar_t>(prob, g.groups, &f, input);
      } else {
        run_forward<scalar_t>(prob, g.groups, static_cast<const FastForward<scalar_t>*>(nullptr), input);
      }
    }
  });
  return true;
}

bool tc_data_grad(const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& dx,
                  const Conv2dShape& sh, const Conv2dParams& p, bool cl) {
  if (via_channels_last(grad_output, sh.Kg, cl) &&
      tc_plan(grad_output.scalar_type(), true, sh, p, TcOp::DataGrad).fast) {
    const auto clf = at::MemoryFormat::ChannelsLast;
    const at::Tensor dxc = at::empty(dx.sizes(), dx.options().memory_format(clf));
    tc_data_grad(grad_output.contiguous(clf), weight, bias, dxc, sh, p, true);
    dx.copy_(dxc);
    return true;
  }
  const bool fast_ok = cl && fast_input(grad_output, sh.Kg);
  const TcPlan plan = tc_plan(grad_output.scalar_type(), fast_ok, sh, p, TcOp::DataGrad);
  if (!plan.use) return false;
  const Geometry g = make_geometry(sh, p);
  CONVX_DISPATCH_TC(grad_output.scalar_type(), "conv2d_backward_input_tc", [&] {
    {
      const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
      if (plan.fast) {
        // dX = conv(dY, W') with stride 1, padding dil * (R - 1) - pad, the roles of C and K swapped.
        at::Tensor wf = at::empty({sh.C, sh.Kg, sh.R, sh.S}, weight.options().memory_format(at::MemoryFormat::ChannelsLast));
        const int64_t total = wf.numel();
        launch<flip_weight_kernel<scalar_t>>(unsigned(std::min<int64_t>(ceil_div<int64_t>(total, 256), 4096)), 256, 0,
                                             current_stream(), strided<const scalar_t>(weight), g.groups, g.Kg, g.Cg,
                                             g.R, g.S, wf.data_ptr<scalar_t>());
        Geometry f = g;
        f.H = g.Ho, f.W = g.Wo, f.Ho = g.H, f.Wo = g.W;
        f.pad_t = g.dil_h * (g.R - 1) - g.pad_t;
        f.pad_l = g.dil_w * (g.S - 1) - g.pad_l;
        f.Cg = g.Kg, f.Kg = g.Cg;
        Conv2dShape fs = sh;  // the forward convolution's shape: dY in, dX out, C and K swapped
        fs.H = sh.Ho, fs.W = sh.Wo, fs.Ho = sh.H, fs.Wo = sh.W;
        fs.C = sh.K, fs.K = sh.C, fs.Cg = sh.Kg, fs.Kg = sh.Cg;
        const auto prob = forward_problem<scalar_t, float>(grad_output, wf, dx, b, at::Tensor(), false, f, fs, true);
        FastForward<scalar_t> ff{grad_output.const_data_ptr<scalar_t>(), wf.const_data_ptr<scalar_t>(),
                                 grad_output.stride(0), grad_output.stride(2), grad_output.stride(3), f, prob.M, prob.K};
        run_forward<scalar_t>(prob, g.groups, &ff, grad_output);
      } else {
        const auto prob = dgrad_problem<scalar_t, float>(grad_output, weight, dx, b, g, sh, cl);
        launch_gather<scalar_t>(prob, g.groups, 1, prob.K);
      }
    }
  });
  return true;
}

bool tc_weight_grad(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& dw,
                    const Conv2dShape& sh, const Conv2dParams& p, bool cl) {
  const TcPlan plan = tc_plan(grad_output.scalar_type(), false, sh, p, TcOp::WeightGrad);
  if (!plan.use) return false;
  const Geometry g = make_geometry(sh, p);
  CONVX_DISPATCH_TC(grad_output.scalar_type(), "conv2d_backward_weight_tc", [&] {
    {
      auto prob = wgrad_problem<scalar_t, float>(grad_output, input, dw, g, sh, cl);
      int64_t kps = 0;  // conv2d.cu's split rule with this kernel's tile and 64-element stages
      const int64_t splits = wgrad_splits(prob.M, prob.N, prob.K, g.groups, kBM, kBN, 64, &kps);
      at::Tensor ws;
      prob.splits = int(splits);
      if (splits > 1) {
        ws = at::empty({splits, sh.K * sh.Cg * sh.R * sh.S}, grad_output.options().dtype(at::kFloat));
        prob.ws = ws.data_ptr<float>();
      }
      launch_gather<scalar_t>(prob, g.groups, int(splits), kps);
      if (splits > 1) {
        const int64_t total = sh.K * sh.Cg * sh.R * sh.S;
        const int blocks = int(std::min<int64_t>(ceil_div<int64_t>(total, 256), 4096));
        launch<sum_splits_kernel<scalar_t, float>>(blocks, 256, 0, current_stream(), prob.ws, int(splits), sh.K, g.Cg,
                                                   g.R, g.S, strided<scalar_t>(dw));
      }
    }
  });
  return true;
}

}  // namespace convx::cuda
