// Generators of realistic gated delta rule inputs (see gdn_inputs.h).
#include "gdn_inputs.h"

namespace deltaserve::testing {

const std::vector<GdnRegime>& Regimes() {
  static const std::vector<GdnRegime> regimes = {
      {"strong_decay", 0.0, 0.0},
      {"weak_decay", -5.0, 0.0},
      {"correlated_0.2", -5.0, 0.2},
      {"correlated_0.5", -5.0, 0.5},
      // The weak-decay tail the trained model shows (about -0.02 per token, key cosine 0.2: its layer 6,
      // docs/accuracy.md), weaker than "weak_decay".
      {"trained_weak_tail", -6.5, 0.2},
  };
  return regimes;
}

namespace {

at::Tensor UnitKeys(const std::vector<int64_t>& shape, double cosine, double anisotropy, at::Generator& gen) {
  // k = sqrt(c) m + sqrt(1 - c) z, m one shared unit direction per (batch, head), z unit noise:
  // in high dimension the cosine between two such keys concentrates at c.
  const int64_t b = shape[0], h = shape[2], d = shape[3];
  at::Tensor z = at::randn(shape, gen, at::kDouble);
  z = z / z.norm(2, -1, true);
  at::Tensor m = at::randn({b, 1, h, d}, gen, at::kDouble);
  m = m / m.norm(2, -1, true);
  at::Tensor k = std::sqrt(cosine) * m + std::sqrt(1 - cosine) * z;
  if (anisotropy > 0) k = k * at::exp(anisotropy * at::randn({1, 1, h, d}, gen, at::kDouble));
  return k / k.norm(2, -1, true);
}

}  // namespace

GdnInputs MakeGdnInputs(int64_t batch, int64_t time, int64_t hk, int64_t hv, int64_t dk, int64_t dv,
                        const GdnRegime& regime, uint64_t seed, at::ScalarType dtype) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  GdnInputs in;
  in.q = UnitKeys({batch, time, hk, dk}, 0.0, regime.key_anisotropy, gen);
  in.k = UnitKeys({batch, time, hk, dk}, regime.key_cosine, regime.key_anisotropy, gen);
  in.v = at::randn({batch, time, hv, dv}, gen, at::kDouble);
  // Qwen3.5's initialisation: A = U(0, 16) per head (here U(1, 16) to avoid near-zero decay heads).
  at::Tensor a_log = at::log(at::rand({hv}, gen, at::kDouble) * 15 + 1);
  at::Tensor a = at::randn({batch, time, hv}, gen, at::kDouble);
  in.g = -a_log.exp() * at::softplus(a + regime.dt_bias);
  in.beta = at::sigmoid(at::randn({batch, time, hv}, gen, at::kDouble) + regime.beta_bias);
  for (at::Tensor* t : {&in.q, &in.k, &in.v, &in.g, &in.beta}) *t = t->to(dtype).contiguous();
  return in;
}

at::Tensor MakeChunkMatrices(int64_t n, int64_t chunk, int64_t dk, const GdnRegime& regime, uint64_t seed) {
  GdnInputs in = MakeGdnInputs(n, chunk, 1, 1, dk, 1, regime, seed, at::kDouble);
  at::Tensor k = in.k.select(2, 0);                // [n, C, dk]
  at::Tensor gcum = in.g.select(2, 0).cumsum(-1);  // [n, C]
  at::Tensor beta = in.beta.select(2, 0);
  at::Tensor diff = gcum.unsqueeze(-1) - gcum.unsqueeze(-2);
  at::Tensor lower = at::ones({chunk, chunk}, at::kBool).tril(-1);
  at::Tensor decay = diff.masked_fill(lower.logical_not(), -INFINITY).exp();
  return (at::matmul(k, k.transpose(-1, -2)) * decay * beta.unsqueeze(-1)).contiguous();
}

double RelMaxError(const at::Tensor& x, const at::Tensor& ref) {
  at::Tensor r = ref.to(at::kDouble);
  const double err = (x.to(at::kDouble) - r).abs().max().item<double>();
  return err / std::max(1.0, r.abs().max().item<double>());
}

}  // namespace deltaserve::testing
