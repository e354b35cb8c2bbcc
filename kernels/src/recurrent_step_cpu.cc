// Fused CPU decode step: per (sequence, head), one read pass (S^T k and S^T q, both after decay),
// then one update pass that writes the new row and requantizes it while it is still in cache.
// o = S_new^T q = e^g S^T q + (k . q) u, so the output needs no third pass. Row loops are written to
// vectorise (int8 <-> float conversions, rounding and max all have SIMD forms).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "check.h"
#include "recurrent_step_impl.h"
#include "state_quant.h"

namespace deltaserve::kernels::internal {
namespace {

// e4m3 has 256 codes: decoding by table beats the bit manipulation of the scalar conversion.
const std::array<float, 256>& Fp8Table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) {
      t[i] = static_cast<float>(c10::Float8_e4m3fn(static_cast<uint8_t>(i), c10::Float8_e4m3fn::from_bits()));
    }
    return t;
  }();
  return table;
}

template <typename Store>
inline void DecodeRow(const Store* src, int64_t n, float* dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]);
}
template <>
inline void DecodeRow<c10::Float8_e4m3fn>(const c10::Float8_e4m3fn* src, int64_t n, float* dst) {
  const std::array<float, 256>& t = Fp8Table();
  for (int64_t j = 0; j < n; ++j) dst[j] = t[src[j].x];
}

struct Rounding {
  float qmax;
  bool stochastic;
};

// Stores r / scale. Unscaled stores (fp32, bf16) ignore the scale.
template <typename Store>
inline void EncodeRow(const float* r, int64_t n, float, const Rounding&, uint64_t, Store* dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<Store>(r[j]);
}
template <>
inline void EncodeRow<int8_t>(const float* r, int64_t n, float inv, const Rounding& rd, uint64_t row_key,
                              int8_t* dst) {
  // Bounds as locals, not std::clamp's references: the loops then vectorise.
  const float hi = rd.qmax, lo = -rd.qmax;
  if (!rd.stochastic) {
    for (int64_t j = 0; j < n; ++j)
      dst[j] = static_cast<int8_t>(std::min(hi, std::max(lo, std::nearbyint(r[j] * inv))));
    return;
  }
  // Stochastic rounding: floor(x + U[0,1)) is unbiased, so updates smaller than half a quantum
  // survive on average instead of being rounded away.
  const uint32_t key = static_cast<uint32_t>(row_key);
  for (int64_t j = 0; j < n; ++j) {
    const float u = RowUniform(key, static_cast<uint32_t>(j));
    float y = std::floor(r[j] * inv + u);
    y = y > hi ? hi : y;
    dst[j] = static_cast<int8_t>(y < lo ? lo : y);
  }
}
template <>
inline void EncodeRow<c10::Float8_e4m3fn>(const float* r, int64_t n, float inv, const Rounding& rd, uint64_t,
                                          c10::Float8_e4m3fn* dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] = c10::Float8_e4m3fn(std::clamp(r[j] * inv, -rd.qmax, rd.qmax));
}

// q (normalised, scaled) into out[0, dk), k (normalised) into out[dk, 2 dk).
void LoadQueryKey(const float* q, const float* k, int64_t dk, bool l2norm, float scale, float* out) {
  float qn = 1.0f, kn = 1.0f;
  if (l2norm) {
    float qs = 0, ks = 0;
    for (int64_t i = 0; i < dk; ++i) {
      qs += q[i] * q[i];
      ks += k[i] * k[i];
    }
    qn = 1.0f / std::sqrt(qs + 1e-6f);
    kn = 1.0f / std::sqrt(ks + 1e-6f);
  }
  for (int64_t i = 0; i < dk; ++i) {
    out[i] = q[i] * qn * scale;
    out[dk + i] = k[i] * kn;
  }
}

template <typename Store>
at::Tensor StepHeads(const DecodeInputs& in, RecurrentStatePool& pool) {
  const int64_t batch = in.v.size(0), heads = in.v.size(1), dk = in.q.size(2), dv = in.v.size(2);
  const int64_t key_heads = in.q.size(1);
  const StepQuantization quant = QuantizationOf(pool);
  const bool scaled = quant.scaled, coarse = quant.coarse;
  const Rounding rounding{quant.qmax, quant.stochastic};
  const uint64_t step_key = quant.base;
  Store* values = pool.values.data_ptr<Store>();
  float* scales = scaled ? pool.scales.data_ptr<float>() : nullptr;
  const float *q = in.q.data_ptr<float>(), *k = in.k.data_ptr<float>(), *v = in.v.data_ptr<float>();
  const float *g = in.g.data_ptr<float>(), *beta = in.beta.data_ptr<float>();
  const int64_t* slots = in.slots.data_ptr<int64_t>();
  at::Tensor o = at::empty({batch, heads, dv}, in.v.options());
  float* o_ptr = o.data_ptr<float>();

  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kv(dv), sq(dv), u(dv), x(dv), qk(2 * dk);
    std::vector<float> rows(coarse ? dk * dv : dv);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, h = bh % heads;
      if (slots[b] < 0) {  // padding row: zero output, no state touched
        std::fill(o_ptr + bh * dv, o_ptr + (bh + 1) * dv, 0.0f);
        continue;
      }
      const int64_t head = slots[b] * heads + h;
      const int64_t key = (b * key_heads + h / in.group) * dk;
      Store* s = values + head * dk * dv;
      float* sc = scaled ? scales + head * dk : nullptr;
      LoadQueryKey(q + key, k + key, dk, in.l2norm, in.scale, qk.data());
      const float* qh = qk.data();
      const float* kh = qk.data() + dk;
      const float decay = std::exp(g[bh]);
      std::fill(kv.begin(), kv.end(), 0.0f);
      std::fill(sq.begin(), sq.end(), 0.0f);
      for (int64_t i = 0; i < dk; ++i) {
        const float f = decay * (scaled ? sc[i] : 1.0f);
        const float ki = kh[i] * f, qi = qh[i] * f;
        DecodeRow(s + i * dv, dv, x.data());
        for (int64_t j = 0; j < dv; ++j) {
          kv[j] += ki * x[j];
          sq[j] += qi * x[j];
        }
      }
      float kq = 0;
      for (int64_t i = 0; i < dk; ++i) kq += kh[i] * qh[i];
      const float bt = beta[bh];
      const float* vh = v + bh * dv;
      float* oh = o_ptr + bh * dv;
      for (int64_t j = 0; j < dv; ++j) {
        u[j] = bt * (vh[j] - kv[j]);
        oh[j] = sq[j] + kq * u[j];
      }
      const uint64_t head_key = Mix64(step_key ^ static_cast<uint64_t>(head));
      float head_amax = 0;
      for (int64_t i = 0; i < dk; ++i) {
        const float f = decay * (scaled ? sc[i] : 1.0f);
        const float ki = kh[i];
        float* r = coarse ? rows.data() + i * dv : rows.data();
        DecodeRow(s + i * dv, dv, r);
        float amax = 0;
        // A float max-reduction only vectorises when told that NaN order does not matter.
#pragma omp simd reduction(max : amax)
        for (int64_t j = 0; j < dv; ++j) {
          r[j] = f * r[j] + ki * u[j];
          amax = std::max(amax, std::fabs(r[j]));
        }
        if (coarse) {
          head_amax = std::max(head_amax, amax);
        } else {
          const float scale = std::max(amax, 1e-30f) / rounding.qmax;
          if (scaled) sc[i] = scale;
          EncodeRow(r, dv, 1.0f / scale, rounding, Mix64(head_key + static_cast<uint64_t>(i)), s + i * dv);
        }
      }
      if (coarse) {
        const float scale = std::max(head_amax, 1e-30f) / rounding.qmax;
        for (int64_t i = 0; i < dk; ++i) {
          sc[i] = scale;
          EncodeRow(rows.data() + i * dv, dv, 1.0f / scale, rounding,
                    Mix64(head_key + static_cast<uint64_t>(i)), s + i * dv);
        }
      }
    }
  });
  return o;
}

}  // namespace

at::Tensor RecurrentStepCpu(const DecodeInputs& in, RecurrentStatePool& pool) {
  switch (pool.dtype) {
    case StateDtype::kFloat32:
      return StepHeads<float>(in, pool);
    case StateDtype::kBFloat16:
      return StepHeads<c10::BFloat16>(in, pool);
    case StateDtype::kFloat8E4M3:
      return StepHeads<c10::Float8_e4m3fn>(in, pool);
    default:
      return StepHeads<int8_t>(in, pool);
  }
}

at::Tensor RecurrentStepAten(const DecodeInputs& in, RecurrentStatePool& pool) {
  // Padding rows: step the other rows alone (picked on the host) and leave zeros in the padding's output.
  std::vector<int64_t> rows, valid_slots;
  for (int64_t i = 0; i < static_cast<int64_t>(in.host_slots.size()); ++i) {
    if (in.host_slots[i] < 0) continue;
    rows.push_back(i);
    valid_slots.push_back(in.host_slots[i]);
  }
  if (rows.size() != in.host_slots.size()) {
    at::Tensor o = at::zeros(in.v.sizes(), in.v.options());
    if (rows.empty()) return o;
    const at::Tensor row_index = IndexOnDevice(rows, in.v.device());
    DecodeInputs sub = in;
    for (at::Tensor* t : {&sub.q, &sub.k, &sub.v, &sub.g, &sub.beta}) *t = t->index_select(0, row_index);
    sub.slots = IndexOnDevice(valid_slots, pool.values.device());
    sub.host_slots = valid_slots;
    o.index_copy_(0, row_index, RecurrentStepAten(sub, pool));
    return o;
  }
  at::Tensor q = in.q, k = in.k;
  if (in.l2norm) {
    q = q * at::rsqrt((q * q).sum(-1, true) + 1e-6);
    k = k * at::rsqrt((k * k).sum(-1, true) + 1e-6);
  }
  q = (q * in.scale).repeat_interleave(in.group, 1);
  k = k.repeat_interleave(in.group, 1);
  at::Tensor s = GatherDequantized(pool, in.slots) * in.g.exp().unsqueeze(-1).unsqueeze(-1);
  at::Tensor kv = at::matmul(k.unsqueeze(-2), s).squeeze(-2);  // S^T k  [B, H, dv]
  at::Tensor u = in.beta.unsqueeze(-1) * (in.v - kv);
  s = s + k.unsqueeze(-1) * u.unsqueeze(-2);
  at::Tensor o = at::matmul(q.unsqueeze(-2), s).squeeze(-2);
  ScatterQuantized(pool, in.slots, s, IsStochastic(pool.dtype));
  return o;
}
}  // namespace deltaserve::kernels::internal
