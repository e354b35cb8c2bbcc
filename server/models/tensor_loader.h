// Takes a model's tensors out of a mapped safetensors checkpoint by name and expected shape, converting
// dtype and device, and reports every missing, mismatched or unexpected tensor in one error.
#ifndef DELTASERVE_SERVER_MODELS_TENSOR_LOADER_H_
#define DELTASERVE_SERVER_MODELS_TENSOR_LOADER_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "models/safetensors.h"

namespace deltaserve::models {

// CPU tensors of at least this many bytes are copied into memory advised for 2 MB pages (decode streams
// them from memory every step); smaller ones are used in place from the mapping when dtype and alignment
// allow.
inline constexpr int64_t kHugePageCopyMinBytes = int64_t{2} << 20;

// An uninitialised CPU tensor on memory advised for 2 MB pages (see kHugePageCopyMinBytes); plain at::empty
// where that allocation fails.
at::Tensor EmptyOnHugePages(const std::vector<int64_t>& shape, at::ScalarType dtype);

class TensorLoader {
 public:
  // Names passed to Take are below `prefix` unless absolute. Tensors come out as `dtype` on `device`.
  TensorLoader(const SafetensorsCheckpoint& checkpoint, std::string prefix, at::ScalarType dtype,
               const c10::Device& device);

  // Tensors whose checkpoint shape may differ from the expected one as long as the element count and
  // order agree (e.g. a conv weight stored [C, 1, K] read as [C, K]).
  void set_reshapeable(std::function<bool(const std::string&)> f) { reshapeable_ = std::move(f); }
  // Checkpoint tensors that Finish must not report as unexpected (parts of the file this model ignores).
  void set_ignored(std::function<bool(const std::string&)> f) { ignored_ = std::move(f); }

  // The tensor, or an undefined one (recorded for Finish) when missing or mismatched. On the CPU, tensors of
  // kHugePageCopyMinBytes or more are copied onto huge pages; smaller ones are zero-copy when the mapping
  // already holds the right dtype and is aligned; one converted copy otherwise. Every
  // value is checked finite (Finish reports those that are not).
  at::Tensor Take(const std::string& name, const std::vector<int64_t>& shape, bool keep_float32 = false,
                  bool absolute = false);

  // InvalidArgument listing every missing, mismatched and unexpected tensor and every one holding a NaN or
  // Inf; Ok when there are none.
  absl::Status Finish() const;

 private:
  const SafetensorsCheckpoint& checkpoint_;
  std::string prefix_;
  at::ScalarType dtype_;
  c10::Device device_;
  std::function<bool(const std::string&)> reshapeable_, ignored_;
  std::set<std::string> used_;
  std::vector<std::string> missing_, mismatched_, nonfinite_;
};

}  // namespace deltaserve::models

#endif  // DELTASERVE_SERVER_MODELS_TENSOR_LOADER_H_
