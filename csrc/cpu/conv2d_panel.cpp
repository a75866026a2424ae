// The "panel" CPU conv2d path: see conv2d_panel.h.
//
// NCHW: a tile's panel is (K x T), K = (c, kh, kw), T = the tile's output pixels; each of
// its rows is, per output row, a shifted run of one input row (a memcpy at stride 1).
// channels_last: the panel is (T x K'), K' = (kh, kw, c), each pixel's row a sequence of
// contiguous channel vectors; the weight is permuted once per call to match.
// The GEMMs write into the output in place (row stride = the output's), so there is no
// scatter pass; grad_input does the reverse (GEMM into a panel, then add the runs back).
#include "cpu/conv2d_panel.h"
#include "common/env_choice.h"
#include "cpu/layout_copy.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace cnnops {

CpuConvPath cpu_conv_path(at::ScalarType dtype) {
  const bool panel_dtype = dtype == at::kFloat || dtype == at::kDouble;
  switch (env_choice("cnnops.conv2d", "CNNOPS_CONV2D_CPU_PATH", {"auto", "panel", "im2col"})) {
    case 0: return panel_dtype ? CpuConvPath::Panel : CpuConvPath::Im2col;
    case 1: return panel_dtype ? CpuConvPath::PanelNoShortcut : CpuConvPath::Im2col;
    default: return CpuConvPath::Im2col;
  }
}

namespace {

// Panel budget: a tile's panel plus the GEMM's packed blocks stay in one core's L2 (2 MB),
// unless that leaves the GEMM too few columns (then the panel streams from L3).
constexpr int64_t kPanelBytes = 768 * 1024;
constexpr int64_t kMinTilePixels = 256;
// Work smaller than this per task runs on the calling thread: waking the pool costs more.
constexpr int64_t kMinFlopsPerTask = 1 << 20;

int64_t grain_for(int64_t flops_per_item) {
  return std::max<int64_t>(1, kMinFlopsPerTask / std::max<int64_t>(flops_per_item, 1));
}

// A row-major matrix view of raw memory (leading dimension ld) for the ATen GEMM.
template <typename T>
at::Tensor mat(const T* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

bool is_1x1_shortcut(const Conv2dGeometry& g) {
  return g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 &&
         g.pad_top == 0 && g.pad_bottom == 0 && g.pad_left == 0 && g.pad_right == 0;
}

// The GEMM's column blocks ("tiles") of output pixels, per group. Large images: a tile is
// a run of output rows of one image. Small images: a tile is `images` whole images, so
// the GEMM still gets enough columns. Tiles are grouped in blocks of whole images (the
// unit that owns its part of grad_input), `per_block` tiles each.
struct Tiling {
  int64_t images, rows, per_block, blocks;
  int64_t count() const { return blocks * per_block; }
  int64_t max_pixels(const Conv2dGeometry& g) const { return images * rows * g.out_w; }
};

struct Tile {
  int64_t n0, n1, oh0, oh1;
  int64_t pixels(const Conv2dGeometry& g) const { return (n1 - n0) * (oh1 - oh0) * g.out_w; }
  bool one_image() const { return n1 - n0 == 1; }
};

// k_per_pixel: panel values per output pixel (0: no panel, tiles of whole images).
Tiling make_tiling(const Conv2dGeometry& g, int64_t k_per_pixel, size_t elem, bool allow_images) {
  const int64_t threads = at::get_num_threads();
  const int64_t P = g.out_pixels();
  int64_t target = k_per_pixel > 0
                       ? kPanelBytes / (k_per_pixel * static_cast<int64_t>(elem))
                       : P;
  target = std::max(target, kMinTilePixels);
  Tiling t{};
  if (allow_images && P < target && g.batch > 1) {
    // enough tiles (times groups) to give every thread one
    const int64_t max_images = std::max<int64_t>(1, g.batch * g.groups / threads);
    t.images = std::clamp<int64_t>((target + P - 1) / P, 1, std::min(max_images, g.batch));
  } else {
    t.images = 1;
  }
  if (t.images > 1) {
    t.rows = g.out_h;
  } else {
    t.rows = std::clamp<int64_t>((target + g.out_w - 1) / g.out_w, 1, g.out_h);
    const int64_t planes = g.batch * g.groups;  // 0 for an empty batch (grad_weight)
    if (planes > 0 && planes * ((g.out_h + t.rows - 1) / t.rows) < threads) {
      const int64_t want = (threads + planes - 1) / planes;
      t.rows = std::max<int64_t>(1, g.out_h / want);
    }
  }
  t.per_block = (g.out_h + t.rows - 1) / t.rows;
  t.rows = (g.out_h + t.per_block - 1) / t.per_block;  // even tiles, no short last one
  t.per_block = (g.out_h + t.rows - 1) / t.rows;
  t.blocks = (g.batch + t.images - 1) / t.images;
  return t;
}

Tile tile_at(const Conv2dGeometry& g, const Tiling& t, int64_t index) {
  const int64_t block = index / t.per_block, r = index % t.per_block;
  const int64_t n0 = block * t.images, n1 = std::min(n0 + t.images, g.batch);
  const int64_t oh0 = r * t.rows, oh1 = std::min(oh0 + t.rows, g.out_h);
  return Tile{n0, n1, oh0, oh1};
}

// Column padding map: col[kw * out_w + ow] = input column read by tap kw at output column
// ow (-1: zero padding), and per kw the interior range where it is ow * stride + offset.
struct ColumnMap {
  std::vector<int64_t> col;
  std::vector<InteriorRange> range;
  std::vector<int64_t> offset;
};

ColumnMap column_map(const Conv2dGeometry& g) {
  ColumnMap m;
  m.col.resize(g.kernel_w * g.out_w);
  m.range.resize(g.kernel_w);
  m.offset.resize(g.kernel_w);
  for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
    const int64_t off = kw * g.dilation_w - g.pad_left;
    m.offset[kw] = off;
    m.range[kw] = interior_range(g.out_w, g.in_w, g.stride_w, off);
    for (int64_t ow = 0; ow < g.out_w; ++ow)
      m.col[kw * g.out_w + ow] = source_index(ow * g.stride_w + off, g.in_w, g.mode);
  }
  return m;
}

int64_t source_row(const Conv2dGeometry& g, int64_t oh, int64_t kh) {
  return source_index(oh * g.stride_h - g.pad_top + kh * g.dilation_h, g.in_h, g.mode);
}

// ---------------------------------------------------------------- NCHW panels

// Columns of a (K x ld) panel for output rows [oh0, oh1) of one (image, group): panel
// row k = (c, kh, kw) holds, per output row, a shifted run of one input row. x points at
// the group's first input channel (planes of in_h * in_w).
template <typename T>
void build_panel_nchw(const T* x, const Conv2dGeometry& g, const ColumnMap& m, int64_t oh0,
                      int64_t oh1, T* panel, int64_t ld) {
  const int64_t plane = g.in_h * g.in_w, ow_n = g.out_w, sw = g.stride_w;
  T* row_k = panel;
  for (int64_t c = 0; c < g.in_channels_per_group(); ++c) {
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      for (int64_t kw = 0; kw < g.kernel_w; ++kw, row_k += ld) {
        const int64_t* map = m.col.data() + kw * ow_n;
        const InteriorRange r = m.range[kw];
        const int64_t start = r.lo * sw + m.offset[kw];
        T* dst = row_k;
        for (int64_t oh = oh0; oh < oh1; ++oh, dst += ow_n) {
          const int64_t ih = source_row(g, oh, kh);
          if (ih < 0) {
            std::fill(dst, dst + ow_n, T(0));
            continue;
          }
          const T* src = x + c * plane + ih * g.in_w;
          for (int64_t ow = 0; ow < r.lo; ++ow) dst[ow] = map[ow] < 0 ? T(0) : src[map[ow]];
          if (sw == 1) {
            std::memcpy(dst + r.lo, src + start, (r.hi - r.lo) * sizeof(T));
          } else {
            const T* s = src + start;
            for (int64_t ow = r.lo; ow < r.hi; ++ow, s += sw) dst[ow] = *s;
          }
          for (int64_t ow = r.hi; ow < ow_n; ++ow) dst[ow] = map[ow] < 0 ? T(0) : src[map[ow]];
        }
      }
    }
  }
}

// The transpose of build_panel_nchw: adds each panel value onto the input element it was
// read from (several, where padding reflects, replicates or wraps), in a fixed order.
template <typename T>
void scatter_panel_nchw(const T* panel, int64_t ld, const Conv2dGeometry& g,
                        const ColumnMap& m, int64_t oh0, int64_t oh1, T* acc) {
  const int64_t plane = g.in_h * g.in_w, ow_n = g.out_w, sw = g.stride_w;
  const T* row_k = panel;
  for (int64_t c = 0; c < g.in_channels_per_group(); ++c) {
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      for (int64_t kw = 0; kw < g.kernel_w; ++kw, row_k += ld) {
        const int64_t* map = m.col.data() + kw * ow_n;
        const InteriorRange r = m.range[kw];
        const int64_t start = r.lo * sw + m.offset[kw];
        const T* src = row_k;
        for (int64_t oh = oh0; oh < oh1; ++oh, src += ow_n) {
          const int64_t ih = source_row(g, oh, kh);
          if (ih < 0) continue;
          T* dst = acc + c * plane + ih * g.in_w;
          for (int64_t ow = 0; ow < r.lo; ++ow)
            if (map[ow] >= 0) dst[map[ow]] += src[ow];
          T* d = dst + start;
          const T* s = src + r.lo;
          const int64_t len = r.hi - r.lo;
          if (sw == 1) {
            for (int64_t j = 0; j < len; ++j) d[j] += s[j];
          } else {
            for (int64_t j = 0; j < len; ++j) d[j * sw] += s[j];
          }
          for (int64_t ow = r.hi; ow < ow_n; ++ow)
            if (map[ow] >= 0) dst[map[ow]] += src[ow];
        }
      }
    }
  }
}

// ---------------------------------------------------------------- channels_last panels

// Rows of a (pixels x K') panel, K' = (kh, kw, c), for output rows [oh0, oh1) of one
// image: x points at the image plus the group's channel offset; pixels are C apart.
template <typename T>
void build_panel_nhwc(const T* x, const Conv2dGeometry& g, const ColumnMap& m, int64_t oh0,
                      int64_t oh1, T* panel) {
  const int64_t icg = g.in_channels_per_group(), C = g.in_channels;
  T* dst = panel;
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
        const int64_t ih = source_row(g, oh, kh);
        for (int64_t kw = 0; kw < g.kernel_w; ++kw, dst += icg) {
          const int64_t iw = m.col[kw * g.out_w + ow];
          if (ih < 0 || iw < 0) {
            std::fill(dst, dst + icg, T(0));
          } else {
            std::memcpy(dst, x + (ih * g.in_w + iw) * C, icg * sizeof(T));
          }
        }
      }
    }
  }
}

template <typename T>
void scatter_panel_nhwc(const T* panel, const Conv2dGeometry& g, const ColumnMap& m,
                        int64_t oh0, int64_t oh1, T* acc) {
  const int64_t icg = g.in_channels_per_group(), C = g.in_channels;
  const T* src = panel;
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
        const int64_t ih = source_row(g, oh, kh);
        for (int64_t kw = 0; kw < g.kernel_w; ++kw, src += icg) {
          const int64_t iw = m.col[kw * g.out_w + ow];
          if (ih < 0 || iw < 0) continue;
          T* d = acc + (ih * g.in_w + iw) * C;
          for (int64_t c = 0; c < icg; ++c) d[c] += src[c];
        }
      }
    }
  }
}

at::MemoryFormat format_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The weight as the GEMM wants it: (Cout, K) with K = (c, kh, kw) for NCHW, or
// (Cout, K') with K' = (kh, kw, c) for channels_last (the channels_last memory order).
at::Tensor weight_rows(const at::Tensor& weight, bool channels_last) {
  return channels_last ? weight.contiguous(at::MemoryFormat::ChannelsLast)
                       : weight.contiguous();
}

// Everything the three directions share about one call.
template <typename T>
struct Plan {
  const Conv2dGeometry& g;
  bool cl;
  bool shortcut;  // 1x1 stride-1 unpadded: the activations are the GEMM operand
  int64_t icg, ocg, K, P, plane, C, Cout;
  Tiling tiles;
  ColumnMap m;

  Plan(const Conv2dGeometry& geom, bool channels_last, bool shortcut_1x1)
      : g(geom), cl(channels_last), icg(geom.in_channels_per_group()),
        ocg(geom.out_channels_per_group()), K(geom.gemm_k()), P(geom.out_pixels()),
        plane(geom.in_h * geom.in_w), C(geom.in_channels), Cout(geom.out_channels),
        m(column_map(geom)) {
    shortcut = shortcut_1x1 && is_1x1_shortcut(geom);
    // Without a panel, NCHW tiles of several images would not be one strided matrix.
    tiles = shortcut ? make_tiling(geom, 0, sizeof(T), cl) : make_tiling(geom, K, sizeof(T), true);
  }

  // NCHW: the tile's (K x pixels) panel of group grp. channels_last: (pixels x K').
  void build(const T* x, const Tile& t, int64_t grp, T* panel) const {
    const int64_t pix = t.pixels(g), seg = (t.oh1 - t.oh0) * g.out_w;
    for (int64_t n = t.n0; n < t.n1; ++n) {
      if (!cl)
        build_panel_nchw(x + (n * C + grp * icg) * plane, g, m, t.oh0, t.oh1,
                         panel + (n - t.n0) * seg, pix);
      else
        build_panel_nhwc(x + n * plane * C + grp * icg, g, m, t.oh0, t.oh1,
                         panel + (n - t.n0) * seg * K);
    }
  }
};

// ---------------------------------------------------------------- forward

template <typename T>
void forward_impl(const at::Tensor& x_t, const at::Tensor& w_t, const at::Tensor& b_t,
                  const Conv2dGeometry& g, at::Tensor& y_t, bool cl, bool shortcut_1x1) {
  const Plan<T> pl(g, cl, shortcut_1x1);
  const T* x = x_t.const_data_ptr<T>();
  const T* w = w_t.const_data_ptr<T>();
  const T* bias = b_t.defined() ? b_t.const_data_ptr<T>() : nullptr;
  T* y = y_t.mutable_data_ptr<T>();
  const int64_t K = pl.K, P = pl.P, C = pl.C, Cout = pl.Cout, icg = pl.icg, ocg = pl.ocg;
  const int64_t max_pix = pl.tiles.max_pixels(g);
  const int64_t items = g.groups * pl.tiles.count();

  at::parallel_for(0, items, grain_for(2 * ocg * K * max_pix), [&](int64_t begin, int64_t end) {
    std::vector<T> panel(pl.shortcut ? 0 : K * max_pix);
    std::vector<T> out_buf;  // NCHW tiles of several images: GEMM here, then copy out
    for (int64_t item = begin; item < end; ++item) {
      const int64_t grp = item / pl.tiles.count();
      const Tile t = tile_at(g, pl.tiles, item % pl.tiles.count());
      const int64_t pix = t.pixels(g), seg = (t.oh1 - t.oh0) * g.out_w;
      const at::Tensor wg = mat(w + grp * ocg * K, ocg, K, K);
      if (!cl) {
        at::Tensor b = pl.shortcut
                           ? mat(x + (t.n0 * C + grp * icg) * pl.plane + t.oh0 * g.out_w, icg, pix, pl.plane)
                           : (pl.build(x, t, grp, panel.data()), mat(panel.data(), K, pix, pix));
        T* yg = y + (t.n0 * Cout + grp * ocg) * P + t.oh0 * g.out_w;
        if (t.one_image()) {
          at::Tensor out = mat(yg, ocg, pix, P);
          at::mm_out(out, wg, b);
          if (bias)
            for (int64_t oc = 0; oc < ocg; ++oc) {
              const T bv = bias[grp * ocg + oc];
              T* row = yg + oc * P;
              for (int64_t j = 0; j < pix; ++j) row[j] += bv;
            }
        } else {
          out_buf.resize(ocg * max_pix);
          at::Tensor out = mat(out_buf.data(), ocg, pix, pix);
          at::mm_out(out, wg, b);
          for (int64_t n = t.n0; n < t.n1; ++n)
            for (int64_t oc = 0; oc < ocg; ++oc) {
              const T bv = bias ? bias[grp * ocg + oc] : T(0);
              const T* src = out_buf.data() + oc * pix + (n - t.n0) * seg;
              T* dst = yg + (n - t.n0) * Cout * P + oc * P;
              for (int64_t j = 0; j < seg; ++j) dst[j] = src[j] + bv;
            }
        }
      } else {
        // channels_last: the tile's output pixels are consecutive rows of (N*H*W, Cout)
        const int64_t first = t.n0 * P + t.oh0 * g.out_w;
        at::Tensor a = pl.shortcut ? mat(x + first * C + grp * icg, pix, icg, C)
                                   : (pl.build(x, t, grp, panel.data()), mat(panel.data(), pix, K, K));
        T* yg = y + first * Cout + grp * ocg;
        at::Tensor out = mat(yg, pix, ocg, Cout);
        at::mm_out(out, a, wg.t());
        if (bias)
          for (int64_t p = 0; p < pix; ++p)
            for (int64_t oc = 0; oc < ocg; ++oc) yg[p * Cout + oc] += bias[grp * ocg + oc];
      }
    }
  });
}

// ---------------------------------------------------------------- grad_input

template <typename T>
void grad_input_impl(const at::Tensor& go_t, const at::Tensor& w_t, const Conv2dGeometry& g,
                     at::Tensor& gi_t, bool cl, bool shortcut_1x1) {
  const Plan<T> pl(g, cl, shortcut_1x1);
  const T* go = go_t.const_data_ptr<T>();
  const T* w = w_t.const_data_ptr<T>();
  T* gi = gi_t.mutable_data_ptr<T>();
  const int64_t K = pl.K, P = pl.P, C = pl.C, Cout = pl.Cout, icg = pl.icg, ocg = pl.ocg;
  const int64_t plane = pl.plane, max_pix = pl.tiles.max_pixels(g);
  // Tiles of one image add into overlapping input rows, so the parallel unit is a block
  // of whole images (times group), whose tiles run in order: a fixed summation order.
  const int64_t items = g.groups * pl.tiles.blocks;
  const int64_t item_flops = 2 * ocg * K * max_pix * pl.tiles.per_block;

  at::parallel_for(0, items, grain_for(item_flops), [&](int64_t begin, int64_t end) {
    std::vector<T> panel(pl.shortcut ? 0 : K * max_pix);
    std::vector<T> go_buf;  // NCHW tiles of several images: grad_output gathered here
    for (int64_t item = begin; item < end; ++item) {
      const int64_t grp = item / pl.tiles.blocks, block = item % pl.tiles.blocks;
      const at::Tensor wg = mat(w + grp * ocg * K, ocg, K, K);
      for (int64_t r = 0; r < pl.tiles.per_block; ++r) {
        const Tile t = tile_at(g, pl.tiles, block * pl.tiles.per_block + r);
        const int64_t pix = t.pixels(g), seg = (t.oh1 - t.oh0) * g.out_w;
        if (!cl) {
          const T* gog = go + (t.n0 * Cout + grp * ocg) * P + t.oh0 * g.out_w;
          at::Tensor go_m;
          if (t.one_image()) {
            go_m = mat(gog, ocg, pix, P);
          } else {
            go_buf.resize(ocg * max_pix);
            for (int64_t n = t.n0; n < t.n1; ++n)
              for (int64_t oc = 0; oc < ocg; ++oc)
                std::memcpy(go_buf.data() + oc * pix + (n - t.n0) * seg,
                            gog + (n - t.n0) * Cout * P + oc * P, seg * sizeof(T));
            go_m = mat(go_buf.data(), ocg, pix, pix);
          }
          T* acc = gi + (t.n0 * C + grp * icg) * plane;
          if (pl.shortcut) {  // one GEMM: W^T (icg x ocg) @ grad_output (ocg x pixels)
            at::Tensor out = mat(acc + t.oh0 * g.out_w, icg, pix, plane);
            at::mm_out(out, wg.t(), go_m);
            continue;
          }
          if (r == 0)
            for (int64_t n = t.n0; n < t.n1; ++n)
              std::fill(acc + (n - t.n0) * C * plane, acc + (n - t.n0) * C * plane + icg * plane, T(0));
          at::Tensor cols = mat(panel.data(), K, pix, pix);
          at::mm_out(cols, wg.t(), go_m);
          for (int64_t n = t.n0; n < t.n1; ++n)
            scatter_panel_nchw(panel.data() + (n - t.n0) * seg, pix, g, pl.m, t.oh0, t.oh1,
                               acc + (n - t.n0) * C * plane);
        } else {
          const int64_t first = t.n0 * P + t.oh0 * g.out_w;
          const at::Tensor go_m = mat(go + first * Cout + grp * ocg, pix, ocg, Cout);
          T* acc = gi + t.n0 * plane * C + grp * icg;
          if (pl.shortcut) {
            at::Tensor out = mat(acc + t.oh0 * g.out_w * C, pix, icg, C);
            at::mm_out(out, go_m, wg);
            continue;
          }
          if (r == 0)
            for (int64_t p = 0; p < (t.n1 - t.n0) * plane; ++p)
              std::fill(acc + p * C, acc + p * C + icg, T(0));
          at::Tensor cols = mat(panel.data(), pix, K, K);
          at::mm_out(cols, go_m, wg);
          for (int64_t n = t.n0; n < t.n1; ++n)
            scatter_panel_nhwc(panel.data() + (n - t.n0) * seg * K, g, pl.m, t.oh0, t.oh1,
                               acc + (n - t.n0) * plane * C);
        }
      }
    }
  });
}

// ---------------------------------------------------------------- grad_weight

template <typename T>
void grad_weight_impl(const at::Tensor& go_t, const at::Tensor& x_t, const Conv2dGeometry& g,
                      at::Tensor& gw_t, bool cl, bool shortcut_1x1) {
  const Plan<T> pl(g, cl, shortcut_1x1);
  const T* go = go_t.const_data_ptr<T>();
  const T* x = x_t.const_data_ptr<T>();
  const int64_t K = pl.K, P = pl.P, C = pl.C, Cout = pl.Cout, icg = pl.icg, ocg = pl.ocg;
  const int64_t max_pix = pl.tiles.max_pixels(g), items = pl.tiles.count();
  // One partial sum per thread over a fixed, contiguous share of the tiles, added in
  // order at the end: bitwise reproducible at a fixed thread count. The first partial is
  // grad_weight itself, allocated in the layout whose memory order is the GEMM's row
  // order: (c, kh, kw) for NCHW, (kh, kw, c) for channels_last.
  TORCH_INTERNAL_ASSERT(gw_t.is_contiguous(format_of(cl)));
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(items, at::get_num_threads()));
  std::vector<T> partials((chunks - 1) * Cout * K);
  T* gw = gw_t.mutable_data_ptr<T>();
  auto partial = [&](int64_t c) { return c == 0 ? gw : partials.data() + (c - 1) * Cout * K; };

  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> panel(pl.shortcut ? 0 : K * max_pix);
    std::vector<T> go_buf;
    for (int64_t c = begin; c < end; ++c) {
      T* part = partial(c);
      const int64_t first_item = c * items / chunks, last_item = (c + 1) * items / chunks;
      for (int64_t item = first_item; item < last_item; ++item) {
        const Tile t = tile_at(g, pl.tiles, item);
        const int64_t pix = t.pixels(g), seg = (t.oh1 - t.oh0) * g.out_w;
        for (int64_t grp = 0; grp < g.groups; ++grp) {
          at::Tensor dst = mat(part + grp * ocg * K, ocg, K, K);
          at::Tensor a, b;  // dst (+)= a @ b
          if (!cl) {
            const T* gog = go + (t.n0 * Cout + grp * ocg) * P + t.oh0 * g.out_w;
            if (t.one_image()) {
              a = mat(gog, ocg, pix, P);
            } else {
              go_buf.resize(ocg * max_pix);
              for (int64_t n = t.n0; n < t.n1; ++n)
                for (int64_t oc = 0; oc < ocg; ++oc)
                  std::memcpy(go_buf.data() + oc * pix + (n - t.n0) * seg,
                              gog + (n - t.n0) * Cout * P + oc * P, seg * sizeof(T));
              a = mat(go_buf.data(), ocg, pix, pix);
            }
            b = pl.shortcut
                    ? mat(x + (t.n0 * C + grp * icg) * pl.plane + t.oh0 * g.out_w, icg, pix, pl.plane).t()
                    : (pl.build(x, t, grp, panel.data()), mat(panel.data(), K, pix, pix).t());
          } else {
            const int64_t first = t.n0 * P + t.oh0 * g.out_w;
            a = mat(go + first * Cout + grp * ocg, pix, ocg, Cout).t();
            b = pl.shortcut ? mat(x + first * C + grp * icg, pix, icg, C)
                            : (pl.build(x, t, grp, panel.data()), mat(panel.data(), pix, K, K));
          }
          if (item == first_item)
            at::mm_out(dst, a, b);
          else
            dst.addmm_(a, b);
        }
      }
      if (first_item == last_item) std::fill(part, part + Cout * K, T(0));
    }
  });

  // grad_weight holds partial 0: add the others in order.
  if (chunks > 1)
    at::parallel_for(0, Cout * K, 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t c = 1; c < chunks; ++c) {
        const T* src = partial(c);
        for (int64_t i = begin; i < end; ++i) gw[i] += src[i];
      }
    });
}

}  // namespace

void conv2d_forward_panel(const at::Tensor& input, const at::Tensor& weight,
                          const at::Tensor& bias, const Conv2dGeometry& g, at::Tensor& output,
                          bool cl, bool shortcut_1x1) {
  const at::Tensor x = contiguous_cpu(input, format_of(cl));
  const at::Tensor w = weight_rows(weight, cl);
  const at::Tensor b = bias.defined() ? bias.contiguous() : bias;
  const bool shortcut = shortcut_1x1 && is_1x1_shortcut(g);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnops_conv2d_panel", [&] {
    forward_impl<scalar_t>(x, w, b, g, output, cl, shortcut);
  });
}

void conv2d_grad_input_panel(const at::Tensor& grad_output, const at::Tensor& weight,
                             const Conv2dGeometry& g, at::Tensor& grad_input, bool cl,
                             bool shortcut_1x1) {
  const at::Tensor go = contiguous_cpu(grad_output, format_of(cl));
  const at::Tensor w = weight_rows(weight, cl);
  const bool shortcut = shortcut_1x1 && is_1x1_shortcut(g);
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "cnnops_conv2d_grad_input_panel", [&] {
    grad_input_impl<scalar_t>(go, w, g, grad_input, cl, shortcut);
  });
}

void conv2d_grad_weight_panel(const at::Tensor& grad_output, const at::Tensor& input,
                              const Conv2dGeometry& g, at::Tensor& grad_weight, bool cl,
                              bool shortcut_1x1) {
  const at::Tensor go = contiguous_cpu(grad_output, format_of(cl));
  const at::Tensor x = contiguous_cpu(input, format_of(cl));
  const bool shortcut = shortcut_1x1 && is_1x1_shortcut(g);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnops_conv2d_grad_weight_panel", [&] {
    grad_weight_impl<scalar_t>(go, x, g, grad_weight, cl, shortcut);
  });
}

}  // namespace cnnops
