// Realistic random inputs for the gated delta rule, shared by kernel tests and benchmarks: Qwen3.5's
// gate parameterisation (g = -exp(A_log) softplus(a + dt_bias), beta = sigmoid) and keys with a chosen
// mean cosine, in the regimes where the chunk inverse behaves differently.
#ifndef DELTASERVE_TESTS_SUPPORT_GDN_INPUTS_H_
#define DELTASERVE_TESTS_SUPPORT_GDN_INPUTS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace deltaserve::testing {

struct GdnRegime {
  std::string name;
  double dt_bias;     // 0: strong decay (~ -5 per token); -5: weak (~ -0.1 per token)
  double key_cosine;  // mean cosine between keys of one head (0: independent)
  // Spread of per-channel key energy: channel c of a head is scaled by exp(anisotropy * N(0, 1))
  // before normalisation, as trained keys have outlier channels. 0: isotropic.
  double key_anisotropy = 0;
  double beta_bias = 0;  // beta = sigmoid(N(0, 1) + beta_bias): negative = a mostly closed write gate
};

// strong_decay, weak_decay, correlated_0.2, correlated_0.5 (the last two with weak decay), and
// trained_weak_tail (about -0.02 per token at cosine 0.2, the weakest decay the trained model shows).
const std::vector<GdnRegime>& Regimes();

struct GdnInputs {
  at::Tensor q, k;     // [B, T, Hk, dk], unit length
  at::Tensor v;        // [B, T, Hv, dv]
  at::Tensor g, beta;  // [B, T, Hv]
};

GdnInputs MakeGdnInputs(int64_t batch, int64_t time, int64_t hk, int64_t hv, int64_t dk, int64_t dv,
                        const GdnRegime& regime, uint64_t seed, at::ScalarType dtype = at::kFloat);

// n chunk matrices A [n, C, C] (float64) exactly as the chunked kernel forms them from such inputs:
// A_ij = beta_i (k_i . k_j) exp(G_i - G_j) for i > j, zero elsewhere.
at::Tensor MakeChunkMatrices(int64_t n, int64_t chunk, int64_t dk, const GdnRegime& regime, uint64_t seed);

// max |x - ref| / max(1, max |ref|), in float64.
double RelMaxError(const at::Tensor& x, const at::Tensor& ref);

}  // namespace deltaserve::testing

#endif  // DELTASERVE_TESTS_SUPPORT_GDN_INPUTS_H_
