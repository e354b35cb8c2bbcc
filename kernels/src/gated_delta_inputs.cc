// Validation and packing of gated delta rule inputs, shared by the chunked kernel and the reference.
#include "gated_delta_inputs.h"

#include "absl/strings/str_cat.h"
#include "check.h"

namespace deltaserve::kernels::internal {

absl::Status ValidateGatedDeltaArgs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& g, const at::Tensor& beta,
                                    const at::Tensor& initial_state, const at::Tensor& cu_seqlens,
                                    const GatedDeltaRuleOptions& options, int64_t* num_sequences) {
  DS_RETURN_IF_ERROR(CheckTensor(q, "q", 4));
  DS_RETURN_IF_ERROR(CheckTensor(k, "k", 4));
  DS_RETURN_IF_ERROR(CheckTensor(v, "v", 4));
  DS_RETURN_IF_ERROR(CheckTensor(g, "g", 3));
  DS_RETURN_IF_ERROR(CheckTensor(beta, "beta", 3));
  DS_RETURN_IF_ERROR(CheckDtype(v, "v", {at::kFloat, at::kDouble, at::kBFloat16}));
  for (auto [t, name] : {std::pair{&q, "q"}, {&k, "k"}}) {
    DS_RETURN_IF_ERROR(CheckDtype(*t, name, {v.scalar_type()}));
    DS_RETURN_IF_ERROR(CheckSameDevice(*t, name, v));
  }
  for (auto [t, name] : {std::pair{&g, "g"}, {&beta, "beta"}}) {  // float32 always allowed: see the header
    DS_RETURN_IF_ERROR(CheckDtype(*t, name, {v.scalar_type(), at::kFloat}));
    DS_RETURN_IF_ERROR(CheckSameDevice(*t, name, v));
  }
  const int64_t b = q.size(0), t = q.size(1), hk = q.size(2), dk = q.size(3);
  const int64_t hv = v.size(2), dv = v.size(3);
  if (k.sizes() != q.sizes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("k: shape ", ShapeString(k), " must equal q's ", ShapeString(q)));
  }
  DS_RETURN_IF_ERROR(CheckSize(v, "v", 0, b, "batch B of q"));
  DS_RETURN_IF_ERROR(CheckSize(v, "v", 1, t, "time T of q"));
  if (hv % hk != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("v: value heads Hv = ", hv, " must be a multiple of key heads Hk = ", hk));
  }
  for (auto [x, name] : {std::pair{&g, "g"}, {&beta, "beta"}}) {
    DS_RETURN_IF_ERROR(CheckSize(*x, name, 0, b, "batch B"));
    DS_RETURN_IF_ERROR(CheckSize(*x, name, 1, t, "time T"));
    DS_RETURN_IF_ERROR(CheckSize(*x, name, 2, hv, "value heads Hv"));
  }
  int64_t n = b;
  if (cu_seqlens.defined()) DS_RETURN_IF_ERROR(CheckSameDevice(cu_seqlens, "cu_seqlens", v));
  DS_ASSIGN_OR_RETURN(const HostIndices offsets, CheckCuSeqlens(cu_seqlens, options.host_cu_seqlens, b, t));
  if (cu_seqlens.defined()) n = static_cast<int64_t>(offsets.values.size()) - 1;
  if (initial_state.defined()) {
    DS_RETURN_IF_ERROR(CheckTensor(initial_state, "initial_state", 4));
    DS_RETURN_IF_ERROR(CheckDtype(initial_state, "initial_state", {at::kFloat, at::kDouble}));
    DS_RETURN_IF_ERROR(CheckSameDevice(initial_state, "initial_state", v));
    DS_RETURN_IF_ERROR(CheckSize(initial_state, "initial_state", 0, n, "sequences N"));
    DS_RETURN_IF_ERROR(CheckSize(initial_state, "initial_state", 1, hv, "value heads Hv"));
    DS_RETURN_IF_ERROR(CheckSize(initial_state, "initial_state", 2, dk, "key dim dk"));
    DS_RETURN_IF_ERROR(CheckSize(initial_state, "initial_state", 3, dv, "value dim dv"));
  }
  const int64_t c = options.chunk_size;
  if (c != 16 && c != 32 && c != 64 && c != 128) {
    return absl::InvalidArgumentError(absl::StrCat("chunk_size: must be 16, 32, 64 or 128, got ", c));
  }
  if (options.scale.has_value() && !(*options.scale > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("scale: must be positive, got ", *options.scale));
  }
  *num_sequences = n;
  return absl::OkStatus();
}

namespace {

at::Tensor L2Normalize(const at::Tensor& x) {
  return x * at::rsqrt((x * x).sum(-1, /*keepdim=*/true) + 1e-6);
}

// [1, T, ...] packed tokens -> [N, L, ...] padded with zeros.
at::Tensor PadSequences(const at::Tensor& flat, const std::vector<int64_t>& starts,
                        const std::vector<int64_t>& lengths, int64_t padded_len) {
  std::vector<int64_t> shape(flat.sizes().begin(), flat.sizes().end());
  shape[0] = static_cast<int64_t>(starts.size());
  shape[1] = padded_len;
  at::Tensor out = at::zeros(shape, flat.options());
  for (size_t i = 0; i < starts.size(); ++i) {
    if (lengths[i] == 0) continue;
    out[i].narrow(0, 0, lengths[i]).copy_(flat[0].narrow(0, starts[i], lengths[i]));
  }
  return out;
}

}  // namespace

PackedGatedDeltaInputs PackGatedDeltaInputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            const at::Tensor& g, const at::Tensor& beta,
                                            const at::Tensor& initial_state, const at::Tensor& cu_seqlens,
                                            int64_t num_sequences, const GatedDeltaRuleOptions& options,
                                            int64_t multiple) {
  PackedGatedDeltaInputs in;
  const at::ScalarType compute = v.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  in.batch = q.size(0);
  in.time = q.size(1);
  in.packed = cu_seqlens.defined();
  const int64_t hv = v.size(2), hk = q.size(2), dk = q.size(3), dv = v.size(3);
  at::Tensor qc = q.to(compute), kc = k.to(compute);
  if (options.l2norm_qk) {
    qc = L2Normalize(qc);
    kc = L2Normalize(kc);
  }
  qc = qc * options.scale.value_or(1.0 / std::sqrt(static_cast<double>(dk)));
  if (hv != hk) {  // value head h reads key head h / (Hv / Hk), as Qwen3.5's repeat_interleave
    qc = qc.repeat_interleave(hv / hk, 2);
    kc = kc.repeat_interleave(hv / hk, 2);
  }
  at::Tensor vc = v.to(compute), gc = g.to(compute), bc = beta.to(compute);
  int64_t max_len = in.time;
  if (in.packed) {
    // Validated by ValidateGatedDeltaArgs: from the caller's host copy when given, else read again.
    absl::StatusOr<HostIndices> cu =
        HostValues(cu_seqlens, options.host_cu_seqlens, "cu_seqlens", "host_cu_seqlens");
    TORCH_CHECK(cu.ok(), cu.status().ToString());
    const absl::Span<const int64_t> p = cu->values;
    max_len = 0;
    for (int64_t i = 0; i < num_sequences; ++i) {
      in.starts.push_back(p[i]);
      in.lengths.push_back(p[i + 1] - p[i]);
      max_len = std::max(max_len, p[i + 1] - p[i]);
    }
  } else {
    for (int64_t i = 0; i < in.batch; ++i) {
      in.starts.push_back(i * in.time);
      in.lengths.push_back(in.time);
    }
  }
  const int64_t padded = std::max<int64_t>(multiple, (max_len + multiple - 1) / multiple * multiple);
  auto pad = [&](const at::Tensor& x) {
    if (in.packed) return PadSequences(x, in.starts, in.lengths, padded);
    if (padded == in.time) return x.contiguous();
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape[1] = padded - in.time;
    return at::cat({x, at::zeros(shape, x.options())}, 1);
  };
  in.q = pad(qc);
  in.k = pad(kc);
  in.v = pad(vc);
  in.g = pad(gc);
  in.beta = pad(bc);
  in.initial_state = initial_state.defined() ? initial_state.to(compute).contiguous()
                                             : at::zeros({num_sequences, hv, dk, dv}, vc.options());
  return in;
}

at::Tensor UnpackOutputs(const PackedGatedDeltaInputs& in, const at::Tensor& o, at::ScalarType dtype) {
  if (!in.packed) return o.narrow(1, 0, in.time).to(dtype).contiguous();
  std::vector<int64_t> shape(o.sizes().begin(), o.sizes().end());
  shape[0] = 1;
  shape[1] = in.time;
  at::Tensor out = at::zeros(shape, o.options().dtype(dtype));
  for (size_t i = 0; i < in.starts.size(); ++i) {
    if (in.lengths[i] == 0) continue;
    out[0].narrow(0, in.starts[i], in.lengths[i]).copy_(o[i].narrow(0, 0, in.lengths[i]));
  }
  return out;
}

}  // namespace deltaserve::kernels::internal
