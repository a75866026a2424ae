#pragma once
// Tensor-core implicit GEMM for conv2d (opt-in, CNNOPS_EXPERIMENTAL=1: not yet run on a GPU).
//
// Two kernels, each a 128 x 128 block tile computed by 8 warps (2 along M x 4 along N, each
// warp 64 x 32 = 4 x 4 mma tiles; a 128 x 64 or 64 x 128 variant, warps 32 x 32, when the
// channel side has <= 64 channels per group), fed by a 3-stage cp.async pipeline through
// XOR-swizzled shared memory read with ldmatrix, accumulating in float:
//  - cnnops_conv2d_mma_kernel: C[m, n] = sum_k A(m, k) B(n, k), rows m = pixels of the
//    result, K = (kh, kw, c) with c innermost, so every 16-byte chunk of K is 8 (fp16/bf16)
//    or 4 (fp32/TF32) consecutive channels of one tap: one cp.async from a C-innermost
//    (channels_last) tensor. B is a packed [groups][N][K] weight. Its tap map is either the
//    forward's (padding through source_index(), zero taps by cp.async src-size 0) or the
//    input gradient's gather (output_index_for_tap(): zeros padding, any stride).
//    Shared-memory rows are the 64 bytes of K of one row of A or B (4 chunks).
//  - cnnops_conv2d_mma_wgrad_kernel: grad_weight[oc, (kh, kw, ic)] = sum over pixels of
//    grad_output[p, oc] * im2col(input)[p, (kh, kw, ic)], the pixels split into slices
//    whose float partials go to a workspace and are added in slice order (deterministic).
//    Both operands are contiguous along M/N, not along the pixel reduction, so tiles are
//    stored [32 pixels][128 columns] (256-byte rows) and read with ldmatrix.trans.
// Index math for padding lives in common/conv_index.h, shared with the CPU and the
// default kernels. Fragment layouts follow the PTX ISA (mma.m16n8k16 / m16n8k8 .tf32).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "common/conv_checks.h"
#include "common/conv_index.h"
#include "cuda/experimental.h"

namespace cnnops {
namespace cuda {
namespace tc {

constexpr int kBlockM = 128;
constexpr int kBlockN = 128;
constexpr int kStages = 3;
constexpr int kThreads = 256;  // 8 warps
constexpr int kWarpTilesM = 4;  // 16-row mma tiles per warp (64 rows)
constexpr int kWarpTilesN = 4;  // 8-column mma tiles per warp (32 columns)
constexpr int kStageBytes = kBlockM * 64;  // one operand tile of one stage: 8 KiB
// Both kernels: kStages x (A, B) x 8 KiB = 48 KiB, the static shared-memory limit.

// ------------------------------------------------------------------------ host side

// A call the tensor-core path declined goes to the default kernels, unless
// CNNOPS_MMA_REQUIRE=1 (tests), which turns the silent fallback into an error naming why.
inline void declined(const char* op, const char* why) {
  const char* v = std::getenv("CNNOPS_MMA_REQUIRE");
  TORCH_CHECK(v == nullptr || v[0] != '1', op,
              ": CNNOPS_MMA_REQUIRE=1 but the tensor-core path cannot take this call: ", why);
}

// Each returns nullptr when it computed the result into the given output, or the reason it
// did not (the caller then runs the default kernel). Outputs are allocated by the caller.
const char* conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias, const Conv2dGeometry& g,
                           const at::Tensor& output);
const char* conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                              const Conv2dGeometry& g, const at::Tensor& grad_input);
const char* conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                               const Conv2dGeometry& g, const at::Tensor& grad_weight);

// t is (N, C, H, W) with C innermost (stride 1) and every other stride and the base address
// allowing 16-byte cp.async of `elems` channels.
inline bool channels_inner(const at::Tensor& t, int64_t elems) {
  if (t.stride(1) != 1) return false;
  for (int d : {0, 2, 3}) {
    if (t.size(d) > 1 && t.stride(d) % elems != 0) return false;
  }
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

inline bool fits_int32(int64_t v) { return v >= 0 && v <= INT32_MAX - 2 * kBlockM; }

#if defined(__CUDACC__)

// ------------------------------------------------------------------------ PTX wrappers

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; with valid == false the source size is 0 and the 16
// destination bytes are zero-filled (padding taps, rows/columns past the edge, K tail).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lane l supplies the row address of matrix l / 8, row l % 8.
// Register i of lane l then holds row l / 4, elements 2 (l % 4) and 2 (l % 4) + 1 of matrix
// i (with .trans: column l / 4, rows 2 (l % 4) and 2 (l % 4) + 1).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// One mma over 32 bytes of K per row: m16n8k16 for 16-bit types, m16n8k8 for TF32.
// A: 4 registers (rows g and g + 8 of the 16-row tile, low and high half of K), B: 2
// registers (column g of the 8-column tile), C: 4 floats (rows g, g + 8; columns 2t, 2t + 1),
// where g = lane / 4, t = lane % 4.
template <typename T>
struct Mma;

template <>
struct Mma<at::Half> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

template <>
struct Mma<at::BFloat16> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

// fp32 data as TF32: ldmatrix on 4-byte elements gives lane l the float at row l / 4,
// column l % 4 of an 8 x 4 block, which is the m16n8k8 .tf32 fragment layout. Operands are
// rounded to nearest (cvt.rna) rather than truncated.
__device__ __forceinline__ uint32_t to_tf32(uint32_t x) {
  uint32_t y;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(y) : "f"(__uint_as_float(x)));
  return y;
}

template <>
struct Mma<float> {
  static __device__ __forceinline__ void run(float (&c)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(to_tf32(a[0])), "r"(to_tf32(a[1])), "r"(to_tf32(a[2])), "r"(to_tf32(a[3])),
          "r"(to_tf32(b[0])), "r"(to_tf32(b[1])));
  }
};

// Byte offset of 16-byte chunk c of row r in a tile of 64-byte rows. The chunk index is
// XORed with bits 1-2 of the row, so the 8 rows one ldmatrix matrix reads (r..r+7, same c)
// land in 8 different 16-byte bank groups, and so do the 8 chunks 8 threads copy (2 rows).
__device__ __forceinline__ int swz64(int r, int c) { return r * 64 + ((c ^ ((r >> 1) & 3)) << 4); }
// The same for 256-byte rows (16 chunks): XOR with the row's low 3 bits.
__device__ __forceinline__ int swz256(int r, int c) { return r * 256 + ((c ^ (r & 7)) << 4); }

// ------------------------------------------------------------------------ forward / dgrad

struct ConvGemmParams {
  const void* act;    // gathered activation (forward: input; dgrad: grad_output), C innermost
  const void* wpack;  // [groups][N][K], K = (kh, kw, c) with c innermost
  const void* bias;   // forward only; null for none
  void* out;          // C innermost
  int64_t act_sn, act_sh, act_sw;  // element strides of act
  int64_t out_sn, out_sh, out_sw;
  int act_h, act_w;    // spatial size of act
  int rows_h, rows_w;  // spatial size of the result (GEMM rows are its pixels)
  int M;               // batch * rows_h * rows_w
  int N;               // result channels per group
  int C;               // act channels per group
  int K;               // kernel_h * kernel_w * C
  int kernel_w;
  int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  PaddingMode mode;  // forward only (dgrad is zeros padding)
};

// kDgrad == false: result pixel (y, x) with tap (kh, kw) reads act at
//   source_index(y * stride - pad + kh * dilation)             (the forward);
// kDgrad == true: it reads act (= grad_output) at
//   output_index_for_tap(y, kh, stride, pad, dilation)          (the input gradient),
// and the B operand is the weight packed [group][ic][kh][kw][oc].
// kBN, the block's column count, is 128 (warps 2 x 4, each 64 x 32) or 64 for narrow
// results such as 64-channel layers (warps 4 x 2, each 32 x 32), so no half-empty tiles.
template <typename T, bool kDgrad, int kBN>
__global__ void __launch_bounds__(kThreads, 2) cnnops_conv2d_mma_kernel(const ConvGemmParams p) {
  static_assert(kBN == 128 || kBN == 64, "block N tile");
  constexpr int kElems = 16 / static_cast<int>(sizeof(T));  // channels per 16-byte chunk
  constexpr int kBlockK = 4 * kElems;                         // 64 bytes of K per stage
  constexpr int kWarpsN = kBN / 32, kWarpsM = 8 / kWarpsN;
  constexpr int kWarpRows = kBlockM / kWarpsM;  // 64 or 32
  constexpr int kTilesM = kWarpRows / 16;       // 4 or 2
  constexpr int kBRows = kBN / 64;              // B rows each thread copies: 2 or 1
  __shared__ __align__(128) uint8_t smem[kStages][2][kStageBytes];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp % kWarpsM, warp_n = warp / kWarpsM;
  const int m0 = blockIdx.x * kBlockM, n0 = blockIdx.y * kBN, grp = blockIdx.z;
  const T* act = static_cast<const T*>(p.act);
  const T* wpack = static_cast<const T*>(p.wpack);

  // Copy slots of this thread: rows ld_row and ld_row + 64 of A (and of B when kBN = 128),
  // chunk ld_chunk.
  const int ld_row = tid >> 2, ld_chunk = tid & 3;
  bool a_ok[2];
  int64_t a_img[2];
  int a_y[2], a_x[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int m = m0 + ld_row + 64 * r;
    a_ok[r] = m < p.M;
    const int mm = a_ok[r] ? m : 0;
    const int t = mm / p.rows_w;
    a_x[r] = mm - t * p.rows_w;
    a_y[r] = t % p.rows_h;
    a_img[r] = static_cast<int64_t>(t / p.rows_h) * p.act_sn;
  }
  const int64_t act_c0 = static_cast<int64_t>(grp) * p.C;
  const int64_t b_row0 = static_cast<int64_t>(grp) * p.N;
  const int k_tiles = (p.K + kBlockK - 1) / kBlockK;

  auto load_stage = [&](int kt, int stage) {
    const int k = kt * kBlockK + ld_chunk * kElems;
    const bool k_ok = k < p.K;
    const int kk = k_ok ? k : 0;
    const int tap = kk / p.C, c = kk - tap * p.C;
    const int kh = tap / p.kernel_w, kw = tap - kh * p.kernel_w;
    uint8_t* a_tile = smem[stage][0];
    uint8_t* b_tile = smem[stage][1];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = ld_row + 64 * r;
      int64_t iy, ix;
      if (kDgrad) {
        iy = output_index_for_tap(a_y[r], kh, p.stride_h, p.pad_h, p.dil_h, p.act_h);
        ix = output_index_for_tap(a_x[r], kw, p.stride_w, p.pad_w, p.dil_w, p.act_w);
      } else {
        iy = source_index(static_cast<int64_t>(a_y[r]) * p.stride_h - p.pad_h + kh * p.dil_h,
                          p.act_h, p.mode);
        ix = source_index(static_cast<int64_t>(a_x[r]) * p.stride_w - p.pad_w + kw * p.dil_w,
                          p.act_w, p.mode);
      }
      const bool ok = a_ok[r] && k_ok && iy >= 0 && ix >= 0;
      const T* src = ok ? act + (a_img[r] + iy * p.act_sh + ix * p.act_sw + act_c0 + c) : act;
      cp_async_16(smem_u32(a_tile + swz64(row, ld_chunk)), src, ok);
    }
#pragma unroll
    for (int r = 0; r < kBRows; ++r) {
      const int row = ld_row + 64 * r;
      const int n = n0 + row;
      const bool b_ok = k_ok && n < p.N;
      const T* bsrc = b_ok ? wpack + ((b_row0 + n) * p.K + k) : wpack;
      cp_async_16(smem_u32(b_tile + swz64(row, ld_chunk)), bsrc, b_ok);
    }
  };

  float acc[kTilesM][kWarpTilesN][4];
#pragma unroll
  for (int i = 0; i < kTilesM; ++i)
#pragma unroll
    for (int j = 0; j < kWarpTilesN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    cp_async_commit();  // always, so that group i is k-tile i
  }

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();  // this thread's copies of k-tile kt have landed
    __syncthreads();  // everyone's have, and everyone is done reading k-tile kt - 1
    const int next = kt + kStages - 1;
    if (next < k_tiles) load_stage(next, next % kStages);  // overwrites k-tile kt - 1's stage
    cp_async_commit();

    const uint8_t* a_tile = smem[kt % kStages][0];
    const uint8_t* b_tile = smem[kt % kStages][1];
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {  // two mma K-steps of 32 bytes (chunks 2 ks, 2 ks + 1)
      uint32_t a[kTilesM][4], b[kWarpTilesN][2];
#pragma unroll
      for (int i = 0; i < kTilesM; ++i) {
        // matrices: (rows 0-7, chunk 0), (rows 8-15, chunk 0), (rows 0-7, chunk 1),
        // (rows 8-15, chunk 1) = a0, a1, a2, a3 of the m16 tile.
        const int row = warp_m * kWarpRows + i * 16 + (lane & 15);
        const int chunk = 2 * ks + (lane >> 4);
        ldmatrix_x4(a[i], smem_u32(a_tile + swz64(row, chunk)));
      }
#pragma unroll
      for (int j = 0; j < kWarpTilesN / 2; ++j) {
        // matrices: (cols 0-7, chunk 0), (cols 0-7, chunk 1), (cols 8-15, chunk 0),
        // (cols 8-15, chunk 1) = b0, b1 of n8 tile 2j, then b0, b1 of tile 2j + 1.
        const int row = warp_n * 32 + j * 16 + (lane & 7) + ((lane >> 4) << 3);
        const int chunk = 2 * ks + ((lane >> 3) & 1);
        uint32_t r[4];
        ldmatrix_x4(r, smem_u32(b_tile + swz64(row, chunk)));
        b[2 * j][0] = r[0];
        b[2 * j][1] = r[1];
        b[2 * j + 1][0] = r[2];
        b[2 * j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < kTilesM; ++i)
#pragma unroll
        for (int j = 0; j < kWarpTilesN; ++j) Mma<T>::run(acc[i][j], a[i], b[j]);
    }
  }
  cp_async_wait<0>();

  // Epilogue: bias, convert, store through the result's strides.
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int i = 0; i < kTilesM; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + warp_m * kWarpRows + i * 16 + (lane >> 2) + 8 * h;
      if (m >= p.M) continue;
      const int t = m / p.rows_w;
      const int x = m - t * p.rows_w;
      const int y = t % p.rows_h, img = t / p.rows_h;
      T* row_out = out + (img * p.out_sn + y * p.out_sh + x * p.out_sw + b_row0);
#pragma unroll
      for (int j = 0; j < kWarpTilesN; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int n = n0 + warp_n * 32 + j * 8 + (lane & 3) * 2 + e;
          if (n >= p.N) continue;
          float v = acc[i][j][2 * h + e];
          if (bias != nullptr) v += static_cast<float>(bias[b_row0 + n]);
          row_out[n] = static_cast<T>(v);
        }
      }
    }
  }
}

// B operand of the forward ([group][oc][kh][kw][ic]) or the input gradient
// ([group][ic][kh][kw][oc]) from a weight of any strides; one thread per element.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    cnnops_conv2d_mma_pack_weight_kernel(const T* weight, Strides4d ws, T* out, int64_t total,
                                         int64_t rows, int64_t C, int64_t kernel_h,
                                         int64_t kernel_w, bool dgrad) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t c = idx % C;
  int64_t t = idx / C;
  const int64_t kw = t % kernel_w;
  t /= kernel_w;
  const int64_t kh = t % kernel_h;
  t /= kernel_h;
  const int64_t n = t % rows, grp = t / rows;
  // forward: rows = out channels per group, C = in channels per group; dgrad: swapped.
  out[idx] = dgrad ? weight[ws.offset(grp * C + c, n, kh, kw)]
                   : weight[ws.offset(grp * rows + n, c, kh, kw)];
}

// ------------------------------------------------------------------------ wgrad

struct WgradParams {
  const void* dy;  // grad_output, C innermost
  const void* x;   // input, C innermost
  float* ws;       // [slices][groups][Mo][Kf] partial sums
  int64_t dy_sn, dy_sh, dy_sw;
  int64_t x_sn, x_sh, x_sw;
  int in_h, in_w, out_h, out_w;
  int P;    // batch * out_h * out_w (the reduction)
  int Mo;   // out channels per group (GEMM rows)
  int Cin;  // in channels per group
  int Kf;   // kernel_h * kernel_w * Cin (GEMM columns), (kh, kw, ic) with ic innermost
  int kernel_w;
  int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  PaddingMode mode;
  int groups, slices, slice_len;  // slice_len: a multiple of 32 pixels
};

// kBM, the block's out-channel count, is 128 (warps 2 x 4, each 64 x 32) or 64 for layers
// with <= 64 out channels per group (each warp 32 x 32); the A tile then has 128-byte rows.
template <typename T, int kBM>
__global__ void __launch_bounds__(kThreads, 2)
    cnnops_conv2d_mma_wgrad_kernel(const WgradParams p) {
  static_assert(sizeof(T) == 2, "ldmatrix.trans is b16 only");
  static_assert(kBM == 128 || kBM == 64, "block M tile");
  constexpr int kPix = 32;  // pixels (K) per stage: 32 rows of 256 bytes per operand
  constexpr int kAChunks = kBM / 8;       // 16-byte chunks per A row: 16 or 8
  constexpr int kWarpRows = kBM / 2;      // 64 or 32
  constexpr int kTilesM = kWarpRows / 16;  // 4 or 2
  __shared__ __align__(128) uint8_t smem[kStages][2][kStageBytes];
  // A tile: rows of kAChunks chunks, chunk XOR the row's low 3 bits (as swz256).
  auto swz_a = [](int r, int c) { return r * (kAChunks * 16) + ((c ^ (r & 7)) << 4); };

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp & 1, warp_n = warp >> 1;
  const int m0 = blockIdx.x * kBM, n0 = blockIdx.y * kBlockN;
  const int grp = blockIdx.z / p.slices, slice = blockIdx.z % p.slices;
  const T* dy = static_cast<const T*>(p.dy);
  const T* x = static_cast<const T*>(p.x);

  // Copy slots: pixel rows ld_row and ld_row + 16 of both tiles, column chunk ld_chunk
  // (8 output channels for A, 8 (kh, kw, ic) columns of one tap for B) for the whole loop.
  // With kBM = 64 only the threads with ld_chunk < 8 copy A.
  const int ld_row = tid >> 4, ld_chunk = tid & 15;
  const bool a_copy = ld_chunk < kAChunks;
  const int oc = m0 + ld_chunk * 8;
  const bool oc_ok = oc < p.Mo;
  const int kf = n0 + ld_chunk * 8;
  const bool kf_ok = kf < p.Kf;
  const int kfk = kf_ok ? kf : 0;
  const int tap = kfk / p.Cin, ic = kfk - tap * p.Cin;
  const int kh = tap / p.kernel_w, kw = tap - kh * p.kernel_w;
  const int64_t dy_c = static_cast<int64_t>(grp) * p.Mo + oc;
  const int64_t x_c = static_cast<int64_t>(grp) * p.Cin + ic;

  const int p_begin = slice * p.slice_len;
  const int p_end = static_cast<int>(min(static_cast<int64_t>(p.P),
                                         static_cast<int64_t>(p_begin) + p.slice_len));
  const int k_tiles = p_end > p_begin ? (p_end - p_begin + kPix - 1) / kPix : 0;

  auto load_stage = [&](int kt, int stage) {
    uint8_t* a_tile = smem[stage][0];
    uint8_t* b_tile = smem[stage][1];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = ld_row + 16 * r;
      const int pix = p_begin + kt * kPix + row;
      const bool p_ok = pix < p_end;
      const int pp = p_ok ? pix : 0;
      const int t = pp / p.out_w;
      const int ox = pp - t * p.out_w;
      const int oy = t % p.out_h, img = t / p.out_h;

      if (a_copy) {
        const bool a_ok = p_ok && oc_ok;
        const T* asrc = a_ok ? dy + (img * p.dy_sn + oy * p.dy_sh + ox * p.dy_sw + dy_c) : dy;
        cp_async_16(smem_u32(a_tile + swz_a(row, ld_chunk)), asrc, a_ok);
      }

      const int64_t iy = source_index(static_cast<int64_t>(oy) * p.stride_h - p.pad_h + kh * p.dil_h,
                                      p.in_h, p.mode);
      const int64_t ix = source_index(static_cast<int64_t>(ox) * p.stride_w - p.pad_w + kw * p.dil_w,
                                      p.in_w, p.mode);
      const bool b_ok = p_ok && kf_ok && iy >= 0 && ix >= 0;
      const T* bsrc = b_ok ? x + (img * p.x_sn + iy * p.x_sh + ix * p.x_sw + x_c) : x;
      cp_async_16(smem_u32(b_tile + swz256(row, ld_chunk)), bsrc, b_ok);
    }
  };

  float acc[kTilesM][kWarpTilesN][4];
#pragma unroll
  for (int i = 0; i < kTilesM; ++i)
#pragma unroll
    for (int j = 0; j < kWarpTilesN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    cp_async_commit();
  }

  const int mat = lane >> 3, r8 = lane & 7;
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int next = kt + kStages - 1;
    if (next < k_tiles) load_stage(next, next % kStages);
    cp_async_commit();

    const uint8_t* a_tile = smem[kt % kStages][0];
    const uint8_t* b_tile = smem[kt % kStages][1];
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {  // two K-steps of 16 pixels
      uint32_t a[kTilesM][4], b[kWarpTilesN][2];
#pragma unroll
      for (int i = 0; i < kTilesM; ++i) {
        // stored [pixel][oc]; matrices (px 0-7, oc 0-7), (px 0-7, oc 8-15), (px 8-15, oc 0-7),
        // (px 8-15, oc 8-15), transposed = a0, a1, a2, a3.
        const int krow = ks * 16 + r8 + ((mat >> 1) << 3);
        const int chunk = warp_m * (kWarpRows / 8) + i * 2 + (mat & 1);
        ldmatrix_x4_trans(a[i], smem_u32(a_tile + swz_a(krow, chunk)));
      }
#pragma unroll
      for (int j = 0; j < kWarpTilesN / 2; ++j) {
        // stored [pixel][col]; matrices (px 0-7, cols 0-7), (px 8-15, cols 0-7),
        // (px 0-7, cols 8-15), (px 8-15, cols 8-15), transposed = b0, b1 of tiles 2j, 2j + 1.
        const int krow = ks * 16 + r8 + ((mat & 1) << 3);
        const int chunk = warp_n * 4 + j * 2 + (mat >> 1);
        uint32_t r[4];
        ldmatrix_x4_trans(r, smem_u32(b_tile + swz256(krow, chunk)));
        b[2 * j][0] = r[0];
        b[2 * j][1] = r[1];
        b[2 * j + 1][0] = r[2];
        b[2 * j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < kTilesM; ++i)
#pragma unroll
        for (int j = 0; j < kWarpTilesN; ++j) Mma<T>::run(acc[i][j], a[i], b[j]);
    }
  }
  cp_async_wait<0>();

  // Every (oc, kf) of the slice is written, zero when the slice is empty: no memset needed.
  float* ws = p.ws + (static_cast<int64_t>(slice) * p.groups + grp) * p.Mo * p.Kf;
#pragma unroll
  for (int i = 0; i < kTilesM; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + warp_m * kWarpRows + i * 16 + (lane >> 2) + 8 * h;
      if (m >= p.Mo) continue;
#pragma unroll
      for (int j = 0; j < kWarpTilesN; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int n = n0 + warp_n * 32 + j * 8 + (lane & 3) * 2 + e;
          if (n < p.Kf) ws[static_cast<int64_t>(m) * p.Kf + n] = acc[i][j][2 * h + e];
        }
      }
    }
  }
}

// grad_weight[oc, ic, kh, kw] = sum over slices, in slice order, of the partials.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    cnnops_conv2d_mma_wgrad_reduce_kernel(const float* ws, T* grad_weight, Strides4d gw_s,
                                          int64_t out_channels, int64_t Kf, int64_t Cin,
                                          int64_t kernel_w, int64_t slices) {
  const int64_t total = out_channels * Kf;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  float sum = 0.f;
  for (int64_t s = 0; s < slices; ++s) sum += ws[s * total + idx];
  const int64_t oc = idx / Kf, kf = idx % Kf;
  const int64_t tap = kf / Cin, ic = kf % Cin;
  grad_weight[gw_s.offset(oc, ic, tap / kernel_w, tap % kernel_w)] = static_cast<T>(sum);
}

// ------------------------------------------------------------------------ launch helpers

// N <= 64 (64-channel layers, and every narrower one) takes the 64-column tile.
template <typename T, bool kDgrad>
void launch_conv_gemm(const ConvGemmParams& p, int64_t groups) {
  const bool narrow = p.N <= 64;
  const int bn = narrow ? 64 : 128;
  const dim3 grid(static_cast<unsigned>((p.M + kBlockM - 1) / kBlockM),
                  static_cast<unsigned>((p.N + bn - 1) / bn), static_cast<unsigned>(groups));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (narrow) {
    cnnops_conv2d_mma_kernel<T, kDgrad, 64><<<grid, kThreads, 0, stream>>>(p);
  } else {
    cnnops_conv2d_mma_kernel<T, kDgrad, 128><<<grid, kThreads, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The weight as the B operand: [group][rows][kh][kw][C], rows = out channels per group and
// C = in channels per group for the forward, swapped for the input gradient.
template <typename T>
at::Tensor pack_weight(const at::Tensor& weight, const Conv2dGeometry& g, bool dgrad) {
  const int64_t rows = dgrad ? g.in_channels_per_group() : g.out_channels_per_group();
  const int64_t C = dgrad ? g.out_channels_per_group() : g.in_channels_per_group();
  at::Tensor packed = at::empty({g.groups * rows * g.kernel_h * g.kernel_w * C}, weight.options());
  const int64_t total = packed.numel();
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= INT32_MAX, "cnnops: weight too large (", total, " elements)");
  cnnops_conv2d_mma_pack_weight_kernel<T>
      <<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          weight.const_data_ptr<T>(), strides4d(weight), packed.mutable_data_ptr<T>(), total, rows,
          C, g.kernel_h, g.kernel_w, dgrad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return packed;
}

// Geometry values the kernels hold in 32-bit ints.
inline bool geometry_fits_int32(const Conv2dGeometry& g) {
  for (int64_t v : {g.in_h, g.in_w, g.out_h, g.out_w, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w,
                    g.pad_top, g.pad_left, g.dilation_h, g.dilation_w, g.in_channels, g.out_channels,
                    g.batch * g.out_pixels(), g.batch * g.in_h * g.in_w,
                    g.gemm_k(), g.kernel_h * g.kernel_w * g.out_channels_per_group()}) {
    if (!fits_int32(v)) return false;
  }
  return g.groups <= 65535;
}

// dtype gate shared by the forward and the input gradient: fp16, bf16, and fp32 as TF32
// when torch's cuDNN TF32 flag (the one torch's own convolutions follow) allows it.
inline const char* dtype_declined(at::ScalarType st) {
  if (st == at::kHalf || st == at::kBFloat16) return nullptr;
  if (st == at::kFloat) {
    return at::globalContext().allowTF32CuDNN()
               ? nullptr
               : "float32 with TF32 disabled (torch.backends.cudnn.allow_tf32 is False)";
  }
  return "dtype is not float16, bfloat16 or float32 (TF32)";
}

#endif  // __CUDACC__

}  // namespace tc
}  // namespace cuda
}  // namespace cnnops
