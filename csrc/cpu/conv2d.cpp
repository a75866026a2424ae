// conv2d on the CPU: tiled im2col + GEMM.
//
// The output pixels of one (image, group) are cut into tiles small enough that a tile's
// im2col columns (K x T values, K = Cin/groups * kH * kW) stay in cache; each tile is one
// GEMM through ATen's BLAS. Padding of every mode is applied while gathering the columns
// (source_index in common/conv_index.h), so no padded copy of the input is made.
// All tensors are read and written through their strides: NCHW, channels_last and views.
// Reduced-precision inputs are gathered into float (at::opmath_type) buffers, so every
// GEMM and every sum accumulates in float or double.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/conv_checks.h"
#include "common/conv_index.h"
#include "cpu/conv2d_panel.h"
#include "cpu/conv_forward.h"

namespace cnnops {
namespace {

constexpr int64_t kTileBytes = 256 * 1024;  // im2col tile budget: about one L2 slice
// Work smaller than this per task runs on the calling thread: waking the pool costs more.
constexpr int64_t kMinFlopsPerTask = 1 << 20;

int64_t grain_for(int64_t flops_per_item) {
  return std::max<int64_t>(1, kMinFlopsPerTask / std::max<int64_t>(flops_per_item, 1));
}

int64_t pick_tile_pixels(const Conv2dGeometry& g, size_t elem_size) {
  const int64_t by_cache = kTileBytes / static_cast<int64_t>(g.gemm_k() * elem_size);
  return std::max<int64_t>(16, std::min<int64_t>(by_cache, g.out_pixels()));
}

template <typename T>
at::Tensor wrap(T* data, at::IntArrayRef sizes) {
  return at::from_blob(data, sizes, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// cols[k * count + j] = im2col value for GEMM column k and output pixel first + j.
template <typename scalar_t, typename opmath_t>
void gather_columns(const scalar_t* input, const Strides4d& in_strides, const Conv2dGeometry& g,
                    int64_t n, int64_t group, int64_t first, int64_t count, opmath_t* cols) {
  const int64_t khw = g.kernel_h * g.kernel_w;
  for (int64_t k = 0; k < g.gemm_k(); ++k) {
    const int64_t ic = k / khw, kh = (k % khw) / g.kernel_w, kw = k % g.kernel_w;
    int64_t oh = first / g.out_w, ow = first % g.out_w;
    opmath_t* row = cols + k * count;
    for (int64_t j = 0; j < count; ++j) {
      const int64_t off = im2col_offset(g, in_strides, n, group, oh, ow, ic, kh, kw);
      row[j] = off < 0 ? opmath_t(0) : static_cast<opmath_t>(input[off]);
      if (++ow == g.out_w) {
        ow = 0;
        ++oh;
      }
    }
  }
}

// The transpose of gather_columns: adds every column value back onto the input pixel it
// was read from (several, where padding reflects or wraps). acc is (Cin/groups, H, W).
template <typename opmath_t>
void scatter_columns(const opmath_t* cols, const Conv2dGeometry& g, int64_t first,
                     int64_t count, opmath_t* acc) {
  const int64_t khw = g.kernel_h * g.kernel_w;
  const Strides4d acc_strides{0, g.in_h * g.in_w, g.in_w, 1};
  for (int64_t k = 0; k < g.gemm_k(); ++k) {
    const int64_t ic = k / khw, kh = (k % khw) / g.kernel_w, kw = k % g.kernel_w;
    int64_t oh = first / g.out_w, ow = first % g.out_w;
    const opmath_t* row = cols + k * count;
    for (int64_t j = 0; j < count; ++j) {
      const int64_t off = im2col_offset(g, acc_strides, 0, 0, oh, ow, ic, kh, kw);
      if (off >= 0) acc[off] += row[j];
      if (++ow == g.out_w) {
        ow = 0;
        ++oh;
      }
    }
  }
}

// tile[oc * count + j] = grad_output(n, group's oc, pixel first + j).
template <typename scalar_t, typename opmath_t>
void gather_output_tile(const scalar_t* grad_output, const Strides4d& s, const Conv2dGeometry& g,
                        int64_t n, int64_t group, int64_t first, int64_t count, opmath_t* tile) {
  const int64_t ocg = g.out_channels_per_group();
  for (int64_t oc = 0; oc < ocg; ++oc) {
    int64_t oh = first / g.out_w, ow = first % g.out_w;
    for (int64_t j = 0; j < count; ++j) {
      tile[oc * count + j] =
          static_cast<opmath_t>(grad_output[s.offset(n, group * ocg + oc, oh, ow)]);
      if (++ow == g.out_w) {
        ow = 0;
        ++oh;
      }
    }
  }
}

// The weight of group g as an (Cout/groups, K) row-major matrix in opmath_t.
at::Tensor weight_matrix(const at::Tensor& weight, at::ScalarType opmath_dtype) {
  return weight.detach().to(opmath_dtype).contiguous().view({weight.size(0), -1});
}

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                      c10::string_view padding_mode) {
  // The GEMMs below are ATen calls on internal buffers: keep autograd out of them.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Conv2dGeometry g = check_conv2d_forward("cnnops.conv2d", input, weight, bias, stride,
                                                padding, dilation, groups, padding_mode);
  check_dtype_supported("cnnops.conv2d", input, /*half_ok=*/false);
  const at::MemoryFormat format = conv_memory_format(input, weight);
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                                input.options().memory_format(format));
  if (output.numel() == 0) return output;
  const CpuConvPath path = cpu_conv_path(input.scalar_type());
  if (path != CpuConvPath::Im2col) {
    conv2d_forward_panel(input, weight, bias.has_value() ? *bias : at::Tensor(), g, output,
                         format == at::MemoryFormat::ChannelsLast, path == CpuConvPath::Panel);
    return output;
  }

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "cnnops_conv2d_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto opmath_dtype = c10::CppTypeToScalarType<opmath_t>::value;
    const at::Tensor w = weight_matrix(weight, opmath_dtype);
    const at::Tensor b = (bias.has_value() && bias->defined()) ? bias->to(opmath_dtype).contiguous()
                                                               : at::Tensor();
    const opmath_t* bias_ptr = b.defined() ? b.data_ptr<opmath_t>() : nullptr;
    const scalar_t* in_ptr = input.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = output.mutable_data_ptr<scalar_t>();
    const Strides4d in_s = strides4d(input), out_s = strides4d(output);
    const int64_t ocg = g.out_channels_per_group(), K = g.gemm_k();
    const int64_t tile = pick_tile_pixels(g, sizeof(opmath_t));
    const int64_t tiles = (g.out_pixels() + tile - 1) / tile;

    const int64_t tile_flops = 2 * ocg * K * tile;
    at::parallel_for(0, g.batch * g.groups * tiles, grain_for(tile_flops), [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> cols(K * tile), out_tile(ocg * tile);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / (g.groups * tiles), grp = (item / tiles) % g.groups;
        const int64_t first = (item % tiles) * tile;
        const int64_t count = std::min(tile, g.out_pixels() - first);
        gather_columns(in_ptr, in_s, g, n, grp, first, count, cols.data());
        at::Tensor out_t = wrap(out_tile.data(), {ocg, count});
        at::mm_out(out_t, w.narrow(0, grp * ocg, ocg), wrap(cols.data(), {K, count}));
        for (int64_t oc = 0; oc < ocg; ++oc) {
          const opmath_t bias_v = bias_ptr ? bias_ptr[grp * ocg + oc] : opmath_t(0);
          int64_t oh = first / g.out_w, ow = first % g.out_w;
          for (int64_t j = 0; j < count; ++j) {
            out_ptr[out_s.offset(n, grp * ocg + oc, oh, ow)] =
                static_cast<scalar_t>(out_tile[oc * count + j] + bias_v);
            if (++ow == g.out_w) {
              ow = 0;
              ++oh;
            }
          }
        }
      }
    });
  });
  return output;
}

at::Tensor conv2d_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                 at::IntArrayRef input_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups, c10::string_view padding_mode, bool channels_last) {
  // The GEMMs below are ATen calls on internal buffers: keep autograd out of them.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Conv2dGeometry g =
      check_conv2d_grad_input("cnnops.conv2d_grad_input", grad_output, weight, input_size, stride,
                              padding, dilation, groups, padding_mode, /*half_ok=*/false);
  at::Tensor grad_input =
      at::empty(input_size, grad_output.options().memory_format(layout_from_flag(channels_last)));
  if (grad_input.numel() == 0) return grad_input;
  const CpuConvPath path = cpu_conv_path(grad_output.scalar_type());
  if (path != CpuConvPath::Im2col) {
    conv2d_grad_input_panel(grad_output, weight, g, grad_input, channels_last,
                            path == CpuConvPath::Panel);
    return grad_input;
  }

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad_output.scalar_type(), "cnnops_conv2d_grad_input_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor w = weight_matrix(weight, c10::CppTypeToScalarType<opmath_t>::value);
    const scalar_t* go_ptr = grad_output.const_data_ptr<scalar_t>();
    scalar_t* gi_ptr = grad_input.mutable_data_ptr<scalar_t>();
    const Strides4d go_s = strides4d(grad_output), gi_s = strides4d(grad_input);
    const int64_t ocg = g.out_channels_per_group(), icg = g.in_channels_per_group();
    const int64_t K = g.gemm_k();
    const int64_t tile = pick_tile_pixels(g, sizeof(opmath_t));
    const int64_t tiles = (g.out_pixels() + tile - 1) / tile;

    // Tiles of one image overlap in the input they scatter to, so the parallel unit is
    // the (image, group) pair; each accumulates in its own buffer, in a fixed order.
    const int64_t image_flops = 2 * ocg * K * g.out_pixels();
    at::parallel_for(0, g.batch * g.groups, grain_for(image_flops), [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> cols(K * tile), go_tile(ocg * tile), acc(icg * g.in_h * g.in_w);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / g.groups, grp = item % g.groups;
        std::fill(acc.begin(), acc.end(), opmath_t(0));
        for (int64_t t = 0; t < tiles; ++t) {
          const int64_t first = t * tile, count = std::min(tile, g.out_pixels() - first);
          gather_output_tile(go_ptr, go_s, g, n, grp, first, count, go_tile.data());
          at::Tensor cols_t = wrap(cols.data(), {K, count});
          at::mm_out(cols_t, w.narrow(0, grp * ocg, ocg).t(), wrap(go_tile.data(), {ocg, count}));
          scatter_columns(cols.data(), g, first, count, acc.data());
        }
        for (int64_t ic = 0; ic < icg; ++ic)
          for (int64_t ih = 0; ih < g.in_h; ++ih)
            for (int64_t iw = 0; iw < g.in_w; ++iw)
              gi_ptr[gi_s.offset(n, grp * icg + ic, ih, iw)] =
                  static_cast<scalar_t>(acc[(ic * g.in_h + ih) * g.in_w + iw]);
      }
    });
  });
  return grad_input;
}

at::Tensor conv2d_grad_input_gather_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                        at::IntArrayRef input_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation,
                                        int64_t groups, c10::string_view padding_mode,
                                        bool channels_last) {
  const Conv2dGeometry g = check_conv2d_grad_input("cnnops._conv2d_grad_input_gather", grad_output,
                                                   weight, input_size, stride, padding, dilation,
                                                   groups, padding_mode, /*half_ok=*/false);
  at::Tensor grad_input =
      at::empty(input_size, grad_output.options().memory_format(layout_from_flag(channels_last)));
  if (grad_input.numel() == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad_output.scalar_type(), "cnnops_conv2d_grad_input_gather_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* go_ptr = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* w_ptr = weight.const_data_ptr<scalar_t>();
    scalar_t* gi_ptr = grad_input.mutable_data_ptr<scalar_t>();
    const Strides4d go_s = strides4d(grad_output), w_s = strides4d(weight), gi_s = strides4d(grad_input);
    at::parallel_for(0, g.batch * g.in_channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / g.in_channels, c = item % g.in_channels;
        for (int64_t ih = 0; ih < g.in_h; ++ih)
          for (int64_t iw = 0; iw < g.in_w; ++iw)
            gi_ptr[gi_s.offset(n, c, ih, iw)] = static_cast<scalar_t>(
                conv2d_grad_input_at<opmath_t>(go_ptr, w_ptr, go_s, w_s, g, n, c, ih, iw));
      }
    });
  });
  return grad_input;
}

at::Tensor conv2d_grad_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                  at::IntArrayRef weight_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                  int64_t groups, c10::string_view padding_mode, bool channels_last) {
  // The GEMMs below are ATen calls on internal buffers: keep autograd out of them.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Conv2dGeometry g =
      check_conv2d_grad_weight("cnnops.conv2d_grad_weight", grad_output, input, weight_size, stride,
                               padding, dilation, groups, padding_mode, /*half_ok=*/false);
  at::Tensor grad_weight =
      at::empty(weight_size, input.options().memory_format(layout_from_flag(channels_last)));
  const CpuConvPath path = cpu_conv_path(input.scalar_type());
  if (path != CpuConvPath::Im2col) {
    conv2d_grad_weight_panel(grad_output, input, g, grad_weight, channels_last,
                             path == CpuConvPath::Panel);
    return grad_weight;
  }

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "cnnops_conv2d_grad_weight_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto opmath_dtype = c10::CppTypeToScalarType<opmath_t>::value;
    const int64_t ocg = g.out_channels_per_group(), K = g.gemm_k();
    const int64_t tile = pick_tile_pixels(g, sizeof(opmath_t));
    const int64_t tiles = (g.out_pixels() + tile - 1) / tile;
    const int64_t items = g.batch * tiles;
    // A fixed number of partial sums (set by the shapes, not the thread count), added in
    // order: no race decides the result, so runs repeat bit for bit. (The BLAS inside each
    // GEMM may still pick a different kernel at another thread count.)
    const int64_t partial_bytes = g.out_channels * K * static_cast<int64_t>(sizeof(opmath_t));
    const int64_t chunks = std::max<int64_t>(
        1, std::min<int64_t>({items, 8, (64 << 20) / std::max<int64_t>(partial_bytes, 1)}));
    at::Tensor partials = at::zeros({chunks, g.out_channels, K}, input.options().dtype(opmath_dtype));
    const scalar_t* in_ptr = input.const_data_ptr<scalar_t>();
    const scalar_t* go_ptr = grad_output.const_data_ptr<scalar_t>();
    const Strides4d in_s = strides4d(input), go_s = strides4d(grad_output);

    const int64_t chunk_flops = 2 * g.out_channels * K * g.out_pixels() * g.batch / chunks;
    at::parallel_for(0, chunks, grain_for(chunk_flops), [&](int64_t begin, int64_t end) {
      std::vector<opmath_t> cols(K * tile), go_tile(ocg * tile);
      for (int64_t c = begin; c < end; ++c) {
        at::Tensor partial = partials[c];
        for (int64_t item = c * items / chunks; item < (c + 1) * items / chunks; ++item) {
          const int64_t n = item / tiles, first = (item % tiles) * tile;
          const int64_t count = std::min(tile, g.out_pixels() - first);
          for (int64_t grp = 0; grp < g.groups; ++grp) {
            gather_columns(in_ptr, in_s, g, n, grp, first, count, cols.data());
            gather_output_tile(go_ptr, go_s, g, n, grp, first, count, go_tile.data());
            at::Tensor dst = partial.narrow(0, grp * ocg, ocg);
            dst.addmm_(wrap(go_tile.data(), {ocg, count}), wrap(cols.data(), {K, count}).t());
          }
        }
      }
    });
    grad_weight.copy_(partials.sum(0).view(weight_size));
  });
  return grad_weight;
}

at::Tensor conv2d_grad_bias_cpu(const at::Tensor& grad_output) {
  const char* op = "cnnops.conv2d_grad_bias";
  const at::Tensor go = check_conv2d_grad_bias(op, grad_output, /*half_ok=*/false);
  const int64_t channels = go.size(1);
  at::Tensor grad_bias = at::empty({channels}, grad_output.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, go.scalar_type(), "cnnops_conv2d_grad_bias_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    const scalar_t* ptr = go.const_data_ptr<scalar_t>();
    scalar_t* out = grad_bias.mutable_data_ptr<scalar_t>();
    const Strides4d s = strides4d(go);
    const int64_t N = go.size(0), H = go.size(2), W = go.size(3), HW = H * W;
    const int64_t grain = grain_for(go.numel() / std::max<int64_t>(channels, 1));
    if (go.is_contiguous() && HW > 0) {
      // Per channel, contiguous planes summed with kLanes interleaved accumulators (a fixed
      // order, independent of the thread count), so the adds pipeline and vectorise.
      constexpr int64_t kLanes = 16;
      at::parallel_for(0, channels, grain, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          acc_t lanes[kLanes] = {};
          acc_t tail = 0;
          for (int64_t n = 0; n < N; ++n) {
            const scalar_t* p = ptr + (n * channels + c) * HW;
            int64_t i = 0;
            for (; i + kLanes <= HW; i += kLanes)
              for (int64_t l = 0; l < kLanes; ++l) lanes[l] += static_cast<acc_t>(p[i + l]);
            for (; i < HW; ++i) tail += static_cast<acc_t>(p[i]);
          }
          acc_t sum = tail;
          for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
          out[c] = static_cast<scalar_t>(sum);
        }
      });
    } else if (go.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      // Channels are contiguous: each task sums its channel range pixel by pixel.
      at::parallel_for(0, channels, std::max<int64_t>(grain, 16), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> sums(end - begin, acc_t(0));
        for (int64_t p = 0; p < N * HW; ++p) {
          const scalar_t* row = ptr + p * channels + begin;
          for (int64_t c = 0; c < end - begin; ++c) sums[c] += static_cast<acc_t>(row[c]);
        }
        for (int64_t c = begin; c < end; ++c) out[c] = static_cast<scalar_t>(sums[c - begin]);
      });
    } else {
      at::parallel_for(0, channels, grain, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          acc_t sum = 0;
          for (int64_t n = 0; n < N; ++n)
            for (int64_t h = 0; h < H; ++h)
              for (int64_t w = 0; w < W; ++w) sum += static_cast<acc_t>(ptr[s.offset(n, c, h, w)]);
          out[c] = static_cast<scalar_t>(sum);
        }
      });
    }
  });
  return grad_bias;
}

}  // namespace

at::Tensor conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                              c10::string_view padding_mode) {
  return conv2d_cpu(input, weight, bias, stride, padding, dilation, groups, padding_mode);
}

TORCH_LIBRARY_IMPL(cnnops, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_grad_input", &conv2d_grad_input_cpu);
  m.impl("conv2d_grad_weight", &conv2d_grad_weight_cpu);
  m.impl("_conv2d_grad_input_gather", &conv2d_grad_input_gather_cpu);
  m.impl("conv2d_grad_bias", &conv2d_grad_bias_cpu);
}

}  // namespace cnnops
