"""torch.nn.functional-style API (also available as cnnops.F). Signatures mirror torch's,
plus the extras in DESIGN.md section 1 (padding_mode for conv2d, ...)."""
import torch
import torch.autograd.forward_ad as _fwad

from cnnops.ops._common import (_peek_functorch, autocast_cast, autocast_dtype, autograd_call, bilinear_tangent,
                               check_device, check_tensor)
from cnnops.ops.conv2d import Conv2dFunction, conv2d_eager, normalize_conv2d_args
from cnnops.ops.pool2d import (AdaptiveAvgPool2dEager, AdaptiveAvgPool2dFunction, AdaptiveMaxPool2dEager,
                               AdaptiveMaxPool2dFunction, AvgPool2dEager, AvgPool2dFunction, MaxPool2dEager,
                               MaxPool2dFunction, gather_at_indices, normalize_output_size, normalize_pool_args)
from cnnops.ops.layer_norm import (LayerNorm2dEager, LayerNorm2dFunction, LayerNormEager, LayerNormFunction,
                                   normalize_shape_arg)
from cnnops.ops.batch_norm import BatchNormEager, BatchNormFunction
from cnnops.ops.depthwise_conv2d import DepthwiseConv2dFunction, depthwise_conv2d_eager

__all__ = ["conv2d", "Conv2dFunction", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
           "MaxPool2dFunction", "AvgPool2dFunction", "AdaptiveAvgPool2dFunction", "AdaptiveMaxPool2dFunction",
           "layer_norm", "layer_norm2d", "LayerNormFunction", "LayerNorm2dFunction",
           "batch_norm", "BatchNormFunction",
           "depthwise_conv2d", "DepthwiseConv2dFunction",
           "depthwise_separable_conv2d", "DepthwiseSeparableConv2dFunction",
           "spatially_separable_conv2d", "SpatiallySeparableConv2dFunction"]

_ops = torch.ops.cnnops


def _tap_is_live(k, size, out, stride, dilation, pad_lo):
    """Whether kernel tap k reads the input for some output: the first output whose input
    index oh * stride - pad_lo + k * dilation is >= 0 exists and is inside."""
    start = pad_lo - k * dilation
    first = -(-start // stride) if start > 0 else 0
    return first < out and first * stride - start < size


def _live_taps(size, out, kernel, stride, dilation, pad_lo):
    """(first, last) kernel tap along one dimension (input size `size`, output size `out`)
    that reads the input for some output; the taps outside read only zero padding.
    (0, kernel - 1) where every tap is live, or every one is dead (the output is then the
    bias alone)."""
    if out < 1 or size < 1:
        return 0, kernel - 1
    first = 0
    while first < kernel and not _tap_is_live(first, size, out, stride, dilation, pad_lo):
        first += 1
    if first == kernel:
        return 0, kernel - 1
    last = kernel - 1
    while not _tap_is_live(last, size, out, stride, dilation, pad_lo):
        last -= 1
    return first, last


def _crop_to_live_taps(x, dim, size, out, live, stride, dilation, pad_lo):
    """x narrowed along dim (input size `size`, output size `out`) to what the live taps
    (first, last) read, and the padding that keeps the output size: (x, new pad_lo,
    new pad_hi)."""
    lo = pad_lo - live[0] * dilation
    start = max(0, -lo)  # rows before the first live tap's first read are never read
    lo = max(lo, 0)
    length = size - start
    hi = (out - 1) * stride + dilation * (live[1] - live[0]) + 1 - lo - length
    if hi < 0:  # nor those after the last live tap's last read
        length, hi = length + hi, 0
    if start or length != size:
        x = x.narrow(dim, start, length)
    return x, lo, hi


def _without_dead_taps(x, weight, h, w, kh, kw, stride, padding, dilation, padding_mode):
    """(x, weight, padding) with the kernel rows and columns that read only zero padding
    dropped (the input narrowed to what the others read, the padding adjusted to keep the
    output size): an atrous convolution with a dilation as large as its input (DeepLab's
    ASPP on small feature maps) is then a smaller kernel, and the padded frame the kernels
    stage no longer grows with the dilation (dilation and padding 1e5 on an 8x8 input
    raised MemoryError). The same output; the gradients of the dropped taps are zeros.
    h, w: the input's height and width; kh, kw: the kernel's (the caller has the shapes)."""
    top, bottom, left, right = padding
    if padding_mode != "zeros" or not (top or bottom or left or right):
        return x, weight, padding
    (sh, sw), (dh, dw) = stride, dilation
    if min(top, bottom, left, right) < 0 or min(sh, sw, dh, dw) < 1:  # the op reports these
        return x, weight, padding
    # The common case, inline (this runs on every call): the padding before is at most the
    # kernel's extent, whose last tap then reads from output 0, and the first tap reads inside.
    ext_h, ext_w = dh * (kh - 1), dw * (kw - 1)
    out_h, out_w = (h + top + bottom - ext_h - 1) // sh + 1, (w + left + right - ext_w - 1) // sw + 1
    first_h, first_w = -(-top // sh), -(-left // sw)  # the first output whose first tap is inside
    if (top <= ext_h and ext_h - top < h and first_h < out_h and first_h * sh - top < h
            and left <= ext_w and ext_w - left < w and first_w < out_w and first_w * sw - left < w):
        return x, weight, padding
    rows = _live_taps(h, out_h, kh, sh, dh, top)
    cols = _live_taps(w, out_w, kw, sw, dw, left)
    if (rows == (0, kh - 1) and cols == (0, kw - 1)) or _is_compiling():
        return x, weight, padding
    x, top, bottom = _crop_to_live_taps(x, -2, h, out_h, rows, sh, dh, top)
    x, left, right = _crop_to_live_taps(x, -1, w, out_w, cols, sw, dw, left)
    weight = weight[:, :, rows[0]:rows[1] + 1, cols[0]:cols[1] + 1]
    return x, weight, [top, bottom, left, right]


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """torch.nn.functional.conv2d with padding done inside the kernel for every
    padding_mode ('zeros', 'reflect', 'replicate', 'circular'). Accepts unbatched (C, H, W) input."""
    op = "cnnops.conv2d"
    check_device(op, input)
    check_tensor(op, "weight", weight)
    check_tensor(op, "bias", bias, optional=True)
    in_shape, w_shape = input.shape, weight.shape
    dim = len(in_shape)
    if dim not in (3, 4):
        raise ValueError(f"{op}: expected input to be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {tuple(in_shape)}")
    if len(w_shape) != 4:
        raise ValueError(
            f"{op}: expected weight to be a 4-D tensor (out_channels, in_channels / groups, kH, kW), got shape {tuple(w_shape)}")
    stride, padding, dilation = normalize_conv2d_args(op, w_shape, stride, padding, dilation)
    cast = autocast_dtype(input)
    if cast is not None:  # custom ops ignore autocast: apply torch's conv policy here
        input, weight, bias = autocast_cast(input, cast), autocast_cast(weight, cast), autocast_cast(bias, cast)
    # Depthwise (torch's definition: groups == in_channels) runs the dedicated kernels; a
    # weight that does not fit goes to conv2d, which reports it with conv2d's message.
    depthwise = groups == in_shape[-3] and w_shape[1] == 1 and w_shape[0] >= 1 and w_shape[0] % groups == 0
    op_fn = _ops.depthwise_conv2d if depthwise else _ops.conv2d
    extra = () if depthwise else (groups,)
    x = input.unsqueeze(0) if dim == 3 else input
    x, weight, padding = _without_dead_taps(x, weight, in_shape[-2], in_shape[-1], w_shape[2], w_shape[3], stride,
                                            padding, dilation, padding_mode)
    out = _call_op(op_fn, depthwise_conv2d_eager if depthwise else conv2d_eager, x, weight, bias, stride, padding,
                   dilation, *extra, padding_mode)
    out = _with_bilinear_tangent(out, lambda a, w: op_fn(a, w, None, stride, padding, dilation, *extra, padding_mode),
                                 x, weight, bias)
    return out.squeeze(0) if dim == 3 else out


# ---------------------------------------------------------------- pooling
# Pooling runs in the input dtype under autocast (torch has no autocast policy for it).
# Unbatched (C, H, W) input is pooled as a batch of one: made contiguous first so that
# the output is contiguous, as torch's.

_below_autograd = torch._C._AutoDispatchBelowAutograd
_is_compiling = torch.compiler.is_compiling
_is_tracing = torch.jit.is_tracing


def _tangent(x):
    """The forward-mode AD tangent of x, or None. Custom ops drop tangents silently, so the
    pooling wrappers compute the output's tangent themselves (pooling is linear in the
    input given the windows, or the indices for max)."""
    if _fwad._current_level < 0:
        return None
    return _fwad.unpack_dual(x).tangent


def _with_bilinear_tangent(out, fn, x, weight, bias):
    """out, with the forward-mode AD tangent of an op bilinear in (x, weight) plus a channel
    bias (custom ops drop tangents): fn(a, w) is the op without bias on plain tensors.
    out itself is returned where nothing has a tangent."""
    tx, tw = _tangent(x), _tangent(weight)
    tb = None if bias is None else _tangent(bias)
    if (tx is None and tw is None and tb is None) or _tangent(out) is not None:
        return out
    primal = lambda t: _fwad.unpack_dual(t).primal  # noqa: E731
    out = primal(out)
    return _fwad.make_dual(out, bilinear_tangent(fn, primal(x), tx, primal(weight), tw, tb, out))


def _pool_input(op, input):
    check_device(op, input)
    dim = input.dim()
    if dim == 4:
        return input, False
    if dim == 3:
        return input.contiguous().unsqueeze(0), True
    raise ValueError(f"{op}: expected input to be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {tuple(input.shape)}")


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """torch.nn.functional.max_pool2d: indices (return_indices=True) are flat h * W + w
    within each plane, as torch's; NaN propagates; ties keep the first maximum."""
    op = "cnnops.max_pool2d"
    x, unbatched = _pool_input(op, input)
    kernel_size, stride, padding, dilation = normalize_pool_args(op, kernel_size, stride, padding, dilation)
    tangent = _tangent(x)
    # Indices are only computed when returned or needed for a derivative (or traced: the
    # trace check's run without grad must record what the traced run with grad recorded).
    if _skip_autograd(input):
        with _below_autograd():
            output, indices = _ops.max_pool2d.default(x, kernel_size, stride, padding, dilation, ceil_mode,
                                                      return_indices or tangent is not None or _is_tracing())
    else:
        output, indices = _with_autograd(_ops.max_pool2d, MaxPool2dEager.apply, x, kernel_size, stride, padding,
                                         dilation, ceil_mode, True)
    if tangent is not None and _tangent(output) is None:
        output = _fwad.make_dual(output, gather_at_indices(tangent, indices))
    if unbatched:
        output = output.squeeze(0)
        indices = indices.squeeze(0) if return_indices else indices
    return (output, indices) if return_indices else output


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """torch.nn.functional.avg_pool2d, with torch's divisor rule."""
    op = "cnnops.avg_pool2d"
    x, unbatched = _pool_input(op, input)
    kernel_size, stride, padding, _ = normalize_pool_args(op, kernel_size, stride, padding)
    output = _call_op(_ops.avg_pool2d, AvgPool2dEager.apply, x, kernel_size, stride, padding, ceil_mode,
                      count_include_pad, divisor_override)
    tangent = _tangent(x)
    if tangent is not None and _tangent(output) is None:
        output = _fwad.make_dual(output, _ops.avg_pool2d(tangent, kernel_size, stride, padding, ceil_mode,
                                                         count_include_pad, divisor_override))
    return output.squeeze(0) if unbatched else output


def adaptive_avg_pool2d(input, output_size):
    """torch.nn.functional.adaptive_avg_pool2d; None in output_size keeps that input size.
    Output 1 x 1 (global average pooling) runs a reduction kernel."""
    op = "cnnops.adaptive_avg_pool2d"
    x, unbatched = _pool_input(op, input)
    output_size = normalize_output_size(op, output_size, x.shape)
    output = _call_op(_ops.adaptive_avg_pool2d, AdaptiveAvgPool2dEager.apply, x, output_size)
    tangent = _tangent(x)
    if tangent is not None and _tangent(output) is None:
        output = _fwad.make_dual(output, _ops.adaptive_avg_pool2d(tangent, output_size))
    return output.squeeze(0) if unbatched else output


def adaptive_max_pool2d(input, output_size, return_indices=False):
    """torch.nn.functional.adaptive_max_pool2d; None in output_size keeps that input size."""
    op = "cnnops.adaptive_max_pool2d"
    x, unbatched = _pool_input(op, input)
    output_size = normalize_output_size(op, output_size, x.shape)
    output, indices = _call_op(_ops.adaptive_max_pool2d, AdaptiveMaxPool2dEager.apply, x, output_size)
    tangent = _tangent(x)
    if tangent is not None and _tangent(output) is None:
        output = _fwad.make_dual(output, gather_at_indices(tangent, indices))
    if unbatched:
        output, indices = output.squeeze(0), indices.squeeze(0)
    return (output, indices) if return_indices else output


# ---------------------------------------------------------------- layer norm

def _layer_norm_autocast(input, weight, bias):
    """Torch's autocast policy for layer_norm: float32 under CUDA autocast; CPU autocast
    leaves layer_norm alone (it is on neither of torch's CPU lists)."""
    if input.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        f32 = torch.float32
        return autocast_cast(input, f32), autocast_cast(weight, f32), autocast_cast(bias, f32)
    return input, weight, bias


def _transform_active():
    """Forward-mode AD or a torch.func transform (grad, vjp, jacrev, vmap, ...) is active
    in eager mode. The layer_norm ops have neither a jvp nor vmap rules (their transformable
    Functions are registered without one), so the layer_norm wrappers run the equivalent
    torch composite then (same results, torch's kernels)."""
    if _is_compiling():
        return False
    return torch.autograd.forward_ad._current_level >= 0 or _peek_functorch() is not None


def _with_autograd(op, eager, *args):
    """op(*args) where a gradient can flow: through eager, the op's lean autograd path
    (the C++ one of csrc/conv_eager_autograd.cpp for the convolutions, the .apply of an
    ops/_common.py register_autograd Function for the others), in plain eager mode; under a
    torch.func transform through the op's register_autograd Function (autograd_call), which
    those transforms accept; through the op itself, with its register_autograd kernel, when a
    compiler traces. Under forward AD through the transformable Function too, whose jvp gives
    the output its tangent; it saves the dual operands, so the backward's gradient ops (again
    transformable Functions, through autograd_call) see their tangents: forward mode over
    reverse mode, as torch.autograd.functional's forward-mode Hessian runs it. Where no
    gradient can flow the op runs below autograd and the caller attaches the output's
    tangent (_with_bilinear_tangent and the pooling wrappers). torch.jit.trace records the
    op itself too, as op.default: its check re-runs the module without grad, which calls
    that, and compares the two graphs down to their source lines."""
    if _is_compiling():
        return op(*args)
    if _is_tracing():
        return op.default(*args)
    if _peek_functorch() is not None or _fwad._current_level >= 0:
        return autograd_call(op, *args)
    return eager(*args)


def _call_op(op, eager, *args):
    """op(*args): below the Autograd key where no gradient can flow, else _with_autograd."""
    if _skip_autograd(*args):
        with _below_autograd():
            return op.default(*args)
    return _with_autograd(op, eager, *args)


def _skip_autograd(*args):
    """True when no gradient can flow (grad mode off, or no tensor among args requires grad)
    in eager mode: the op is then called below the Autograd key, which saves the ~10 us of
    the Python autograd wrapper that register_autograd installs. Small tensors are common.
    Never under a torch.func transform: a vmapped tensor says requires_grad=False while the
    tensor it wraps may require grad (its gradient was silently lost)."""
    if not torch.is_grad_enabled():
        return not _is_compiling()
    for a in args:  # a plain loop: this runs on every call
        if isinstance(a, torch.Tensor) and a.requires_grad:
            return False
    return not _is_compiling() and _peek_functorch() is None


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """torch.nn.functional.layer_norm: normalizes over the trailing normalized_shape
    dimensions; weight and bias optional and independent."""
    check_device("cnnops.layer_norm", input)
    input, weight, bias = _layer_norm_autocast(input, weight, bias)
    normalized_shape = normalize_shape_arg(normalized_shape)
    if _transform_active():
        return torch.nn.functional.layer_norm(input, tuple(normalized_shape), weight, bias, eps)
    return _call_op(_ops.layer_norm, LayerNormEager.apply, input, normalized_shape, weight, bias, eps)[0]


def layer_norm2d(input, weight=None, bias=None, eps=1e-6):
    """Channels-first LayerNorm (ConvNeXt): normalizes an (N, C, H, W) tensor over C for
    every (n, h, w), on NCHW or channels_last memory directly; weight and bias of shape (C,).
    The output has the input's memory format (NCHW for inputs that are neither)."""
    check_device("cnnops.layer_norm2d", input)
    input, weight, bias = _layer_norm_autocast(input, weight, bias)
    if _transform_active():
        if input.dim() != 4:
            raise ValueError("cnnops.layer_norm2d: expected input to be a 4-D tensor (N, C, H, W), "
                             f"got shape {tuple(input.shape)}")
        out = torch.nn.functional.layer_norm(input.permute(0, 2, 3, 1), (input.shape[1],), weight, bias, eps)
        return out.permute(0, 3, 1, 2)
    return _call_op(_ops.layer_norm2d, LayerNorm2dEager.apply, input, weight, bias, eps)[0]


# ---------------------------------------------------------------- transposed convolution

from cnnops.ops.conv_transpose2d import (ConvTranspose2dFunction, conv_transpose2d_eager,  # noqa: E402
                                         normalize_conv_transpose2d_args, output_padding_for_size)

__all__ += ["conv_transpose2d", "ConvTranspose2dFunction"]


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                     output_size=None):
    """torch.nn.functional.conv_transpose2d, plus output_size as nn.ConvTranspose2d.forward
    takes it: the output size to produce, which picks output_padding (it must lie between
    the smallest output size and that + stride - 1). weight is (in_channels,
    out_channels / groups, kH, kW). Accepts unbatched (C, H, W) input."""
    op = "cnnops.conv_transpose2d"
    check_device(op, input)
    dim = input.dim()
    if dim not in (3, 4):
        raise ValueError(f"{op}: expected input to be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"{op}: expected weight to be a 4-D tensor (in_channels, out_channels / groups, kH, kW), "
                         f"got shape {tuple(weight.shape)}")
    stride, padding, output_padding, dilation = normalize_conv_transpose2d_args(op, stride, padding, output_padding,
                                                                                dilation)
    if output_size is not None:
        output_padding = output_padding_for_size(op, input.shape, weight.shape, stride, padding, dilation,
                                                 output_size)
    cast = autocast_dtype(input)
    if cast is not None:  # custom ops ignore autocast: apply torch's conv policy here
        input, weight, bias = autocast_cast(input, cast), autocast_cast(weight, cast), autocast_cast(bias, cast)
    x = input.unsqueeze(0) if dim == 3 else input
    args = (stride, padding, output_padding, groups, dilation)
    out = _call_op(_ops.conv_transpose2d, conv_transpose2d_eager, x, weight, bias, *args)
    out = _with_bilinear_tangent(out, lambda a, w: _ops.conv_transpose2d(a, w, None, *args), x, weight, bias)
    return out.squeeze(0) if dim == 3 else out

# ---------------------------------------------------------------- batch norm

def _batch_norm_reference(input, running_mean, running_var, weight, bias, training, momentum, eps, activation,
                          residual):
    """The torch composite (for forward-mode AD and torch.func transforms, which the
    register_autograd machinery does not support)."""
    out = torch.nn.functional.batch_norm(input, running_mean, running_var, weight, bias, training,
                                         0.0 if momentum is None else momentum, eps)
    if residual is not None:
        out = out + residual
    if activation == "relu":
        out = torch.relu(out)
    elif activation == "relu6":
        out = torch.nn.functional.relu6(out)
    return out


def _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, activation, residual,
                num_batches_tracked):
    """batch_norm with num_batches_tracked, which the op reads (on the device) for the
    cumulative average factor when momentum is None: the modules' entry point."""
    op = "cnnops.batch_norm"
    check_device(op, input)
    if training:  # torch's check and message (torch.nn.functional._verify_batch_size)
        size = input.size()
        count = size[0]
        for s in size[2:]:
            count = count * s
        if count == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
    if residual is not None and residual.dtype != input.dtype and torch.is_autocast_enabled(input.device.type):
        # Autocast: batch_norm keeps the input dtype (float32 parameters and statistics);
        # a residual from another autocast region follows the input.
        residual = residual.to(input.dtype)
    if _transform_active():
        if momentum is None and training and running_mean is not None and num_batches_tracked is not None:
            momentum = 1.0 / float(num_batches_tracked)
        return _batch_norm_reference(input, running_mean, running_var, weight, bias, training, momentum, eps,
                                     activation, residual)
    args = (input, weight, bias, running_mean, running_var, num_batches_tracked, residual, bool(training),
            momentum, eps, activation)
    if _skip_autograd(input, weight, bias, residual):
        with _below_autograd():
            return _ops.batch_norm.default(*args)[0]
    return _with_autograd(_ops.batch_norm.default, BatchNormEager.apply, *args)[0]


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               activation=None, residual=None):
    """torch.nn.functional.batch_norm on (N, C, *) input, with a fused residual (added after
    the affine transform) and activation (None, 'relu' or 'relu6'). In training the batch
    statistics normalize and running_mean / running_var (when given) are updated in place
    with the unbiased variance; in evaluation the running statistics normalize."""
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, activation,
                       residual, None)


# ---------------------------------------------------------------- depthwise convolution

def depthwise_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, padding_mode="zeros"):
    """Depthwise convolution: torch.nn.functional.conv2d(input, weight, bias, stride, padding,
    dilation, groups=C) with weight (C * multiplier, 1, kH, kW), on dedicated kernels, with
    padding done inside the kernel for every padding_mode. Accepts unbatched (C, H, W) input,
    ints, pairs, 'same' and 'valid'."""
    op = "cnnops.depthwise_conv2d"
    check_device(op, input)
    check_tensor(op, "weight", weight)
    check_tensor(op, "bias", bias, optional=True)
    in_shape, w_shape = input.shape, weight.shape
    dim = len(in_shape)
    if dim not in (3, 4):
        raise ValueError(f"{op}: expected input to be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {tuple(in_shape)}")
    if len(w_shape) != 4:
        raise ValueError(
            f"{op}: expected weight to be a 4-D tensor (C * multiplier, 1, kH, kW), got shape {tuple(w_shape)}")
    stride, padding, dilation = normalize_conv2d_args(op, w_shape, stride, padding, dilation)
    cast = autocast_dtype(input)
    if cast is not None:  # torch's conv autocast policy
        input, weight, bias = autocast_cast(input, cast), autocast_cast(weight, cast), autocast_cast(bias, cast)
    x = input.unsqueeze(0) if dim == 3 else input
    x, weight, padding = _without_dead_taps(x, weight, in_shape[-2], in_shape[-1], w_shape[2], w_shape[3], stride,
                                            padding, dilation, padding_mode)
    out = _call_op(_ops.depthwise_conv2d, depthwise_conv2d_eager, x, weight, bias, stride, padding, dilation,
                   padding_mode)
    out = _with_bilinear_tangent(
        out, lambda a, w: _ops.depthwise_conv2d(a, w, None, stride, padding, dilation, padding_mode), x, weight, bias)
    return out.squeeze(0) if dim == 3 else out


# ---------------------------------------------------------------- fused separable convolutions

from cnnops.ops.separable_conv2d import EAGER as SEPARABLE_EAGER  # noqa: E402
from cnnops.ops.separable_conv2d import PAIRS as SEPARABLE_PAIRS  # noqa: E402
from cnnops.ops.separable_conv2d import pair_tangent as separable_pair_tangent  # noqa: E402
from cnnops.ops.separable_conv2d import (DepthwiseSeparableConv2dFunction,  # noqa: E402
                                         SpatiallySeparableConv2dFunction, normalize_pair_args)


def _separable(name, input, w1, w2, b1, b2, stride, padding, dilation, padding_mode):
    op = f"cnnops.{name}"
    check_device(op, input)
    dim = input.dim()
    if dim not in (3, 4):
        raise ValueError(
            f"{op}: expected input to be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    first, second = {"depthwise_separable_conv2d": ("depthwise", "pointwise"),
                     "spatially_separable_conv2d": ("vertical", "horizontal")}[name]
    names = (f"{first}_weight", f"{second}_weight")
    check_tensor(op, f"{first}_bias", b1, optional=True)
    check_tensor(op, f"{second}_bias", b2, optional=True)
    for w, what in zip((w1, w2), names):
        check_tensor(op, what, w)
        if w.dim() != 4:
            raise ValueError(f"{op}: expected {what} to be a 4-D tensor, got shape {tuple(w.shape)}")
    stride, padding, dilation = normalize_pair_args(name, w1.shape, w2.shape, stride, padding, dilation)
    cast = autocast_dtype(input)
    if cast is not None:  # torch's conv autocast policy
        input, w1, w2, b1, b2 = (autocast_cast(t, cast) for t in (input, w1, w2, b1, b2))
    batched = input if dim == 4 else input.unsqueeze(0)
    out = _call_op(getattr(_ops, name), SEPARABLE_EAGER[name].apply, batched, w1, b1, w2, b2, stride, padding, dilation,
                   padding_mode)
    if any(t is not None and _tangent(t) is not None for t in (batched, w1, b1, w2, b2)) and _tangent(out) is None:
        # forward-mode AD (custom ops drop tangents): through the intermediate, conv by conv
        convs = SEPARABLE_PAIRS[name][1](stride, padding, dilation, padding_mode)
        operands = (batched, w1, b1, w2, b2)
        primals = [None if t is None else _fwad.unpack_dual(t).primal for t in operands]
        tangents = [None if t is None else _tangent(t) for t in operands]
        out = _fwad.unpack_dual(out).primal
        out = _fwad.make_dual(out, separable_pair_tangent(convs, *primals, *tangents, out))
    return out if dim == 4 else out.squeeze(0)


def depthwise_separable_conv2d(input, depthwise_weight, pointwise_weight, depthwise_bias=None, pointwise_bias=None,
                               stride=1, padding=0, dilation=1, padding_mode="zeros"):
    """conv2d(depthwise_conv2d(input, depthwise_weight, depthwise_bias, stride, padding, dilation,
    padding_mode), pointwise_weight, pointwise_bias) as one op, pointwise_weight (C_out, C * m, 1, 1).
    On the CPU the forward is fused: the depthwise rows go through the 1x1 GEMM band by band
    and the intermediate tensor is never allocated (the backward recomputes it when the
    pointwise weight needs a gradient). On CUDA the two kernels run in sequence (with
    CNNOPS_EXPERIMENTAL=1, one fused kernel, slower on the H100 than the two). Accepts unbatched
    (C, H, W) input, ints, pairs, 'same' and 'valid'."""
    return _separable("depthwise_separable_conv2d", input, depthwise_weight, pointwise_weight, depthwise_bias,
                      pointwise_bias, stride, padding, dilation, padding_mode)


def spatially_separable_conv2d(input, vertical_weight, horizontal_weight, vertical_bias=None, horizontal_bias=None,
                               stride=1, padding=0, dilation=1, padding_mode="zeros"):
    """conv2d(conv2d(input, vertical_weight (C_mid, C, kH, 1), vertical_bias, (s_v, 1), (p_rows, 0),
    (d_v, 1)), horizontal_weight (C_out, C_mid, 1, kW), horizontal_bias, (1, s_h), (0, p_cols),
    (1, d_h)), both with padding_mode, as one op: what nn.SpatiallySeparableConv2d computes.
    stride and dilation are an int or (s_v, s_h); padding an int, (p_rows, p_cols), 'same' or
    'valid'. On the CPU the forward is fused (bands of rows, no intermediate tensor; the
    backward recomputes it for the horizontal weight's gradient); on CUDA the two kernels run
    in sequence. Accepts unbatched (C, H, W) input."""
    return _separable("spatially_separable_conv2d", input, vertical_weight, horizontal_weight, vertical_bias,
                      horizontal_bias, stride, padding, dilation, padding_mode)
