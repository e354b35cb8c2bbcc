// Fused CPU decode step: per (sequence, head), one read pass (S^T k and S^T q, both after decay),
// then one update pass that writes the new row and requantizes it while it is still in registers.
// o = S_new^T q = e^g S^T q + (k . q) u, so the output needs no third pass.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "recurrent_step_impl.h"
#include "state_quant.h"

namespace deltaserve::kernels::internal {
namespace {

struct Rounding {
  float qmax;
  bool stochastic;
  uint64_t base;  // per-step random stream
};

template <typename Store>
inline Store Encode(float x, const Rounding&, uint64_t) {
  return static_cast<Store>(x);
}
template <>
inline int8_t Encode<int8_t>(float x, const Rounding& r, uint64_t bits16) {
  // Stochastic rounding: floor(x + U[0,1)) is unbiased, so updates smaller than half a quantum
  // survive on average instead of being rounded away every step.
  float q = r.stochastic ? std::floor(x + static_cast<float>(bits16) * (1.0f / 65536.0f)) : std::nearbyint(x);
  return static_cast<int8_t>(std::clamp(q, -r.qmax, r.qmax));
}
template <>
inline c10::Float8_e4m3fn Encode<c10::Float8_e4m3fn>(float x, const Rounding& r, uint64_t) {
  return c10::Float8_e4m3fn(std::clamp(x, -r.qmax, r.qmax));
}

template <typename Store>
at::Tensor StepHeads(const DecodeInputs& in, RecurrentStatePool& pool) {
  const int64_t batch = in.q.size(0), heads = in.q.size(1), dk = in.q.size(2), dv = in.v.size(2);
  const bool scaled = IsScaled(pool.dtype), coarse = IsCoarse(pool.dtype);
  const Rounding rounding{QuantMax(pool.dtype), IsStochastic(pool.dtype),
                          Mix64(pool.seed + pool.step * 0x9E3779B97F4A7C15ULL)};
  Store* values = pool.values.data_ptr<Store>();
  float* scales = scaled ? pool.scales.data_ptr<float>() : nullptr;
  const float *q = in.q.data_ptr<float>(), *k = in.k.data_ptr<float>(), *v = in.v.data_ptr<float>();
  const float *g = in.g.data_ptr<float>(), *beta = in.beta.data_ptr<float>();
  const int64_t* slots = in.slots.data_ptr<int64_t>();
  at::Tensor o = at::empty({batch, heads, dv}, in.v.options());
  float* o_ptr = o.data_ptr<float>();

  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kv(dv), sq(dv), u(dv), row(dv), whole(coarse ? dk * dv : 0);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, h = bh % heads;
      const int64_t head = slots[b] * heads + h;
      Store* s = values + head * dk * dv;
      float* sc = scaled ? scales + head * dk : nullptr;
      const float* qh = q + bh * dk;
      const float* kh = k + bh * dk;
      const float decay = std::exp(g[bh]);
      std::fill(kv.begin(), kv.end(), 0.0f);
      std::fill(sq.begin(), sq.end(), 0.0f);
      for (int64_t i = 0; i < dk; ++i) {
        const float f = decay * (scaled ? sc[i] : 1.0f);
        const float ki = kh[i] * f, qi = qh[i] * f;
        const Store* si = s + i * dv;
        for (int64_t j = 0; j < dv; ++j) {
          const float x = static_cast<float>(si[j]);
          kv[j] += ki * x;
          sq[j] += qi * x;
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
      const uint64_t head_key = Mix64(rounding.base ^ static_cast<uint64_t>(head));
      auto encode_row = [&](const float* r, Store* dst, float scale, int64_t i) {
        const float inv = 1.0f / scale;
        const uint64_t row_key = Mix64(head_key + static_cast<uint64_t>(i));
        for (int64_t j = 0; j < dv; j += 4) {
          const uint64_t bits = rounding.stochastic ? Mix64(row_key + static_cast<uint64_t>(j)) : 0;
          for (int64_t m = 0; m < 4 && j + m < dv; ++m) {
            dst[j + m] = Encode<Store>(r[j + m] * inv, rounding, (bits >> (16 * m)) & 0xffff);
          }
        }
      };
      float head_amax = 0;
      for (int64_t i = 0; i < dk; ++i) {
        const float f = decay * (scaled ? sc[i] : 1.0f);
        Store* si = s + i * dv;
        float* r = coarse ? whole.data() + i * dv : row.data();
        float amax = 0;
        for (int64_t j = 0; j < dv; ++j) {
          r[j] = f * static_cast<float>(si[j]) + kh[i] * u[j];
          amax = std::max(amax, std::fabs(r[j]));
        }
        if (!scaled) {
          for (int64_t j = 0; j < dv; ++j) si[j] = static_cast<Store>(r[j]);
        } else if (coarse) {
          head_amax = std::max(head_amax, amax);
        } else {
          sc[i] = std::max(amax, 1e-30f) / rounding.qmax;
          encode_row(r, si, sc[i], i);
        }
      }
      if (coarse) {
        const float scale = std::max(head_amax, 1e-30f) / rounding.qmax;
        for (int64_t i = 0; i < dk; ++i) {
          sc[i] = scale;
          encode_row(whole.data() + i * dv, s + i * dv, scale, i);
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
  at::Tensor s = GatherDequantized(pool, in.slots) * in.g.exp().unsqueeze(-1).unsqueeze(-1);
  at::Tensor kv = at::matmul(in.k.unsqueeze(-2), s).squeeze(-2);  // S^T k  [B, H, dv]
  at::Tensor u = in.beta.unsqueeze(-1) * (in.v - kv);
  s = s + in.k.unsqueeze(-1) * u.unsqueeze(-2);
  at::Tensor o = at::matmul(in.q.unsqueeze(-2), s).squeeze(-2);
  ScatterQuantized(pool, in.slots, s, IsStochastic(pool.dtype));
  return o;
}
}  // namespace deltaserve::kernels::internal
