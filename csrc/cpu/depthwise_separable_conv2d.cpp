// Fused depthwise-separable forward on the CPU: pointwise(depthwise(input)) without the
// intermediate tensor. The output rows of each image are cut into bands; per band the
// depthwise kernels (cpu/depthwise_conv2d.h) write the band's depthwise rows into a
// scratch tensor sized to stay in L2, and one GEMM applies the 1x1 weight straight into
// the output. The pointwise conv reads one output row per input row, so a band needs no
// halo on that side; the depthwise side reads its rows through a narrowed view of the
// input (zero padding) or a gathered copy of the padded rows (other modes).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/depthwise_checks.h"
#include "cpu/depthwise_conv2d.h"

namespace cnnops {
namespace {

// Depthwise rows of one band, in bytes: with the pointwise weight and the GEMM's packed
// blocks they stay in one core's L2 (2 MB), so the GEMM reads them from there.
constexpr int64_t kBandBytes = 1024 * 1024;

// The depthwise input of output rows [oh0, oh1) of a run of images, with the geometry that maps
// it onto exactly those rows.
struct Band {
  at::Tensor input;
  Conv2dGeometry g;
};

Band band_input(const at::Tensor& images, const Conv2dGeometry& g, int64_t oh0, int64_t oh1) {
  const int64_t lo = oh0 * g.stride_h - g.pad_top;  // first padded row read
  const int64_t hi = (oh1 - 1) * g.stride_h - g.pad_top + (g.kernel_h - 1) * g.dilation_h + 1;
  Conv2dGeometry b = g;
  b.batch = images.size(0);
  b.out_h = oh1 - oh0;
  const int64_t clip_lo = std::max<int64_t>(lo, 0), clip_hi = std::min(hi, g.in_h);
  if (g.mode == PaddingMode::Zeros && clip_lo < clip_hi) {
    b.in_h = clip_hi - clip_lo;
    b.pad_top = clip_lo - lo;
    b.pad_bottom = hi - clip_hi;
    return {images.narrow(2, clip_lo, b.in_h), b};
  }
  // Reflect, replicate, circular (or a band wholly in zero padding): the padded rows,
  // gathered, so that only the columns are padded by the kernel.
  b.in_h = hi - lo;
  b.pad_top = b.pad_bottom = 0;
  std::vector<int64_t> src(b.in_h);
  for (int64_t r = 0; r < b.in_h; ++r) src[r] = source_index(lo + r, g.in_h, g.mode);
  std::vector<int64_t> clamped(src);
  for (auto& s : clamped) s = std::max<int64_t>(s, 0);
  const at::Tensor index = at::tensor(clamped, images.options().dtype(at::kLong));
  at::Tensor rows;
  if (images.suggest_memory_format() == at::MemoryFormat::ChannelsLast) {
    // gathered as (1, rows, W, C) and viewed back, so the copy keeps channels_last
    rows = images.permute({0, 2, 3, 1}).index_select(1, index).permute({0, 3, 1, 2});
  } else {
    rows = images.index_select(2, index);
  }
  for (int64_t r = 0; r < b.in_h; ++r)
    if (src[r] < 0) rows.select(2, r).zero_();
  return {rows, b};
}

at::Tensor depthwise_separable_conv2d_cpu(const at::Tensor& input, const at::Tensor& depthwise_weight,
                                          const c10::optional<at::Tensor>& depthwise_bias,
                                          const at::Tensor& pointwise_weight,
                                          const c10::optional<at::Tensor>& pointwise_bias,
                                          at::IntArrayRef stride, at::IntArrayRef padding,
                                          at::IntArrayRef dilation, c10::string_view padding_mode) {
  const char* op = "cnnops.depthwise_separable_conv2d";
  const Conv2dGeometry g =
      check_depthwise_separable_forward(op, input, depthwise_weight, depthwise_bias, pointwise_weight,
                                        pointwise_bias, stride, padding, dilation, padding_mode);
  const int64_t mid_channels = g.out_channels, out_channels = pointwise_weight.size(0);
  // Layouts as the two convs in sequence would give them.
  const at::MemoryFormat mid_format = conv_memory_format(input, depthwise_weight);
  const bool out_cl = mid_format == at::MemoryFormat::ChannelsLast ||
                      pointwise_weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  at::Tensor output = at::empty({g.batch, out_channels, g.out_h, g.out_w},
                                input.options().memory_format(out_cl ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous));
  if (output.numel() == 0) return output;
  const at::Tensor* dw_bias = (depthwise_bias.has_value() && depthwise_bias->defined()) ? &*depthwise_bias : nullptr;
  const bool has_pw_bias = pointwise_bias.has_value() && pointwise_bias->defined();
  const at::Tensor pw = pointwise_weight.reshape({out_channels, mid_channels});

  // Bands of equal height, enough of them to give every thread one. Where a band is a
  // whole image and both layouts are channels_last, a task takes several images: their
  // pixels are contiguous, so the GEMM gets more rows.
  const int64_t row_bytes = mid_channels * g.out_w * static_cast<int64_t>(input.element_size());
  int64_t rows = std::clamp<int64_t>(kBandBytes / std::max<int64_t>(row_bytes, 1), 1, g.out_h);
  const int64_t threads = at::get_num_threads();
  if (g.batch * ((g.out_h + rows - 1) / rows) < threads) {
    const int64_t want = (threads + g.batch - 1) / g.batch;
    rows = std::max<int64_t>(1, g.out_h / want);
  }
  const int64_t bands = (g.out_h + rows - 1) / rows;
  rows = (g.out_h + bands - 1) / bands;
  const bool mid_cl = mid_format == at::MemoryFormat::ChannelsLast;
  int64_t images = 1;
  if (bands == 1 && mid_cl && out_cl) {
    const int64_t per_thread = (g.batch + threads - 1) / threads;
    images = std::clamp<int64_t>(kBandBytes / (row_bytes * g.out_h), 1, per_thread);
  }
  const int64_t blocks = (g.batch + images - 1) / images;

  at::parallel_for(0, blocks * bands, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = task / bands * images, count = std::min(images, g.batch - n0);
      const int64_t oh0 = (task % bands) * rows, oh1 = std::min(oh0 + rows, g.out_h);
      const Band band = band_input(input.narrow(0, n0, count), g, oh0, oh1);
      at::Tensor mid = at::empty({count, mid_channels, oh1 - oh0, g.out_w}, input.options().memory_format(mid_format));
      depthwise_forward_cpu(band.input, depthwise_weight, dw_bias, mid, band.g);
      // (pixels x mid channels): contiguous rows for channels_last, a transposed view else
      const int64_t pixels = count * (oh1 - oh0) * g.out_w;
      const at::Tensor a = mid_cl ? mid.permute({0, 2, 3, 1}).view({pixels, mid_channels})
                                  : mid.view({mid_channels, pixels}).t();
      if (out_cl) {  // (pixels x out channels), rows out_channels apart
        at::Tensor dst = output.narrow(0, n0, count).permute({0, 2, 3, 1}).narrow(1, oh0, oh1 - oh0)
                             .view({pixels, out_channels});
        if (has_pw_bias) {
          dst.copy_(pointwise_bias->unsqueeze(0).expand({pixels, out_channels}));
          dst.addmm_(a, pw.t());
        } else {
          at::mm_out(dst, a, pw.t());
        }
      } else {  // (out channels x pixels) of one image, rows out_h * out_w apart
        at::Tensor dst = output.select(0, n0).view({out_channels, g.out_h * g.out_w}).narrow(1, oh0 * g.out_w, pixels);
        if (has_pw_bias) {
          dst.copy_(pointwise_bias->unsqueeze(1).expand({out_channels, pixels}));
          dst.addmm_(pw, a.t());
        } else {
          at::mm_out(dst, pw, a.t());
        }
      }
    }
  });
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnops, CPU, m) {
  m.impl("depthwise_separable_conv2d", &depthwise_separable_conv2d_cpu);
}

}  // namespace cnnops
