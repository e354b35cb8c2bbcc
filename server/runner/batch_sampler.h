// Batched token sampling on the logits' device: every row of a decode step at once, with no host sync
// inside, and one packed float64 result to copy back; row by row the same tokens as Sampler::Sample.
#ifndef DELTASERVE_SERVER_RUNNER_BATCH_SAMPLER_H_
#define DELTASERVE_SERVER_RUNNER_BATCH_SAMPLER_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "runner/sampler.h"

namespace deltaserve::runner {

// One request's row of a batched step.
struct SamplingRow {
  const SamplingParams* params = nullptr;  // validated
  const TokenHistory* history = nullptr;   // prompt + output tokens so far (penalties)
  double uniform = 0;  // this step's draw from the request's RNG, in [0, 1); unused for greedy rows
};

// The row for `sampler`'s next step: its params and history, and the draw Sample would take
// (Sampler::DrawUniform). After UnpackSamples, Sampler::Record the token. A row that comes back with an
// error has still used its draw; Sample takes none before rejecting logits, but the request ends there.
SamplingRow NextRow(Sampler& sampler);

// All rows' results packed for ONE device->host copy: float64 [B, 3 + 2n], n = the largest top_logprobs
// over rows with logprobs on (0 if none asks; at most vocab). Columns:
//   0            token id
//   1            its logprob in the row's LogprobsMode; 0 for rows with logprobs off
//   2            error flag: 0 ok, 1 a NaN or +inf logit, 2 no finite logit (Sampler::Sample's rejections);
//                the other columns of such a row are unspecified
//   3 .. 3+n-1   top ids, most likely first, equal logprobs by lower id (0 beyond a row's own count)
//   3+n .. 3+2n-1  their logprobs
struct BatchSampleLayout {
  int64_t rows = 0;
  int64_t top_n = 0;
  int64_t width() const { return 3 + 2 * top_n; }
};

// Samples row i of `logits` ([B, vocab], floating point, any device; float32 from the model) for rows[i],
// returning the packed tensor on logits' device and its shape in *layout. Row by row the result equals
// Sampler::Sample's (same processing as ProcessLogits, same inverse-CDF draw from the row's uniform, same
// logprobs), and nothing in a row depends on the other rows or its position. It launches work only: the
// rows' parameters go up as one pinned host tensor copied without blocking, and nothing is read back, so
// the caller's single copy of the result is the step's only sync. InvalidArgument for a wrong shape or
// dtype, or a row with missing or invalid params, a history id outside the vocabulary, or a uniform
// outside [0, 1); bad logits are flagged per row instead (column 2).
absl::StatusOr<at::Tensor> SampleRows(const at::Tensor& logits, absl::Span<const SamplingRow> rows,
                                      BatchSampleLayout* layout);

// Turns the host copy of SampleRows' result (float64, row-major [layout.rows, layout.width()]) back into
// per-row results for the same rows: InvalidArgument with Sampler::Sample's message for a flagged row;
// otherwise the token, its logprob and params.top_logprobs alternatives when params.logprobs. Unlike
// Sample, the token's logprob is left 0 when params.logprobs is off (callers report it only then), which
// lets a batch without logprobs skip the log_softmax.
std::vector<absl::StatusOr<SampleResult>> UnpackSamples(const double* host, const BatchSampleLayout& layout,
                                                        absl::Span<const SamplingRow> rows);

// The batched ProcessLogits: float32 [B, vocab] on logits' device, row i as ProcessLogits gives it for
// rows[i] (greedy rows get the penalties only). SampleRows never materialises this for greedy rows; it
// is here for tests and diagnostics. Rows are not checked for bad logits.
absl::StatusOr<at::Tensor> ProcessRows(const at::Tensor& logits, absl::Span<const SamplingRow> rows);

}  // namespace deltaserve::runner

#endif  // DELTASERVE_SERVER_RUNNER_BATCH_SAMPLER_H_
