// Autograd of the three convolution families (conv2d, depthwise_conv2d, conv_transpose2d)
// in C++, for the functionals' plain-eager path. The ops themselves keep their autograd from
// torch.library.register_autograd (cnnops/ops/<family>.py), which torch.compile, opcheck and
// torch.func use; that path runs Python three times per training step (setup, backward, and
// each gradient op's wrapper), which costs more than the kernels of launch-bound CUDA shapes.
// Here `_<family>_eager` (same schema as the forward op) records a C++ node instead: the
// backward runs on the autograd engine's thread without the GIL and calls the family's
// gradient ops through the dispatcher. It computes what <family>_backward in Python computes,
// with the same gradient ops, so both give bitwise equal results (tests/test_eager_autograd.py).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "common/conv_checks.h"
#include "cpu/layout_copy.h"

namespace cnnops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A family's forward(input, weight, bias, args...), grad_input(grad_output, weight,
// input_size, args..., channels_last) and grad_weight(grad_output, input, weight_size,
// args..., channels_last); the bias gradient is conv2d_grad_bias for all three.
struct ConvFamily {
  c10::OperatorHandle forward, grad_input, grad_weight, grad_bias;
  // depthwise on the CPU: its channels_last gradient kernels each copy a grad_output that is
  // not channels_last; one copy serves both (as depthwise_backward in Python).
  bool channels_last_grad_output_on_cpu;
};

const ConvFamily& conv_family(const std::string& name) {
  static const auto families = [] {
    auto find = [](const std::string& op) { return c10::Dispatcher::singleton().findSchemaOrThrow(op.c_str(), ""); };
    auto make = [&](const std::string& family, bool cl_grad_output) {
      const std::string q = "cnnops::" + family;
      return ConvFamily{find(q), find(q + "_grad_input"), find(q + "_grad_weight"), find("cnnops::conv2d_grad_bias"),
                        cl_grad_output};
    };
    return std::vector<std::pair<std::string, ConvFamily>>{{"conv2d", make("conv2d", false)},
                                                           {"depthwise_conv2d", make("depthwise_conv2d", true)},
                                                           {"conv_transpose2d", make("conv_transpose2d", false)}};
  }();
  for (const auto& entry : families)
    if (entry.first == name) return entry.second;
  TORCH_CHECK(false, "cnnops: no convolution family named ", name);
}

// Calls op on stack (arguments in, results out) and returns its single tensor result.
at::Tensor call(const c10::OperatorHandle& op, torch::jit::Stack stack) {
  op.callBoxed(stack);
  return stack[0].toTensor();
}

struct ConvEagerFunction : public torch::autograd::Function<ConvEagerFunction> {
  // args: the forward's arguments after bias, in schema order.
  static at::Tensor forward(AutogradContext* ctx, const std::string& family_name, const at::Tensor& input,
                            const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            std::vector<c10::IValue> args) {
    const ConvFamily& family = conv_family(family_name);
    torch::jit::Stack stack{input, weight, bias};
    stack.insert(stack.end(), args.begin(), args.end());
    at::Tensor output;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;  // the op's own (Python) autograd is not wanted
      output = call(family.forward, std::move(stack));
    }
    // Save only what a needed gradient reads: input for grad_weight, weight for grad_input.
    ctx->save_for_backward({weight.requires_grad() ? input : at::Tensor(),
                            input.requires_grad() ? weight : at::Tensor()});
    ctx->saved_data["args"] = c10::ivalue::Tuple::create(std::move(args));
    ctx->saved_data["input_size"] = input.sizes().vec();
    ctx->saved_data["weight_size"] = weight.sizes().vec();
    ctx->saved_data["channels_last"] = conv_memory_format(input, weight) == at::MemoryFormat::ChannelsLast;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["family"] = family_name;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // One slot per forward argument (family, input, weight, bias, args); gradients only for tensors.
    variable_list result(5);
    at::Tensor grad_output = grads[0];
    if (!grad_output.defined()) return result;
    const ConvFamily& family = conv_family(ctx->saved_data["family"].toStringRef());
    const variable_list saved = ctx->get_saved_variables();
    const auto args = ctx->saved_data["args"].toTuple();
    const bool channels_last = ctx->saved_data["channels_last"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // Needs-grad flags are per tensor input: input, weight, then bias where given.
    const bool need_input = ctx->needs_input_grad(0), need_weight = ctx->needs_input_grad(1);
    const bool need_bias = has_bias && ctx->needs_input_grad(2);
    // Below autograd unless a graph is being recorded (create_graph: double backward goes
    // through the gradient ops' register_autograd, as the Python backward's calls do).
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    // Not for a grad_output of vmap (is_grads_batched backwards): its layout cannot be asked
    // for. The differentiable copy where a graph is recorded, else cpu/layout_copy.h's.
    const c10::DispatchKeySet keys = grad_output.key_set();
    const bool batched = keys.has(c10::DispatchKey::FuncTorchBatched) || keys.has(c10::DispatchKey::Batched);
    if (family.channels_last_grad_output_on_cpu && channels_last && need_input && need_weight &&
        grad_output.is_cpu() && grad_output.dim() == 4 && !batched &&
        !grad_output.is_contiguous(at::MemoryFormat::ChannelsLast))
      grad_output = below_autograd ? contiguous_cpu(grad_output, at::MemoryFormat::ChannelsLast)
                                   : grad_output.contiguous(at::MemoryFormat::ChannelsLast);
    auto gradient = [&](const c10::OperatorHandle& op, const at::Tensor& other, const char* size_key) {
      torch::jit::Stack stack{grad_output, other, ctx->saved_data[size_key]};
      for (const c10::IValue& a : args->elements()) stack.push_back(a);
      stack.emplace_back(channels_last);
      return call(op, std::move(stack));
    };
    if (need_input) result[1] = gradient(family.grad_input, saved[1], "input_size");
    if (need_weight) result[2] = gradient(family.grad_weight, saved[0], "weight_size");
    if (need_bias) result[3] = call(family.grad_bias, {grad_output});
    return result;
  }
};

// The boxed kernel of every `_<family>_eager` op: the family comes from the op's name.
void conv_eager_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const std::string& name = op.schema().name();  // "cnnops::_<family>_eager"
  const std::string prefix = "cnnops::_", suffix = "_eager";
  const std::string family = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  const size_t n_args = op.schema().arguments().size();
  std::vector<c10::IValue> inputs = torch::jit::pop(*stack, n_args);
  const c10::optional<at::Tensor> bias = inputs[2].toOptional<at::Tensor>();
  std::vector<c10::IValue> args(inputs.begin() + 3, inputs.end());
  torch::jit::push(*stack, ConvEagerFunction::apply(family, inputs[0].toTensor(), inputs[1].toTensor(), bias,
                                                     std::move(args)));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(cnnops, m) {
  // Private: the functionals call these in plain eager mode when a gradient can flow.
  m.def(
      "_conv2d_eager(Tensor input, Tensor weight, Tensor? bias, SymInt[2] stride, SymInt[4] padding, "
      "SymInt[2] dilation, SymInt groups, str padding_mode) -> Tensor");
  m.def(
      "_depthwise_conv2d_eager(Tensor input, Tensor weight, Tensor? bias, SymInt[2] stride, "
      "SymInt[4] padding, SymInt[2] dilation, str padding_mode) -> Tensor");
  m.def(
      "_conv_transpose2d_eager(Tensor input, Tensor weight, Tensor? bias, SymInt[2] stride, SymInt[2] padding, "
      "SymInt[2] output_padding, SymInt groups, SymInt[2] dilation) -> Tensor");
}

TORCH_LIBRARY_IMPL(cnnops, CompositeImplicitAutograd, m) {
  for (const char* name : {"_conv2d_eager", "_depthwise_conv2d_eager", "_conv_transpose2d_eager"})
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&conv_eager_kernel>());
}

}  // namespace cnnops
