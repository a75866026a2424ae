#pragma once
// The fast CPU conv2d path ("panel"): float32/float64, NCHW and channels_last.
//
// Output rows of one image are cut into tiles; a tile's im2col panel is built row by row
// as contiguous runs of the input (padding only at the borders, through source_index and
// interior_range in common/conv_index.h) and fed to one ATen GEMM that writes straight
// into the output. 1x1 stride-1 unpadded convolutions skip the panel: the input already
// is the GEMM operand. The three directions are separate functions, so the transposed
// convolution can reuse grad_input as its forward.
#include <ATen/ATen.h>

#include "common/conv_index.h"

namespace cnnops {

// Which CPU conv2d implementation runs, from CNNOPS_CONV2D_CPU_PATH (read on every call,
// so tests can force each one):
//   auto   (default) panel for float32/float64 with the 1x1 GEMM shortcut, im2col otherwise
//   panel  panel for float32/float64 on every shape, 1x1 included (no shortcut)
//   im2col the foundation's tiled per-element im2col + GEMM, every dtype
enum class CpuConvPath { Im2col, Panel, PanelNoShortcut };

CpuConvPath cpu_conv_path(at::ScalarType dtype);

// Each fills a freshly allocated result. cl: compute in channels_last; the activations
// (output, grad_input, and their operands) are then channels_last, else NCHW-contiguous:
// the results must have been allocated so, operands in another layout are copied.
// grad_weight may have either layout. bias may be undefined.
void conv2d_forward_panel(const at::Tensor& input, const at::Tensor& weight,
                          const at::Tensor& bias, const Conv2dGeometry& g, at::Tensor& output,
                          bool cl, bool shortcut_1x1);
void conv2d_grad_input_panel(const at::Tensor& grad_output, const at::Tensor& weight,
                             const Conv2dGeometry& g, at::Tensor& grad_input, bool cl,
                             bool shortcut_1x1);
void conv2d_grad_weight_panel(const at::Tensor& grad_output, const at::Tensor& input,
                              const Conv2dGeometry& g, at::Tensor& grad_weight, bool cl,
                              bool shortcut_1x1);

}  // namespace cnnops
