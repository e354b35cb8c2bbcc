// The T-token decode step as ATen ops (see recurrent_step_impl.h): the CPU path of
// RecurrentGatedDeltaSteps and the reference its CUDA kernel is tested against. Each state is gathered
// and dequantized once, stepped T times in float32 and quantized and scattered once.
#include <ATen/ATen.h>

#include <vector>

#include "check.h"
#include "recurrent_step_impl.h"
#include "state_quant.h"

namespace deltaserve::kernels::internal {

at::Tensor RecurrentStepsAten(const MultiStepInputs& in, RecurrentStatePool& pool) {
  const DecodeInputs& d = in.step;
  // Padding rows: step the other sequences alone (picked on the host), zeros in the padding's output.
  std::vector<int64_t> rows, valid_slots;
  for (int64_t i = 0; i < static_cast<int64_t>(d.host_slots.size()); ++i) {
    if (d.host_slots[i] < 0) continue;
    rows.push_back(i);
    valid_slots.push_back(d.host_slots[i]);
  }
  if (rows.size() != d.host_slots.size()) {
    at::Tensor o = at::zeros(d.v.sizes(), d.v.options().dtype(at::kFloat));
    if (rows.empty()) return o;
    const at::Tensor row_index = IndexOnDevice(rows, d.v.device());
    MultiStepInputs sub = in;
    for (at::Tensor* t : {&sub.step.q, &sub.step.k, &sub.step.v, &sub.step.g, &sub.step.beta}) {
      *t = t->index_select(0, row_index);
    }
    sub.step.slots = IndexOnDevice(valid_slots, pool.values.device());
    sub.step.host_slots = valid_slots;
    o.index_copy_(0, row_index, RecurrentStepsAten(sub, pool));
    return o;
  }
  at::Tensor q = d.q.to(at::kFloat), k = d.k.to(at::kFloat);  // [B, T, Hk, dk]
  if (d.l2norm) {
    q = q * at::rsqrt((q * q).sum(-1, true) + 1e-6);
    k = k * at::rsqrt((k * k).sum(-1, true) + 1e-6);
  }
  q = (q * d.scale).repeat_interleave(d.group, 2);
  k = k.repeat_interleave(d.group, 2);
  const at::Tensor v = d.v.to(at::kFloat), decay = d.g.to(at::kFloat).exp(), beta = d.beta.to(at::kFloat);
  at::Tensor s = GatherDequantized(pool, d.slots, d.host_slots);  // [B, Hv, dk, dv]
  std::vector<at::Tensor> outputs;
  outputs.reserve(static_cast<size_t>(in.tokens));
  for (int64_t t = 0; t < in.tokens; ++t) {
    const at::Tensor kt = k.select(1, t), qt = q.select(1, t);  // [B, Hv, dk]
    s = s * decay.select(1, t).unsqueeze(-1).unsqueeze(-1);
    const at::Tensor kv = at::matmul(kt.unsqueeze(-2), s).squeeze(-2);  // S^T k  [B, Hv, dv]
    const at::Tensor u = beta.select(1, t).unsqueeze(-1) * (v.select(1, t) - kv);
    s = s + kt.unsqueeze(-1) * u.unsqueeze(-2);
    outputs.push_back(at::matmul(qt.unsqueeze(-2), s).squeeze(-2));
  }
  ScatterQuantized(pool, d.slots, s, IsStochastic(pool.dtype), d.host_slots);
  return at::stack(outputs, 1);
}

}  // namespace deltaserve::kernels::internal
