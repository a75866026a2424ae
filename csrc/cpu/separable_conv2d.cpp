// Fused separable forwards on the CPU: two convolutions without the intermediate tensor.
//
// In both pairs the second conv reads one row of the first's output per output row (a 1x1
// or a 1 x kW kernel, row stride 1, no row padding), so the output rows split into bands
// with no halo between the two: per band the first conv writes its rows into a scratch
// tensor sized to stay in L2, and the second conv reads them from there. A band's input is
// a narrowed view with its own top/bottom zero padding, or (reflect, replicate, circular,
// or a band wholly in zero padding) a gathered copy of its padded rows, so only columns
// are padded in-kernel.
//   depthwise_separable_conv2d: the depthwise kernels (cpu/conv_forward.h), then one GEMM
//     with the 1x1 weight straight into the output.
//   spatially_separable_conv2d: the conv2d kernels for the (kH x 1) conv, then for the
//     (1 x kW) conv, whose band is copied into the output.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/separable_checks.h"
#include "cpu/conv_forward.h"

namespace cnnops {
namespace {

// Intermediate rows per task, in bytes: with the second conv's weight and the GEMM's packed
// blocks they stay in one core's L2 (2 MB), so the second conv reads them from there.
constexpr int64_t kBandBytes = 1024 * 1024;

// The tasks: `images` whole images (runs of them only where a band is a whole image), or
// bands of `rows` output rows of one image.
struct BandPlan {
  int64_t rows, bands, images, blocks;
  int64_t tasks() const { return blocks * bands; }
};

// mid_row_bytes: one output row's worth of the intermediate tensor.
BandPlan plan_bands(int64_t batch, int64_t out_h, int64_t mid_row_bytes, bool allow_images) {
  const int64_t threads = at::get_num_threads();
  BandPlan p{};
  p.rows = std::clamp<int64_t>(kBandBytes / std::max<int64_t>(mid_row_bytes, 1), 1, out_h);
  if (batch * ((out_h + p.rows - 1) / p.rows) < threads) {  // a band for every thread
    const int64_t want = (threads + batch - 1) / batch;
    p.rows = std::max<int64_t>(1, (out_h + want - 1) / want);
  }
  p.bands = (out_h + p.rows - 1) / p.rows;
  p.rows = (out_h + p.bands - 1) / p.bands;  // even bands, no short last one
  p.images = 1;
  if (p.bands == 1 && allow_images) {
    const int64_t per_thread = (batch + threads - 1) / threads;
    p.images = std::clamp<int64_t>(kBandBytes / std::max<int64_t>(mid_row_bytes * out_h, 1), 1, per_thread);
  }
  p.blocks = (batch + p.images - 1) / p.images;
  return p;
}

// Calls fn(n0, count, oh0, oh1) for every task, on the pool's threads. Those do not inherit
// the caller's below-autograd dispatch state, so the ATen calls in fn (GEMMs, copies) would
// see operands that require grad (and mm_out would refuse): the guard restores it.
template <typename Fn>
void for_each_band(const BandPlan& p, int64_t batch, int64_t out_h, const Fn& fn) {
  at::parallel_for(0, p.tasks(), 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = task / p.bands * p.images, count = std::min(p.images, batch - n0);
      const int64_t oh0 = (task % p.bands) * p.rows, oh1 = std::min(oh0 + p.rows, out_h);
      fn(n0, count, oh0, oh1);
    }
  });
}

// The first conv's input for its output rows [oh0, oh1) of a run of images, with the
// geometry that maps it onto exactly those rows.
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
  b.in_h = hi - lo;
  b.pad_top = b.pad_bottom = 0;
  std::vector<int64_t> src(b.in_h);
  for (int64_t r = 0; r < b.in_h; ++r) src[r] = source_index(lo + r, g.in_h, g.mode);
  std::vector<int64_t> clamped(src);
  for (auto& s : clamped) s = std::max<int64_t>(s, 0);
  const at::Tensor index = at::tensor(clamped, images.options().dtype(at::kLong));
  at::Tensor rows;
  if (images.suggest_memory_format() == at::MemoryFormat::ChannelsLast) {
    // gathered as (N, rows, W, C) and viewed back, so the copy keeps channels_last
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
                                        pointwise_bias, stride, padding, dilation, padding_mode,
                                        /*half_ok=*/false);
  const int64_t mid_channels = g.out_channels, out_channels = pointwise_weight.size(0);
  const bool mid_cl = conv_memory_format(input, depthwise_weight) == at::MemoryFormat::ChannelsLast;
  const at::MemoryFormat out_format = separable_output_format(input, depthwise_weight, pointwise_weight);
  const bool out_cl = out_format == at::MemoryFormat::ChannelsLast;
  at::Tensor output = at::empty({g.batch, out_channels, g.out_h, g.out_w}, input.options().memory_format(out_format));
  if (output.numel() == 0) return output;
  const at::Tensor* dw_bias = defined_or_null(depthwise_bias);
  const at::Tensor* pw_bias = defined_or_null(pointwise_bias);
  const at::Tensor pw = pointwise_weight.reshape({out_channels, mid_channels});

  // Several whole images per task only where both layouts are channels_last: their pixels
  // are contiguous there, so the GEMM gets more rows.
  const int64_t row_bytes = mid_channels * g.out_w * static_cast<int64_t>(input.element_size());
  const BandPlan plan = plan_bands(g.batch, g.out_h, row_bytes, mid_cl && out_cl);
  for_each_band(plan, g.batch, g.out_h, [&](int64_t n0, int64_t count, int64_t oh0, int64_t oh1) {
    const Band band = band_input(input.narrow(0, n0, count), g, oh0, oh1);
    at::Tensor mid = at::empty({count, mid_channels, oh1 - oh0, g.out_w},
                               input.options().memory_format(conv_memory_format(input, depthwise_weight)));
    depthwise_forward_cpu(band.input, depthwise_weight, dw_bias, mid, band.g);
    // (pixels x mid channels): contiguous rows for channels_last, a transposed view else
    const int64_t pixels = count * (oh1 - oh0) * g.out_w;
    const at::Tensor a = mid_cl ? mid.permute({0, 2, 3, 1}).view({pixels, mid_channels})
                                : mid.view({mid_channels, pixels}).t();
    if (out_cl) {  // (pixels x out channels), rows out_channels apart
      at::Tensor dst = output.narrow(0, n0, count).permute({0, 2, 3, 1}).narrow(1, oh0, oh1 - oh0)
                           .view({pixels, out_channels});
      if (pw_bias) {
        dst.copy_(pw_bias->unsqueeze(0).expand({pixels, out_channels}));
        dst.addmm_(a, pw.t());
      } else {
        at::mm_out(dst, a, pw.t());
      }
    } else {  // (out channels x pixels) of one image, rows out_h * out_w apart
      at::Tensor dst = output.select(0, n0).view({out_channels, g.out_h * g.out_w}).narrow(1, oh0 * g.out_w, pixels);
      if (pw_bias) {
        dst.copy_(pw_bias->unsqueeze(1).expand({out_channels, pixels}));
        dst.addmm_(pw, a.t());
      } else {
        at::mm_out(dst, pw, a.t());
      }
    }
  });
  return output;
}

at::Tensor spatially_separable_conv2d_cpu(const at::Tensor& input, const at::Tensor& vertical_weight,
                                          const c10::optional<at::Tensor>& vertical_bias,
                                          const at::Tensor& horizontal_weight,
                                          const c10::optional<at::Tensor>& horizontal_bias,
                                          at::IntArrayRef stride, at::IntArrayRef padding,
                                          at::IntArrayRef dilation, c10::string_view padding_mode) {
  const char* op = "cnnops.spatially_separable_conv2d";
  const SeparablePair pair =
      check_spatially_separable_forward(op, input, vertical_weight, vertical_bias, horizontal_weight,
                                        horizontal_bias, stride, padding, dilation, padding_mode);
  const Conv2dGeometry& gv = pair.vertical;
  const Conv2dGeometry& gh = pair.horizontal;
  at::Tensor output = at::empty({gh.batch, gh.out_channels, gh.out_h, gh.out_w},
                                input.options().memory_format(
                                    separable_output_format(input, vertical_weight, horizontal_weight)));
  if (output.numel() == 0) return output;

  const int64_t row_bytes = gv.out_channels * gv.out_w * static_cast<int64_t>(input.element_size());
  const BandPlan plan = plan_bands(gv.batch, gv.out_h, row_bytes, /*allow_images=*/true);
  const int64_t h_stride[2] = {1, gh.stride_w}, h_padding[4] = {0, 0, gh.pad_left, gh.pad_right};
  const int64_t h_dilation[2] = {1, gh.dilation_w};
  for_each_band(plan, gv.batch, gv.out_h, [&](int64_t n0, int64_t count, int64_t oh0, int64_t oh1) {
    const Band band = band_input(input.narrow(0, n0, count), gv, oh0, oh1);
    const int64_t v_stride[2] = {gv.stride_h, 1}, v_padding[4] = {band.g.pad_top, band.g.pad_bottom, 0, 0};
    const int64_t v_dilation[2] = {gv.dilation_h, 1};
    const at::Tensor mid = conv2d_forward_cpu(band.input, vertical_weight, vertical_bias, v_stride, v_padding,
                                              v_dilation, 1, padding_mode);
    const at::Tensor rows = conv2d_forward_cpu(mid, horizontal_weight, horizontal_bias, h_stride, h_padding,
                                               h_dilation, 1, padding_mode);
    output.narrow(0, n0, count).narrow(2, oh0, oh1 - oh0).copy_(rows);
  });
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnops, CPU, m) {
  m.impl("depthwise_separable_conv2d", &depthwise_separable_conv2d_cpu);
  m.impl("spatially_separable_conv2d", &spatially_separable_conv2d_cpu);
}

}  // namespace cnnops
