// Inverse of a batch of unit lower-triangular chunk matrices (I + A), A strictly lower triangular.
// One interface over the method family: exact forward substitution, the multiplication-only Neumann
// approximation of the seed paper (band mask, residual correction, accuracy guard with fallback), the
// exact product form, and a low-bit (INT16/INT8/FP8) emulation of the matmul-only methods.
#ifndef DELTASERVE_KERNELS_TRI_INVERSE_H_
#define DELTASERVE_KERNELS_TRI_INVERSE_H_

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace deltaserve::kernels {

enum class TriInverseMethod {
  kForwardSubstitution,  // row by row, C sequential steps: the exact reference
  kSolveTriangular,      // at::linalg_solve_triangular (LAPACK / cuBLAS trsm): exact
  kNeumann,              // sum_{n<=N} (-A)^n, band mask, S residual corrections, guard
  kProductForm,          // (I - A)(I + A^2)(I + A^4)...: exact, log2(C) squarings
};

struct TriInverseOptions {
  TriInverseMethod method = TriInverseMethod::kNeumann;
  // Neumann: truncation order N, band width of the structural mask (0 = no mask; entries with
  // i - j >= band are zeroed before correction) and residual-correction steps S.
  int order = 3;
  int band = 0;
  int residual_steps = 4;
  // Accuracy guard (Neumann): a chunk whose residual max|I - (I + A) X| exceeds guard_tol is
  // recomputed exactly with solve_triangular. guard_tol <= 0 disables the guard.
  double guard_tol = 1e-4;
  // CUDA, float32 (or bfloat16) chunks of 16, 32 or 64 at matmul_bits 32, any method but
  // kSolveTriangular: one standalone kernel (the fused prefill's in-kernel inverse: products in 3xTF32, the
  // guard's fallback by in-kernel forward substitution) instead of the ATen composition. Off by default:
  // the composition stays the reference; bench_kernels' inverse table times both.
  bool fused_cuda = false;
  // Matmul precision for kNeumann / kProductForm: 32 (the input's float type), 16 or 8. Low bits
  // quantize every matmul operand symmetrically with a per-matrix scale taken from that operand's
  // own max |x| (per-power scaling), so the growth of A^n never saturates the integer range.
  int matmul_bits = 32;
  // 8-bit operands as integers (INT8) or as FP8 e4m3 values (3 mantissa bits, range +-448).
  bool fp8 = false;
  // Low bits: one scale per 16 x 16 tile of each operand instead of per matrix (the tile of one 8-bit
  // tensor-core step, WMMA m16n16k16), the tile products summed in float32 after scaling. Small entries
  // far from the diagonal then keep their digits when the diagonal tiles are large.
  bool block_scales = false;
  // Low-bit Neumann as iterative refinement: each residual E = I - (I + A) X in full precision, only the
  // truncated series and the corrections X E in low bits. The residual is what the iteration converges
  // on, so the result reaches the full-precision methods' accuracy where the all-low-bit one stalls at
  // the grid's resolution; half the products stay low-bit.
  bool refine_residual = false;
};

// What one call did, for benchmarks and metrics.
struct TriInverseStats {
  int64_t chunks = 0;       // matrices inverted
  int64_t fallbacks = 0;    // chunks the guard sent to the exact path
  double max_residual = 0;  // largest guard residual seen (before fallback); 0 if not computed
};

// Returns T = (I + A)^-1 for A of shape [..., C, C] (float, double or bfloat16; bfloat16 is computed
// in float). Only the strictly lower triangle of A is read. C must be 16, 32, 64 or 128 for the
// matmul-only methods; the exact methods take any C >= 1. `stats` may be null.
absl::StatusOr<at::Tensor> InvertUnitLowerTriangular(const at::Tensor& a, const TriInverseOptions& options,
                                                     TriInverseStats* stats = nullptr);

// The policy: the default options for a chunk size and compute dtype. The Neumann order and steps are
// adapted to C so that the corrections reach every sub-diagonal (each step doubles the exact band).
// WithMatmulBits switches to a low-bit matmul and loosens the guard to what that grid can deliver.
// The guard tolerance follows the dtype the chunk will be used in (bfloat16 models tolerate more).
TriInverseOptions DefaultTriInverseOptions(int64_t chunk_size, TriInverseMethod method,
                                           at::ScalarType dtype = at::kFloat);
TriInverseOptions WithMatmulBits(TriInverseOptions options, int bits);

// Parses a server option: "neumann", "neumann-fast" (one step fewer, guarded), "neumann-int16",
// "neumann-int8", "neumann-int8-block", "neumann-int8-refine", "neumann-fp8-block", "neumann-fp8-refine",
// "product", "product-int16",
// "product-int8", "forward", "solve-triangular". The error names the accepted values.
absl::StatusOr<TriInverseOptions> ParseTriInverseMethod(absl::string_view name, int64_t chunk_size,
                                                        at::ScalarType dtype = at::kFloat);
std::string TriInverseName(const TriInverseOptions& options);

// Resolves "auto" to the method measured fastest on the device's kind (docs/kernels.md): LAPACK's
// solve-triangular on CPU, where two cores are not short of parallelism and the matmul-only methods do
// ~30x the arithmetic; forward substitution on CUDA, inside the fused prefill kernels, where it beat
// the Neumann and product forms on the H200 (and needs less shared memory). Any other name is returned
// unchanged.
std::string ResolveTriInverseMethod(absl::string_view name, bool cuda);

}  // namespace deltaserve::kernels

#endif  // DELTASERVE_KERNELS_TRI_INVERSE_H_
