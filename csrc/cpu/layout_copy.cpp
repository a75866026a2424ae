// NCHW <-> channels_last copies of float tensors (see layout_copy.h). Per image either is
// a matrix transpose: NCHW is (C x HW), channels_last (HW x C).
#include "cpu/layout_copy.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "cpu/lanes.h"

namespace cnnops {
namespace {

#if defined(CPU_CAPABILITY_AVX512)
// dst[n][j][i] = src[n][i][j] for `batch` dense (rows x cols) matrices. A task is a strip of
// 16 source columns (16 whole destination rows, written left to right) of one matrix, in
// 16 x 16 tiles; the edges are masked.
void transpose_matrices(const float* src, float* dst, int64_t batch, int64_t rows, int64_t cols) {
  const int64_t strips = (cols + 15) / 16, matrix = rows * cols;
  // About 16 KB moved per task at the least: smaller ones cost more to hand out than to do.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(rows * 16, 1));
  at::parallel_for(0, batch * strips, grain, [&](int64_t begin, int64_t end) {
    __m512 r[16];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / strips, j0 = (item % strips) * 16, width = std::min<int64_t>(16, cols - j0);
      const __mmask16 col_mask = static_cast<__mmask16>((1u << width) - 1u);
      const float* s = src + n * matrix + j0;
      float* d = dst + n * matrix + j0 * rows;
      for (int64_t i0 = 0; i0 < rows; i0 += 16) {
        const int64_t height = std::min<int64_t>(16, rows - i0);
        for (int64_t l = 0; l < 16; ++l)
          r[l] = l < height ? _mm512_maskz_loadu_ps(col_mask, s + (i0 + l) * cols) : _mm512_setzero_ps();
        transpose16x16(r);  // r[j] = source column j0 + j, rows i0..i0 + 15
        const __mmask16 row_mask = static_cast<__mmask16>((1u << height) - 1u);
        for (int64_t j = 0; j < width; ++j) _mm512_mask_storeu_ps(d + j * rows + i0, row_mask, r[j]);
      }
    }
  });
}
#endif

}  // namespace

void copy_cpu(at::Tensor& dst, const at::Tensor& src) {
#if defined(CPU_CAPABILITY_AVX512)
  const auto cl = at::MemoryFormat::ChannelsLast, planar = at::MemoryFormat::Contiguous;
  const bool float4d = src.is_cpu() && dst.is_cpu() && src.scalar_type() == at::kFloat &&
                       dst.scalar_type() == at::kFloat && src.dim() == 4 && dst.sizes() == src.sizes();
  if (float4d && src.numel() > 0) {
    const bool to_cl = dst.is_contiguous(cl) && src.is_contiguous(planar);
    const bool to_planar = dst.is_contiguous(planar) && src.is_contiguous(cl);
    const int64_t channels = src.size(1), pixels = src.size(2) * src.size(3);
    if (to_cl || to_planar) {  // (where both hold, C or H x W is 1 and the transpose is a plain copy)
      transpose_matrices(src.const_data_ptr<float>(), dst.mutable_data_ptr<float>(), src.size(0),
                         to_cl ? channels : pixels, to_cl ? pixels : channels);
      return;
    }
  }
#endif
  dst.copy_(src);
}

at::Tensor contiguous_cpu(const at::Tensor& t, at::MemoryFormat format) {
  if (t.is_contiguous(format)) return t;
  at::Tensor out = at::empty(t.sizes(), t.options().memory_format(format));
  copy_cpu(out, t);
  return out;
}

}  // namespace cnnops
