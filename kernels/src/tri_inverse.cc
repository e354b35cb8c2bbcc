// The triangular-inverse method family for chunked linear attention: (I + A)^-1, A strictly lower.
// Matmul-only methods exploit nilpotency: (-A)^n is zero above sub-diagonal n, so every
// power, product and correction step is exact on a growing band and A^C = 0.
#include "deltaserve/kernels/tri_inverse.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "check.h"
#ifdef DELTASERVE_WITH_CUDA
#include "chunk_inverse_cuda.h"
#endif

namespace deltaserve::kernels {
namespace {

using internal::CheckDtype;
using internal::CheckTensor;

bool IsMatmulChunk(int64_t c) { return c == 16 || c == 32 || c == 64 || c == 128; }

int CeilLog2(int64_t x) {
  int n = 0;
  while ((int64_t{1} << n) < x) ++n;
  return n;
}

// How a low-bit product quantizes its operands (TriInverseOptions' matmul_bits, fp8, block_scales).
struct LowBit {
  int bits = 32;
  bool fp8 = false;
  bool block_scales = false;
};
LowBit LowBitOf(const TriInverseOptions& o) { return {o.matmul_bits, o.fp8, o.block_scales}; }

constexpr int64_t kBlock = 16;  // one 8-bit tensor-core tile (WMMA m16n16k16): 16 x 16 per scale

// Symmetric quantization of a batch of matrices [..., R, K] with one scale per (rows x cols) block (the
// whole matrix when the block is): the per-power scaling that keeps A^n inside the grid however far its
// magnitude drifts. Integers are held in a float tensor wide enough to multiply them exactly; FP8 values
// are rounded to e4m3 and held in float32, where their products are exact.
struct Quantized {
  at::Tensor q;      // [..., R, K]
  at::Tensor scale;  // [..., R / rows, 1, K / cols, 1]
};

Quantized Quantize(const at::Tensor& x, const LowBit& lb, int64_t rows, int64_t cols) {
  const double qmax = lb.fp8 ? 448.0 : std::ldexp(1.0, lb.bits - 1) - 1;
  // INT8 products summed over C <= 128 stay below 2^24, exact in fp32; INT16 needs fp64's 2^53.
  const at::ScalarType acc = lb.bits <= 8 ? at::kFloat : at::kDouble;
  const int64_t r = x.size(-2), k = x.size(-1);
  std::vector<int64_t> blocked(x.sizes().begin(), x.sizes().end() - 2);
  blocked.insert(blocked.end(), {r / rows, rows, k / cols, cols});
  at::Tensor xs = x.to(acc).reshape(blocked);
  at::Tensor scale = xs.abs().amax({-3, -1}, /*keepdim=*/true).clamp_min(1e-30) / qmax;
  at::Tensor q = xs / scale;
  q = lb.fp8 ? q.clamp(-qmax, qmax).to(at::kFloat8_e4m3fn).to(acc) : at::round(q).clamp(-qmax, qmax);
  return {q.reshape(x.sizes()), scale};
}

// x @ y in the requested precision. Low-bit products emulate the hardware (quantized operands, exact
// products, one rescale per block product, float32 sums of the blocks), so the error reported is the
// error the tensor cores would see; the speed is not theirs.
at::Tensor MatMul(const at::Tensor& x, const at::Tensor& y, const LowBit& lb) {
  if (lb.bits >= 32) return at::matmul(x, y);
  const int64_t r = x.size(-2), k = x.size(-1), n = y.size(-1);
  // One scale per matrix is the case of a single block spanning it.
  const int64_t bk = lb.block_scales ? std::min(kBlock, k) : k;
  const int64_t bm = lb.block_scales ? std::min(kBlock, r) : r;
  const int64_t bn = lb.block_scales ? std::min(kBlock, n) : n;
  const int64_t nk = k / bk;
  Quantized qx = Quantize(x, lb, bm, bk);  // scale [..., r / bm, 1, nk, 1]
  Quantized qy = Quantize(y, lb, bk, bn);  // scale [..., nk, 1, n / bn, 1]
  const std::vector<int64_t> batch(x.sizes().begin(), x.sizes().end() - 2);
  auto with_batch = [&](std::initializer_list<int64_t> tail) {
    std::vector<int64_t> v = batch;
    v.insert(v.end(), tail);
    return v;
  };
  const int64_t nb = static_cast<int64_t>(batch.size());
  // The block products: [..., nk, r, bk] x [..., nk, bk, n] -> [..., nk, r, n], exact in the float type.
  at::Tensor xb = qx.q.reshape(with_batch({r, nk, bk})).movedim(nb + 1, nb);
  at::Tensor yb = qy.q.reshape(with_batch({nk, bk, n}));
  at::Tensor products = at::matmul(xb, yb);
  // Each block product times its two scales, [..., nk, r / bm, 1, n / bn, 1] broadcast over the block's
  // rows and columns in place (no copy of the scales expanded to every element).
  at::Tensor sx = qx.scale.reshape(with_batch({r / bm, nk})).movedim(nb + 1, nb);
  at::Tensor sy = qy.scale.reshape(with_batch({nk, n / bn}));
  at::Tensor block_scale = (sx.unsqueeze(-1) * sy.unsqueeze(-2)).to(products.scalar_type());
  products.view(with_batch({nk, r / bm, bm, n / bn, bn})).mul_(block_scale.unsqueeze(-1).unsqueeze(-3));
  return products.sum(nb).to(x.scalar_type());
}

at::Tensor ForwardSubstitution(const at::Tensor& a) {
  const int64_t c = a.size(-1);
  at::Tensor t = at::eye(c, a.options()).expand(a.sizes()).contiguous();
  // Row i of T depends on rows < i: the sequential dependency the matmul-only methods remove.
  for (int64_t i = 1; i < c; ++i) {
    at::Tensor row = at::matmul(a.slice(-2, i, i + 1).slice(-1, 0, i), t.slice(-2, 0, i));
    t.slice(-2, i, i + 1).sub_(row);
  }
  return t;
}

at::Tensor SolveTriangular(const at::Tensor& a) {
  const int64_t c = a.size(-1);
  at::Tensor eye = at::eye(c, a.options());
  return at::linalg_solve_triangular(a + eye, eye.expand(a.sizes()), /*upper=*/false, /*left=*/true,
                                     /*unitriangular=*/true);
}

// (I - A)(I + A^2)(I + A^4)...(I + A^(2^(factors - 1))) = sum_{n < 2^factors} (-A)^n: the Neumann series
// up to order 2^factors - 1 in 2 (factors - 1) matmuls. Exact once 2^factors >= C (A^C = 0).
at::Tensor PartialProduct(const at::Tensor& a, const at::Tensor& eye, int factors, const LowBit& bits) {
  at::Tensor power = a;
  at::Tensor x = eye - a;
  for (int m = 1; m < factors; ++m) {
    power = MatMul(power, power, bits);  // A^(2^m): zero above sub-diagonal 2^m
    x = x + MatMul(x, power, bits);      // x (I + A^(2^m))
  }
  return x;
}

at::Tensor ProductForm(const at::Tensor& a, const LowBit& bits) {
  const int64_t c = a.size(-1);
  return PartialProduct(a, at::eye(c, a.options()), CeilLog2(c), bits);
}

// Truncated Neumann series sum_{n<=N} (-A)^n. When N + 1 is a power of two it is the product form cut
// short (fewer matmuls than Horner); otherwise Horner's rule.
at::Tensor TruncatedNeumann(const at::Tensor& a, const at::Tensor& eye, int order, const LowBit& bits) {
  if (order <= 0) return eye.expand(a.sizes()).clone();
  if (((order + 1) & order) == 0) return PartialProduct(a, eye, CeilLog2(order + 1), bits);
  at::Tensor x = eye - a;
  for (int n = 2; n <= order; ++n) x = eye - MatMul(a, x, bits);
  return x;
}

// Neumann start, structural band mask, S residual corrections X <- X + X (I - (I + A) X), and the
// guard. Each correction squares the residual, so the exact band doubles per step. The guard bounds
// the final residual from the last step's residual E (final = E^2, |E^2|max <= C |E|max^2): no extra
// matmul. Chunks over tolerance are recomputed exactly.
// Starting exact on sub-diagonals <= N (or < band), S steps make X exact on sub-diagonals below
// (N + 1) 2^S: once that covers the chunk the residual is zero by structure, and in full precision only
// rounding is left, so there is nothing for the guard to catch.
bool NeumannNeedsGuard(const TriInverseOptions& o, int64_t c) {
  const int64_t exact_start = o.band > 0 ? std::min<int64_t>(o.band, o.order + 1) : o.order + 1;
  const bool covers_chunk = (exact_start << o.residual_steps) >= c;
  return o.guard_tol > 0 && !(covers_chunk && o.matmul_bits >= 32);
}

at::Tensor Neumann(const at::Tensor& a, const TriInverseOptions& o, TriInverseStats* stats) {
  const int64_t c = a.size(-1);
  at::Tensor eye = at::eye(c, a.options());
  const LowBit bits = LowBitOf(o);
  at::Tensor x = TruncatedNeumann(a, eye, o.order, bits);
  if (o.band > 0) {
    at::Tensor keep = at::ones({c, c}, a.options().dtype(at::kBool)).tril(0).triu(-(o.band - 1));
    x = x * keep;
  }
  const bool guard = NeumannNeedsGuard(o, c);
  at::Tensor residual_bound;
  for (int s = 0; s < o.residual_steps; ++s) {
    at::Tensor e = eye - x - MatMul(a, x, o.refine_residual ? LowBit{} : bits);
    x = x + MatMul(x, e, bits);
    if (s + 1 == o.residual_steps && guard && o.matmul_bits >= 32) {
      at::Tensor emax = e.abs().amax({-2, -1});
      residual_bound = emax * emax * static_cast<double>(c);
    }
  }
  if (!guard) return x;
  if (!residual_bound.defined()) {
    // No correction step, or low-bit steps whose own rounding the bound would miss: measure the
    // residual directly, in full precision.
    residual_bound = (eye - x - at::matmul(a, x)).abs().amax({-2, -1});
  }
  at::Tensor flat_x = x.reshape({-1, c, c});
  at::Tensor bad =
      (residual_bound.reshape({-1}) > o.guard_tol).logical_or_(residual_bound.reshape({-1}).isnan());
  at::Tensor idx = bad.nonzero().squeeze(-1);
  const int64_t n_bad = idx.numel();
  if (stats) {
    stats->fallbacks += n_bad;
    stats->max_residual =
        std::max(stats->max_residual, residual_bound.nan_to_num(INFINITY).max().item<double>());
  }
  if (n_bad > 0) {
    at::Tensor exact = SolveTriangular(a.reshape({-1, c, c}).index_select(0, idx));
    flat_x.index_copy_(0, idx, exact);
  }
  return flat_x.view(x.sizes());
}

#ifdef DELTASERVE_WITH_CUDA
// The standalone CUDA kernel (chunk_inverse_cuda.h) for float32 chunks of 16, 32 or 64: full precision,
// or Neumann with INT8 tile-scaled products (refined or not). Other low-bit forms stay emulated.
bool FusedCudaApplies(const at::Tensor& a, const TriInverseOptions& o, int64_t c) {
  const bool int8_tiles = o.matmul_bits == 8 && !o.fp8 && o.block_scales && o.method == TriInverseMethod::kNeumann;
  return o.fused_cuda && a.is_cuda() && a.scalar_type() == at::kFloat && (o.matmul_bits == 32 || int8_tiles) &&
         (c == 16 || c == 32 || c == 64) && o.method != TriInverseMethod::kSolveTriangular &&
         a.numel() / (c * c) <= std::numeric_limits<int32_t>::max();  // one block per chunk
}

at::Tensor FusedCudaInverse(const at::Tensor& a, const TriInverseOptions& o, int64_t c, TriInverseStats* stats) {
  const at::Tensor flat = a.reshape({-1, c, c}).contiguous();
  at::Tensor out = at::empty_like(flat);
  at::Tensor counters = at::zeros({2}, flat.options().dtype(at::kInt));
  internal::ChunkInverseArgs args{};
  args.a = flat.data_ptr<float>();
  args.out = out.data_ptr<float>();
  args.guard_counters = counters.data_ptr<int>();
  args.chunks = flat.size(0);
  args.c = static_cast<int>(c);
  args.method = o.method == TriInverseMethod::kNeumann ? 1 : o.method == TriInverseMethod::kProductForm ? 2 : 0;
  args.order = o.order;
  args.band = o.band;
  args.residual_steps = o.residual_steps;
  args.guard = o.method == TriInverseMethod::kNeumann && NeumannNeedsGuard(o, c);
  args.guard_tol = static_cast<float>(o.guard_tol);
  args.int8 = o.matmul_bits == 8;
  args.refine = o.refine_residual;
  args.device = flat.get_device();
  internal::ChunkInverseCuda(args);
  if (stats && args.guard) {  // the only host read, and only when asked
    const at::Tensor host = counters.cpu();
    const int fallbacks = host[0].item<int>(), bits = host[1].item<int>();
    float bound = 0;
    std::memcpy(&bound, &bits, sizeof(bound));
    stats->fallbacks += fallbacks;
    stats->max_residual = std::max(stats->max_residual, static_cast<double>(bound));
  }
  return out.reshape(a.sizes());
}
#endif

}  // namespace

absl::StatusOr<at::Tensor> InvertUnitLowerTriangular(const at::Tensor& a_in, const TriInverseOptions& o,
                                                     TriInverseStats* stats) {
  if (!a_in.defined()) return absl::InvalidArgumentError("A: tensor is undefined");
  if (a_in.dim() < 2) return CheckTensor(a_in, "A", 3);
  DS_RETURN_IF_ERROR(CheckTensor(a_in, "A", a_in.dim()));
  DS_RETURN_IF_ERROR(CheckDtype(a_in, "A", {at::kFloat, at::kDouble, at::kBFloat16}));
  const int64_t c = a_in.size(-1);
  if (a_in.size(-2) != c) {
    return absl::InvalidArgumentError(
        absl::StrCat("A: last two dimensions must be square, got shape ", internal::ShapeString(a_in)));
  }
  const bool matmul_only =
      o.method == TriInverseMethod::kNeumann || o.method == TriInverseMethod::kProductForm;
  if (matmul_only && !IsMatmulChunk(c)) {
    return absl::InvalidArgumentError(absl::StrCat("A: chunk size ", c, " is not supported by ",
                                                   TriInverseName(o), " (supported: 16, 32, 64, 128)"));
  }
  if (o.matmul_bits != 32 && o.matmul_bits != 16 && o.matmul_bits != 8) {
    return absl::InvalidArgumentError(absl::StrCat("matmul_bits: must be 32, 16 or 8, got ", o.matmul_bits));
  }
  if (o.fp8 && o.matmul_bits != 8) {
    return absl::InvalidArgumentError(absl::StrCat("fp8: needs matmul_bits 8, got ", o.matmul_bits));
  }
  if ((o.block_scales || o.refine_residual) && o.matmul_bits == 32) {
    return absl::InvalidArgumentError(o.block_scales
                                          ? "block_scales: needs matmul_bits 16 or 8 (full precision has no scales)"
                                          : "refine_residual: needs matmul_bits 16 or 8 (nothing to refine)");
  }
  if (o.order < 0 || o.order > 127 || o.residual_steps < 0 || o.residual_steps > 16 || o.band < 0) {
    return absl::InvalidArgumentError(absl::StrCat("neumann options out of range: order ", o.order,
                                                   " (0..127), residual_steps ", o.residual_steps,
                                                   " (0..16), band ", o.band, " (>= 0)"));
  }
  DS_CATCH_ATEN({
    at::Tensor a = at::tril(a_in.scalar_type() == at::kBFloat16 ? a_in.to(at::kFloat) : a_in, -1);
    if (stats) stats->chunks += a.numel() / (c * c);
#ifdef DELTASERVE_WITH_CUDA
    if (FusedCudaApplies(a, o, c)) return FusedCudaInverse(a, o, c, stats);
#endif
    switch (o.method) {
      case TriInverseMethod::kForwardSubstitution:
        return ForwardSubstitution(a);
      case TriInverseMethod::kSolveTriangular:
        return SolveTriangular(a);
      case TriInverseMethod::kProductForm:
        return ProductForm(a, LowBitOf(o));
      case TriInverseMethod::kNeumann:
        return Neumann(a, o, stats);
    }
    return absl::InvalidArgumentError("method: unknown triangular inverse method");
  })
}

TriInverseOptions DefaultTriInverseOptions(int64_t chunk_size, TriInverseMethod method,
                                           at::ScalarType dtype) {
  TriInverseOptions o;
  o.method = method;
  o.order = 3;
  // Enough correction steps that the exact band covers the chunk: (N + 1) 2^S >= C. Measured on
  // realistic chunks (docs/kernels.md), this is as accurate as forward substitution in every regime,
  // while fewer steps need the guard's fallback on most chunks once keys correlate.
  o.residual_steps = std::max(0, CeilLog2(std::max<int64_t>(chunk_size, 1)) - CeilLog2(o.order + 1));
  o.band = 0;
  o.guard_tol = dtype == at::kBFloat16 ? 1e-3 : 1e-5;
  return o;
}

TriInverseOptions WithMatmulBits(TriInverseOptions o, int bits) {
  o.matmul_bits = bits;
  // The guard tolerates what the integer grid itself costs: a few quanta of the operand range.
  if (bits == 16) o.guard_tol = std::max(o.guard_tol, 1e-3);
  if (bits == 8) o.guard_tol = std::max(o.guard_tol, 3e-2);
  return o;
}

absl::StatusOr<TriInverseOptions> ParseTriInverseMethod(absl::string_view name, int64_t chunk_size,
                                                        at::ScalarType dtype) {
  struct Entry {
    absl::string_view name;
    TriInverseMethod method;
    int bits;
    bool fp8 = false;
    bool block_scales = false;
    bool refine = false;
  };
  static constexpr Entry kEntries[] = {
      {"neumann", TriInverseMethod::kNeumann, 32},
      {"neumann-fast", TriInverseMethod::kNeumann, 32},
      {"neumann-int16", TriInverseMethod::kNeumann, 16},
      {"neumann-int8", TriInverseMethod::kNeumann, 8},
      {"neumann-int8-block", TriInverseMethod::kNeumann, 8, false, true},
      {"neumann-int8-refine", TriInverseMethod::kNeumann, 8, false, true, true},
      {"neumann-fp8-block", TriInverseMethod::kNeumann, 8, true, true},
      {"neumann-fp8-refine", TriInverseMethod::kNeumann, 8, true, true, true},
      {"product", TriInverseMethod::kProductForm, 32},
      {"product-int16", TriInverseMethod::kProductForm, 16},
      {"product-int8", TriInverseMethod::kProductForm, 8},
      {"forward", TriInverseMethod::kForwardSubstitution, 32},
      {"solve-triangular", TriInverseMethod::kSolveTriangular, 32},
  };
  for (const Entry& e : kEntries) {
    if (e.name == name) {
      TriInverseOptions o = WithMatmulBits(DefaultTriInverseOptions(chunk_size, e.method, dtype), e.bits);
      o.fp8 = e.fp8;
      o.block_scales = e.block_scales;
      if (e.refine) {
        // Refined to full precision, the guard holds the dtype's own tolerance again. Two steps more than
        // the band needs: a low-bit correction is no longer exact on its band, so the last steps converge
        // by contraction (measured in docs/kernels.md: correlated keys need them).
        o.refine_residual = true;
        o.residual_steps += 2;
        o.guard_tol = DefaultTriInverseOptions(chunk_size, e.method, dtype).guard_tol;
      }
      // One correction step fewer: the far corner of the chunk stays approximate and the guard sends
      // the chunks where that matters to the exact path.
      if (e.name == "neumann-fast") o.residual_steps = std::max(0, o.residual_steps - 1);
      return o;
    }
  }
  std::string accepted;
  for (const Entry& e : kEntries) absl::StrAppend(&accepted, accepted.empty() ? "" : ", ", e.name);
  return absl::InvalidArgumentError(
      absl::StrCat("inverse method: unknown \"", name, "\" (accepted: auto, ", accepted, ")"));
}

std::string ResolveTriInverseMethod(absl::string_view name, bool cuda) {
  if (name != "auto") return std::string(name);
  return cuda ? "forward" : "solve-triangular";
}

std::string TriInverseName(const TriInverseOptions& o) {
  const std::string bits = o.matmul_bits == 32 ? ""
                           : absl::StrCat(o.fp8 ? "-fp" : "-int", o.matmul_bits,
                                          o.refine_residual ? "-refine" : o.block_scales ? "-block" : "");
  switch (o.method) {
    case TriInverseMethod::kForwardSubstitution:
      return "forward";
    case TriInverseMethod::kSolveTriangular:
      return "solve-triangular";
    case TriInverseMethod::kProductForm:
      return absl::StrCat("product", bits);
    case TriInverseMethod::kNeumann:
      return absl::StrCat("neumann", bits, "(N=", o.order, ",S=", o.residual_steps,
                          o.band > 0 ? absl::StrCat(",band=", o.band) : "",
                          o.guard_tol > 0 ? absl::StrCat(",guard=", o.guard_tol) : ",noguard", ")");
  }
  return "unknown";
}

}  // namespace deltaserve::kernels
