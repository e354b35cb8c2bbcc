// Memory-mapped safetensors checkpoints: one file or a sharded set with model.safetensors.index.json.
// Tensors are views into the mapping (no copy on load); every header is validated before use.
#ifndef DELTASERVE_SERVER_MODELS_SAFETENSORS_H_
#define DELTASERVE_SERVER_MODELS_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace deltaserve::models {

enum class TensorDtype { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool, kF8E4M3, kF8E5M2 };

// "F32", "BF16", ... as the safetensors header spells them.
absl::string_view TensorDtypeName(TensorDtype dtype);
size_t TensorDtypeSize(TensorDtype dtype);
// The inverse of TensorDtypeName; InvalidArgument naming the dtype when it is not one of the above.
absl::StatusOr<TensorDtype> ParseTensorDtype(absl::string_view name);

// One tensor inside a mapped file. `data` stays valid while the owning checkpoint lives. The format does
// not promise alignment: `data` is only as aligned as the writer padded the header (8 bytes in practice).
struct TensorView {
  std::string name;
  TensorDtype dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // the file it lives in, for error messages
};

// A checkpoint directory or a single .safetensors file, mapped read-only. Open fails with a message
// naming the file and the problem: header length past the end of the file, bad JSON, unknown dtype,
// offsets out of range or overlapping, shape and byte size disagreeing, a shard the index names missing,
// a tensor the index lists absent from its shard, a tensor in two shards. `path` may also name an
// *.index.json file directly.
class SafetensorsCheckpoint {
 public:
  // `path`: a directory holding model.safetensors or model.safetensors.index.json (+ shards), or a file.
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(const std::string& path);
  ~SafetensorsCheckpoint();
  SafetensorsCheckpoint(const SafetensorsCheckpoint&) = delete;
  SafetensorsCheckpoint& operator=(const SafetensorsCheckpoint&) = delete;

  // All tensors by name, across shards.
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  // The tensor, or NotFound naming it.
  absl::StatusOr<TensorView> Get(absl::string_view name) const;
  // Total bytes mapped (all files).
  size_t mapped_bytes() const { return mapped_bytes_; }

 private:
  SafetensorsCheckpoint() = default;
  struct Mapping {
    void* addr = nullptr;
    size_t size = 0;
  };
  std::vector<Mapping> mappings_;
  std::map<std::string, TensorView> tensors_;
  size_t mapped_bytes_ = 0;
  friend class SafetensorsCheckpointBuilder;
};

}  // namespace deltaserve::models

#endif  // DELTASERVE_SERVER_MODELS_SAFETENSORS_H_
