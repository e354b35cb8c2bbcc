// The recurrent state pool and the decode step's entry point: validation, then the fused CPU kernel,
// the CUDA kernel, or the ATen composition (any other device) of the same step.
#include "deltaserve/kernels/recurrent_state.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "check.h"
#include "recurrent_step_impl.h"
#include "state_pool_check.h"
#include "state_quant.h"

namespace deltaserve::kernels {
namespace {

struct DtypeName {
  StateDtype dtype;
  absl::string_view name;
};
constexpr DtypeName kDtypeNames[] = {
    {StateDtype::kFloat32, "fp32"},
    {StateDtype::kBFloat16, "bf16"},
    {StateDtype::kInt8, "int8"},
    {StateDtype::kInt8Stochastic, "int8-sr"},
    {StateDtype::kInt8Coarse, "int8-coarse"},
    {StateDtype::kFloat8E4M3, "fp8"},
};

}  // namespace

absl::StatusOr<StateDtype> ParseStateDtype(absl::string_view name) {
  std::string accepted;
  for (const DtypeName& d : kDtypeNames) {
    if (d.name == name) return d.dtype;
    absl::StrAppend(&accepted, accepted.empty() ? "" : ", ", d.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("state dtype: unknown \"", name, "\" (accepted: ", accepted, ")"));
}

std::string StateDtypeName(StateDtype dtype) {
  for (const DtypeName& d : kDtypeNames) {
    if (d.dtype == dtype) return std::string(d.name);
  }
  return "unknown";
}

int64_t StateBytesPerHead(StateDtype dtype, int64_t dk, int64_t dv) {
  switch (dtype) {
    case StateDtype::kFloat32:
      return dk * dv * 4;
    case StateDtype::kBFloat16:
      return dk * dv * 2;
    default:
      return dk * dv + dk * 4;  // one byte a value, one fp32 scale a row
  }
}

namespace internal {

at::ScalarType StorageType(StateDtype d) {
  switch (d) {
    case StateDtype::kFloat32:
      return at::kFloat;
    case StateDtype::kBFloat16:
      return at::kBFloat16;
    case StateDtype::kFloat8E4M3:
      return at::kFloat8_e4m3fn;
    default:
      return at::kChar;
  }
}

// CPU ATen lacks index_select / index_copy_ for float8: move fp8 values as their bytes.
at::Tensor Bytes(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat8_e4m3fn ? t.view(at::kByte) : t;
}

namespace {

// Rows of a pool part picked by slot. With the slots' host values, one plain copy per run of consecutive
// slots: on CUDA, index_select / index_copy_ move a 128 x 128 x 16-head fp32 state at about 65 GB/s
// (16 us for 1 MB, seen in a prefill profile), a copy at memory speed. Without them, the index ops.
template <class F>
void ForEachRun(absl::Span<const int64_t> host, F f) {  // f(position, slot, length)
  for (size_t i = 0; i < host.size();) {
    size_t j = i + 1;
    while (j < host.size() && host[j] == host[j - 1] + 1) ++j;
    f(static_cast<int64_t>(i), host[i], static_cast<int64_t>(j - i));
    i = j;
  }
}

at::Tensor GatherRows(const at::Tensor& part, const at::Tensor& slots, absl::Span<const int64_t> host) {
  if (host.empty()) return part.index_select(0, slots);
  std::vector<int64_t> shape = part.sizes().vec();
  shape[0] = static_cast<int64_t>(host.size());
  at::Tensor out = at::empty(shape, part.options());
  ForEachRun(host, [&](int64_t pos, int64_t slot, int64_t n) {
    out.narrow(0, pos, n).copy_(part.narrow(0, slot, n));
  });
  return out;
}

void ScatterRows(at::Tensor& part, const at::Tensor& slots, absl::Span<const int64_t> host,
                 const at::Tensor& rows) {
  if (host.empty()) {
    part.index_copy_(0, slots, rows);
    return;
  }
  ForEachRun(host, [&](int64_t pos, int64_t slot, int64_t n) {
    part.narrow(0, slot, n).copy_(rows.narrow(0, pos, n));
  });
}

}  // namespace

at::Tensor GatherDequantized(const RecurrentStatePool& pool, const at::Tensor& slots,
                             absl::Span<const int64_t> host_slots) {
  at::Tensor v =
      GatherRows(Bytes(pool.values), slots, host_slots).view(pool.values.scalar_type()).to(at::kFloat);
  if (!IsScaled(pool.dtype)) return v;
  return v * GatherRows(pool.scales, slots, host_slots).unsqueeze(-1);
}

void ScatterQuantized(RecurrentStatePool& pool, const at::Tensor& slots, const at::Tensor& states,
                      bool stochastic, absl::Span<const int64_t> host_slots) {
  if (!IsScaled(pool.dtype)) {
    ScatterRows(pool.values, slots, host_slots, states.to(pool.values.scalar_type()));
    return;
  }
  const float qmax = QuantMax(pool.dtype);
  at::Tensor amax = states.abs().amax(-1);  // per row [n, H, dk]
  if (IsCoarse(pool.dtype)) amax = amax.amax(-1, /*keepdim=*/true).expand_as(amax);
  at::Tensor scale = amax.clamp_min(1e-30f) / qmax;
  at::Tensor x = states / scale.unsqueeze(-1);
  if (pool.dtype == StateDtype::kFloat8E4M3) {
    x = x.clamp(-qmax, qmax).to(at::kFloat8_e4m3fn);
  } else {
    x = (stochastic ? at::floor(x + at::rand_like(x)) : at::round(x)).clamp(-qmax, qmax).to(at::kChar);
  }
  at::Tensor values = Bytes(pool.values);
  ScatterRows(values, slots, host_slots, Bytes(x.contiguous()));
  ScatterRows(pool.scales, slots, host_slots, scale.contiguous());
}

}  // namespace internal

absl::StatusOr<RecurrentStatePool> MakeRecurrentStatePool(int64_t slots, int64_t heads, int64_t dk,
                                                          int64_t dv, StateDtype dtype,
                                                          const at::Device& device) {
  if (slots <= 0 || heads <= 0 || dk <= 0 || dv <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("state pool: slots, heads, dk and dv must be positive, got ", slots, ", ", heads, ", ",
                     dk, ", ", dv));
  }
  DS_CATCH_ATEN({
    RecurrentStatePool pool;
    pool.dtype = dtype;
    pool.values = at::zeros({slots, heads, dk, dv},
                            at::TensorOptions().device(device).dtype(internal::StorageType(dtype)));
    if (internal::IsScaled(dtype)) {
      pool.scales = at::zeros({slots, heads, dk}, at::TensorOptions().device(device).dtype(at::kFloat));
    }
    return pool;
  })
}

namespace internal {
absl::Status CheckPool(const RecurrentStatePool& pool) {
  if (!pool.values.defined() || pool.values.dim() != 4) {
    return absl::InvalidArgumentError("state pool: values must be a [slots, Hv, dk, dv] tensor");
  }
  if (IsScaled(pool.dtype) && (!pool.scales.defined() || pool.scales.dim() != 3)) {
    return absl::InvalidArgumentError("state pool: a quantized pool needs scales [slots, Hv, dk]");
  }
  return absl::OkStatus();
}

at::Tensor SlotsOnPoolDevice(const RecurrentStatePool& pool, const at::Tensor& slots,
                             const HostIndices& host) {
  const at::Device device = pool.values.device();
  return slots.device() == device ? slots.contiguous() : IndexOnDevice(host.values, device);
}
}  // namespace internal

absl::Status WriteStates(RecurrentStatePool& pool, const at::Tensor& slots, const at::Tensor& states,
                         absl::Span<const int64_t> host_slots) {
  DS_RETURN_IF_ERROR(internal::CheckPool(pool));
  DS_RETURN_IF_ERROR(internal::CheckTensor(states, "states", 4));
  DS_RETURN_IF_ERROR(internal::CheckDtype(states, "states", {at::kFloat, at::kDouble}));
  for (int d = 1; d < 4; ++d) {
    DS_RETURN_IF_ERROR(internal::CheckSize(states, "states", d, pool.values.size(d), "pool state shape"));
  }
  DS_RETURN_IF_ERROR(internal::CheckSameDevice(states, "states", pool.values));
  DS_ASSIGN_OR_RETURN(
      const internal::HostIndices host,
      internal::CheckSlots(slots, host_slots, states.size(0), pool.slots(), /*allow_padding=*/false));
  DS_CATCH_ATEN({
    internal::ScatterQuantized(pool, internal::SlotsOnPoolDevice(pool, slots, host), states.to(at::kFloat), false,
                               host.values);
    return absl::OkStatus();
  })
}

absl::StatusOr<at::Tensor> ReadStates(const RecurrentStatePool& pool, const at::Tensor& slots,
                                      absl::Span<const int64_t> host_slots) {
  DS_RETURN_IF_ERROR(internal::CheckPool(pool));
  if (!slots.defined() || slots.dim() != 1) return absl::InvalidArgumentError("slots: expected [n] int64");
  DS_ASSIGN_OR_RETURN(
      const internal::HostIndices host,
      internal::CheckSlots(slots, host_slots, slots.size(0), pool.slots(), /*allow_padding=*/false));
  DS_CATCH_ATEN(
      { return internal::GatherDequantized(pool, internal::SlotsOnPoolDevice(pool, slots, host), host.values); })
}

namespace {
// The decode step's rules on its inputs, for one token a sequence (lead = 1: q [B, Hk, dk], ...) or T
// (lead = 2: q [B, T, Hk, dk], ...), and on the slots and options; returns the slots' host values. Any
// strides: the steps read q, k, v in place where their kernels can (views into one projection's rows) and
// copy them otherwise.
absl::StatusOr<internal::HostIndices> CheckStepInputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                      const at::Tensor& g, const at::Tensor& beta,
                                                      const at::Tensor& slots, const RecurrentStatePool& pool,
                                                      const DecodeStepOptions& options, int lead) {
  using internal::CheckDtype;
  using internal::CheckSize;
  using internal::CheckTensor;
  DS_RETURN_IF_ERROR(internal::CheckPool(pool));
  DS_RETURN_IF_ERROR(CheckTensor(q, "q", lead + 2, /*require_contiguous=*/false));
  DS_RETURN_IF_ERROR(CheckTensor(k, "k", lead + 2, /*require_contiguous=*/false));
  DS_RETURN_IF_ERROR(CheckTensor(v, "v", lead + 2, /*require_contiguous=*/false));
  DS_RETURN_IF_ERROR(CheckTensor(g, "g", lead + 1, /*require_contiguous=*/false));
  DS_RETURN_IF_ERROR(CheckTensor(beta, "beta", lead + 1, /*require_contiguous=*/false));
  DS_RETURN_IF_ERROR(CheckDtype(v, "v", {at::kFloat, at::kDouble, at::kBFloat16}));
  DS_RETURN_IF_ERROR(CheckDtype(q, "q", {v.scalar_type()}));
  DS_RETURN_IF_ERROR(CheckDtype(k, "k", {v.scalar_type()}));
  DS_RETURN_IF_ERROR(CheckDtype(g, "g", {at::kFloat, at::kDouble, at::kBFloat16}));
  DS_RETURN_IF_ERROR(CheckDtype(beta, "beta", {at::kFloat, at::kDouble, at::kBFloat16}));
  for (auto [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}, {&g, "g"}, {&beta, "beta"}}) {
    DS_RETURN_IF_ERROR(internal::CheckSameDevice(*t, name, pool.values));
  }
  const int64_t hk = q.size(lead), hv = pool.heads(), dv = pool.values.size(3);
  if (k.sizes() != q.sizes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("k: shape ", internal::ShapeString(k), " must equal q's ", internal::ShapeString(q)));
  }
  DS_RETURN_IF_ERROR(CheckSize(q, "q", lead + 1, pool.values.size(2), "key dim dk of the pool"));
  DS_RETURN_IF_ERROR(CheckSize(v, "v", 0, q.size(0), "batch B of q"));
  if (lead == 2) DS_RETURN_IF_ERROR(CheckSize(v, "v", 1, q.size(1), "tokens T of q"));
  DS_RETURN_IF_ERROR(CheckSize(v, "v", lead, hv, "value heads Hv of the pool"));
  DS_RETURN_IF_ERROR(CheckSize(v, "v", lead + 1, dv, "value dim dv of the pool"));
  if (hv % hk != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("q: key heads Hk = ", hk, " must divide the pool's value heads Hv = ", hv));
  }
  for (auto [t, name] : {std::pair{&g, "g"}, {&beta, "beta"}}) {
    DS_RETURN_IF_ERROR(CheckSize(*t, name, 0, q.size(0), "batch B"));
    if (lead == 2) DS_RETURN_IF_ERROR(CheckSize(*t, name, 1, q.size(1), "tokens T"));
    DS_RETURN_IF_ERROR(CheckSize(*t, name, lead, hv, "value heads Hv"));
  }
  DS_ASSIGN_OR_RETURN(
      internal::HostIndices host,
      internal::CheckSlots(slots, options.host_slots, q.size(0), pool.slots(), /*allow_padding=*/true));
  if (options.scale.has_value() && !(*options.scale > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("scale: must be positive, got ", *options.scale));
  }
  return host;
}

// Whether a step on this pool takes the register-tiled CUDA kernels (one token or T).
bool UsesTiledKernel(const RecurrentStatePool& pool, const DecodeStepOptions& options, int64_t dk, int64_t dv,
                     at::ScalarType dtype) {
#ifdef DELTASERVE_WITH_CUDA
  return pool.values.is_cuda() && options.tiled_cuda && internal::TiledStepFits(dk, dv, dtype);
#else
  (void)pool, (void)options, (void)dk, (void)dv, (void)dtype;
  return false;
#endif
}

// The step's metadata: the slots on the pool's device and their host copy (`host` must outlive `in`),
// normalisation, the q scale (dk^-0.5 by default) and the key-head group.
void SetStepMetadata(internal::DecodeInputs& in, const RecurrentStatePool& pool, const at::Tensor& slots,
                     const internal::HostIndices& host, const DecodeStepOptions& options, int64_t dk, int64_t hk) {
  in.slots = internal::SlotsOnPoolDevice(pool, slots, host);
  in.host_slots = host.values;
  in.l2norm = options.l2norm_qk;
  in.scale = static_cast<float>(options.scale.value_or(1.0 / std::sqrt(static_cast<double>(dk))));
  in.group = pool.heads() / hk;
}
}  // namespace

absl::StatusOr<at::Tensor> RecurrentGatedDeltaStep(const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v, const at::Tensor& g,
                                                   const at::Tensor& beta, const at::Tensor& slots,
                                                   RecurrentStatePool& pool,
                                                   const DecodeStepOptions& options) {
  DS_ASSIGN_OR_RETURN(const internal::HostIndices host,
                      CheckStepInputs(q, k, v, g, beta, slots, pool, options, /*lead=*/1));
  const int64_t hk = q.size(1), dk = q.size(2), dv = pool.values.size(3);
  DS_CATCH_ATEN({
    internal::DecodeInputs in;
    const bool tiled = UsesTiledKernel(pool, options, dk, dv, v.scalar_type());
    // The tiled kernel reads q, k, v in place: in the model they are views into one projection's rows.
    auto rows = [](const at::Tensor& t) {
      return t.stride(2) == 1 && t.stride(1) == t.size(2) ? t : t.contiguous();
    };
    auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
    in.q = tiled ? rows(q) : f32(q);
    in.k = tiled ? rows(k) : f32(k);
    in.v = tiled ? rows(v) : f32(v);
    in.g = g.to(at::kFloat).contiguous();
    in.beta = beta.to(at::kFloat).contiguous();
    SetStepMetadata(in, pool, slots, host, options, dk, hk);
    at::Tensor o;
    if (pool.values.is_cpu()) {
      o = internal::RecurrentStepCpu(in, pool);
#ifdef DELTASERVE_WITH_CUDA
    } else if (tiled && options.streamed_cuda && internal::StreamedStepFits(pool, dk, dv, v.scalar_type())) {
      o = internal::RecurrentStepStreamedCuda(in, pool);
    } else if (tiled) {
      o = internal::RecurrentStepTiledCuda(in, pool);
    } else if (pool.values.is_cuda()) {
      o = internal::RecurrentStepCuda(in, pool);
#endif
    } else {
      o = internal::RecurrentStepAten(in, pool);
    }
    ++pool.step;
    return o.to(v.scalar_type());
  })
}

absl::StatusOr<at::Tensor> RecurrentGatedDeltaSteps(const at::Tensor& q, const at::Tensor& k,
                                                    const at::Tensor& v, const at::Tensor& g,
                                                    const at::Tensor& beta, const at::Tensor& slots,
                                                    RecurrentStatePool& pool,
                                                    const DecodeStepOptions& options) {
  DS_ASSIGN_OR_RETURN(const internal::HostIndices host,
                      CheckStepInputs(q, k, v, g, beta, slots, pool, options, /*lead=*/2));
  const int64_t b = q.size(0), tokens = q.size(1), hk = q.size(2), dk = q.size(3);
  const int64_t hv = pool.heads(), dv = pool.values.size(3);
  DS_CATCH_ATEN({
    internal::MultiStepInputs in;
    in.tokens = tokens;
    const bool tiled = UsesTiledKernel(pool, options, dk, dv, v.scalar_type());
    // The CUDA kernel reads [B * T] rows of heads x dims in place; the ATen step takes any layout.
    auto rows = [](const at::Tensor& t) {
      at::Tensor c = t.stride(3) == 1 && t.stride(2) == t.size(3) && t.stride(0) == t.size(1) * t.stride(1)
                         ? t
                         : t.contiguous();
      return c.flatten(0, 1);
    };
    internal::DecodeInputs& d = in.step;
    d.q = tiled ? rows(q) : q;
    d.k = tiled ? rows(k) : k;
    d.v = tiled ? rows(v) : v;
    d.g = tiled ? g.to(at::kFloat).contiguous().flatten(0, 1) : g;
    d.beta = tiled ? beta.to(at::kFloat).contiguous().flatten(0, 1) : beta;
    SetStepMetadata(d, pool, slots, host, options, dk, hk);
    at::Tensor o;
#ifdef DELTASERVE_WITH_CUDA
    if (tiled) {
      o = internal::RecurrentStepsTiledCuda(in, pool).view({b, tokens, hv, dv});
    } else {
      o = internal::RecurrentStepsAten(in, pool);
    }
#else
    o = internal::RecurrentStepsAten(in, pool);
#endif
    ++pool.step;
    return o.to(v.scalar_type());
  })
}

}  // namespace deltaserve::kernels
