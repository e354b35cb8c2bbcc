// Depthwise causal conv1d for Qwen3.5's short convolution: prefill over whole (packed) sequences and the
// one-token decode step against a conv-state pool, in plain ATen so it runs on any device, with fused
// CUDA kernels for the decode step and for prefill against the pool.
#include "deltaserve/kernels/causal_conv1d.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "check.h"
#ifdef DELTASERVE_WITH_CUDA
#include "causal_conv1d_prefill_cuda.h"
#include "causal_conv1d_step_cuda.h"
#endif

namespace deltaserve::kernels {
namespace {

using internal::CheckCuSeqlens;
using internal::CheckDtype;
using internal::CheckSameDevice;
using internal::CheckSize;
using internal::CheckSlots;
using internal::CheckTensor;
using internal::HostIndices;
using internal::IndexOnDevice;

// bf16 products and sums lose too much over K taps and the bias; accumulate in float32 instead.
at::ScalarType ComputeDtype(at::ScalarType dtype) { return dtype == at::kBFloat16 ? at::kFloat : dtype; }

// Always a fresh contiguous tensor: `Tensor::to` hands back a strided view (or its input) when the dtype
// already matches, and outputs must neither be transposed views nor alias the caller's tensors.
at::Tensor ContiguousCopy(const at::Tensor& t, at::ScalarType dtype) {
  at::Tensor out = at::empty(t.sizes(), t.options().dtype(dtype));
  out.copy_(t);
  return out;
}

// Checks weight [D, K] (K >= 2) and bias [D] (optional) against x; returns K.
absl::StatusOr<int64_t> CheckConvParams(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                        int64_t dim) {
  DS_RETURN_IF_ERROR(CheckTensor(weight, "weight", 2));
  DS_RETURN_IF_ERROR(CheckDtype(weight, "weight", {x.scalar_type()}));
  DS_RETURN_IF_ERROR(CheckSameDevice(weight, "weight", x));
  DS_RETURN_IF_ERROR(CheckSize(weight, "weight", 0, dim, "channels D"));
  const int64_t k = weight.size(1);
  if (k < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight: kernel width K (dimension 1) must be at least 2, got shape [", dim, ", ", k, "]"));
  }
  if (bias.defined()) {
    DS_RETURN_IF_ERROR(CheckTensor(bias, "bias", 1));
    DS_RETURN_IF_ERROR(CheckDtype(bias, "bias", {x.scalar_type()}));
    DS_RETURN_IF_ERROR(CheckSameDevice(bias, "bias", x));
    DS_RETURN_IF_ERROR(CheckSize(bias, "bias", 0, dim, "channels D"));
  }
  return k;
}

// The arguments the pool-based entry points share: x [rows, D] (rows may be strided, a view into a wider
// projection; the channels must be contiguous), weight and bias as CheckConvParams, conv_state
// [slots, D, K - 1] in x's dtype on x's device. Returns K.
absl::StatusOr<int64_t> CheckPoolConvArgs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                          const at::Tensor& conv_state) {
  DS_RETURN_IF_ERROR(CheckTensor(x, "x", 2, /*require_contiguous=*/false));
  if (x.size(1) > 1 && x.stride(1) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("x: channels must be contiguous (shape ",
                                                   internal::ShapeString(x), ", strides [",
                                                   absl::StrJoin(x.strides(), ", "), "])"));
  }
  DS_RETURN_IF_ERROR(CheckDtype(x, "x", {at::kFloat, at::kDouble, at::kBFloat16}));
  const int64_t dim = x.size(1);
  DS_ASSIGN_OR_RETURN(const int64_t k, CheckConvParams(x, weight, bias, dim));
  DS_RETURN_IF_ERROR(CheckTensor(conv_state, "conv_state", 3));
  DS_RETURN_IF_ERROR(CheckDtype(conv_state, "conv_state", {x.scalar_type()}));
  DS_RETURN_IF_ERROR(CheckSameDevice(conv_state, "conv_state", x));
  DS_RETURN_IF_ERROR(CheckSize(conv_state, "conv_state", 1, dim, "channels D"));
  DS_RETURN_IF_ERROR(CheckSize(conv_state, "conv_state", 2, k - 1, "state width K - 1"));
  return k;
}

// Valid (unpadded) depthwise convolution of padded [B, D, L] in its own dtype: [B, D, L - K + 1].
at::Tensor DepthwiseConv(const at::Tensor& padded, const at::Tensor& weight, const at::Tensor& bias,
                         bool silu) {
  const at::ScalarType dtype = padded.scalar_type();
  std::optional<at::Tensor> b;
  if (bias.defined()) b = bias.to(dtype);
  // Named scalars: a bare 0 for `padding` would also match conv1d's string_view overload.
  const int64_t one = 1;
  const int64_t zero = 0;
  at::Tensor y = at::conv1d(padded, weight.to(dtype).unsqueeze(1), b, at::IntArrayRef(one),
                            at::IntArrayRef(zero), at::IntArrayRef(one), weight.size(0));
  return silu ? at::silu(y) : y;
}

CausalConv1dOutput RunBatched(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& initial_state, int64_t k, bool silu) {
  const at::ScalarType dtype = ComputeDtype(x.scalar_type());
  const at::Tensor xt = x.to(dtype).transpose(1, 2);  // [B, D, T]
  const at::Tensor init = initial_state.defined() ? initial_state.to(dtype)
                                                  : at::zeros({x.size(0), x.size(2), k - 1}, xt.options());
  const at::Tensor padded = at::cat({init, xt}, 2);  // [B, D, K - 1 + T]
  const at::Tensor y = DepthwiseConv(padded, weight, bias, silu);
  CausalConv1dOutput out;
  out.y = ContiguousCopy(y.transpose(1, 2), x.scalar_type());
  // Taken from the padded input, so a sequence shorter than K - 1 keeps the tail of its initial state.
  out.final_state = ContiguousCopy(padded.narrow(2, x.size(1), k - 1), x.scalar_type());
  return out;
}

// All N sequences go through one convolution over a [D, T + N (K - 1)] buffer in which each sequence is
// preceded by its own K - 1 state columns; outputs whose window straddles two sequences are dropped.
// This costs a fixed number of kernel launches however many sequences are packed.
CausalConv1dOutput RunPacked(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                             const at::Tensor& initial_state, absl::Span<const int64_t> cu, int64_t num_seqs,
                             int64_t k, bool silu) {
  const int64_t total = x.size(1);
  const int64_t dim = x.size(2);
  const int64_t w = k - 1;

  // Token t of sequence i sits at buffer column t + (i + 1) w; sequence i's state columns start at
  // cu[i] + i w and its last K - 1 columns at cu[i + 1] + i w. The four column lists are computed from
  // the host offsets and go to the device as one upload: [x | y | init | final].
  std::vector<int64_t> cols(2 * total + 2 * num_seqs * w);
  int64_t* x_cols = cols.data();
  int64_t* y_cols = x_cols + total;
  int64_t* init_cols = y_cols + total;
  int64_t* final_cols = init_cols + num_seqs * w;
  for (int64_t i = 0; i < num_seqs; ++i) {
    for (int64_t t = cu[i]; t < cu[i + 1]; ++t) {
      x_cols[t] = t + (i + 1) * w;
      y_cols[t] = t + i * w;  // conv output column c covers buffer columns [c, c + w]
    }
    for (int64_t j = 0; j < w; ++j) {
      init_cols[i * w + j] = cu[i] + i * w + j;
      final_cols[i * w + j] = cu[i + 1] + i * w + j;
    }
  }
  const at::Tensor index = IndexOnDevice(cols, x.device());
  const at::Tensor x_index = index.narrow(0, 0, total);
  const at::Tensor y_index = index.narrow(0, total, total);
  const at::Tensor init_index = index.narrow(0, 2 * total, num_seqs * w);
  const at::Tensor final_index = index.narrow(0, 2 * total + num_seqs * w, num_seqs * w);

  const at::ScalarType dtype = ComputeDtype(x.scalar_type());
  const at::TensorOptions options = x.options().dtype(dtype);
  const int64_t width = total + num_seqs * w;
  at::Tensor buffer;
  if (initial_state.defined()) {
    buffer = at::empty({dim, width}, options);
    const at::Tensor init = initial_state.to(dtype).permute({1, 0, 2}).reshape({dim, num_seqs * w});
    buffer.index_copy_(1, init_index, init);
  } else {
    buffer = at::zeros({dim, width}, options);
  }
  buffer.index_copy_(1, x_index, x.to(dtype)[0].t());

  const at::Tensor y_all = DepthwiseConv(buffer.unsqueeze(0), weight, bias, silu)[0];
  const at::Tensor y = y_all.index_select(1, y_index);  // [D, T]
  const at::Tensor final_state =
      buffer.index_select(1, final_index).view({dim, num_seqs, w}).permute({1, 0, 2});
  CausalConv1dOutput out;
  out.y = ContiguousCopy(y.t().unsqueeze(0), x.scalar_type());
  out.final_state = ContiguousCopy(final_state, x.scalar_type());
  return out;
}

// The step as ATen ops over rows whose slots (`index`, on conv_state's device) are all valid.
at::Tensor RunStep(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                   at::Tensor& conv_state, const at::Tensor& index, bool silu) {
  const at::ScalarType dtype = ComputeDtype(x.scalar_type());
  // Kept in the storage dtype so the state written back holds exactly the inputs, as prefill's does.
  const at::Tensor window = at::cat({conv_state.index_select(0, index), x.unsqueeze(2)}, 2);  // [B, D, K]
  at::Tensor y = (window.to(dtype) * weight.to(dtype).unsqueeze(0)).sum(2);
  if (bias.defined()) y = y + bias.to(dtype);
  if (silu) y = at::silu(y);
  conv_state.index_copy_(0, index, window.narrow(2, 1, window.size(2) - 1).contiguous());
  return y.to(x.scalar_type());  // y is freshly computed, so a no-op cast aliases nothing of the caller's
}

// The ATen step with padding rows: only the rows with a slot run, the others' y rows stay zero. `host`
// holds the slot values, so picking the rows needs nothing from the device.
at::Tensor RunStepSkippingPadding(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                  at::Tensor& conv_state, const at::Tensor& slots,
                                  absl::Span<const int64_t> host, bool silu) {
  std::vector<int64_t> rows;
  std::vector<int64_t> valid_slots;
  for (int64_t i = 0; i < static_cast<int64_t>(host.size()); ++i) {
    if (host[i] < 0) continue;
    rows.push_back(i);
    valid_slots.push_back(host[i]);
  }
  if (rows.size() == host.size()) {
    const at::Tensor index = slots.device() == x.device() ? slots : IndexOnDevice(host, x.device());
    return RunStep(x, weight, bias, conv_state, index, silu);
  }
  at::Tensor y = at::zeros(x.sizes(), x.options());
  if (rows.empty()) return y;
  const at::Tensor row_index = IndexOnDevice(rows, x.device());
  const at::Tensor y_valid = RunStep(x.index_select(0, row_index), weight, bias, conv_state,
                                     IndexOnDevice(valid_slots, x.device()), silu);
  y.index_copy_(0, row_index, y_valid);
  return y;
}

}  // namespace

absl::StatusOr<CausalConv1dOutput> CausalConv1d(const at::Tensor& x, const at::Tensor& weight,
                                                const at::Tensor& bias, const at::Tensor& initial_state,
                                                const at::Tensor& cu_seqlens, bool silu,
                                                absl::Span<const int64_t> host_cu_seqlens) {
  DS_RETURN_IF_ERROR(CheckTensor(x, "x", 3));
  DS_RETURN_IF_ERROR(CheckDtype(x, "x", {at::kFloat, at::kDouble, at::kBFloat16}));
  const int64_t batch = x.size(0);
  const int64_t total = x.size(1);
  const int64_t dim = x.size(2);
  DS_ASSIGN_OR_RETURN(const int64_t k, CheckConvParams(x, weight, bias, dim));
  DS_ASSIGN_OR_RETURN(const HostIndices cu, CheckCuSeqlens(cu_seqlens, host_cu_seqlens, batch, total));
  const int64_t num_seqs = cu_seqlens.defined() ? static_cast<int64_t>(cu.values.size()) - 1 : batch;
  if (initial_state.defined()) {
    DS_RETURN_IF_ERROR(CheckTensor(initial_state, "initial_state", 3));
    DS_RETURN_IF_ERROR(CheckDtype(initial_state, "initial_state", {x.scalar_type()}));
    DS_RETURN_IF_ERROR(CheckSameDevice(initial_state, "initial_state", x));
    DS_RETURN_IF_ERROR(CheckSize(initial_state, "initial_state", 0, num_seqs, "sequences N"));
    DS_RETURN_IF_ERROR(CheckSize(initial_state, "initial_state", 1, dim, "channels D"));
    DS_RETURN_IF_ERROR(CheckSize(initial_state, "initial_state", 2, k - 1, "state width K - 1"));
  }

  DS_CATCH_ATEN({
    if (cu_seqlens.defined()) return RunPacked(x, weight, bias, initial_state, cu.values, num_seqs, k, silu);
    return RunBatched(x, weight, bias, initial_state, k, silu);
  })
}

absl::StatusOr<at::Tensor> CausalConv1dStep(const at::Tensor& x, const at::Tensor& weight,
                                            const at::Tensor& bias, at::Tensor& conv_state,
                                            const at::Tensor& slots, bool silu,
                                            absl::Span<const int64_t> host_slots) {
  DS_ASSIGN_OR_RETURN(const int64_t k, CheckPoolConvArgs(x, weight, bias, conv_state));
  const int64_t batch = x.size(0);
  DS_ASSIGN_OR_RETURN(const HostIndices host,
                      CheckSlots(slots, host_slots, batch, conv_state.size(0), /*allow_padding=*/true));

  DS_CATCH_ATEN({
#ifdef DELTASERVE_WITH_CUDA
    if (x.is_cuda()) {
      // Slots already on the device go straight to the kernel, which skips padding rows itself.
      const at::Tensor index = slots.device() == x.device() ? slots : IndexOnDevice(host.values, x.device());
      return internal::CausalConv1dStepCuda(x, weight, bias, conv_state, index, silu);
    }
#endif
    return RunStepSkippingPadding(x.contiguous(), weight, bias, conv_state, slots, host.values, silu);
  })
}

absl::StatusOr<at::Tensor> CausalConv1dPrefill(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                               at::Tensor& conv_state, const at::Tensor& slots,
                                               const at::Tensor& cu_seqlens, bool silu,
                                               absl::Span<const int64_t> host_cu_seqlens,
                                               absl::Span<const int64_t> host_slots) {
  DS_ASSIGN_OR_RETURN(const int64_t k, CheckPoolConvArgs(x, weight, bias, conv_state));
  const int64_t total = x.size(0);
  if (!cu_seqlens.defined()) return absl::InvalidArgumentError("cu_seqlens: required (packed sequences)");
  DS_RETURN_IF_ERROR(CheckSameDevice(cu_seqlens, "cu_seqlens", x));
  DS_ASSIGN_OR_RETURN(const HostIndices cu, CheckCuSeqlens(cu_seqlens, host_cu_seqlens, 1, total));
  const int64_t num_seqs = static_cast<int64_t>(cu.values.size()) - 1;
  DS_RETURN_IF_ERROR(CheckSameDevice(slots, "slots", x));
  DS_RETURN_IF_ERROR(
      CheckSlots(slots, host_slots, num_seqs, conv_state.size(0), /*allow_padding=*/false).status());

  DS_CATCH_ATEN({
#ifdef DELTASERVE_WITH_CUDA
    if (x.is_cuda() && x.scalar_type() != at::kDouble && k <= 4) {
      return internal::CausalConv1dPrefillCuda(x, weight, bias, conv_state, slots, cu_seqlens, silu);
    }
#endif
    // The composition: the sequences' states gathered, the packed convolution, the final states scattered.
    const at::Tensor init = conv_state.index_select(0, slots);
    CausalConv1dOutput out = RunPacked(x.contiguous().unsqueeze(0), weight, bias, init, cu.values, num_seqs, k, silu);
    conv_state.index_copy_(0, slots, out.final_state);
    return out.y[0];
  })
}

}  // namespace deltaserve::kernels
